//! Generated OpenAI conversations and answers, and what the Anthropic and Bedrock translations of
//! them must keep, for the property tests of both vendors. Each vendor's tests read its own shape
//! back into [`Flat`] blocks; the expectations here are read from the OpenAI request directly, not
//! through the shared translation, so a fault there shows.

use base64::Engine;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

use super::messages::Speaker;
use crate::api::{
    ChatChunk, ChatCompletion, ChatRequest, CompletionAssembler, Content, Role, Usage,
};

/// One content block, in terms both vendors' shapes can be read back into.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Flat {
    Text(String),
    Image {
        media_type: String,
        data: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        id: String,
        text: String,
    },
}

/// What a translation must keep of a request.
#[derive(Debug)]
pub(super) struct Expected {
    /// Each system or developer message's text, in order.
    pub system: Vec<String>,
    /// Every non-empty block of the conversation, in order, with who says it.
    pub blocks: Vec<(Speaker, Flat)>,
}

pub(super) const MEDIA_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];
pub(super) const TOOL_NAMES: [&str; 3] = ["get_weather", "search", "f"];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-zA-Z0-9 ,.!?éß✓]{1,16}"]
}

fn image_url() -> impl Strategy<Value = String> {
    (
        prop::sample::select(MEDIA_TYPES.to_vec()),
        vec(any::<u8>(), 1..24),
    )
        .prop_map(|(media_type, bytes)| {
            let data = base64::engine::general_purpose::STANDARD.encode(bytes);
            format!("data:{media_type};base64,{data}")
        })
}

fn user_content() -> impl Strategy<Value = Value> {
    let part = prop_oneof![
        text().prop_map(|text| json!({"type": "text", "text": text})),
        image_url().prop_map(|url| json!({"type": "image_url", "image_url": {"url": url}})),
    ];
    prop_oneof![
        text().prop_map(Value::String),
        vec(part, 0..4).prop_map(Value::Array)
    ]
}

/// Tool arguments: objects of integers, strings, booleans, nulls and nested values (no floats,
/// whose text a round trip may legitimately change).
pub(super) fn arguments() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
        "[a-z \"\\\\é]{0,8}".prop_map(Value::String),
        Just(Value::Null),
    ];
    let value = leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(Value::Array),
            btree_map("[a-z_]{1,6}", inner, 0..3)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    });
    btree_map("[a-z_]{1,6}", value, 0..4).prop_map(|map| Value::Object(map.into_iter().collect()))
}

