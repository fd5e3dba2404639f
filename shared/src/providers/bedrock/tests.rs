//! The provider through the SDK: a replay HTTP client answers with recorded-shape responses.

use aws_config::BehaviorVersion;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::{Credentials, Region};
use aws_sdk_bedrockruntime::primitives::event_stream::{Header, HeaderValue, Message};
use aws_smithy_http_client::test_util::{ReplayEvent, StaticReplayClient};
use aws_smithy_types::body::SdkBody;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::request::tests::{request, weather_request};
use super::stream::tests::assert_tool_call_completion;
use super::{BedrockProvider, client_config};
use crate::api::messages::{ClientHeaders, EventWriter, MessagesRequest, message_from_completion};
use crate::api::{ChatChunk, ChatRequest, Usage};
use crate::config::Timeouts;
use crate::providers::{ChatProvider, ChunkStream, ErrorSource, ProviderError, ProviderErrorKind};

const SOURCE: ErrorSource<'static> = ErrorSource {
    provider: "bedrock",
    model: "claude",
    upstream_model: "anthropic.claude-3-haiku",
};

#[test]
fn bedrock_config_needs_no_base_url_or_api_key() {
    let config = crate::config::Config::from_toml(
        r#"
        [providers.bedrock]
        kind = "bedrock"
        region = "eu-west-1"
        "#,
    )
    .unwrap();
    assert_eq!(
        config.providers["bedrock"].region.as_deref(),
        Some("eu-west-1")
    );
    let err = crate::config::Config::from_toml(
        r#"
        [providers.bedrock]
        kind = "bedrock"
        api_key_env = "AWS_SECRET_ACCESS_KEY"
        "#,
    )
    .unwrap_err();
    assert_eq!(err.field, "providers.bedrock.api_key_env");
}

const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

pub(super) fn replay(
    status: u16,
    headers: &[(&str, &str)],
    body: impl Into<SdkBody>,
) -> StaticReplayClient {
    let mut response = http::Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    StaticReplayClient::new(vec![ReplayEvent::new(
        http::Request::builder()
            .uri("https://bedrock-runtime.us-east-1.amazonaws.com/")
            .body(SdkBody::empty())
            .unwrap(),
        response.body(body.into()).unwrap(),
    )])
}

pub(super) fn provider_over(
    http: impl aws_sdk_bedrockruntime::config::HttpClient + 'static,
) -> BedrockProvider {
    let config = client_config(
        aws_sdk_bedrockruntime::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
            .http_client(http),
        &Timeouts::default(),
    )
    .build();
    BedrockProvider::with_client(Client::from_conf(config), Timeouts::default())
}

fn sent_body(client: &StaticReplayClient) -> Value {
    let requests: Vec<_> = client.actual_requests().collect();
    assert_eq!(requests.len(), 1, "the SDK must not retry on its own");
    serde_json::from_slice(requests[0].body().bytes().unwrap()).unwrap()
}

