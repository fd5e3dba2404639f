//! The chat pipeline's SSE body read back as chat chunks, for the front ends that translate a
//! stream into another API's events (Anthropic's Messages, OpenAI's Responses).

use axum::body::Body;
use bytes::BytesMut;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::api::ChatChunk;

/// Most bytes of one pipeline SSE event held while its end has not arrived.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One event of the pipeline's stream.
pub(crate) enum PipelineEvent {
    Chunk(Box<ChatChunk>),
    /// `[DONE]`: the answer is complete.
    Done,
    /// An error event, or the stream failing: the status it stands for and what to tell the
    /// client. The last event.
    Failed {
        status: u16,
        message: String,
    },
}

impl PipelineEvent {
    fn failed(status: u16, message: &str) -> Self {
        Self::Failed {
            status,
            message: message.to_owned(),
        }
    }
}

/// The status an OpenAI error `type` in a stream stands for (a stream has no status of its own).
fn stream_error_status(error: &Value) -> u16 {
    match error.get("type").and_then(Value::as_str) {
        Some("invalid_request_error") => 400,
        Some("permission_error") => 403,
        Some("rate_limit_error") => 429,
        _ => 500,
    }
}

/// One SSE event's `data:`; `None` for an event without one (a comment, a keep-alive).
fn parse_event(event: &[u8]) -> Option<PipelineEvent> {
    let text = String::from_utf8_lossy(event);
    let data = text
        .lines()
        .find_map(|line| line.strip_prefix("data:"))?
        .trim();
    if data == "[DONE]" {
        return Some(PipelineEvent::Done);
    }
    let Ok(value) = serde_json::from_str::<Value>(data) else {
        return Some(PipelineEvent::failed(
            500,
            "The gateway produced an unreadable stream event.",
        ));
    };
    if let Some(error) = value.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("The stream failed.");
        return Some(PipelineEvent::failed(stream_error_status(error), message));
    }
    Some(match serde_json::from_value::<ChatChunk>(value) {
        Ok(chunk) => PipelineEvent::Chunk(Box::new(chunk)),
        Err(_) => PipelineEvent::failed(500, "The gateway produced an unreadable stream chunk."),
    })
}

struct Reader<S> {
    body: S,
    pending: BytesMut,
    ended: bool,
}

/// The pipeline's SSE body (OpenAI chunks, `[DONE]`, or an error event) as events, ending after
/// `Done` or the first `Failed`; a body that ends, fails or sends an event over
/// [`MAX_EVENT_BYTES`] before `[DONE]` ends with `Failed` (502). The pipeline bounds the wait for
/// each of its events by the request's deadline.
pub(crate) fn pipeline_events(body: Body) -> impl Stream<Item = PipelineEvent> + Send {
    let reader = Reader {
        body: body.into_data_stream(),
        pending: BytesMut::new(),
        ended: false,
    };
    futures_util::stream::unfold(reader, |mut reader| async move {
        if reader.ended {
            return None;
        }
        loop {
            while let Some(end) = reader.pending.windows(2).position(|w| w == b"\n\n") {
                let raw = reader.pending.split_to(end + 2);
                if let Some(event) = parse_event(&raw) {
                    reader.ended = !matches!(event, PipelineEvent::Chunk(_));
                    return Some((event, reader));
                }
            }
            let failed = match reader.body.next().await {
                Some(Ok(bytes)) if reader.pending.len() + bytes.len() <= MAX_EVENT_BYTES => {
                    reader.pending.extend_from_slice(&bytes);
                    continue;
                }
                Some(Ok(_)) => "A stream event was too large to relay.",
                Some(Err(_)) => "The stream failed.",
                None => "The stream ended before the answer was complete.",
            };
            reader.ended = true;
            return Some((PipelineEvent::failed(502, failed), reader));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn events_of(parts: &[&str]) -> Vec<String> {
        let parts: Vec<Result<bytes::Bytes, std::io::Error>> = parts
            .iter()
            .map(|part| Ok(bytes::Bytes::from(part.to_string())))
            .collect();
        let body = Body::from_stream(futures_util::stream::iter(parts));
        pipeline_events(body)
            .map(|event| match event {
                PipelineEvent::Chunk(chunk) => format!("chunk {}", chunk.id),
                PipelineEvent::Done => "done".to_owned(),
                PipelineEvent::Failed { status, message } => format!("{status} {message}"),
            })
            .collect()
            .await
    }

    const CHUNK: &str = r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[]}"#;

    #[tokio::test]
    async fn chunks_split_anywhere_are_read_whole_and_the_stream_ends_at_done() {
        let whole = format!("{CHUNK}\n\n: keep-alive\n\ndata: [DONE]\n\n{CHUNK}\n\n");
        let (a, b) = whole.split_at(17);
        assert_eq!(events_of(&[a, b]).await, ["chunk c1", "done"]);
    }

    #[tokio::test]
    async fn an_error_event_ends_the_stream_with_its_status() {
        let error = r#"data: {"error":{"message":"slow down","type":"rate_limit_error"}}"#;
        assert_eq!(
            events_of(&[&format!("{CHUNK}\n\n{error}\n\n{CHUNK}\n\n")]).await,
            ["chunk c1", "429 slow down"]
        );
    }

    #[tokio::test]
    async fn a_stream_without_done_or_with_garbage_fails() {
        assert_eq!(
            events_of(&[&format!("{CHUNK}\n\n")]).await,
            [
                "chunk c1",
                "502 The stream ended before the answer was complete."
            ]
        );
        assert_eq!(
            events_of(&["data: {not json\n\n"]).await,
            ["500 The gateway produced an unreadable stream event."]
        );
    }
}
