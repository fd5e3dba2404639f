//! The chat function's Lambda handler fed real API Gateway REST, HTTP API, Function URL and ALB
//! event payloads (the fixtures `lambda_http` ships), answered streamed or buffered as each front
//! needs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{now_secs, within};
use async_trait::async_trait;
use futures_util::StreamExt;
use gateway::backends::Backends;
use gateway::config::Config;
use gateway::http::Routes;
use gateway::keys::KeyStore;
use gateway::keys::{KeyRecord, NewKey, generate_key};
use gateway::lambda::{ORIGIN_VERIFY_HEADER, OriginCheck, ResponseMode, handle};
use gateway::limits::{Estimate, LimitError, Limiter, Reservation};
use gateway::state::Gateway;
use gateway::storage::embedded::EmbeddedStore;
use lambda_http::request::LambdaRequest;
use lambda_http::{Context, LambdaEvent};
use lambda_runtime::FunctionResponse;
use serde_json::{Value, json};

struct Setup {
    gateway: Arc<Gateway>,
    router: axum::Router,
    background: gateway::background::Background,
    key: String,
    record: KeyRecord,
    _dir: tempdir::TempDir,
}

mod tempdir {
    /// A folder removed on drop.
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn setup() -> Setup {
    setup_with_limiter(|limiter| limiter).await
}

/// A setup whose limiter is `wrap` of the embedded store's.
async fn setup_with_limiter(wrap: impl FnOnce(Arc<dyn Limiter>) -> Arc<dyn Limiter>) -> Setup {
    setup_with(&Config::built_in(|_| None), wrap).await
}

async fn setup_with(
    config: &Config,
    wrap: impl FnOnce(Arc<dyn Limiter>) -> Arc<dyn Limiter>,
) -> Setup {
    let dir = std::env::temp_dir().join(format!(
        "gateway-lambda-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let store = EmbeddedStore::open(&dir).expect("store");
    let (hash, key, record) = generate_key(
        NewKey {
            name: "lambda".into(),
            ..NewKey::default()
        },
        now_secs(),
    )
    .expect("key");
    store.insert(&hash, &record).await.expect("insert");
    let mut backends = Backends::embedded(&store).expect("backends");
    backends.limiter = wrap(backends.limiter);
    let gateway = Gateway::new(config, backends, &|_| None).expect("gateway");
    let background = gateway.background.clone();
    let gateway = Arc::new(gateway);
    Setup {
        gateway: Arc::clone(&gateway),
        router: gateway::http::router(gateway),
        background,
        key,
        record,
        _dir: tempdir::TempDir(dir),
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/lambda_http/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture json")
}

/// A fixture turned into a request for `path` with a JSON body and a bearer key.
fn event(name: &str, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> Value {
    let mut event = fixture(name);
    let mut headers = json!({"content-type": "application/json", "host": "gateway.example"});
    if let Some(key) = key {
        headers["authorization"] = json!(format!("Bearer {key}"));
    }
    event["headers"] = headers.clone();
    if event.get("multiValueHeaders").is_some() {
        event["multiValueHeaders"] = json!({});
    }
    event["body"] = body.map_or(Value::Null, |b| json!(b.to_string()));
    event["isBase64Encoded"] = json!(false);
    event["queryStringParameters"] = json!({});
    if event.get("rawPath").is_some() {
        event["rawPath"] = json!(path);
        event["rawQueryString"] = json!("");
        event["requestContext"]["http"]["method"] = json!(method);
        event["requestContext"]["http"]["path"] = json!(path);
    } else {
        event["path"] = json!(path);
        event["httpMethod"] = json!(method);
        if event["requestContext"].get("httpMethod").is_some() {
            event["requestContext"]["httpMethod"] = json!(method);
            event["requestContext"]["path"] = json!(path);
            event["requestContext"]["resourcePath"] = json!("/{proxy+}");
        }
    }
    event
}

fn lambda_event(payload: Value, context: Context) -> LambdaEvent<LambdaRequest> {
    let request: LambdaRequest = serde_json::from_value(payload).expect("a LambdaRequest");
    LambdaEvent::new(request, context)
}

/// What the front receives: status, headers and body, whichever way it was produced.
struct Answer {
    streamed: bool,
    status: u16,
    headers: Value,
    body: String,
}

async fn invoke(setup: &Setup, payload: Value) -> Answer {
    invoke_with(setup, payload, Context::default()).await
}

async fn invoke_with(setup: &Setup, payload: Value, context: Context) -> Answer {
    invoke_through(setup, payload, context, OriginCheck::default()).await
}

async fn invoke_through(
    setup: &Setup,
    payload: Value,
    context: Context,
    origin: OriginCheck,
) -> Answer {
    let response = handle(
        setup.router.clone(),
        setup.background.clone(),
        ResponseMode::Auto,
        origin,
        lambda_event(payload, context),
    )
    .await
    .expect("handler succeeds");
    match response {
        FunctionResponse::BufferedResponse(buffered) => {
            let value = serde_json::to_value(&buffered).expect("serialisable response");
            Answer {
                streamed: false,
                status: value["statusCode"].as_u64().expect("status") as u16,
                headers: value["headers"].clone(),
                body: value["body"].as_str().unwrap_or("").to_owned(),
            }
        }
        FunctionResponse::StreamingResponse(streaming) => {
            let prelude = serde_json::to_value(&streaming.metadata_prelude).expect("prelude");
            let mut body = Vec::new();
            let mut stream = streaming.stream;
            while let Some(chunk) = stream.next().await {
                body.extend_from_slice(&chunk.expect("stream chunk"));
            }
            Answer {
                streamed: true,
                status: prelude["statusCode"].as_u64().expect("status") as u16,
                headers: prelude["headers"].clone(),
                body: String::from_utf8(body).expect("utf-8"),
            }
        }
    }
}

fn completion_request(stream: bool) -> Value {
    json!({"model": "mock", "stream": stream, "messages": [{"role": "user", "content": "hello lambda"}]})
}

#[tokio::test]
async fn every_front_gets_a_complete_non_streamed_answer() {
    within(30, async {
        let setup = setup().await;
        for (fixture, streams) in [
            ("apigw_proxy_request.json", true),
            ("apigw_v2_proxy_request.json", false),
            ("lambda_function_url_request.json", true),
            ("alb_request.json", false),
        ] {
            let payload = event(
                fixture,
                "POST",
                "/v1/chat/completions",
                Some(&setup.key),
                Some(&completion_request(false)),
            );
            let answer = invoke(&setup, payload).await;
            assert_eq!(answer.streamed, streams, "{fixture}");
            assert_eq!(answer.status, 200, "{fixture}: {}", answer.body);
            let body: Value = serde_json::from_str(&answer.body).unwrap_or_else(|e| {
                panic!(
                    "{fixture}: body is not the whole JSON ({e}): {}",
                    answer.body
                )
            });
            assert_eq!(
                body["choices"][0]["message"]["content"], "Mock answer to: hello lambda",
                "{fixture}"
            );
            assert!(answer.headers.get("x-request-id").is_some(), "{fixture}");
        }
    })
    .await;
}

#[tokio::test]
async fn streaming_fronts_get_server_sent_events() {
    within(30, async {
        let setup = setup().await;
        for fixture in [
            "apigw_proxy_request.json",
            "lambda_function_url_request.json",
        ] {
            let payload = event(
                fixture,
                "POST",
                "/v1/chat/completions",
                Some(&setup.key),
                Some(&completion_request(true)),
            );
            let answer = invoke(&setup, payload).await;
            assert!(answer.streamed);
            assert_eq!(
                answer.headers["content-type"], "text/event-stream",
                "{fixture}"
            );
            let data: Vec<&str> = answer
                .body
                .split("\n\n")
                .filter_map(|e| e.strip_prefix("data: "))
                .collect();
            assert_eq!(data.last(), Some(&"[DONE]"), "{fixture}");
            let text: String = data
                .iter()
                .filter(|d| **d != "[DONE]")
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .filter_map(|c| {
                    c["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_owned)
                })
                .collect();
            assert_eq!(text, "Mock answer to: hello lambda");
        }
    })
    .await;
}

#[tokio::test]
async fn buffered_fronts_receive_a_streamed_request_as_one_sse_body() {
    within(30, async {
        let setup = setup().await;
        let payload = event(
            "alb_request.json",
            "POST",
            "/v1/chat/completions",
            Some(&setup.key),
            Some(&completion_request(true)),
        );
        let answer = invoke(&setup, payload).await;
        assert!(!answer.streamed);
        assert!(answer.body.ends_with("data: [DONE]\n\n"), "{}", answer.body);
    })
    .await;
}

#[tokio::test]
async fn errors_keep_their_status_and_openai_shape_on_every_front() {
    within(30, async {
        let setup = setup().await;
        for fixture in [
            "apigw_proxy_request.json",
            "apigw_v2_proxy_request.json",
            "lambda_function_url_request.json",
            "alb_request.json",
        ] {
            let payload = event(
                fixture,
                "POST",
                "/v1/chat/completions",
                None,
                Some(&completion_request(false)),
            );
            let answer = invoke(&setup, payload).await;
            assert_eq!(answer.status, 401, "{fixture}");
            let body: Value = serde_json::from_str(&answer.body).expect("error json");
            assert_eq!(body["error"]["code"], "invalid_api_key", "{fixture}");
        }
    })
    .await;
}

#[tokio::test]
async fn behind_the_authorizer_the_function_trusts_its_context() {
    within(30, async {
        let setup = setup().await;
        let mut payload = event(
            "apigw_proxy_request.json",
            "POST",
            "/v1/chat/completions",
            None,
            Some(&completion_request(false)),
        );
        payload["requestContext"]["authorizer"] = json!({
            "principalId": setup.record.id,
            "key": serde_json::to_string(&setup.record).unwrap(),
        });
        let answer = invoke(&setup, payload).await;
        assert_eq!(answer.status, 200, "{}", answer.body);

        // Another front's event cannot smuggle an authorizer verdict in.
        let mut payload = event(
            "apigw_v2_proxy_request.json",
            "POST",
            "/v1/chat/completions",
            None,
            Some(&completion_request(false)),
        );
        payload["requestContext"]["authorizer"] =
            json!({"lambda": {"key": serde_json::to_string(&setup.record).unwrap()}});
        assert_eq!(invoke(&setup, payload).await.status, 401);
    })
    .await;
}

#[tokio::test]
async fn a_declared_length_over_the_body_cap_is_413_on_every_front() {
    within(30, async {
        let setup = setup().await;
        for fixture in [
            "apigw_proxy_request.json",
            "apigw_v2_proxy_request.json",
            "lambda_function_url_request.json",
            "alb_request.json",
        ] {
            let mut payload = event(
                fixture,
                "POST",
                "/v1/chat/completions",
                Some(&setup.key),
                Some(&completion_request(false)),
            );
            payload["headers"]["content-length"] = json!("99999999999");
            let answer = invoke(&setup, payload).await;
            assert_eq!(answer.status, 413, "{fixture}: {}", answer.body);
            let body: Value = serde_json::from_str(&answer.body).expect("error json");
            assert_eq!(body["error"]["type"], "invalid_request_error", "{fixture}");
        }
    })
    .await;
}

#[tokio::test]
async fn health_answers_without_a_key() {
    within(30, async {
        let setup = setup().await;
        let answer = invoke(
            &setup,
            event("apigw_v2_proxy_request.json", "GET", "/health", None, None),
        )
        .await;
        assert_eq!(answer.status, 200);
        assert!(answer.body.contains("ok"));
    })
    .await;
}

#[tokio::test]
async fn behind_cloudfront_the_function_url_answers_only_with_the_origin_secret() {
    within(30, async {
        let setup = setup().await;
        let origin = OriginCheck::new(Some("origin-secret-from-the-template"));
        let through = |payload: Value| invoke_through(&setup, payload, Context::default(), origin);
        let health = |name: &str| event(name, "GET", "/health", None, None);

        let direct = through(health("lambda_function_url_request.json")).await;
        assert_eq!(direct.status, 403, "{}", direct.body);
        let error: Value = serde_json::from_str(&direct.body).expect("an OpenAI error body");
        assert_eq!(error["error"]["code"], "origin_not_allowed");
        assert!(!direct.body.contains("origin-secret"), "{}", direct.body);

        let mut wrong = health("lambda_function_url_request.json");
        wrong["headers"][ORIGIN_VERIFY_HEADER] = json!("a-guess");
        assert_eq!(through(wrong).await.status, 403);

        let mut via_cloudfront = health("lambda_function_url_request.json");
        via_cloudfront["headers"][ORIGIN_VERIFY_HEADER] = json!("origin-secret-from-the-template");
        let answer = through(via_cloudfront).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.streamed, "the Function URL still streams");

        // API Gateway invokes the function itself, never through the URL: no header needed.
        let rest = through(health("apigw_proxy_request.json")).await;
        assert_eq!(rest.status, 200, "{}", rest.body);
    })
    .await;
}

/// A limiter that settles as slowly as a remote one: the in-process limiter settles before the
/// response is even built, so only a limiter whose settling has to wait shows whether the
/// handler waits for it.
struct SlowSettle(Arc<dyn Limiter>);

const SETTLE_TAKES: Duration = Duration::from_millis(300);

#[async_trait]
impl Limiter for SlowSettle {
    async fn acquire(
        &self,
        key: &KeyRecord,
        estimate: Estimate,
        now_secs: u64,
    ) -> Result<Reservation, LimitError> {
        self.0.acquire(key, estimate, now_secs).await
    }

    async fn settle(&self, reservation: Reservation, billed: gateway::usage::Billed) {
        tokio::time::sleep(SETTLE_TAKES).await;
        self.0.settle(reservation, billed).await;
    }

    async fn spent_usd(&self, key_id: &str, now_secs: u64) -> Result<f64, LimitError> {
        self.0.spent_usd(key_id, now_secs).await
    }
}

#[tokio::test]
async fn spend_is_settled_before_the_invocation_ends() {
    within(30, async {
        let setup = setup_with_limiter(|limiter| Arc::new(SlowSettle(limiter))).await;
        // Buffered (ALB) and streamed (Function URL) answers, to plain and streamed requests.
        for (fixture, stream) in [
            ("alb_request.json", false),
            ("alb_request.json", true),
            ("lambda_function_url_request.json", false),
            ("lambda_function_url_request.json", true),
        ] {
            let before = setup
                .gateway
                .limiter
                .spent_usd(&setup.record.id, now_secs())
                .await
                .unwrap();
            let payload = event(
                fixture,
                "POST",
                "/v1/chat/completions",
                Some(&setup.key),
                Some(&completion_request(stream)),
            );
            let started = Instant::now();
            let answer = invoke(&setup, payload).await;
            assert_eq!(answer.status, 200, "{fixture}: {}", answer.body);
            // No waiting: Lambda may freeze the container as soon as the response is complete.
            let after = setup
                .gateway
                .limiter
                .spent_usd(&setup.record.id, now_secs())
                .await
                .unwrap();
            assert!(
                after > before,
                "{fixture}, stream {stream}: spend {before} -> {after}"
            );
            assert!(
                started.elapsed() >= SETTLE_TAKES,
                "{fixture}, stream {stream}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_request_still_unanswered_near_the_end_of_the_invocation_gets_504() {
    within(20, async {
        let config = Config::from_toml(
            r#"
[providers.slow]
kind = "mock"
latency_ms = 30000

[models.slow]
deployments = [{ provider = "slow", model = "slow" }]
"#,
        )
        .expect("config");
        let setup = setup_with(&config, |limiter| limiter).await;
        for fixture in ["apigw_v2_proxy_request.json", "apigw_proxy_request.json"] {
            for stream in [false, true] {
                let body = json!({"model": "slow", "stream": stream,
                    "messages": [{"role": "user", "content": "hello"}]});
                let payload = event(
                    fixture,
                    "POST",
                    "/v1/chat/completions",
                    Some(&setup.key),
                    Some(&body),
                );
                // Lambda's deadline in 1.5 s: the gateway answers before it, 0.5 s ahead.
                let mut context = Context::default();
                context.deadline = gateway::clock::now_millis() + 1_500;
                let started = Instant::now();
                let answer = invoke_with(&setup, payload, context).await;
                let took = started.elapsed();
                let label = format!("{fixture}, stream {stream}");
                assert!(
                    took >= Duration::from_millis(800) && took < Duration::from_millis(1_500),
                    "{label}: answered after {took:?}"
                );
                if answer.streamed && answer.status == 200 {
                    // A stream already started ends with the error event instead.
                    assert!(
                        answer.body.contains("\"type\":\"timeout\""),
                        "{label}: {}",
                        answer.body
                    );
                } else {
                    assert_eq!(answer.status, 504, "{label}: {}", answer.body);
                    let error: Value = serde_json::from_str(&answer.body).expect("JSON error");
                    assert_eq!(error["error"]["type"], "timeout", "{label}");
                }
            }
        }
    })
    .await;
}

/// On AWS the chat function serves every route but `/v1/admin/*` and the admin function only
/// those, each with a role of its own (only the admin role may write keys): a request that
/// reaches the other function is that function's 404, never served.
#[tokio::test]
async fn the_chat_and_admin_functions_split_the_routes() {
    within(30, async {
        let mut setup = setup().await;
        let gateway = Arc::clone(&setup.gateway);
        let fixture = "apigw_proxy_request.json";
        let chat = |key: &str| {
            event(
                fixture,
                "POST",
                "/v1/chat/completions",
                Some(key),
                Some(&completion_request(false)),
            )
        };
        let list_keys = |key: &str| event(fixture, "GET", "/v1/admin/keys", Some(key), None);
        let key = setup.key.clone();

        setup.router = gateway::http::router_for(Arc::clone(&gateway), Routes::DataPlane);
        let answer = invoke(&setup, chat(&key)).await;
        assert_eq!(
            answer.status, 200,
            "chat on the chat function: {}",
            answer.body
        );
        let answer = invoke(&setup, list_keys(&key)).await;
        assert_eq!(
            answer.status, 404,
            "admin route on the chat function: {}",
            answer.body
        );

        setup.router = gateway::http::router_for(gateway, Routes::Admin);
        let answer = invoke(&setup, list_keys(&key)).await;
        // The route is there: a key without the admin scope is refused by it, not a 404.
        assert_eq!(
            answer.status, 403,
            "admin route on the admin function: {}",
            answer.body
        );
        let answer = invoke(&setup, chat(&key)).await;
        assert_eq!(
            answer.status, 404,
            "chat on the admin function: {}",
            answer.body
        );
        let answer = invoke(&setup, event(fixture, "GET", "/health", None, None)).await;
        assert_eq!(
            answer.status, 404,
            "health on the admin function: {}",
            answer.body
        );
    })
    .await;
}
