//! Limits counted in DynamoDB (the limits table), exact across any number of processes.
//!
//! - `pk = "key#<key id>"`, `sk = "minute#<epoch minute>"`: `requests` (N), `tokens` (N),
//!   `expires_at` (the end of the next minute).
//! - `pk = "key#<key id>"`, `sk = "month#<YYYYMM>"`: `committed_nano_usd` (N, spent plus
//!   in-flight reservations), `spent_nano_usd` (N). Month items carry no `expires_at`: they are
//!   the spend history.
//!
//! Exactness: every admission is one conditional write. RPM and TPM share the minute item
//! (`ADD requests :one, tokens :t` on condition `requests < :rpm AND tokens <= :tpm - :t`); the
//! budget keeps `committed = spent + in-flight reservations` in one attribute, because a condition
//! cannot add two attributes (`ADD committed :estimate` on condition `committed <= :budget_left`,
//! `budget - estimate` worked out here: a request must fit in what is left of the budget). A key
//! with both writes the two items in one transaction, so a request refused by its budget does not
//! consume RPM or TPM. Money is counted in integer nano-dollars, so `ADD` is exact and a cheap
//! request (a few micro-dollars) is not rounded away. Writes that meet a transaction in progress
//! are retried (the SDK does not). One key's minute item is a single item, so a single key is
//! admitted at most at DynamoDB's per-item write rate (about 1 000 a second): sharding it would
//! give up exactness.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};

use crate::clock::{month_of, now_secs, secs_until_next_month};
use crate::keys::KeyRecord;
use crate::limits::{BUDGET, Estimate, LimitError, Limiter, RPM, Reservation, TPM};
use crate::storage::dynamo::{
    DynamoConfig, EXPIRES_AT, FailurePolicy, PK, Rejection, SK, WriteError, condition_failed, n,
    number_attr, raced, rejection, retry_on_conflict, s, sdk_message,
};

const REQUESTS: &str = "requests";
const TOKENS: &str = "tokens";
const COMMITTED: &str = "committed_nano_usd";
const SPENT: &str = "spent_nano_usd";

fn limits_pk(key_id: &str) -> String {
    format!("key#{key_id}")
}

fn minute_sk(minute: u64) -> String {
    format!("minute#{minute}")
}

fn month_sk(month: u32) -> String {
    format!("month#{month}")
}

/// USD to integer nano-dollars; negative and non-finite amounts count as nothing.
fn to_nano_usd(usd: f64) -> i64 {
    // `as` saturates, and NaN.max(0.0) is 0.0.
    (usd.max(0.0) * 1e9).round() as i64
}

fn from_nano_usd(nano: i64) -> f64 {
    nano as f64 / 1e9
}

/// The minute-window half of an admission (RPM, TPM), on the `minute#` item.
#[derive(Debug, Clone, PartialEq)]
struct WindowCheck {
    rpm: Option<u64>,
    /// With the tokens to reserve.
    tpm: Option<(u64, u64)>,
}

impl WindowCheck {
    fn reserved_tokens(&self) -> u64 {
        self.tpm.map_or(0, |(_, tokens)| tokens)
    }

    fn update(&self, minute: u64) -> CounterUpdate {
        let mut update = CounterUpdate::new(minute_sk(minute));
        update.name("#requests", REQUESTS);
        update.name("#expires_at", EXPIRES_AT);
        update.value(":one", n(1));
        // Kept a minute past the window's end, then deleted by TTL.
        update.value(":expires_at", n((minute + 2) * 60));
        let mut add = "ADD #requests :one".to_owned();
        let mut conditions = Vec::new();
        if let Some(rpm) = self.rpm {
            conditions.push("(attribute_not_exists(#requests) OR #requests < :rpm)");
            update.value(":rpm", n(rpm));
        }
        if let Some((tpm, tokens)) = self.tpm {
            add.push_str(", #tokens :tokens");
            conditions.push("(attribute_not_exists(#tokens) OR #tokens <= :tpm_left)");
            update.name("#tokens", TOKENS);
            update.value(":tokens", n(tokens));
            // `Plan::new` refuses a reservation larger than the limit, so this cannot underflow.
            update.value(":tpm_left", n(tpm.saturating_sub(tokens)));
        }
        update.expression = format!("{add} SET #expires_at = :expires_at");
        update.condition = Some(conditions.join(" AND "));
        update
    }

