//! Anthropic Messages API (`POST /v1/messages`), including its named SSE event sequence.

use std::sync::Arc;

use axum::{
    Extension, Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header::RETRY_AFTER},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    AppState, AuthFailure, Fault,
    fault::{Attempt, Early, ErrorFault, Frames, Plan, sse_steps},
    field,
    generate::{
        ANTHROPIC_TOOL_USE_ID, Completion, Finish, Reply, TOOL_ARGUMENT_PIECES, ToolChoice,
        content_text, count_words, tool_input,
    },
    header, parse_object,
};

/// What `malformed_at` sends in place of a content_block_delta: the start of one, cut off.
const MALFORMED_EVENT: &str = "event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\n\n";
const CONTEXT_LENGTH_MESSAGE: &str = "prompt is too long: 210000 tokens > 200000 maximum";
const CONTENT_FILTER_MESSAGE: &str = "Output blocked by content filtering policy";

const BLOCK_TYPES: [&str; 8] = [
    "text",
    "image",
    "document",
    "search_result",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
];

/// An error in Anthropic's body shape: `{"type": "error", "error": {"type", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    /// A raw code because Anthropic's 529 has no `StatusCode` constant.
    status: u16,
    kind: &'static str,
    message: String,
    retry_after: Option<String>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            status,
            kind,
            message,
            retry_after: None,
        }
    }

    fn retry_after(mut self, seconds: Option<String>) -> Self {
        self.retry_after = seconds;
        self
    }

    /// A `fault:` model's error with Anthropic's type for the status; the OpenAI `code`s for
    /// context length and content filtering pick Anthropic's messages for those.
    fn from_fault(fault: ErrorFault, model: &str) -> Self {
        let ErrorFault {
            status,
            code,
            retry_after,
        } = fault;
        let (kind, message) = match status {
            401 => ("authentication_error", "invalid x-api-key".to_owned()),
            403 => (
                "permission_error",
                "Your API key does not have permission to use the specified resource.".to_owned(),
            ),
            404 => ("not_found_error", format!("model: {model}")),
            413 => (
                "request_too_large",
                "Request exceeds the maximum allowed number of bytes.".to_owned(),
            ),
            429 => (
                "rate_limit_error",
                "Number of requests has exceeded your per-minute rate limit".to_owned(),
            ),
            500 => ("api_error", "Internal server error".to_owned()),
            503 => ("api_error", "Service unavailable".to_owned()),
            529 => ("overloaded_error", "Overloaded".to_owned()),
            server if server >= 500 => (
                "api_error",
                format!("Internal server error (mock provider fault: HTTP {status})"),
            ),
            _ => (
                "invalid_request_error",
                format!("Invalid request (mock provider fault: HTTP {status})"),
            ),
        };
        let message = match code.as_deref() {
            Some("context_length_exceeded") => CONTEXT_LENGTH_MESSAGE.to_owned(),
            Some("content_filter") => CONTENT_FILTER_MESSAGE.to_owned(),
            Some(other) => format!("{message} ({other})"),
            None => message,
        };
        Self::new(status, kind, message).retry_after(retry_after)
    }

    /// The error for a request a fault ended before its headers.
    fn early(early: Early, model: &str) -> Self {
        match early {
            Early::Error(fault) => Self::from_fault(fault, model),
            // Never sent: the connection is gone, unless no kill switch reached the handler.
            Early::Reset => Self::new(
                500,
                "api_error",
                "mock provider: the reset fault needs the mock's own listener",
            ),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = Json(json!({
            "type": "error",
            "error": {"type": self.kind, "message": self.message},
        }));
        match self.retry_after {
            Some(seconds) => (status, [(RETRY_AFTER, seconds)], body).into_response(),
            None => (status, body).into_response(),
        }
    }
}

