//! The Weaviate vector store against a stand-in: an axum server on a loopback port that follows
//! Weaviate's REST and GraphQL API reference for the calls the store makes (`POST
//! /v1/batch/objects` with per-object results, `DELETE /v1/batch/objects` with `match.class` and
//! `match.where`, `POST /v1/graphql` with `Get { Class(nearVector, where, limit) }` and
//! `_additional { id distance }`, `Authorization: Bearer`, `{"error": [{"message"}]}` refusals).
//! No Weaviate server can run here. The stand-in evaluates `where` filters itself, with
//! Weaviate's operators: Equal on an array property matches any element, ContainsAny, Not,
//! IsNull; text compared whole (field tokenization), numbers as `number`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use gateway::config::Config;
use gateway::error::StoreError;
use gateway::vectors::weaviate::WeaviateVectorStore;
use gateway::vectors::{CollectionStores, Namespace, VectorRecord, VectorStore};
use serde_json::{Map, Value, json};

use crate::common::{test_config, within};
use crate::vectors_conformance::a_configured_collection_round_trips;

pub(crate) const API_KEY: &str = "wv-test-key";
pub(crate) const CLASS: &str = "Handbook";

struct Object {
    vector: Vec<f64>,
    properties: Map<String, Value>,
}

#[derive(Default)]
pub(crate) struct StandIn {
    /// id -> object, all of class `CLASS`.
    objects: Mutex<BTreeMap<String, Object>>,
    /// Requests per path, to check batching.
    requests: Mutex<BTreeMap<&'static str, usize>>,
}

type Answer = (StatusCode, Json<Value>);

fn error(status: StatusCode, message: &str) -> Answer {
    (status, Json(json!({"error": [{"message": message}]})))
}

fn authorised(state: &StandIn, headers: &HeaderMap, path: &'static str) -> Result<(), Answer> {
    *state.requests.lock().unwrap().entry(path).or_default() += 1;
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(value) if value == format!("Bearer {API_KEY}") => Ok(()),
        _ => Err(error(
            StatusCode::UNAUTHORIZED,
            "anonymous access not enabled",
        )),
    }
}

/// The values a property holds: an array's elements, or the one value.
fn values(property: Option<&Value>) -> Vec<&Value> {
    match property {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(value) => vec![value],
    }
}

/// One `where` operand against an object (Weaviate's filter semantics).
fn matches(filter: &Value, id: &str, object: &Object) -> bool {
    let operator = filter["operator"].as_str().unwrap();
    let operands = || filter["operands"].as_array().unwrap().iter();
    let path = filter["path"][0].as_str().unwrap_or("");
    let id_value = json!(id);
    let property = if path == "id" {
        Some(&id_value)
    } else {
        object.properties.get(path)
    };
    let scalar = ["valueText", "valueNumber", "valueBoolean"]
        .iter()
        .find_map(|field| filter.get(*field));
    let list = ["valueTextArray", "valueNumberArray", "valueBooleanArray"]
        .iter()
        .find_map(|field| filter.get(*field).and_then(Value::as_array));
    let number = |compare: fn(f64, f64) -> bool| {
        let bound = filter["valueNumber"].as_f64().unwrap();
        values(property)
            .iter()
            .any(|v| v.as_f64().is_some_and(|v| compare(v, bound)))
    };
    let same = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    };
    match operator {
        "And" => operands().all(|f| matches(f, id, object)),
        "Or" => operands().any(|f| matches(f, id, object)),
        "Not" => !operands().all(|f| matches(f, id, object)),
        "Equal" => values(property).iter().any(|v| same(v, scalar.unwrap())),
        "NotEqual" => !values(property).iter().any(|v| same(v, scalar.unwrap())),
        "ContainsAny" => values(property)
            .iter()
            .any(|v| list.unwrap().iter().any(|item| same(v, item))),
        "GreaterThan" => number(|v, b| v > b),
        "GreaterThanEqual" => number(|v, b| v >= b),
        "LessThan" => number(|v, b| v < b),
        "LessThanEqual" => number(|v, b| v <= b),
        "IsNull" => values(property).is_empty() == filter["valueBoolean"].as_bool().unwrap(),
        other => panic!("operator {other} is not used by the store"),
    }
}

