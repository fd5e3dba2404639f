//! What Anthropic's Messages API and Bedrock's Converse API share. Both take the system prompt
//! apart from the conversation, want alternating user and assistant turns of typed blocks, carry
//! tool calls as tool uses with JSON input and answer them with tool results naming their id, and
//! report usage with cache reads and writes beside the input. An OpenAI request is read into a
//! [`Conversation`] once, which each vendor renders into its own types; their answers come back
//! through [`Reply`] and [`ChunkWriter`].

use std::collections::HashMap;
use std::hash::Hash;

use serde_json::{Value, json};

use super::{ProviderError, ProviderErrorKind};
use crate::api::{
    AssistantMessage, ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Content,
    ContentPart, Delta, FunctionCall, FunctionCallDelta, JsonObject, MAX_TOOL_CALLS, Message, Role,
    ToolCall, ToolCallDelta, Usage,
};
use crate::clock::now_secs;

pub(crate) fn bad_request(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::BadRequest, message)
}

/// An OpenAI chat request in the terms both vendors use.
#[derive(Debug)]
pub(crate) struct Conversation<'a> {
    /// The text of each system or developer message, in order, blank ones included: Anthropic
    /// joins them into one prompt, Bedrock leaves the blank ones out.
    pub system: Vec<String>,
    /// The system prompts (by index in `system`) a cache breakpoint follows, and its
    /// `cache_control`: Anthropic marks that block, Bedrock adds a cache point after it.
    pub system_cache: Vec<(usize, &'a Value)>,
    /// Alternating user and assistant turns, none empty.
    pub turns: Vec<Turn<'a>>,
    /// The function tools the model may call.
    pub tools: Vec<ToolSpec<'a>>,
    pub tool_choice: Option<ToolChoice<'a>>,
    /// Whether any turn holds a tool use or a tool result: Bedrock then needs the tools declared.
    pub has_tool_blocks: bool,
    pub sampling: Sampling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Speaker {
    User,
    Assistant,
}

#[derive(Debug)]
pub(crate) struct Turn<'a> {
    pub speaker: Speaker,
    pub blocks: Vec<Block<'a>>,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Block<'a> {
    /// Never empty: both vendors reject blank text blocks.
    Text(&'a str),
    Image(Image<'a>),
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
    ToolResult {
        tool_use_id: &'a str,
        /// Possibly empty: a tool may answer nothing.
        text: String,
        /// Images the tool answered with, after its text.
        images: Vec<Image<'a>>,
    },
    /// An earlier answer's reasoning, sent back unchanged (its signature proves it).
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    /// An earlier answer's encrypted reasoning, sent back unchanged.
    RedactedThinking {
        data: &'a str,
    },
    /// Anthropic's `document` block (a PDF or text source) without its `type`.
    Document(&'a JsonObject),
    /// A prompt-cache breakpoint after the block before it, with its `cache_control`.
    CachePoint(&'a Value),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Image<'a> {
    /// A `data:` URL's media type and base64 payload, not yet decoded.
    Base64 { media_type: &'a str, data: &'a str },
    /// Any other URL, for the vendor to accept or refuse.
    Url(&'a str),
}

#[derive(Debug)]
pub(crate) struct ToolSpec<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
    /// The JSON schema of the arguments; an object with no declared properties when absent.
    pub schema: Value,
    /// A prompt-cache breakpoint after this tool.
    pub cache_control: Option<&'a Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToolChoice<'a> {
    Auto,
    /// OpenAI's `required`: some tool must be called.
    Required,
    None,
    Function(&'a str),
}

/// Sampling settings in the vendors' ranges.
#[derive(Debug, Default)]
pub(crate) struct Sampling {
    pub max_tokens: Option<u32>,
    /// At most 1: both vendors' range is 0..=1, OpenAI's 0..=2.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Option<Vec<String>>,
}

impl<'a> Conversation<'a> {
    /// Reads `request` for `vendor` (named in errors, such as "Anthropic"). Fails on what neither
    /// vendor can take: several choices, content parts other than text and images, a data URL
    /// that is not base64, tool-call arguments that are not JSON.
    pub(crate) fn from_request(
        request: &'a ChatRequest,
        vendor: &str,
    ) -> Result<Self, ProviderError> {
        if request.choices() > 1 {
            return Err(bad_request(format!("{vendor} models support only n = 1")).with_param("n"));
        }
        let mut system = Vec::new();
        let mut system_cache = Vec::new();
        let mut turns: Vec<Turn<'a>> = Vec::with_capacity(request.messages.len());
        let mut has_tool_blocks = false;
        for message in &request.messages {
            let (speaker, blocks) = match message.role {
                Role::System | Role::Developer => {
                    if let Some(content) = &message.content {
                        system.push(content.text());
                        if let Some(cache_control) = cache_control_of(message, content) {
                            system_cache.push((system.len() - 1, cache_control));
                        }
                    }
                    continue;
                }
                Role::User => (
                    Speaker::User,
                    content_blocks(message.content.as_ref(), vendor)?,
                ),
                Role::Assistant => {
                    let mut blocks = content_blocks(message.content.as_ref(), vendor)?;
                    for call in message.tool_calls.iter().flatten() {
                        let input = call.arguments_json().map_err(bad_request)?;
                        blocks.push(Block::ToolUse {
                            id: &call.id,
                            name: &call.function.name,
                            input,
                        });
                        has_tool_blocks = true;
                    }
                    (Speaker::Assistant, blocks)
                }
                Role::Tool | Role::Function => {
                    let text = message
                        .content
                        .as_ref()
                        .map(Content::text)
                        .unwrap_or_default();
                    let images = tool_result_images(message.content.as_ref())?;
                    let tool_use_id = message
                        .tool_call_id
                        .as_deref()
                        .or(message.name.as_deref())
                        .unwrap_or_default();
                    has_tool_blocks = true;
                    let mut blocks = vec![Block::ToolResult {
                        tool_use_id,
                        text,
                        images,
                    }];
                    if let Some(cache_control) = message.extra.get(CACHE_CONTROL) {
                        blocks.push(Block::CachePoint(cache_control));
                    }
                    (Speaker::User, blocks)
                }
            };
            if blocks.is_empty() {
                continue;
            }
            // Both vendors want alternating roles: consecutive turns of one role are merged,
            // which is also how several tool results answering one assistant turn must be sent.
            match turns.last_mut() {
                Some(last) if last.speaker == speaker => last.blocks.extend(blocks),
                _ => turns.push(Turn { speaker, blocks }),
            }
        }
        let tools = request
            .tools
            .iter()
            .flatten()
            .filter_map(|tool| Some((tool.function.as_ref()?, tool.extra.get(CACHE_CONTROL))))
            .map(|(function, cache_control)| ToolSpec {
                name: &function.name,
                description: function.description.as_deref(),
                schema: function
                    .parameters
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object"})),
                cache_control,
            })
            .collect();
        Ok(Self {
            system,
            system_cache,
            turns,
            tools,
            tool_choice: request
                .tool_choice
                .as_ref()
                .and_then(ToolChoice::from_openai),
            has_tool_blocks,
            sampling: Sampling {
                max_tokens: request.max_output_tokens(),
                temperature: request.temperature.map(|t| t.min(1.0)),
                top_p: request.top_p,
                stop: request.stop.as_ref().map(|s| s.to_vec()),
            },
        })
    }
}

impl<'a> ToolChoice<'a> {
    /// OpenAI's `auto`, `required`, `none` or `{"function": {"name": ...}}`; anything else is no
    /// choice, which leaves it to the vendor's default.
    fn from_openai(choice: &'a Value) -> Option<Self> {
        match choice {
            Value::String(s) if s == "auto" => Some(Self::Auto),
            Value::String(s) if s == "required" => Some(Self::Required),
            Value::String(s) if s == "none" => Some(Self::None),
            Value::Object(o) => o.get("function")?.get("name")?.as_str().map(Self::Function),
            _ => None,
        }
    }
}

fn content_blocks<'a>(
    content: Option<&'a Content>,
    vendor: &str,
) -> Result<Vec<Block<'a>>, ProviderError> {
    match content {
        None => Ok(Vec::new()),
        Some(Content::Text(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Content::Text(text)) => Ok(vec![Block::Text(text)]),
        Some(Content::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                let before = blocks.len();
                match (part.kind.as_str(), &part.text, &part.image_url) {
                    ("text", Some(text), _) if !text.is_empty() => blocks.push(Block::Text(text)),
                    ("image_url", _, Some(image)) => {
                        blocks.push(Block::Image(Image::from_url(&image.url)?));
                    }
                    ("text", _, _) => {}
                    ("thinking", _, _) => blocks.push(Block::Thinking {
                        thinking: extra_str(part, "thinking"),
                        signature: extra_str(part, "signature"),
                    }),
                    ("redacted_thinking", _, _) => blocks.push(Block::RedactedThinking {
                        data: extra_str(part, "data"),
                    }),
                    ("document", _, _) => blocks.push(Block::Document(&part.extra)),
                    (other, _, _) => {
                        return Err(bad_request(format!(
                            "content part type `{other}` is not supported by {vendor} models"
                        )));
                    }
                }
                if blocks.len() > before
                    && let Some(cache_control) = part.extra.get(CACHE_CONTROL)
                {
                    blocks.push(Block::CachePoint(cache_control));
                }
            }
            Ok(blocks)
        }
    }
}

/// The key of Anthropic's prompt-cache breakpoints, on content parts, tool messages, system
/// messages and tools.
pub(crate) const CACHE_CONTROL: &str = "cache_control";

fn extra_str<'a>(part: &'a ContentPart, key: &str) -> &'a str {
    part.extra
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The `cache_control` of a system message: on the message, or on its last part.
fn cache_control_of<'a>(message: &'a Message, content: &'a Content) -> Option<&'a Value> {
    message.extra.get(CACHE_CONTROL).or_else(|| match content {
        Content::Parts(parts) => parts.last()?.extra.get(CACHE_CONTROL),
        Content::Text(_) => None,
    })
}

/// The images of a tool message whose content is parts (text parts become its text).
fn tool_result_images(content: Option<&Content>) -> Result<Vec<Image<'_>>, ProviderError> {
    let Some(Content::Parts(parts)) = content else {
        return Ok(Vec::new());
    };
    parts
        .iter()
        .filter_map(|part| part.image_url.as_ref())
        .map(|image| Image::from_url(&image.url))
        .collect()
}

impl<'a> Image<'a> {
    fn from_url(url: &'a str) -> Result<Self, ProviderError> {
        match url.strip_prefix("data:") {
            Some(rest) => {
                let (media_type, data) = rest
                    .split_once(";base64,")
                    .ok_or_else(|| bad_request("image data URLs must be base64 encoded"))?;
                Ok(Self::Base64 { media_type, data })
            }
            None => Ok(Self::Url(url)),
        }
    }
}

/// Why the model stopped, in OpenAI's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
        }
    }
}

/// Usage in OpenAI's terms: cache reads and writes are prompt tokens too.
pub(crate) fn usage(input: u64, cache_read: u64, cache_write: u64, output: u64) -> Usage {
    Usage::new(input + cache_read + cache_write, output).with_cache(cache_read, cache_write)
}

/// A whole answer's text and tool calls, collected block by block.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    text: String,
    tool_calls: Vec<ToolCall>,
    /// Thinking and redacted thinking blocks, in Anthropic's shape.
    thinking: Vec<Value>,
    /// The stop sequence that ended the answer, when the vendor names it.
    pub stop_sequence: Option<String>,
}

