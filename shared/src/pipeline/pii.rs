//! The PII policy of one chat request (`guard.pii` of the key and the model, the stricter wins):
//! `block` refuses a request carrying personal data; `redact` replaces it by placeholders
//! (`[EMAIL_1]`) before the provider, the cache key and the cache see it, and with
//! `restore_pii` puts the originals back into the answer, JSON or streamed; `redact_logs` lets
//! the provider see the text but keeps the answer out of the shared caches and batch files.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use futures_util::StreamExt;
use regex::Regex;
use serde_json::Value;

use crate::api::{ChatRequest, Content, Message};
use crate::config::{EffectiveGuard, PiiPolicy};
use crate::error::ApiError;
use crate::guard::pii::{self, PiiKind};
use crate::keys::KeyRecord;
use crate::state::Gateway;
use crate::telemetry::{METRICS, Metrics};

/// Most bytes of a JSON answer read back to restore placeholders (answers are capped at 16 MiB).
const MAX_RESTORED_BYTES: usize = 32 << 20;

/// Longest placeholder the stream restorer holds back: `[AWS_SECRET_` plus a count.
const MAX_PLACEHOLDER_LEN: usize = 24;

static PLACEHOLDER: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\[[A-Z]+(?:_[A-Z]+)*_[0-9]{1,6}\]").ok());

/// What the policy decided for one request, applied to retrieved context by
/// [`PiiPlan::screen_retrieved`] and to its answer by [`PiiPlan::finish`].
#[derive(Debug, Default)]
pub(crate) struct PiiPlan {
    policy: PiiPolicy,
    restore_pii: bool,
    /// The request's placeholders, so retrieved context gets the same ones as the messages.
    redactor: Redactor,
    /// Personal data was found in the messages or the retrieved context.
    found_any: bool,
}

impl PiiPlan {
    /// Whether a retrieved chunk must stay out of the prompt: under `block` one carrying personal
    /// data is dropped (the user did not write it, so the request is not refused for it).
    pub(crate) fn drops_retrieved(&self, text: &str) -> bool {
        if self.policy != PiiPolicy::Block {
            return false;
        }
        let found = pii::find(text);
        for finding in &found {
            Metrics::count(
                &METRICS.pii_findings,
                &[("kind", finding.kind.as_str()), ("action", "drop")],
            );
        }
        !found.is_empty()
    }

    /// Applies the policy to the context message built from retrieved chunks, as to a message
    /// of the client: redacted under `redact` (with the request's placeholders), and under
    /// `redact_logs` the answer stays out of the caches when it carries personal data.
    pub(crate) fn screen_retrieved(&mut self, message: &mut Message) {
        let action = match self.policy {
            PiiPolicy::Redact => "redact",
            PiiPolicy::RedactLogs => "redact_logs",
            // `block` dropped the chunks carrying personal data already.
            PiiPolicy::Off | PiiPolicy::Block => return,
        };
        for text in message_texts(&mut message.content) {
            let found = pii::find(text);
            if found.is_empty() {
                continue;
            }
            self.found_any = true;
            for finding in &found {
                Metrics::count(
                    &METRICS.pii_findings,
                    &[("kind", finding.kind.as_str()), ("action", action)],
                );
            }
            if self.policy == PiiPolicy::Redact {
                *text = self.redactor.redact(text, &found);
            }
        }
    }

    /// Personal data goes to the provider as it is: the answer stays out of shared caches.
    fn no_store(&self) -> bool {
        self.policy == PiiPolicy::RedactLogs && self.found_any
    }

    /// The headers `answer` decides the cache mode from: a bypass when the answer must not be
    /// stored.
    pub(crate) fn cache_headers<'h>(&self, headers: &'h HeaderMap) -> Cow<'h, HeaderMap> {
        if !self.no_store() {
            return Cow::Borrowed(headers);
        }
        let mut headers = headers.clone();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Cow::Owned(headers)
    }

    /// Puts the originals back into the answer, if the policy asks for it.
    pub(crate) async fn finish(self, response: Response) -> Result<Response, ApiError> {
        if !(self.policy == PiiPolicy::Redact && self.restore_pii && self.found_any) {
            return Ok(response);
        }
        let mapping = self.redactor.into_restore_map();
        let streamed = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let (mut parts, body) = response.into_parts();
        if streamed {
            let mut restorer = SseRestorer::new(mapping);
            let frames = body
                .into_data_stream()
                .map(Some)
                .chain(futures_util::stream::once(async { None }))
                .map(move |item| match item {
                    Some(Ok(bytes)) => Ok(restorer.feed(&bytes)),
                    Some(Err(error)) => Err(error),
                    None => Ok(restorer.finish()),
                });
            return Ok(Response::from_parts(parts, Body::from_stream(frames)));
        }
        let bytes = axum::body::to_bytes(body, MAX_RESTORED_BYTES)
            .await
            .map_err(|e| ApiError::internal(format!("cannot read the answer to restore: {e}")))?;
        let restored = match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut value) => {
                restore_strings(&mut value, &mapping);
                serde_json::to_vec(&value).map(Bytes::from).unwrap_or(bytes)
            }
            Err(_) => bytes,
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        Ok(Response::from_parts(parts, Body::from(restored)))
    }
}

