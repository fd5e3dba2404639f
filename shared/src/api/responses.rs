//! OpenAI's Responses API as a client speaks it to the gateway (`POST /v1/responses`): the wire
//! types, and the translation onto the one chat pipeline and back. A request (with the earlier
//! turns of its `previous_response_id` chain, which the HTTP layer reads from the store) becomes
//! a chat request; the pipeline's answer, a completion or a stream of chunks, becomes a Response
//! object or the Responses event sequence.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ChatChunk, ChatCompletion, JsonObject, Usage};

/// The request fields the gateway reads. Other fields are kept in `extra`: those that would
/// change the answer and cannot be served are refused by name (`refused_field`), the rest
/// (`include`, `reasoning`, `prompt_cache_key`, `truncation`, ...) are accepted and ignored.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ResponsesRequest {
    pub model: String,
    /// A string (one user message) or a list of input items.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Option<Input>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub text: Option<Value>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<JsonObject>,
    #[serde(default)]
    pub user: Option<String>,
    /// Whether the response is kept for `GET` and `previous_response_id` (default true).
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stream_options: Option<Value>,
    #[schema(ignore)]
    #[serde(flatten)]
    pub extra: JsonObject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

/// Fields that would change what the model is asked or how, which no provider behind the
/// pipeline serves: refused rather than silently dropped.
const REFUSED_FIELDS: [&str; 5] = [
    "conversation",
    "prompt",
    "max_tool_calls",
    "top_logprobs",
    "context_management",
];

/// Why a request cannot be translated, and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untranslatable {
    pub message: String,
    pub param: String,
}

fn refuse(param: impl Into<String>, message: impl Into<String>) -> Untranslatable {
    Untranslatable {
        message: message.into(),
        param: param.into(),
    }
}

impl ResponsesRequest {
    pub fn wants_store(&self) -> bool {
        self.store.unwrap_or(true)
    }

    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// The first field the gateway cannot serve, if any.
    pub fn refused_field(&self) -> Option<Untranslatable> {
        if let Some(name) = REFUSED_FIELDS
            .iter()
            .find(|name| self.extra.get(**name).is_some_and(|v| !v.is_null()))
        {
            return Some(refuse(
                *name,
                format!("`{name}` is not supported by this gateway's Responses API."),
            ));
        }
        if self.extra.get("background") == Some(&Value::Bool(true)) {
            return Some(refuse(
                "background",
                "Background responses are not supported by this gateway; send the request \
                 without `background` (or stream it).",
            ));
        }
        None
    }

    /// This turn's input as a list of items (a string is one user message).
    pub fn input_items(&self) -> Vec<Value> {
        match &self.input {
            None => Vec::new(),
            Some(Input::Text(text)) => {
                vec![json!({"type": "message", "role": "user", "content": text})]
            }
            Some(Input::Items(items)) => items.clone(),
        }
    }

    /// The OpenAI chat request (as JSON) the pipeline answers: `history` holds the items of
    /// earlier turns (inputs and outputs, oldest first), then this turn's input follows. A
    /// stream always asks for usage: `response.completed` reports it.
    pub fn to_chat_request(&self, history: &[Value]) -> Result<Value, Untranslatable> {
        if let Some(refused) = self.refused_field() {
            return Err(refused);
        }
        let mut messages = Vec::new();
        if let Some(instructions) = self.instructions.as_deref().filter(|i| !i.is_empty()) {
            messages.push(json!({"role": "system", "content": instructions}));
        }
        for item in history {
            chat_message_of_item(item, "previous_response_id", &mut messages)?;
        }
        for (index, item) in self.input_items().iter().enumerate() {
            chat_message_of_item(item, &format!("input[{index}]"), &mut messages)?;
        }
        if messages.is_empty() {
            return Err(refuse(
                "input",
                "`input` must hold at least one item (or `previous_response_id` a conversation).",
            ));
        }
        let mut chat = JsonObject::new();
        chat.insert("model".to_owned(), json!(self.model));
        chat.insert("messages".to_owned(), Value::Array(messages));
        if let Some(tools) = self.tools.as_deref().filter(|t| !t.is_empty()) {
            chat.insert("tools".to_owned(), chat_tools(tools)?);
        }
        if let Some(choice) = &self.tool_choice {
            chat.insert("tool_choice".to_owned(), chat_tool_choice(choice)?);
        }
        if let Some(format) = self.text.as_ref().and_then(|t| t.get("format"))
            && let Some(format) = response_format(format)?
        {
            chat.insert("response_format".to_owned(), format);
        }
        let optional = [
            ("max_tokens", self.max_output_tokens.map(|m| json!(m))),
            ("temperature", self.temperature.map(|t| json!(t))),
            ("top_p", self.top_p.map(|p| json!(p))),
            (
                "parallel_tool_calls",
                self.parallel_tool_calls.map(|p| json!(p)),
            ),
            ("user", self.user.as_ref().map(|u| json!(u))),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                chat.insert(name.to_owned(), value);
            }
        }
        if self.is_stream() {
            chat.insert("stream".to_owned(), json!(true));
            chat.insert("stream_options".to_owned(), json!({"include_usage": true}));
        }
        Ok(Value::Object(chat))
    }
}

