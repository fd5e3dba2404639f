//! Structured output through the router: an answer that does not match the `response_format`
//! JSON schema never reaches the client. The built-in mock is scripted (`mock-answers: [..]`) to
//! answer each turn with a given text, so a test can make it answer badly, then well.

use std::time::{Duration, Instant};

use crate::common::{TestGateway, within};
use gateway::keys::NewKey;
use serde_json::{Value, json};

/// A dollar a prompt token and two a completion token: spend reads as token counts.
const CONFIG: &str = r#"
[providers.mock]
kind = "mock"

[models.shaped]
deployments = [{ provider = "mock", model = "mock" }]
price = { input_per_mtok = 1000000, output_per_mtok = 2000000 }

# The same model under the names of the tests that count validations: the metric is per process
# and per model, and tests run in parallel.
[models.shaped-valid]
deployments = [{ provider = "mock", model = "mock" }]
price = { input_per_mtok = 1000000, output_per_mtok = 2000000 }

[models.shaped-retried]
deployments = [{ provider = "mock", model = "mock" }]
price = { input_per_mtok = 1000000, output_per_mtok = 2000000 }

[models.shaped-invalid]
deployments = [{ provider = "mock", model = "mock" }]
price = { input_per_mtok = 1000000, output_per_mtok = 2000000 }
"#;

fn script(answers: &[&str]) -> String {
    format!("mock-answers: {}", json!(answers))
}

fn shaped(answers: &[&str], schema: Value) -> Value {
    shaped_as("shaped", answers, schema)
}

fn shaped_as(model: &str, answers: &[&str], schema: Value) -> Value {
    json!({
        "model": model,
        "temperature": 0,
        "messages": [{"role": "user", "content": script(answers)}],
        "response_format": {"type": "json_schema",
            "json_schema": {"name": "answer", "strict": true, "schema": schema}},
    })
}

fn point() -> Value {
    json!({
        "type": "object",
        "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
        "required": ["x", "y"],
        "additionalProperties": false
    })
}

async fn started() -> (TestGateway, String, String) {
    let gw = TestGateway::start(CONFIG).await;
    let (secret, record) = gw
        .key(NewKey {
            name: "shaped".into(),
            ..NewKey::default()
        })
        .await;
    (gw, secret, record.id)
}

fn validations(metrics: &crate::common::Metrics, model: &str, result: &str) -> f64 {
    metrics.value(
        "gateway_output_validation_total",
        &[("model", model), ("result", result)],
    )
}

