//! Providers against the mock provider speaking each vendor's real wire format.

use crate::common::{MockUpstream, Reply, TestGateway, UPSTREAM_KEY, chat, test_config, within};
use serde_json::{Value, json};

async fn gateway() -> (MockUpstream, TestGateway, String) {
    let upstream = MockUpstream::start(&[]);
    let gateway = TestGateway::start(&test_config(&upstream.url)).await;
    let key = gateway.plain_key().await;
    (upstream, gateway, key)
}

#[tokio::test]
async fn openai_compatible_upstream_gets_the_upstream_model_credential_and_unknown_fields() {
    within(30, async {
        let (upstream, gw, key) = gateway().await;
        let mut body = chat("gpt", "hello upstream");
        body["reasoning_effort"] = json!("low");
        body["user"] = json!("end-user-1");
        let reply = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(
            reply.json()["choices"][0]["message"]["content"],
            "echo: hello upstream"
        );
        assert_eq!(reply.header("x-gateway-provider"), Some("upstream"));
        let stats = upstream.stats().await;
        assert_eq!(stats["last_request"]["model"], "gpt-test");
        assert_eq!(stats["last_request"]["reasoning_effort"], "low");
        assert_eq!(stats["last_request"]["user"], "end-user-1");
        assert_eq!(
            stats["last_headers"]["authorization"],
            format!("Bearer {UPSTREAM_KEY}")
        );
    })
    .await;
}

#[tokio::test]
async fn openai_compatible_stream_passes_through_and_usage_is_requested_upstream() {
    within(30, async {
        let (upstream, gw, key) = gateway().await;
        let mut body = chat("gpt", "stream this please");
        body["stream"] = json!(true);
        let reply = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.streamed_text(), "echo: stream this please");
        assert_eq!(reply.sse_data().last().map(String::as_str), Some("[DONE]"));
        // The client did not ask for usage, so it gets none, but the gateway asked for it upstream.
        assert!(reply.sse_chunks().iter().all(|c| c["usage"].is_null()));
        let stats = upstream.stats().await;
        assert_eq!(
            stats["last_request"]["stream_options"]["include_usage"],
            true
        );
    })
    .await;
}

#[tokio::test]
async fn azure_uses_deployment_urls_and_the_api_key_header() {
    within(30, async {
        let (upstream, gw, key) = gateway().await;
        let reply = gw
            .post("/v1/chat/completions", &key, &chat("azure-gpt", "hi azure"))
            .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()["model"], "my-deployment");
        let stats = upstream.stats().await;
        assert_eq!(stats["last_headers"]["api-key"], UPSTREAM_KEY);
        assert!(stats["last_headers"].get("authorization").is_none());
    })
    .await;
}

#[tokio::test]
async fn anthropic_translates_system_prompt_and_usage() {
    within(30, async {
        let (upstream, gw, key) = gateway().await;
        let body = json!({
            "model": "claude",
            "messages": [
                {"role": "system", "content": "You are terse always."},
                {"role": "user", "content": "hello claude"}
            ],
            "max_tokens": 50
        });
        let reply = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let answer = reply.json();
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            "[system: You are terse] echo: hello claude"
        );
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
        assert_eq!(answer["object"], "chat.completion");
        assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        assert_eq!(answer["usage"]["completion_tokens"], 7);
        let stats = upstream.stats().await;
        assert_eq!(stats["last_request"]["system"], "You are terse always.");
        assert_eq!(stats["last_request"]["model"], "claude-test");
        assert_eq!(stats["last_headers"]["x-api-key"], UPSTREAM_KEY);
        assert!(stats["last_headers"]["anthropic-version"].is_string());
    })
    .await;
}

