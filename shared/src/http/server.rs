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

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::config::ServerConfig;
use crate::error::{ApiError, BodyTimeout};
use crate::http::middleware::new_request_id;
use crate::pipeline::X_REQUEST_ID;

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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is plain state that a panic elsewhere cannot leave half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The open connections, to cap them and to find one to close when room is needed.
struct Registry {
    max: usize,
    open: Mutex<Open>,
    emptied: Notify,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    trackers: HashMap<u64, Arc<Tracker>>,
}

impl Open {
    /// Closes the connection that has waited longest without a request in flight.
    fn evict_longest_waiting(&mut self) -> bool {
        let victim = self
            .trackers
            .iter()
            .filter_map(|(id, tracker)| tracker.waiting_since().map(|since| (since, *id)))
            .min();
        match victim.and_then(|(_, id)| self.trackers.remove(&id)) {
            Some(tracker) => {
                tracker.evict();
                true
            }
            None => false,
        }
    }
}

impl Registry {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::default(),
            emptied: Notify::new(),
        }
    }

    /// A place for a new connection, made by closing a waiting one at the cap; `None` when every
    /// open connection has a request in flight.
    fn admit(self: &Arc<Self>) -> Option<Registration> {
        let mut open = lock(&self.open);
        if open.trackers.len() >= self.max && !open.evict_longest_waiting() {
            return None;
        }
        let id = open.next_id;
        open.next_id += 1;
        let tracker = Arc::new(Tracker::new());
        open.trackers.insert(id, Arc::clone(&tracker));
        Some(Registration {
            registry: Arc::clone(self),
            id,
            tracker,
        })
    }

    fn evict_longest_waiting(&self) -> bool {
        lock(&self.open).evict_longest_waiting()
    }

    fn len(&self) -> usize {
        lock(&self.open).trackers.len()
    }

    async fn until_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if lock(&self.open).trackers.is_empty() {
                return;
            }
            emptied.await;
        }
    }
}

/// A connection's place in the registry, given back when its task ends.
struct Registration {
    registry: Arc<Registry>,
    id: u64,
    tracker: Arc<Tracker>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = lock(&self.registry.open);
        open.trackers.remove(&self.id);
        if open.trackers.is_empty() {
            self.registry.emptied.notify_one();
        }
    }
}

/// Where a connection is between requests, which decides the deadline that applies to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Receiving a request head: since accept, or since the first byte after idling.
    Head(Instant),
    /// Requests being served, from their head to the end of their response.
    Busy(usize),
    /// Waiting for the next request, since the end of the last response.
    Idle(Instant),
    /// Closed to make room for a new connection.
    Evicted,
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy)]
enum Closed {
    HeaderTimeout,
    IdleTimeout,
    WriteStalled,
    Evicted,
}

impl Closed {
    fn as_str(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header read timeout",
            Self::IdleTimeout => "idle timeout",
            Self::WriteStalled => "write stall timeout: the client stopped reading",
            Self::Evicted => "closed to make room for a new connection",
        }
    }
}

struct Tracker {
    phase: Mutex<Phase>,
    /// Since when a write to the client has been waiting for room in the socket, if it is.
    write_blocked_since: Mutex<Option<Instant>>,
    changed: Notify,
}