fn field<'a>(item: &'a Value, name: &str) -> Option<&'a Value> {
    item.get(name).filter(|v| !v.is_null())
}

fn required_str<'a>(item: &'a Value, name: &str, at: &str) -> Result<&'a str, Untranslatable> {
    field(item, name).and_then(Value::as_str).ok_or_else(|| {
        refuse(
            format!("{at}.{name}"),
            format!("`{at}.{name}` must be a string."),
        )
    })
}

/// The chat message(s) one input item stands for, appended to `out`. Function calls join the
/// assistant message before them, as chat keeps one turn's calls in one message.
fn chat_message_of_item(
    item: &Value,
    at: &str,
    out: &mut Vec<Value>,
) -> Result<(), Untranslatable> {
    let kind = match field(item, "type") {
        None => "message",
        Some(kind) => kind.as_str().ok_or_else(|| {
            refuse(
                format!("{at}.type"),
                format!("`{at}.type` must be a string."),
            )
        })?,
    };
    match kind {
        "message" => out.push(chat_message(item, at)?),
        "function_call" => {
            let call = json!({
                "id": required_str(item, "call_id", at)?,
                "type": "function",
                "function": {
                    "name": required_str(item, "name", at)?,
                    "arguments": field(item, "arguments").and_then(Value::as_str).unwrap_or_default(),
                },
            });
            let joins_last = out
                .last()
                .is_some_and(|m| m.get("role").and_then(Value::as_str) == Some("assistant"));
            match out.last_mut().and_then(Value::as_object_mut) {
                Some(last) if joins_last => {
                    let calls = last
                        .entry("tool_calls")
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Some(calls) = calls.as_array_mut() {
                        calls.push(call);
                    }
                }
                _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let output = match field(item, "output") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => text_of_parts(parts, &format!("{at}.output"))?,
                _ => {
                    return Err(refuse(
                        format!("{at}.output"),
                        format!("`{at}.output` must be a string or a list of `input_text` parts."),
                    ));
                }
            };
            out.push(json!({
                "role": "tool",
                "tool_call_id": required_str(item, "call_id", at)?,
                "content": output,
            }));
        }
        // Earlier turns' reasoning, which clients send back: no provider kind behind the
        // pipeline takes it in a chat request.
        "reasoning" => {}
        other => {
            return Err(refuse(
                format!("{at}.type"),
                format!(
                    "Input items of type `{other}` are not supported by this gateway; send \
                     messages, `function_call` and `function_call_output` items."
                ),
            ));
        }
    }
    Ok(())
}

/// The text of `input_text` / `output_text` parts, joined.
fn text_of_parts(parts: &[Value], at: &str) -> Result<String, Untranslatable> {
    let mut text = Vec::with_capacity(parts.len());
    for (index, part) in parts.iter().enumerate() {
        let at = format!("{at}[{index}]");
        match field(part, "type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => {
                text.push(required_str(part, "text", &at)?);
            }
            Some("refusal") => text.push(required_str(part, "refusal", &at)?),
            _ => {
                return Err(refuse(
                    format!("{at}.type"),
                    format!("`{at}` must be a text part here."),
                ));
            }
        }
    }
    Ok(text.concat())
}

