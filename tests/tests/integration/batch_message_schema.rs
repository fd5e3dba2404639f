//! The queue's message schema file (`infra/batch-message.schema.json`) against the worker's
//! parser (`gateway::batch::messages`): the same fields, the same required ones, and the same
//! verdict on the examples (`infra/batch-message.examples.json`; `infra/check` runs them through
//! a JSON Schema validator).

use std::collections::BTreeSet;

use gateway::batch::messages::{MESSAGE_VERSION, Message};
use serde_json::{Value, json};

fn infra_json(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../infra")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// One message of each kind, as the gateway writes it.
fn messages() -> Vec<Message> {
    vec![
        Message::Expand {
            version: MESSAGE_VERSION,
            tenant: "default".into(),
            batch_id: "batch_1".into(),
        },
        Message::Item {
            version: MESSAGE_VERSION,
            tenant: "default".into(),
            batch_id: "batch_1".into(),
            line: 7,
            custom_id: "c-7".into(),
            body: json!({"model": "mock"}),
            deferrals: 2,
        },
        Message::Request {
            version: MESSAGE_VERSION,
            key_id: "key_1".into(),
            job_id: "job-1".into(),
            custom_id: "c-1".into(),
            url: "/v1/chat/completions".into(),
            body: json!({"model": "mock"}),
            deferrals: 0,
        },
    ]
}

fn names(value: &Value) -> BTreeSet<String> {
    match value {
        Value::Object(map) => map.keys().cloned().collect(),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().expect("a name").to_owned())
            .collect(),
        other => panic!("not a list of names: {other}"),
    }
}

#[test]
fn the_schema_names_exactly_the_fields_the_worker_writes_and_requires() {
    let schema = infra_json("batch-message.schema.json");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    for message in messages() {
        let written: Value = serde_json::from_str(&message.to_json()).expect("json");
        let kind = written["type"].as_str().expect("a type").to_owned();
        let branch = &schema["$defs"][&kind];
        assert_eq!(
            names(&branch["properties"]),
            names(&written),
            "the fields of `{kind}`"
        );
        assert_eq!(branch["additionalProperties"], false, "`{kind}` is closed");
        assert_eq!(branch["properties"]["type"]["const"], kind.as_str());
        // A field is required in the schema exactly when the parser refuses the message
        // without it.
        let required = names(&branch["required"]);
        for field in names(&written) {
            let mut without = written.clone();
            without.as_object_mut().expect("object").remove(&field);
            let parsed = Message::parse(&without.to_string());
            assert_eq!(
                parsed.is_err(),
                required.contains(&field),
                "`{kind}` without `{field}`: the parser says {parsed:?}, the schema requires {required:?}"
            );
        }
    }
}

#[test]
fn the_worker_parses_the_schema_examples_as_the_schema_judges_them() {
    let examples = infra_json("batch-message.examples.json");
    let valid = examples["valid"].as_array().expect("valid examples");
    let kinds: BTreeSet<&str> = valid.iter().filter_map(|m| m["type"].as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["expand", "item", "request"]));
    for message in valid {
        let parsed = Message::parse(&message.to_string());
        assert!(parsed.is_ok(), "{message} is refused: {parsed:?}");
    }
    let invalid = examples["invalid"].as_array().expect("invalid examples");
    assert!(invalid.iter().any(|case| case["refused_by"] == "worker"));
    for case in invalid {
        let parsed = Message::parse(&case["message"].to_string());
        match case["refused_by"].as_str() {
            Some("parse") => assert!(parsed.is_err(), "{}: parsed as {parsed:?}", case["why"]),
            // Well-formed for the parser; the worker dead-letters it or records its error.
            Some("worker") => assert!(parsed.is_ok(), "{}: {parsed:?}", case["why"]),
            other => panic!("`refused_by` is {other:?}"),
        }
    }
}
