//! Anthropic's Messages API, translated to and from OpenAI's chat shapes: system prompts, content
//! parts and images, tools and tool results, stop reasons, usage, and the streaming event sequence.

use std::collections::HashMap;

use futures_util::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::transport;
use super::{ChunkStream, ProviderError, ProviderErrorKind};
use crate::api::{
    AssistantMessage, ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Content, Delta,
    FunctionCall, FunctionCallDelta, JsonObject, Role, ToolCall, ToolCallDelta, Usage,
};
use crate::clock::now_secs;
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

    async fn send(&self, body: &MessagesRequest<'_>) -> Result<reqwest::Response, ProviderError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ProviderError::new(ProviderErrorKind::BadRequest, e.to_string()))?;
        let mut request = self
            .http
            .post(&self.messages_url)
            .header(CONTENT_TYPE, "application/json")
            .header("anthropic-version", self.version.clone())
            .body(body);
        if let Some(key) = &self.api_key {
            request = request.header("x-api-key", key.clone());
        }
        transport::send(request, &self.timeouts, parse_error).await
    }

    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let body = to_messages_request(request, false)?;
        let response = self.send(&body).await?;
        let bytes = transport::read_body(response, &self.timeouts).await?;
        let message: MessagesResponse = serde_json::from_slice(&bytes).map_err(|e| {
            ProviderError::new(
                ProviderErrorKind::Protocol,
                format!("invalid Messages API response: {e}"),
            )
        })?;
        Ok(from_messages_response(message))
    }

    pub async fn chat_stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let body = to_messages_request(request, true)?;
        let response = self.send(&body).await?;
        let mut translator = StreamTranslator::new(&request.model);
        let chunks = transport::sse_events(response, &self.timeouts).filter_map(move |event| {
            std::future::ready(match event {
                Err(e) => Some(Err(e)),
                Ok((event, data)) => translator.translate(&event, &data),
            })
        });
        Ok(chunks.boxed())
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
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<MessageParam>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
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

fn bad_request(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::BadRequest, message)
}

/// An OpenAI image part as an Anthropic image block: data URLs become base64 sources.
fn image_block(url: &str) -> Result<Value, ProviderError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) = rest
            .split_once(";base64,")
            .ok_or_else(|| bad_request("image data URLs must be base64 encoded"))?;
        Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
        )
    } else {
        Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
    }
}

fn content_blocks(content: &Content) -> Result<Vec<Value>, ProviderError> {
    match content {
        Content::Text(text) if text.is_empty() => Ok(Vec::new()),
        Content::Text(text) => Ok(vec![json!({"type": "text", "text": text})]),
        Content::Parts(parts) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                match (part.kind.as_str(), &part.text, &part.image_url) {
                    ("text", Some(text), _) if !text.is_empty() => {
                        blocks.push(json!({"type": "text", "text": text}));
                    }
                    ("image_url", _, Some(image)) => blocks.push(image_block(&image.url)?),
                    ("text", _, _) => {}
                    (other, _, _) => {
                        return Err(bad_request(format!(
                            "content part type `{other}` is not supported by Anthropic models"
                        )));
                    }
                }
            }
            Ok(blocks)
        }
    }
}

fn translate_tool_choice(choice: &Value, parallel: Option<bool>) -> Option<Value> {
    let mut translated = match choice {
        Value::String(s) if s == "auto" => json!({"type": "auto"}),
        Value::String(s) if s == "required" => json!({"type": "any"}),
        Value::String(s) if s == "none" => json!({"type": "none"}),
        Value::Object(o) => {
            let name = o.get("function")?.get("name")?.as_str()?;
            json!({"type": "tool", "name": name})
        }
        _ => return None,
    };
    if parallel == Some(false)
        && let Some(object) = translated.as_object_mut()
    {
        object.insert("disable_parallel_tool_use".to_owned(), Value::Bool(true));
    }
    Some(translated)
}

fn to_messages_request(
    request: &ChatRequest,
    stream: bool,
) -> Result<MessagesRequest<'_>, ProviderError> {
    if request.choices() > 1 {
        return Err(bad_request("Anthropic models support only n = 1").with_param("n"));
    }
    let mut system = Vec::new();
    let mut messages: Vec<MessageParam> = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        let (role, blocks) = match message.role {
            Role::System | Role::Developer => {
                if let Some(content) = &message.content {
                    system.push(content.text());
                }
                continue;
            }
            Role::User => (
                "user",
                match &message.content {
                    Some(content) => content_blocks(content)?,
                    None => Vec::new(),
                },
            ),
            Role::Assistant => {
                let mut blocks = match &message.content {
                    Some(content) => content_blocks(content)?,
                    None => Vec::new(),
                };
                for call in message.tool_calls.iter().flatten() {
                    let input = call.arguments_json().map_err(bad_request)?;
                    blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.function.name, "input": input}));
                }
                ("assistant", blocks)
            }
            Role::Tool | Role::Function => {
                let text = message
                    .content
                    .as_ref()
                    .map(Content::text)
                    .unwrap_or_default();
                let id = message
                    .tool_call_id
                    .clone()
                    .or_else(|| message.name.clone())
                    .unwrap_or_default();
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": text})],
                )
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // Anthropic wants alternating roles: consecutive turns of one role are merged, which is
        // also how several tool results answering one assistant turn must be sent.
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(MessageParam {
                role,
                content: blocks,
            }),
        }
    }
    let tools = request.tools.as_ref().map(|tools| {
        tools
            .iter()
            .filter_map(|t| t.function.as_ref())
            .map(|f| {
                let mut tool = json!({
                    "name": f.name,
                    "input_schema": f.parameters.clone().unwrap_or_else(|| json!({"type": "object"})),
                });
                if let (Some(description), Some(object)) = (&f.description, tool.as_object_mut()) {
                    object.insert("description".to_owned(), Value::String(description.clone()));
                }
                tool
            })
            .collect::<Vec<_>>()
    });
    Ok(MessagesRequest {
        model: &request.model,
        max_tokens: request.max_output_tokens().unwrap_or(DEFAULT_MAX_TOKENS),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        // Anthropic's temperature range is 0..=1; OpenAI's is 0..=2.
        temperature: request.temperature.map(|t| t.min(1.0)),
        top_p: request.top_p,
        stop_sequences: request.stop.as_ref().map(|s| s.to_vec()),
        stream,
        tools: tools.filter(|t| !t.is_empty()),
        tool_choice: request
            .tool_choice
            .as_ref()
            .and_then(|c| translate_tool_choice(c, request.parallel_tool_calls)),
        metadata: request.user.as_ref().map(|u| json!({"user_id": u})),
    })
}