fn chat_message(item: &Value, at: &str) -> Result<Value, Untranslatable> {
    let role = required_str(item, "role", at)?;
    if !matches!(role, "user" | "system" | "developer" | "assistant") {
        return Err(refuse(
            format!("{at}.role"),
            format!("`{at}.role` must be `user`, `system`, `developer` or `assistant`."),
        ));
    }
    let content_at = format!("{at}.content");
    let content = match field(item, "content") {
        Some(Value::String(text)) => json!(text),
        // Chat assistant and system messages carry text, not parts.
        Some(Value::Array(parts)) if role != "user" => json!(text_of_parts(parts, &content_at)?),
        Some(Value::Array(parts)) => Value::Array(
            parts
                .iter()
                .enumerate()
                .map(|(index, part)| user_part(part, &format!("{content_at}[{index}]")))
                .collect::<Result<_, _>>()?,
        ),
        _ => {
            return Err(refuse(
                content_at.clone(),
                format!("`{content_at}` must be a string or a list of content parts."),
            ));
        }
    };
    Ok(json!({"role": role, "content": content}))
}

fn user_part(part: &Value, at: &str) -> Result<Value, Untranslatable> {
    match field(part, "type").and_then(Value::as_str) {
        Some("input_text" | "output_text") => {
            Ok(json!({"type": "text", "text": required_str(part, "text", at)?}))
        }
        Some("input_image") => {
            if field(part, "file_id").is_some() {
                return Err(refuse(
                    format!("{at}.file_id"),
                    "Images by `file_id` are not supported by this gateway; send `image_url` \
                     (a URL or a data URL).",
                ));
            }
            let mut image = json!({"url": required_str(part, "image_url", at)?});
            if let (Some(detail), Some(object)) = (field(part, "detail"), image.as_object_mut()) {
                object.insert("detail".to_owned(), detail.clone());
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        Some(other) => Err(refuse(
            format!("{at}.type"),
            format!(
                "Content parts of type `{other}` are not supported by this gateway; send \
                 `input_text` and `input_image` parts."
            ),
        )),
        None => Err(refuse(
            format!("{at}.type"),
            format!("`{at}.type` is required."),
        )),
    }
}

/// Chat tools from Responses function tools (flat: `{type, name, parameters, ...}`).
fn chat_tools(tools: &[Value]) -> Result<Value, Untranslatable> {
    let mut chat = Vec::with_capacity(tools.len());
    for (index, tool) in tools.iter().enumerate() {
        let at = format!("tools[{index}]");
        match field(tool, "type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(refuse(
                    format!("{at}.type"),
                    format!(
                        "Tools of type `{other}` are not supported by this gateway: only \
                         `function` tools are, which the client runs."
                    ),
                ));
            }
            None => {
                return Err(refuse(
                    format!("{at}.type"),
                    format!("`{at}.type` is required."),
                ));
            }
        }
        let mut function = JsonObject::new();
        function.insert("name".to_owned(), json!(required_str(tool, "name", &at)?));
        for name in ["description", "parameters", "strict"] {
            if let Some(value) = field(tool, name) {
                function.insert(name.to_owned(), value.clone());
            }
        }
        chat.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(chat))
}

fn chat_tool_choice(choice: &Value) -> Result<Value, Untranslatable> {
    match choice {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(object) if object.get("type") == Some(&json!("function")) => {
            let name = required_str(choice, "name", "tool_choice")?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(refuse(
            "tool_choice",
            "`tool_choice` must be `auto`, `none`, `required` or a function \
             (`{\"type\": \"function\", \"name\": ...}`).",
        )),
    }
}

/// The chat `response_format` of a `text.format`; `None` for plain text.
fn response_format(format: &Value) -> Result<Option<Value>, Untranslatable> {
    match field(format, "type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = JsonObject::new();
            schema.insert(
                "name".to_owned(),
                json!(required_str(format, "name", "text.format")?),
            );
            let body = field(format, "schema")
                .ok_or_else(|| refuse("text.format.schema", "`text.format.schema` is required."))?;
            schema.insert("schema".to_owned(), body.clone());
            for name in ["description", "strict"] {
                if let Some(value) = field(format, name) {
                    schema.insert(name.to_owned(), value.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(refuse(
            "text.format.type",
            "`text.format.type` must be `text`, `json_object` or `json_schema`.",
        )),
    }
}

/// A new id with OpenAI's prefix for its kind (`resp`, `msg`, `fc`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", rand::random::<u128>())
}

/// The Responses `usage` of the pipeline's usage. The pipeline keeps no split of cached or
/// reasoning tokens, so those details are 0.
pub fn response_usage(usage: Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    })
}

/// The Response object's fields known before the answer: what the request asked for, echoed
/// as OpenAI echoes it. `status`, `output` and `usage` are filled in by `finish`.
pub fn response_skeleton(
    request: &ResponsesRequest,
    id: &str,
    created_at: u64,
    stored: bool,
) -> Value {
    let format = request
        .text
        .as_ref()
        .and_then(|t| t.get("format"))
        .cloned()
        .unwrap_or_else(|| json!({"type": "text"}));
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "error": null,
        "incomplete_details": null,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": request.model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls.unwrap_or(true),
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": null, "summary": null},
        "store": stored,
        "temperature": request.temperature.unwrap_or(1.0),
        "text": {"format": format},
        "tool_choice": request.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        "tools": request.tools.clone().unwrap_or_default(),
        "top_p": request.top_p.unwrap_or(1.0),
        "truncation": "disabled",
        "usage": null,
        "user": request.user,
        "metadata": request.metadata.clone().unwrap_or_default(),
    })
}

