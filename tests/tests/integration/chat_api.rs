//! The OpenAI-compatible surface through the real router: shapes, streaming, embeddings, errors.

use crate::common::{MockUpstream, TestGateway, chat, test_config, within};
use base64::Engine;
use serde_json::json;

async fn gateway() -> (MockUpstream, TestGateway, String) {
    let upstream = MockUpstream::start(&[]);
    let gateway = TestGateway::start(&test_config(&upstream.url)).await;
    let key = gateway.plain_key().await;
    (upstream, gateway, key)
}

#[tokio::test]
async fn chat_completion_has_openai_shape_and_gateway_headers() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let reply = gw
            .post("/v1/chat/completions", &key, &chat("mock", "hello there"))
            .await;
        assert_eq!(reply.status, 200);
        let body = reply.json();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "mock");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "Mock answer to: hello there"
        );
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["completion_tokens"], 5);
        assert_eq!(body["usage"]["total_tokens"], 7);
        assert!(
            reply
                .header("x-request-id")
                .is_some_and(|id| !id.is_empty())
        );
        assert_eq!(reply.header("x-gateway-provider"), Some("mock"));
        assert_eq!(reply.header("x-gateway-model"), Some("mock"));
        // 2 prompt tokens at $1000/M plus 5 completion tokens at $2000/M.
        let cost: f64 = reply.header("x-gateway-cost-usd").unwrap().parse().unwrap();
        assert!((cost - 0.012).abs() < 1e-9, "{cost}");
    })
    .await;
}

#[tokio::test]
async fn caller_request_id_is_echoed() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let reply = gw
            .post_with(
                "/v1/chat/completions",
                &key,
                &chat("mock", "hi"),
                &[("x-request-id", "trace-123")],
            )
            .await;
        assert_eq!(reply.header("x-request-id"), Some("trace-123"));
    })
    .await;
}

#[tokio::test]
async fn max_tokens_truncates_with_finish_reason_length() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let mut body = chat("mock", "one two three four five");
        body["max_tokens"] = json!(2);
        let reply = gw.post("/v1/chat/completions", &key, &body).await;
        let body = reply.json();
        assert_eq!(body["choices"][0]["message"]["content"], "Mock answer");
        assert_eq!(body["choices"][0]["finish_reason"], "length");
    })
    .await;
}

#[tokio::test]
async fn stream_sends_chunks_usage_and_done_only_when_asked() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let mut body = chat("mock", "stream me");
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let reply = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("text/event-stream"));
        assert_eq!(reply.streamed_text(), "Mock answer to: stream me");
        let data = reply.sse_data();
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let chunks = reply.sse_chunks();
        let usage_chunk = chunks.last().unwrap();
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk")
        );

        body["stream_options"] = json!({"include_usage": false});
        let reply = gw.post("/v1/chat/completions", &key, &body).await;
        assert!(reply.sse_chunks().iter().all(|c| c.get("usage").is_none()));
        assert_eq!(reply.streamed_text(), "Mock answer to: stream me");
    })
    .await;
}

#[tokio::test]
async fn embeddings_honour_encoding_format() {
    within(30, async {
    let (_upstream, gw, key) = gateway().await;
    let float = gw
        .post(
            "/v1/embeddings",
            &key,
            &json!({"model": "mock-embed", "input": ["the cat sat", "the cat ran"], "dimensions": 16}),
        )
        .await;
    assert_eq!(float.status, 200);
    let float = float.json();
    assert_eq!(float["object"], "list");
    assert_eq!(float["data"].as_array().unwrap().len(), 2);
    let first: Vec<f32> = serde_json::from_value(float["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(first.len(), 16);

    let b64 = gw
        .post(
            "/v1/embeddings",
            &key,
            &json!({"model": "mock-embed", "input": ["the cat sat", "the cat ran"], "dimensions": 16, "encoding_format": "base64"}),
        )
        .await
        .json();
    let encoded = b64["data"][0]["embedding"].as_str().expect("base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, first);
    })
    .await;
}

#[tokio::test]
async fn embeddings_from_an_openai_compatible_upstream_are_converted_to_base64() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let reply = gw
            .post(
                "/v1/embeddings",
                &key,
                &json!({"model": "gpt-embed", "input": "hello world", "encoding_format": "base64"}),
            )
            .await;
        assert_eq!(reply.status, 200);
        let body = reply.json();
        assert!(body["data"][0]["embedding"].is_string());
        assert_eq!(body["model"], "embed-test");
    })
    .await;
}

/// cl100k ids of "hello world" and "Hello", as LangChain's OpenAIEmbeddings sends texts.
const HELLO_WORLD_IDS: [u32; 2] = [15339, 1917];
const HELLO_IDS: [u32; 1] = [9906];

#[tokio::test]
async fn token_id_embeddings_reach_an_openai_upstream_as_the_texts_they_encode() {
    within(30, async {
        let (upstream, gw, key) = gateway().await;
        let reply = gw
            .post(
                "/v1/embeddings",
                &key,
                &json!({"model": "gpt-embed", "input": [HELLO_WORLD_IDS, HELLO_IDS]}),
            )
            .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()["data"].as_array().unwrap().len(), 2);
        let stats = upstream.stats().await;
        assert_eq!(
            stats["last_request"]["input"],
            json!(["hello world", "Hello"])
        );
    })
    .await;
}

