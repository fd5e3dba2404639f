//! The built-in deterministic model, for first runs, tests and benchmarks: answers derived from
//! the prompt, `max_tokens` honoured (one word is one token), usage reported, configurable latency
//! and streaming cadence, and embeddings in which texts sharing words are closer.

use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::{ChatProvider, ChunkStream, ProviderError, ProviderErrorKind};
use crate::api::{
    AssistantMessage, ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Delta,
    Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EmbeddingVector, FunctionCall,
    JsonObject, Role, ToolCall, Usage,
};
use crate::clock::now_secs;

const DEFAULT_DIMENSIONS: usize = 256;
const DEFAULT_MAX_WORDS: usize = 64;
/// Opens a first user message that scripts the mock's answers; see [`scripted_answer`].
const SCRIPT_PREFIX: &str = "mock-answers:";

pub struct MockProvider {
    latency: Duration,
    chunk_delay: Duration,
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
}

fn prompt_tokens(request: &ChatRequest) -> u64 {
    request
        .messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .map(|c| words(&c.text()).count() as u64)
        .sum()
}

/// What a conversation opening with `mock-answers: ["first", "second"]` scripts: the answer
/// for each turn in order (the last one repeats), counted by the assistant messages so far, so
/// that a test can make the mock answer one thing and, asked again, another.
fn scripted_answer(request: &ChatRequest) -> Option<String> {
    let first = request.messages.iter().find(|m| m.role == Role::User)?;
    let script = first.content.as_ref()?.text();
    let answers: Vec<String> =
        serde_json::from_str(script.strip_prefix(SCRIPT_PREFIX)?.trim()).ok()?;
    let turn = request
        .messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .count();
    answers.get(turn).or(answers.last()).cloned()
}

/// The answer's words: a scripted answer, or "Mock answer to: " and the last user message,
/// capped at `max_tokens`.
fn answer_words(request: &ChatRequest) -> (Vec<String>, bool) {
    if let Some(answer) = scripted_answer(request) {
        // Split on single spaces, so that the words joined again give the answer exactly.
        return (answer.split(' ').map(str::to_owned).collect(), false);
    }
    let last_user = request.last_user_text();
    let all: Vec<String> = ["Mock", "answer", "to:"]
        .into_iter()
        .chain(words(&last_user))
        .map(str::to_owned)
        .collect();
    let cap = request
        .max_output_tokens()
        .map_or(DEFAULT_MAX_WORDS.max(all.len()), |m| m as usize);
    let truncated = all.len() > cap;
    (all.into_iter().take(cap).collect(), truncated)
}

/// When the client forces a tool (`tool_choice` required or naming a function), the mock calls it
/// with empty arguments, so tool round trips can be exercised without a real model.
fn forced_tool_call(request: &ChatRequest) -> Option<ToolCall> {
    let tools = request.tools.as_ref()?;
    let choice = request.tool_choice.as_ref()?;
    let name = match choice {
        serde_json::Value::String(s) if s == "required" => {
            tools.first()?.function.as_ref()?.name.clone()
        }
        serde_json::Value::Object(o) => o.get("function")?.get("name")?.as_str()?.to_owned(),
        _ => return None,
    };
    Some(ToolCall {
        id: "call_mock_0".to_owned(),
        kind: "function".to_owned(),
        function: FunctionCall {
            name,
            arguments: "{}".to_owned(),
        },
    })
}

fn completion_id(request: &ChatRequest) -> String {
    let mut hasher = Sha256::new();
    if let Ok(bytes) = serde_json::to_vec(&request.messages) {
        hasher.update(bytes);
    }
    format!(
        "chatcmpl-mock-{}",
        hex::encode(hasher.finalize().get(..8).unwrap_or_default())
    )
}

impl MockProvider {
    pub fn new(latency: Duration, chunk_delay: Duration) -> Self {
        Self {
            latency,
            chunk_delay,
        }
    }

    async fn wait(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }
}