/// The status and incomplete details of a chat finish reason.
fn status_of(finish_reason: Option<&str>) -> (&'static str, Value) {
    match finish_reason {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

fn set(response: &mut Value, name: &str, value: Value) {
    if let Some(object) = response.as_object_mut() {
        object.insert(name.to_owned(), value);
    }
}

/// Completes a skeleton with the answer: status, output items, usage and the model that
/// answered.
fn finish(
    response: &mut Value,
    model: &str,
    output: Vec<Value>,
    finish_reason: Option<&str>,
    usage: Option<Usage>,
) {
    let (status, incomplete) = status_of(finish_reason);
    set(response, "status", json!(status));
    set(response, "incomplete_details", incomplete);
    if !model.is_empty() {
        set(response, "model", json!(model));
    }
    set(response, "output", Value::Array(output));
    set(response, "usage", usage.map_or(Value::Null, response_usage));
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [text_part(text)],
    })
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn function_call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "id": id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    })
}

/// The Response of a chat completion (its first choice: a Responses request has one), from the
/// skeleton of its request.
pub fn response_from_completion(mut skeleton: Value, completion: &ChatCompletion) -> Value {
    let choice = completion.choices.first();
    let finish_reason = choice.and_then(|c| c.finish_reason.as_deref());
    let item_status = match status_of(finish_reason).0 {
        "incomplete" => "incomplete",
        _ => "completed",
    };
    let mut output = Vec::new();
    if let Some(message) = choice.map(|c| &c.message) {
        if let Some(text) = message.content.as_deref().filter(|t| !t.is_empty()) {
            output.push(message_item(&new_id("msg"), text, item_status));
        }
        for call in message.tool_calls.iter().flatten() {
            output.push(function_call_item(
                &new_id("fc"),
                &call.id,
                &call.function.name,
                &call.function.arguments,
                "completed",
            ));
        }
    }
    finish(
        &mut skeleton,
        &completion.model,
        output,
        finish_reason,
        completion.usage,
    );
    skeleton
}

/// One SSE event: `event: TYPE\ndata: JSON\n\n`.
fn sse_event(data: &Value) -> String {
    let name = data.get("type").and_then(Value::as_str).unwrap_or("error");
    format!("event: {name}\ndata: {data}\n\n")
}

