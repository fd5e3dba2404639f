//! Per-key limits: requests per minute, tokens per minute (reserved up front, settled on actual
//! usage) and a monthly budget in USD (estimated cost reserved up front, actual spend recorded
//! after the response). Windows are calendar minutes and calendar months in UTC, so every
//! implementation — in process or in DynamoDB — counts the same way.
//!
//! The policy is written once, here: a `Plan` says what an admission checks and reserves for a
//! key and a request, and a `Reservation` what settling it changes. `local` keeps the counters
//! in memory and `dynamo` in DynamoDB items; neither decides anything the plan does not say.

pub mod dynamo;
pub mod local;
#[cfg(feature = "redis")]
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::{day_of, month_of, secs_until_next_month};
use crate::error::ApiError;
use crate::keys::KeyRecord;
use crate::usage::Billed;

/// What a request is expected to consume, known before it runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Estimate {
    pub tokens: u64,
    pub cost_usd: f64,
}

/// USD to integer nano-dollars, the unit every limiter counts money in: sums are exact, and a
/// request costing a few micro-dollars is not rounded away. Negative and non-finite amounts
/// count as nothing.
pub fn to_nano_usd(usd: f64) -> i64 {
    // `as` saturates, and NaN.max(0.0) is 0.0.
    (usd.max(0.0) * 1e9).round() as i64
}

pub fn from_nano_usd(nano: i64) -> f64 {
    nano as f64 / 1e9
}

/// What an admission checks and reserves, worked out from a key's limits and a request's
/// estimate before any counter is read.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// RPM and TPM, against the counters of the current calendar minute; `None` for a key with
    /// neither.
    pub window: Option<WindowCheck>,
    /// The budget, against what the current calendar month has committed (spent plus in-flight
    /// reservations); `None` for a key without one.
    pub budget: Option<BudgetCheck>,
}

/// The minute-window half of an admission.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowCheck {
    pub rpm: Option<u64>,
    /// The TPM limit, with the tokens this request reserves against it.
    pub tpm: Option<(u64, u64)>,
}

/// The budget half of an admission, in nano-dollars.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetCheck {
    pub budget_nano: i64,
    pub reserve_nano: i64,
}

impl Plan {
    /// The plan, or the limit that refuses the request whatever the counters say (a zero limit,
    /// or a reservation larger than the limit): a check against empty counters would admit
    /// those. RPM is reported before TPM, and both before the budget.
    pub fn new(key: &KeyRecord, estimate: Estimate) -> Result<Self, &'static str> {
        if key.rpm == Some(0) {
            return Err(RPM);
        }
        if key.tpm.is_some_and(|tpm| estimate.tokens > tpm) {
            return Err(TPM);
        }
        let budget = match key.budget_usd.map(to_nano_usd) {
            Some(budget_nano) => {
                let reserve_nano = to_nano_usd(estimate.cost_usd);
                if budget_nano <= 0 || reserve_nano > budget_nano || estimate.cost_usd.is_nan() {
                    return Err(BUDGET);
                }
                Some(BudgetCheck {
                    budget_nano,
                    reserve_nano,
                })
            }
            None => None,
        };
        let window = (key.rpm.is_some() || key.tpm.is_some()).then(|| WindowCheck {
            rpm: key.rpm,
            tpm: key.tpm.map(|tpm| (tpm, estimate.tokens)),
        });
        Ok(Self { window, budget })
    }

    /// What an admission under this plan holds: the tokens it adds to the minute (none without
    /// TPM) and the estimate it adds to the month's committed spend (none without a budget).
    pub fn reservation(&self, key_id: Arc<str>, now_secs: u64) -> Reservation {
        Reservation {
            key_id,
            minute: now_secs / 60,
            month: month_of(now_secs),
            day: day_of(now_secs),
            tokens: self.window.as_ref().map_or(0, WindowCheck::reserved_tokens),
            nano_usd: self.budget.as_ref().map_or(0, |budget| budget.reserve_nano),
        }
    }
}

impl WindowCheck {
    pub fn reserved_tokens(&self) -> u64 {
        self.tpm.map_or(0, |(_, tokens)| tokens)
    }

    /// The most tokens the minute may already hold for this request to fit: TPM less its
    /// reservation (`Plan::new` refuses a reservation above the limit).
    pub fn tokens_left(&self) -> Option<u64> {
        self.tpm.map(|(tpm, tokens)| tpm.saturating_sub(tokens))
    }

    /// The limit that refuses this request when the minute already counts `requests` and
    /// `tokens`, if any.
    pub fn refusal(&self, requests: u64, tokens: u64) -> Option<&'static str> {
        if self.rpm.is_some_and(|rpm| requests >= rpm) {
            Some(RPM)
        } else if self.tokens_left().is_some_and(|left| tokens > left) {
            Some(TPM)
        } else {
            None
        }
    }
}