#[tokio::test]
async fn anthropic_tool_use_becomes_tool_calls_both_ways() {
    within(30, async {
    let (upstream, gw, key) = gateway().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather by city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let first = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "claude", "messages": [{"role": "user", "content": "weather in Paris?"}], "tools": tools}),
        )
        .await
        .json();
    assert_eq!(first["choices"][0]["finish_reason"], "tool_calls");
    let call = &first["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: serde_json::Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["city"], "Paris");

    // The tool result goes back as an Anthropic tool_result block in a user turn.
    let second = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "claude", "tools": tools, "messages": [
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}
            ]}),
        )
        .await;
    assert_eq!(
        second.status,
        200,
        "{}",
        String::from_utf8_lossy(&second.body)
    );
    let sent = upstream.stats().await["last_request"].clone();
    assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(sent["messages"][2]["role"], "user");
    assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");
    assert_eq!(sent["messages"][2]["content"][0]["tool_use_id"], call["id"]);
    assert_eq!(sent["tools"][0]["input_schema"]["type"], "object");
    })
    .await;
}

#[tokio::test]
async fn anthropic_stream_becomes_openai_chunks_with_usage() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let body = json!({
            "model": "claude",
            "messages": [{"role": "user", "content": "stream from claude"}],
            "stream": true,
            "stream_options": {"include_usage": true}
        });
        let reply = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.streamed_text(), "echo: stream from claude");
        let chunks = reply.sse_chunks();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(
            chunks
                .iter()
                .any(|c| c["choices"][0]["finish_reason"] == "stop")
        );
        assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 4);
        assert_eq!(reply.sse_data().last().map(String::as_str), Some("[DONE]"));
    })
    .await;
}

