//! Providers against the mock provider speaking each vendor's real wire format.

mod common;

use common::{MockUpstream, TestGateway, UPSTREAM_KEY, chat, test_config};
use serde_json::json;

async fn gateway() -> (MockUpstream, TestGateway, String) {
    let upstream = MockUpstream::start(&[]);
    let gateway = TestGateway::start(&test_config(&upstream.url)).await;
    let key = gateway.plain_key().await;
    (upstream, gateway, key)
}

#[tokio::test]
async fn openai_compatible_upstream_gets_the_upstream_model_credential_and_unknown_fields() {
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
}

#[tokio::test]
async fn openai_compatible_stream_passes_through_and_usage_is_requested_upstream() {
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
}

#[tokio::test]
async fn azure_uses_deployment_urls_and_the_api_key_header() {
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
}

#[tokio::test]
async fn anthropic_translates_system_prompt_and_usage() {
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
}

#[tokio::test]
async fn anthropic_tool_use_becomes_tool_calls_both_ways() {
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
}

#[tokio::test]
async fn anthropic_stream_becomes_openai_chunks_with_usage() {
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
}

#[tokio::test]
async fn anthropic_streamed_tool_calls_assemble_to_json_arguments() {
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
}

#[tokio::test]
async fn upstream_errors_map_to_the_status_codes_sdks_expect() {
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
}

#[tokio::test]
async fn upstream_error_before_the_stream_starts_is_a_plain_error_response() {
    let (_upstream, gw, key) = gateway().await;
    let mut body = chat("err-500", "x");
    body["stream"] = json!(true);
    let reply = gw.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn a_failing_model_falls_back_and_bills_the_model_that_answered() {
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
}
