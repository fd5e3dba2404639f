//! Anthropic's Messages API, translated to and from OpenAI's chat shapes: system prompts, content
//! parts and images, tools and tool results, stop reasons, usage, and the streaming event sequence.

use futures_util::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::messages::{
    self, Block, CACHE_CONTROL, ChunkWriter, Conversation, FinishReason, Image, REASONING_CONTENT,
    REDACTED_THINKING, Reply, Speaker, THINKING_SIGNATURE, ToolChoice,
};
use super::{ChatProvider, ChunkStream, ProviderError, ProviderErrorKind, transport};
use crate::api::{
    AnthropicExtras, ChatChunk, ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse,
    Usage,
};
use crate::config::{ProviderConfig, Timeouts};

const DEFAULT_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; OpenAI clients often omit it.
const DEFAULT_MAX_TOKENS: u32 = 4096;

pub struct AnthropicProvider {
    http: reqwest::Client,
    messages_url: String,
    api_key: Option<HeaderValue>,
    version: HeaderValue,
    timeouts: Timeouts,
}

impl AnthropicProvider {
    pub fn new(
        http: reqwest::Client,
        base_url: String,
        api_key: Option<String>,
        config: &ProviderConfig,
    ) -> Result<Self, String> {
        let api_key = match api_key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&key)
                    .map_err(|_| "the credential contains characters not allowed in a header")?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let version =
            HeaderValue::from_str(config.api_version.as_deref().unwrap_or(DEFAULT_VERSION))
                .map_err(|_| "api_version contains characters not allowed in a header")?;
        let base = base_url.trim_end_matches("/v1");
        Ok(Self {
            http,
            messages_url: format!("{base}/v1/messages"),
            api_key,
            version,
            timeouts: config.timeouts,
        })
    }

    /// Sends `body` with the client's `anthropic-version` (the provider's own when it sent none)
    /// and `anthropic-beta` from `extras`.
    async fn send(
        &self,
        body: &MessagesRequest<'_>,
        extras: Option<&AnthropicExtras>,
    ) -> Result<reqwest::Response, ProviderError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ProviderError::new(ProviderErrorKind::BadRequest, e.to_string()))?;
        let header = |name: &str, value: &str| {
            HeaderValue::from_str(value).map_err(|_| {
                messages::bad_request(format!("the `{name}` header is not a valid header value"))
            })
        };
        let version = match extras.and_then(|e| e.version.as_deref()) {
            Some(version) => header("anthropic-version", version)?,
            None => self.version.clone(),
        };
        let mut request = self
            .http
            .post(&self.messages_url)
            .header(CONTENT_TYPE, "application/json")
            .header("anthropic-version", version)
            .body(body);
        if let Some(beta) = extras.and_then(|e| e.beta.as_deref()) {
            request = request.header("anthropic-beta", header("anthropic-beta", beta)?);
        }
        if let Some(key) = &self.api_key {
            request = request.header("x-api-key", key.clone());
        }
        transport::send(request, &self.timeouts, parse_error).await
    }
}

impl ChatProvider for AnthropicProvider {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let body = to_messages_request(request, false)?;
        let response = self.send(&body, request.anthropic.as_ref()).await?;
        let bytes = transport::read_body(response, &self.timeouts).await?;
        let message: MessagesResponse = serde_json::from_slice(&bytes).map_err(|e| {
            ProviderError::new(
                ProviderErrorKind::Protocol,
                format!("invalid Messages API response: {e}"),
            )
        })?;
        Ok(from_messages_response(message))
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let body = to_messages_request(request, true)?;
        let response = self.send(&body, request.anthropic.as_ref()).await?;
        let mut translator = StreamTranslator::new(&request.model);
        translator.report_prompt_usage = request.anthropic.is_some();
        let chunks = transport::sse_events(response, &self.timeouts).filter_map(move |event| {
            std::future::ready(match event {
                Err(e) => Some(Err(e)),
                Ok((event, data)) => translator.translate(&event, &data),
            })
        });
        Ok(chunks.boxed())
    }

    async fn embed(&self, _request: &EmbeddingRequest) -> Result<EmbeddingResponse, ProviderError> {
        Err(ProviderError::new(
            ProviderErrorKind::BadRequest,
            "Anthropic has no embeddings API; configure an embedding model on another provider",
        ))
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

fn parse_error(status: u16, body: &[u8], retry_after: Option<u64>) -> ProviderError {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        // Anthropic's error `type` is a class, not an OpenAI `code`: the status and message
        // classify it.
        Ok(envelope) => {
            ProviderError::from_status(status, envelope.error.message, None, None, retry_after)
        }
        Err(_) => ProviderError::from_unparsed_body(status, body, retry_after),
    }
}

