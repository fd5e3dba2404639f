//! Fuzzing the request parsers with proptest: arbitrary bytes and arbitrary JSON never panic and
//! always give the request or an `ApiError` with a 4xx status.

use proptest::prelude::*;
use serde_json::Value;

use super::{ChatRequest, EmbeddingRequest};
use crate::error::ApiError;
use crate::pipeline::parse_json;

/// Any JSON value, a few levels deep, with the field names the parsers look for mixed in.
pub(crate) fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("model".to_owned()),
        Just("messages".to_owned()),
        Just("input".to_owned()),
        Just("role".to_owned()),
        Just("content".to_owned()),
        Just("documents".to_owned()),
        Just("id".to_owned()),
        Just("text".to_owned()),
        Just("custom_id".to_owned()),
        Just("body".to_owned()),
        ".{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        Just(Value::from("user")),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// The bytes of a body: arbitrary, or JSON (possibly cut short).
pub(crate) fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (any_json(), any::<prop::sample::Index>()).prop_map(|(value, cut)| {
            let bytes = serde_json::to_vec(&value).unwrap_or_default();
            let keep = cut.index(bytes.len() + 1);
            bytes.get(..keep).unwrap_or_default().to_vec()
        }),
        any_json().prop_map(|value| serde_json::to_vec(&value).unwrap_or_default()),
    ]
}

pub(crate) fn assert_client_error<T>(result: Result<T, ApiError>) -> Result<(), TestCaseError> {
    if let Err(error) = result {
        prop_assert!(
            error.status().is_client_error(),
            "{} for: {}",
            error.status(),
            error.message
        );
    }
    Ok(())
}

fn chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let request: ChatRequest = parse_json(body)?;
    request.validate()?;
    Ok(request)
}

fn embeddings(body: &[u8]) -> Result<EmbeddingRequest, ApiError> {
    let request: EmbeddingRequest = parse_json(body)?;
    request.validate()?;
    Ok(request)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn chat_requests_parse_or_get_a_4xx(body in any_body()) {
        assert_client_error(chat(&body))?;
    }

    #[test]
    fn chat_requests_with_a_model_and_odd_messages_parse_or_get_a_4xx(
        messages in any_json(),
        extra in any_json(),
    ) {
        let body = serde_json::json!({"model": "m", "messages": messages, "n": extra});
        assert_client_error(chat(&serde_json::to_vec(&body).unwrap_or_default()))?;
    }

    #[test]
    fn embedding_requests_parse_or_get_a_4xx(body in any_body(), input in any_json()) {
        assert_client_error(embeddings(&body))?;
        let body = serde_json::json!({"model": "m", "input": input});
        assert_client_error(embeddings(&serde_json::to_vec(&body).unwrap_or_default()))?;
    }
}