/// Where a completion's message keeps its thinking blocks (Anthropic's shape, signatures
/// included), which the Messages front end returns; chat clients see their text in
/// `reasoning_content`.
pub(crate) const THINKING_BLOCKS: &str = "thinking_blocks";
pub(crate) const REASONING_CONTENT: &str = "reasoning_content";
/// A stream's thinking signature and redacted thinking, in a chunk's delta.
pub(crate) const THINKING_SIGNATURE: &str = "thinking_signature";
pub(crate) const REDACTED_THINKING: &str = "redacted_thinking";
/// Where a completion's choice, or a stream's finish chunk, names the stop sequence that matched.
pub(crate) const STOP_SEQUENCE: &str = "stop_sequence";
/// Where a stream's first chunk carries the prompt usage the vendor reported at its start.
pub(crate) const PROMPT_USAGE: &str = "prompt_usage";

impl Reply {
    pub(crate) fn push_thinking(&mut self, thinking: &str, signature: &str) {
        self.thinking
            .push(json!({"type": "thinking", "thinking": thinking, "signature": signature}));
    }

    pub(crate) fn push_redacted_thinking(&mut self, data: &str) {
        self.thinking
            .push(json!({"type": "redacted_thinking", "data": data}));
    }

    pub(crate) fn push_text(&mut self, text: &str) {
        self.text.push_str(text);
    }