/// Applies the key's and model's PII policy to a checked request, before the cache and the
/// provider see it.
pub(crate) fn screen(
    guard: &EffectiveGuard<'_>,
    request: &mut ChatRequest,
) -> Result<PiiPlan, ApiError> {
    let action = match guard.pii {
        PiiPolicy::Off => return Ok(PiiPlan::default()),
        PiiPolicy::RedactLogs => "redact_logs",
        PiiPolicy::Redact => "redact",
        PiiPolicy::Block => "block",
    };
    let mut redactor = Redactor::default();
    let mut found_any = false;
    for (index, message) in request.messages.iter_mut().enumerate() {
        let mut kinds: Vec<PiiKind> = Vec::new();
        for text in message_texts(&mut message.content) {
            let found = pii::find(text);
            for finding in &found {
                Metrics::count(
                    &METRICS.pii_findings,
                    &[("kind", finding.kind.as_str()), ("action", action)],
                );
                if !kinds.contains(&finding.kind) {
                    kinds.push(finding.kind);
                }
            }
            if guard.pii == PiiPolicy::Redact && !found.is_empty() {
                *text = redactor.redact(text, &found);
            }
        }
        if kinds.is_empty() {
            continue;
        }
        found_any = true;
        if guard.pii == PiiPolicy::Block {
            let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            return Err(ApiError::bad_request(format!(
                "Message {index} contains personal data ({}); this API key or model does not \
                 accept it.",
                names.join(", ")
            ))
            .with_code("pii_detected")
            .with_param("messages"));
        }
    }
    Ok(PiiPlan {
        policy: guard.pii,
        restore_pii: guard.restore_pii,
        redactor,
        found_any,
    })
}