impl ProviderError {
    fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }
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
    fn prompt_tokens(&self) -> u64 {
        self.input_tokens
            + self.cache_creation_input_tokens.unwrap_or(0)
            + self.cache_read_input_tokens.unwrap_or(0)
    }
}

fn finish_reason(stop_reason: Option<&str>) -> Option<String> {
    stop_reason.map(|reason| {
        match reason {
            "max_tokens" => "length",
            "tool_use" => "tool_calls",
            "refusal" => "content_filter",
            _ => "stop",
        }
        .to_owned()
    })
}

fn from_messages_response(message: MessagesResponse) -> ChatCompletion {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block {
            ContentBlock::Text { text: t } => text.push_str(&t),
            ContentBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                kind: "function".to_owned(),
                function: FunctionCall {
                    name,
                    arguments: input.to_string(),
                },
            }),
            ContentBlock::Other => {}
        }
    }
    let usage = Usage::new(message.usage.prompt_tokens(), message.usage.output_tokens);
    ChatCompletion {
        id: message.id,
        object: "chat.completion".to_owned(),
        created: now_secs(),
        model: message.model,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant".to_owned(),
                content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                extra: JsonObject::new(),
            },
            finish_reason: finish_reason(message.stop_reason.as_deref())
                .or_else(|| Some("stop".to_owned())),
            logprobs: None,
            extra: JsonObject::new(),
        }],
        usage: Some(usage),
        extra: JsonObject::new(),
    }
}

/// Turns Anthropic stream events into OpenAI chunks, one event at a time.
struct StreamTranslator {
    id: String,
    model: String,
    created: u64,
    input: AnthropicUsage,
    output_tokens: u64,
    /// Anthropic content-block index -> OpenAI tool-call index.
    tool_indexes: HashMap<u64, u32>,
    finished: bool,
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
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaUsage {
    #[serde(default)]
    output_tokens: u64,
}

impl StreamTranslator {
    fn new(model: &str) -> Self {
        Self {
            id: String::new(),
            model: model.to_owned(),
            created: now_secs(),
            input: AnthropicUsage::default(),
            output_tokens: 0,
            tool_indexes: HashMap::new(),
            finished: false,
        }
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<String>) -> ChatChunk {
        ChatChunk::new(
            &self.id,
            self.created,
            &self.model,
            vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
                logprobs: None,
            }],
        )
    }

    fn tool_delta(
        &self,
        index: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    ) -> Delta {
        Delta {
            tool_calls: Some(vec![ToolCallDelta {
                index,
                kind: id.as_ref().map(|_| "function".to_owned()),
                id,
                function: Some(FunctionCallDelta {
                    name,
                    arguments: Some(arguments),
                }),
            }]),
            ..Delta::default()
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
                self.id = message.id;
                if !message.model.is_empty() {
                    self.model = message.model;
                }
                self.input = message.usage;
                self.output_tokens = message.usage.output_tokens;
                Some(Ok(self.chunk(
                    Delta {
                        role: Some("assistant".to_owned()),
                        content: Some(String::new()),
                        ..Delta::default()
                    },
                    None,
                )))
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block: ContentBlock::ToolUse { id, name, .. },
            } => {
                let tool_index = self.tool_indexes.len() as u32;
                self.tool_indexes.insert(index, tool_index);
                Some(Ok(self.chunk(
                    self.tool_delta(tool_index, Some(id), Some(name), String::new()),
                    None,
                )))
            }
            StreamEvent::ContentBlockStart { .. } => None,
            StreamEvent::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => Some(Ok(self.chunk(
                    Delta {
                        content: Some(text),
                        ..Delta::default()
                    },
                    None,
                ))),
                BlockDelta::InputJsonDelta { partial_json } => {
                    let tool_index = *self.tool_indexes.get(&index)?;
                    Some(Ok(self.chunk(
                        self.tool_delta(tool_index, None, None, partial_json),
                        None,
                    )))
                }
                BlockDelta::Other => None,
            },
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(usage) = usage {
                    self.output_tokens = usage.output_tokens;
                }
                Some(Ok(self.chunk(
                    Delta::default(),
                    finish_reason(delta.stop_reason.as_deref()).or_else(|| Some("stop".to_owned())),
                )))
            }
            StreamEvent::MessageStop => {
                self.finished = true;
                let mut chunk = ChatChunk::new(&self.id, self.created, &self.model, Vec::new());
                chunk.usage = Some(Usage::new(self.input.prompt_tokens(), self.output_tokens));
                Some(Ok(chunk))
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
        assert_eq!(completion.usage, Some(Usage::new(12, 5)));
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