#[tokio::test]
async fn anthropic_streamed_tool_calls_assemble_to_json_arguments() {
    within(30, async {
    let (_upstream, gw, key) = gateway().await;
    let body = json!({
        "model": "claude",
        "messages": [{"role": "user", "content": "weather please"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "stream": true
    });
    let reply = gw.post("/v1/chat/completions", &key, &body).await;
    let mut arguments = String::new();
    let mut name = None;
    for chunk in reply.sse_chunks() {
        if let Some(call) = chunk["choices"][0]["delta"]["tool_calls"].get(0) {
            if let Some(n) = call["function"]["name"].as_str() {
                name = Some(n.to_owned());
            }
            arguments.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(name.as_deref(), Some("get_weather"));
    let parsed: serde_json::Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(parsed["city"], "Paris");
    })
    .await;
}

#[tokio::test]
async fn upstream_errors_map_to_the_status_codes_sdks_expect() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let cases = [
            ("err-429", 429, None),
            ("err-400", 400, None),
            ("err-context", 400, Some("context_length_exceeded")),
            ("err-content", 400, Some("content_filter")),
            // The provider rejecting the gateway's own credential is not the client's fault.
            ("err-401", 502, None),
            ("err-500", 502, None),
            ("claude-429", 429, None),
            ("claude-529", 502, None),
            ("claude-context", 400, Some("context_length_exceeded")),
        ];
        for (model, status, code) in cases {
            let reply = gw
                .post("/v1/chat/completions", &key, &chat(model, "x"))
                .await;
            assert_eq!(
                reply.status,
                status,
                "{model}: {}",
                String::from_utf8_lossy(&reply.body)
            );
            let error = &reply.json()["error"];
            assert!(
                error["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{model}"
            );
            assert!(error["type"].is_string(), "{model}");
            if let Some(code) = code {
                assert_eq!(error["code"], code, "{model}");
            }
            if status == 429 {
                assert_eq!(reply.header("retry-after"), Some("1"), "{model}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn upstream_error_before_the_stream_starts_is_a_plain_error_response() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let mut body = chat("err-500", "x");
        body["stream"] = json!(true);
        let reply = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(reply.status, 502);
        assert_eq!(reply.header("content-type"), Some("application/json"));
    })
    .await;
}

#[tokio::test]
async fn a_failing_model_falls_back_and_bills_the_model_that_answered() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let reply = gw
            .post(
                "/v1/chat/completions",
                &key,
                &chat("flaky", "fall back please"),
            )
            .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.header("x-gateway-model"), Some("gpt"));
        assert_eq!(reply.json()["model"], "gpt-test");
        let usage = &reply.json()["usage"];
        let (prompt, completion) = (
            usage["prompt_tokens"].as_f64().unwrap(),
            usage["completion_tokens"].as_f64().unwrap(),
        );
        let expected = (prompt * 1.0 + completion * 2.0) / 1e6;
        let cost: f64 = reply.header("x-gateway-cost-usd").unwrap().parse().unwrap();
        assert!((cost - expected).abs() < 1e-8, "{cost} vs {expected}");
    })
    .await;
}

/// A loopback port where nothing listens.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// An OpenAI-compatible upstream on loopback (as an internal vLLM or a proxy would be) whose
/// refusals quote what must not reach a client: its own URLs and hosts, its name for the model,
/// and what it thinks of the gateway's key. The model name picks the refusal.
async fn leaky_upstream() -> String {
    async fn refuse(axum::Json(request): axum::Json<Value>) -> (axum::http::StatusCode, String) {
        let error = |message: &str| {
            json!({"error": {"message": message, "type": "invalid_request_error", "param": "model", "code": "invalid_value"}})
                .to_string()
        };
        let (status, body) = match request["model"].as_str().unwrap_or_default() {
            "internal-deployment-7" => (
                400,
                error(
                    "Invalid value for 'model': 'internal-deployment-7' is not enabled at \
                     http://10.20.30.40:8443/openai/deployments/internal-deployment-7/chat/completions?api-version=2024-10-21 \
                     (served by llm-7.corp.internal:8443).",
                ),
            ),
            "key-in-400" => (400, error("Incorrect API key provided: sk-live-****1234.")),
            "html-400" => (
                400,
                "<html><body>400 Bad Request from proxy 10.20.30.40</body></html>".to_owned(),
            ),
            _ => (
                401,
                error(
                    "Incorrect API key provided: sk-live-****1234. You can find your API key at \
                     https://platform.openai.com/account/api-keys.",
                ),
            ),
        };
        let status = axum::http::StatusCode::from_u16(status).expect("status");
        (status, body)
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(refuse));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

fn assert_leaks_none(reply: &Reply, secrets: &[&str]) {
    let body = String::from_utf8_lossy(&reply.body);
    for secret in secrets {
        assert!(
            !body.contains(secret),
            "`{secret}` reached the client: {body}"
        );
    }
}

fn streamed(body: Value) -> Value {
    let mut body = body;
    body["stream"] = json!(true);
    body
}

#[tokio::test]
async fn upstream_failures_name_the_provider_and_the_class_never_the_upstream() {
    within(60, async {
        let closed = closed_port();
        let leaky = leaky_upstream().await;
        let config = format!(
            r#"
[routing]
max_attempts = 2
backoff_base_ms = 10
backoff_max_ms = 20

[providers.azure-east]
kind = "azure"
base_url = "http://127.0.0.1:{closed}"
api_key_env = "UPSTREAM_KEY"
api_version = "2024-10-21"
timeouts = {{ connect_ms = 1000, first_byte_ms = 2000, first_token_ms = 2000, idle_ms = 2000, total_ms = 5000 }}

[providers.vllm]
kind = "openai"
base_url = "{leaky}/v1"
api_key_env = "UPSTREAM_KEY"

[models.gpt-east]
deployments = [{{ provider = "azure-east", model = "secret-deployment" }}]

[models.public-model]
deployments = [{{ provider = "vllm", model = "internal-deployment-7" }}]

[models.key-in-400]
deployments = [{{ provider = "vllm", model = "key-in-400" }}]

[models.html-400]
deployments = [{{ provider = "vllm", model = "html-400" }}]

[models.bad-key]
deployments = [{{ provider = "vllm", model = "bad-key" }}]
"#
        );
        let gw = TestGateway::start(&config).await;
        let key = gw.plain_key().await;
        let port = closed.to_string();
        let upstream_port = leaky.rsplit(':').next().unwrap_or_default().to_owned();
        let everything_upstream = [
            "127.0.0.1",
            "http",
            port.as_str(),
            upstream_port.as_str(),
            "secret-deployment",
            "internal-deployment-7",
            "openai/deployments",
            "api-version",
            "2024-10-21",
            "10.20.30.40",
            "corp.internal",
            "sk-",
            "Incorrect API key",
            "<html>",
        ];

        // The issue's case: an unreachable Azure deployment, plain and streamed.
        for body in [chat("gpt-east", "hi"), streamed(chat("gpt-east", "hi"))] {
            let reply = gw.post("/v1/chat/completions", &key, &body).await;
            assert_eq!(reply.status, 502);
            assert_eq!(
                reply.json()["error"]["message"],
                "Provider `azure-east` is unreachable or dropped the connection."
            );
            assert_eq!(reply.json()["error"]["type"], "api_error");
            assert!(reply.header("x-request-id").is_some());
            assert_leaks_none(&reply, &everything_upstream);
        }

        // The upstream refusing the gateway's key, in a 401 or in a 400: the gateway's problem.
        for model in ["bad-key", "key-in-400"] {
            let reply = gw
                .post("/v1/chat/completions", &key, &chat(model, "hi"))
                .await;
            assert_eq!(reply.status, 502, "{model}");
            assert_eq!(
                reply.json()["error"]["message"],
                "Provider `vllm` refused the gateway's credentials: a gateway configuration \
                 problem, not the request's.",
                "{model}"
            );
            assert_leaks_none(&reply, &everything_upstream);
        }

        // A client mistake keeps the provider's reason, code and param, minus the upstream.
        let reply = gw
            .post("/v1/chat/completions", &key, &chat("public-model", "hi"))
            .await;
        assert_eq!(reply.status, 400);
        let error = &reply.json()["error"];
        assert_eq!(
            error["message"],
            "Invalid value for 'model': 'public-model' is not enabled at [redacted] (served by \
             [redacted])."
        );
        assert_eq!(error["code"], "invalid_value");
        assert_eq!(error["param"], "model");
        assert_leaks_none(&reply, &everything_upstream);

        // A refusal that is not an error object (a proxy's page) is not forwarded.
        let reply = gw
            .post("/v1/chat/completions", &key, &chat("html-400", "hi"))
            .await;
        assert_eq!(reply.status, 400);
        assert_leaks_none(&reply, &everything_upstream);
    })
    .await;
}

#[tokio::test]
async fn a_stream_broken_upstream_names_its_provider_in_the_error_event() {
    within(60, async {
        let upstream = MockUpstream::start(&[]);
        let config = format!(
            r#"
[providers.edge-vllm]
kind = "openai"
base_url = "{url}/v1"
api_key_env = "UPSTREAM_KEY"

[models.cut]
deployments = [{{ provider = "edge-vllm", model = "fault:tokens=60;cut_after=40" }}]
"#,
            url = upstream.url
        );
        let gw = TestGateway::start(&config).await;
        let key = gw.plain_key().await;
        let reply = gw
            .post("/v1/chat/completions", &key, &streamed(chat("cut", "hi")))
            .await;
        assert_eq!(reply.status, 200);
        let event = reply
            .sse_data()
            .into_iter()
            .find(|data| data.contains("\"error\""))
            .expect("an error event");
        let error: Value = serde_json::from_str(&event).expect("json");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("Provider `edge-vllm` "), "{message}");
        for secret in ["127.0.0.1", "http", "fault:"] {
            assert!(
                !event.contains(secret),
                "`{secret}` reached the client: {event}"
            );
        }
    })
    .await;
}
