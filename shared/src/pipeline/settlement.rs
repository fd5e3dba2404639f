//! Settlement: an admitted request's reservation is replaced by what it really used, off the
//! response path.

use std::sync::Arc;

use crate::api::Usage;
use crate::background::Background;
use crate::config::Price;
use crate::limits::{Limiter, Reservation, from_nano_usd, to_nano_usd};
use crate::state::Gateway;
use crate::telemetry::{METRICS, RequestTrace};
use crate::usage::{Billed, ModelUsage};

/// Holds an admitted request's reservation until its real usage is known. Settling happens off
/// the response path; a request dropped midway (client gone, error) settles what it observed.
pub(crate) struct Settlement {
    pub(crate) limiter: Arc<dyn Limiter>,
    pub(crate) background: Background,
    pub(crate) reservation: Option<Reservation>,
    /// The price and name of the model the current call is billed to.
    price: Price,
    model: String,
    pub(crate) observed: Usage,
    /// Calls that are over (a first answer that failed validation), each billed at the price of
    /// the model that served it.
    banked: Vec<ModelUsage>,
    banked_tokens: u64,
    /// The request's trace, taken when it was admitted: a stream settles after its handler
    /// has returned.
    trace: Option<Arc<RequestTrace>>,
}

/// A call's usage billed at `price` to `model`; `requests` is 1 for the call that answers.
fn billed_call(usage: &Usage, price: Price, model: &str, requests: u64) -> ModelUsage {
    ModelUsage {
        model: model.to_owned(),
        requests,
        input_tokens: usage.prompt_tokens,
        output_tokens: usage.completion_tokens,
        nano_usd: to_nano_usd(price.usage_cost_usd(usage)),
    }
}

impl Settlement {
    pub(crate) fn new(
        gateway: &Gateway,
        reservation: Reservation,
        price: Price,
        model: &str,
    ) -> Self {
        Self {
            limiter: Arc::clone(&gateway.limiter),
            background: gateway.background.clone(),
            reservation: Some(reservation),
            price,
            model: model.to_owned(),
            observed: Usage::default(),
            banked: Vec::new(),
            banked_tokens: 0,
            trace: RequestTrace::current(),
        }
    }

    /// Bills the current call (and a drop before `finish`) at `price` to `model`: the one that
    /// serves it, which a fallback may have changed.
    pub(crate) fn bill_to(&mut self, price: Price, model: &str) {
        self.price = price;
        model.clone_into(&mut self.model);
    }

    pub(crate) fn price(&self) -> Price {
        self.price
    }

    /// Bills a call that is over at its own model's price, so a later call served by another
    /// model (a retry that fell back) is billed at that one's.
    pub(crate) fn bank(&mut self, usage: Usage, price: Price, model: &str) {
        let call = billed_call(&usage, price, model, 0);
        METRICS.record_usage(
            self.trace.as_deref(),
            model,
            usage.prompt_tokens,
            usage.completion_tokens,
            from_nano_usd(call.nano_usd),
        );
        self.banked.push(call);
        self.banked_tokens += usage.total_tokens;
        self.observed = Usage::default();
    }

    /// Settles with the last call's usage, billed at `price` to `model`; returns the cost of
    /// every call of the request.
    pub(crate) fn finish(mut self, usage: Usage, price: Price, model: &str) -> f64 {
        self.bill_to(price, model);
        self.observed = usage;
        let own = price.usage_cost_usd(&usage);
        METRICS.record_usage(
            self.trace.as_deref(),
            model,
            usage.prompt_tokens,
            usage.completion_tokens,
            own,
        );
        self.settle()
    }

