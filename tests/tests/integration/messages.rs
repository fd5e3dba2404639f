//! Anthropic's Messages API (`/v1/messages`) over sockets: the same pipeline as chat completions
//! behind an OpenAI-kind (`gpt`) and an Anthropic-kind (`claude`) provider, its event stream's
//! framing, Anthropic's error shapes (from the key check, scopes and limits too), `x-api-key`,
//! and one request billed and cached the same through both APIs.

use crate::common::anthropic::{message, start_gateway};
use crate::common::{chat, within};
use gateway::keys::{NewKey, Scope};
use serde_json::{Value, json};

#[tokio::test]
async fn messages_are_answered_through_openai_and_anthropic_kind_providers() {
    within(30, async {
        let (upstream, gw, key) = start_gateway().await;
        for (model, upstream_model) in [("gpt", "gpt-test"), ("claude", "claude-test")] {
            let mut body = message(model, "hello there");
            body["system"] = json!([{"type": "text", "text": "Be brief."}]);
            body["stop_sequences"] = json!(["STOP"]);
            body["metadata"] = json!({"user_id": "user-7"});
            let reply = gw.post("/v1/messages", &key, &body).await;
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            let answer = reply.json();
            assert_eq!(answer["type"], "message");
            assert_eq!(answer["role"], "assistant");
            // The Anthropic-shaped mock echoes the `system` it was sent; the OpenAI one does not.
            let echo = match model {
                "claude" => "[system: Be brief.] echo: hello there",
                _ => "echo: hello there",
            };
            assert_eq!(answer["content"], json!([{"type": "text", "text": echo}]));
            assert_eq!(answer["stop_reason"], "end_turn");
            assert!(answer["usage"]["input_tokens"].as_u64().unwrap() > 0);
            assert!(answer["usage"]["output_tokens"].as_u64().unwrap() > 0);
            assert_eq!(reply.header("x-gateway-model"), Some(model));
            let sent = &upstream.stats().await["last_request"];
            assert_eq!(sent["model"], upstream_model);
            assert_eq!(sent["max_tokens"], 100);
            if model == "gpt" {
                assert_eq!(
                    sent["messages"][0],
                    json!({"role": "system", "content": "Be brief."})
                );
                assert_eq!(sent["stop"], json!(["STOP"]));
                assert_eq!(sent["user"], "user-7");
            } else {
                assert_eq!(sent["system"], "Be brief.");
                assert_eq!(sent["stop_sequences"], json!(["STOP"]));
                assert_eq!(sent["metadata"], json!({"user_id": "user-7"}));
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_streamed_message_is_the_full_event_sequence_for_either_provider_kind() {
    within(30, async {
        let (_upstream, gw, key) = start_gateway().await;
        for model in ["gpt", "claude"] {
            let mut body = message(model, "stream me please");
            body["stream"] = json!(true);
            let reply = gw.post("/v1/messages", &key, &body).await;
            assert_eq!(reply.status, 200);
            assert!(
                reply
                    .header("content-type")
                    .unwrap()
                    .starts_with("text/event-stream")
            );
            let events = reply.named_events();
            let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names[..3], ["message_start", "ping", "content_block_start"]);
            assert_eq!(
                names[names.len() - 3..],
                ["content_block_stop", "message_delta", "message_stop"]
            );
            let text: String = events
                .iter()
                .filter_map(|(_, d)| d["delta"]["text"].as_str())
                .collect();
            assert_eq!(text, "echo: stream me please", "{model}");
            let (_, delta) = &events[names.len() - 2];
            assert_eq!(delta["delta"]["stop_reason"], "end_turn");
            assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
            assert!(delta["usage"]["input_tokens"].as_u64().unwrap() > 0);
        }
    })
    .await;
}

#[tokio::test]
async fn a_streamed_tool_call_arrives_as_input_json_deltas() {
    within(30, async {
        let (_upstream, gw, key) = start_gateway().await;
        for model in ["gpt", "claude"] {
            let mut body = message(model, "What is the weather in Paris?");
            body["stream"] = json!(true);
            body["tools"] = json!([{"name": "get_weather", "input_schema": {
                "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]
            }}]);
            let reply = gw.post("/v1/messages", &key, &body).await;
            let events = reply.named_events();
            let start = events
                .iter()
                .find(|(_, d)| d["content_block"]["type"] == "tool_use")
                .unwrap_or_else(|| panic!("no tool_use block for {model}: {events:?}"));
            assert_eq!(start.1["content_block"]["name"], "get_weather");
            let json: String = events
                .iter()
                .filter(|(_, d)| d["delta"]["type"] == "input_json_delta")
                .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(
                serde_json::from_str::<Value>(&json).unwrap(),
                json!({"city": "Paris"})
            );
            let stop = events.iter().find(|(n, _)| n == "message_delta").unwrap();
            assert_eq!(stop.1["delta"]["stop_reason"], "tool_use");
        }
    })
    .await;
}

#[tokio::test]
async fn x_api_key_authenticates_and_failures_take_anthropic_error_shapes() {
    within(30, async {
        let (_upstream, gw, key) = start_gateway().await;
        let send = |headers: Vec<(&'static str, String)>, body: Value| {
            let mut request = gw
                .http
                .post(format!("{}/v1/messages", gw.url))
                .header("anthropic-version", "2023-06-01")
                .json(&body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            gw.send(request)
        };
        let ok = send(vec![("x-api-key", key.clone())], message("mock", "hi")).await;
        assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));

        let missing = send(vec![], message("mock", "hi")).await;
        assert_eq!(missing.status, 401);
        assert_eq!(missing.json()["type"], "error");
        assert_eq!(missing.json()["error"]["type"], "authentication_error");

        let mut no_max_tokens = message("mock", "hi");
        no_max_tokens.as_object_mut().unwrap().remove("max_tokens");
        let invalid = send(vec![("x-api-key", key.clone())], no_max_tokens).await;
        assert_eq!(invalid.status, 400);
        assert_eq!(invalid.json()["error"]["type"], "invalid_request_error");
        assert!(
            invalid.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_tokens")
        );

        let (embed_only, _) = gw
            .key(NewKey {
                name: "embed-only".into(),
                scopes: vec![Scope::Embeddings],
                ..NewKey::default()
            })
            .await;
        let forbidden = send(vec![("x-api-key", embed_only)], message("mock", "hi")).await;
        assert_eq!(forbidden.status, 403);
        assert_eq!(forbidden.json()["error"]["type"], "permission_error");

        let (one_a_minute, _) = gw
            .key(NewKey {
                name: "slow".into(),
                rpm: Some(1),
                ..NewKey::default()
            })
            .await;
        let first = send(
            vec![("x-api-key", one_a_minute.clone())],
            message("mock", "a"),
        )
        .await;
        assert_eq!(first.status, 200);
        let limited = send(vec![("x-api-key", one_a_minute)], message("mock", "b")).await;
        assert_eq!(limited.status, 429);
        assert_eq!(limited.json()["error"]["type"], "rate_limit_error");
        assert!(limited.header("retry-after").is_some());
    })
    .await;
}

#[tokio::test]
async fn count_tokens_and_the_anthropic_model_list() {
    within(30, async {
        let (_upstream, gw, key) = start_gateway().await;
        let counted = gw
            .post(
                "/v1/messages/count_tokens",
                &key,
                &json!({"model": "mock", "messages": [{"role": "user", "content": "x".repeat(400)}]}),
            )
            .await;
        assert_eq!(counted.status, 200);
        // The estimate the limits reserve: 400 characters, one message.
        assert_eq!(counted.json(), json!({"input_tokens": 100 + 4 + 3}));

        let anthropic = gw
            .send(
                gw.http
                    .get(format!("{}/v1/models", gw.url))
                    .header("x-api-key", &key)
                    .header("anthropic-version", "2023-06-01"),
            )
            .await;
        let list = anthropic.json();
        assert_eq!(list["has_more"], false);
        assert!(list["data"].as_array().unwrap().iter().any(|m| m["id"] == "claude"));
        assert!(list["data"].as_array().unwrap().iter().all(|m| m["type"] == "model"));
        let openai = gw
            .send(gw.http.get(format!("{}/v1/models", gw.url)).bearer_auth(&key))
            .await;
        assert_eq!(openai.json()["object"], "list");
    })
    .await;
}

#[tokio::test]
async fn one_request_through_chat_and_messages_is_billed_the_same_and_cached_once() {
    within(30, async {
        let (upstream, gw, _) = start_gateway().await;
        let (chat_key, chat_record) = gw
            .key(NewKey {
                name: "chat".into(),
                ..NewKey::default()
            })
            .await;
        let (messages_key, messages_record) = gw
            .key(NewKey {
                name: "messages".into(),
                ..NewKey::default()
            })
            .await;
        let mut chat_body = chat("gpt", "same request twice");
        chat_body["max_tokens"] = json!(100);
        chat_body["temperature"] = json!(0);
        let mut messages_body = message("gpt", "same request twice");
        messages_body["temperature"] = json!(0);

        let fresh = [("cache-control", "no-cache")];
        let billed_chat = gw
            .post_with("/v1/chat/completions", &chat_key, &chat_body, &fresh)
            .await;
        let billed_messages = gw
            .post_with("/v1/messages", &messages_key, &messages_body, &fresh)
            .await;
        assert_eq!(billed_chat.status, 200);
        assert_eq!(billed_messages.status, 200);
        let chat_spent = gw.spent(&chat_record.id).await;
        assert!(chat_spent > 0.0);
        assert_eq!(gw.spent(&messages_record.id).await, chat_spent);
        assert_eq!(
            billed_messages.header("x-gateway-cost-usd"),
            billed_chat.header("x-gateway-cost-usd")
        );

        let cached = gw.post("/v1/chat/completions", &chat_key, &chat_body).await;
        assert_eq!(cached.header("x-gateway-cache"), Some("MISS"));
        let requests = upstream.requests().await;
        let hit = gw.post("/v1/messages", &messages_key, &messages_body).await;
        assert_eq!(hit.header("x-gateway-cache"), Some("HIT"));
        assert_eq!(upstream.requests().await, requests);
        assert_eq!(
            hit.json()["content"][0]["text"],
            cached.json()["choices"][0]["message"]["content"]
        );
    })
    .await;
}
