//! Anthropic's Messages API as a client speaks it to the gateway (`POST /v1/messages`): the wire
//! types, and the translation onto the one chat pipeline and back. A request becomes an OpenAI
//! chat request (what every provider kind already takes); the pipeline's answer, a completion or
//! a stream of chunks, becomes a Message or Anthropic's stream events. The other direction (an
//! OpenAI-shaped request sent to an Anthropic upstream) is `providers::anthropic`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AnthropicExtras, ChatChunk, ChatCompletion, JsonObject, Usage};

/// The Messages request fields the gateway reads; anything else (`service_tier`, ...) is
/// accepted and not forwarded.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct MessagesRequest {
    pub model: String,
    pub max_tokens: u32,
    pub messages: Vec<InputMessage>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub system: Option<SystemPrompt>,
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Forwarded to Anthropic and Bedrock models; OpenAI-kind models ignore it.
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Extended thinking, forwarded to Anthropic and Bedrock models; OpenAI-kind models ignore it.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub thinking: Option<ThinkingConfig>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<ToolDefinition>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<ToolChoiceParam>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
}

/// The counting request: a Messages request without `max_tokens`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CountTokensRequest {
    pub model: String,
    pub messages: Vec<InputMessage>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub system: Option<SystemPrompt>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<ToolDefinition>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CountTokensResponse {
    pub input_tokens: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SystemPrompt {
    Text(String),
    Blocks(Vec<TextBlockParam>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextBlockParam {
    pub text: String,
    #[serde(default)]
    pub cache_control: Option<Value>,
}

/// Extended thinking, checked here so a bad setting is the client's 400, not the upstream's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ThinkingConfig {
    Enabled { budget_tokens: u32 },
    Disabled {},
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct InputMessage {
    pub role: MessageRole,
    #[schema(value_type = Object)]
    pub content: MessageContent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    User,
    Assistant,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Blocks(Vec<ContentBlockParam>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlockParam {
    Text {
        text: String,
        #[serde(default)]
        cache_control: Option<Value>,
    },
    Image {
        source: ImageSource,
        #[serde(default)]
        cache_control: Option<Value>,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default)]
        content: Option<ToolResultContent>,
        #[serde(default)]
        is_error: Option<bool>,
        #[serde(default)]
        cache_control: Option<Value>,
    },
    /// Earlier turns' reasoning, which clients send back: passed to Anthropic and Bedrock
    /// unchanged (a tool-use loop with thinking requires it), dropped for other models.
    Thinking {
        thinking: String,
        signature: String,
    },
    RedactedThinking {
        data: String,
    },
    /// A PDF or text document (its `source`, `title`, `context`, `citations`, `cache_control`).
    Document(JsonObject),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ToolResultContent {
    Text(String),
    Blocks(Vec<ContentBlockParam>),
}

/// A client tool. Anthropic's server tools (`web_search_...`, `bash_...`) have a `type` and no
/// `input_schema`: they fail here as a 400, since no provider behind the pipeline runs them.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolDefinition {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub input_schema: Value,
    #[serde(default)]
    pub cache_control: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoiceParam {
    Auto {
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: String,
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    None,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub user_id: Option<String>,
}

/// A Message, the answer of `POST /v1/messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageResponse {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub role: String,
    pub model: String,
    #[schema(value_type = Vec<Object>)]
    pub content: Vec<Value>,
    pub stop_reason: Option<String>,
    pub stop_sequence: Option<String>,
    pub usage: MessageUsage,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageUsage {
    /// Prompt tokens neither read from nor written to the prompt cache, as Anthropic counts.
    pub input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub output_tokens: u64,
}

impl From<Usage> for MessageUsage {
    /// The pipeline's prompt tokens include cache reads and writes; Anthropic's `input_tokens`
    /// does not.
    fn from(usage: Usage) -> Self {
        let read = usage.cache_read_tokens();
        let write = usage.cache_write_tokens();
        Self {
            input_tokens: usage.prompt_tokens.saturating_sub(read + write),
            cache_creation_input_tokens: write,
            cache_read_input_tokens: read,
            output_tokens: usage.completion_tokens,
        }
    }
}

/// A stop reason in Anthropic's terms, from OpenAI's finish reason: a stop is `stop_sequence`
/// when the upstream named the sequence that matched, else `end_turn`.
pub fn stop_reason(finish_reason: Option<&str>, stop_sequence: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ if stop_sequence.is_some() => "stop_sequence",
        _ => "end_turn",
    }
}

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// Anthropic's error body.
pub fn error_body(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

/// Why a request cannot be translated, and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untranslatable {
    pub message: String,
    pub param: &'static str,
}

/// The chat system messages of a system prompt: one, unless some block carries a cache
/// breakpoint, which then needs a message per block to keep its place.
fn system_messages(system: Option<&SystemPrompt>, out: &mut Vec<Value>) {
    match system {
        None => {}
        Some(SystemPrompt::Text(text)) => out.push(json!({"role": "system", "content": text})),
        Some(SystemPrompt::Blocks(blocks)) if blocks.iter().any(|b| b.cache_control.is_some()) => {
            for block in blocks {
                let part = with_cache_control(
                    json!({"type": "text", "text": block.text}),
                    block.cache_control.as_ref(),
                );
                out.push(json!({"role": "system", "content": [part]}));
            }
        }
        Some(SystemPrompt::Blocks(blocks)) => {
            let text: Vec<&str> = blocks.iter().map(|b| b.text.as_str()).collect();
            out.push(json!({"role": "system", "content": text.join("\n\n")}));
        }
    }
}

/// `value` (an object) with `cache_control` set, when there is one.
fn with_cache_control(mut value: Value, cache_control: Option<&Value>) -> Value {
    if let (Some(cache_control), Some(object)) = (cache_control, value.as_object_mut()) {
        object.insert("cache_control".to_owned(), cache_control.clone());
    }
    value
}

fn image_part(source: &ImageSource) -> Value {
    let url = match source {
        ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        ImageSource::Url { url } => url.clone(),
    };
    json!({"type": "image_url", "image_url": {"url": url}})
}

/// A `document` block as a chat content part of its own type, its fields kept for the
/// providers that take it (the others refuse it).
fn document_part(fields: &JsonObject) -> Value {
    let mut part = fields.clone();
    part.insert("type".to_owned(), json!("document"));
    Value::Object(part)
}

/// A tool result's content: text, or text and image parts when it holds images.
fn tool_result_content(
    content: Option<&ToolResultContent>,
    is_error: bool,
) -> Result<Value, Untranslatable> {
    // Chat tool messages have no error flag: the model reads it in the text.
    let error_prefix = |text: &str| {
        if is_error {
            format!("Error: {text}")
        } else {
            text.to_owned()
        }
    };
    let blocks = match content {
        None => return Ok(json!(error_prefix(""))),
        Some(ToolResultContent::Text(text)) => return Ok(json!(error_prefix(text))),
        Some(ToolResultContent::Blocks(blocks)) => blocks,
    };
    let mut text = Vec::with_capacity(blocks.len());
    let mut images = Vec::new();
    for block in blocks {
        match block {
            ContentBlockParam::Text { text: part, .. } => text.push(part.as_str()),
            ContentBlockParam::Image { source, .. } => images.push(image_part(source)),
            _ => {
                return Err(Untranslatable {
                    message: "A `tool_result` may hold only text and image blocks.".to_owned(),
                    param: "messages",
                });
            }
        }
    }
    let text = error_prefix(&text.join("\n"));
    if images.is_empty() {
        return Ok(json!(text));
    }
    let mut parts = Vec::with_capacity(images.len() + 1);
    if !text.is_empty() {
        parts.push(json!({"type": "text", "text": text}));
    }
    parts.extend(images);
    Ok(Value::Array(parts))
}

/// The chat messages of one Anthropic message: tool results become `tool` messages (first, as
/// they answer the previous assistant turn), the rest one user or assistant message. Blocks
/// chat has no type for (thinking, documents) become content parts of their own types, and
/// `cache_control` stays on the part or tool message it marks.
fn chat_messages(message: &InputMessage, out: &mut Vec<Value>) -> Result<(), Untranslatable> {
    let role = match message.role {
        MessageRole::User => "user",
        MessageRole::Assistant => "assistant",
    };
    let blocks = match &message.content {
        MessageContent::Text(text) => {
            out.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        MessageContent::Blocks(blocks) => blocks,
    };
    let mut parts = Vec::new();
    let mut tool_calls = Vec::new();
    // Whether the parts hold more than text: an assistant's content then stays parts.
    let mut beyond_text = false;
    for block in blocks {
        match block {
            ContentBlockParam::Text {
                text,
                cache_control,
            } => {
                beyond_text |= cache_control.is_some();
                parts.push(with_cache_control(
                    json!({"type": "text", "text": text}),
                    cache_control.as_ref(),
                ));
            }
            ContentBlockParam::Image {
                source,
                cache_control,
            } => parts.push(with_cache_control(
                image_part(source),
                cache_control.as_ref(),
            )),
            ContentBlockParam::Document(fields) => {
                beyond_text = true;
                parts.push(document_part(fields));
            }
            ContentBlockParam::Thinking {
                thinking,
                signature,
            } => {
                beyond_text = true;
                parts.push(
                    json!({"type": "thinking", "thinking": thinking, "signature": signature}),
                );
            }
            ContentBlockParam::RedactedThinking { data } => {
                beyond_text = true;
                parts.push(json!({"type": "redacted_thinking", "data": data}));
            }
            ContentBlockParam::ToolUse { id, name, input } => tool_calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": input.to_string()},
            })),
            ContentBlockParam::ToolResult {
                tool_use_id,
                content,
                is_error,
                cache_control,
            } => {
                let content = tool_result_content(content.as_ref(), *is_error == Some(true))?;
                out.push(with_cache_control(
                    json!({"role": "tool", "tool_call_id": tool_use_id, "content": content}),
                    cache_control.as_ref(),
                ));
            }
        }
    }
    if parts.is_empty() && tool_calls.is_empty() {
        return Ok(());
    }
    let mut chat = JsonObject::new();
    chat.insert("role".to_owned(), json!(role));
    if role == "assistant" && !beyond_text {
        // Plain chat assistant messages carry text, not parts.
        let text: Vec<&str> = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        let content = (!text.is_empty()).then(|| text.concat());
        chat.insert("content".to_owned(), json!(content));
    } else {
        chat.insert("content".to_owned(), Value::Array(parts));
    }
    if !tool_calls.is_empty() {
        chat.insert("tool_calls".to_owned(), Value::Array(tool_calls));
    }
    out.push(Value::Object(chat));
    Ok(())
}

fn chat_tools(tools: &[ToolDefinition]) -> Value {
    tools
        .iter()
        .map(|tool| {
            let mut function = json!({"name": tool.name, "parameters": tool.input_schema});
            if let (Some(description), Some(object)) = (&tool.description, function.as_object_mut())
            {
                object.insert("description".to_owned(), json!(description));
            }
            with_cache_control(
                json!({"type": "function", "function": function}),
                tool.cache_control.as_ref(),
            )
        })
        .collect()
}

/// The OpenAI `tool_choice` and `parallel_tool_calls` of an Anthropic `tool_choice`.
fn chat_tool_choice(choice: &ToolChoiceParam) -> (Value, Option<bool>) {
    let (choice, disable_parallel) = match choice {
        ToolChoiceParam::Auto {
            disable_parallel_tool_use,
        } => (json!("auto"), *disable_parallel_tool_use),
        ToolChoiceParam::Any {
            disable_parallel_tool_use,
        } => (json!("required"), *disable_parallel_tool_use),
        ToolChoiceParam::Tool {
            name,
            disable_parallel_tool_use,
        } => (
            json!({"type": "function", "function": {"name": name}}),
            *disable_parallel_tool_use,
        ),
        ToolChoiceParam::None => (json!("none"), None),
    };
    (choice, disable_parallel.filter(|d| *d).map(|_| false))
}

fn chat_conversation(
    system: Option<&SystemPrompt>,
    messages: &[InputMessage],
) -> Result<Vec<Value>, Untranslatable> {
    let mut chat = Vec::with_capacity(messages.len() + 1);
    system_messages(system, &mut chat);
    for message in messages {
        chat_messages(message, &mut chat)?;
    }
    Ok(chat)
}

/// The client's `anthropic-version` and `anthropic-beta` headers.
#[derive(Debug, Clone, Default)]
pub struct ClientHeaders {
    pub version: Option<String>,
    pub beta: Option<String>,
}

impl MessagesRequest {
    /// The OpenAI chat request (as JSON) the pipeline answers for this request. A stream always
    /// asks for usage: `message_delta` reports it. What chat completions has no field for goes
    /// in `anthropic` (always present, so OpenAI-kind providers know to strip the messages'
    /// Anthropic-only parts).
    pub fn to_chat_request(&self, headers: &ClientHeaders) -> Result<Value, Untranslatable> {
        let mut chat = JsonObject::new();
        chat.insert("model".to_owned(), json!(self.model));
        chat.insert(
            "messages".to_owned(),
            Value::Array(chat_conversation(self.system.as_ref(), &self.messages)?),
        );
        chat.insert("max_tokens".to_owned(), json!(self.max_tokens));
        let optional = [
            ("temperature", self.temperature.map(|t| json!(t))),
            ("top_p", self.top_p.map(|p| json!(p))),
            ("stop", self.stop_sequences.as_ref().map(|s| json!(s))),
            (
                "user",
                self.metadata
                    .as_ref()
                    .and_then(|m| m.user_id.as_ref())
                    .map(|u| json!(u)),
            ),
            (
                "tools",
                self.tools
                    .as_deref()
                    .filter(|t| !t.is_empty())
                    .map(chat_tools),
            ),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                chat.insert(name.to_owned(), value);
            }
        }
        if let Some(choice) = &self.tool_choice {
            let (choice, parallel) = chat_tool_choice(choice);
            chat.insert("tool_choice".to_owned(), choice);
            if let Some(parallel) = parallel {
                chat.insert("parallel_tool_calls".to_owned(), json!(parallel));
            }
        }
        if self.stream == Some(true) {
            chat.insert("stream".to_owned(), json!(true));
            chat.insert("stream_options".to_owned(), json!({"include_usage": true}));
        }
        let extras = AnthropicExtras {
            thinking: self
                .thinking
                .as_ref()
                .and_then(|t| serde_json::to_value(t).ok()),
            top_k: self.top_k,
            version: headers.version.clone(),
            beta: headers.beta.clone(),
        };
        chat.insert(
            "anthropic".to_owned(),
            serde_json::to_value(extras).unwrap_or_else(|_| json!({})),
        );
        Ok(Value::Object(chat))
    }
}

impl CountTokensRequest {
    /// The chat request whose prompt estimate is the count.
    pub fn to_chat_request(&self) -> Result<Value, Untranslatable> {
        let mut chat = json!({
            "model": self.model,
            "messages": chat_conversation(self.system.as_ref(), &self.messages)?,
        });
        if let (Some(tools), Some(object)) = (self.tools.as_deref(), chat.as_object_mut())
            && !tools.is_empty()
        {
            object.insert("tools".to_owned(), chat_tools(tools));
        }
        Ok(chat)
    }
}

/// A tool call's arguments as a `tool_use` input: arguments that are not a JSON object (a model
/// may stream broken JSON) are kept as text under `_raw` rather than lost.
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(object)) => Value::Object(object),
        _ if arguments.trim().is_empty() => json!({}),
        _ => json!({"_raw": arguments}),
    }
}

