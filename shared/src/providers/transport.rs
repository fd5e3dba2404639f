//! HTTP plumbing shared by the HTTP providers: one pooled client per provider, timeouts on
//! connect, first byte and stream idleness, and SSE decoding.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::{RequestBuilder, Response};

use super::{ProviderError, ProviderErrorKind};
use crate::config::Timeouts;

pub(crate) fn client(timeouts: &Timeouts) -> reqwest::Result<reqwest::Client> {
    crate::tls::http_client_builder()
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
    ProviderError::new(kind, crate::error::with_causes(&error))
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

/// Most bytes of one upstream response body: a whole answer, or an embeddings list (2,048
/// vectors of 3,072 floats as JSON text is about 75 MB).
pub(crate) const MAX_RESPONSE_BYTES: usize = 128 * 1024 * 1024;

/// Most bytes of one upstream SSE event; a chunk is a few hundred bytes.
pub(crate) const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

fn too_large(what: &str, limit: usize) -> ProviderError {
    ProviderError::new(
        ProviderErrorKind::Protocol,
        format!("{what} is larger than {} MiB", limit / (1024 * 1024)),
    )
}

/// Reads a whole response body within the idle timeout, refusing one over `MAX_RESPONSE_BYTES`
/// before it is buffered.
pub(crate) async fn read_body(
    mut response: Response,
    timeouts: &Timeouts,
) -> Result<Bytes, ProviderError> {
    if response
        .content_length()
        .is_some_and(|length| length > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large("the response body", MAX_RESPONSE_BYTES));
    }
    let read = async move {
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large("the response body", MAX_RESPONSE_BYTES));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(Duration::from_millis(timeouts.idle_ms), read)
        .await
        .map_err(|_| {
            ProviderError::new(
                ProviderErrorKind::Timeout,
                format!("response body stalled for {} ms", timeouts.idle_ms),
            )
        })?
}

