//! HTTP plumbing shared by the HTTP providers: one pooled client per provider, timeouts on
//! connect, first byte and stream idleness, and SSE decoding.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use reqwest::{RequestBuilder, Response};

use super::{ProviderError, ProviderErrorKind};
use crate::config::Timeouts;

pub(crate) fn client(timeouts: &Timeouts) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(timeouts.connect_ms))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
}

/// A failed exchange, with the whole chain of causes for the log (reqwest's own text names the
/// URL but not why, such as a refused connection); the client only ever sees the class.
fn transport_error(error: reqwest::Error) -> ProviderError {
    let kind = if error.is_timeout() {
        ProviderErrorKind::Timeout
    } else if error.is_connect() || error.is_request() {
        ProviderErrorKind::Connection
    } else {
        ProviderErrorKind::Protocol
    };
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    ProviderError::new(kind, message)
}

/// Sends a request and waits for the response headers for at most `first_byte_ms`. A non-2xx
/// answer is turned into a `ProviderError` by `parse_error`, which reads the vendor's error body.
pub(crate) async fn send(
    request: RequestBuilder,
    timeouts: &Timeouts,
    parse_error: fn(u16, &[u8], Option<u64>) -> ProviderError,
) -> Result<Response, ProviderError> {
    let response = tokio::time::timeout(
        Duration::from_millis(timeouts.first_byte_ms),
        request.send(),
    )
    .await
    .map_err(|_| {
        ProviderError::new(
            ProviderErrorKind::Timeout,
            format!("no response headers within {} ms", timeouts.first_byte_ms),
        )
    })?
    .map_err(transport_error)?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = read_body(response, timeouts).await.unwrap_or_default();
    Err(parse_error(status.as_u16(), &body, retry_after))
}

/// Reads a whole response body within the idle timeout.
pub(crate) async fn read_body(
    response: Response,
    timeouts: &Timeouts,
) -> Result<Bytes, ProviderError> {
    tokio::time::timeout(Duration::from_millis(timeouts.idle_ms), response.bytes())
        .await
        .map_err(|_| {
            ProviderError::new(
                ProviderErrorKind::Timeout,
                format!("response body stalled for {} ms", timeouts.idle_ms),
            )
        })?
        .map_err(transport_error)
}

/// The response body as SSE events; a gap longer than `idle_ms` between events ends the stream
/// with a timeout error instead of hanging.
pub(crate) fn sse_events(
    response: Response,
    timeouts: &Timeouts,
) -> impl Stream<Item = Result<Event, ProviderError>> + Send + 'static {
    let idle = Duration::from_millis(timeouts.idle_ms);
    let events = response.bytes_stream().eventsource();
    futures_util::stream::unfold(Some(events), move |state| async move {
        let mut events = state?;
        match tokio::time::timeout(idle, events.next()).await {
            Err(_) => Some((
                Err(ProviderError::new(
                    ProviderErrorKind::Timeout,
                    format!("stream stalled: no event for {} ms", idle.as_millis()),
                )),
                None,
            )),
            Ok(None) => None,
            Ok(Some(Ok(event))) => Some((Ok(event), Some(events))),
            Ok(Some(Err(e))) => Some((
                Err(ProviderError::new(
                    ProviderErrorKind::Connection,
                    format!("stream broken: {e}"),
                )),
                None,
            )),
        }
    })
}

/// The `data` of each SSE event of the response body, as it arrived (no copy for an event with one
/// `data:` line); a gap longer than `idle_ms` between events ends the stream with a timeout error.
/// The OpenAI format needs nothing else from its events, and this spares each of them the
/// allocations and the UTF-8 pass of a general SSE parser.
pub(crate) fn sse_data(
    response: Response,
    timeouts: &Timeouts,
) -> impl Stream<Item = Result<Bytes, ProviderError>> + Send + 'static {
    let idle = Duration::from_millis(timeouts.idle_ms);
    let body = response.bytes_stream();
    futures_util::stream::unfold(
        Some((body, SseDecoder::default())),
        move |state| async move {
            let (mut body, mut decoder) = state?;
            let next = tokio::time::timeout(idle, async {
                loop {
                    if let Some(data) = decoder.next_data() {
                        return Ok(Some(data));
                    }
                    match body.next().await {
                        Some(Ok(chunk)) => decoder.push(&chunk),
                        Some(Err(e)) => return Err(e),
                        None => return Ok(None),
                    }
                }
            })
            .await;
            match next {
                Err(_) => Some((
                    Err(ProviderError::new(
                        ProviderErrorKind::Timeout,
                        format!("stream stalled: no event for {} ms", idle.as_millis()),
                    )),
                    None,
                )),
                Ok(Ok(None)) => None,
                Ok(Ok(Some(data))) => Some((Ok(data), Some((body, decoder)))),
                Ok(Err(e)) => Some((
                    Err(ProviderError::new(
                        ProviderErrorKind::Connection,
                        format!("stream broken: {e}"),
                    )),
                    None,
                )),
            }
        },
    )
}

