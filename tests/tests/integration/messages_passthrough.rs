//! What Anthropic's Messages API has and chat completions does not, over sockets: extended
//! thinking, prompt-cache breakpoints and their priced usage, `anthropic-version` and
//! `anthropic-beta`, `top_k`, the matched stop sequence, documents and image tool results. Each
//! test checks what the Anthropic-shaped mock RECEIVED and what the client got back; for an
//! OpenAI-kind model, what is dropped and what is refused.

use crate::common::anthropic::{message, start_gateway};
use crate::common::within;
use gateway::keys::NewKey;
use serde_json::{Value, json};

/// A Messages request to `model` with thinking enabled.
fn thinking_message(model: &str, text: &str) -> Value {
    let mut body = message(model, text);
    body["max_tokens"] = json!(2000);
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    body
}

#[tokio::test]
async fn thinking_reaches_anthropic_and_its_blocks_come_back_and_are_sent_back_unchanged() {
    within(30, async {
        let (upstream, gw, key) = start_gateway().await;
        let headers = [
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "interleaved-thinking-2025-05-14"),
        ];
        let body = thinking_message("claude", "think about this");
        let reply = gw.post_with("/v1/messages", &key, &body, &headers).await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let stats = upstream.stats().await;
        assert_eq!(
            stats["last_request"]["thinking"],
            json!({"type": "enabled", "budget_tokens": 1024})
        );
        assert_eq!(
            stats["last_headers"]["anthropic-beta"],
            "interleaved-thinking-2025-05-14"
        );
        assert_eq!(stats["last_headers"]["anthropic-version"], "2023-06-01");
        let answer = reply.json();
        let thinking = json!({
            "type": "thinking",
            "thinking": "The user wrote 3 words.",
            "signature": "mock-signature-3"
        });
        assert_eq!(answer["content"][0], thinking);
        assert_eq!(answer["content"][1]["type"], "text");

        // The next turn sends the answer back as the assistant's turn: the upstream gets the
        // thinking block exactly as it gave it (the mock refuses one without its signature).
        let mut follow_up = thinking_message("claude", "and now?");
        follow_up["messages"] = json!([
            {"role": "user", "content": "think about this"},
            {"role": "assistant", "content": answer["content"]},
            {"role": "user", "content": "and now?"}
        ]);
        let reply = gw
            .post_with("/v1/messages", &key, &follow_up, &headers)
            .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let sent = &upstream.stats().await["last_request"]["messages"][1];
        assert_eq!(sent["content"][0], thinking);
        assert_eq!(sent["content"][1], answer["content"][1]);
    })
    .await;
}

#[tokio::test]
async fn a_streamed_thinking_block_arrives_as_thinking_and_signature_deltas() {
    within(30, async {
        let (_upstream, gw, key) = start_gateway().await;
        let mut body = thinking_message("claude", "stream your thoughts");
        body["stream"] = json!(true);
        let reply = gw.post("/v1/messages", &key, &body).await;
        assert_eq!(reply.status, 200);
        let events = reply.named_events();
        let (_, start) = &events[0];
        assert!(
            start["message"]["usage"]["input_tokens"].as_u64().unwrap() > 0,
            "message_start carries the upstream's input count: {start}"
        );
        let block_starts: Vec<&Value> = events
            .iter()
            .filter(|(name, _)| name == "content_block_start")
            .map(|(_, data)| data)
            .collect();
        assert_eq!(block_starts[0]["index"], 0);
        assert_eq!(block_starts[0]["content_block"]["type"], "thinking");
        assert_eq!(block_starts[1]["index"], 1);
        assert_eq!(block_starts[1]["content_block"]["type"], "text");
        let deltas = |kind: &str, field: &str| -> String {
            events
                .iter()
                .filter(|(_, data)| data["delta"]["type"] == kind)
                .map(|(_, data)| {
                    assert_eq!(data["index"], 0, "{data}");
                    data["delta"][field].as_str().unwrap().to_owned()
                })
                .collect()
        };
        assert_eq!(
            deltas("thinking_delta", "thinking"),
            "The user wrote 3 words."
        );
        assert_eq!(deltas("signature_delta", "signature"), "mock-signature-3");
    })
    .await;
}