/// An `error` event inside a stream, classified by its type since it has no HTTP status.
fn stream_error(data: &str) -> ProviderError {
    let (kind, message) = match serde_json::from_str::<ErrorEnvelope>(data) {
        Ok(envelope) => (envelope.error.kind, envelope.error.message),
        Err(_) => (String::new(), data.to_owned()),
    };
    let status = match kind.as_str() {
        "rate_limit_error" => 429,
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "overloaded_error" => 529,
        _ => 500,
    };
    ProviderError::from_status(status, message, None, None, None)
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    /// Text, or text blocks when some carry a cache breakpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<Value>,
    messages: Vec<MessageParam>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<String>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
}

#[derive(Serialize)]
struct MessageParam {
    role: &'static str,
    content: Vec<Value>,
}

fn image_json(image: &Image<'_>) -> Value {
    match image {
        Image::Base64 { media_type, data } => {
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
        }
        Image::Url(url) => json!({"type": "image", "source": {"type": "url", "url": url}}),
    }
}

/// The block's JSON; none for a cache point, which marks the block before it instead.
fn block_json(block: &Block<'_>) -> Option<Value> {
    Some(match block {
        Block::Text(text) => json!({"type": "text", "text": text}),
        Block::Image(image) => image_json(image),
        Block::ToolUse { id, name, input } => {
            json!({"type": "tool_use", "id": id, "name": name, "input": input})
        }
        Block::ToolResult {
            tool_use_id,
            text,
            images,
        } if images.is_empty() => {
            json!({"type": "tool_result", "tool_use_id": tool_use_id, "content": text})
        }
        Block::ToolResult {
            tool_use_id,
            text,
            images,
        } => {
            let mut content: Vec<Value> = Vec::with_capacity(images.len() + 1);
            if !text.is_empty() {
                content.push(json!({"type": "text", "text": text}));
            }
            content.extend(images.iter().map(image_json));
            json!({"type": "tool_result", "tool_use_id": tool_use_id, "content": content})
        }
        Block::Thinking {
            thinking,
            signature,
        } => json!({"type": "thinking", "thinking": thinking, "signature": signature}),
        Block::RedactedThinking { data } => json!({"type": "redacted_thinking", "data": data}),
        Block::Document(fields) => {
            let mut document = (*fields).clone();
            document.remove(CACHE_CONTROL);
            document.insert("type".to_owned(), json!("document"));
            Value::Object(document)
        }
        Block::CachePoint(_) => return None,
    })
}

/// The blocks' JSON, each cache point set as the `cache_control` of the block before it.
fn blocks_json(blocks: &[Block<'_>]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(blocks.len());
    for block in blocks {
        match (block, out.last_mut().and_then(Value::as_object_mut)) {
            (Block::CachePoint(cache_control), Some(previous)) => {
                previous.insert(CACHE_CONTROL.to_owned(), (*cache_control).clone());
            }
            _ => out.extend(block_json(block)),
        }
    }
    out
}

/// The system prompt: one text, or text blocks when some carry a cache breakpoint.
fn system_json(conversation: &Conversation<'_>) -> Option<Value> {
    let system = &conversation.system;
    if system.is_empty() {
        return None;
    }
    if conversation.system_cache.is_empty() {
        return Some(Value::String(system.join("\n\n")));
    }
    let blocks = system
        .iter()
        .enumerate()
        .filter(|(_, text)| !text.is_empty())
        .map(|(index, text)| {
            let mut block = json!({"type": "text", "text": text});
            let cache_control = conversation
                .system_cache
                .iter()
                .find(|(cached, _)| *cached == index);
            if let (Some((_, cache_control)), Some(object)) = (cache_control, block.as_object_mut())
            {
                object.insert(CACHE_CONTROL.to_owned(), (*cache_control).clone());
            }
            block
        })
        .collect();
    Some(Value::Array(blocks))
}

fn tool_choice_json(choice: ToolChoice<'_>, parallel: Option<bool>) -> Value {
    let mut translated = match choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
    };
    if parallel == Some(false)
        && let Some(object) = translated.as_object_mut()
    {
        object.insert("disable_parallel_tool_use".to_owned(), Value::Bool(true));
    }
    translated
}