#[tokio::test]
async fn a_matching_answer_passes_untouched() {
    within(30, async {
        let (gw, key, _) = started().await;
        let before = validations(&gw.metrics().await, "shaped-valid", "valid");
        let reply = gw
            .post(
                "/v1/chat/completions",
                &key,
                &shaped_as("shaped-valid", &[r#"{"x": 1, "y": 2}"#], point()),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let body = reply.json();
        assert_eq!(
            body["choices"][0]["message"]["content"],
            r#"{"x": 1, "y": 2}"#
        );
        assert_eq!(body["usage"]["completion_tokens"], 4);
        assert_eq!(
            validations(&gw.metrics().await, "shaped-valid", "valid"),
            before + 1.0
        );
    })
    .await;
}

#[tokio::test]
async fn an_invalid_answer_is_asked_for_again_and_both_calls_are_billed() {
    within(30, async {
        let (gw, key, key_id) = started().await;
        let before = validations(&gw.metrics().await, "shaped-retried", "retried_valid");
        let body = shaped_as(
            "shaped-retried",
            &["Sure! {x: 1}", r#"{"x": 1, "y": 2}"#],
            point(),
        );
        let reply = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let answer = reply.json();
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            r#"{"x": 1, "y": 2}"#
        );
        // Usage covers both calls: 3 completion words, then 4; the retry's prompt holds the
        // first prompt, the bad answer and the validation error.
        let first_prompt = script(&["Sure! {x: 1}", r#"{"x": 1, "y": 2}"#])
            .split_whitespace()
            .count() as u64;
        let usage = &answer["usage"];
        assert_eq!(usage["completion_tokens"], 7, "{usage}");
        let prompt = usage["prompt_tokens"].as_u64().unwrap();
        assert!(prompt > 2 * first_prompt + 10, "{usage}");
        let billed = (prompt + 2 * 7) as f64;
        assert!((gw.spent(&key_id).await - billed).abs() < 1e-6);
        let cost: f64 = reply.header("x-gateway-cost-usd").unwrap().parse().unwrap();
        assert!((cost - billed).abs() < 1e-6, "{cost}");
        assert_eq!(
            validations(&gw.metrics().await, "shaped-retried", "retried_valid"),
            before + 1.0
        );
        // The valid answer is what the cache holds.
        let again = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(again.header("x-gateway-cache"), Some("HIT"));
        assert_eq!(again.body, reply.body);
    })
    .await;
}

#[tokio::test]
async fn an_answer_invalid_twice_is_an_error_naming_the_pointer_and_is_not_cached() {
    within(30, async {
        let (gw, key, key_id) = started().await;
        let before = validations(&gw.metrics().await, "shaped-invalid", "invalid");
        let body = shaped_as("shaped-invalid", &[r#"{"x": 1, "y": "two"}"#], point());
        let reply = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(reply.status, 502, "{:?}", reply.body);
        let error = &reply.json()["error"];
        assert_eq!(error["code"], "output_validation_failed");
        assert_eq!(error["type"], "api_error");
        assert_eq!(error["param"], "response_format");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("at `/y`"), "{message}");
        assert!(!String::from_utf8_lossy(&reply.body).contains("choices"));
        assert_eq!(
            validations(&gw.metrics().await, "shaped-invalid", "invalid"),
            before + 1.0
        );
        // Both calls are billed: 4 completion words each, and the prompts.
        assert!(gw.spent(&key_id).await > 16.0);
        let again = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(again.status, 502);
        assert_ne!(again.header("x-gateway-cache"), Some("HIT"));
    })
    .await;
}

#[tokio::test]
async fn a_streamed_answer_is_checked_at_its_end() {
    within(30, async {
        let (gw, key, _) = started().await;
        let mut bad = shaped(&[r#"{"x": 1}"#], point());
        bad["stream"] = json!(true);
        let reply = gw.post("/v1/chat/completions", &key, &bad).await;
        assert_eq!(reply.status, 200);
        let events = reply.sse_data();
        assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], "output_validation_failed", "{last}");
        let message = last["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("at `/`") && message.contains("y"),
            "{message}"
        );
        // The chunks went out as they came.
        assert_eq!(reply.streamed_text(), r#"{"x": 1}"#);
        // Not cached.
        let again = gw.post("/v1/chat/completions", &key, &bad).await;
        assert_ne!(again.header("x-gateway-cache"), Some("HIT"));

        let mut good = shaped(&[r#"{"x": 1, "y": 2}"#], point());
        good["stream"] = json!(true);
        let reply = gw.post("/v1/chat/completions", &key, &good).await;
        assert_eq!(reply.sse_data().last().map(String::as_str), Some("[DONE]"));
        let again = gw.post("/v1/chat/completions", &key, &good).await;
        assert_eq!(again.header("x-gateway-cache"), Some("HIT"));
    })
    .await;
}

#[tokio::test]
async fn a_schema_with_a_remote_ref_is_refused_before_any_call() {
    within(30, async {
        let (gw, key, key_id) = started().await;
        for reference in [
            "http://169.254.169.254/latest/meta-data/iam",
            "file:///etc/passwd",
        ] {
            let body = shaped(&["{}"], json!({"$ref": reference}));
            let started = Instant::now();
            let reply = gw.post("/v1/chat/completions", &key, &body).await;
            assert!(started.elapsed() < Duration::from_secs(2));
            assert_eq!(reply.status, 400, "{:?}", reply.body);
            let error = &reply.json()["error"];
            assert_eq!(error["param"], "response_format");
            assert_eq!(error["type"], "invalid_request_error");
        }
        assert_eq!(gw.spent(&key_id).await, 0.0, "no provider call was made");
    })
    .await;
}

#[tokio::test]
async fn a_catastrophic_pattern_is_checked_in_linear_time() {
    within(30, async {
        let (gw, key, _) = started().await;
        let evil = format!("\"{}b\"", "a".repeat(50_000));
        let body = shaped(&[&evil], json!({"type": "string", "pattern": "^(a+)+$"}));
        let started = Instant::now();
        let reply = gw.post("/v1/chat/completions", &key, &body).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(reply.status, 502);
        assert_eq!(
            reply.error_code().as_deref(),
            Some("output_validation_failed")
        );
    })
    .await;
}