#[tokio::test]
async fn an_openai_kind_model_drops_thinking_and_refuses_documents_naming_them() {
    within(30, async {
        let (upstream, gw, key) = start_gateway().await;
        let mut body = thinking_message("gpt", "and now?");
        body["messages"] = json!([
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "Hi.", "cache_control": {"type": "ephemeral"}}
            ]},
            {"role": "user", "content": "and now?"}
        ]);
        body["top_k"] = json!(3);
        let reply = gw.post("/v1/messages", &key, &body).await;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        let sent = upstream.stats().await["last_request"].clone();
        for field in ["thinking", "anthropic", "top_k"] {
            assert!(sent.get(field).is_none(), "{field} reached OpenAI: {sent}");
        }
        assert_eq!(
            sent["messages"][1],
            json!({"role": "assistant", "content": "Hi."})
        );
        let answer = reply.json();
        assert!(
            answer["content"]
                .as_array()
                .unwrap()
                .iter()
                .all(|block| block["type"] == "text"),
            "{answer}"
        );

        let requests = upstream.requests().await;
        let mut document = message("gpt", "summarise");
        document["messages"][0]["content"] = json!([
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "A report."}},
            {"type": "text", "text": "Summarise."}
        ]);
        let refused = gw.post("/v1/messages", &key, &document).await;
        assert_eq!(refused.status, 400);
        let error = refused.json();
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`document` content blocks"),
            "{error}"
        );
        assert_eq!(upstream.requests().await, requests, "refused before sending");
    })
    .await;
}

#[tokio::test]
async fn cache_breakpoints_reach_anthropic_and_cache_usage_is_reported_and_priced() {
    within(30, async {
        let (upstream, gw, _) = start_gateway().await;
        let (key, record) = gw
            .key(NewKey {
                name: "cached".into(),
                ..NewKey::default()
            })
            .await;
        let ephemeral = json!({"type": "ephemeral"});
        let mut body = message("claude", "what does the manual say");
        body["system"] = json!([
            {"type": "text", "text": "You answer from the manual below."},
            {"type": "text", "text": "The manual: press the red button to start the machine.", "cache_control": ephemeral}
        ]);
        body["tools"] = json!([{"name": "lookup", "input_schema": {"type": "object"}, "cache_control": ephemeral}]);
        body["messages"][0]["content"] = json!([
            {"type": "text", "text": "what does the manual say", "cache_control": ephemeral}
        ]);
        // The gateway's own cache would answer the repeat without asking the upstream.
        let fresh = [("cache-control", "no-cache")];
        let first = gw.post_with("/v1/messages", &key, &body, &fresh).await;
        assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
        let sent = upstream.stats().await["last_request"].clone();
        assert_eq!(sent["system"], body["system"]);
        assert_eq!(sent["tools"][0]["cache_control"], ephemeral);
        assert_eq!(sent["messages"][0]["content"], body["messages"][0]["content"]);
        let written = first.json()["usage"].clone();
        let cached_tokens = written["cache_creation_input_tokens"].as_u64().unwrap();
        assert!(cached_tokens > 0, "{written}");
        assert_eq!(written["cache_read_input_tokens"], 0);

        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let second = gw.post_with("/v1/messages", &key, &streamed, &fresh).await;
        let events = second.named_events();
        let start_usage = &events[0].1["message"]["usage"];
        assert_eq!(start_usage["cache_read_input_tokens"], cached_tokens);
        assert_eq!(start_usage["cache_creation_input_tokens"], 0);
        let (name, delta) = &events[events.len() - 2];
        assert_eq!(name, "message_delta");
        assert_eq!(delta["usage"]["cache_read_input_tokens"], cached_tokens);
        assert_eq!(delta["usage"]["input_tokens"], written["input_tokens"]);

        // `claude` costs $3 in and $15 out per million: writes at 1.25x the input price, reads
        // at 0.1x.
        let cost = |usage: &Value, read: u64, write: u64| {
            let number = |field: &str| usage[field].as_u64().unwrap() as f64;
            (number("input_tokens") * 3.0
                + write as f64 * 3.75
                + read as f64 * 0.3
                + number("output_tokens") * 15.0)
                / 1e6
        };
        let expected = cost(&written, 0, cached_tokens) + cost(&delta["usage"], cached_tokens, 0);
        let spent = gw.spent(&record.id).await;
        assert!((spent - expected).abs() < 1e-12, "{spent} != {expected}");
        let header: f64 = first.header("x-gateway-cost-usd").unwrap().parse().unwrap();
        assert!((header - cost(&written, 0, cached_tokens)).abs() < 1e-9);

        // A chat completions client sees the cache read as OpenAI reports it.
        let chat = json!({
            "model": "claude",
            "max_tokens": 100,
            "messages": [
                {"role": "system", "content": [
                    {"type": "text", "text": "You answer from the manual below."},
                    {"type": "text", "text": "The manual: press the red button to start the machine.", "cache_control": ephemeral}
                ]},
                {"role": "user", "content": "what does the manual say"}
            ]
        });
        let details = |reply: &crate::common::Reply| {
            assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
            reply.json()["usage"]["prompt_tokens_details"].clone()
        };
        let wrote = details(&gw.post_with("/v1/chat/completions", &key, &chat, &fresh).await);
        let written = wrote["cache_creation_tokens"].as_u64().unwrap();
        assert!(written > 0, "{wrote}");
        assert_eq!(wrote["cached_tokens"], 0);
        let read = details(&gw.post_with("/v1/chat/completions", &key, &chat, &fresh).await);
        assert_eq!(read["cached_tokens"], written, "{read}");
    })
    .await;
}