impl From<Fault> for ApiError {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Unauthorized => Self::new(401, "authentication_error", "invalid x-api-key"),
            Fault::BadRequest => {
                Self::invalid("model: 'error-400' is the mock provider's bad-request trigger")
            }
            Fault::ContextLength => Self::invalid(CONTEXT_LENGTH_MESSAGE),
            Fault::ContentFilter => Self::invalid(CONTENT_FILTER_MESSAGE),
            Fault::RateLimited => Self::new(
                429,
                "rate_limit_error",
                "Number of requests has exceeded your per-minute rate limit",
            )
            .retry_after(Some("1".to_owned())),
            Fault::Internal => Self::new(500, "api_error", "Internal server error"),
            Fault::Unavailable => Self::new(503, "api_error", "Service unavailable"),
            Fault::Overloaded => Self::new(529, "overloaded_error", "Overloaded"),
        }
    }
}

pub async fn messages(
    State(state): State<Arc<AppState>>,
    Extension(attempt): Extension<Attempt>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    state
        .check_key(header(&headers, "x-api-key"))
        .map_err(|failure| match failure {
            AuthFailure::Missing => {
                ApiError::new(401, "authentication_error", "x-api-key header is required")
            }
            AuthFailure::Invalid => Fault::Unauthorized.into(),
        })?;
    if header(&headers, "anthropic-version").is_none() {
        return Err(ApiError::invalid("anthropic-version: header is required"));
    }
    let request = parse_object(&body).ok_or_else(|| {
        ApiError::invalid(
            "There was an error parsing the body of your request. Please make sure it is valid JSON.",
        )
    })?;
    let model = field(&request, "model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("model: Field required"))?;
    if let Some(fault) = Fault::from_model(model) {
        return Err(fault.into());
    }
    let plan = Plan::for_request(model, &attempt).map_err(ApiError::invalid)?;
    plan.before_headers(&attempt)
        .await
        .map_err(|early| ApiError::early(early, model))?;
    let max_tokens = field(&request, "max_tokens")
        .ok_or_else(|| ApiError::invalid("max_tokens: Field required"))?
        .as_u64()
        .filter(|&n| n >= 1)
        .ok_or_else(|| {
            ApiError::invalid("max_tokens: Input should be an integer greater than or equal to 1")
        })?;
    let messages = field(&request, "messages")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("messages: Field required"))?;
    check_messages(messages)?;
    let system = system_text(field(&request, "system"))?;
    let tool_names = tool_names(&request)?;
    let stops: Vec<String> = field(&request, "stop_sequences")
        .and_then(Value::as_array)
        .map(|stops| {
            stops
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();

    let user_text = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(content_text)
        .unwrap_or_default();
    let input_tokens = system.as_deref().map_or(0, count_words)
        + messages
            .iter()
            .filter_map(|m| m.get("content"))
            .map(|content| count_words(&content_text(content)))
            .sum::<usize>();
    let thinking = thinking_budget(&request, max_tokens)?.map(|_| Thinking {
        text: format!("The user wrote {} words.", count_words(&user_text)),
        signature: format!("mock-signature-{}", count_words(&user_text)),
    });
    let cache = prompt_cache(&state, &request, messages);
    let reply = Reply::decide(
        tool_choice(field(&request, "tool_choice")),
        &tool_names,
        &user_text,
        || match plan.tokens {
            Some(count) => Completion::numbered(count),
            None => Completion::generate(system.as_deref(), &user_text, Some(max_tokens), &stops),
        },
    );
    let message = Message {
        id: format!("msg_mock{:016}", state.next_id()),
        model,
        input_tokens: input_tokens.saturating_sub(cache.tokens),
        cache,
        thinking,
        reply,
        report_usage: !plan.no_usage,
    };
    let stream = field(&request, "stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(if stream {
        let steps = plan.shape(message.events(), MALFORMED_EVENT);
        sse_steps(steps, state.chunk_delay())
    } else {
        plan.before_body().await;
        Json(message.body()).into_response()
    })
}

/// The thinking budget of `thinking: {"type": "enabled", "budget_tokens": N}`, checked as the
/// real API checks it (at least 1024, below `max_tokens`).
fn thinking_budget(request: &Value, max_tokens: u64) -> Result<Option<u64>, ApiError> {
    let Some(thinking) = field(request, "thinking") else {
        return Ok(None);
    };
    match thinking.get("type").and_then(Value::as_str) {
        Some("disabled") => Ok(None),
        Some("enabled") => {
            let budget = thinking
                .get("budget_tokens")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    ApiError::invalid("thinking.enabled.budget_tokens: Field required")
                })?;
            if budget < 1024 {
                return Err(ApiError::invalid(
                    "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
                ));
            }
            if budget >= max_tokens {
                return Err(ApiError::invalid(
                    "`max_tokens` must be greater than `thinking.budget_tokens`",
                ));
            }
            Ok(Some(budget))
        }
        _ => Err(ApiError::invalid(
            "thinking: Input tag found using 'type' does not match",
        )),
    }
}