impl Tracker {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Head(Instant::now())),
            write_blocked_since: Mutex::new(None),
            changed: Notify::new(),
        }
    }

    fn write_blocked(&self, blocked: bool) {
        *lock(&self.write_blocked_since) = blocked.then(Instant::now);
        if blocked {
            self.changed.notify_one();
        }
    }

    fn update(&self, next: impl FnOnce(Phase) -> Phase) {
        let mut phase = lock(&self.phase);
        let new = next(*phase);
        if new != *phase {
            *phase = new;
            drop(phase);
            self.changed.notify_one();
        }
    }

    fn on_read(&self) {
        self.update(|phase| match phase {
            Phase::Idle(_) => Phase::Head(Instant::now()),
            other => other,
        });
    }

    fn request_started(&self) {
        self.update(|phase| match phase {
            Phase::Busy(n) => Phase::Busy(n.saturating_add(1)),
            Phase::Evicted => Phase::Evicted,
            Phase::Head(_) | Phase::Idle(_) => Phase::Busy(1),
        });
    }

    fn request_ended(&self) {
        self.update(|phase| match phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            Phase::Busy(_) => Phase::Idle(Instant::now()),
            other => other,
        });
    }

    fn evict(&self) {
        self.update(|_| Phase::Evicted);
    }

    fn waiting_since(&self) -> Option<Instant> {
        match *lock(&self.phase) {
            Phase::Head(since) | Phase::Idle(since) => Some(since),
            Phase::Busy(_) | Phase::Evicted => None,
        }
    }

    /// Completes when the connection must be closed.
    async fn expiry(&self, limits: &Limits) -> Closed {
        loop {
            let phase = *lock(&self.phase);
            // `notify_one` keeps a permit for a change made since `phase` was read.
            let (deadline, reason) = match phase {
                Phase::Evicted => return Closed::Evicted,
                Phase::Busy(_) => {
                    let write_blocked_since = *lock(&self.write_blocked_since);
                    match write_blocked_since {
                        Some(since) => {
                            (since.checked_add(limits.write_stall), Closed::WriteStalled)
                        }
                        None => {
                            self.changed.notified().await;
                            continue;
                        }
                    }
                }
                Phase::Head(since) => {
                    (since.checked_add(limits.header_read), Closed::HeaderTimeout)
                }
                Phase::Idle(since) => (since.checked_add(limits.idle), Closed::IdleTimeout),
            };
            match deadline {
                // Only with absurd limits: the deadline is beyond the clock's range.
                None => self.changed.notified().await,
                Some(at) if at <= Instant::now() => return reason,
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// Marks a request in flight on its connection until its response body is done with.
struct InFlight(Arc<Tracker>);

impl InFlight {
    fn start(tracker: Arc<Tracker>) -> Self {
        tracker.request_started();
        Self(tracker)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that keeps its request in flight until hyper has taken all of it.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body with the body-read timeout and minimum rate, timed from its first read.
struct TimedBody {
    body: Incoming,
    limits: BodyLimits,
    clock: Option<BodyClock>,
}

struct BodyClock {
    started: Instant,
    deadline: Option<Instant>,
    received: u64,
    timer: Pin<Box<Sleep>>,
}

impl BodyClock {
    fn start(limits: &BodyLimits) -> Self {
        let started = Instant::now();
        let deadline = started.checked_add(limits.total);
        let first_check = [deadline, started.checked_add(limits.grace)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(started);
        Self {
            started,
            deadline,
            received: 0,
            timer: Box::pin(tokio::time::sleep_until(first_check)),
        }
    }

    /// The timeout, once the body is late: past the deadline, or behind the minimum rate after
    /// the grace period (the bytes so far must cover the time since then).
    fn poll_expired(&mut self, cx: &mut Context<'_>, limits: &BodyLimits) -> Option<BodyTimeout> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            if self.deadline.is_some_and(|deadline| now >= deadline) {
                return Some(BodyTimeout::Total);
            }
            let covered =
                Duration::from_millis(self.received.saturating_mul(1000) / limits.min_bytes_per_s);
            let due = limits
                .grace
                .checked_add(covered)
                .and_then(|allowed| self.started.checked_add(allowed));
            if due.is_some_and(|due| now >= due) {
                return Some(BodyTimeout::TooSlow);
            }
            // Both beyond the clock's range only with absurd limits: then there is no deadline.
            let next = [self.deadline, due].into_iter().flatten().min()?;
            self.timer.as_mut().reset(next);
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let limits = this.limits;
        let clock = this.clock.get_or_insert_with(|| BodyClock::start(&limits));
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    clock.received = clock.received.saturating_add(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match clock.poll_expired(cx, &limits) {
                Some(timeout) => Poll::Ready(Some(Err(timeout.into()))),
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The accepted socket, telling the watchdog when bytes arrive and when writes stall.
struct Watched {
    stream: TcpStream,
    tracker: Arc<Tracker>,
    write_blocked: bool,
}

impl Watched {
    /// Tells the tracker when a write starts or stops waiting for the client to read; only
    /// changes reach it, so a flowing response costs no lock.
    fn note_write<T>(&mut self, result: &Poll<T>) {
        let blocked = result.is_pending();
        if blocked != self.write_blocked {
            self.write_blocked = blocked;
            self.tracker.write_blocked(blocked);
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.tracker.on_read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.note_write(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.note_write(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