async fn batch_upsert(
    State(state): State<Arc<StandIn>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    if let Err(answer) = authorised(&state, &headers, "batch upsert") {
        return answer;
    }
    let mut objects = state.objects.lock().unwrap();
    let mut results = Vec::new();
    for object in body["objects"].as_array().unwrap() {
        let id = object["id"].as_str().unwrap().to_owned();
        let vector: Vec<f64> = object["vector"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let mut result = object.clone();
        let dimensions = objects.values().next().map(|o| o.vector.len());
        if object["class"] != CLASS {
            result["result"] = json!({"errors": {"error": [{"message": "class not found"}]}});
        } else if dimensions.is_some_and(|d| d != vector.len()) {
            let message = format!(
                "new node has a vector with length {}. Existing nodes have vectors with length {}",
                vector.len(),
                dimensions.unwrap_or(0)
            );
            result["result"] = json!({"errors": {"error": [{"message": message}]}});
        } else {
            // An object with an existing id replaces it.
            let properties = object["properties"].as_object().unwrap().clone();
            objects.insert(id, Object { vector, properties });
            result["result"] = json!({});
        }
        results.push(result);
    }
    (StatusCode::OK, Json(Value::Array(results)))
}

async fn batch_delete(
    State(state): State<Arc<StandIn>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    if let Err(answer) = authorised(&state, &headers, "batch delete") {
        return answer;
    }
    if body["match"]["class"] != CLASS {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "class not found");
    }
    let filter = &body["match"]["where"];
    let mut objects = state.objects.lock().unwrap();
    let matched: Vec<String> = objects
        .iter()
        .filter(|(id, object)| matches(filter, id, object))
        .map(|(id, _)| id.clone())
        .take(10_000)
        .collect();
    for id in &matched {
        objects.remove(id);
    }
    let answer = json!({
        "match": body["match"],
        "output": body["output"],
        "dryRun": body["dryRun"],
        "results": {"matches": matched.len(), "limit": 10_000, "successful": matched.len(), "failed": 0},
    });
    (StatusCode::OK, Json(answer))
}

/// GraphQL input syntax (bare keys, enum names) as JSON: every bare word but true, false and
/// null quoted.
fn graphql_arguments_as_json(arguments: &str) -> Value {
    let mut json = String::from("{");
    let mut chars = arguments.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            json.push(c);
            while let Some(c) = chars.next() {
                json.push(c);
                if c == '\\' {
                    json.push(chars.next().unwrap());
                } else if c == '"' {
                    break;
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut word = String::from(c);
            while let Some(&next) = chars.peek() {
                if !(next.is_ascii_alphanumeric() || next == '_') {
                    break;
                }
                word.push(next);
                chars.next();
            }
            if ["true", "false", "null"].contains(&word.as_str())
                || word.starts_with('e') && json.ends_with(|c: char| c.is_ascii_digit())
            {
                json.push_str(&word);
            } else {
                json.push_str(&format!("\"{word}\""));
            }
        } else {
            json.push(c);
        }
    }
    json.push('}');
    serde_json::from_str(&json).unwrap()
}

