//! Retrieval-augmented chat around the chat pipeline: before it, retrieve for the last user
//! message, drop poisoned chunks and insert the context message; after it, report the sources
//! in the `x-gateway-sources` header and in the answer (a top-level `sources` member, or for a
//! stream one last chunk with no choices before `[DONE]`, which the OpenAI SDKs parse as they
//! parse the usage chunk).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderName, header};
use axum::response::Response;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use super::guard::Screening;
use super::pii::PiiPlan;
use super::retrieve::retrieve;
use super::set_header;
use super::sse::{SSE_DONE, sse_data};
use crate::api::ChatRequest;
use crate::error::ApiError;
use crate::guard::InjectionPolicy;
use crate::keys::KeyRecord;
use crate::rag::{
    Passage, RagSpec, Source, build_context, insert_before_last_user, sources_header,
};
use crate::state::Gateway;
use crate::telemetry::{METRICS, Metrics};
use crate::vectors::MetadataFilter;

/// Why a retrieved chunk was dropped under the PII policy `block` (in its source's `dropped`).
const PERSONAL_DATA: &str = "personal_data";

/// Longest a RAG request waits for its retrieval (embedding the question and the vector query).
const RETRIEVAL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a RAG request carries past retrieval: what its cache key must hold and what its answer
/// reports.
pub(crate) struct Augmented {
    /// `rag::cache_context`: collection, version and chunk ids.
    pub(crate) cache_context: Value,
    pub(crate) sources: Vec<Source>,
}

/// The retrieval a request asks for: its `rag` field (taken out of the request: providers must
/// not see it), else the binding of the model it names.
pub(crate) fn spec(
    gateway: &Gateway,
    request: &mut ChatRequest,
) -> Result<Option<RagSpec>, ApiError> {
    match request.extra.remove("rag") {
        Some(Value::Null) | None => {
            Ok(gateway
                .rag_bindings
                .get(&request.model)
                .map(|binding| RagSpec {
                    collection: binding.collection.clone(),
                    top_k: binding.top_k as usize,
                    filter: None,
                }))
        }
        Some(field) => RagSpec::from_request(&field).map(Some),
    }
}

/// Retrieves for the last user message, drops chunks the guard flags (logged, counted and noted
/// in `screening` for the answer's header) unless the injection policy is `off`, and puts the
/// kept ones in one context message right before that message.
pub(crate) async fn augment(
    gateway: &Gateway,
    key: &KeyRecord,
    request: &mut ChatRequest,
    spec: RagSpec,
    screening: &mut Screening,
    pii: &mut PiiPlan,
    invocation_deadline: Option<tokio::time::Instant>,
) -> Result<Augmented, ApiError> {
    let filter = spec
        .filter
        .as_ref()
        .map(MetadataFilter::parse)
        .transpose()
        .map_err(|e| {
            ApiError::bad_request(format!("`rag.filter` is not valid: {e}"))
                .with_param("rag.filter")
        })?;
    let question = request.last_user_text();
    if question.trim().is_empty() {
        return Err(ApiError::bad_request(
            "A `rag` request needs a last user message with text to retrieve for.",
        )
        .with_param("messages"));
    }
    let timeout = tokio::time::Instant::now() + RETRIEVAL_TIMEOUT;
    let deadline = invocation_deadline.map_or(timeout, |at| at.min(timeout));
    let retrieval = retrieve(
        gateway,
        key,
        &spec.collection,
        &question,
        spec.top_k,
        filter.as_ref(),
        deadline,
    )
    .await?;
    let passages: Vec<Passage<'_>> = retrieval
        .chunks
        .iter()
        .map(|chunk| Passage {
            document_id: &chunk.document_id,
            chunk_id: &chunk.chunk_id,
            score: chunk.score,
            text: &chunk.text,
        })
        .collect();
    let scan = screening.injection != InjectionPolicy::Off;
    let context = build_context(&retrieval.collection, &passages, |text| {
        let injection = scan
            .then(|| crate::guard::scan_untrusted(text).first().map(|f| f.rule))
            .flatten();
        injection.or_else(|| pii.drops_retrieved(text).then_some(PERSONAL_DATA))
    });
    for source in context.dropped() {
        let rule = source.dropped.unwrap_or_default();
        tracing::warn!(
            collection = %retrieval.collection,
            document_id = %source.document_id,
            chunk_id = %source.chunk_id,
            rule,
            "retrieved chunk dropped from the prompt"
        );
        Metrics::count(&METRICS.rag_dropped_chunks, &[("rule", rule)]);
        if rule == PERSONAL_DATA {
            continue;
        }
        Metrics::count(
            &METRICS.guard_findings,
            &[("source", "retrieved"), ("rule", rule), ("action", "drop")],
        );
        screening.note(rule);
    }
    let cache_context = crate::rag::cache_context(
        &retrieval.collection,
        retrieval.collection_version,
        &context.sources,
    );
    if let Some(mut message) = context.message {
        pii.screen_retrieved(&mut message);
        insert_before_last_user(&mut request.messages, message);
    }
    Ok(Augmented {
        cache_context,
        sources: context.sources,
    })
}

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
