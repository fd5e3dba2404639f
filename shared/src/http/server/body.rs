//! The request body's read timeout and minimum rate, checked as the handler reads the body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::BodyLimits;
use crate::error::BodyTimeout;

/// A request body with the body-read timeout and minimum rate, timed from its first read.
pub(super) struct TimedBody {
    pub(super) body: Incoming,
    pub(super) limits: BodyLimits,
    pub(super) clock: Option<BodyClock>,
}

pub(super) struct BodyClock {
    started: Instant,
    deadline: Option<Instant>,
    received: u64,
    timer: Pin<Box<Sleep>>,
}

impl BodyClock {
    pub(super) fn start(limits: &BodyLimits) -> Self {
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
    pub(super) fn poll_expired(
        &mut self,
        cx: &mut Context<'_>,
        limits: &BodyLimits,
    ) -> Option<BodyTimeout> {
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