impl ChatProvider for MockProvider {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        self.wait().await;
        let prompt = prompt_tokens(request);
        let tool_call = forced_tool_call(request);
        let (answer, truncated) = answer_words(request);
        let (content, tool_calls, finish, completion_tokens) = match tool_call {
            Some(call) => (None, Some(vec![call]), "tool_calls", 1),
            None => (
                Some(answer.join(" ")),
                None,
                if truncated { "length" } else { "stop" },
                answer.len() as u64,
            ),
        };
        let choices = (0..request.choices())
            .map(|index| Choice {
                index,
                message: AssistantMessage {
                    role: "assistant".to_owned(),
                    content: content.clone(),
                    tool_calls: tool_calls.clone(),
                    extra: JsonObject::new(),
                },
                finish_reason: Some(finish.to_owned()),
                logprobs: None,
                extra: JsonObject::new(),
            })
            .collect();
        Ok(ChatCompletion {
            id: completion_id(request),
            object: "chat.completion".to_owned(),
            created: now_secs(),
            model: request.model.clone(),
            choices,
            usage: Some(Usage::new(
                prompt,
                completion_tokens * u64::from(request.choices()),
            )),
            extra: JsonObject::new(),
        })
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let completion = self.chat(request).await?;
        let mut chunks = Vec::new();
        for choice in &completion.choices {
            let mut first = true;
            let pieces: Vec<String> = match &choice.message.content {
                Some(text) => {
                    let n = text.split(' ').count();
                    text.split(' ')
                        .enumerate()
                        .map(|(i, w)| {
                            if i + 1 < n {
                                format!("{w} ")
                            } else {
                                w.to_owned()
                            }
                        })
                        .collect()
                }
                None => Vec::new(),
            };
            let make = |delta: Delta, finish: Option<String>| {
                ChatChunk::new(
                    &completion.id,
                    completion.created,
                    &completion.model,
                    vec![ChunkChoice {
                        index: choice.index,
                        delta,
                        finish_reason: finish,
                        logprobs: None,
                    }],
                )
            };
            for piece in pieces {
                chunks.push(make(
                    Delta {
                        role: first.then(|| "assistant".to_owned()),
                        content: Some(piece),
                        ..Delta::default()
                    },
                    None,
                ));
                first = false;
            }
            if choice.message.tool_calls.is_some() {
                // The tool call goes out whole in one chunk, as the first chunk of a replay.
                let replay = ChatCompletion {
                    choices: vec![choice.clone()],
                    usage: None,
                    ..completion.clone()
                };
                chunks.extend(replay.to_chunks(false).into_iter().take(1));
            }
            chunks.push(make(Delta::default(), choice.finish_reason.clone()));
        }
        let mut usage_chunk = ChatChunk::new(
            &completion.id,
            completion.created,
            &completion.model,
            Vec::new(),
        );
        usage_chunk.usage = completion.usage;
        chunks.push(usage_chunk);
        let delay = self.chunk_delay;
        let stream = futures_util::stream::iter(chunks).then(move |chunk| async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(chunk)
        });
        Ok(stream.boxed())
    }

    async fn embed(&self, request: &EmbeddingRequest) -> Result<EmbeddingResponse, ProviderError> {
        self.wait().await;
        let dimensions = request
            .dimensions
            .map_or(DEFAULT_DIMENSIONS, |d| d as usize);
        let texts = request
            .input
            .texts()
            .map_err(|e| ProviderError::new(ProviderErrorKind::BadRequest, e.message))?;
        let tokens: u64 = texts.iter().map(|t| words(t).count() as u64).sum();
        let data = texts
            .iter()
            .enumerate()
            .map(|(index, text)| Embedding {
                object: "embedding".to_owned(),
                index: index as u32,
                embedding: EmbeddingVector::Float(embed_text(text, dimensions)),
            })
            .collect();
        Ok(EmbeddingResponse {
            object: "list".to_owned(),
            data,
            model: request.model.clone(),
            usage: EmbeddingUsage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
        })
    }
}