/// The Message of a chat completion (its first choice: a Messages request has one).
pub fn message_from_completion(completion: &ChatCompletion) -> MessageResponse {
    let mut content = Vec::new();
    let choice = completion.choices.first();
    if let Some(message) = choice.map(|c| &c.message) {
        if let Some(Value::Array(thinking)) = message.extra.get(THINKING_BLOCKS) {
            content.extend(thinking.iter().cloned());
        }
        if let Some(text) = message.content.as_deref().filter(|t| !t.is_empty()) {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in message.tool_calls.iter().flatten() {
            content.push(json!({
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": tool_input(&call.function.arguments),
            }));
        }
    }
    let stop_sequence = choice
        .and_then(|c| c.extra.get(STOP_SEQUENCE))
        .and_then(Value::as_str);
    let finish_reason = choice.and_then(|c| c.finish_reason.as_deref());
    MessageResponse {
        id: message_id(&completion.id),
        kind: "message".to_owned(),
        role: "assistant".to_owned(),
        model: completion.model.clone(),
        content,
        stop_reason: Some(stop_reason(finish_reason, stop_sequence).to_owned()),
        stop_sequence: stop_sequence.map(str::to_owned),
        usage: completion.usage.map(MessageUsage::from).unwrap_or_default(),
    }
}

/// Anthropic's ids start with `msg_`; the completion's own id is kept after it.
fn message_id(completion_id: &str) -> String {
    if completion_id.starts_with("msg_") {
        completion_id.to_owned()
    } else {
        format!("msg_{completion_id}")
    }
}

/// One SSE event in Anthropic's framing: `event: NAME\ndata: JSON\n\n`.
pub fn sse_event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// Where the providers put what chat completions has no field for (see `providers::messages`):
/// a completion message's thinking blocks, a choice's or finish chunk's matched stop sequence, a
/// stream delta's reasoning text, thinking signature and redacted thinking, a first chunk's
/// prompt usage.
const THINKING_BLOCKS: &str = "thinking_blocks";
const STOP_SEQUENCE: &str = "stop_sequence";
const REASONING_CONTENT: &str = "reasoning_content";
const THINKING_SIGNATURE: &str = "thinking_signature";
const REDACTED_THINKING: &str = "redacted_thinking";
const PROMPT_USAGE: &str = "prompt_usage";

/// The content block a stream is writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    /// A thinking block; it ends with its signature.
    Thinking,
    Text,
    /// A tool call, by its index among the chat chunk's tool calls.
    Tool(u32),
}

