//! Rebuilding a whole answer from stream chunks (to bill, cache and replay it), and the reverse.

use super::JsonObject;
use super::chat::{
    AssistantMessage, ChatChunk, ChatCompletion, Choice, ChunkChoice, Delta, FunctionCall,
    FunctionCallDelta, ToolCall, ToolCallDelta, Usage, assistant_role, completion_object,
    function_kind,
};

/// Most choices a request may ask for (`n`), and so the most a stream may carry.
pub const MAX_CHOICES: u32 = 128;

/// Most tool calls one streamed choice may carry. A chunk's tool-call `index` comes from the
/// upstream and sizes a vector, so it is checked against this before anything is allocated.
pub const MAX_TOOL_CALLS: u32 = 1_024;

/// Most text the assembler keeps of one streamed answer. Past it the stream is still relayed and
/// billed, but the answer is not kept (so it is never cached).
pub const MAX_ASSEMBLED_BYTES: usize = 16 * 1024 * 1024;

/// An upstream chunk the assembler refuses: the upstream broke the format's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedChunk(pub String);

/// Rebuilds a complete answer from stream chunks, so a streamed answer can be cached, billed and
/// replayed like a non-streamed one.
#[derive(Debug, Default)]
pub struct CompletionAssembler {
    id: String,
    created: u64,
    model: String,
    /// By choice index, so the answer lists them in order.
    choices: std::collections::BTreeMap<u32, Choice>,
    pub usage: Option<Usage>,
    completion_chars: usize,
    /// Set once the answer outgrew `MAX_ASSEMBLED_BYTES`: what is kept is no longer whole.
    truncated: bool,
}