    /// Which limit refused, from the item as it was when the condition failed.
    fn refusal(&self, old: Option<&HashMap<String, AttributeValue>>) -> &'static str {
        let requests = old.and_then(|item| number_attr::<u64>(item, REQUESTS));
        let over_rpm = self.rpm.is_some_and(|rpm| requests.unwrap_or(0) >= rpm);
        if over_rpm || self.tpm.is_none() {
            RPM
        } else {
            TPM
        }
    }
}

/// The budget half of an admission, on the `month#` item.
#[derive(Debug, Clone, PartialEq)]
struct BudgetCheck {
    budget_nano: i64,
    reserve_nano: i64,
}

impl BudgetCheck {
    fn update(&self, month: u32) -> CounterUpdate {
        let mut update = CounterUpdate::new(month_sk(month));
        update.name("#committed", COMMITTED);
        update.value(":reserve", n(self.reserve_nano));
        // A condition cannot add, so `committed + reserve <= budget` is checked as `committed <=
        // budget - reserve`; a reservation of nothing still needs a nano-dollar left, so that
        // an exhausted budget admits nothing. `Plan::new` refuses a reservation above the
        // budget, so this is never negative.
        update.value(
            ":budget_left",
            n(self.budget_nano - self.reserve_nano.max(1)),
        );
        update.expression = "ADD #committed :reserve".to_owned();
        update.condition =
            Some("attribute_not_exists(#committed) OR #committed <= :budget_left".to_owned());
        update
    }
}

/// What an admission writes, worked out from the key's limits before any call.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    window: Option<WindowCheck>,
    budget: Option<BudgetCheck>,
}

impl Plan {
    /// The plan, or the limit that refuses the request whatever the counters say (a zero
    /// limit, or a reservation larger than the limit): conditions on absent counters would
    /// admit those.
    fn new(key: &KeyRecord, estimate: Estimate) -> Result<Self, &'static str> {
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
}

/// One update of a limits-table item, sent alone (UpdateItem) or in a transaction.
#[derive(Debug, Clone, PartialEq)]
struct CounterUpdate {
    sk: String,
    expression: String,
    condition: Option<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl CounterUpdate {
    fn new(sk: String) -> Self {
        Self {
            sk,
            expression: String::new(),
            condition: None,
            names: HashMap::new(),
            values: HashMap::new(),
        }
    }

    fn name(&mut self, placeholder: &str, attribute: &str) {
        self.names
            .insert(placeholder.to_owned(), attribute.to_owned());
    }

    fn value(&mut self, placeholder: &str, value: AttributeValue) {
        self.values.insert(placeholder.to_owned(), value);
    }
}

/// What refused an admission's update, to tell the client which limit.
enum Refusal {
    Window(WindowCheck),
    Budget,
}

impl Refusal {
    fn limit(&self, old: Option<&HashMap<String, AttributeValue>>) -> &'static str {
        match self {
            Refusal::Window(check) => check.refusal(old),
            Refusal::Budget => BUDGET,
        }
    }
}

/// Limits counted in DynamoDB, exact across any number of processes: each admission is one
/// conditional write (or one transaction of two).
///
/// A `Reservation` from this limiter records what it holds in the table: `tokens` are the
/// tokens added to the minute item (0 for a key without TPM) and `cost_usd` the estimate added
/// to `committed` (0 for a key without a budget). An admission under the open failure policy
/// holds nothing, so settling it just records the real usage: no sentinel is needed.
pub struct DynamoLimiter {
    client: Client,
    table: String,
    failure_policy: FailurePolicy,
}

impl DynamoLimiter {
    pub fn new(client: Client, config: &DynamoConfig) -> Self {
        Self {
            client,
            table: config.limits_table.clone(),
            failure_policy: config.limits_failure_policy,
        }
    }