/// Turns the pipeline's chat chunks into Anthropic's stream events, one chunk at a time:
/// `message_start` and a `ping` first, a `content_block_start` / deltas / `content_block_stop`
/// run per text or tool block, then `message_delta` (stop reason, usage) and `message_stop` at
/// the end.
#[derive(Debug, Default)]
pub struct EventWriter {
    started: bool,
    open: Option<OpenBlock>,
    /// Index of the next content block.
    blocks: u32,
    finish_reason: Option<String>,
    stop_sequence: Option<String>,
    usage: Option<Usage>,
    pub finished: bool,
}

impl EventWriter {
    fn start(&mut self, id: &str, model: &str, prompt: Option<Usage>, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        // The prompt's tokens when the upstream reported them at its start (Anthropic does),
        // else known only at the end, in `message_delta`.
        let usage = prompt.map(MessageUsage::from).unwrap_or_default();
        let message = json!({
            "id": message_id(id),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage,
        });
        out.push_str(&sse_event(
            "message_start",
            &json!({"type": "message_start", "message": message}),
        ));
        out.push_str(&sse_event("ping", &json!({"type": "ping"})));
    }

    fn close_block(&mut self, out: &mut String) {
        if self.open.take().is_some() {
            let index = self.blocks.saturating_sub(1);
            out.push_str(&sse_event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn open_block(&mut self, block: OpenBlock, content_block: Value, out: &mut String) -> u32 {
        self.close_block(out);
        let index = self.blocks;
        self.blocks += 1;
        self.open = Some(block);
        out.push_str(&sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": content_block}),
        ));
        index
    }

    fn delta(&self, delta: Value, out: &mut String) {
        let index = self.blocks.saturating_sub(1);
        out.push_str(&sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
    }

    /// The events of one chunk (of its first choice).
    pub fn chunk(&mut self, chunk: &ChatChunk) -> String {
        let mut out = String::new();
        if self.finished {
            return out;
        }
        let prompt = chunk
            .extra
            .get(PROMPT_USAGE)
            .and_then(|usage| serde_json::from_value(usage.clone()).ok());
        self.start(&chunk.id, &chunk.model, prompt, &mut out);
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        if let Some(stop) = chunk.extra.get(STOP_SEQUENCE).and_then(Value::as_str) {
            self.stop_sequence = Some(stop.to_owned());
        }
        let Some(choice) = chunk.choices.first() else {
            return out;
        };
        self.thinking(&choice.delta.extra, &mut out);
        if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
            if self.open != Some(OpenBlock::Text) {
                self.open_block(
                    OpenBlock::Text,
                    json!({"type": "text", "text": ""}),
                    &mut out,
                );
            }
            self.delta(json!({"type": "text_delta", "text": text}), &mut out);
        }
        for call in choice.delta.tool_calls.iter().flatten() {
            let function = call.function.as_ref();
            if self.open != Some(OpenBlock::Tool(call.index)) {
                let block = json!({
                    "type": "tool_use",
                    "id": call.id.as_deref().unwrap_or_default(),
                    "name": function.and_then(|f| f.name.as_deref()).unwrap_or_default(),
                    "input": {},
                });
                self.open_block(OpenBlock::Tool(call.index), block, &mut out);
            }
            if let Some(arguments) = function
                .and_then(|f| f.arguments.as_deref())
                .filter(|a| !a.is_empty())
            {
                self.delta(
                    json!({"type": "input_json_delta", "partial_json": arguments}),
                    &mut out,
                );
            }
        }
        if let Some(reason) = &choice.finish_reason {
            self.finish_reason = Some(reason.clone());
        }
        out
    }

    /// The thinking events of a delta: reasoning text opens (or continues) a thinking block, its
    /// signature ends it, a redacted thinking block is whole at once.
    fn thinking(&mut self, delta: &JsonObject, out: &mut String) {
        let text = |key: &str| delta.get(key).and_then(Value::as_str);
        if let Some(thinking) = text(REASONING_CONTENT).filter(|t| !t.is_empty()) {
            if self.open != Some(OpenBlock::Thinking) {
                self.open_block(
                    OpenBlock::Thinking,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    out,
                );
            }
            self.delta(json!({"type": "thinking_delta", "thinking": thinking}), out);
        }
        if let Some(signature) = text(THINKING_SIGNATURE) {
            if self.open != Some(OpenBlock::Thinking) {
                self.open_block(
                    OpenBlock::Thinking,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    out,
                );
            }
            self.delta(
                json!({"type": "signature_delta", "signature": signature}),
                out,
            );
            self.close_block(out);
        }
        if let Some(data) = text(REDACTED_THINKING) {
            self.open_block(
                OpenBlock::Thinking,
                json!({"type": "redacted_thinking", "data": data}),
                out,
            );
            self.close_block(out);
        }
    }

    /// The closing events, once the pipeline's stream is complete.
    pub fn end(&mut self) -> String {
        let mut out = String::new();
        if self.finished {
            return out;
        }
        self.start("", "", None, &mut out);
        self.close_block(&mut out);
        self.finished = true;
        let usage = self.usage.map(MessageUsage::from).unwrap_or_default();
        let stop_sequence = self.stop_sequence.as_deref();
        out.push_str(&sse_event(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {
                    "stop_reason": stop_reason(self.finish_reason.as_deref(), stop_sequence),
                    "stop_sequence": stop_sequence,
                },
                "usage": usage,
            }),
        ));
        out.push_str(&sse_event("message_stop", &json!({"type": "message_stop"})));
        out
    }

