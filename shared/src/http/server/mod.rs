//! The local server (`gateway-local`): the router over HTTP/1.1 on accepted TCP connections,
//! with the connection limits `axum::serve` does not have. On Lambda, API Gateway owns the client
//! connection and none of this runs.
//!
//! - `TCP_NODELAY` on every socket: a stream is many small writes, and without it the last ones
//!   of a response on a keep-alive connection wait for the client's delayed ACK (~40 ms).
//! - A header-read timeout and, apart from it, an idle timeout. hyper's `header_read_timeout` is
//!   one deadline from the moment a connection goes idle to the end of the next request head
//!   (hyper >= 1.6, hyper#3828), so it cannot keep a pooled connection for a minute and still cut
//!   a slow head after seconds. A watchdog per connection does both instead: the idle deadline
//!   runs from the end of a response to the next request's first byte, the header deadline from
//!   that byte (or from accept) to the end of the head. hyper's own timer is off.
//! - A write-stall timeout: a response write that makes no progress for that long (a client that
//!   stopped reading while its socket buffers are full) closes the connection, so a request in
//!   flight cannot hold a connection slot, a relay and its upstream stream for ever.
//! - A body-read timeout and a minimum body rate, checked as the handler reads the body; the
//!   router answers them with 408 (`BodyTimeout`).
//! - At most `max_connections` connections. One more takes the place of the connection that has
//!   waited longest without a request in flight (idle, or still sending its head), as nginx
//!   reuses idle keep-alive connections, so idle sockets cannot lock clients out; the same
//!   happens when accept fails for lack of file descriptors. Only when every connection has a
//!   request in flight is the new one answered 503 with `Retry-After` in OpenAI's error shape,
//!   which the SDKs retry after the pause.
//! - Graceful shutdown: stop accepting, close idle connections, let requests in flight finish
//!   for at most `drain_timeout_ms`.

mod body;
mod watchdog;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::http::middleware::new_request_id;
use crate::pipeline::X_REQUEST_ID;
use body::TimedBody;
use watchdog::{InFlight, Registration, Registry, Tracked, Watched};

/// Refusals (503s) being written at once; beyond them a connection is closed unanswered, so a
/// flood of connections costs a bounded amount of work.
const REFUSAL_SLOTS: usize = 64;
/// Longest a refusal may take to read a request head and write the 503.
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// Pause after a failed accept (typically out of file descriptors) so the loop cannot spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// At most one warning per this long about refused connections, with their count.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read: Duration,
    idle: Duration,
    write_stall: Duration,
    body: BodyLimits,
    max_connections: usize,
    drain: Duration,
}

#[derive(Debug, Clone, Copy)]
struct BodyLimits {
    total: Duration,
    min_bytes_per_s: u64,
    grace: Duration,
}

impl Limits {
    fn new(config: &ServerConfig) -> Self {
        let ms = Duration::from_millis;
        Self {
            header_read: ms(config.header_read_timeout_ms),
            idle: ms(config.idle_timeout_ms),
            write_stall: ms(config.write_stall_timeout_ms),
            body: BodyLimits {
                total: ms(config.body_read_timeout_ms),
                // Validation rejects 0; `max` keeps the division below safe regardless.
                min_bytes_per_s: config.min_body_bytes_per_s.max(1),
                grace: ms(config.min_body_rate_grace_ms),
            },
            max_connections: config.max_connections,
            drain: ms(config.drain_timeout_ms),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then drains: no new connections,
/// idle ones closed, requests in flight given `drain_timeout_ms` to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let limits = Limits::new(config);
    let registry = Arc::new(Registry::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSAL_SLOTS));
    let mut refusal_log = RefusalLog::default();
    let (drain, draining) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                // Most likely out of file descriptors: closing the connection that has waited
                // longest without a request frees one for the clients that have one.
                let freed = registry.evict_longest_waiting();
                tracing::warn!(%error, closed_an_idle_connection = freed, "accept failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                }
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        match registry.admit() {
            Some(registration) => {
                tokio::spawn(serve_connection(
                    stream,
                    registration,
                    router.clone(),
                    limits,
                    draining.clone(),
                ));
            }
            None => {
                refusal_log.note(limits.max_connections);
                refuse(stream, &refusals, limits);
            }
        }
    }
    // From here the kernel refuses new connections.
    drop(listener);
    // Every connection task holds a receiver; a send only fails once all of them are gone.
    let _ = drain.send(true);
    if tokio::time::timeout(limits.drain, registry.until_empty())
        .await
        .is_err()
    {
        tracing::warn!(
            open = registry.len(),
            "drain timeout: leaving connections with requests still in flight"
        );
    }
}

/// Errors of one connection that was already gone when accepted; the next accept may succeed.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(
    stream: TcpStream,
    registration: Registration,
    router: Router,
    limits: Limits,
    mut draining: watch::Receiver<bool>,
) {
    let tracker = Arc::clone(&registration.tracker);
    let io = TokioIo::new(Watched {
        stream,
        tracker: Arc::clone(&tracker),
        write_blocked: false,
    });
    let service = service_fn(move |request: Request<Incoming>| {
        let in_flight = InFlight::start(Arc::clone(&tracker));
        let request = request.map(|body| TimedBody {
            body,
            limits: limits.body,
            clock: None,
        });
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await?;
            Ok::<_, Infallible>(response.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        }
    });
    let connection = http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut drain_started = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "client connection ended with an error");
                }
                break;
            }
            closed = registration.tracker.expiry(&limits) => {
                tracing::debug!(reason = closed.as_str(), "closing client connection");
                break;
            }
            _ = draining.wait_for(|&drain| drain), if !drain_started => {
                drain_started = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Answers a connection over the cap with one 503 and closes it.
fn refuse(stream: TcpStream, refusals: &Arc<Semaphore>, limits: Limits) {
    let Ok(permit) = Arc::clone(refusals).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let service = service_fn(|_: Request<Incoming>| {
            std::future::ready(Ok::<_, Infallible>(over_capacity()))
        });
        let connection = http1::Builder::new()
            .keep_alive(false)
            .header_read_timeout(None)
            .serve_connection(TokioIo::new(stream), service);
        let _ = tokio::time::timeout(REFUSAL_TIME.min(limits.header_read), connection).await;
    });
}

fn over_capacity() -> Response<Body> {
    let error = ApiError {
        retry_after_secs: Some(1),
        ..ApiError::unavailable(
            "The gateway is at its connection limit with a request in flight on every \
             connection; retry shortly.",
        )
    };
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), new_request_id());
    response
}

#[derive(Default)]
struct RefusalLog {
    unreported: u64,
    last: Option<Instant>,
}

impl RefusalLog {
    fn note(&mut self, max_connections: usize) {
        self.unreported += 1;
        if self.last.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
            tracing::warn!(
                max_connections,
                refused = self.unreported,
                "connection limit reached with a request in flight on every connection: \
                 answering new connections 503"
            );
            self.unreported = 0;
            self.last = Some(Instant::now());
        }
    }
}