/// Incremental SSE parsing (the WHATWG rules: LF, CR or CRLF line ends, `:` comments, one space
/// after the colon dropped, `data` lines joined by LF, an event ends at an empty line, a leading
/// BOM ignored, an unfinished event at the end of the body dropped), keeping only `data`.
#[derive(Default)]
pub(crate) struct SseDecoder {
    buffer: BytesMut,
    started: bool,
    data: Option<EventData>,
}

enum EventData {
    One(Bytes),
    Many(BytesMut),
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseDecoder {
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The data of the next complete event, if the bytes pushed so far hold one.
    pub(crate) fn next_data(&mut self) -> Option<Bytes> {
        if !self.started {
            if self.buffer.len() < BOM.len() && BOM.starts_with(&self.buffer) {
                return None;
            }
            if self.buffer.starts_with(BOM) {
                self.buffer.advance(BOM.len());
            }
            self.started = true;
        }
        loop {
            let end = self
                .buffer
                .iter()
                .position(|b| matches!(b, b'\n' | b'\r'))?;
            let terminator = match (self.buffer[end], self.buffer.get(end + 1)) {
                (b'\r', Some(b'\n')) => 2,
                // A CR at the end may be the first half of a CRLF: wait for the next byte.
                (b'\r', None) => return None,
                _ => 1,
            };
            let line = self.buffer.split_to(end).freeze();
            self.buffer.advance(terminator);
            if line.is_empty() {
                match self.data.take() {
                    Some(EventData::One(data)) => return Some(data),
                    Some(EventData::Many(data)) => return Some(data.freeze()),
                    None => continue,
                }
            }
            let (name, value) = match line.iter().position(|b| *b == b':') {
                Some(0) => continue,
                Some(colon) => {
                    let start = colon + 1 + usize::from(line.get(colon + 1) == Some(&b' '));
                    (&line[..colon], line.slice(start..))
                }
                None => (&line[..], Bytes::new()),
            };
            if name != b"data" {
                continue;
            }
            self.data = Some(match self.data.take() {
                None => EventData::One(value),
                Some(EventData::One(first)) => {
                    let mut joined = BytesMut::with_capacity(first.len() + value.len() + 1);
                    joined.extend_from_slice(&first);
                    joined.extend_from_slice(b"\n");
                    joined.extend_from_slice(&value);
                    EventData::Many(joined)
                }
                Some(EventData::Many(mut joined)) => {
                    joined.extend_from_slice(b"\n");
                    joined.extend_from_slice(&value);
                    EventData::Many(joined)
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(pieces: &[&[u8]]) -> Vec<String> {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        for piece in pieces {
            decoder.push(piece);
            while let Some(data) = decoder.next_data() {
                events.push(String::from_utf8(data.to_vec()).unwrap());
            }
        }
        events
    }

    #[test]
    fn sse_data_follows_the_event_stream_rules() {
        assert_eq!(decode(&[b"data: a\n\ndata: b\n\n"]), ["a", "b"]);
        // Split anywhere, CRLF and CR line ends, comments, other fields, no space after the colon.
        assert_eq!(
            decode(&[
                b"\xEF\xBB",
                b"\xBF: hi\r",
                b"\nevent: x\r\ndata:",
                b"a\r\r",
                b"data:  b\n\n"
            ]),
            ["a", " b"]
        );
        // Several data lines join with LF; a `data` line without a colon is an empty line of data.
        assert_eq!(decode(&[b"data: {\ndata: 1}\ndata\n\n"]), ["{\n1}\n"]);
        // An event without data is not dispatched; an unfinished one never is.
        assert_eq!(
            decode(&[b"event: ping\n\n: keepalive\n\ndata: last"]),
            Vec::<String>::new()
        );
        assert_eq!(decode(&[b"data: [DONE]\n", b"\n"]), ["[DONE]"]);
        assert_eq!(decode(&[b"data:\n\n"]), [""]);
    }
}