/// The output item a stream is writing.
#[derive(Debug)]
enum OpenItem {
    Message {
        id: String,
        text: String,
    },
    /// A function call, by its index among the chat chunk's tool calls.
    Call {
        index: u32,
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Turns the pipeline's chat chunks into the Responses event sequence, one chunk at a time:
/// `response.created` and `response.in_progress` first; per output item `output_item.added`,
/// its deltas (with `content_part.added` / `.done` around a message's text), its `.done`
/// events and `output_item.done`; then `response.completed` (or `response.incomplete`) with the
/// whole Response. Every event carries the next `sequence_number`.
#[derive(Debug)]
pub struct EventWriter {
    response: Value,
    sequence: u64,
    started: bool,
    open: Option<OpenItem>,
    output: Vec<Value>,
    model: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    pub finished: bool,
    /// The final event was written.
    announced: bool,
}

impl EventWriter {
    /// A writer for the response `skeleton` (from `response_skeleton`).
    pub fn new(skeleton: Value) -> Self {
        Self {
            response: skeleton,
            sequence: 0,
            started: false,
            open: None,
            output: Vec::new(),
            model: String::new(),
            finish_reason: None,
            usage: None,
            finished: false,
            announced: false,
        }
    }

    /// The Response as the last event carried it (complete once `finished`).
    pub fn response(&self) -> &Value {
        &self.response
    }

    /// Changes the response's `store` before it is finished (a stream whose document could
    /// not be stored says so in its last event).
    pub fn set_stored(&mut self, stored: bool) {
        set(&mut self.response, "store", json!(stored));
    }

    fn emit(&mut self, mut event: Value, out: &mut String) {
        set(&mut event, "sequence_number", json!(self.sequence));
        self.sequence += 1;
        out.push_str(&sse_event(&event));
    }

    fn start(&mut self, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.response.clone();
        self.emit(
            json!({"type": "response.created", "response": response}),
            out,
        );
        self.emit(
            json!({"type": "response.in_progress", "response": response}),
            out,
        );
    }

    fn output_index(&self) -> usize {
        self.output.len()
    }

    fn close_item(&mut self, status: &str, out: &mut String) {
        let output_index = self.output_index();
        let item = match self.open.take() {
            None => return,
            Some(OpenItem::Message { id, text }) => {
                let part = text_part(&text);
                self.emit(
                    json!({"type": "response.output_text.done", "item_id": id, "output_index": output_index, "content_index": 0, "text": text, "logprobs": []}),
                    out,
                );
                self.emit(
                    json!({"type": "response.content_part.done", "item_id": id, "output_index": output_index, "content_index": 0, "part": part}),
                    out,
                );
                message_item(&id, &text, status)
            }
            Some(OpenItem::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            }) => {
                self.emit(
                    json!({"type": "response.function_call_arguments.done", "item_id": id, "output_index": output_index, "arguments": arguments}),
                    out,
                );
                function_call_item(&id, &call_id, &name, &arguments, "completed")
            }
        };
        self.emit(
            json!({"type": "response.output_item.done", "output_index": output_index, "item": item}),
            out,
        );
        self.output.push(item);
    }

    fn open_item(&mut self, item: OpenItem, out: &mut String) {
        self.close_item("completed", out);
        let output_index = self.output_index();
        let added = match &item {
            OpenItem::Message { id, .. } => {
                json!({"id": id, "type": "message", "role": "assistant", "status": "in_progress", "content": []})
            }
            OpenItem::Call {
                id, call_id, name, ..
            } => function_call_item(id, call_id, name, "", "in_progress"),
        };
        self.emit(
            json!({"type": "response.output_item.added", "output_index": output_index, "item": added}),
            out,
        );
        if let OpenItem::Message { id, .. } = &item {
            self.emit(
                json!({"type": "response.content_part.added", "item_id": id, "output_index": output_index, "content_index": 0, "part": text_part("")}),
                out,
            );
        }
        self.open = Some(item);
    }

    /// The events of one chunk (of its first choice).
    pub fn chunk(&mut self, chunk: &ChatChunk) -> String {
        let mut out = String::new();
        if self.finished {
            return out;
        }
        self.start(&mut out);
        if !chunk.model.is_empty() {
            self.model.clone_from(&chunk.model);
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        let Some(choice) = chunk.choices.first() else {
            return out;
        };
        if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
            if !matches!(self.open, Some(OpenItem::Message { .. })) {
                let item = OpenItem::Message {
                    id: new_id("msg"),
                    text: String::new(),
                };
                self.open_item(item, &mut out);
            }
            let output_index = self.output_index();
            if let Some(OpenItem::Message { id, text: all }) = &mut self.open {
                all.push_str(text);
                let event = json!({"type": "response.output_text.delta", "item_id": id, "output_index": output_index, "content_index": 0, "delta": text, "logprobs": []});
                self.emit(event, &mut out);
            }
        }
        for call in choice.delta.tool_calls.iter().flatten() {
            let function = call.function.as_ref();
            if !matches!(self.open, Some(OpenItem::Call { index, .. }) if index == call.index) {
                let item = OpenItem::Call {
                    index: call.index,
                    id: new_id("fc"),
                    call_id: call.id.clone().unwrap_or_default(),
                    name: function.and_then(|f| f.name.clone()).unwrap_or_default(),
                    arguments: String::new(),
                };
                self.open_item(item, &mut out);
            }
            let Some(delta) = function
                .and_then(|f| f.arguments.as_deref())
                .filter(|a| !a.is_empty())
            else {
                continue;
            };
            let output_index = self.output_index();
            if let Some(OpenItem::Call { id, arguments, .. }) = &mut self.open {
                arguments.push_str(delta);
                let event = json!({"type": "response.function_call_arguments.delta", "item_id": id, "output_index": output_index, "delta": delta});
                self.emit(event, &mut out);
            }
        }
        if let Some(reason) = &choice.finish_reason {
            self.finish_reason = Some(reason.clone());
        }
        out
    }

    /// The closing events, once the pipeline's stream is complete: `close`, then `completed`.
    pub fn end(&mut self) -> String {
        let mut out = self.close();
        out.push_str(&self.completed());
        out
    }

    /// Closes the open item and finishes the Response (then `response()`), so it can be stored
    /// before `completed` announces it.
    pub fn close(&mut self) -> String {
        let mut out = String::new();
        if self.finished {
            return out;
        }
        self.start(&mut out);
        let item_status = match status_of(self.finish_reason.as_deref()).0 {
            "incomplete" => "incomplete",
            _ => "completed",
        };
        self.close_item(item_status, &mut out);
        self.finished = true;
        let output = std::mem::take(&mut self.output);
        let model = std::mem::take(&mut self.model);
        finish(
            &mut self.response,
            &model,
            output,
            self.finish_reason.as_deref(),
            self.usage,
        );
        out
    }

    /// The last event of a closed stream: `response.completed`, or `response.incomplete`.
    pub fn completed(&mut self) -> String {
        let mut out = String::new();
        if !self.finished || self.announced {
            return out;
        }
        self.announced = true;
        let kind = match self.response.get("status").and_then(Value::as_str) {
            Some("incomplete") => "response.incomplete",
            _ => "response.completed",
        };
        let response = self.response.clone();
        self.emit(json!({"type": kind, "response": response}), &mut out);
        out
    }

    /// The `error` and `response.failed` events that end a broken stream.
    pub fn error(&mut self, status: u16, message: &str) -> String {
        let mut out = String::new();
        if self.finished {
            return out;
        }
        self.start(&mut out);
        self.finished = true;
        self.announced = true;
        let code = error_code(status);
        self.emit(
            json!({"type": "error", "code": code, "message": message, "param": null}),
            &mut out,
        );
        set(&mut self.response, "status", json!("failed"));
        set(
            &mut self.response,
            "error",
            json!({"code": code, "message": message}),
        );
        let response = self.response.clone();
        self.emit(
            json!({"type": "response.failed", "response": response}),
            &mut out,
        );
        out
    }
}

/// The Responses error `code` for a failure's HTTP status.
fn error_code(status: u16) -> &'static str {
    match status {
        429 => "rate_limit_exceeded",
        400..=499 => "invalid_prompt",
        _ => "server_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ChatRequest;

    fn request(body: Value) -> ResponsesRequest {
        serde_json::from_value(body).unwrap()
    }

    fn chat(body: Value) -> Value {
        request(body).to_chat_request(&[]).unwrap()
    }

    fn refusal(body: Value) -> Untranslatable {
        request(body).to_chat_request(&[]).unwrap_err()
    }

    #[test]
    fn a_full_request_becomes_the_equivalent_chat_request() {
        let chat = chat(json!({
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Answer in French."},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,aGk=", "detail": "low"}
                ]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
                {"type": "function_call", "call_id": "call_1", "name": "look", "arguments": "{\"zoom\":2}"},
                {"type": "function_call", "call_id": "call_2", "name": "look", "arguments": "{}"},
                {"type": "reasoning", "summary": []},
                {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
                {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "a dog"}]}
            ],
            "tools": [{"type": "function", "name": "look", "description": "Looks closer", "parameters": {"type": "object"}, "strict": false}],
            "tool_choice": {"type": "function", "name": "look"},
            "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": true}, "verbosity": "low"},
            "max_output_tokens": 100,
            "temperature": 0.5,
            "top_p": 0.9,
            "parallel_tool_calls": false,
            "user": "u-1",
            "metadata": {"k": "v"},
            "store": false,
            "include": ["reasoning.encrypted_content"],
            "reasoning": {"effort": "low"},
            "stream": true
        }));
        assert_eq!(
            chat,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "developer", "content": "Answer in French."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk=", "detail": "low"}}
                    ]},
                    {"role": "assistant", "content": "Let me look.", "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"zoom\":2}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "look", "arguments": "{}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "a dog"}
                ],
                "tools": [{"type": "function", "function": {"name": "look", "description": "Looks closer", "parameters": {"type": "object"}, "strict": false}}],
                "tool_choice": {"type": "function", "function": {"name": "look"}},
                "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}},
                "max_tokens": 100,
                "temperature": 0.5,
                "top_p": 0.9,
                "parallel_tool_calls": false,
                "user": "u-1",
                "stream": true,
                "stream_options": {"include_usage": true}
            })
        );
        let parsed: ChatRequest = serde_json::from_value(chat).unwrap();
        parsed.validate().unwrap();
    }

    #[test]
    fn a_string_input_is_one_user_message_after_the_history() {
        let history = [
            json!({"type": "message", "role": "user", "content": "hi"}),
            json!({"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": [{"type": "output_text", "text": "hello", "annotations": [], "logprobs": []}]}),
            json!({"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_9", "name": "f", "arguments": "{}"}),
        ];
        let chat = request(json!({"model": "m", "input": "and now?", "instructions": "Now"}))
            .to_chat_request(&history)
            .unwrap();
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "system", "content": "Now"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello", "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "user", "content": "and now?"}
            ])
        );
        assert!(chat.get("stream").is_none());
        assert!(chat.get("response_format").is_none());
    }

    #[test]
    fn json_object_and_text_formats_translate() {
        let object =
            chat(json!({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}));
        assert_eq!(object["response_format"], json!({"type": "json_object"}));
        let text = chat(json!({"model": "m", "input": "x", "text": {"format": {"type": "text"}}}));
        assert!(text.get("response_format").is_none());
        assert_eq!(
            chat(json!({"model": "m", "input": "x", "tool_choice": "required"}))["tool_choice"],
            "required"
        );
    }

    #[test]
    fn what_cannot_be_served_is_refused_naming_the_field() {
        let cases = [
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]}),
                "tools[1].type",
                "web_search",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}),
                "input[0].content[0].file_id",
                "file_id",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]}),
                "input[0].content[0].type",
                "input_file",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
                "input[0].type",
                "item_reference",
            ),
            (
                json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}),
                "input[0].role",
                "role",
            ),
            (
                json!({"model": "m", "input": "x", "conversation": "conv_1"}),
                "conversation",
                "conversation",
            ),
            (
                json!({"model": "m", "input": "x", "background": true}),
                "background",
                "Background",
            ),
            (
                json!({"model": "m", "input": "x", "tool_choice": {"type": "web_search"}}),
                "tool_choice",
                "tool_choice",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}),
                "text.format.type",
                "json_schema",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}}),
                "text.format.schema",
                "schema",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": 5}]}),
                "input[0].output",
                "output",
            ),
            (json!({"model": "m"}), "input", "at least one"),
            (json!({"model": "m", "input": []}), "input", "at least one"),
        ];
        for (body, param, word) in cases {
            let error = refusal(body.clone());
            assert_eq!(error.param, param, "{body}");
            assert!(error.message.contains(word), "{body}: {}", error.message);
        }
        // Harmless fields pass, and a false `background` is no background.
        chat(
            json!({"model": "m", "input": "x", "background": false, "truncation": "auto", "service_tier": "auto", "prompt_cache_key": "k"}),
        );
    }

    fn completion(value: Value) -> ChatCompletion {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_completion_becomes_a_response_with_message_and_function_call_items() {
        let req = request(
            json!({"model": "alias", "input": "x", "instructions": "I", "metadata": {"k": "v"}, "previous_response_id": "resp_0"}),
        );
        let skeleton = response_skeleton(&req, "resp_1", 42, true);
        let response = response_from_completion(
            skeleton,
            &completion(json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "alias",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": "Looking.",
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"zoom\":2}"}}]
                }}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
            })),
        );
        assert_eq!(response["id"], "resp_1");
        assert_eq!(response["object"], "response");
        assert_eq!(response["created_at"], 42);
        assert_eq!(response["status"], "completed");
        assert_eq!(response["error"], Value::Null);
        assert_eq!(response["incomplete_details"], Value::Null);
        assert_eq!(response["instructions"], "I");
        assert_eq!(response["previous_response_id"], "resp_0");
        assert_eq!(response["store"], true);
        assert_eq!(response["metadata"], json!({"k": "v"}));
        assert_eq!(response["text"], json!({"format": {"type": "text"}}));
        let output = response["output"].as_array().unwrap();
        assert_eq!(output.len(), 2);
        assert!(output[0]["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(output[0]["role"], "assistant");
        assert_eq!(
            output[0]["content"],
            json!([{"type": "output_text", "text": "Looking.", "annotations": [], "logprobs": []}])
        );
        assert!(output[1]["id"].as_str().unwrap().starts_with("fc_"));
        assert_eq!(output[1]["call_id"], "call_1");
        assert_eq!(output[1]["name"], "look");
        assert_eq!(output[1]["arguments"], "{\"zoom\":2}");
        assert_eq!(
            response["usage"],
            json!({"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 19})
        );
    }

    #[test]
    fn a_length_finish_is_an_incomplete_response() {
        let req = request(json!({"model": "m", "input": "x", "max_output_tokens": 3}));
        let response = response_from_completion(
            response_skeleton(&req, "resp_1", 0, false),
            &completion(json!({
                "id": "c", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "abc"}}]
            })),
        );
        assert_eq!(response["status"], "incomplete");
        assert_eq!(
            response["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(response["output"][0]["status"], "incomplete");
        assert_eq!(response["max_output_tokens"], 3);
    }

    fn chunk(value: Value) -> ChatChunk {
        serde_json::from_value(value).unwrap()
    }

    /// The events of a stream, as (name, data) pairs, checking the framing.
    fn events(text: &str) -> Vec<(String, Value)> {
        text.split_terminator("\n\n")
            .map(|frame| {
                let (event, data) = frame.split_once('\n').unwrap();
                let name = event.strip_prefix("event: ").unwrap().to_owned();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], json!(name));
                (name, data)
            })
            .collect()
    }

    #[test]
    fn a_chunk_stream_becomes_the_full_event_sequence() {
        let req = request(json!({"model": "m", "input": "x"}));
        let mut writer = EventWriter::new(response_skeleton(&req, "resp_1", 0, true));
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
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (number, (_, data)) in events.iter().enumerate() {
            assert_eq!(data["sequence_number"], number);
        }
        assert_eq!(events[0].1["response"]["status"], "in_progress");
        assert_eq!(events[0].1["response"]["id"], "resp_1");
        let message_id = events[2].1["item"]["id"].clone();
        assert_eq!(events[4].1["item_id"], message_id);
        assert_eq!(events[4].1["delta"], "Hel");
        assert_eq!(events[4].1["logprobs"], json!([]));
        assert_eq!(events[6].1["text"], "Hello");
        assert_eq!(events[8].1["item"]["content"][0]["text"], "Hello");
        assert_eq!(events[9].1["output_index"], 1);
        assert_eq!(events[9].1["item"]["call_id"], "call_1");
        assert_eq!(events[9].1["item"]["name"], "look");
        assert_eq!(events[12].1["arguments"], "{\"zoom\":2}");
        let done = &events[14].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"].as_array().unwrap().len(), 2);
        assert_eq!(done["output"][1]["arguments"], "{\"zoom\":2}");
        assert_eq!(done["usage"]["total_tokens"], 13);
        assert_eq!(writer.response(), done);
        assert_eq!(writer.end(), "", "a finished stream writes nothing more");
    }

    #[test]
    fn a_length_stream_ends_incomplete_and_a_broken_one_failed() {
        let req = request(json!({"model": "m", "input": "x"}));
        let mut writer = EventWriter::new(response_skeleton(&req, "resp_1", 0, true));
        let mut out = writer.chunk(&chunk(json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "ab"}, "finish_reason": "length"}]})));
        out.push_str(&writer.end());
        let (name, last) = events(&out).pop().unwrap();
        assert_eq!(name, "response.incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );

        let mut writer = EventWriter::new(response_skeleton(&req, "resp_2", 0, true));
        let mut out = writer.chunk(&chunk(
            json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "ab"}}]}),
        ));
        out.push_str(&writer.error(502, "The stream failed."));
        let events = events(&out);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[names.len() - 2..], ["error", "response.failed"]);
        let (_, failed) = events.last().unwrap();
        assert_eq!(failed["response"]["status"], "failed");
        assert_eq!(failed["response"]["error"]["code"], "server_error");
        assert!(writer.finished);
        assert_eq!(writer.end(), "");
    }
}