/// The cache reads or writes of a request with `cache_control` breakpoints: its prompt up to
/// the last breakpoint (tools, then system, then messages) is written the first time and read
/// after; its tokens are the words of that prefix's text.
struct PromptCache {
    tokens: usize,
    read: bool,
}

fn prompt_cache(state: &AppState, request: &Value, messages: &[Value]) -> PromptCache {
    let mut blocks: Vec<&Value> = Vec::new();
    for key in ["tools", "system"] {
        if let Some(Value::Array(items)) = field(request, key) {
            blocks.extend(items);
        }
    }
    for message in messages {
        if let Some(Value::Array(items)) = message.get("content") {
            blocks.extend(items);
        }
    }
    let Some(last) = blocks
        .iter()
        .rposition(|b| b.get("cache_control").is_some())
    else {
        return PromptCache {
            tokens: 0,
            read: false,
        };
    };
    let prefix = &blocks[..=last];
    let tokens = prefix
        .iter()
        .map(|block| count_words(&content_text(&json!([block]))))
        .sum();
    let read = state.prompt_cached(json!(prefix).to_string());
    PromptCache { tokens, read }
}

/// Rejects what the real API rejects and a translating gateway is likely to produce.
fn check_messages(messages: &[Value]) -> Result<(), ApiError> {
    for (i, message) in messages.iter().enumerate() {
        match message.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            Some("system") => {
                return Err(ApiError::invalid(
                    "messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.",
                ));
            }
            _ => {
                return Err(ApiError::invalid(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                )));
            }
        }
        let empty = || {
            ApiError::invalid(format!(
                "messages.{i}: all messages must have non-empty content except for the optional final assistant message"
            ))
        };
        match message.get("content") {
            Some(Value::String(text)) if !text.is_empty() => {}
            Some(Value::Array(blocks)) if !blocks.is_empty() => {
                for (j, block) in blocks.iter().enumerate() {
                    check_block(block).map_err(|problem| {
                        ApiError::invalid(format!("messages.{i}.content.{j}: {problem}"))
                    })?;
                }
            }
            Some(Value::String(_) | Value::Array(_)) => return Err(empty()),
            _ => {
                return Err(ApiError::invalid(format!(
                    "messages.{i}.content: Input should be a valid string or a list of content blocks"
                )));
            }
        }
    }
    Ok(())
}

fn check_block(block: &Value) -> Result<(), String> {
    let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
    if !BLOCK_TYPES.contains(&kind) {
        return Err(format!(
            "Input tag '{kind}' found using 'type' does not match any of the expected tags: {}",
            BLOCK_TYPES.map(|t| format!("'{t}'")).join(", ")
        ));
    }
    if kind == "thinking"
        && block
            .get("signature")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        return Err(
            "thinking blocks must carry the signature of the answer they came from".to_owned(),
        );
    }
    if kind == "text"
        && block
            .get("text")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        return Err("text content blocks must be non-empty".to_owned());
    }
    Ok(())
}

/// `system` as plain text; it may be a string or a list of text blocks.
fn system_text(system: Option<&Value>) -> Result<Option<String>, ApiError> {
    match system {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(blocks @ Value::Array(items))
            if items
                .iter()
                .all(|b| b.get("type").and_then(Value::as_str) == Some("text")) =>
        {
            Ok(Some(content_text(blocks)))
        }
        Some(_) => Err(ApiError::invalid(
            "system: Input should be a valid string or a list of text blocks",
        )),
    }
}