#[tokio::test]
async fn converse_sends_the_translated_request_and_translates_the_answer() {
    let http = replay(
        200,
        &[
            ("content-type", "application/json"),
            ("x-amzn-requestid", "req-123"),
        ],
        json!({
            "output": {"message": {"role": "assistant", "content": [
                {"text": "Let me check."},
                {"toolUse": {"toolUseId": "tooluse_9", "name": "get_weather", "input": {"city": "Paris"}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 46, "cacheReadInputTokens": 4},
            "metrics": {"latencyMs": 321}
        })
        .to_string(),
    );
    let mut body = weather_request();
    body["model"] = json!(MODEL);
    let completion = provider_over(http.clone())
        .chat(&request(body))
        .await
        .unwrap();

    let sent = http.actual_requests().next().unwrap();
    assert!(
        sent.uri()
            .ends_with("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"),
        "{}",
        sent.uri()
    );
    assert!(
        sent.headers()
            .get("authorization")
            .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/")),
        "requests are SigV4-signed with the IAM credentials"
    );
    let body = sent_body(&http);
    assert_eq!(
        body["system"],
        json!([{"text": "Be brief."}, {"text": "Use metric units."}])
    );
    let messages = &body["messages"];
    assert_eq!(messages[0]["content"][0], json!({"text": "Weather?"}));
    assert_eq!(
        messages[0]["content"][1],
        json!({"image": {"format": "png", "source": {"bytes": "iVBORw=="}}})
    );
    assert_eq!(
        messages[1],
        json!({"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Paris"}}},
            {"toolUse": {"toolUseId": "t2", "name": "get_weather", "input": {"city": "Oslo"}}}
        ]})
    );
    assert_eq!(messages[2]["role"], "user");
    assert_eq!(
        messages[2]["content"][0],
        json!({"toolResult": {"toolUseId": "t1", "content": [{"text": "sunny"}]}})
    );
    assert_eq!(
        body["toolConfig"],
        json!({
            "tools": [{"toolSpec": {"name": "get_weather", "description": "d",
                "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}}}}],
            "toolChoice": {"any": {}}
        })
    );
    assert_eq!(
        body["inferenceConfig"],
        json!({"maxTokens": 100, "temperature": 1.0, "topP": 0.5, "stopSequences": ["END"]})
    );

    assert_eq!(completion.id, "chatcmpl-req-123");
    assert_eq!(completion.model, MODEL);
    let choice = &completion.choices[0];
    assert_eq!(choice.message.content.as_deref(), Some("Let me check."));
    assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
    let calls = choice.message.tool_calls.as_ref().unwrap();
    assert_eq!(
        (calls[0].id.as_str(), calls[0].function.arguments.as_str()),
        ("tooluse_9", r#"{"city":"Paris"}"#)
    );
    assert_eq!(completion.usage, Some(Usage::new(34, 12).with_cache(4, 0)));
}

/// One event-stream frame as Bedrock sends it.
fn frame(headers: &[(&str, &str)], payload: Value) -> Vec<u8> {
    let mut message = Message::new(payload.to_string().into_bytes());
    for (name, value) in headers {
        message = message.add_header(Header::new(
            name.to_string(),
            HeaderValue::String(value.to_string().into()),
        ));
    }
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut out).unwrap();
    out
}

fn event(kind: &str, payload: Value) -> Vec<u8> {
    frame(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload,
    )
}

fn stream_body(events: Vec<Vec<u8>>) -> StaticReplayClient {
    replay(
        200,
        &[
            ("content-type", "application/vnd.amazon.eventstream"),
            ("x-amzn-requestid", "req-s"),
        ],
        events.concat(),
    )
}

async fn collect(stream: ChunkStream) -> Vec<Result<ChatChunk, ProviderError>> {
    stream.collect().await
}

#[tokio::test]
async fn converse_stream_is_reassembled_into_a_completion() {
    let http = stream_body(vec![
        event("messageStart", json!({"role": "assistant"})),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "H"}}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "i"}}),
        ),
        event("contentBlockStop", json!({"contentBlockIndex": 0})),
        event(
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "f"}}}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"a\":"}}}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}}),
        ),
        event("contentBlockStop", json!({"contentBlockIndex": 1})),
        event("messageStop", json!({"stopReason": "tool_use"})),
        event(
            "metadata",
            json!({"usage": {"inputTokens": 7, "outputTokens": 9, "totalTokens": 16}, "metrics": {"latencyMs": 50}}),
        ),
    ]);
    let stream = provider_over(http.clone())
        .chat_stream(&request(json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": true
        })))
        .await
        .unwrap();
    let chunks: Vec<ChatChunk> = collect(stream)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        http.actual_requests()
            .next()
            .unwrap()
            .uri()
            .ends_with("/converse-stream")
    );
    assert_eq!(
        sent_body(&http)["messages"][0]["content"],
        json!([{"text": "hi"}])
    );
    assert_eq!(chunks[0].id, "chatcmpl-req-s");
    assert_eq!(chunks[0].model, MODEL);
    assert_tool_call_completion(&chunks);
}