async fn graphql(
    State(state): State<Arc<StandIn>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Answer {
    if let Err(answer) = authorised(&state, &headers, "graphql") {
        return answer;
    }
    // `{ Get { Handbook(<arguments>) { text gateway_key gateway_metadata _additional { id
    // distance } } } }`
    let query = body["query"].as_str().unwrap();
    let get = query.trim().strip_prefix("{ Get { ").unwrap();
    let (class, rest) = get.split_once('(').unwrap();
    let (arguments, selection) = rest.rsplit_once(')').unwrap();
    if class != CLASS {
        let message = format!("Cannot query field \"{class}\" on type \"GetObjectsObj\".");
        return (
            StatusCode::OK,
            Json(json!({"errors": [{"message": message}]})),
        );
    }
    let selected: Vec<&str> = selection
        .split(|c: char| c.is_whitespace() || c == '{' || c == '}')
        .filter(|w| !w.is_empty())
        .collect();
    assert_eq!(
        selected,
        [
            "text",
            "gateway_key",
            "gateway_metadata",
            "_additional",
            "id",
            "distance"
        ]
    );
    let arguments = graphql_arguments_as_json(arguments);
    let wanted: Vec<f64> = arguments["nearVector"]["vector"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let limit = arguments["limit"].as_u64().unwrap() as usize;
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let objects = state.objects.lock().unwrap();
    let mut found: Vec<(f64, Value)> = objects
        .iter()
        .filter(|(id, object)| {
            arguments
                .get("where")
                .is_none_or(|w| matches(w, id, object))
        })
        .map(|(id, object)| {
            let dot: f64 = object.vector.iter().zip(&wanted).map(|(a, b)| a * b).sum();
            let distance = 1.0 - dot / (norm(&object.vector) * norm(&wanted));
            let mut hit = json!({"_additional": {"id": id, "distance": distance}});
            for property in ["text", "gateway_key", "gateway_metadata"] {
                hit[property] = object
                    .properties
                    .get(property)
                    .cloned()
                    .unwrap_or(Value::Null);
            }
            (distance, hit)
        })
        .collect();
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    found.truncate(limit);
    let found: Vec<Value> = found.into_iter().map(|(_, hit)| hit).collect();
    (
        StatusCode::OK,
        Json(json!({"data": {"Get": {(CLASS): found}}})),
    )
}

pub(crate) async fn start() -> (String, Arc<StandIn>) {
    let state = Arc::new(StandIn::default());
    let router = axum::Router::new()
        .route("/v1/batch/objects", post(batch_upsert).delete(batch_delete))
        .route("/v1/graphql", post(graphql))
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}"), state)
}

fn store(url: &str, api_key: &str, class: &str) -> WeaviateVectorStore {
    WeaviateVectorStore::new(
        url.into(),
        class.into(),
        api_key.into(),
        3,
        "collection handbook".into(),
    )
}

fn ns() -> Namespace {
    Namespace {
        tenant: "acme".into(),
        collection: "handbook".into(),
    }
}

fn record(i: usize, metadata: Value) -> VectorRecord {
    VectorRecord {
        key: format!("doc.md#{i}"),
        vector: vec![1.0, i as f32, 0.5],
        text: format!("chunk {i}"),
        metadata: metadata.as_object().unwrap().clone(),
    }
}

#[tokio::test]
async fn objects_carry_the_namespace_and_metadata_and_go_in_batches() {
    within(30, async {
        let (url, state) = start().await;
        let store = store(&url, API_KEY, CLASS);
        let records = (0..250)
            .map(|i| record(i, json!({"page": i, "tags": ["a"]})))
            .collect();
        store.put(&ns(), records).await.unwrap();
        let keys: Vec<String> = (0..250).map(|i| format!("doc.md#{i}")).collect();
        {
            let objects = state.objects.lock().unwrap();
            assert_eq!(objects.len(), 250);
            let id = gateway::vectors::weaviate::object_id(&ns(), "doc.md#7");
            let properties = &objects[&id].properties;
            assert_eq!(properties["ns"], ns().digest());
            assert_eq!(properties["gateway_key"], "doc.md#7");
            assert_eq!(properties["text"], "chunk 7");
            // Numbers are Weaviate `number`s, whatever JSON wrote.
            assert_eq!(properties["page"], json!(7.0));
            assert_eq!(properties["tags"], json!(["a"]));
        }
        store.delete(&ns(), &keys).await.unwrap();
        assert!(state.objects.lock().unwrap().is_empty());
        let requests = state.requests.lock().unwrap();
        assert_eq!((requests["batch upsert"], requests["batch delete"]), (3, 3));
    })
    .await;
}

#[tokio::test]
async fn refusals_are_client_errors_and_failures_name_the_collection_not_the_host() {
    within(30, async {
        let (url, _) = start().await;
        // A metadata name Weaviate cannot take as a property is refused before sending.
        let error = store(&url, API_KEY, CLASS)
            .put(&ns(), vec![record(1, json!({"team-name": "x"}))])
            .await
            .unwrap_err();
        assert!(matches!(&error, StoreError::Invalid(m) if m.contains("`team-name`")), "{error:?}");

        // Weaviate's own refusals: a GraphQL error, a batch object not stored.
        let missing = store(&url, API_KEY, "Missing");
        let error = missing.query(&ns(), &[1.0, 0.0, 0.0], 1, None).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::Invalid(m) if m.contains("collection handbook (Weaviate) refused the query")),
            "{error:?}"
        );
        let error = missing.put(&ns(), vec![record(1, json!({}))]).await.unwrap_err();
        assert!(error.to_string().contains("1 of 1 objects were not stored: class not found"), "{error}");

        let unauthorised = store(&url, "wrong", CLASS);
        let error = unauthorised
            .query(&ns(), &[1.0, 0.0, 0.0], 1, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("collection handbook") && error.contains("401"), "{error}");
        assert!(!error.contains("127.0.0.1") && !error.contains("wrong"), "{error}");

        let down = store(
            &format!("http://127.0.0.1:{}", crate::common::local::free_port()),
            API_KEY,
            CLASS,
        );
        let error = down.delete(&ns(), &["a".into()]).await.unwrap_err().to_string();
        assert!(error.contains("cannot connect") && !error.contains("127.0.0.1"), "{error}");
    })
    .await;
}