/// The response body as SSE events (type and data, as text); a gap longer than `idle_ms`
/// between events ends the stream with a timeout error instead of hanging.
pub(crate) fn sse_events(
    response: Response,
    timeouts: &Timeouts,
) -> impl Stream<Item = Result<(String, String), ProviderError>> + Send + 'static {
    sse_decoded(response, timeouts).map(|event| {
        let event = event?;
        let text = |bytes: Bytes| {
            String::from_utf8(bytes.to_vec()).map_err(|_| {
                ProviderError::new(ProviderErrorKind::Protocol, "a stream event is not UTF-8")
            })
        };
        let name = event.event.map(text).transpose()?.unwrap_or_default();
        Ok((name, text(event.data)?))
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
    sse_decoded(response, timeouts).map(|event| event.map(|e| e.data))
}

/// The response body's SSE events; a gap longer than `idle_ms` between events ends the stream
/// with a timeout error, and an event over `MAX_EVENT_BYTES` with a protocol error.
fn sse_decoded(
    response: Response,
    timeouts: &Timeouts,
) -> impl Stream<Item = Result<SseEvent, ProviderError>> + Send + 'static {
    let idle = Duration::from_millis(timeouts.idle_ms);
    let body = response.bytes_stream();
    futures_util::stream::unfold(
        Some((body, SseDecoder::default())),
        move |state| async move {
            let (mut body, mut decoder) = state?;
            let next = tokio::time::timeout(idle, async {
                loop {
                    if let Some(event) = decoder.next_event() {
                        return Ok(Some(event));
                    }
                    match body.next().await {
                        Some(Ok(chunk)) => decoder.push(&chunk),
                        Some(Err(e)) => {
                            return Err(ProviderError::new(
                                ProviderErrorKind::Connection,
                                format!("stream broken: {e}"),
                            ));
                        }
                        None => return Ok(None),
                    }
                    if decoder.pending_bytes() > MAX_EVENT_BYTES {
                        return Err(too_large("a stream event", MAX_EVENT_BYTES));
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
                Ok(Err(error)) => Some((Err(error), None)),
            }
        },
    )
}

/// Incremental SSE parsing (the WHATWG rules: LF, CR or CRLF line ends, `:` comments, one space
/// after the colon dropped, `data` lines joined by LF, an event ends at an empty line, a leading
/// BOM ignored, an unfinished event at the end of the body dropped), keeping `event` and `data`.
/// Written here rather than taken from `eventsource-stream`, which costs every event several
/// allocations and a UTF-8 pass, and panics on a stream that starts with a BOM.
#[derive(Default)]
pub(crate) struct SseDecoder {
    buffer: BytesMut,
    started: bool,
    event: Option<Bytes>,
    data: Option<EventData>,
}

/// One dispatched event: its type (`event:` field, if any) and its data.
pub(crate) struct SseEvent {
    pub(crate) event: Option<Bytes>,
    pub(crate) data: Bytes,
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

    /// Bytes held for the event not yet complete.
    pub(crate) fn pending_bytes(&self) -> usize {
        let data = match &self.data {
            None => 0,
            Some(EventData::One(data)) => data.len(),
            Some(EventData::Many(data)) => data.len(),
        };
        self.buffer.len() + data
    }

    /// The next complete event, if the bytes pushed so far hold one.
    pub(crate) fn next_event(&mut self) -> Option<SseEvent> {
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
            // memchr's SIMD search: this runs over every byte of every stream.
            let end = memchr::memchr2(b'\n', b'\r', &self.buffer)?;
            let terminator = match (self.buffer.get(end), self.buffer.get(end + 1)) {
                (Some(b'\r'), Some(b'\n')) => 2,
                // A CR at the end may be the first half of a CRLF: wait for the next byte.
                (Some(b'\r'), None) => return None,
                _ => 1,
            };
            let line = self.buffer.split_to(end).freeze();
            self.buffer.advance(terminator);
            if line.is_empty() {
                let event = self.event.take();
                let data = match self.data.take() {
                    Some(EventData::One(data)) => data,
                    Some(EventData::Many(data)) => data.freeze(),
                    None => continue,
                };
                return Some(SseEvent { event, data });
            }
            let (name, value) = match memchr::memchr(b':', &line) {
                Some(0) => continue,
                Some(colon) => {
                    let start = colon + 1 + usize::from(line.get(colon + 1) == Some(&b' '));
                    (line.get(..colon).unwrap_or_default(), line.slice(start..))
                }
                None => (&line[..], Bytes::new()),
            };
            if name == b"event" {
                self.event = Some(value);
                continue;
            }
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
            while let Some(event) = decoder.next_event() {
                events.push(String::from_utf8(event.data.to_vec()).unwrap());
            }
        }
        events
    }

    /// The `data` of every event `eventsource-stream` (a maintained WHATWG parser) finds in
    /// `pieces`, fed as separate chunks. (It panics on a leading BOM, so inputs here have none;
    /// the BOM has its own test.)
    fn reference(pieces: &[Vec<u8>]) -> Vec<String> {
        use eventsource_stream::Eventsource;
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> =
            pieces.iter().map(|p| Ok(Bytes::from(p.clone()))).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            futures_util::stream::iter(chunks)
                .eventsource()
                .filter_map(|event| async move { event.ok().map(|e| e.data) })
                .collect()
                .await
        })
    }

    fn line_strategy() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let value = "[ a-z:{}\"é]{0,12}";
        prop_oneof![
            value.prop_map(|v| format!("data:{v}")),
            value.prop_map(|v| format!("data: {v}")),
            Just("data".to_owned()),
            value.prop_map(|v| format!("event: {v}")),
            value.prop_map(|v| format!(": {v}")),
            value.prop_map(|v| format!("id: {v}")),
            Just(String::new()),
        ]
    }

    proptest::proptest! {
        #[test]
        fn the_decoder_agrees_with_a_maintained_sse_parser(
            lines in proptest::collection::vec(line_strategy(), 0..24),
            endings in proptest::collection::vec(0u8..3, 24),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut text: Vec<u8> = Vec::new();
            for (line, ending) in lines.iter().zip(&endings) {
                text.extend_from_slice(line.as_bytes());
                text.extend_from_slice(match ending {
                    0 => b"\n",
                    1 => b"\r\n",
                    _ => b"\r",
                });
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([text.len()]) {
                pieces.push(text[start..cut].to_vec());
                start = cut;
            }
            let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            proptest::prop_assert_eq!(decode(&slices), reference(&pieces));
        }
    }

    #[tokio::test]
    async fn a_stream_that_starts_with_a_bom_is_read_whole() {
        for pieces in [
            vec![&b"\xEF\xBB\xBFevent: message_start\ndata: {\"a\":1}\n\n"[..]],
            vec![&b"\xEF"[..], b"\xBB", b"\xBFdata: x\n", b"\n"],
        ] {
            let body: Vec<Result<Bytes, std::io::Error>> = pieces
                .iter()
                .map(|p| Ok(Bytes::copy_from_slice(p)))
                .collect();
            let response =
                http::Response::new(reqwest::Body::wrap_stream(futures_util::stream::iter(body)));
            let events: Vec<_> = sse_events(Response::from(response), &Timeouts::default())
                .collect()
                .await;
            assert_eq!(events.len(), 1, "{pieces:?}");
            let (name, data) = events.into_iter().next().unwrap().unwrap();
            assert!(name == "message_start" || name.is_empty());
            assert!(data == "{\"a\":1}" || data == "x");
        }
    }

    #[test]
    fn an_unfinished_event_counts_every_byte_held_for_it() {
        let mut decoder = SseDecoder::default();
        decoder.push(b"data: a\n\ndata: ");
        assert_eq!(decoder.next_event().unwrap().data, &b"a"[..]);
        decoder.push(&[b'x'; 1000]);
        decoder.push(b"\ndata: more");
        assert!(decoder.next_event().is_none());
        assert!(
            decoder.pending_bytes() >= 1005,
            "{}",
            decoder.pending_bytes()
        );
        decoder.push(b"\n\n");
        assert!(decoder.next_event().is_some());
        assert_eq!(decoder.pending_bytes(), 0);
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
