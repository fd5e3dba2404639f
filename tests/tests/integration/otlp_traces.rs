//! OpenTelemetry traces from `gateway-local`: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, a chat
//! that falls back after a failed attempt arrives at an OTLP/HTTP receiver as one trace (the
//! request span, and under it auth, limits, cache and each provider attempt with its deployment
//! and outcome), flushed when the process is stopped, and holding neither prompts nor keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::common::local::{ADMIN_KEY, LocalServer, TempDir};
use crate::common::within;

/// The primary's provider listens nowhere (port 9 refuses): every attempt at it fails to
/// connect, and the request falls back to the mock.
const CONFIG: &str = r#"
[routing]
max_attempts = 4
backoff_base_ms = 10
backoff_max_ms = 20

[providers.unreachable]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "UNREACHABLE_KEY"

[providers.mock]
kind = "mock"

[models.primary]
deployments = [{ provider = "unreachable", model = "primary-model" }]
fallbacks = ["backup"]

[models.backup]
deployments = [{ provider = "mock", model = "mock" }]
"#;

const PROMPT: &str = "tell nobody about the violet elephant";

/// An OTLP/HTTP receiver on loopback: the bodies posted to `/v1/traces`.
async fn receiver() -> (String, Arc<Mutex<Vec<Bytes>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(
                |State(received): State<Arc<Mutex<Vec<Bytes>>>>, body: Bytes| async move {
                    received.lock().expect("lock").push(body);
                    // An empty ExportTraceServiceResponse: everything was accepted.
                    ([("content-type", "application/x-protobuf")], Vec::new())
                },
            ),
        )
        .with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, received)
}

fn attribute(span: &Span, name: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == name)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(|value| match value {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
}

// Two threads: `stop` blocks one while the receiver answers the flush on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_chat_is_one_trace_of_auth_limits_cache_and_each_attempt() {
    within(60, async {
        let (endpoint, received) = receiver().await;
        let dir = TempDir::new("otlp");
        let server = LocalServer::start(
            dir.path(),
            CONFIG,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("UNREACHABLE_KEY", "sk-upstream-never-exported"),
                // Nothing leaves before the stop: what arrives was flushed at shutdown.
                ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ],
        );
        let response = gateway::tls::http_client()
            .post(format!("{}/v1/chat/completions", server.url))
            .bearer_auth(ADMIN_KEY)
            .header("x-gateway-cache", "use")
            .json(&serde_json::json!({
                "model": "primary",
                "messages": [{"role": "user", "content": PROMPT}],
            }))
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response
                .headers()
                .get("x-gateway-model")
                .and_then(|v| v.to_str().ok()),
            Some("backup")
        );
        assert!(received.lock().expect("lock").is_empty(), "exported early");
        server.stop();

        let bodies = received.lock().expect("lock").clone();
        assert!(!bodies.is_empty(), "no spans flushed at shutdown");
        let mut spans = Vec::new();
        for body in &bodies {
            for needle in [PROMPT.as_bytes(), ADMIN_KEY.as_bytes(), b"sk-upstream"] {
                assert!(
                    !body.windows(needle.len()).any(|w| w == needle),
                    "a prompt or key was exported"
                );
            }
            let request = ExportTraceServiceRequest::decode(body.clone()).expect("OTLP protobuf");
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    spans.extend(scope.spans);
                }
            }
        }
        let by_name =
            |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
        let chat_requests: Vec<&Span> = by_name("request")
            .into_iter()
            .filter(|request| {
                spans
                    .iter()
                    .any(|s| s.parent_span_id == request.span_id && s.name == "provider_attempt")
            })
            .collect();
        assert_eq!(chat_requests.len(), 1, "one chat request span: {spans:#?}");
        let request = chat_requests[0];
        assert!(request.parent_span_id.is_empty(), "the request is the root");
        let children: HashMap<&str, Vec<&Span>> = spans
            .iter()
            .filter(|s| s.parent_span_id == request.span_id)
            .fold(HashMap::new(), |mut map, span| {
                map.entry(span.name.as_str()).or_default().push(span);
                map
            });
        for name in ["auth", "limits", "cache"] {
            assert_eq!(
                children.get(name).map(Vec::len),
                Some(1),
                "one {name} span under the request: {children:#?}"
            );
        }
        for child in children.values().flatten() {
            assert_eq!(child.trace_id, request.trace_id, "one trace");
        }
        assert_eq!(
            attribute(children["cache"][0], "result").as_deref(),
            Some("MISS")
        );
        let mut attempts = children["provider_attempt"].clone();
        attempts.sort_by_key(|s| s.start_time_unix_nano);
        assert!(
            attempts.len() >= 2,
            "a failed attempt and the fallback: {attempts:#?}"
        );
        let (failed, last) = attempts.split_at(attempts.len() - 1);
        for attempt in failed {
            assert_eq!(attribute(attempt, "model").as_deref(), Some("primary"));
            assert_eq!(
                attribute(attempt, "provider").as_deref(),
                Some("unreachable")
            );
            assert_eq!(
                attribute(attempt, "deployment").as_deref(),
                Some("primary-model")
            );
            let outcome = attribute(attempt, "outcome");
            assert!(
                outcome.as_deref().is_some_and(|o| o != "ok"),
                "a failed attempt's outcome: {outcome:?}"
            );
        }
        assert_eq!(attribute(last[0], "model").as_deref(), Some("backup"));
        assert_eq!(attribute(last[0], "provider").as_deref(), Some("mock"));
        assert_eq!(attribute(last[0], "outcome").as_deref(), Some("ok"));
    })
    .await;
}