    /// Applies the updates atomically; `Ok(Some(limit))` when a condition refused them.
    async fn admit(
        &self,
        key_id: &str,
        updates: &[(CounterUpdate, Refusal)],
    ) -> Result<Option<&'static str>, String> {
        let pk = limits_pk(key_id);
        let pk = pk.as_str();
        retry_on_conflict("admitting a request", || async move {
            if let [(update, refusal)] = updates {
                return match self.update_item(pk, update.clone(), true).await {
                    Ok(_) => Ok(None),
                    Err(error) => match rejection(&error) {
                        Some(Rejection::Condition(_)) => Ok(Some(refusal.limit(old_item(&error)))),
                        Some(Rejection::Conflict) => Err(WriteError::Conflict),
                        None => Err(WriteError::Backend(sdk_message(
                            "UpdateItem on the limits table",
                            &error,
                        ))),
                    },
                };
            }
            let mut transaction = self.client.transact_write_items();
            for (update, _) in updates {
                transaction = transaction.transact_items(self.transact_update(pk, update.clone())?);
            }
            match transaction.send().await {
                Ok(_) => Ok(None),
                Err(error) => match rejection(&error) {
                    Some(Rejection::Condition(reasons)) => Ok(updates
                        .iter()
                        .zip(reasons)
                        .find(|(_, reason)| condition_failed(reason))
                        .map(|((_, refusal), reason)| refusal.limit(reason.item()))),
                    Some(Rejection::Conflict) => Err(WriteError::Conflict),
                    None => Err(WriteError::Backend(sdk_message(
                        "TransactWriteItems on the limits table",
                        &error,
                    ))),
                },
            }
        })
        .await
    }

    async fn update_item(
        &self,
        pk: &str,
        update: CounterUpdate,
        return_old_on_refusal: bool,
    ) -> Result<UpdateItemOutput, SdkError<UpdateItemError, HttpResponse>> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(pk))
            .key(SK, s(update.sk))
            .update_expression(update.expression)
            .set_condition_expression(update.condition)
            .set_expression_attribute_names(Some(update.names))
            .set_expression_attribute_values(Some(update.values));
        if return_old_on_refusal {
            request = request.return_values_on_condition_check_failure(
                ReturnValuesOnConditionCheckFailure::AllOld,
            );
        }
        request.send().await
    }

    fn transact_update(
        &self,
        pk: &str,
        update: CounterUpdate,
    ) -> Result<TransactWriteItem, WriteError> {
        let update = Update::builder()
            .table_name(&self.table)
            .key(PK, s(pk))
            .key(SK, s(update.sk))
            .update_expression(update.expression)
            .set_condition_expression(update.condition)
            .set_expression_attribute_names(Some(update.names))
            .set_expression_attribute_values(Some(update.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// An unconditional counter update at settlement, retried on conflicts and logged on failure.
    async fn settle_update(&self, key_id: &str, update: CounterUpdate) {
        let pk = limits_pk(key_id);
        let pk = pk.as_str();
        let update = &update;
        let result = retry_on_conflict("settling a request", || async move {
            raced(
                "UpdateItem on the limits table",
                self.update_item(pk, update.clone(), false).await,
            )
        })
        .await;
        if let Err(error) = result {
            tracing::error!(
                %error,
                key_id,
                item = %update.sk,
                "settling usage failed: the reservation stays counted and the usage is not recorded"
            );
        }
    }
}

/// The item as it was when an UpdateItem's condition failed (asked for with
/// `ReturnValuesOnConditionCheckFailure::AllOld`).
fn old_item<R>(error: &SdkError<UpdateItemError, R>) -> Option<&HashMap<String, AttributeValue>> {
    match error.as_service_error() {
        Some(UpdateItemError::ConditionalCheckFailedException(failed)) => failed.item(),
        _ => None,
    }
}

/// The settlement of TPM: the reserved tokens replaced by the used ones, in the same window.
/// A reservation of no tokens (a key without TPM, or admitted unchecked) has nothing to replace;
/// the gateway's estimates for a TPM-limited key are never 0 (they include the prompt).
fn tokens_settlement(reservation: &Reservation, used: u64) -> Option<CounterUpdate> {
    if reservation.tokens == 0 || used == reservation.tokens {
        return None;
    }
    let mut update = CounterUpdate::new(minute_sk(reservation.minute));
    update.name("#tokens", TOKENS);
    update.value(":delta", n(used as i128 - reservation.tokens as i128));
    update.expression = "ADD #tokens :delta".to_owned();
    Some(update)
}

/// The settlement of spend: the reservation released from `committed`, the cost added to both.
fn spend_settlement(reservation: &Reservation, cost_usd: f64) -> Option<CounterUpdate> {
    let reserved = to_nano_usd(reservation.cost_usd);
    let spent = to_nano_usd(cost_usd);
    if reserved == 0 && spent == 0 {
        return None;
    }
    let mut update = CounterUpdate::new(month_sk(reservation.month));
    update.name("#committed", COMMITTED);
    update.name("#spent", SPENT);
    update.value(":delta", n(spent - reserved));
    update.value(":spent", n(spent));
    update.expression = "ADD #committed :delta, #spent :spent".to_owned();
    Some(update)
}

#[async_trait]
impl Limiter for DynamoLimiter {
    async fn acquire(
        &self,
        key: &KeyRecord,
        estimate: Estimate,
        now_secs: u64,
    ) -> Result<Reservation, LimitError> {
        let refused = |limit: &'static str| LimitError::Exceeded {
            limit,
            retry_after_secs: if limit == BUDGET {
                secs_until_next_month(now_secs)
            } else {
                60 - now_secs % 60
            },
        };
        let plan = Plan::new(key, estimate).map_err(refused)?;
        let minute = now_secs / 60;
        let month = month_of(now_secs);
        let mut reservation = Reservation {
            key_id: Arc::from(key.id.as_str()),
            minute,
            month,
            tokens: plan.window.as_ref().map_or(0, WindowCheck::reserved_tokens),
            cost_usd: plan.budget.as_ref().map_or(0.0, |_| estimate.cost_usd),
        };
        // Minute item first: when both refuse, RPM and TPM are reported before the budget, as
        // the in-process limiter does.
        let mut updates = Vec::new();
        if let Some(window) = plan.window {
            updates.push((window.update(minute), Refusal::Window(window)));
        }
        if let Some(budget) = plan.budget {
            updates.push((budget.update(month), Refusal::Budget));
        }
        if updates.is_empty() {
            return Ok(reservation);
        }
        match self.admit(&key.id, &updates).await {
            Ok(None) => Ok(reservation),
            Ok(Some(limit)) => Err(refused(limit)),
            Err(error) => match self.failure_policy {
                FailurePolicy::Closed => Err(LimitError::Unavailable(error)),
                FailurePolicy::Open => {
                    tracing::warn!(
                        %error,
                        key_id = %key.id,
                        "limits table unavailable; admitting unchecked (GATEWAY_LIMITS_FAILURE_POLICY=open)"
                    );
                    reservation.tokens = 0;
                    reservation.cost_usd = 0.0;
                    Ok(reservation)
                }
            },
        }
    }

    async fn settle(&self, reservation: Reservation, tokens: u64, cost_usd: f64) {
        // A window that has ended no longer limits anything: its tokens are left as they are.
        let tokens_update = tokens_settlement(&reservation, tokens)
            .filter(|_| now_secs() / 60 == reservation.minute);
        let spend_update = spend_settlement(&reservation, cost_usd);
        let key_id = &reservation.key_id;
        tokio::join!(
            async {
                if let Some(update) = tokens_update {
                    self.settle_update(key_id, update).await;
                }
            },
            async {
                if let Some(update) = spend_update {
                    self.settle_update(key_id, update).await;
                }
            },
        );
    }

    async fn spent_usd(&self, key_id: &str, now_secs: u64) -> Result<f64, LimitError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(limits_pk(key_id)))
            .key(SK, s(month_sk(month_of(now_secs))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| LimitError::Unavailable(sdk_message("GetItem on the limits table", &e)))?;
        Ok(from_nano_usd(
            output
                .item()
                .and_then(|item| number_attr::<i64>(item, SPENT))
                .unwrap_or(0),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rpm: Option<u64>, tpm: Option<u64>, budget_usd: Option<f64>) -> KeyRecord {
        KeyRecord {
            id: "key_1".into(),
            name: "t".into(),
            rpm,
            tpm,
            budget_usd,
            ..KeyRecord::default()
        }
    }

    fn estimate(tokens: u64, cost_usd: f64) -> Estimate {
        Estimate { tokens, cost_usd }
    }

    fn reservation(tokens: u64, cost_usd: f64) -> Reservation {
        Reservation {
            key_id: Arc::from("key_1"),
            minute: 29_000_000,
            month: 202_611,
            tokens,
            cost_usd,
        }
    }

    #[test]
    fn item_keys_follow_the_documented_layout() {
        assert_eq!(limits_pk("key_9"), "key#key_9");
        assert_eq!(minute_sk(29_000_000), "minute#29000000");
        assert_eq!(month_sk(202_611), "month#202611");
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
    fn a_key_without_limits_writes_nothing_at_admission() {
        assert_eq!(
            Plan::new(&key(None, None, None), estimate(10, 1.0)),
            Ok(Plan {
                window: None,
                budget: None
            })
        );
    }

    #[test]
    fn limits_no_counter_can_satisfy_refuse_without_a_call() {
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
    fn window_condition_covers_only_the_limits_the_key_has() {
        let rpm_only = WindowCheck {
            rpm: Some(50),
            tpm: None,
        }
        .update(7);
        assert_eq!(rpm_only.sk, "minute#7");
        assert_eq!(
            rpm_only.expression,
            "ADD #requests :one SET #expires_at = :expires_at"
        );
        assert_eq!(
            rpm_only.condition.as_deref(),
            Some("(attribute_not_exists(#requests) OR #requests < :rpm)")
        );
        assert_eq!(rpm_only.values[":rpm"], n(50));
        assert_eq!(rpm_only.values[":expires_at"], n(9 * 60));
        assert!(!rpm_only.values.contains_key(":tokens"));

        let both = WindowCheck {
            rpm: Some(50),
            tpm: Some((1000, 300)),
        }
        .update(7);
        assert_eq!(
            both.expression,
            "ADD #requests :one, #tokens :tokens SET #expires_at = :expires_at"
        );
        assert_eq!(
            both.condition.as_deref(),
            Some(
                "(attribute_not_exists(#requests) OR #requests < :rpm) AND \
                 (attribute_not_exists(#tokens) OR #tokens <= :tpm_left)"
            )
        );
        assert_eq!(both.values[":tokens"], n(300));
        assert_eq!(both.values[":tpm_left"], n(700));
    }

    #[test]
    fn budget_condition_requires_the_estimate_to_fit_in_what_is_left() {
        let plan = Plan::new(&key(None, None, Some(1.0)), estimate(0, 0.6)).unwrap();
        let update = plan.budget.unwrap().update(202_611);
        assert_eq!(update.sk, "month#202611");
        assert_eq!(update.expression, "ADD #committed :reserve");
        assert_eq!(
            update.condition.as_deref(),
            Some("attribute_not_exists(#committed) OR #committed <= :budget_left")
        );
        assert_eq!(update.values[":reserve"], n(600_000_000));
        assert_eq!(update.values[":budget_left"], n(400_000_000));
        assert_eq!(update.names["#committed"], COMMITTED);
        // A free request needs some budget left all the same.
        let free = Plan::new(&key(None, None, Some(1.0)), estimate(0, 0.0)).unwrap();
        assert_eq!(
            free.budget.unwrap().update(202_611).values[":budget_left"],
            n(999_999_999)
        );
    }

    #[test]
    fn the_old_item_tells_which_window_limit_refused() {
        let check = WindowCheck {
            rpm: Some(2),
            tpm: Some((100, 80)),
        };
        let item = |requests: u64| HashMap::from([(REQUESTS.to_owned(), n(requests))]);
        assert_eq!(check.refusal(Some(&item(2))), RPM);
        assert_eq!(check.refusal(Some(&item(1))), TPM);
        let rpm_only = WindowCheck {
            rpm: Some(2),
            tpm: None,
        };
        assert_eq!(rpm_only.refusal(None), RPM);
    }

    #[test]
    fn settlement_replaces_only_what_was_reserved() {
        let tokens = tokens_settlement(&reservation(80, 0.0), 10).unwrap();
        assert_eq!(tokens.sk, "minute#29000000");
        assert_eq!(tokens.values[":delta"], n(-70));
        assert_eq!(tokens.condition, None);
        // Nothing reserved in the window (no TPM, or admitted unchecked): nothing to correct.
        assert_eq!(tokens_settlement(&reservation(0, 0.0), 10), None);
        assert_eq!(tokens_settlement(&reservation(10, 0.0), 10), None);

        let spend = spend_settlement(&reservation(0, 0.6), 0.25).unwrap();
        assert_eq!(spend.sk, "month#202611");
        assert_eq!(spend.expression, "ADD #committed :delta, #spent :spent");
        assert_eq!(spend.values[":delta"], n(-350_000_000));
        assert_eq!(spend.values[":spent"], n(250_000_000));
        // A key without a budget still records its spend, in both counters.
        let unbudgeted = spend_settlement(&reservation(0, 0.0), 0.25).unwrap();
        assert_eq!(unbudgeted.values[":delta"], n(250_000_000));
        assert_eq!(spend_settlement(&reservation(0, 0.0), 0.0), None);
    }
}