fn tool_names(request: &Value) -> Result<Vec<String>, ApiError> {
    let Some(tools) = field(request, "tools") else {
        return Ok(Vec::new());
    };
    let tools = tools
        .as_array()
        .ok_or_else(|| ApiError::invalid("tools: Input should be a valid list"))?;
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            if !tool.get("input_schema").is_some_and(Value::is_object) {
                return Err(ApiError::invalid(format!(
                    "tools.{i}.input_schema: Field required"
                )));
            }
            tool.get("name")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| ApiError::invalid(format!("tools.{i}.name: Field required")))
        })
        .collect()
}

fn tool_choice(choice: Option<&Value>) -> ToolChoice {
    let kind = choice.and_then(|c| c.get("type")).and_then(Value::as_str);
    let name = choice.and_then(|c| c.get("name")).and_then(Value::as_str);
    match (kind, name) {
        (Some("none"), _) => ToolChoice::None,
        (Some("any"), _) => ToolChoice::Required,
        (Some("tool"), Some(name)) => ToolChoice::Named(name.to_owned()),
        _ => ToolChoice::Auto,
    }
}

struct Thinking {
    text: String,
    signature: String,
}

/// One generated assistant message, rendered whole or as SSE events.
struct Message<'a> {
    id: String,
    model: &'a str,
    /// Input tokens neither read from nor written to the prompt cache.
    input_tokens: usize,
    cache: PromptCache,
    /// The thinking block that comes first, when thinking is enabled.
    thinking: Option<Thinking>,
    reply: Reply,
    /// False for `no_usage`: every `usage` object is left out, as from a provider that does not
    /// report it (the gateway's parser then sees zeros).
    report_usage: bool,
}