impl BudgetCheck {
    /// The most the month may already have committed for this request to fit: it must fit in
    /// what is left, so a single request cannot take a key far past its budget, and a
    /// reservation of nothing still needs a nano-dollar left, so an exhausted budget admits
    /// nothing.
    pub fn committed_at_most(&self) -> i64 {
        self.budget_nano - self.reserve_nano.max(1)
    }

    pub fn admits(&self, committed_nano: i64) -> bool {
        committed_nano <= self.committed_at_most()
    }
}

/// What an admitted request holds until it is settled.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub key_id: Arc<str>,
    pub minute: u64,
    pub month: u32,
    /// The UTC day (days since 1970-01-01) its usage is recorded under.
    pub day: u32,
    /// Tokens added to the minute's counter; 0 for a key without TPM (or admitted unchecked).
    pub tokens: u64,
    /// Nano-dollars added to the month's committed spend; 0 for a key without a budget (or
    /// admitted unchecked).
    pub nano_usd: i64,
}

/// What settling a request changes in its month's spend counters, in nano-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendSettlement {
    /// Added to committed: the reservation released, the real cost added.
    pub committed_change: i64,
    /// Added to spent.
    pub spent: i64,
}

impl Reservation {
    /// The change to the minute's token counter: the reserved tokens replaced by the used ones.
    /// `None` when nothing was reserved (no TPM to keep, or admitted unchecked; the gateway's
    /// estimates for a TPM-limited key are never 0, they include the prompt) or nothing changes.
    pub fn tokens_change(&self, used: u64) -> Option<i64> {
        if self.tokens == 0 || used == self.tokens {
            return None;
        }
        let change = i128::from(used) - i128::from(self.tokens);
        Some(i64::try_from(change).unwrap_or(if change < 0 { i64::MIN } else { i64::MAX }))
    }