    pub(crate) fn push_tool_use(&mut self, id: String, name: String, input: &Value) {
        self.tool_calls.push(ToolCall {
            id,
            kind: "function".to_owned(),
            function: FunctionCall {
                name,
                arguments: input.to_string(),
            },
        });
    }

    /// The answer as an OpenAI completion with one choice. An answer that is only tool calls has
    /// no content; one with neither has empty content.
    pub(crate) fn into_completion(
        self,
        id: String,
        model: String,
        finish_reason: FinishReason,
        usage: Option<Usage>,
    ) -> ChatCompletion {
        let Self {
            text,
            tool_calls,
            thinking,
            stop_sequence,
        } = self;
        let mut message_extra = JsonObject::new();
        if !thinking.is_empty() {
            let reasoning: String = thinking
                .iter()
                .filter_map(|block| block.get("thinking").and_then(Value::as_str))
                .collect();
            message_extra.insert(REASONING_CONTENT.to_owned(), Value::String(reasoning));
            message_extra.insert(THINKING_BLOCKS.to_owned(), Value::Array(thinking));
        }
        let mut choice_extra = JsonObject::new();
        if let Some(stop) = stop_sequence {
            choice_extra.insert(STOP_SEQUENCE.to_owned(), Value::String(stop));
        }
        ChatCompletion {
            id,
            object: "chat.completion".to_owned(),
            created: now_secs(),
            model,
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant".to_owned(),
                    content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                    tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                    extra: message_extra,
                },
                finish_reason: Some(finish_reason.as_str().to_owned()),
                logprobs: None,
                extra: choice_extra,
            }],
            usage,
            extra: JsonObject::new(),
        }
    }
}