impl CompletionAssembler {
    pub fn push(&mut self, chunk: &ChatChunk) -> Result<(), MalformedChunk> {
        if self.id.is_empty() {
            self.id.clone_from(&chunk.id);
            self.created = chunk.created;
            self.model.clone_from(&chunk.model);
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        for c in &chunk.choices {
            if c.index >= MAX_CHOICES {
                return Err(MalformedChunk(format!(
                    "choice index {} is out of range (at most {MAX_CHOICES} choices)",
                    c.index
                )));
            }
            let added = c.delta.content.as_ref().map_or(0, String::len)
                + c.delta.tool_calls.as_ref().map_or(0, |calls| {
                    calls
                        .iter()
                        .filter_map(|d| d.function.as_ref()?.arguments.as_ref())
                        .map(String::len)
                        .sum()
                });
            self.completion_chars = self.completion_chars.saturating_add(added);
            if self.completion_chars > MAX_ASSEMBLED_BYTES {
                self.truncated = true;
            }
            let keep = !self.truncated;
            let choice = self.choice_mut(c.index);
            if let Some(text) = &c.delta.content
                && keep
            {
                choice
                    .message
                    .content
                    .get_or_insert_with(String::new)
                    .push_str(text);
            }
            if let Some(calls) = &c.delta.tool_calls {
                let tool_calls = choice.message.tool_calls.get_or_insert_with(Vec::new);
                for d in calls {
                    if d.index >= MAX_TOOL_CALLS {
                        return Err(MalformedChunk(format!(
                            "tool call index {} is out of range (at most {MAX_TOOL_CALLS} calls)",
                            d.index
                        )));
                    }
                    let slot = d.index as usize;
                    if tool_calls.len() <= slot {
                        tool_calls.resize_with(slot + 1, || ToolCall {
                            id: String::new(),
                            kind: function_kind(),
                            function: FunctionCall {
                                name: String::new(),
                                arguments: String::new(),
                            },
                        });
                    }
                    let Some(call) = tool_calls.get_mut(slot) else {
                        continue;
                    };
                    if let Some(id) = &d.id {
                        call.id.clone_from(id);
                    }
                    if let Some(f) = &d.function
                        && keep
                    {
                        if let Some(name) = &f.name {
                            call.function.name.push_str(name);
                        }
                        if let Some(args) = &f.arguments {
                            call.function.arguments.push_str(args);
                        }
                    }
                }
            }
            if c.finish_reason.is_some() {
                choice.finish_reason.clone_from(&c.finish_reason);
            }
        }
        Ok(())
    }

    fn choice_mut(&mut self, index: u32) -> &mut Choice {
        self.choices.entry(index).or_insert_with(|| Choice {
            index,
            message: AssistantMessage {
                role: assistant_role(),
                ..AssistantMessage::default()
            },
            finish_reason: None,
            logprobs: None,
            extra: JsonObject::new(),
        })
    }

    /// Whether the answer was too large to keep whole (it must not be cached).
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// True once every choice seen has a finish reason.
    pub fn is_finished(&self) -> bool {
        !self.choices.is_empty() && self.choices.values().all(|c| c.finish_reason.is_some())
    }

    /// Completion tokens by the four-characters rule, for when a provider reports no usage.
    pub fn estimated_completion_tokens(&self) -> u64 {
        (self.completion_chars as u64).div_ceil(4)
    }

    pub fn into_completion(self) -> ChatCompletion {
        ChatCompletion {
            id: self.id,
            object: completion_object(),
            created: self.created,
            model: self.model,
            choices: self.choices.into_values().collect(),
            usage: self.usage,
            extra: JsonObject::new(),
        }
    }
}

impl ChatCompletion {
    /// The completion as the chunks a stream would have carried, for SSE replay from cache.
    pub fn to_chunks(&self, include_usage: bool) -> Vec<ChatChunk> {
        let mut chunks = Vec::with_capacity(self.choices.len() * 2 + 1);
        for choice in &self.choices {
            let tool_calls = choice.message.tool_calls.as_ref().map(|calls| {
                calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ToolCallDelta {
                        index: i as u32,
                        id: Some(c.id.clone()),
                        kind: Some(c.kind.clone()),
                        function: Some(FunctionCallDelta {
                            name: Some(c.function.name.clone()),
                            arguments: Some(c.function.arguments.clone()),
                        }),
                    })
                    .collect()
            });
            chunks.push(ChatChunk::new(
                &self.id,
                self.created,
                &self.model,
                vec![ChunkChoice {
                    index: choice.index,
                    delta: Delta {
                        role: Some(choice.message.role.clone()),
                        content: choice.message.content.clone(),
                        tool_calls,
                        extra: JsonObject::new(),
                    },
                    finish_reason: None,
                    logprobs: None,
                }],
            ));
            chunks.push(ChatChunk::new(
                &self.id,
                self.created,
                &self.model,
                vec![ChunkChoice {
                    index: choice.index,
                    delta: Delta::default(),
                    finish_reason: choice.finish_reason.clone(),
                    logprobs: None,
                }],
            ));
        }
        if include_usage {
            let mut usage_chunk = ChatChunk::new(&self.id, self.created, &self.model, Vec::new());
            usage_chunk.usage = Some(self.usage.unwrap_or_default());
            chunks.push(usage_chunk);
        }
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn assembler_rebuilds_text_and_tool_calls_from_chunks() {
        let chunks: Vec<ChatChunk> = serde_json::from_value(json!([
            {"id": "c1", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
            {"id": "c1", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": "lo", "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}}]}}]},
            {"id": "c1", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}, "finish_reason": "tool_calls"}]},
            {"id": "c1", "created": 1, "model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
        ]))
        .unwrap();
        let mut assembler = CompletionAssembler::default();
        for c in &chunks {
            assembler.push(c).unwrap();
        }
        assert!(assembler.is_finished());
        let completion = assembler.into_completion();
        let message = &completion.choices[0].message;
        assert_eq!(message.content.as_deref(), Some("Hello"));
        let calls = message.tool_calls.as_ref().unwrap();
        assert_eq!(calls[0].function.arguments, "{\"a\":1}");
        assert_eq!(completion.usage, Some(Usage::new(3, 2)));
    }

    #[test]
    fn upstream_indexes_are_bounded_before_anything_is_allocated() {
        let chunk = |choice: u32, tool: u32| -> ChatChunk {
            serde_json::from_value(json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [
                {"index": choice, "delta": {"tool_calls": [{"index": tool, "id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": null}
            ]}))
            .unwrap()
        };
        let mut assembler = CompletionAssembler::default();
        assert!(assembler.push(&chunk(0, 3)).is_ok());
        assert!(assembler.push(&chunk(0, u32::MAX)).is_err());
        assert!(assembler.push(&chunk(u32::MAX, 0)).is_err());
        assert!(assembler.push(&chunk(MAX_CHOICES, 0)).is_err());
        assert!(assembler.push(&chunk(0, MAX_TOOL_CALLS)).is_err());
        let completion = assembler.into_completion();
        assert_eq!(completion.choices.len(), 1);
        assert_eq!(
            completion.choices[0]
                .message
                .tool_calls
                .as_ref()
                .unwrap()
                .len(),
            4
        );
    }

    #[test]
    fn replayed_chunks_reassemble_to_the_same_completion() {
        let completion: ChatCompletion = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
        }))
        .unwrap();
        let mut assembler = CompletionAssembler::default();
        for c in completion.to_chunks(true) {
            assembler.push(&c).unwrap();
        }
        let again = assembler.into_completion();
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            serde_json::to_value(&completion).unwrap()
        );
    }
}