#[tokio::test]
async fn token_id_embeddings_equal_their_texts_and_unknown_ids_are_refused() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let embed = |input: serde_json::Value| {
            json!({"model": "mock-embed", "input": input, "encoding_format": "float"})
        };
        let from_text = gw
            .post("/v1/embeddings", &key, &embed(json!("hello world")))
            .await
            .json();
        let from_ids = gw
            .post("/v1/embeddings", &key, &embed(json!(HELLO_WORLD_IDS)))
            .await
            .json();
        assert_eq!(from_ids["data"][0]["embedding"], from_text["data"][0]["embedding"]);

        let unknown = gw
            .post("/v1/embeddings", &key, &embed(json!([[1, 2], [4_000_000]])))
            .await;
        assert_eq!(unknown.status, 400);
        let error = &unknown.json()["error"];
        assert_eq!(error["param"], "input");
        assert!(error["message"].as_str().unwrap().contains("4000000"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn models_lists_what_the_key_may_use() {
    within(30, async {
        let (_upstream, gw, _) = gateway().await;
        let (scoped, _) = gw
            .key(gateway::keys::NewKey {
                name: "scoped".into(),
                models: vec!["mock".into(), "gpt".into()],
                ..Default::default()
            })
            .await;
        let reply = gw
            .send(
                gw.http
                    .get(format!("{}/v1/models", gw.url))
                    .bearer_auth(&scoped),
            )
            .await;
        let ids: Vec<String> = reply.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["gpt", "mock"]);
    })
    .await;
}

#[tokio::test]
async fn health_needs_no_key() {
    within(30, async {
        let (_upstream, gw, _) = gateway().await;
        let reply = gw.send(gw.http.get(format!("{}/health", gw.url))).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["status"], "ok");
    })
    .await;
}

#[tokio::test]
async fn bad_input_gets_clear_4xx_errors_in_openai_shape() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let post_raw = |body: &'static str| {
            gw.http
                .post(format!("{}/v1/chat/completions", gw.url))
                .bearer_auth(&key)
                .body(body)
        };
        let not_json = gw.send(post_raw("{not json")).await;
        assert_eq!(not_json.status, 400);
        assert_eq!(not_json.json()["error"]["type"], "invalid_request_error");
        assert!(
            not_json.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not valid JSON")
        );

        let missing = gw.send(post_raw(r#"{"model":"mock"}"#)).await;
        assert_eq!(missing.status, 400);
        assert!(
            missing.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("messages")
        );

        let bad_role = gw
            .send(post_raw(
                r#"{"model":"mock","messages":[{"role":"wizard","content":"x"}]}"#,
            ))
            .await;
        assert_eq!(bad_role.status, 400);

        let mut hot = chat("mock", "x");
        hot["temperature"] = json!(9);
        let hot = gw.post("/v1/chat/completions", &key, &hot).await;
        assert_eq!(hot.status, 400);
        assert_eq!(hot.json()["error"]["param"], "temperature");

        let unknown = gw
            .post("/v1/chat/completions", &key, &chat("no-such-model", "x"))
            .await;
        assert_eq!(unknown.status, 404);
        assert_eq!(unknown.error_code().as_deref(), Some("model_not_found"));

        let wrong_kind = gw
            .post("/v1/chat/completions", &key, &chat("mock-embed", "x"))
            .await;
        assert_eq!(wrong_kind.status, 400);

        let huge = "x".repeat(5 * 1024 * 1024);
        let too_large = gw
            .post("/v1/chat/completions", &key, &chat("mock", &huge))
            .await;
        assert_eq!(too_large.status, 413);
        assert!(too_large.json()["error"]["message"].is_string());

        let too_long = gw
            .post(
                "/v1/chat/completions",
                &key,
                &chat("mock", &"word ".repeat(20_000)),
            )
            .await;
        assert_eq!(too_long.status, 400);
        assert_eq!(
            too_long.error_code().as_deref(),
            Some("context_length_exceeded")
        );

        let route = gw.send(gw.http.get(format!("{}/v2/nothing", gw.url))).await;
        assert_eq!(route.status, 404);
        assert!(route.json()["error"]["message"].is_string());

        let method = gw
            .send(gw.http.get(format!("{}/v1/chat/completions", gw.url)))
            .await;
        assert_eq!(method.status, 405);
        assert!(method.json()["error"]["message"].is_string());

        // The gateway is still healthy after all of that.
        let ok = gw
            .post("/v1/chat/completions", &key, &chat("mock", "still fine"))
            .await;
        assert_eq!(ok.status, 200);
    })
    .await;
}

#[tokio::test]
async fn content_parts_tools_and_unknown_fields_are_accepted() {
    within(30, async {
    let (_upstream, gw, key) = gateway().await;
    let body = json!({
        "model": "mock",
        "messages": [
            {"role": "developer", "content": "Be exact."},
            {"role": "user", "content": [{"type": "text", "text": "what is in"}, {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png", "detail": "low"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
            {"role": "user", "content": "so?"}
        ],
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "n": 1, "stop": ["\n\n"], "seed": 7, "logprobs": false, "user": "u-1",
        "metadata": {"trace": "t"}, "reasoning_effort": "low", "service_tier": "auto"
    });
    let reply = gw.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "Mock answer to: so?"
    );
    })
    .await;
}