/// Writes the OpenAI chunks of a translated stream, in the order both vendors' events give them:
/// a role chunk, text and tool-call deltas, a finish chunk, then a chunk with usage alone.
/// `BlockIndex` is the vendor's content-block index, which tool-call deltas refer to.
pub(crate) struct ChunkWriter<BlockIndex> {
    pub id: String,
    pub model: String,
    created: u64,
    /// The vendor's content-block index of each tool call -> its OpenAI tool-call index.
    tool_indexes: HashMap<BlockIndex, u32>,
}

impl<BlockIndex: Eq + Hash> ChunkWriter<BlockIndex> {
    pub(crate) fn new(id: String, model: &str) -> Self {
        Self {
            id,
            model: model.to_owned(),
            created: now_secs(),
            tool_indexes: HashMap::new(),
        }
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<FinishReason>) -> ChatChunk {
        ChatChunk::new(
            &self.id,
            self.created,
            &self.model,
            vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(|reason| reason.as_str().to_owned()),
                logprobs: None,
            }],
        )
    }

    pub(crate) fn role(&self) -> ChatChunk {
        self.chunk(
            Delta {
                role: Some("assistant".to_owned()),
                content: Some(String::new()),
                ..Delta::default()
            },
            None,
        )
    }

    /// The first chunk, carrying the prompt usage the vendor reported before any output.
    pub(crate) fn role_with_prompt_usage(&self, usage: Usage) -> ChatChunk {
        let mut chunk = self.role();
        if let Ok(usage) = serde_json::to_value(usage) {
            chunk.extra.insert(PROMPT_USAGE.to_owned(), usage);
        }
        chunk
    }

    /// A piece of reasoning text, a thinking block's signature, or a redacted thinking block:
    /// `key` names which, in the delta.
    pub(crate) fn thinking(&self, key: &str, text: String) -> ChatChunk {
        let mut delta = Delta::default();
        delta.extra.insert(key.to_owned(), Value::String(text));
        self.chunk(delta, None)
    }

    pub(crate) fn text(&self, text: String) -> ChatChunk {
        self.chunk(
            Delta {
                content: Some(text),
                ..Delta::default()
            },
            None,
        )
    }

    /// The chunk opening a tool call, which later argument deltas of `block` extend. Fails past
    /// the number of tool calls a completion may hold, so the index map stays bounded.
    pub(crate) fn tool_start(
        &mut self,
        block: BlockIndex,
        id: String,
        name: String,
    ) -> Result<ChatChunk, ProviderError> {
        let tool_index = u32::try_from(self.tool_indexes.len())
            .ok()
            .filter(|&index| index < MAX_TOOL_CALLS)
            .ok_or_else(|| {
                ProviderError::new(
                    ProviderErrorKind::Protocol,
                    format!("the stream opened more than {MAX_TOOL_CALLS} tool calls"),
                )
            })?;
        self.tool_indexes.insert(block, tool_index);
        Ok(self.tool_delta(tool_index, Some(id), Some(name), String::new()))
    }

    /// A piece of the arguments of the tool call opened for `block`; none for a block that opened
    /// no tool call.
    pub(crate) fn tool_arguments(
        &self,
        block: &BlockIndex,
        arguments: String,
    ) -> Option<ChatChunk> {
        let tool_index = *self.tool_indexes.get(block)?;
        Some(self.tool_delta(tool_index, None, None, arguments))
    }

    fn tool_delta(
        &self,
        index: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    ) -> ChatChunk {
        let delta = Delta {
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
        };
        self.chunk(delta, None)
    }

    pub(crate) fn finish(&self, reason: FinishReason, stop_sequence: Option<String>) -> ChatChunk {
        let mut chunk = self.chunk(Delta::default(), Some(reason));
        if let Some(stop) = stop_sequence {
            chunk
                .extra
                .insert(STOP_SEQUENCE.to_owned(), Value::String(stop));
        }
        chunk
    }

    /// The last chunk: no choices, only the usage.
    pub(crate) fn usage(&self, usage: Usage) -> ChatChunk {
        let mut chunk = ChatChunk::new(&self.id, self.created, &self.model, Vec::new());
        chunk.usage = Some(usage);
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_opens_at_most_as_many_tool_calls_as_a_completion_holds() {
        let mut writer = ChunkWriter::new("c".to_owned(), "m");
        for block in 0..MAX_TOOL_CALLS {
            let chunk = writer.tool_start(block, format!("t{block}"), "f".to_owned());
            let index = chunk.unwrap().choices[0].delta.tool_calls.as_ref().unwrap()[0].index;
            assert_eq!(index, block);
        }
        let error = writer
            .tool_start(MAX_TOOL_CALLS, "one too many".to_owned(), "f".to_owned())
            .unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::Protocol);
        assert_eq!(writer.tool_indexes.len(), MAX_TOOL_CALLS as usize);
        // Arguments of a block that opened no call go nowhere.
        assert!(
            writer
                .tool_arguments(&MAX_TOOL_CALLS, "{}".to_owned())
                .is_none()
        );
    }
}