/// A batch item's answer as the result file stores it: under `redact_logs`, with its personal
/// data replaced by placeholders (the provider saw the text; the stored file does not keep it).
pub(crate) fn redact_stored_answer(
    gateway: &Gateway,
    key: &KeyRecord,
    model: &str,
    answer: Bytes,
) -> Bytes {
    if gateway.guard_for(key, model).pii != PiiPolicy::RedactLogs {
        return answer;
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(&answer) else {
        return answer;
    };
    let mut redactor = Redactor::default();
    redact_strings(&mut value, &mut redactor);
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .unwrap_or(answer)
}

fn message_texts(content: &mut Option<Content>) -> Vec<&mut String> {
    match content {
        Some(Content::Text(text)) => vec![text],
        Some(Content::Parts(parts)) => parts.iter_mut().filter_map(|p| p.text.as_mut()).collect(),
        None => Vec::new(),
    }
}

/// Placeholders for one request: the same value always gets the same placeholder, numbered by
/// kind in order of first appearance, so identical requests redact identically (and share a
/// cache entry).
#[derive(Debug, Default)]
struct Redactor {
    by_original: HashMap<String, String>,
    per_kind: HashMap<PiiKind, usize>,
}

impl Redactor {
    fn redact(&mut self, text: &str, found: &[pii::PiiMatch]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for finding in found {
            let (Some(before), Some(original)) = (
                text.get(at..finding.range.start),
                text.get(finding.range.clone()),
            ) else {
                continue;
            };
            out.push_str(before);
            out.push_str(&self.placeholder(finding.kind, original));
            at = finding.range.end;
        }
        out.push_str(text.get(at..).unwrap_or_default());
        out
    }

    fn placeholder(&mut self, kind: PiiKind, original: &str) -> String {
        if let Some(existing) = self.by_original.get(original) {
            return existing.clone();
        }
        let count = self.per_kind.entry(kind).or_insert(0);
        *count += 1;
        let placeholder = format!("[{}_{}]", kind.placeholder_label(), count);
        self.by_original
            .insert(original.to_owned(), placeholder.clone());
        placeholder
    }

    fn into_restore_map(self) -> HashMap<String, String> {
        self.by_original
            .into_iter()
            .map(|(original, placeholder)| (placeholder, original))
            .collect()
    }
}

fn redact_strings(value: &mut Value, redactor: &mut Redactor) {
    match value {
        Value::String(text) => {
            let found = pii::find(text);
            if !found.is_empty() {
                *text = redactor.redact(text, &found);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_strings(v, redactor)),
        Value::Object(fields) => fields
            .values_mut()
            .for_each(|v| redact_strings(v, redactor)),
        _ => {}
    }
}

fn restore_text(text: &str, mapping: &HashMap<String, String>) -> String {
    let Some(placeholder) = PLACEHOLDER.as_ref() else {
        return text.to_owned();
    };
    placeholder
        .replace_all(text, |caps: &regex::Captures<'_>| {
            let found = caps.get(0).map_or("", |m| m.as_str());
            mapping
                .get(found)
                .cloned()
                .unwrap_or_else(|| found.to_owned())
        })
        .into_owned()
}

fn restore_strings(value: &mut Value, mapping: &HashMap<String, String>) {
    match value {
        Value::String(text) => *text = restore_text(text, mapping),
        Value::Array(items) => items.iter_mut().for_each(|v| restore_strings(v, mapping)),
        Value::Object(fields) => fields
            .values_mut()
            .for_each(|v| restore_strings(v, mapping)),
        _ => {}
    }
}

/// Restores placeholders in a text that arrives in pieces: a piece ending in what may be the
/// start of a placeholder (`[EMA`) is held back until the next piece decides it.
#[derive(Debug, Default)]
struct TextRestorer {
    held: String,
}

impl TextRestorer {
    fn push(&mut self, piece: &str, mapping: &HashMap<String, String>) -> String {
        self.held.push_str(piece);
        let cut = possible_placeholder_start(&self.held);
        let rest = self.held.split_off(cut);
        let ready = std::mem::replace(&mut self.held, rest);
        restore_text(&ready, mapping)
    }

    fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Where an unfinished placeholder may begin at the end of `text` (its length if none).
fn possible_placeholder_start(text: &str) -> usize {
    let Some(open) = text.rfind('[') else {
        return text.len();
    };
    let tail = text.get(open + 1..).unwrap_or_default();
    let could_continue = tail.len() < MAX_PLACEHOLDER_LEN
        && tail
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if could_continue { open } else { text.len() }
}

/// The restorers of one streamed choice: its text and each tool call's arguments.
#[derive(Debug, Default)]
struct ChoiceRestorer {
    content: TextRestorer,
    /// By the tool call's `index`.
    tool_arguments: BTreeMap<u64, TextRestorer>,
}

impl ChoiceRestorer {
    /// Restores the `function.arguments` pieces in a chunk's `delta.tool_calls`; when the choice
    /// `finished`, what every call still holds goes out too (appended to that call's piece, or
    /// as a delta of its own).
    fn tool_calls(&mut self, delta: &mut Value, mapping: &HashMap<String, String>, finished: bool) {
        let mut flushed = Vec::new();
        if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
            for call in calls.iter_mut() {
                let tool = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let Some(arguments) = call.pointer_mut("/function/arguments") else {
                    continue;
                };
                let piece = arguments.as_str().unwrap_or_default().to_owned();
                let restorer = self.tool_arguments.entry(tool).or_default();
                let mut text = restorer.push(&piece, mapping);
                if finished {
                    text.push_str(&restorer.flush());
                }
                *arguments = Value::String(text);
                flushed.push(tool);
            }
        }
        if !finished {
            return;
        }
        let held = self.flush_tool_arguments(&flushed);
        if held.is_empty() {
            return;
        }
        let Some(fields) = delta.as_object_mut() else {
            return;
        };
        let calls = fields
            .entry("tool_calls")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(calls) = calls.as_array_mut() {
            calls.extend(held);
        }
    }

    /// Deltas carrying what the tool calls other than `except` still hold.
    fn flush_tool_arguments(&mut self, except: &[u64]) -> Vec<Value> {
        self.tool_arguments
            .iter_mut()
            .filter(|(tool, _)| !except.contains(tool))
            .filter_map(|(tool, restorer)| {
                let text = restorer.flush();
                (!text.is_empty())
                    .then(|| serde_json::json!({"index": tool, "function": {"arguments": text}}))
            })
            .collect()
    }
}

/// Restores placeholders in an SSE chat stream, per choice, across chunk boundaries: in
/// `delta.content` and in `delta.tool_calls[].function.arguments`.
struct SseRestorer {
    mapping: HashMap<String, String>,
    pending: Vec<u8>,
    choices: HashMap<u64, ChoiceRestorer>,
    /// The last chunk seen: the shape of the one that carries text still held at the end.
    last_chunk: Option<Value>,
}

impl SseRestorer {
    fn new(mapping: HashMap<String, String>) -> Self {
        Self {
            mapping,
            pending: Vec::new(),
            choices: HashMap::new(),
            last_chunk: None,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Bytes {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::with_capacity(self.pending.len());
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.pending.drain(..end + 2).collect();
            self.event(&event, &mut out);
        }
        Bytes::from(out)
    }

    fn finish(&mut self) -> Bytes {
        let mut out = self.held_chunk();
        out.append(&mut self.pending);
        Bytes::from(out)
    }

    fn event(&mut self, event: &[u8], out: &mut Vec<u8>) {
        let data = std::str::from_utf8(event)
            .ok()
            .and_then(|e| e.trim_end().strip_prefix("data: "));
        let Some(data) = data else {
            out.extend_from_slice(event);
            return;
        };
        if data == "[DONE]" {
            out.append(&mut self.held_chunk());
            out.extend_from_slice(event);
            return;
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
            out.extend_from_slice(event);
            return;
        };
        if let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut) {
            for choice in choices {
                let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
                let finished = choice
                    .get("finish_reason")
                    .is_some_and(|reason| !reason.is_null());
                let restorer = self.choices.entry(index).or_default();
                let piece = choice
                    .pointer("/delta/content")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let mut text = restorer.content.push(&piece, &self.mapping);
                if finished {
                    text.push_str(&restorer.content.flush());
                }
                if let Some(delta) = choice.get_mut("delta") {
                    restorer.tool_calls(delta, &self.mapping, finished);
                }
                if let Some(content) = choice.pointer_mut("/delta/content") {
                    *content = Value::String(text);
                } else if !text.is_empty()
                    && let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut)
                {
                    delta.insert("content".into(), Value::String(text));
                }
            }
        }
        if let Ok(encoded) = serde_json::to_string(&chunk) {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(encoded.as_bytes());
            out.extend_from_slice(b"\n\n");
        }
        self.last_chunk = Some(chunk);
    }

    /// A chunk carrying the text still held back (a `[` that never became a placeholder).
    fn held_chunk(&mut self) -> Vec<u8> {
        let held: Vec<Value> = self
            .choices
            .iter_mut()
            .filter_map(|(index, restorer)| {
                let text = restorer.content.flush();
                let calls = restorer.flush_tool_arguments(&[]);
                let mut delta = serde_json::Map::new();
                if !text.is_empty() {
                    delta.insert("content".into(), Value::String(text));
                }
                if !calls.is_empty() {
                    delta.insert("tool_calls".into(), Value::Array(calls));
                }
                (!delta.is_empty()).then(|| {
                    serde_json::json!({
                        "index": index,
                        "delta": delta,
                        "finish_reason": null,
                    })
                })
            })
            .collect();
        let Some(mut chunk) = self.last_chunk.clone().filter(|_| !held.is_empty()) else {
            return Vec::new();
        };
        if let Some(fields) = chunk.as_object_mut() {
            fields.insert("choices".into(), Value::Array(held));
            fields.remove("usage");
        }
        let mut out = b"data: ".to_vec();
        out.extend_from_slice(serde_json::to_string(&chunk).unwrap_or_default().as_bytes());
        out.extend_from_slice(b"\n\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> HashMap<String, String> {
        HashMap::from([
            ("[EMAIL_1]".to_owned(), "anna@example.com".to_owned()),
            ("[CARD_12]".to_owned(), "4111 1111 1111 1111".to_owned()),
        ])
    }

    #[test]
    fn redaction_is_stable_within_a_request() {
        let mut redactor = Redactor::default();
        let text = "mail anna@example.com, bob@example.org, again anna@example.com";
        let redacted = redactor.redact(text, &pii::find(text));
        assert_eq!(redacted, "mail [EMAIL_1], [EMAIL_2], again [EMAIL_1]");
        let second = "card 4111 1111 1111 1111 from anna@example.com";
        let redacted = redactor.redact(second, &pii::find(second));
        assert_eq!(redacted, "card [CARD_1] from [EMAIL_1]");
        let restore = redactor.into_restore_map();
        assert_eq!(restore["[EMAIL_2]"], "bob@example.org");
    }

    #[test]
    fn every_split_of_a_placeholder_is_restored() {
        let text = "Write to [EMAIL_1] or pay with [CARD_12] now [x] [EMAIL_9] [";
        let expected =
            "Write to anna@example.com or pay with 4111 1111 1111 1111 now [x] [EMAIL_9] [";
        let mapping = mapping();
        for first in 0..=text.len() {
            for second in first..=text.len() {
                let mut restorer = TextRestorer::default();
                let mut out = restorer.push(&text[..first], &mapping);
                out += &restorer.push(&text[first..second], &mapping);
                out += &restorer.push(&text[second..], &mapping);
                out += &restorer.flush();
                assert_eq!(out, expected, "split at {first} and {second}");
            }
        }
    }

    #[test]
    fn a_stream_is_restored_across_chunks_and_flushed_at_the_end() {
        let chunk = |content: &str, finish: Option<&str>| {
            let value = serde_json::json!({
                "id": "c1", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
            });
            format!("data: {value}\n\n")
        };
        let stream = [
            chunk("Mail [EM", None),
            chunk("AIL_1] and [", None),
            chunk("CARD_12", None),
            chunk("] done", Some("stop")),
        ]
        .concat()
            + "data: [DONE]\n\n";
        let mut restorer = SseRestorer::new(mapping());
        // Fed in 7-byte pieces: events themselves split anywhere.
        let mut out = Vec::new();
        for piece in stream.as_bytes().chunks(7) {
            out.extend_from_slice(&restorer.feed(piece));
        }
        out.extend_from_slice(&restorer.finish());
        let text = String::from_utf8(out).unwrap();
        let contents: String = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(
            contents,
            "Mail anna@example.com and 4111 1111 1111 1111 done"
        );
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    /// The `function.arguments` of every tool call, joined per call index, from SSE text.
    fn streamed_arguments(text: &str) -> BTreeMap<u64, String> {
        let mut arguments = BTreeMap::<u64, String>::new();
        for data in text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
            let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            for call in chunk["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let piece = call["function"]["arguments"].as_str().unwrap_or_default();
                let index = call["index"].as_u64().unwrap();
                arguments.entry(index).or_default().push_str(piece);
            }
        }
        arguments
    }

    #[test]
    fn streamed_tool_call_arguments_are_restored_across_chunks() {
        let call = |index: u64, arguments: &str, finish: Option<&str>| {
            let value = serde_json::json!({
                "id": "c1", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"tool_calls": [
                    {"index": index, "function": {"arguments": arguments}}
                ]}, "finish_reason": finish}],
            });
            format!("data: {value}\n\n")
        };
        let finish =
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n";
        let stream = [
            call(0, "{\"to\":\"[EM", None),
            call(1, "{\"card\":\"[CARD_1", None),
            call(0, "AIL_1]\"}", None),
            call(1, "2]", None),
            // Held until the finish: it may still become a placeholder.
            call(1, "\"} [EMA", None),
            finish.to_owned(),
        ]
        .concat()
            + "data: [DONE]\n\n";
        let mut restorer = SseRestorer::new(mapping());
        let mut out = Vec::new();
        for piece in stream.as_bytes().chunks(5) {
            out.extend_from_slice(&restorer.feed(piece));
        }
        out.extend_from_slice(&restorer.finish());
        let text = String::from_utf8(out).unwrap();
        let arguments = streamed_arguments(&text);
        assert_eq!(arguments[&0], r#"{"to":"anna@example.com"}"#);
        assert_eq!(arguments[&1], r#"{"card":"4111 1111 1111 1111"} [EMA"#);
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn held_tool_call_arguments_are_flushed_when_the_stream_ends_without_a_finish() {
        let mut restorer = SseRestorer::new(mapping());
        let event = "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":2,\"function\":{\"arguments\":\"{\\\"a\\\":\\\"[EMAIL\"}}]},\"finish_reason\":null}]}\n\n";
        let mut out = restorer.feed(event.as_bytes()).to_vec();
        out.extend_from_slice(&restorer.feed(b"data: [DONE]\n\n"));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(streamed_arguments(&text)[&2], r#"{"a":"[EMAIL"#);
        assert!(text.ends_with("[DONE]\n\n"));
    }

    #[test]
    fn held_text_is_flushed_when_the_stream_ends_without_a_finish() {
        let mut restorer = SseRestorer::new(mapping());
        let event = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a [EMAIL\"},\"finish_reason\":null}]}\n\n";
        let first = restorer.feed(event.as_bytes());
        let last = restorer.feed(b"data: [DONE]\n\n");
        let all = String::from_utf8([first.to_vec(), last.to_vec()].concat()).unwrap();
        assert!(all.contains("\"a \"") && all.contains("[EMAIL") && all.ends_with("[DONE]\n\n"));
    }
}