fn to_messages_request(
    request: &ChatRequest,
    stream: bool,
) -> Result<MessagesRequest<'_>, ProviderError> {
    let conversation = Conversation::from_request(request, "Anthropic")?;
    let messages = conversation
        .turns
        .iter()
        .map(|turn| MessageParam {
            role: match turn.speaker {
                Speaker::User => "user",
                Speaker::Assistant => "assistant",
            },
            content: blocks_json(&turn.blocks),
        })
        .collect();
    let system = system_json(&conversation);
    let tools: Vec<Value> = conversation
        .tools
        .into_iter()
        .map(|spec| {
            let mut tool = json!({"name": spec.name, "input_schema": spec.schema});
            if let Some(object) = tool.as_object_mut() {
                if let Some(description) = spec.description {
                    object.insert(
                        "description".to_owned(),
                        Value::String(description.to_owned()),
                    );
                }
                if let Some(cache_control) = spec.cache_control {
                    object.insert(CACHE_CONTROL.to_owned(), cache_control.clone());
                }
            }
            tool
        })
        .collect();
    let sampling = conversation.sampling;
    let extras = request.anthropic.as_ref();
    Ok(MessagesRequest {
        model: &request.model,
        max_tokens: sampling.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system,
        messages,
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        top_k: extras.and_then(|e| e.top_k),
        thinking: extras.and_then(|e| e.thinking.clone()),
        stop_sequences: sampling.stop,
        stream,
        tools: (!tools.is_empty()).then_some(tools),
        tool_choice: conversation
            .tool_choice
            .map(|choice| tool_choice_json(choice, request.parallel_tool_calls)),
        metadata: request.user.as_ref().map(|u| json!({"user_id": u})),
    })
}

#[derive(Deserialize)]
struct MessagesResponse {
    id: String,
    model: String,
    #[serde(default)]
    content: Vec<ContentBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
        #[serde(default)]
        signature: String,
    },
    RedactedThinking {
        #[serde(default)]
        data: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    fn prompt_usage(&self, output_tokens: u64) -> Usage {
        messages::usage(
            self.input_tokens,
            self.cache_read_input_tokens.unwrap_or(0),
            self.cache_creation_input_tokens.unwrap_or(0),
            output_tokens,
        )
    }
}

