//! Limits counted in process, exact under concurrency within one process; spend is persisted in
//! the embedded store and reloaded at start-up.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::clock::month_of;
use crate::keys::KeyRecord;
use crate::limits::{
    BUDGET, Estimate, LimitError, Limiter, Plan, Reservation, SpendSettlement, from_nano_usd,
    to_nano_usd,
};
use crate::storage::embedded::{EmbeddedStore, Write};
use crate::usage::{Billed, ModelUsage};

/// Where an in-process limiter persists spend; the embedded store implements it.
/// Spend of one key in one month, in nano-dollars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spend {
    pub key_id: String,
    pub month: u32,
    pub nano_usd: i64,
    /// The day its usage is recorded under, and the usage per model.
    pub day: u32,
    pub usage: Vec<ModelUsage>,
}

impl Spend {
    /// What a settled reservation records: its key, month and day, the spend (`None` when
    /// nothing was spent) and the usage per model. `None` when no model was billed.
    pub fn settled(
        reservation: &Reservation,
        spend: Option<SpendSettlement>,
        usage: Vec<ModelUsage>,
    ) -> Option<Self> {
        (!usage.is_empty()).then(|| Self {
            key_id: reservation.key_id.to_string(),
            month: reservation.month,
            nano_usd: spend.map_or(0, |spend| spend.spent),
            day: reservation.day,
            usage,
        })
    }
}

tokio::task_local! {
    /// Set by the batch worker around one item: spend a `SpendSink` would record in the
    /// background is collected here instead, to be committed in the same transaction as the
    /// item's result (`BatchStore::record_result_with_spend`), so a killed process never keeps
    /// one without the other.
    pub static ITEM_SPEND: RefCell<Vec<Spend>>;
}

/// Records spend in the item's collection when the batch worker set one; gives it back
/// otherwise.
pub fn collect_item_spend(spend: Spend) -> Option<Spend> {
    let mut spend = Some(spend);
    let collected = ITEM_SPEND.try_with(|collection| {
        if let Some(spend) = spend.take() {
            collection.borrow_mut().push(spend);
        }
    });
    if collected.is_ok() { None } else { spend }
}

pub trait SpendSink: Send + Sync {
    /// Records a request's spend and usage without waiting for it to reach disk.
    fn record(&self, spend: Spend);
}

/// One key's counters: the current minute's, and the current month's in nano-dollars, as the
/// DynamoDB limiter keeps them in its items.
#[derive(Default)]
struct KeyWindow {
    minute: u64,
    requests: u64,
    tokens: u64,
    month: u32,
    /// Spent plus in-flight reservations.
    committed_nano: i64,
    spent_nano: i64,
}

/// Limits kept in memory, exact under concurrency within one process: one short critical section
/// per admission, and spend handed to a sink that writes it off the request path.
pub struct LocalLimiter {
    windows: Mutex<HashMap<Arc<str>, KeyWindow>>,
    spend: Option<Arc<dyn SpendSink>>,
    /// Spend recorded before this process started, per (key, month).
    spent_before: HashMap<(String, u32), i64>,
}

