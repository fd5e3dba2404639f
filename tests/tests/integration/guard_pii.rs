//! The PII policy through the router, against the built-in mock model (it answers "Mock answer
//! to:" and the words of the last user message, so its answer shows what the provider saw).

use crate::common::{TestGateway, chat, test_config, within};
use gateway::keys::NewKey;
use serde_json::{Value, json};

const EMAIL: &str = "anna.schmidt@example.com";
const CARD: &str = "4111-1111-1111-1111";

fn config() -> String {
    let mut config = test_config("http://127.0.0.1:9");
    for (model, guard) in [
        ("mock-block", r#"pii = "block""#),
        ("mock-redact", r#"pii = "redact""#),
        ("mock-restore", "pii = \"redact\"\nrestore_pii = true"),
        ("mock-logs", r#"pii = "redact_logs""#),
    ] {
        config.push_str(&format!(
            "\n[models.{model}]\ndeployments = [{{ provider = \"mock\", model = \"mock\" }}]\n\
             [models.{model}.guard]\n{guard}\n"
        ));
    }
    config
}

fn personal(model: &str) -> Value {
    let mut body = chat(model, &format!("mail {EMAIL} card {CARD} again {EMAIL}"));
    body["temperature"] = json!(0);
    body
}

fn answer(reply: &crate::common::Reply) -> String {
    reply.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn block_refuses_naming_the_kinds_and_the_message_never_the_value() {
    within(30, async {
        let gw = TestGateway::start(&config()).await;
        let key = gw.plain_key().await;
        let mut body = personal("mock-block");
        body["messages"] = json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": format!("mail {EMAIL} card {CARD}")},
        ]);
        let reply = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(reply.status, 400);
        assert_eq!(reply.error_code().as_deref(), Some("pii_detected"));
        let error = &reply.json()["error"];
        assert_eq!(error["param"], "messages");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("Message 1") && message.contains("email") && message.contains("card")
        );
        let raw = String::from_utf8_lossy(&reply.body);
        assert!(!raw.contains(EMAIL) && !raw.contains("4111"), "{raw}");
        // Ordinary numbers pass.
        let clean = chat("mock-block", "order 2024-000123 costs $19.99 on 2024-03-15");
        assert_eq!(
            gw.post("/v1/chat/completions", &key, &clean).await.status,
            200
        );
    })
    .await;
}

#[tokio::test]
async fn redact_sends_placeholders_and_restore_puts_the_originals_back() {
    within(30, async {
        let gw = TestGateway::start(&config()).await;
        let key = gw.plain_key().await;
        let redacted = answer(
            &gw.post("/v1/chat/completions", &key, &personal("mock-redact"))
                .await,
        );
        assert_eq!(
            redacted,
            "Mock answer to: mail [EMAIL_1] card [CARD_1] again [EMAIL_1]"
        );

        // Both models share the mock deployment, so this is a hit on the answer just cached in
        // placeholder form, restored with this request's values.
        let hit = gw
            .post("/v1/chat/completions", &key, &personal("mock-restore"))
            .await;
        assert_eq!(hit.header("x-gateway-cache"), Some("HIT"));
        let expected = format!("Mock answer to: mail {EMAIL} card {CARD} again {EMAIL}");
        assert_eq!(answer(&hit), expected);
        // An answer straight from the provider is restored the same way.
        let mut miss = personal("mock-restore");
        miss["temperature"] = json!(0.2);
        miss["messages"][0]["content"] = json!(format!("ring +44 20 7946 0958 or {EMAIL}"));
        let reply = gw.post("/v1/chat/completions", &key, &miss).await;
        assert_ne!(reply.header("x-gateway-cache"), Some("HIT"));
        assert_eq!(
            answer(&reply),
            format!("Mock answer to: ring +44 20 7946 0958 or {EMAIL}")
        );

        for model in ["mock-restore", "mock-redact"] {
            let mut streamed = personal(model);
            streamed["stream"] = json!(true);
            streamed["temperature"] = json!(0.5);
            let reply = gw.post("/v1/chat/completions", &key, &streamed).await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.sse_data().last().map(String::as_str), Some("[DONE]"));
            let text = reply.streamed_text();
            if model == "mock-restore" {
                assert_eq!(text.trim_end(), expected);
            } else {
                assert!(
                    text.contains("[EMAIL_1]") && !text.contains(EMAIL),
                    "{text}"
                );
            }
        }
    })
    .await;
}

#[tokio::test]
async fn redact_logs_lets_the_provider_see_the_text_but_keeps_the_answer_out_of_the_cache() {
    within(30, async {
        let gw = TestGateway::start(&config()).await;
        let key = gw.plain_key().await;
        let first = gw
            .post("/v1/chat/completions", &key, &personal("mock-logs"))
            .await;
        assert!(
            answer(&first).contains(EMAIL),
            "the provider saw the original"
        );
        let second = gw
            .post("/v1/chat/completions", &key, &personal("mock-logs"))
            .await;
        assert_eq!(second.status, 200);
        assert_ne!(second.header("x-gateway-cache"), Some("HIT"));
        // Without personal data the same model caches as usual.
        let mut clean = chat("mock-logs", "nothing personal here");
        clean["temperature"] = json!(0);
        gw.post("/v1/chat/completions", &key, &clean).await;
        let again = gw.post("/v1/chat/completions", &key, &clean).await;
        assert_eq!(again.header("x-gateway-cache"), Some("HIT"));
        let metrics = gw.metrics().await;
        assert!(
            metrics.value(
                "gateway_pii_findings_total",
                &[("kind", "email"), ("action", "redact_logs")]
            ) >= 4.0
        );
    })
    .await;
}