#[tokio::test]
async fn an_exception_inside_the_stream_ends_it_with_a_classified_error() {
    let http = stream_body(vec![
        event("messageStart", json!({"role": "assistant"})),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        ),
        frame(
            &[
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            json!({"message": "Too many tokens per minute"}),
        ),
    ]);
    let results = collect(
        provider_over(http)
            .chat_stream(&request(
                json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(results.len(), 3);
    assert_eq!(
        results[1].as_ref().unwrap().choices[0]
            .delta
            .content
            .as_deref(),
        Some("Hi")
    );
    let error = results[2].as_ref().unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::RateLimited, "{error}");
    assert!(error.message.contains("Too many tokens per minute"));
}

pub(super) fn error_response(status: u16, code: &str, message: &str) -> StaticReplayClient {
    replay(
        status,
        &[
            ("content-type", "application/json"),
            (
                "x-amzn-errortype",
                &format!("{code}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            ),
        ],
        json!({"message": message}).to_string(),
    )
}

fn hello() -> ChatRequest {
    request(json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}))
}

#[tokio::test]
async fn throttling_is_a_retryable_rate_limit_and_not_retried_by_the_sdk() {
    let http = error_response(
        429,
        "ThrottlingException",
        "Too many requests, please wait before trying again.",
    );
    let error = provider_over(http.clone())
        .chat(&hello())
        .await
        .unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::RateLimited, "{error}");
    assert_eq!(error.status, Some(429));
    assert!(error.is_retryable());
    assert!(
        error
            .message
            .starts_with("ThrottlingException: Too many requests")
    );
    assert_eq!(http.actual_requests().count(), 1);
}

#[tokio::test]
async fn an_over_long_input_is_context_length_exceeded() {
    let http = error_response(
        400,
        "ValidationException",
        "Input is too long for requested model.",
    );
    let error = provider_over(http)
        .chat_stream(&hello())
        .await
        .err()
        .unwrap();
    assert_eq!(
        error.kind,
        ProviderErrorKind::ContextLengthExceeded,
        "{error}"
    );
    let api = error.to_api_error(&SOURCE);
    assert_eq!(api.status(), http::StatusCode::BAD_REQUEST);
    assert_eq!(api.code.as_deref(), Some("context_length_exceeded"));
}

#[tokio::test]
async fn access_denied_is_the_gateways_credential_problem() {
    let http = error_response(
        403,
        "AccessDeniedException",
        "You don't have access to the model with the specified model ID.",
    );
    let error = provider_over(http).chat(&hello()).await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::Authentication, "{error}");
    assert_eq!(
        error.to_api_error(&SOURCE).status(),
        http::StatusCode::BAD_GATEWAY
    );
}

#[tokio::test]
async fn missing_credentials_are_an_authentication_error_before_any_request() {
    let http = replay(200, &[], "");
    let config = client_config(
        aws_sdk_bedrockruntime::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(
                    aws_credential_types::credential_fn::provide_credentials_fn(|| async {
                        Err(CredentialsError::not_loaded("no credentials in the chain"))
                    }),
                ),
            )
            .http_client(http.clone()),
        &Timeouts::default(),
    )
    .build();
    let provider = BedrockProvider::with_client(Client::from_conf(config), Timeouts::default());
    let error = provider.chat(&hello()).await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::Authentication, "{error}");
    assert_eq!(http.actual_requests().count(), 0);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_connection_error() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = client_config(
        aws_sdk_bedrockruntime::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
            .http_client(crate::tls::aws_http_client())
            .endpoint_url(format!("http://127.0.0.1:{port}")),
        &Timeouts::default(),
    )
    .build();
    let provider = BedrockProvider::with_client(Client::from_conf(config), Timeouts::default());
    let error = provider.chat(&hello()).await.unwrap_err();
    assert_eq!(error.kind, ProviderErrorKind::Connection, "{error}");
    assert!(error.is_retryable());
    // The log has the endpoint; the client only the provider and the class.
    assert!(error.message.contains("127.0.0.1"), "{error}");
    assert_eq!(
        error.to_api_error(&SOURCE).message,
        "Provider `bedrock` is unreachable or dropped the connection."
    );
}

/// A Messages request (with thinking, cache breakpoints, a document and an image tool result) as
/// the chat request the pipeline hands Bedrock.
fn messages_request(stream: bool) -> ChatRequest {
    let messages: MessagesRequest = serde_json::from_value(json!({
        "model": MODEL,
        "max_tokens": 2000,
        "stream": stream,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "top_k": 5,
        "system": [{"type": "text", "text": "Manual.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "camera", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}, "title": "Manual"},
                {"type": "text", "text": "Read it.", "cache_control": {"type": "ephemeral"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "tool_use", "id": "toolu_1", "name": "camera", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "a photo"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw=="}}
                ]}
            ]}
        ]
    }))
    .unwrap();
    let chat = messages.to_chat_request(&ClientHeaders::default()).unwrap();
    serde_json::from_value(chat).unwrap()
}