    /// Settles what was observed; returns the cost of every call of the request, the exact sum
    /// of what is recorded per model.
    pub(crate) fn settle(&mut self) -> f64 {
        let own = billed_call(&self.observed, self.price, &self.model, 1);
        let mut models = std::mem::take(&mut self.banked);
        // A retry answered by the model of the call before it: one line per model.
        match models.iter_mut().find(|line| line.model == own.model) {
            Some(line) => {
                line.requests += own.requests;
                line.input_tokens += own.input_tokens;
                line.output_tokens += own.output_tokens;
                line.nano_usd += own.nano_usd;
            }
            None => models.push(own),
        }
        let billed = Billed {
            tokens: self.banked_tokens + self.observed.total_tokens,
            models,
        };
        let cost = from_nano_usd(billed.nano_usd());
        if let Some(reservation) = self.reservation.take() {
            let limiter = Arc::clone(&self.limiter);
            finish_in_background(&self.background, async move {
                limiter.settle(reservation, billed).await
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::keys::KeyRecord;
    use crate::limits::{Estimate, LimitError};

    /// Keeps what each settlement reports.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Billed>>);

    #[async_trait]
    impl Limiter for Recorder {
        async fn acquire(
            &self,
            _: &KeyRecord,
            _: Estimate,
            _: u64,
        ) -> Result<Reservation, LimitError> {
            unreachable!("settlement never admits")
        }

        async fn settle(&self, _: Reservation, billed: Billed) {
            self.0.lock().unwrap().push(billed);
        }

        async fn spent_usd(&self, _: &str, _: u64) -> Result<f64, LimitError> {
            Ok(0.0)
        }
    }

    fn settlement(recorder: &Arc<Recorder>, price: Price) -> Settlement {
        let reservation = Reservation {
            key_id: "key_1".into(),
            minute: 0,
            month: 0,
            day: 0,
            tokens: 0,
            nano_usd: 0,
        };
        let limiter: Arc<dyn Limiter> = recorder.clone();
        Settlement {
            limiter,
            background: Background::default(),
            reservation: Some(reservation),
            price,
            model: "route".to_owned(),
            observed: Usage::default(),
            banked: Vec::new(),
            banked_tokens: 0,
            trace: None,
        }
    }

    fn price(input_per_mtok: f64, output_per_mtok: f64) -> Price {
        Price {
            input_per_mtok,
            output_per_mtok,
            ..Price::default()
        }
    }

    #[tokio::test]
    async fn cache_reads_and_writes_are_billed_at_the_cache_prices() {
        let recorder = Arc::new(Recorder::default());
        // 100 prompt tokens: 60 read from the cache, 30 written to it, 10 uncached.
        let usage = Usage::new(100, 10).with_cache(60, 30);
        let defaults =
            settlement(&recorder, price(1e6, 2e6)).finish(usage, price(1e6, 2e6), "cached");
        let expected = 10.0 + 0.1 * 60.0 + 1.25 * 30.0 + 2.0 * 10.0;
        assert!((defaults - expected).abs() < 1e-9, "{defaults}");
        let declared = Price {
            cache_read_per_mtok: Some(0.5e6),
            cache_write_per_mtok: Some(2e6),
            ..price(1e6, 2e6)
        };
        let cost = settlement(&recorder, declared).finish(usage, declared, "cached");
        let expected = 10.0 + 0.5 * 60.0 + 2.0 * 30.0 + 2.0 * 10.0;
        assert!((cost - expected).abs() < 1e-9, "{cost}");
    }

    #[tokio::test]
    async fn each_call_is_billed_at_the_price_of_the_model_that_served_it() {
        let recorder = Arc::new(Recorder::default());
        let mut request = settlement(&recorder, price(1e6, 1e6));
        // The first answer, from the cheap model; the retry fell back to one ten times dearer.
        request.bank(Usage::new(10, 5), price(1e6, 2e6), "cheap");
        let cost = request.finish(Usage::new(20, 4), price(1e7, 2e7), "dear");
        let first = 10.0 + 2.0 * 5.0;
        let retry = 10.0 * 20.0 + 20.0 * 4.0;
        assert!((cost - (first + retry)).abs() < 1e-9, "{cost}");
        let settled = recorder.0.lock().unwrap();
        let [billed] = settled.as_slice() else {
            panic!("{settled:?}")
        };
        assert_eq!(billed.tokens, 39);
        // Each model is recorded with what it served; the request counts for the one that
        // answered.
        let lines: Vec<(&str, u64, u64, u64, i64)> = billed
            .models
            .iter()
            .map(|m| {
                let (name, requests) = (m.model.as_str(), m.requests);
                (name, requests, m.input_tokens, m.output_tokens, m.nano_usd)
            })
            .collect();
        assert_eq!(
            lines,
            [
                ("cheap", 0, 10, 5, to_nano_usd(first)),
                ("dear", 1, 20, 4, to_nano_usd(retry))
            ]
        );
    }

    #[tokio::test]
    async fn a_request_dropped_after_a_banked_call_still_bills_it() {
        let recorder = Arc::new(Recorder::default());
        let mut request = settlement(&recorder, price(1e6, 1e6));
        request.bank(Usage::new(10, 5), price(1e6, 2e6), "cheap");
        drop(request);
        let settled = recorder.0.lock().unwrap();
        assert_eq!(settled.len(), 1);
        assert_eq!(
            (settled[0].tokens, settled[0].nano_usd()),
            (15, to_nano_usd(20.0))
        );
        // The dropped request still counts, for the model it was billed to, with nothing used.
        assert_eq!(settled[0].models[1].model, "route");
        assert_eq!(settled[0].models[1].requests, 1);
    }
}