    /// The change to the month's spend counters for a request that cost `spent` nano-dollars;
    /// a key without a budget still records its spend. `None` when nothing was reserved or spent.
    pub fn spend_settlement(&self, spent: i64) -> Option<SpendSettlement> {
        (self.nano_usd != 0 || spent != 0).then_some(SpendSettlement {
            committed_change: spent - self.nano_usd,
            spent,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum LimitError {
    Exceeded {
        limit: &'static str,
        retry_after_secs: u64,
    },
    Unavailable(String),
}

impl LimitError {
    /// A refusal by `limit`, with the time until its window (minute or month) ends.
    pub fn exceeded(limit: &'static str, now_secs: u64) -> Self {
        LimitError::Exceeded {
            limit,
            retry_after_secs: if limit == BUDGET {
                secs_until_next_month(now_secs)
            } else {
                60 - now_secs % 60
            },
        }
    }

    pub fn to_api_error(&self) -> ApiError {
        match self {
            LimitError::Exceeded {
                limit,
                retry_after_secs,
            } if *limit == BUDGET => ApiError::rate_limited(
                format!(
                    "Monthly budget reached: this request's estimated cost does not fit in what \
                     is left of this key's budget (a lower max_tokens or n may). Retry after \
                     {retry_after_secs} s."
                ),
                *retry_after_secs,
            )
            .with_code("budget_exceeded"),
            LimitError::Exceeded {
                limit,
                retry_after_secs,
            } => ApiError::rate_limited(
                format!("Rate limit reached: {limit}. Retry after {retry_after_secs} s."),
                *retry_after_secs,
            )
            .with_code("rate_limit_exceeded"),
            LimitError::Unavailable(reason) => ApiError::unavailable(
                "Limits cannot be checked right now, so the request was refused; try again shortly.",
            )
            .with_cause(format!("limit store unavailable: {reason}")),
        }
    }
}

pub const RPM: &str = "requests per minute";
pub const TPM: &str = "tokens per minute";
pub const BUDGET: &str = "monthly budget";

#[async_trait]
pub trait Limiter: Send + Sync {
    /// Admits the request and reserves its estimate, or says which limit refuses it.
    async fn acquire(
        &self,
        key: &KeyRecord,
        estimate: Estimate,
        now_secs: u64,
    ) -> Result<Reservation, LimitError>;

    /// Replaces the reservation with what the request really used, and records its usage per
    /// model for the reservation's day. Never fails the request: errors are logged.
    async fn settle(&self, reservation: Reservation, billed: Billed);

    /// Spend recorded this month for a key, in USD.
    async fn spent_usd(&self, key_id: &str, now_secs: u64) -> Result<f64, LimitError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key with these limits (also for the limiters' tests).
    pub(super) fn key(rpm: Option<u64>, tpm: Option<u64>, budget_usd: Option<f64>) -> KeyRecord {
        KeyRecord {
            id: "key_1".into(),
            name: "t".into(),
            rpm,
            tpm,
            budget_usd,
            ..KeyRecord::default()
        }
    }

    /// One request billed to model `m`, its tokens all input.
    pub(super) fn billed(tokens: u64, cost_usd: f64) -> Billed {
        Billed::one("m", tokens, 0, to_nano_usd(cost_usd))
    }

    pub(super) fn estimate(tokens: u64, cost_usd: f64) -> Estimate {
        Estimate { tokens, cost_usd }
    }

    #[test]
    fn money_is_counted_in_exact_nano_dollars() {
        assert_eq!(to_nano_usd(1.0), 1_000_000_000);
        // 10 tokens at $0.15 per million: too small for micro-dollars, exact in nano-dollars.
        assert_eq!(to_nano_usd(10.0 * 0.15 / 1e6), 1_500);
        assert_eq!(to_nano_usd(0.1) + to_nano_usd(0.2), to_nano_usd(0.3));
        assert_eq!(to_nano_usd(-1.0), 0);
        assert_eq!(to_nano_usd(f64::NAN), 0);
        assert_eq!(to_nano_usd(f64::INFINITY), i64::MAX);
        assert!((from_nano_usd(600_000_000) - 0.6).abs() < 1e-12);
    }

    #[test]
    fn a_key_without_limits_checks_nothing() {
        assert_eq!(
            Plan::new(&key(None, None, None), estimate(10, 1.0)),
            Ok(Plan {
                window: None,
                budget: None
            })
        );
    }

    #[test]
    fn limits_no_counter_can_satisfy_refuse_before_any_counter_is_read() {
        assert_eq!(
            Plan::new(&key(Some(0), None, None), estimate(1, 0.0)),
            Err(RPM)
        );
        assert_eq!(
            Plan::new(&key(None, Some(100), None), estimate(101, 0.0)),
            Err(TPM)
        );
        assert_eq!(
            Plan::new(&key(None, None, Some(0.0)), estimate(1, 0.0)),
            Err(BUDGET)
        );
        // An estimate beyond the whole budget (max_tokens 4294967295, n 128 on a $0.01 key).
        assert_eq!(
            Plan::new(&key(None, None, Some(0.01)), estimate(0, 220_000.0)),
            Err(BUDGET)
        );
        assert_eq!(
            Plan::new(&key(None, None, Some(0.01)), estimate(0, f64::NAN)),
            Err(BUDGET)
        );
        assert!(Plan::new(&key(None, Some(100), None), estimate(100, 0.0)).is_ok());
        assert!(Plan::new(&key(None, None, Some(0.01)), estimate(0, 0.01)).is_ok());
    }

    #[test]
    fn the_window_refuses_at_the_limit_rpm_first() {
        let check = WindowCheck {
            rpm: Some(2),
            tpm: Some((100, 80)),
        };
        assert_eq!(check.refusal(1, 20), None);
        assert_eq!(check.refusal(2, 0), Some(RPM));
        assert_eq!(check.refusal(2, 21), Some(RPM));
        assert_eq!(check.refusal(1, 21), Some(TPM));
    }

    #[test]
    fn the_budget_admits_a_reservation_that_fits_in_what_is_left() {
        let check = BudgetCheck {
            budget_nano: 1_000,
            reserve_nano: 300,
        };
        assert!(check.admits(700) && !check.admits(701));
        // Reserving nothing still needs a nano-dollar left.
        let free = BudgetCheck {
            budget_nano: 1_000,
            reserve_nano: 0,
        };
        assert!(free.admits(999) && !free.admits(1_000));
    }

    #[test]
    fn a_reservation_holds_only_what_its_plan_checks() {
        let plan = Plan::new(&key(Some(5), None, Some(1.0)), estimate(80, 0.25)).unwrap();
        let reservation = plan.reservation(Arc::from("key_1"), 1_800_000_000);
        assert_eq!(reservation.tokens, 0, "no TPM: no tokens held");
        assert_eq!(reservation.nano_usd, 250_000_000);
        assert_eq!(reservation.minute, 30_000_000);
        assert_eq!(reservation.month, month_of(1_800_000_000));
        assert_eq!(reservation.tokens_change(10), None);
        assert_eq!(
            reservation.spend_settlement(100_000_000),
            Some(SpendSettlement {
                committed_change: -150_000_000,
                spent: 100_000_000
            })
        );
        let tpm = Plan::new(&key(None, Some(100), None), estimate(80, 0.25)).unwrap();
        let reservation = tpm.reservation(Arc::from("key_1"), 0);
        assert_eq!((reservation.tokens, reservation.nano_usd), (80, 0));
        assert_eq!(reservation.tokens_change(10), Some(-70));
        assert_eq!(reservation.tokens_change(80), None);
        assert_eq!(reservation.spend_settlement(0), None);
    }

    #[test]
    fn refusals_retry_when_their_window_ends() {
        assert_eq!(
            LimitError::exceeded(RPM, 125),
            LimitError::Exceeded {
                limit: RPM,
                retry_after_secs: 55
            }
        );
        assert_eq!(
            LimitError::exceeded(BUDGET, 1_709_251_199),
            LimitError::Exceeded {
                limit: BUDGET,
                retry_after_secs: 1
            }
        );
    }
}
