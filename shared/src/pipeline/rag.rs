//! Retrieval-augmented chat around the chat pipeline: before it, retrieve for the last user
//! message, drop poisoned chunks and insert the context message; after it, report the sources
//! in the `x-gateway-sources` header and in the answer (a top-level `sources` member, or for a
//! stream one last chunk with no choices before `[DONE]`, which the OpenAI SDKs parse as they
//! parse the usage chunk).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderName, header};
use axum::response::Response;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use super::set_header;
use super::sse::{SSE_DONE, sse_data};
use crate::error::ApiError;
use crate::rag::{Source, sources_header};

pub(crate) static X_GATEWAY_SOURCES: HeaderName = HeaderName::from_static("x-gateway-sources");

/// Most bytes of a buffered answer the gateway re-reads to add its sources (the answer is
/// already in memory; this bounds the copy).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Adds the sources to an answer: the header always, and the body's `sources` member (JSON) or
/// a last chunk carrying them (SSE). Error answers pass through with the header only.
pub(crate) async fn attach_sources(
    response: Response,
    sources: Vec<Source>,
) -> Result<Response, ApiError> {
    let mut response = response;
    set_header(&mut response, &X_GATEWAY_SOURCES, &sources_header(&sources));
    if !response.status().is_success() {
        return Ok(response);
    }
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let (mut parts, body) = response.into_parts();
    let body = if is_stream {
        sources_before_done(body, Arc::new(sources))
    } else {
        let bytes = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| ApiError::internal(format!("cannot read the answer back: {e}")))?;
        let mut answer: serde_json::Map<String, Value> = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::internal(format!("the answer is not a JSON object: {e}")))?;
        answer.insert("sources".to_owned(), sources_json(&sources));
        let bytes = serde_json::to_vec(&answer)
            .map_err(|e| ApiError::internal(format!("cannot encode the answer: {e}")))?;
        parts.headers.remove(header::CONTENT_LENGTH);
        Body::from(bytes)
    };
    Ok(Response::from_parts(parts, body))
}

fn sources_json(sources: &[Source]) -> Value {
    serde_json::to_value(sources).unwrap_or(Value::Array(Vec::new()))
}

/// What the sources chunk copies from the stream's first chunk, so it reads as part of it.
#[derive(Debug, Default, Deserialize)]
struct StreamHead {
    #[serde(default)]
    id: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    model: String,
}

impl StreamHead {
    /// The first `data:` event of a frame, if it is a chunk.
    fn of(frame: &[u8]) -> Option<Self> {
        let event = frame.strip_prefix(b"data: ")?;
        let end = event
            .windows(2)
            .position(|w| w == b"\n\n")
            .unwrap_or(event.len());
        serde_json::from_slice(event.get(..end)?).ok()
    }
}

/// The stream with one more chunk, `{"choices": [], "sources": [...]}`, right before `[DONE]`
/// (always the end of the last frame). A stream that breaks has no `[DONE]` and no sources.
fn sources_before_done(body: Body, sources: Arc<Vec<Source>>) -> Body {
    let mut head: Option<StreamHead> = None;
    let frames = body.into_data_stream().map(move |frame| {
        let frame = frame?;
        if head.is_none() {
            head = StreamHead::of(&frame);
        }
        if !frame.ends_with(SSE_DONE) {
            return Ok::<Bytes, axum::Error>(frame);
        }
        let before = frame.slice(..frame.len().saturating_sub(SSE_DONE.len()));
        let head = head.take().unwrap_or_default();
        let chunk = serde_json::json!({
            "id": head.id,
            "object": "chat.completion.chunk",
            "created": head.created,
            "model": head.model,
            "choices": [],
            "sources": sources_json(&sources),
        });
        let mut out = Vec::with_capacity(before.len() + 256 + SSE_DONE.len());
        out.extend_from_slice(&before);
        out.extend_from_slice(&sse_data(&chunk));
        out.extend_from_slice(SSE_DONE);
        Ok(Bytes::from(out))
    });
    Body::from_stream(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::json_response;
    use crate::pipeline::sse::sse_response;
    use axum::http::StatusCode;

    fn sources() -> Vec<Source> {
        vec![
            Source {
                document_id: "guide".into(),
                chunk_id: "guide#0".into(),
                score: 0.75,
                dropped: None,
            },
            Source {
                document_id: "evil".into(),
                chunk_id: "evil#0".into(),
                score: 0.5,
                dropped: Some("instruction_override"),
            },
        ]
    }

    async fn body_text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_json_answer_gets_a_sources_member_and_the_header() {
        let answer = json_response(
            StatusCode::OK,
            Bytes::from_static(br#"{"id":"c1","object":"chat.completion","choices":[]}"#),
        );
        let response = attach_sources(answer, sources()).await.unwrap();
        assert_eq!(
            response.headers()["x-gateway-sources"],
            "guide#guide%230;0.7500"
        );
        let body: Value = serde_json::from_str(&body_text(response).await).unwrap();
        assert_eq!(body["id"], "c1");
        assert_eq!(body["sources"][0]["chunk_id"], "guide#0");
        assert_eq!(body["sources"][1]["dropped"], "instruction_override");
        assert!(body["sources"][0].get("dropped").is_none());
    }

    #[tokio::test]
    async fn a_stream_gets_a_sources_chunk_right_before_done() {
        let frames: Vec<Result<Bytes, std::convert::Infallible>> = vec![
            Ok(Bytes::from_static(
                b"data: {\"id\":\"s1\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
            )),
            Ok(Bytes::from_static(
                b"data: {\"id\":\"s1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
            )),
        ];
        let stream = sse_response(Body::from_stream(futures_util::stream::iter(frames)));
        let text = body_text(attach_sources(stream, sources()).await.unwrap()).await;
        let events: Vec<&str> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap())
            .collect();
        assert_eq!(events.len(), 4, "{text}");
        assert_eq!(events[3], "[DONE]");
        let last: Value = serde_json::from_str(events[2]).unwrap();
        assert_eq!(last["id"], "s1");
        assert_eq!(last["model"], "m");
        assert_eq!(last["choices"], serde_json::json!([]));
        assert_eq!(last["sources"][0]["document_id"], "guide");
    }
}
