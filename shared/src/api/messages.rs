//! Anthropic's Messages API as a client speaks it to the gateway (`POST /v1/messages`): the wire
//! types, and the translation onto the one chat pipeline and back. A request becomes an OpenAI
//! chat request (what every provider kind already takes); the pipeline's answer, a completion or
//! a stream of chunks, becomes a Message or Anthropic's stream events. The other direction (an
//! OpenAI-shaped request sent to an Anthropic upstream) is `providers::anthropic`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ChatChunk, ChatCompletion, JsonObject, Usage};

/// The Messages request fields the gateway reads; anything else (`cache_control` on blocks,
/// `service_tier`, ...) is accepted and not forwarded.
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
    /// Accepted; no provider kind behind the pipeline takes it, so it is not forwarded.
    #[serde(default)]
    pub top_k: Option<u32>,
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
    },
    Image {
        source: ImageSource,
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
    },
    /// Earlier turns' reasoning, which clients send back: no provider kind behind the pipeline
    /// takes it in a chat request, so it is dropped from the history.
    Thinking {},
    RedactedThinking {},
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
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl From<Usage> for MessageUsage {
    /// The pipeline's prompt tokens include cache reads and writes; it keeps no split of them.
    fn from(usage: Usage) -> Self {
        Self {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
        }
    }
}

/// A stop reason in Anthropic's terms, from OpenAI's finish reason. OpenAI does not say which
/// stop sequence matched, so a stop is always `end_turn`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
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

fn system_text(system: Option<&SystemPrompt>) -> Option<String> {
    match system? {
        SystemPrompt::Text(text) => Some(text.clone()),
        SystemPrompt::Blocks(blocks) => Some(
            blocks
                .iter()
                .map(|b| b.text.as_str())
                .collect::<Vec<_>>()
                .join("\n\n"),
        ),
    }
}

fn image_part(source: &ImageSource) -> Value {
    let url = match source {
        ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        ImageSource::Url { url } => url.clone(),
    };
    json!({"type": "image_url", "image_url": {"url": url}})
}

fn tool_result_text(content: Option<&ToolResultContent>) -> Result<String, Untranslatable> {
    match content {
        None => Ok(String::new()),
        Some(ToolResultContent::Text(text)) => Ok(text.clone()),
        Some(ToolResultContent::Blocks(blocks)) => {
            let mut text = Vec::with_capacity(blocks.len());
            for block in blocks {
                match block {
                    ContentBlockParam::Text { text: part } => text.push(part.as_str()),
                    _ => {
                        return Err(Untranslatable {
                            message: "A `tool_result` may hold only text blocks here: the chat \
                                      pipeline sends tool results as text."
                                .to_owned(),
                            param: "messages",
                        });
                    }
                }
            }
            Ok(text.join("\n"))
        }
    }
}

/// The chat messages of one Anthropic message: tool results become `tool` messages (first, as
/// they answer the previous assistant turn), the rest one user or assistant message.
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
    for block in blocks {
        match block {
            ContentBlockParam::Text { text } => parts.push(json!({"type": "text", "text": text})),
            ContentBlockParam::Image { source } => parts.push(image_part(source)),
            ContentBlockParam::ToolUse { id, name, input } => tool_calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": input.to_string()},
            })),
            ContentBlockParam::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                let text = tool_result_text(content.as_ref())?;
                // Chat tool messages have no error flag: the model reads it in the text.
                let text = if *is_error == Some(true) {
                    format!("Error: {text}")
                } else {
                    text
                };
                out.push(json!({"role": "tool", "tool_call_id": tool_use_id, "content": text}));
            }
            ContentBlockParam::Thinking {} | ContentBlockParam::RedactedThinking {} => {}
        }
    }
    if parts.is_empty() && tool_calls.is_empty() {
        return Ok(());
    }
    let mut chat = JsonObject::new();
    chat.insert("role".to_owned(), json!(role));
    if role == "assistant" {
        // Chat assistant messages carry text, not parts.
        let text: Vec<&str> = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        let content = (!text.is_empty()).then(|| text.concat());
        chat.insert("content".to_owned(), json!(content));
        if !tool_calls.is_empty() {
            chat.insert("tool_calls".to_owned(), Value::Array(tool_calls));
        }
    } else {
        chat.insert("content".to_owned(), Value::Array(parts));
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
            json!({"type": "function", "function": function})
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
    if let Some(system) = system_text(system) {
        chat.push(json!({"role": "system", "content": system}));
    }
    for message in messages {
        chat_messages(message, &mut chat)?;
    }
    Ok(chat)
}

impl MessagesRequest {
    /// The OpenAI chat request (as JSON) the pipeline answers for this request. A stream always
    /// asks for usage: `message_delta` reports it.
    pub fn to_chat_request(&self) -> Result<Value, Untranslatable> {
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
    MessageResponse {
        id: message_id(&completion.id),
        kind: "message".to_owned(),
        role: "assistant".to_owned(),
        model: completion.model.clone(),
        content,
        stop_reason: Some(stop_reason(choice.and_then(|c| c.finish_reason.as_deref())).to_owned()),
        stop_sequence: None,
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

/// The content block a stream is writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
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
    usage: Option<Usage>,
    pub finished: bool,
}

impl EventWriter {
    fn start(&mut self, id: &str, model: &str, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": message_id(id),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            // Known only at the end, in `message_delta`.
            "usage": {"input_tokens": 0, "output_tokens": 0},
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
        self.start(&chunk.id, &chunk.model, &mut out);
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        let Some(choice) = chunk.choices.first() else {
            return out;
        };
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

    /// The closing events, once the pipeline's stream is complete.
    pub fn end(&mut self) -> String {
        let mut out = String::new();
        if self.finished {
            return out;
        }
        self.start("", "", &mut out);
        self.close_block(&mut out);
        self.finished = true;
        let usage = self.usage.map(MessageUsage::from).unwrap_or_default();
        out.push_str(&sse_event(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(self.finish_reason.as_deref()), "stop_sequence": null},
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
            "stream": true
        }))
        .to_chat_request()
        .unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "m",
                "max_tokens": 100,
                "messages": [
                    {"role": "system", "content": "Be brief.\n\nBe kind."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is in this image?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
                    ]},
                    {"role": "assistant", "content": "Let me look.", "tool_calls": [
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
                "stream_options": {"include_usage": true}
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
        .to_chat_request()
        .unwrap();
        assert_eq!(chat["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "look"}})
        );
        assert!(chat.get("parallel_tool_calls").is_none());
        assert!(chat.get("stream").is_none());
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
                "usage": {"input_tokens": 12, "output_tokens": 7}
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
        assert_eq!(stop_reason(Some("stop")), "end_turn");
        assert_eq!(stop_reason(Some("length")), "max_tokens");
        assert_eq!(stop_reason(Some("tool_calls")), "tool_use");
        assert_eq!(stop_reason(Some("content_filter")), "refusal");
        assert_eq!(stop_reason(None), "end_turn");
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
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"input_tokens": 9, "output_tokens": 4}})
        );
        assert_eq!(writer.end(), "", "a finished stream writes nothing more");
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