#[tokio::test]
async fn converse_takes_thinking_cache_points_documents_and_image_tool_results() {
    let http = replay(
        200,
        &[
            ("content-type", "application/json"),
            ("x-amzn-requestid", "req-t"),
        ],
        json!({
            "output": {"message": {"role": "assistant", "content": [
                {"reasoningContent": {"reasoningText": {"text": "Let me think.", "signature": "sig-1"}}},
                {"reasoningContent": {"redactedContent": "AAEC"}},
                {"text": "Done."}
            ]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 5, "outputTokens": 3, "totalTokens": 17,
                "cacheReadInputTokens": 2, "cacheWriteInputTokens": 7},
            "metrics": {"latencyMs": 1}
        })
        .to_string(),
    );
    let completion = provider_over(http.clone())
        .chat(&messages_request(false))
        .await
        .unwrap();
    let body = sent_body(&http);
    let cache_point = json!({"cachePoint": {"type": "default"}});
    assert_eq!(
        body["additionalModelRequestFields"],
        json!({"thinking": {"type": "enabled", "budget_tokens": 1024}, "top_k": 5})
    );
    assert_eq!(body["system"], json!([{"text": "Manual."}, cache_point]));
    assert_eq!(body["toolConfig"]["tools"][1], cache_point);
    let messages = &body["messages"];
    assert_eq!(
        messages[0]["content"],
        json!([
            {"document": {"format": "pdf", "name": "Manual", "source": {"bytes": "JVBERi0="}}},
            {"text": "Read it."},
            cache_point
        ])
    );
    assert_eq!(
        messages[1]["content"][0],
        json!({"reasoningContent": {"reasoningText": {"text": "hm", "signature": "s"}}})
    );
    assert_eq!(
        messages[2]["content"][0],
        json!({"toolResult": {"toolUseId": "toolu_1", "content": [
            {"text": "a photo"},
            {"image": {"format": "png", "source": {"bytes": "iVBORw=="}}}
        ]}})
    );

    let message = serde_json::to_value(message_from_completion(&completion)).unwrap();
    assert_eq!(
        message["content"],
        json!([
            {"type": "thinking", "thinking": "Let me think.", "signature": "sig-1"},
            {"type": "redacted_thinking", "data": "AAEC"},
            {"type": "text", "text": "Done."}
        ])
    );
    assert_eq!(
        message["usage"],
        json!({"input_tokens": 5, "cache_creation_input_tokens": 7, "cache_read_input_tokens": 2, "output_tokens": 3})
    );
    assert_eq!(
        completion.choices[0].message.content.as_deref(),
        Some("Done."),
        "chat clients never see thinking in `content`"
    );
}

#[tokio::test]
async fn converse_stream_reasoning_becomes_thinking_and_signature_deltas() {
    let http = stream_body(vec![
        event("messageStart", json!({"role": "assistant"})),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Let me "}}}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "think."}}}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "sig-1"}}}),
        ),
        event("contentBlockStop", json!({"contentBlockIndex": 0})),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"text": "Done."}}),
        ),
        event("contentBlockStop", json!({"contentBlockIndex": 1})),
        event("messageStop", json!({"stopReason": "end_turn"})),
        event(
            "metadata",
            json!({"usage": {"inputTokens": 5, "outputTokens": 3, "totalTokens": 8}, "metrics": {"latencyMs": 5}}),
        ),
    ]);
    let stream = provider_over(http.clone())
        .chat_stream(&messages_request(true))
        .await
        .unwrap();
    assert!(sent_body(&http)["additionalModelRequestFields"]["thinking"].is_object());
    let mut writer = EventWriter::default();
    let mut sse = String::new();
    for chunk in collect(stream).await {
        sse.push_str(&writer.chunk(&chunk.unwrap()));
    }
    sse.push_str(&writer.end());
    let events: Vec<Value> = sse
        .split_terminator("\n\n")
        .map(|frame| serde_json::from_str(frame.split_once("\ndata: ").unwrap().1).unwrap())
        .collect();
    let of_type =
        |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["type"] == kind).collect() };
    assert_eq!(
        of_type("content_block_start")[0]["content_block"]["type"],
        "thinking"
    );
    let deltas: Vec<&Value> = of_type("content_block_delta")
        .into_iter()
        .map(|e| &e["delta"])
        .collect();
    assert_eq!(
        deltas,
        [
            &json!({"type": "thinking_delta", "thinking": "Let me "}),
            &json!({"type": "thinking_delta", "thinking": "think."}),
            &json!({"type": "signature_delta", "signature": "sig-1"}),
            &json!({"type": "text_delta", "text": "Done."}),
        ]
    );
    assert_eq!(of_type("content_block_start")[1]["index"], 1);
}
