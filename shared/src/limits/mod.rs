//! Per-key limits: requests per minute, tokens per minute (reserved up front, settled on actual
//! usage) and a monthly budget in USD (estimated cost reserved up front, actual spend recorded
//! after the response). Windows are calendar minutes and calendar months in UTC, so every
//! implementation — in process or in DynamoDB — counts the same way.

pub mod dynamo;
pub mod local;

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::ApiError;
use crate::keys::KeyRecord;

/// What a request is expected to consume, known before it runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Estimate {
    pub tokens: u64,
    pub cost_usd: f64,
}

/// What an admitted request holds until it is settled.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub key_id: Arc<str>,
    pub minute: u64,
    pub month: u32,
    pub tokens: u64,
    pub cost_usd: f64,
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
            LimitError::Unavailable(reason) => {
                tracing::error!(%reason, "limit store unavailable");
                ApiError::new(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "api_error",
                    "Limits cannot be checked right now, so the request was refused; try again shortly.",
                )
            }
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

    /// Replaces the reservation with what the request really used. Never fails the request:
    /// errors are logged.
    async fn settle(&self, reservation: Reservation, tokens: u64, cost_usd: f64);

    /// Spend recorded this month for a key, in USD.
    async fn spent_usd(&self, key_id: &str, now_secs: u64) -> Result<f64, LimitError>;
}