#[tokio::test]
async fn top_k_stop_sequences_metadata_documents_and_image_tool_results_reach_anthropic() {
    within(30, async {
        let (upstream, gw, key) = start_gateway().await;
        let pdf =
            json!({"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"});
        let image = json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="});
        let mut body = message("claude", "");
        body["top_k"] = json!(7);
        body["stop_sequences"] = json!(["button"]);
        body["metadata"] = json!({"user_id": "user-9"});
        body["tools"] = json!([{"name": "camera", "input_schema": {"type": "object"}}]);
        body["messages"] = json!([
            {"role": "user", "content": [
                {"type": "document", "source": pdf, "title": "Manual"},
                {"type": "text", "text": "take a picture"}
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "camera", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "a photo"},
                    {"type": "image", "source": image}
                ]},
                {"type": "text", "text": "press the red button please"}
            ]}
        ]);
        let reply = gw.post("/v1/messages", &key, &body).await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let sent = upstream.stats().await["last_request"].clone();
        assert_eq!(sent["top_k"], 7);
        assert_eq!(sent["stop_sequences"], json!(["button"]));
        assert_eq!(sent["metadata"], json!({"user_id": "user-9"}));
        assert_eq!(
            sent["messages"][0]["content"][0],
            json!({"type": "document", "source": pdf, "title": "Manual"})
        );
        assert_eq!(
            sent["messages"][2]["content"][0],
            json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "text", "text": "a photo"},
                {"type": "image", "source": image}
            ]})
        );
        let answer = reply.json();
        assert_eq!(answer["stop_reason"], "stop_sequence", "{answer}");
        assert_eq!(answer["stop_sequence"], "button");

        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let events = gw
            .post("/v1/messages", &key, &streamed)
            .await
            .named_events();
        let (_, delta) = &events[events.len() - 2];
        assert_eq!(
            delta["delta"],
            json!({"stop_reason": "stop_sequence", "stop_sequence": "button"})
        );
    })
    .await;
}
