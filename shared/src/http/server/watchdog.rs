//! Each connection's watchdog: where the connection is between requests (head, busy, idle), the
//! deadline that applies to it, and the registry that caps connections and picks one to close.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Limits;

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is plain state that a panic elsewhere cannot leave half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The open connections, to cap them and to find one to close when room is needed.
pub(super) struct Registry {
    max: usize,
    open: Mutex<Open>,
    emptied: Notify,
}

#[derive(Default)]
pub(super) struct Open {
    next_id: u64,
    trackers: HashMap<u64, Arc<Tracker>>,
}

impl Open {
    /// Closes the connection that has waited longest without a request in flight.
    pub(super) fn evict_longest_waiting(&mut self) -> bool {
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
    pub(super) fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::default(),
            emptied: Notify::new(),
        }
    }

    /// A place for a new connection, made by closing a waiting one at the cap; `None` when every
    /// open connection has a request in flight.
    pub(super) fn admit(self: &Arc<Self>) -> Option<Registration> {
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

    pub(super) fn evict_longest_waiting(&self) -> bool {
        lock(&self.open).evict_longest_waiting()
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.open).trackers.len()
    }

    pub(super) async fn until_empty(&self) {
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
pub(super) struct Registration {
    pub(super) registry: Arc<Registry>,
    pub(super) id: u64,
    pub(super) tracker: Arc<Tracker>,
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
pub(super) enum Phase {
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
pub(super) enum Closed {
    HeaderTimeout,
    IdleTimeout,
    WriteStalled,
    Evicted,
}

impl Closed {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header read timeout",
            Self::IdleTimeout => "idle timeout",
            Self::WriteStalled => "write stall timeout: the client stopped reading",
            Self::Evicted => "closed to make room for a new connection",
        }
    }
}

pub(super) struct Tracker {
    phase: Mutex<Phase>,
    /// Since when a write to the client has been waiting for room in the socket, if it is.
    write_blocked_since: Mutex<Option<Instant>>,
    changed: Notify,
}

impl Tracker {
    pub(super) fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Head(Instant::now())),
            write_blocked_since: Mutex::new(None),
            changed: Notify::new(),
        }
    }

    pub(super) fn write_blocked(&self, blocked: bool) {
        *lock(&self.write_blocked_since) = blocked.then(Instant::now);
        if blocked {
            self.changed.notify_one();
        }
    }

    pub(super) fn update(&self, next: impl FnOnce(Phase) -> Phase) {
        let mut phase = lock(&self.phase);
        let new = next(*phase);
        if new != *phase {
            *phase = new;
            drop(phase);
            self.changed.notify_one();
        }
    }

    pub(super) fn on_read(&self) {
        self.update(|phase| match phase {
            Phase::Idle(_) => Phase::Head(Instant::now()),
            other => other,
        });
    }

    pub(super) fn request_started(&self) {
        self.update(|phase| match phase {
            Phase::Busy(n) => Phase::Busy(n.saturating_add(1)),
            Phase::Evicted => Phase::Evicted,
            Phase::Head(_) | Phase::Idle(_) => Phase::Busy(1),
        });
    }

    pub(super) fn request_ended(&self) {
        self.update(|phase| match phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            Phase::Busy(_) => Phase::Idle(Instant::now()),
            other => other,
        });
    }

    pub(super) fn evict(&self) {
        self.update(|_| Phase::Evicted);
    }

    pub(super) fn waiting_since(&self) -> Option<Instant> {
        match *lock(&self.phase) {
            Phase::Head(since) | Phase::Idle(since) => Some(since),
            Phase::Busy(_) | Phase::Evicted => None,
        }
    }

    /// Completes when the connection must be closed.
    pub(super) async fn expiry(&self, limits: &Limits) -> Closed {
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
pub(super) struct InFlight(Arc<Tracker>);

impl InFlight {
    pub(super) fn start(tracker: Arc<Tracker>) -> Self {
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
pub(super) struct Tracked {
    pub(super) body: Body,
    pub(super) _in_flight: InFlight,
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

/// The accepted socket, telling the watchdog when bytes arrive and when writes stall.
pub(super) struct Watched {
    pub(super) stream: TcpStream,
    pub(super) tracker: Arc<Tracker>,
    pub(super) write_blocked: bool,
}

impl Watched {
    /// Tells the tracker when a write starts or stops waiting for the client to read; only
    /// changes reach it, so a flowing response costs no lock.
    pub(super) fn note_write<T>(&mut self, result: &Poll<T>) {
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
