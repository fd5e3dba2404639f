//! Limits counted in Redis, exact across any number of gateway processes on one Redis.
//!
//! - `gw:{<key id>}:minute:<epoch minute>`: a hash of `requests` and `tokens`, expiring a minute
//!   after its window ends.
//! - `gw:{<key id>}:month:<YYYYMM>`: a hash of `committed` (spent plus in-flight reservations)
//!   and `spent`, in nano-dollars. No expiry: it is the month's spend, so Redis must persist it
//!   (`appendonly yes`), or a restart forgets what keys spent.
//!
//! One key's counters share the hash tag `{<key id>}`, so a Redis Cluster keeps them in one slot
//! and a script may touch both. Every admission is one Lua script (EVALSHA, EVAL when Redis does
//! not have it yet) that reads the counters, applies the `Plan` and reserves only when every
//! check passes, so a request refused by its budget consumes no RPM or TPM; settlement is one
//! script too. Redis unreachable: admissions fail closed (a 503), as the DynamoDB limiter does.

use std::sync::Arc;

use async_trait::async_trait;
use redis::Script;

use crate::clock::{month_of, now_secs};
use crate::keys::KeyRecord;
use crate::limits::local::{Spend, SpendSink};
use crate::limits::{BUDGET, Estimate, LimitError, Limiter, Plan, RPM, Reservation, TPM};
use crate::storage::redis::Redis;
use crate::usage::Billed;

/// Checks and reserves one admission. KEYS: the minute hash, the month hash. ARGV: the RPM limit,
/// the most tokens the minute may hold (TPM less the reservation), the tokens reserved, the
/// seconds until the minute hash expires, the most the month may have committed, the nano-dollars
/// reserved; a limit the key does not have is `-` (not a number), and the window is untouched
/// without RPM and TPM. Returns 0 when admitted, else the refusing limit: 1 RPM, 2 TPM, 3 budget.
const ADMIT: &str = r"
local rpm, tokens_left = tonumber(ARGV[1]), tonumber(ARGV[2])
local committed_at_most = tonumber(ARGV[5])
local window = rpm or tokens_left
if window then
  local counters = redis.call('HMGET', KEYS[1], 'requests', 'tokens')
  local requests, tokens = tonumber(counters[1] or 0), tonumber(counters[2] or 0)
  if rpm and requests >= rpm then return 1 end
  if tokens_left and tokens > tokens_left then return 2 end
end
if committed_at_most then
  local committed = tonumber(redis.call('HGET', KEYS[2], 'committed') or 0)
  if committed > committed_at_most then return 3 end
  redis.call('HINCRBY', KEYS[2], 'committed', ARGV[6])
end
if window then
  redis.call('HINCRBY', KEYS[1], 'requests', 1)
  redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return 0
";

/// Settles one request. KEYS: the minute hash, the month hash. ARGV: the change to the minute's
/// tokens (applied only while the minute hash exists: an ended window limits nothing and must
/// not be recreated without expiry), the change to `committed`, the nano-dollars spent.
const SETTLE: &str = r"
if ARGV[1] ~= '0' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[1])
end
if ARGV[2] ~= '0' or ARGV[3] ~= '0' then
  redis.call('HINCRBY', KEYS[2], 'committed', ARGV[2])
  redis.call('HINCRBY', KEYS[2], 'spent', ARGV[3])
end
return 0
";

fn minute_key(key_id: &str, minute: u64) -> String {
    format!("gw:{{{key_id}}}:minute:{minute}")
}

fn month_key(key_id: &str, month: u32) -> String {
    format!("gw:{{{key_id}}}:month:{month}")
}

/// Limits counted in Redis; usage per model and day is handed to `usage` (the embedded store),
/// as the in-process limiter does.
pub struct RedisLimiter {
    redis: Redis,
    admit: Script,
    settle: Script,
    usage: Option<Arc<dyn SpendSink>>,
}