impl LocalLimiter {
    /// `spent_before` is in USD, as the embedded store sums it; rounding to nano-dollars takes
    /// away the error of summing binary fractions.
    pub fn new(
        spend: Option<Arc<dyn SpendSink>>,
        spent_before: HashMap<(String, u32), f64>,
    ) -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
            spend,
            spent_before: spent_before
                .into_iter()
                .map(|(key, usd)| (key, to_nano_usd(usd)))
                .collect(),
        }
    }

    fn prior_spend(&self, key_id: &str, month: u32) -> i64 {
        self.spent_before
            .get(&(key_id.to_owned(), month))
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl Limiter for LocalLimiter {
    async fn acquire(
        &self,
        key: &KeyRecord,
        estimate: Estimate,
        now_secs: u64,
    ) -> Result<Reservation, LimitError> {
        let refused = |limit| LimitError::exceeded(limit, now_secs);
        let plan = Plan::new(key, estimate).map_err(refused)?;
        let mut windows = self
            .windows
            .lock()
            .map_err(|_| LimitError::Unavailable("limiter lock poisoned".into()))?;
        let key_id: Arc<str> = match windows.get_key_value(key.id.as_str()) {
            Some((id, _)) => Arc::clone(id),
            None => Arc::from(key.id.as_str()),
        };
        let reservation = plan.reservation(Arc::clone(&key_id), now_secs);
        let window = windows.entry(key_id).or_default();
        if window.minute != reservation.minute {
            window.minute = reservation.minute;
            window.requests = 0;
            window.tokens = 0;
        }
        if window.month != reservation.month {
            window.month = reservation.month;
            window.spent_nano = self.prior_spend(&key.id, reservation.month);
            window.committed_nano = window.spent_nano;
        }
        if let Some(limit) = plan
            .window
            .as_ref()
            .and_then(|check| check.refusal(window.requests, window.tokens))
        {
            return Err(refused(limit));
        }
        if plan
            .budget
            .as_ref()
            .is_some_and(|check| !check.admits(window.committed_nano))
        {
            return Err(refused(BUDGET));
        }
        window.requests += 1;
        window.tokens += reservation.tokens;
        window.committed_nano += reservation.nano_usd;
        Ok(reservation)
    }

    async fn settle(&self, reservation: Reservation, billed: Billed) {
        let tokens = billed.tokens;
        let spend = reservation.spend_settlement(billed.nano_usd());
        if let Ok(mut windows) = self.windows.lock()
            && let Some(window) = windows.get_mut(&reservation.key_id)
        {
            // A window that has ended no longer limits anything.
            if window.minute == reservation.minute
                && let Some(change) = reservation.tokens_change(tokens)
            {
                window.tokens = window.tokens.saturating_add_signed(change);
            }
            if window.month == reservation.month
                && let Some(spend) = spend
            {
                window.committed_nano += spend.committed_change;
                window.spent_nano += spend.spent;
            }
        }
        if let Some(sink) = &self.spend
            && let Some(settled) = Spend::settled(&reservation, spend, billed.models)
        {
            sink.record(settled);
        }
    }

    async fn spent_usd(&self, key_id: &str, now_secs: u64) -> Result<f64, LimitError> {
        let month = month_of(now_secs);
        let windows = self
            .windows
            .lock()
            .map_err(|_| LimitError::Unavailable("limiter lock poisoned".into()))?;
        Ok(from_nano_usd(match windows.get(key_id) {
            Some(window) if window.month == month => window.spent_nano,
            _ => self.prior_spend(key_id, month),
        }))
    }
}

/// Spend goes to the embedded store's `spend` table, in USD as its column always held it.
impl SpendSink for EmbeddedStore {
    fn record(&self, spend: Spend) {
        if let Some(spend) = collect_item_spend(spend) {
            self.send(Write::Spend {
                key_id: spend.key_id,
                month: spend.month,
                usd: from_nano_usd(spend.nano_usd),
                day: spend.day,
                usage: spend.usage,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{day_of, now_secs, secs_until_next_month};
    use crate::limits::RPM;
    use crate::limits::tests::{billed, key};
    use crate::storage::embedded::test_dir;
    use crate::usage::{UsageQuery, UsageStore};

    #[test]
    fn months_are_utc_calendar_months() {
        assert_eq!(month_of(0), 197001);
        // 2024-02-29T23:59:59Z, a leap day.
        assert_eq!(month_of(1_709_251_199), 202402);
        assert_eq!(secs_until_next_month(1_709_251_199), 1);
        // 2026-12-31T00:00:00Z: a day to the new year.
        assert_eq!(month_of(1_798_675_200), 202612);
        assert_eq!(secs_until_next_month(1_798_675_200), 86_400);
    }

    #[tokio::test]
    async fn rpm_admits_exactly_the_limit_under_concurrency() {
        let limiter = Arc::new(LocalLimiter::new(None, HashMap::new()));
        let k = Arc::new(key(Some(50), None, None));
        let tasks: Vec<_> = (0..500)
            .map(|_| {
                let (limiter, k) = (Arc::clone(&limiter), Arc::clone(&k));
                tokio::spawn(async move { limiter.acquire(&k, Estimate::default(), 120).await })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => admitted += 1,
                Err(LimitError::Exceeded {
                    limit,
                    retry_after_secs,
                }) => {
                    assert_eq!(limit, RPM);
                    assert_eq!(retry_after_secs, 60);
                }
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(admitted, 50);
        // A new minute opens a new window.
        assert!(limiter.acquire(&k, Estimate::default(), 180).await.is_ok());
    }

    #[tokio::test]
    async fn tpm_reserves_then_settles_to_actual_usage() {
        let limiter = LocalLimiter::new(None, HashMap::new());
        let k = key(None, Some(100), None);
        let big = Estimate {
            tokens: 80,
            cost_usd: 0.0,
        };
        let first = limiter.acquire(&k, big, 0).await.unwrap();
        assert!(limiter.acquire(&k, big, 1).await.is_err());
        // It used 10 of the 80 it reserved: the rest goes back to the window.
        limiter.settle(first, billed(10, 0.0)).await;
        assert!(limiter.acquire(&k, big, 2).await.is_ok());
    }

    fn refused_by_budget(result: Result<Reservation, LimitError>) -> bool {
        matches!(result, Err(LimitError::Exceeded { limit: BUDGET, .. }))
    }

    #[tokio::test]
    async fn budget_admits_only_requests_whose_estimate_fits_in_what_is_left() {
        let limiter = LocalLimiter::new(None, HashMap::new());
        let k = key(None, None, Some(1.0));
        let est = |cost_usd| Estimate {
            tokens: 0,
            cost_usd,
        };
        // An estimate beyond the whole budget is refused on a fresh key, and reserves nothing.
        assert!(refused_by_budget(
            limiter.acquire(&k, est(220_000.0), 0).await
        ));
        assert!(refused_by_budget(
            limiter.acquire(&k, est(f64::NAN), 0).await
        ));
        let a = limiter.acquire(&k, est(0.4), 0).await.unwrap();
        let b = limiter.acquire(&k, est(0.4), 0).await.unwrap();
        // 0.8 is reserved while those run: 0.4 more does not fit, 0.15 does.
        assert!(refused_by_budget(limiter.acquire(&k, est(0.4), 0).await));
        let c = limiter.acquire(&k, est(0.15), 0).await.unwrap();
        limiter.settle(a, billed(0, 0.3)).await;
        limiter.settle(b, billed(0, 0.3)).await;
        limiter.settle(c, billed(0, 0.0)).await;
        assert!((limiter.spent_usd("key_1", 0).await.unwrap() - 0.6).abs() < 1e-9);
        // 0.4 is left: an estimate of exactly that fits.
        let d = limiter.acquire(&k, est(0.4), 0).await.unwrap();
        limiter.settle(d, billed(0, 0.4)).await;
        // Nothing is left: even a request estimated at nothing is refused.
        assert!(refused_by_budget(limiter.acquire(&k, est(0.0), 0).await));
    }

    #[test]
    fn spend_is_written_in_the_background() {
        let dir = test_dir("spend");
        let store = EmbeddedStore::open(&dir).unwrap();
        let spend = |nano_usd| Spend {
            key_id: "key_1".into(),
            month: month_of(now_secs()),
            nano_usd,
            day: day_of(now_secs()),
            usage: vec![ModelUsage {
                model: "m".into(),
                requests: 1,
                input_tokens: 3,
                output_tokens: 2,
                nano_usd,
            }],
        };
        store.record(spend(250_000_000));
        store.record(spend(500_000_000));
        store.flush();
        let spent = store.spend_this_month().unwrap();
        assert!((spent[&("key_1".to_owned(), month_of(now_secs()))] - 0.75).abs() < 1e-9);
        let today = day_of(now_secs());
        let query = UsageQuery {
            key_id: None,
            from: today,
            to: today,
        };
        let rows = futures_util::FutureExt::now_or_never(store.usage(&query))
            .unwrap()
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].requests,
                rows[0].input_tokens,
                rows[0].output_tokens
            ),
            (2, 6, 4)
        );
        assert_eq!(rows[0].cost_nano_usd, 750_000_000);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_budget_admits_exactly_what_it_pays_for() {
        // $0.06 is exactly 20 requests at $0.003; summed as f64 dollars the 20th looked over.
        let limiter = LocalLimiter::new(None, HashMap::new());
        let k = key(None, None, Some(0.06));
        let request = Estimate {
            tokens: 0,
            cost_usd: 0.003,
        };
        for n in 1..=20 {
            let reservation = limiter
                .acquire(&k, request, 0)
                .await
                .unwrap_or_else(|e| panic!("request {n} refused: {e:?}"));
            limiter.settle(reservation, billed(0, 0.003)).await;
        }
        assert!(refused_by_budget(limiter.acquire(&k, request, 0).await));
        assert_eq!(limiter.spent_usd("key_1", 0).await.unwrap(), 0.06);
    }

    #[tokio::test]
    async fn spend_from_before_a_restart_counts() {
        let prior = HashMap::from([(("key_1".to_owned(), month_of(0)), 5.0)]);
        let limiter = LocalLimiter::new(None, prior);
        let k = key(None, None, Some(5.0));
        assert!(limiter.acquire(&k, Estimate::default(), 0).await.is_err());
    }
}
