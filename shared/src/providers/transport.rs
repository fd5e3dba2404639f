//! HTTP plumbing shared by the HTTP providers: one pooled client per provider, timeouts on
//! connect, first byte and stream idleness, and SSE decoding.

use std::time::Duration;

use bytes::Bytes;
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

fn transport_error(error: reqwest::Error) -> ProviderError {
    let kind = if error.is_timeout() {
        ProviderErrorKind::Timeout
    } else if error.is_connect() || error.is_request() {
        ProviderErrorKind::Connection
    } else {
        ProviderErrorKind::Protocol
    };
    ProviderError::new(kind, error.to_string())
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