fn stored_keys(state: &StandIn) -> Vec<String> {
    let objects = state.objects.lock().unwrap();
    let mut keys: Vec<String> = objects
        .values()
        .map(|o| o.properties["gateway_key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_collection_configured_for_weaviate_is_ingested_queried_and_deleted_there() {
    within(60, async {
        let (url, state) = start().await;
        let table = format!(
            "[vectors.weaviate.handbook]\nurl = \"{url}\"\nclass = \"{CLASS}\"\napi_key_env = \"WEAVIATE_TEST_KEY\"\ndimensions = 512\n"
        );
        a_configured_collection_round_trips(&table, "WEAVIATE_TEST_KEY", API_KEY, || {
            stored_keys(&state)
        })
        .await;
    })
    .await;
}

#[test]
fn the_config_names_a_weaviate_class_and_its_key_variable() {
    let with =
        |table: &str| Config::from_toml(&format!("{}\n{table}", test_config("http://127.0.0.1:1")));
    let table = |class: &str| {
        format!(
            "[vectors.weaviate.handbook]\nurl = \"https://x.weaviate.cloud\"\nclass = \"{class}\"\napi_key_env = \"K\"\ndimensions = 8\n"
        )
    };
    assert!(with(&table("Handbook")).is_ok());
    let error = with(&table("handbook")).unwrap_err().to_string();
    assert!(error.contains("vectors.weaviate.handbook.class"), "{error}");
    let config = with(&table("Handbook")).unwrap().vectors;
    let error = CollectionStores::configured(&config, Arc::new(NoStore), |_| None)
        .err()
        .unwrap();
    assert!(
        error.contains("vectors.weaviate.handbook: the API key variable K is not set"),
        "{error}"
    );
}

/// A default store for config checks that never reach it.
struct NoStore;

#[async_trait::async_trait]
impl VectorStore for NoStore {
    fn fixed_dimensions(&self) -> Option<u32> {
        None
    }
    async fn put(&self, _: &Namespace, _: Vec<VectorRecord>) -> Result<(), StoreError> {
        Ok(())
    }
    async fn delete(&self, _: &Namespace, _: &[String]) -> Result<(), StoreError> {
        Ok(())
    }
    async fn query(
        &self,
        _: &Namespace,
        _: &[f32],
        _: usize,
        _: Option<&gateway::vectors::MetadataFilter>,
    ) -> Result<Vec<gateway::vectors::VectorHit>, StoreError> {
        Ok(Vec::new())
    }
}
