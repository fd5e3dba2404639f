//! Settlement: an admitted request's reservation is replaced by what it really used, off the
//! response path.

use std::sync::Arc;

use crate::api::Usage;
use crate::background::Background;
use crate::config::Price;
use crate::limits::{Limiter, Reservation};
use crate::state::Gateway;
use crate::telemetry::METRICS;

/// Holds an admitted request's reservation until its real usage is known. Settling happens off
/// the response path; a request dropped midway (client gone, error) settles what it observed.
pub(crate) struct Settlement {
    pub(crate) limiter: Arc<dyn Limiter>,
    pub(crate) background: Background,
    pub(crate) reservation: Option<Reservation>,
    pub(crate) price: Price,
    pub(crate) observed: Usage,
}

impl Settlement {
    pub(crate) fn new(gateway: &Gateway, reservation: Reservation, price: Price) -> Self {
        Self {
            limiter: Arc::clone(&gateway.limiter),
            background: gateway.background.clone(),
            reservation: Some(reservation),
            price,
            observed: Usage::default(),
        }
    }

    /// Settles with the given usage, billed at `price` to `model`; returns the cost.
    pub(crate) fn finish(mut self, usage: Usage, price: Price, model: &str) -> f64 {
        self.price = price;
        self.observed = usage;
        let cost = self.settle();
        METRICS.record_usage(model, usage.prompt_tokens, usage.completion_tokens, cost);
        cost
    }

    pub(crate) fn settle(&mut self) -> f64 {
        let cost = self
            .price
            .cost_usd(self.observed.prompt_tokens, self.observed.completion_tokens);
        if let Some(reservation) = self.reservation.take() {
            let limiter = Arc::clone(&self.limiter);
            let tokens = self.observed.total_tokens;
            finish_in_background(&self.background, async move {
                limiter.settle(reservation, tokens, cost).await
            });
        }
        cost
    }
}

/// Runs work the response does not wait for: at once if it completes without waiting (the
/// in-process limiter and the embedded store always do), else in `background`. Spawning every
/// time cost a task and, on a busy runtime, a wake-up of another worker thread per request.
pub(crate) fn finish_in_background(
    background: &Background,
    work: impl Future<Output = ()> + Send + 'static,
) {
    let mut work = Box::pin(work);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    if work.as_mut().poll(&mut context).is_pending() {
        // The task polls it again at once, with a real waker.
        background.spawn(work);
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.settle();
    }
}