/// A bag of words hashed into `dimensions` buckets with a sign, then L2-normalised: texts that
/// share words share buckets, so their cosine similarity is higher.
fn embed_text(text: &str, dimensions: usize) -> Vec<f32> {
    let mut vector = vec![0f32; dimensions];
    for word in words(text) {
        let word = word
            .trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase();
        if word.is_empty() {
            continue;
        }
        let digest = Sha256::digest(word.as_bytes());
        let bucket = u64::from_le_bytes(digest.first_chunk::<8>().copied().unwrap_or_default())
            as usize
            % dimensions;
        if let Some(slot) = vector.get_mut(bucket) {
            *slot += if digest.get(8).is_some_and(|b| b & 1 == 0) {
                1.0
            } else {
                -1.0
            };
        }
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CompletionAssembler;
    use serde_json::json;

    fn request(body: serde_json::Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[tokio::test]
    async fn answers_are_deterministic_and_honour_max_tokens() {
        let mock = MockProvider::new(Duration::ZERO, Duration::ZERO);
        let req = request(json!({"model": "mock", "max_tokens": 4,
            "messages": [{"role": "user", "content": "tell me about rust please"}]}));
        let a = mock.chat(&req).await.unwrap();
        let b = mock.chat(&req).await.unwrap();
        assert_eq!(a.choices[0].message.content, b.choices[0].message.content);
        assert_eq!(
            a.choices[0].message.content.as_deref(),
            Some("Mock answer to: tell")
        );
        assert_eq!(a.choices[0].finish_reason.as_deref(), Some("length"));
        assert_eq!(a.usage, Some(Usage::new(5, 4)));
        assert_eq!(a.id, b.id);
    }

    #[tokio::test]
    async fn stream_reassembles_to_the_plain_answer() {
        let mock = MockProvider::new(Duration::ZERO, Duration::ZERO);
        let req = request(json!({"model": "mock",
            "messages": [{"role": "user", "content": "hello streaming world"}]}));
        let plain = mock.chat(&req).await.unwrap();
        let mut stream = mock.chat_stream(&req).await.unwrap();
        let mut assembler = CompletionAssembler::default();
        while let Some(chunk) = stream.next().await {
            assembler.push(&chunk.unwrap()).unwrap();
        }
        assert!(assembler.is_finished());
        let streamed = assembler.into_completion();
        assert_eq!(
            streamed.choices[0].message.content,
            plain.choices[0].message.content
        );
        assert_eq!(streamed.usage, plain.usage);
    }

    #[tokio::test]
    async fn a_scripted_conversation_answers_each_turn_in_order() {
        let mock = MockProvider::new(Duration::ZERO, Duration::ZERO);
        let script = r#"mock-answers: ["not  json", "{\"a\": 1}"]"#;
        let first = request(json!({"model": "mock",
            "messages": [{"role": "user", "content": script}]}));
        let answer = mock.chat(&first).await.unwrap();
        assert_eq!(
            answer.choices[0].message.content.as_deref(),
            Some("not  json")
        );
        let again = request(json!({"model": "mock", "messages": [
            {"role": "user", "content": script},
            {"role": "assistant", "content": "not  json"},
            {"role": "user", "content": "try again"}]}));
        let mut stream = mock.chat_stream(&again).await.unwrap();
        let mut assembler = CompletionAssembler::default();
        while let Some(chunk) = stream.next().await {
            assembler.push(&chunk.unwrap()).unwrap();
        }
        let streamed = assembler.into_completion();
        assert_eq!(
            streamed.choices[0].message.content.as_deref(),
            Some(r#"{"a": 1}"#)
        );
    }

    #[test]
    fn embeddings_of_texts_sharing_words_are_closer() {
        let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let cat = embed_text("the cat sat on the mat", 256);
        let cat2 = embed_text("a cat sat on a mat", 256);
        let car = embed_text("quarterly revenue grew strongly", 256);
        assert!(cos(&cat, &cat2) > cos(&cat, &car));
        assert!((cos(&cat, &cat) - 1.0).abs() < 1e-5);
    }
}
