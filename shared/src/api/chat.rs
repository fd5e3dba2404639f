//! Chat completions: the request, the answer, and the stream chunks, as OpenAI defines them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::JsonObject;
use crate::error::ApiError;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatRequest {
    #[schema(min_length = 1)]
    pub model: String,
    #[schema(min_items = 1, max_items = 10_000)]
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 128)]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[schema(value_type = Option<Object>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<JsonObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    // Any other field is forwarded: the schema stays open (additional properties allowed).
    #[schema(ignore)]
    #[serde(flatten)]
    pub extra: JsonObject,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    // Any other field is forwarded: the schema stays open (additional properties allowed).
    #[schema(ignore)]
    #[serde(flatten)]
    pub extra: JsonObject,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    // Any other field is forwarded: the schema stays open (additional properties allowed).
    #[schema(ignore)]
    #[serde(flatten)]
    pub extra: JsonObject,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<ImageUrl>,
    // Any other field is forwarded: the schema stays open (additional properties allowed).
    #[schema(ignore)]
    #[serde(flatten)]
    pub extra: JsonObject,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Content {
    /// The text of the message: a string, or its text parts joined by newlines.
    pub fn text(&self) -> String {
        match self {
            Content::Text(s) => s.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// Characters of text, for token estimates without allocating.
    pub fn text_len(&self) -> usize {
        match self {
            Content::Text(s) => s.len(),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| p.text.as_deref().map_or(0, str::len))
                .sum(),
        }
    }

    pub fn has_image(&self) -> bool {
        matches!(self, Content::Parts(parts) if parts.iter().any(|p| p.image_url.is_some()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDefinition>,
    // Any other field is forwarded: the schema stays open (additional properties allowed).
    #[schema(ignore)]
    #[serde(flatten)]
    pub extra: JsonObject,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    // Any other field is forwarded: the schema stays open (additional properties allowed).
    #[schema(ignore)]
    #[serde(flatten)]
    pub extra: JsonObject,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

impl ToolCall {
    /// The call's arguments as JSON (an empty string is `{}`), for providers that take them as
    /// an object rather than OpenAI's string.
    pub fn arguments_json(&self) -> Result<Value, String> {
        if self.function.arguments.trim().is_empty() {
            return Ok(Value::Object(JsonObject::new()));
        }
        serde_json::from_str(&self.function.arguments)
            .map_err(|_| format!("tool call `{}` has arguments that are not JSON", self.id))
    }
}

pub(crate) fn function_kind() -> String {
    "function".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

/// The prompt-token estimate for `chars` characters in `messages` messages.
pub fn prompt_tokens(chars: usize, messages: usize) -> u64 {
    (chars as u64).div_ceil(4) + 4 * messages as u64 + 3
}

impl Message {
    /// Characters of the message that count towards the prompt.
    pub fn estimate_chars(&self) -> usize {
        self.content.as_ref().map_or(0, Content::text_len)
            + self.tool_calls.as_ref().map_or(0, |calls| {
                calls
                    .iter()
                    .map(|c| c.function.name.len() + c.function.arguments.len())
                    .sum()
            })
    }
}

/// The most messages one chat request may carry.
pub const MAX_MESSAGES: usize = 10_000;

impl ChatRequest {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// The completion-token cap the client asked for, whichever field it used.
    pub fn max_output_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    pub fn choices(&self) -> u32 {
        self.n.unwrap_or(1)
    }

    /// A cheap, conservative estimate of prompt tokens (about four characters a token plus
    /// per-message overhead), used to reserve TPM before the provider reports real usage.
    pub fn estimate_prompt_tokens(&self) -> u64 {
        let chars: usize = self.messages.iter().map(Message::estimate_chars).sum();
        prompt_tokens(chars + self.tool_chars(), self.messages.len())
    }

    /// Characters the tool definitions add to every prompt.
    pub fn tool_chars(&self) -> usize {
        self.tools.as_ref().map_or(0, |tools| {
            tools
                .iter()
                .map(|t| serde_json::to_string(t).map_or(0, |s| s.len()))
                .sum()
        })
    }

    /// The text of the last user message (empty when there is none).
    pub fn last_user_text(&self) -> String {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .and_then(|m| m.content.as_ref())
            .map(Content::text)
            .unwrap_or_default()
    }

    pub fn has_images(&self) -> bool {
        self.messages
            .iter()
            .any(|m| m.content.as_ref().is_some_and(Content::has_image))
    }

    pub fn wants_json(&self) -> bool {
        self.response_format
            .as_ref()
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str)
            .is_some_and(|t| t == "json_object" || t == "json_schema")
    }

    /// Checks what the schema cannot express, naming the offending parameter.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.model.is_empty() {
            return Err(ApiError::bad_request("`model` must not be empty").with_param("model"));
        }
        if self.messages.is_empty() {
            return Err(
                ApiError::bad_request("`messages` must contain at least one message")
                    .with_param("messages"),
            );
        }
        if self.messages.len() > MAX_MESSAGES {
            return Err(ApiError::bad_request(format!(
                "`messages` has {} entries; at most {MAX_MESSAGES} are accepted",
                self.messages.len()
            ))
            .with_param("messages"));
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ApiError::bad_request(format!(
                "`temperature` must be between 0 and 2, got {t}"
            ))
            .with_param("temperature"));
        }
        if let Some(p) = self.top_p
            && !(0.0..=1.0).contains(&p)
        {
            return Err(
                ApiError::bad_request(format!("`top_p` must be between 0 and 1, got {p}"))
                    .with_param("top_p"),
            );
        }
        if let Some(n) = self.n
            && !(1..=128).contains(&n)
        {
            return Err(
                ApiError::bad_request(format!("`n` must be between 1 and 128, got {n}"))
                    .with_param("n"),
            );
        }
        if self.max_output_tokens() == Some(0) {
            return Err(
                ApiError::bad_request("`max_tokens` must be at least 1").with_param("max_tokens")
            );
        }
        for (i, m) in self.messages.iter().enumerate() {
            if m.role == Role::Tool && m.tool_call_id.is_none() {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}]: a `tool` message must have `tool_call_id`"
                ))
                .with_param(format!("messages[{i}].tool_call_id")));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    #[serde(default = "completion_object")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    // Any other field is forwarded: the schema stays open (additional properties allowed).
    #[schema(ignore)]
    #[serde(flatten)]
    pub extra: JsonObject,
}

pub(crate) fn completion_object() -> String {
    "chat.completion".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    // Any other field is forwarded: the schema stays open (additional properties allowed).
    #[schema(ignore)]
    #[serde(flatten)]
    pub extra: JsonObject,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssistantMessage {
    #[serde(default = "assistant_role")]
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    // Any other field is forwarded: the schema stays open (additional properties allowed).
    #[schema(ignore)]
    #[serde(flatten)]
    pub extra: JsonObject,
}

pub(crate) fn assistant_role() -> String {
    "assistant".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk {
    pub id: String,
    #[serde(default = "chunk_object")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub extra: JsonObject,
    /// The JSON text this chunk was read from, when an OpenAI-compatible upstream sent it: the
    /// relay forwards that text instead of serialising the chunk again. Never serialised. Code
    /// that changes a field of a chunk must clear it (`ChatChunk::new` starts without one).
    #[serde(skip)]
    pub raw: Option<bytes::Bytes>,
}

fn chunk_object() -> String {
    "chat.completion.chunk".to_owned()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    #[serde(default)]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    #[serde(flatten)]
    pub extra: JsonObject,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCallDelta>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FunctionCallDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

impl ChatChunk {
    pub fn new(id: &str, created: u64, model: &str, choices: Vec<ChunkChoice>) -> Self {
        Self {
            id: id.to_owned(),
            object: chunk_object(),
            created,
            model: model.to_owned(),
            choices,
            usage: None,
            extra: JsonObject::new(),
            raw: None,
        }
    }
}

// Stream chunks are parsed once per token, so `ChatChunk` and `Delta` read their fields by hand.
// The derived `Deserialize` of a struct with `#[serde(flatten)]` first buffers every field of the
// object into serde's generic `Content` tree and then deserialises the fields again from it;
// with the chunk's `Delta` flattened too, that was about a tenth of the gateway's work on a
// stream. These impls read each known field straight into its type and unknown fields into
// `extra`, with the same defaults, required fields and errors (`missing field`, `duplicate
// field`, `invalid type`) as the derived ones.

/// A map key, borrowed from the input when it has no escapes.
struct FieldName<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl<'de> serde::de::Visitor<'de> for Name {
            type Value = FieldName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FieldName(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FieldName(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(FieldName(std::borrow::Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// The value of a field the input did not have: an error, `Default::default()` or a function's.
macro_rules! absent_field {
    ($key:literal, required) => {
        return Err(serde::de::Error::missing_field($key))
    };
    ($key:literal, default) => {
        Default::default()
    };
    ($key:literal, $default:ident) => {
        $default()
    };
}

/// `Deserialize` for a struct whose unknown fields go to its `extra` map. Each field is
/// `name: "json key" (required | default | function giving the default)`; `skip` fields (not
/// part of the JSON) start at their default.
macro_rules! deserialize_with_extra {
    ($type:ident { $($field:ident : $key:literal ($absent:ident)),* $(,)? }
     $(skip { $($skip:ident),* })?) => {
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Fields;
                impl<'de> serde::de::Visitor<'de> for Fields {
                    type Value = $type;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str(concat!("struct ", stringify!($type)))
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<$type, A::Error> {
                        $(let mut $field = None;)*
                        let mut extra = JsonObject::new();
                        while let Some(FieldName(name)) = map.next_key()? {
                            match &*name {
                                $($key => {
                                    if $field.is_some() {
                                        return Err(serde::de::Error::duplicate_field($key));
                                    }
                                    $field = Some(map.next_value()?);
                                })*
                                _ => {
                                    let value: Value = map.next_value()?;
                                    extra.insert(name.into_owned(), value);
                                }
                            }
                        }
                        Ok($type {
                            $($field: match $field {
                                Some(value) => value,
                                None => absent_field!($key, $absent),
                            },)*
                            $($($skip: Default::default(),)*)?
                            extra,
                        })
                    }
                }
                deserializer.deserialize_map(Fields)
            }
        }
    };
}

deserialize_with_extra!(ChatChunk {
    id: "id" (required),
    object: "object" (chunk_object),
    created: "created" (default),
    model: "model" (default),
    choices: "choices" (default),
    usage: "usage" (default),
} skip { raw });

deserialize_with_extra!(Delta {
    role: "role"(default),
    content: "content"(default),
    tool_calls: "tool_calls"(default),
});

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let body = json!({
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}], "x_msg": 1}],
            "reasoning_effort": "low",
            "prediction": {"type": "content", "content": "x"},
            "stream": true,
            "stream_options": {"include_usage": true}
        });
        let req: ChatRequest = serde_json::from_value(body.clone()).unwrap();
        assert!(req.is_stream() && req.include_usage());
        assert_eq!(req.extra["reasoning_effort"], "low");
        assert_eq!(serde_json::to_value(&req).unwrap(), body);
    }

    #[test]
    fn chunks_parse_with_the_defaults_errors_and_unknown_fields_of_the_derived_impls() {
        let chunk: ChatChunk = serde_json::from_str(
            r#"{"id": "c", "system_fingerprint": "fp", "choices": [{"index": 0,
                "delta": {"content": "a", "refusal": null, "role": null}}], "usage": null}"#,
        )
        .unwrap();
        assert_eq!(chunk.object, "chat.completion.chunk");
        assert_eq!((chunk.created, chunk.model.as_str()), (0, ""));
        assert_eq!(chunk.extra["system_fingerprint"], "fp");
        let delta = &chunk.choices[0].delta;
        assert_eq!(delta.content.as_deref(), Some("a"));
        assert_eq!(delta.role, None);
        assert_eq!(delta.extra["refusal"], Value::Null);
        assert!(chunk.usage.is_none() && chunk.raw.is_none());
        let error = |text: &str| {
            serde_json::from_str::<ChatChunk>(text)
                .unwrap_err()
                .to_string()
        };
        assert!(error(r#"{"choices": []}"#).starts_with("missing field `id`"));
        assert!(error(r#"{"id": "a", "id": "b"}"#).starts_with("duplicate field `id`"));
        assert!(error(r#"{"id": 1}"#).starts_with("invalid type: integer `1`, expected a string"));
        assert!(error("[]").starts_with("invalid type: sequence, expected struct ChatChunk"));
        // Escaped keys are decoded, as the derived impl decodes them.
        let escaped: ChatChunk = serde_json::from_str(r#"{"\u0069d": "c", "x\"y": 1}"#).unwrap();
        assert_eq!(
            (escaped.id.as_str(), &escaped.extra["x\"y"]),
            ("c", &json!(1))
        );
    }

    #[test]
    fn validation_names_the_bad_parameter() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3.5
        }))
        .unwrap();
        let err = req.validate().unwrap_err();
        assert_eq!(err.param.as_deref(), Some("temperature"));
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
    }
}