#[derive(Debug, Clone)]
enum Exchange {
    System {
        developer: bool,
        text: String,
    },
    User(Value),
    Assistant(String),
    /// An assistant turn calling tools, then one tool message answering each call.
    Calls {
        text: String,
        calls: Vec<(&'static str, Value, String)>,
    },
}

fn exchange() -> impl Strategy<Value = Exchange> {
    prop_oneof![
        1 => (any::<bool>(), text()).prop_map(|(developer, text)| Exchange::System { developer, text }),
        3 => user_content().prop_map(Exchange::User),
        2 => text().prop_map(Exchange::Assistant),
        2 => (
            text(),
            vec((prop::sample::select(TOOL_NAMES.to_vec()), arguments(), text()), 1..4)
        )
            .prop_map(|(text, calls)| Exchange::Calls { text, calls }),
    ]
}

fn tool_choice() -> impl Strategy<Value = Option<Value>> {
    prop::sample::select(vec![
        None,
        Some(json!("auto")),
        Some(json!("required")),
        Some(json!("none")),
        Some(json!({"type": "function", "function": {"name": "search"}})),
    ])
}

/// OpenAI chat requests: system and developer prompts, user text and images, assistant text and
/// tool calls answered by tool results, over several turns, with the three tools declared.
pub(super) fn chat_request() -> impl Strategy<Value = ChatRequest> {
    (vec(exchange(), 0..10), tool_choice()).prop_map(|(exchanges, choice)| {
        let mut messages = Vec::new();
        let mut next_id = 0;
        for exchange in exchanges {
            match exchange {
                Exchange::System { developer, text } => messages.push(json!({
                    "role": if developer { "developer" } else { "system" },
                    "content": text,
                })),
                Exchange::User(content) => {
                    messages.push(json!({"role": "user", "content": content}));
                }
                Exchange::Assistant(text) => {
                    messages.push(json!({"role": "assistant", "content": text}));
                }
                Exchange::Calls { text, calls } => {
                    let ids: Vec<String> = calls
                        .iter()
                        .map(|_| {
                            next_id += 1;
                            format!("call_{next_id}")
                        })
                        .collect();
                    let tool_calls: Vec<Value> = calls
                        .iter()
                        .zip(&ids)
                        .map(|((name, arguments, _), id)| {
                            json!({"id": id, "type": "function", "function": {
                                "name": name, "arguments": arguments.to_string()
                            }})
                        })
                        .collect();
                    messages.push(json!({"role": "assistant", "content": text, "tool_calls": tool_calls}));
                    for ((_, _, result), id) in calls.iter().zip(&ids) {
                        messages.push(json!({"role": "tool", "tool_call_id": id, "content": result}));
                    }
                }
            }
        }
        let tools: Vec<Value> = TOOL_NAMES
            .iter()
            .map(|name| json!({"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}))
            .collect();
        let mut body = json!({"model": "m", "messages": messages, "tools": tools});
        if let Some(choice) = choice {
            body["tool_choice"] = choice;
        }
        serde_json::from_value(body).unwrap()
    })
}

/// What the request says, read message by message.
pub(super) fn expected(request: &ChatRequest) -> Expected {
    let mut system = Vec::new();
    let mut blocks = Vec::new();
    let content_blocks =
        |content: &Option<Content>, speaker, blocks: &mut Vec<(Speaker, Flat)>| match content {
            Some(Content::Text(text)) if !text.is_empty() => {
                blocks.push((speaker, Flat::Text(text.clone())));
            }
            Some(Content::Parts(parts)) => {
                for part in parts {
                    if let Some(image) = &part.image_url {
                        let (media_type, data) = image
                            .url
                            .strip_prefix("data:")
                            .unwrap()
                            .split_once(";base64,")
                            .unwrap();
                        blocks.push((
                            speaker,
                            Flat::Image {
                                media_type: media_type.to_owned(),
                                data: data.to_owned(),
                            },
                        ));
                    } else if let Some(text) = part.text.as_ref().filter(|t| !t.is_empty()) {
                        blocks.push((speaker, Flat::Text(text.clone())));
                    }
                }
            }
            _ => {}
        };
    for message in &request.messages {
        match message.role {
            Role::System | Role::Developer => {
                system.push(message.content.as_ref().unwrap().text());
            }
            Role::User => content_blocks(&message.content, Speaker::User, &mut blocks),
            Role::Assistant => {
                content_blocks(&message.content, Speaker::Assistant, &mut blocks);
                for call in message.tool_calls.iter().flatten() {
                    blocks.push((
                        Speaker::Assistant,
                        Flat::ToolUse {
                            id: call.id.clone(),
                            name: call.function.name.clone(),
                            input: serde_json::from_str(&call.function.arguments).unwrap(),
                        },
                    ));
                }
            }
            Role::Tool | Role::Function => blocks.push((
                Speaker::User,
                Flat::ToolResult {
                    id: message.tool_call_id.clone().unwrap(),
                    text: message.content.as_ref().unwrap().text(),
                },
            )),
        }
    }
    Expected { system, blocks }
}

/// The vendor's turns keep every block in order with its speaker, never hold an empty turn,
/// alternate speakers, and send each tool result in the turn right after the assistant turn
/// that made the call.
pub(super) fn check_turns(
    turns: &[(Speaker, Vec<Flat>)],
    expected: &Expected,
) -> Result<(), TestCaseError> {
    let flat: Vec<(Speaker, Flat)> = turns
        .iter()
        .flat_map(|(speaker, blocks)| blocks.iter().map(|b| (*speaker, b.clone())))
        .collect();
    prop_assert_eq!(&flat, &expected.blocks);
    prop_assert!(turns.iter().all(|(_, blocks)| !blocks.is_empty()));
    for pair in turns.windows(2) {
        prop_assert_ne!(pair[0].0, pair[1].0, "speakers must alternate");
    }
    for (index, (_, blocks)) in turns.iter().enumerate() {
        for block in blocks {
            if let Flat::ToolResult { id, .. } = block {
                let previous = index.checked_sub(1).map(|i| &turns[i]);
                let answered = previous.is_some_and(|(speaker, blocks)| {
                    *speaker == Speaker::Assistant
                        && blocks
                            .iter()
                            .any(|b| matches!(b, Flat::ToolUse { id: used, .. } if used == id))
                });
                prop_assert!(
                    answered,
                    "tool result {} answers no call of the turn before",
                    id
                );
            }
        }
    }
    Ok(())
}

/// One block of a generated answer, with the pieces a stream sends it in.
#[derive(Debug, Clone)]
pub(super) enum ReplyBlock {
    Text(Vec<String>),
    ToolUse {
        id: String,
        name: String,
        input: Value,
        /// The input's JSON text, cut where the stream cuts it.
        pieces: Vec<String>,
    },
}

/// A generated answer and its usage.
#[derive(Debug, Clone)]
pub(super) struct GeneratedReply {
    pub blocks: Vec<ReplyBlock>,
    pub input_tokens: u32,
    pub cache_read_tokens: u32,
    pub cache_write_tokens: u32,
    pub output_tokens: u32,
}

impl GeneratedReply {
    pub(super) fn text(&self) -> String {
        self.blocks
            .iter()
            .filter_map(|b| match b {
                ReplyBlock::Text(pieces) => Some(pieces.concat()),
                ReplyBlock::ToolUse { .. } => None,
            })
            .collect()
    }

    pub(super) fn usage(&self) -> Usage {
        Usage::new(
            u64::from(self.input_tokens)
                + u64::from(self.cache_read_tokens)
                + u64::from(self.cache_write_tokens),
            u64::from(self.output_tokens),
        )
        .with_cache(
            u64::from(self.cache_read_tokens),
            u64::from(self.cache_write_tokens),
        )
    }
}

/// `text` cut at the given character positions.
fn cut(text: &str, cuts: &[usize]) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut positions: Vec<usize> = cuts.iter().map(|c| c % (chars.len() + 1)).collect();
    positions.push(chars.len());
    positions.sort_unstable();
    positions.dedup();
    let mut start = 0;
    let mut pieces = Vec::new();
    for end in positions {
        pieces.push(chars[start..end].iter().collect());
        start = end;
    }
    pieces
}

fn reply_block() -> impl Strategy<Value = ReplyBlock> {
    prop_oneof![
        vec("[a-zA-Z0-9 ,.é✓]{0,8}", 1..4).prop_map(ReplyBlock::Text),
        (
            "[a-z0-9_]{1,10}",
            prop::sample::select(TOOL_NAMES.to_vec()),
            arguments(),
            vec(any::<usize>(), 0..4)
        )
            .prop_map(|(id, name, input, cuts)| ReplyBlock::ToolUse {
                id: format!("toolu_{id}"),
                name: name.to_owned(),
                pieces: cut(&input.to_string(), &cuts),
                input,
            }),
    ]
}

pub(super) fn reply() -> impl Strategy<Value = GeneratedReply> {
    (
        vec(reply_block(), 0..5),
        0..1_000_000u32,
        0..1_000_000u32,
        0..1_000_000u32,
        0..1_000_000u32,
    )
        .prop_map(
            |(blocks, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens)| {
                GeneratedReply {
                    blocks,
                    input_tokens,
                    cache_read_tokens,
                    cache_write_tokens,
                    output_tokens,
                }
            },
        )
}

/// The completion carries the answer's text, its tool calls in order with their arguments, the
/// finish reason and the usage.
pub(super) fn check_completion(
    completion: &ChatCompletion,
    reply: &GeneratedReply,
    finish_reason: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(completion.choices.len(), 1);
    let choice = &completion.choices[0];
    let text = reply.text();
    prop_assert_eq!(choice.message.content.clone().unwrap_or_default(), text);
    let calls: Vec<(String, String, Value)> = choice
        .message
        .tool_calls
        .iter()
        .flatten()
        .map(|c| {
            let arguments = serde_json::from_str(&c.function.arguments).unwrap();
            (c.id.clone(), c.function.name.clone(), arguments)
        })
        .collect();
    let expected: Vec<(String, String, Value)> = reply
        .blocks
        .iter()
        .filter_map(|b| match b {
            ReplyBlock::ToolUse {
                id, name, input, ..
            } => Some((id.clone(), name.clone(), input.clone())),
            ReplyBlock::Text(_) => None,
        })
        .collect();
    prop_assert_eq!(calls, expected);
    prop_assert_eq!(choice.finish_reason.as_deref(), Some(finish_reason));
    prop_assert_eq!(completion.usage, Some(reply.usage()));
    Ok(())
}

/// Streamed tool-call arguments are the pieces sent, joined, byte for byte.
pub(super) fn check_streamed_arguments(
    completion: &ChatCompletion,
    reply: &GeneratedReply,
) -> Result<(), TestCaseError> {
    let sent: Vec<String> = completion.choices[0]
        .message
        .tool_calls
        .iter()
        .flatten()
        .map(|c| c.function.arguments.clone())
        .collect();
    let expected: Vec<String> = reply
        .blocks
        .iter()
        .filter_map(|b| match b {
            ReplyBlock::ToolUse { pieces, .. } => Some(pieces.concat()),
            ReplyBlock::Text(_) => None,
        })
        .collect();
    prop_assert_eq!(sent, expected);
    Ok(())
}

/// The completion a client reassembles from the chunks; the stream must end with its usage.
pub(super) fn assemble(chunks: &[ChatChunk]) -> Result<ChatCompletion, TestCaseError> {
    let mut assembler = CompletionAssembler::default();
    for chunk in chunks {
        assembler.push(chunk).unwrap();
    }
    prop_assert!(assembler.is_finished());
    prop_assert!(
        chunks
            .last()
            .is_some_and(|c| c.choices.is_empty() && c.usage.is_some())
    );
    Ok(assembler.into_completion())
}