/// A stop reason in OpenAI's terms; a missing one is an ordinary stop.
fn finish_reason(stop_reason: Option<&str>) -> FinishReason {
    match stop_reason {
        Some("max_tokens") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn from_messages_response(message: MessagesResponse) -> ChatCompletion {
    let mut reply = Reply::default();
    for block in message.content {
        match block {
            ContentBlock::Text { text } => reply.push_text(&text),
            ContentBlock::ToolUse { id, name, input } => reply.push_tool_use(id, name, &input),
            ContentBlock::Thinking {
                thinking,
                signature,
            } => reply.push_thinking(&thinking, &signature),
            ContentBlock::RedactedThinking { data } => reply.push_redacted_thinking(&data),
            ContentBlock::Other => {}
        }
    }
    reply.stop_sequence = message.stop_sequence;
    let usage = message.usage.prompt_usage(message.usage.output_tokens);
    reply.into_completion(
        message.id,
        message.model,
        finish_reason(message.stop_reason.as_deref()),
        Some(usage),
    )
}

/// Turns Anthropic stream events into OpenAI chunks, one event at a time.
struct StreamTranslator {
    chunks: ChunkWriter<u64>,
    input: AnthropicUsage,
    output_tokens: u64,
    finished: bool,
    /// Whether the first chunk carries the prompt usage of `message_start` (for the Messages
    /// front end's own `message_start`).
    report_prompt_usage: bool,
}

#[derive(Deserialize)]
struct StartMessage {
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u64,
        content_block: ContentBlock,
    },
    ContentBlockDelta {
        index: u64,
        delta: BlockDelta,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<DeltaUsage>,
    },
    MessageStop,
    #[serde(other)]
    Ignored,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
}

#[derive(Deserialize)]
struct DeltaUsage {
    #[serde(default)]
    output_tokens: u64,
}

impl StreamTranslator {
    fn new(model: &str) -> Self {
        Self {
            chunks: ChunkWriter::new(String::new(), model),
            input: AnthropicUsage::default(),
            output_tokens: 0,
            finished: false,
            report_prompt_usage: false,
        }
    }

    /// The chunk an event becomes, if any. Events after `message_stop` are ignored.
    fn translate(&mut self, event: &str, data: &str) -> Option<Result<ChatChunk, ProviderError>> {
        if self.finished {
            return None;
        }
        if event == "error" {
            self.finished = true;
            return Some(Err(stream_error(data)));
        }
        let parsed: StreamEvent = match serde_json::from_str(data) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.finished = true;
                return Some(Err(ProviderError::new(
                    ProviderErrorKind::Protocol,
                    format!("malformed `{event}` event: {e}"),
                )));
            }
        };
        match parsed {
            StreamEvent::MessageStart { message } => {
                self.chunks.id = message.id;
                if !message.model.is_empty() {
                    self.chunks.model = message.model;
                }
                self.input = message.usage;
                self.output_tokens = message.usage.output_tokens;
                if self.report_prompt_usage {
                    let prompt = self.input.prompt_usage(0);
                    return Some(Ok(self.chunks.role_with_prompt_usage(prompt)));
                }
                Some(Ok(self.chunks.role()))
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block: ContentBlock::ToolUse { id, name, .. },
            } => {
                let started = self.chunks.tool_start(index, id, name);
                self.finished = started.is_err();
                Some(started)
            }
            StreamEvent::ContentBlockStart {
                content_block: ContentBlock::RedactedThinking { data },
                ..
            } => Some(Ok(self.chunks.thinking(REDACTED_THINKING, data))),
            StreamEvent::ContentBlockStart { .. } => None,
            StreamEvent::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => Some(Ok(self.chunks.text(text))),
                BlockDelta::InputJsonDelta { partial_json } => {
                    self.chunks.tool_arguments(&index, partial_json).map(Ok)
                }
                BlockDelta::ThinkingDelta { thinking } => {
                    Some(Ok(self.chunks.thinking(REASONING_CONTENT, thinking)))
                }
                BlockDelta::SignatureDelta { signature } => {
                    Some(Ok(self.chunks.thinking(THINKING_SIGNATURE, signature)))
                }
                BlockDelta::Other => None,
            },
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(usage) = usage {
                    self.output_tokens = usage.output_tokens;
                }
                let reason = finish_reason(delta.stop_reason.as_deref());
                Some(Ok(self.chunks.finish(reason, delta.stop_sequence)))
            }
            StreamEvent::MessageStop => {
                self.finished = true;
                let usage = self.input.prompt_usage(self.output_tokens);
                Some(Ok(self.chunks.usage(usage)))
            }
            StreamEvent::Ignored => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn system_prompts_tools_and_tool_results_are_translated() {
        let req = request(json!({
            "model": "claude",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "stop": "END",
            "temperature": 1.7
        }));
        let translated = serde_json::to_value(to_messages_request(&req, false).unwrap()).unwrap();
        assert_eq!(translated["system"], "Be brief.");
        assert_eq!(translated["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(translated["temperature"], 1.0);
        assert_eq!(translated["stop_sequences"], json!(["END"]));
        assert_eq!(
            translated["messages"][0]["content"][1]["source"]["media_type"],
            "image/png"
        );
        assert_eq!(
            translated["messages"][1]["content"][0]["input"]["city"],
            "Paris"
        );
        assert_eq!(translated["messages"][2]["role"], "user");
        assert_eq!(translated["messages"][2]["content"][0]["tool_use_id"], "t1");
        assert_eq!(translated["tools"][0]["input_schema"]["type"], "object");
        assert_eq!(
            translated["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert!(translated.get("stream").is_none());
    }

    #[test]
    fn responses_map_stop_reasons_tool_use_and_usage() {
        let response: MessagesResponse = serde_json::from_value(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2}
        }))
        .unwrap();
        let completion = from_messages_response(response);
        let choice = &completion.choices[0];
        assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(choice.message.content.as_deref(), Some("Checking."));
        let calls = choice.message.tool_calls.as_ref().unwrap();
        assert_eq!(calls[0].function.arguments, r#"{"city":"Paris"}"#);
        assert_eq!(completion.usage, Some(Usage::new(12, 5).with_cache(2, 0)));
    }

    #[test]
    fn stream_events_become_openai_chunks() {
        let mut t = StreamTranslator::new("claude");
        let events = [
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[],"usage":{"input_tokens":7,"output_tokens":1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":1}"}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":9}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ];
        let mut assembler = crate::api::CompletionAssembler::default();
        for (event, data) in events {
            if let Some(chunk) = t.translate(event, data) {
                assembler.push(&chunk.unwrap()).unwrap();
            }
        }
        assert!(assembler.is_finished());
        let completion = assembler.into_completion();
        assert_eq!(completion.id, "msg_1");
        assert_eq!(completion.choices[0].message.content.as_deref(), Some("Hi"));
        assert_eq!(
            completion.choices[0].finish_reason.as_deref(),
            Some("tool_calls")
        );
        let calls = completion.choices[0].message.tool_calls.as_ref().unwrap();
        assert_eq!(
            (calls[0].id.as_str(), calls[0].function.arguments.as_str()),
            ("toolu_1", "{\"a\":1}")
        );
        assert_eq!(completion.usage, Some(Usage::new(7, 9)));
    }

    #[test]
    fn stream_error_events_are_classified() {
        let mut t = StreamTranslator::new("claude");
        let error = t
            .translate(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            )
            .unwrap()
            .unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::Server);
        assert!(error.is_retryable());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::{StreamTranslator, from_messages_response, to_messages_request};
    use crate::providers::messages::Speaker;
    use crate::providers::translation_properties::{
        Flat, GeneratedReply, ReplyBlock, TOOL_NAMES, assemble, chat_request, check_completion,
        check_streamed_arguments, check_turns, expected, reply,
    };

    /// Anthropic's stop reasons and the finish reasons they must become.
    const STOP_REASONS: [(&str, &str); 5] = [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ];

    fn read_back(body: &Value) -> Vec<(Speaker, Vec<Flat>)> {
        let text = |v: &Value| v.as_str().unwrap().to_owned();
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| {
                let speaker = match message["role"].as_str().unwrap() {
                    "user" => Speaker::User,
                    "assistant" => Speaker::Assistant,
                    other => panic!("unexpected role {other}"),
                };
                let blocks = message["content"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|block| match block["type"].as_str().unwrap() {
                        "text" => Flat::Text(text(&block["text"])),
                        "image" => {
                            assert_eq!(block["source"]["type"], "base64");
                            Flat::Image {
                                media_type: text(&block["source"]["media_type"]),
                                data: text(&block["source"]["data"]),
                            }
                        }
                        "tool_use" => Flat::ToolUse {
                            id: text(&block["id"]),
                            name: text(&block["name"]),
                            input: block["input"].clone(),
                        },
                        "tool_result" => Flat::ToolResult {
                            id: text(&block["tool_use_id"]),
                            text: text(&block["content"]),
                        },
                        other => panic!("unexpected block {other}"),
                    })
                    .collect();
                (speaker, blocks)
            })
            .collect()
    }

    fn usage_json(reply: &GeneratedReply, output_tokens: u32) -> Value {
        json!({
            "input_tokens": reply.input_tokens,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": reply.cache_read_tokens,
            "cache_creation_input_tokens": reply.cache_write_tokens,
        })
    }

    /// The events Anthropic streams the reply in.
    fn events(reply: &GeneratedReply, stop_reason: &str) -> Vec<(&'static str, Value)> {
        let mut events = vec![(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [], "usage": usage_json(reply, 1)
            }}),
        )];
        for (index, block) in reply.blocks.iter().enumerate() {
            let (start, deltas) = match block {
                ReplyBlock::Text(pieces) => (
                    json!({"type": "text", "text": ""}),
                    pieces
                        .iter()
                        .map(|p| json!({"type": "text_delta", "text": p}))
                        .collect::<Vec<_>>(),
                ),
                ReplyBlock::ToolUse {
                    id, name, pieces, ..
                } => (
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    pieces
                        .iter()
                        .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                        .collect(),
                ),
            };
            events.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": start}),
            ));
            for delta in deltas {
                events.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": delta}),
                ));
            }
            events.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
        events.push((
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop_reason},
                   "usage": {"output_tokens": reply.output_tokens}}),
        ));
        events.push(("message_stop", json!({"type": "message_stop"})));
        events
    }

    proptest! {
        #[test]
        fn requests_keep_every_block_in_alternating_turns(request in chat_request()) {
            let body = serde_json::to_value(to_messages_request(&request, false).unwrap()).unwrap();
            let expected = expected(&request);
            check_turns(&read_back(&body), &expected)?;
            if expected.system.is_empty() {
                prop_assert!(body.get("system").is_none());
            } else {
                let system = expected.system.join("\n\n");
                prop_assert_eq!(body["system"].as_str(), Some(system.as_str()));
            }
            let tools: Vec<&str> = body["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap())
                .collect();
            prop_assert_eq!(tools, TOOL_NAMES.to_vec());
            let choice = match &request.tool_choice {
                None => Value::Null,
                Some(Value::String(s)) if s == "required" => json!({"type": "any"}),
                Some(Value::String(s)) => json!({"type": s}),
                Some(_) => json!({"type": "tool", "name": "search"}),
            };
            prop_assert_eq!(&body["tool_choice"], &choice);
        }

        #[test]
        fn answers_keep_text_tool_calls_and_usage(
            reply in reply(),
            (stop_reason, finish_reason) in prop::sample::select(STOP_REASONS.to_vec()),
        ) {
            let content: Vec<Value> = reply
                .blocks
                .iter()
                .map(|block| match block {
                    ReplyBlock::Text(pieces) => json!({"type": "text", "text": pieces.concat()}),
                    ReplyBlock::ToolUse { id, name, input, .. } => {
                        json!({"type": "tool_use", "id": id, "name": name, "input": input})
                    }
                })
                .collect();
            let response = serde_json::from_value(json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": content, "stop_reason": stop_reason,
                "usage": usage_json(&reply, reply.output_tokens),
            }))
            .unwrap();
            check_completion(&from_messages_response(response), &reply, finish_reason)?;
        }

        #[test]
        fn streams_reassemble_into_the_answer(
            reply in reply(),
            (stop_reason, finish_reason) in prop::sample::select(STOP_REASONS.to_vec()),
        ) {
            let mut translator = StreamTranslator::new("claude");
            let chunks: Vec<_> = events(&reply, stop_reason)
                .into_iter()
                .filter_map(|(event, data)| translator.translate(event, &data.to_string()))
                .collect::<Result<_, _>>()
                .unwrap();
            let completion = assemble(&chunks)?;
            check_completion(&completion, &reply, finish_reason)?;
            check_streamed_arguments(&completion, &reply)?;
        }
    }
}