    /// The `error` event that ends a broken stream.
    pub fn error(&mut self, status: u16, message: &str) -> String {
        self.finished = true;
        sse_event("error", &error_body(status, message))
    }
}

/// The model list in Anthropic's shape, as a whole (one page): `created_at` is when the gateway
/// started, as for the OpenAI list.
pub fn model_list<'a>(names: impl Iterator<Item = &'a str>, created_at_secs: u64) -> Value {
    let created_at =
        aws_smithy_types::DateTime::from_secs(i64::try_from(created_at_secs).unwrap_or(i64::MAX))
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .unwrap_or_default();
    let data: Vec<Value> = names
        .map(|name| {
            json!({"type": "model", "id": name, "display_name": name, "created_at": created_at})
        })
        .collect();
    let first_id = data.first().and_then(|m| m.get("id")).cloned();
    let last_id = data.last().and_then(|m| m.get("id")).cloned();
    json!({"data": data, "has_more": false, "first_id": first_id, "last_id": last_id})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ChatRequest;

    fn request(body: Value) -> MessagesRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_full_request_becomes_the_equivalent_chat_request() {
        let chat = request(json!({
            "model": "m",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "Be kind."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"zoom": 2}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a cat"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": true},
                    {"type": "text", "text": "So?"}
                ]}
            ],
            "stop_sequences": ["END"],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 5,
            "tools": [{"name": "look", "description": "Looks closer", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "metadata": {"user_id": "u-1"},
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "stream": true
        }))
        .to_chat_request(&ClientHeaders {
            version: Some("2023-06-01".to_owned()),
            beta: Some("b-1".to_owned()),
        })
        .unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "m",
                "max_tokens": 100,
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]},
                    {"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is in this image?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "thinking", "thinking": "hm", "signature": "s"},
                        {"type": "text", "text": "Let me look."}
                    ], "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "look", "arguments": "{\"zoom\":2}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "a cat"},
                    {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"},
                    {"role": "user", "content": [{"type": "text", "text": "So?"}]}
                ],
                "stop": ["END"],
                "temperature": 0.5,
                "top_p": 0.9,
                "user": "u-1",
                "tools": [{"type": "function", "function": {"name": "look", "description": "Looks closer", "parameters": {"type": "object"}}}],
                "tool_choice": "required",
                "parallel_tool_calls": false,
                "stream": true,
                "stream_options": {"include_usage": true},
                "anthropic": {
                    "thinking": {"type": "enabled", "budget_tokens": 2048},
                    "top_k": 5,
                    "version": "2023-06-01",
                    "beta": "b-1"
                }
            })
        );
        let parsed: ChatRequest = serde_json::from_value(chat).unwrap();
        parsed.validate().unwrap();
    }

    #[test]
    fn a_named_tool_choice_and_string_content_translate() {
        let chat = request(json!({
            "model": "m", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
            "tool_choice": {"type": "tool", "name": "look"}
        }))
        .to_chat_request(&ClientHeaders::default())
        .unwrap();
        assert_eq!(chat["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "look"}})
        );
        assert!(chat.get("parallel_tool_calls").is_none());
        assert!(chat.get("stream").is_none());
        assert_eq!(chat["anthropic"], json!({}), "always present, even empty");
    }

    #[test]
    fn documents_cache_breakpoints_and_image_tool_results_become_parts() {
        let chat = request(json!({
            "model": "m", "max_tokens": 5,
            "tools": [{"name": "look", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}, "title": "Report"},
                    {"type": "text", "text": "Summarise.", "cache_control": {"type": "ephemeral"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "redacted_thinking", "data": "xyz"},
                    {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "cache_control": {"type": "ephemeral"}, "content": [
                        {"type": "text", "text": "a chart"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}}
                    ]}
                ]}
            ]
        }))
        .to_chat_request(&ClientHeaders::default())
        .unwrap();
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}, "title": "Report"},
                    {"type": "text", "text": "Summarise.", "cache_control": {"type": "ephemeral"}}
                ]},
                {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "xyz"}], "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "look", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "cache_control": {"type": "ephemeral"}, "content": [
                    {"type": "text", "text": "a chart"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
                ]}
            ])
        );
        assert_eq!(
            chat["tools"][0]["cache_control"],
            json!({"type": "ephemeral"})
        );
        let parsed: ChatRequest = serde_json::from_value(chat).unwrap();
        parsed.validate().unwrap();
    }

    #[test]
    fn max_tokens_is_required_and_server_tools_are_refused() {
        let missing = serde_json::from_value::<MessagesRequest>(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert!(missing.unwrap_err().to_string().contains("max_tokens"));
        let server_tool = serde_json::from_value::<MessagesRequest>(json!({
            "model": "m", "max_tokens": 5, "messages": [],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]
        }));
        assert!(server_tool.is_err());
    }

    #[test]
    fn a_completion_becomes_a_message_with_text_and_tool_use_blocks() {
        let completion: ChatCompletion = serde_json::from_value(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Looking.",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"zoom\":2}"}}]
            }}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
        }))
        .unwrap();
        let message = serde_json::to_value(message_from_completion(&completion)).unwrap();
        assert_eq!(
            message,
            json!({
                "id": "msg_chatcmpl-1", "type": "message", "role": "assistant", "model": "m",
                "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "call_1", "name": "look", "input": {"zoom": 2}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 7}
            })
        );
    }

    #[test]
    fn the_model_list_takes_anthropic_shape() {
        assert_eq!(
            model_list(["a", "b"].into_iter(), 0),
            json!({"data": [
                {"type": "model", "id": "a", "display_name": "a", "created_at": "1970-01-01T00:00:00Z"},
                {"type": "model", "id": "b", "display_name": "b", "created_at": "1970-01-01T00:00:00Z"}
            ], "has_more": false, "first_id": "a", "last_id": "b"})
        );
    }

    #[test]
    fn finish_reasons_map_to_stop_reasons() {
        assert_eq!(stop_reason(Some("stop"), None), "end_turn");
        assert_eq!(stop_reason(Some("stop"), Some("END")), "stop_sequence");
        assert_eq!(stop_reason(Some("length"), None), "max_tokens");
        assert_eq!(stop_reason(Some("tool_calls"), None), "tool_use");
        assert_eq!(stop_reason(Some("content_filter"), None), "refusal");
        assert_eq!(stop_reason(None, None), "end_turn");
    }

    #[test]
    fn errors_take_anthropic_types_by_status() {
        assert_eq!(
            error_body(401, "no key"),
            json!({"type": "error", "error": {"type": "authentication_error", "message": "no key"}})
        );
        assert_eq!(error_type(400), "invalid_request_error");
        assert_eq!(error_type(422), "invalid_request_error");
        assert_eq!(error_type(403), "permission_error");
        assert_eq!(error_type(404), "not_found_error");
        assert_eq!(error_type(429), "rate_limit_error");
        assert_eq!(error_type(503), "overloaded_error");
        assert_eq!(error_type(500), "api_error");
        assert_eq!(error_type(502), "api_error");
    }

    fn chunk(value: Value) -> ChatChunk {
        serde_json::from_value(value).unwrap()
    }

    /// The events of a text-then-tool stream, as (name, data) pairs.
    fn events(text: &str) -> Vec<(String, Value)> {
        text.split_terminator("\n\n")
            .map(|frame| {
                let (event, data) = frame.split_once('\n').unwrap();
                (
                    event.strip_prefix("event: ").unwrap().to_owned(),
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_chunk_stream_becomes_the_full_event_sequence() {
        let mut writer = EventWriter::default();
        let mut out = String::new();
        for c in [
            json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
            json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
            json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "look", "arguments": ""}}]}}]}),
            json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"zo"}}]}}]}),
            json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "om\":2}"}}]}}]}),
            json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"id": "c1", "model": "m", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}),
        ] {
            out.push_str(&writer.chunk(&chunk(c)));
        }
        out.push_str(&writer.end());
        let events = events(&out);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        for (name, data) in &events {
            assert_eq!(data["type"], json!(name), "each event's data names it");
        }
        assert_eq!(events[0].1["message"]["id"], "msg_c1");
        assert_eq!(
            events[2].1,
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(
            events[3].1["delta"],
            json!({"type": "text_delta", "text": "Hel"})
        );
        assert_eq!(
            events[6].1,
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "call_1", "name": "look", "input": {}}})
        );
        assert_eq!(
            events[8].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "om\":2}"})
        );
        assert_eq!(events[9].1["index"], 1);
        assert_eq!(
            events[10].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"input_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 4}})
        );
        assert_eq!(writer.end(), "", "a finished stream writes nothing more");
    }

    #[test]
    fn thinking_prompt_usage_and_the_stop_sequence_become_their_events() {
        let mut writer = EventWriter::default();
        let mut out = String::new();
        for c in [
            json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}}],
                "prompt_usage": {"prompt_tokens": 30, "completion_tokens": 0, "total_tokens": 30,
                    "prompt_tokens_details": {"cached_tokens": 20, "cache_creation_tokens": 4}}}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"redacted_thinking": "opaque"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"reasoning_content": "Hm"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"thinking_signature": "sig"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "stop_sequence": "END"}),
        ] {
            out.push_str(&writer.chunk(&chunk(c)));
        }
        out.push_str(&writer.end());
        let events = events(&out);
        assert_eq!(
            events[0].1["message"]["usage"],
            json!({"input_tokens": 6, "cache_creation_input_tokens": 4, "cache_read_input_tokens": 20, "output_tokens": 0})
        );
        let blocks: Vec<(&str, &Value)> = events
            .iter()
            .filter(|(name, _)| name.starts_with("content_block_"))
            .map(|(name, data)| {
                let detail = match name.as_str() {
                    "content_block_start" => &data["content_block"],
                    "content_block_delta" => &data["delta"],
                    _ => &data["index"],
                };
                (name.as_str(), detail)
            })
            .collect();
        assert_eq!(
            blocks,
            [
                (
                    "content_block_start",
                    &json!({"type": "redacted_thinking", "data": "opaque"})
                ),
                ("content_block_stop", &json!(0)),
                (
                    "content_block_start",
                    &json!({"type": "thinking", "thinking": "", "signature": ""})
                ),
                (
                    "content_block_delta",
                    &json!({"type": "thinking_delta", "thinking": "Hm"})
                ),
                (
                    "content_block_delta",
                    &json!({"type": "signature_delta", "signature": "sig"})
                ),
                ("content_block_stop", &json!(1)),
                ("content_block_start", &json!({"type": "text", "text": ""})),
                (
                    "content_block_delta",
                    &json!({"type": "text_delta", "text": "Hi"})
                ),
                ("content_block_stop", &json!(2)),
            ]
        );
        let (_, delta) = &events[events.len() - 2];
        assert_eq!(
            delta["delta"],
            json!({"stop_reason": "stop_sequence", "stop_sequence": "END"})
        );
    }

    #[test]
    fn a_broken_stream_ends_with_an_error_event() {
        let mut writer = EventWriter::default();
        let error = writer.error(429, "slow down");
        assert_eq!(
            events(&error),
            [(
                "error".to_owned(),
                json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
            )]
        );
        assert!(writer.finished);
    }
}