impl RedisLimiter {
    pub fn new(redis: Redis, usage: Option<Arc<dyn SpendSink>>) -> Self {
        Self {
            redis,
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            usage,
        }
    }
}

/// A limit as the admission script reads it: `-` for one the key does not have.
fn limit_arg<T: ToString>(limit: Option<T>) -> String {
    limit.map_or_else(|| "-".to_owned(), |limit| limit.to_string())
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn acquire(
        &self,
        key: &KeyRecord,
        estimate: Estimate,
        now_secs: u64,
    ) -> Result<Reservation, LimitError> {
        let refused = |limit| LimitError::exceeded(limit, now_secs);
        let plan = Plan::new(key, estimate).map_err(refused)?;
        let reservation = plan.reservation(Arc::from(key.id.as_str()), now_secs);
        if plan.window.is_none() && plan.budget.is_none() {
            return Ok(reservation);
        }
        let window = plan.window.as_ref();
        let mut invocation = self.admit.prepare_invoke();
        invocation
            .key(minute_key(&key.id, reservation.minute))
            .key(month_key(&key.id, reservation.month))
            .arg(limit_arg(window.and_then(|check| check.rpm)))
            .arg(limit_arg(window.and_then(|check| check.tokens_left())))
            .arg(reservation.tokens)
            // Kept a minute past the window's end, as the DynamoDB limiter's TTL does; counted
            // from the gateway's clock, so a Redis clock that differs does not matter.
            .arg(((reservation.minute + 2) * 60).saturating_sub(now_secs))
            .arg(limit_arg(
                plan.budget
                    .as_ref()
                    .map(|budget| budget.committed_at_most()),
            ))
            .arg(reservation.nano_usd);
        let verdict: i64 = self
            .redis
            .call("admitting a request", |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await
            .map_err(LimitError::Unavailable)?;
        match verdict {
            0 => Ok(reservation),
            1 => Err(refused(RPM)),
            2 => Err(refused(TPM)),
            3 => Err(refused(BUDGET)),
            other => Err(LimitError::Unavailable(format!(
                "the admission script answered {other}"
            ))),
        }
    }

    async fn settle(&self, reservation: Reservation, billed: Billed) {
        // A window that has ended no longer limits anything: its tokens are left as they are.
        let tokens_change = reservation
            .tokens_change(billed.tokens)
            .filter(|_| now_secs() / 60 == reservation.minute)
            .unwrap_or(0);
        let spend = reservation.spend_settlement(billed.nano_usd());
        if tokens_change != 0 || spend.is_some() {
            let mut invocation = self.settle.prepare_invoke();
            invocation
                .key(minute_key(&reservation.key_id, reservation.minute))
                .key(month_key(&reservation.key_id, reservation.month))
                .arg(tokens_change)
                .arg(spend.map_or(0, |spend| spend.committed_change))
                .arg(spend.map_or(0, |spend| spend.spent));
            let settled: Result<i64, String> = self
                .redis
                .call("settling a request", |mut connection| async move {
                    invocation.invoke_async(&mut connection).await
                })
                .await;
            if let Err(error) = settled {
                tracing::error!(
                    %error,
                    key_id = %reservation.key_id,
                    "settling usage failed: the reservation stays counted"
                );
            }
        }
        if let Some(usage) = &self.usage
            && let Some(settled) = Spend::settled(&reservation, spend, billed.models)
        {
            usage.record(settled);
        }
    }

    async fn spent_usd(&self, key_id: &str, now_secs: u64) -> Result<f64, LimitError> {
        let key = month_key(key_id, month_of(now_secs));
        let spent: Option<i64> = self
            .redis
            .call("reading a key's spend", |mut connection| async move {
                redis::cmd("HGET")
                    .arg(key)
                    .arg("spent")
                    .query_async(&mut connection)
                    .await
            })
            .await
            .map_err(LimitError::Unavailable)?;
        Ok(crate::limits::from_nano_usd(spent.unwrap_or(0)))
    }
}