#[tokio::test]
async fn key_and_model_policies_both_apply_and_the_stricter_wins() {
    within(30, async {
        let gw = TestGateway::start(&config()).await;
        let (admin, _) = gw
            .key(NewKey {
                name: "admin".into(),
                admin: true,
                ..NewKey::default()
            })
            .await;
        let created = gw
            .post(
                "/v1/admin/keys",
                &admin,
                &json!({"name": "strict", "guard": {"pii": "block"}}),
            )
            .await;
        assert_eq!(created.status, 201);
        let strict = created.json()["key"].as_str().unwrap().to_owned();
        // The key blocks on a model with no policy and on one that only redacts.
        for model in ["mock", "mock-redact"] {
            let reply = gw
                .post("/v1/chat/completions", &strict, &personal(model))
                .await;
            assert_eq!(
                reply.error_code().as_deref(),
                Some("pii_detected"),
                "{model}"
            );
        }
        // A lenient key on a blocking model is still blocked.
        let lenient = gw
            .post(
                "/v1/admin/keys",
                &admin,
                &json!({"name": "lenient", "guard": {"pii": "redact"}}),
            )
            .await
            .json()["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let reply = gw
            .post("/v1/chat/completions", &lenient, &personal("mock-block"))
            .await;
        assert_eq!(reply.error_code().as_deref(), Some("pii_detected"));
        // And redacts where the model has no policy.
        let reply = gw
            .post("/v1/chat/completions", &lenient, &personal("mock"))
            .await;
        assert!(answer(&reply).contains("[EMAIL_1]"));
    })
    .await;
}

/// An OpenAI-style upstream that answers every chat request with a call to `send_mail` whose
/// arguments carry the placeholder `[EMAIL_1]`: streamed, split inside the placeholder; else
/// whole. It records the last request body.
async fn tool_calling_upstream() -> (String, std::sync::Arc<std::sync::Mutex<Value>>) {
    use axum::response::IntoResponse;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Value::Null));
    let recorder = std::sync::Arc::clone(&seen);
    let answer = move |axum::Json(request): axum::Json<Value>| {
        let stream = request["stream"] == json!(true);
        *recorder.lock().unwrap() = request;
        async move {
            let call = |arguments: &str| {
                json!({"index": 0, "id": "call_1", "type": "function",
                       "function": {"name": "send_mail", "arguments": arguments}})
            };
            if !stream {
                return axum::Json(json!({
                    "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-test",
                    "choices": [{"index": 0, "finish_reason": "tool_calls", "message":
                        {"role": "assistant", "content": null,
                         "tool_calls": [call(r#"{"to":"[EMAIL_1]"}"#)]}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
                }))
                .into_response();
            }
            let chunk = |delta: Value, finish: Value| {
                let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1,
                    "model": "gpt-test", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                format!("data: {chunk}\n\n")
            };
            let body = [
                chunk(
                    json!({"role": "assistant", "tool_calls": [call("{\"to\":\"[EM")]}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "AIL_1]\"}"}}]}),
                    Value::Null,
                ),
                chunk(json!({}), json!("tool_calls")),
                "data: [DONE]\n\n".to_owned(),
            ]
            .concat();
            ([("content-type", "text/event-stream")], body).into_response()
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(answer));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

#[tokio::test]
async fn tool_call_arguments_get_the_originals_back_streamed_and_whole() {
    within(30, async {
        let (upstream, seen) = tool_calling_upstream().await;
        let mut config = test_config(&upstream);
        config.push_str(
            "\n[models.mailer]\ndeployments = [{ provider = \"upstream\", model = \"gpt-test\" }]\n\
             [models.mailer.guard]\npii = \"redact\"\nrestore_pii = true\n",
        );
        let gw = TestGateway::start(&config).await;
        let key = gw.plain_key().await;
        let expected = format!(r#"{{"to":"{EMAIL}"}}"#);
        for stream in [true, false] {
            let mut body = chat("mailer", &format!("mail {EMAIL} the report"));
            body["stream"] = json!(stream);
            let reply = gw.post("/v1/chat/completions", &key, &body).await;
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            let sent = seen.lock().unwrap().to_string();
            assert!(
                sent.contains("[EMAIL_1]") && !sent.contains(EMAIL),
                "{sent}"
            );
            let arguments: String = if stream {
                reply
                    .sse_chunks()
                    .iter()
                    .filter_map(|c| {
                        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                            .as_str()
                            .map(str::to_owned)
                    })
                    .collect()
            } else {
                reply.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            };
            assert_eq!(arguments, expected, "stream: {stream}");
        }
    })
    .await;
}