impl Message<'_> {
    fn stop(&self) -> (&'static str, Option<&str>) {
        match &self.reply {
            Reply::ToolCall(_) => ("tool_use", None),
            Reply::Text(completion) => match &completion.finish {
                Finish::Complete => ("end_turn", None),
                Finish::MaxTokens => ("max_tokens", None),
                Finish::StopSequence(stop) => ("stop_sequence", Some(stop)),
            },
        }
    }

    fn usage(&self, output_tokens: usize) -> Value {
        let (write, read) = match self.cache.read {
            true => (0, self.cache.tokens),
            false => (self.cache.tokens, 0),
        };
        json!({
            "input_tokens": self.input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
        })
    }

    fn envelope(
        &self,
        content: Value,
        stop_reason: Option<&str>,
        stop_sequence: Option<&str>,
        usage: Value,
    ) -> Value {
        let mut envelope = json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
        });
        if self.report_usage {
            envelope["usage"] = usage;
        }
        envelope
    }

    fn body(&self) -> Value {
        let block = match &self.reply {
            Reply::Text(completion) => json!({"type": "text", "text": completion.text()}),
            Reply::ToolCall(name) => json!({
                "type": "tool_use",
                "id": ANTHROPIC_TOOL_USE_ID,
                "name": name,
                "input": tool_input(),
            }),
        };
        let (stop_reason, stop_sequence) = self.stop();
        let usage = self.usage(self.reply.output_tokens());
        let content = match &self.thinking {
            Some(thinking) => json!([
                {"type": "thinking", "thinking": thinking.text, "signature": thinking.signature},
                block
            ]),
            None => json!([block]),
        };
        self.envelope(content, Some(stop_reason), stop_sequence, usage)
    }

    /// The documented sequence: message_start, content_block_start, ping, content_block_delta…,
    /// content_block_stop, message_delta, message_stop.
    fn events(&self) -> Frames {
        let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let (start_block, deltas): (Value, Vec<Value>) = match &self.reply {
            Reply::Text(completion) => (
                json!({"type": "text", "text": ""}),
                completion
                    .pieces()
                    .into_iter()
                    .map(|text| json!({"type": "text_delta", "text": text}))
                    .collect(),
            ),
            Reply::ToolCall(name) => (
                json!({"type": "tool_use", "id": ANTHROPIC_TOOL_USE_ID, "name": name, "input": {}}),
                TOOL_ARGUMENT_PIECES
                    .iter()
                    .map(|piece| json!({"type": "input_json_delta", "partial_json": piece}))
                    .collect(),
            ),
        };
        let (stop_reason, stop_sequence) = self.stop();

        let mut head = vec![event(
            "message_start",
            json!({
                "type": "message_start",
                "message": self.envelope(json!([]), None, None, self.usage(1)),
            }),
        )];
        // The thinking block comes first, in two pieces and then its signature.
        let index = usize::from(self.thinking.is_some());
        if let Some(thinking) = &self.thinking {
            let (first, rest) = thinking.text.split_at(thinking.text.len() / 2);
            head.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            ));
            for delta in [
                json!({"type": "thinking_delta", "thinking": first}),
                json!({"type": "thinking_delta", "thinking": rest}),
                json!({"type": "signature_delta", "signature": thinking.signature}),
            ] {
                head.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": delta}),
                ));
            }
            head.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
        }
        head.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": start_block}),
        ));
        head.push(event("ping", json!({"type": "ping"})));
        let content = deltas
            .into_iter()
            .map(|delta| {
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": delta}),
                )
            })
            .collect();
        let mut message_delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
        });
        if self.report_usage {
            message_delta["usage"] = json!({"output_tokens": self.reply.output_tokens()});
        }
        Frames {
            head,
            content,
            tail: vec![
                event(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": index}),
                ),
                event("message_delta", message_delta),
            ],
            done: Some(event("message_stop", json!({"type": "message_stop"}))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_events(frames: &[String]) -> Vec<(String, Value)> {
        frames
            .iter()
            .map(|frame| {
                let (name, data) = frame
                    .strip_prefix("event: ")
                    .and_then(|f| f.strip_suffix("\n\n"))
                    .and_then(|f| f.split_once("\ndata: "))
                    .unwrap();
                (name.to_owned(), serde_json::from_str(data).unwrap())
            })
            .collect()
    }

    #[test]
    fn stream_follows_documented_event_sequence() {
        let completion = Completion::generate(Some("be brief"), "hello world", Some(100), &[]);
        let message = Message {
            id: "msg_x".into(),
            model: "claude",
            input_tokens: 4,
            cache: PromptCache {
                tokens: 0,
                read: false,
            },
            thinking: None,
            reply: Reply::Text(completion.clone()),
            report_usage: true,
        };
        let events = parse_events(&message.events().all());
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        let deltas = vec!["content_block_delta"; completion.tokens.len()];
        let expected = [
            &["message_start", "content_block_start", "ping"][..],
            &deltas,
            &["content_block_stop", "message_delta", "message_stop"],
        ]
        .concat();
        assert_eq!(names, expected);
        for (name, data) in &events {
            assert_eq!(data["type"], *name, "data.type matches the event name");
        }
        assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 4);
        let text: String = events
            .iter()
            .filter_map(|(_, data)| data["delta"]["text"].as_str())
            .collect();
        assert_eq!(text, "[system: be brief] echo: hello world");
        assert_eq!(
            events[events.len() - 2].1["delta"]["stop_reason"],
            "end_turn"
        );
        assert_eq!(events[events.len() - 2].1["usage"]["output_tokens"], 6);
    }

    #[test]
    fn rejects_openai_shapes_a_gateway_failed_to_translate() {
        let system_role =
            json!([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]);
        let image_url =
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]);
        let null_content = json!([{"role": "assistant", "content": null}]);
        let empty_text = json!([{"role": "user", "content": [{"type": "text", "text": ""}]}]);
        for messages in [system_role, image_url, null_content, empty_text] {
            let messages = messages.as_array().unwrap();
            assert!(check_messages(messages).is_err(), "{messages:?}");
        }
        let openai_tool = json!({"tools": [{"type": "function", "function": {"name": "f"}}]});
        assert!(tool_names(&openai_tool).is_err());
    }
}
