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

use crate::clock::{month_of, now_secs};
use crate::keys::KeyRecord;
use crate::limits::{
    BUDGET, BudgetCheck, Estimate, LimitError, Limiter, Plan, RPM, Reservation, TPM, WindowCheck,
    from_nano_usd,
};
use crate::storage::dynamo::{
    DynamoConfig, EXPIRES_AT, FailurePolicy, PK, Rejection, SK, WriteError, condition_failed, n,
    number_attr, raced, rejection, retry_on_conflict, s, sdk_message,
};
use crate::usage::dynamo::{usage_sk, usage_update};
use crate::usage::{Billed, ModelUsage};

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

/// The window half of a plan as an update of the `minute#` item: `ADD` the request (and its
/// tokens) on condition that the counters as they are admit it, as `WindowCheck::refusal` says.
fn window_update(check: &WindowCheck, minute: u64) -> CounterUpdate {
    let mut update = CounterUpdate::new(minute_sk(minute));
    update.name("#requests", REQUESTS);
    update.name("#expires_at", EXPIRES_AT);
    update.value(":one", n(1));
    // Kept a minute past the window's end, then deleted by TTL.
    update.value(":expires_at", n((minute + 2) * 60));
    let mut add = "ADD #requests :one".to_owned();
    let mut conditions = Vec::new();
    if let Some(rpm) = check.rpm {
        conditions.push("(attribute_not_exists(#requests) OR #requests < :rpm)");
        update.value(":rpm", n(rpm));
    }
    if let Some(tokens_left) = check.tokens_left() {
        add.push_str(", #tokens :tokens");
        conditions.push("(attribute_not_exists(#tokens) OR #tokens <= :tpm_left)");
        update.name("#tokens", TOKENS);
        update.value(":tokens", n(check.reserved_tokens()));
        update.value(":tpm_left", n(tokens_left));
    }
    update.expression = format!("{add} SET #expires_at = :expires_at");
    update.condition = Some(conditions.join(" AND "));
    update
}

/// Which window limit refused, from the `minute#` item as it was when the condition failed.
fn window_refusal(
    check: &WindowCheck,
    old: Option<&HashMap<String, AttributeValue>>,
) -> &'static str {
    let counter = |name| {
        old.and_then(|item| number_attr::<u64>(item, name))
            .unwrap_or(0)
    };
    // Without the old item, the only limit the key has, or TPM (RPM is seen in any item).
    check
        .refusal(counter(REQUESTS), counter(TOKENS))
        .unwrap_or(if check.tpm.is_some() { TPM } else { RPM })
}

/// The budget half of a plan as an update of the `month#` item. A condition cannot add, so
/// `committed + reserve <= budget` is checked as `committed <= BudgetCheck::committed_at_most`.
fn budget_update(check: &BudgetCheck, month: u32) -> CounterUpdate {
    let mut update = CounterUpdate::new(month_sk(month));
    update.name("#committed", COMMITTED);
    update.value(":reserve", n(check.reserve_nano));
    update.value(":budget_left", n(check.committed_at_most()));
    update.expression = "ADD #committed :reserve".to_owned();
    update.condition =
        Some("attribute_not_exists(#committed) OR #committed <= :budget_left".to_owned());
    update
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
            Refusal::Window(check) => window_refusal(check, old),
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

/// The settlement of TPM as an update of the reservation's `minute#` item.
fn tokens_settlement(reservation: &Reservation, used: u64) -> Option<CounterUpdate> {
    let change = reservation.tokens_change(used)?;
    let mut update = CounterUpdate::new(minute_sk(reservation.minute));
    update.name("#tokens", TOKENS);
    update.value(":delta", n(change));
    update.expression = "ADD #tokens :delta".to_owned();
    Some(update)
}

/// The settlement of spend as an update of the reservation's `month#` item.
fn spend_settlement(reservation: &Reservation, nano_usd: i64) -> Option<CounterUpdate> {
    let settlement = reservation.spend_settlement(nano_usd)?;
    let mut update = CounterUpdate::new(month_sk(reservation.month));
    update.name("#committed", COMMITTED);
    update.name("#spent", SPENT);
    update.value(":delta", n(settlement.committed_change));
    update.value(":spent", n(settlement.spent));
    update.expression = "ADD #committed :delta, #spent :spent".to_owned();
    Some(update)
}

/// One model's usage added to its `usage#` item for the reservation's day.
fn usage_settlement(reservation: &Reservation, usage: &ModelUsage) -> CounterUpdate {
    let (expression, names, values) = usage_update(&reservation.key_id, usage);
    CounterUpdate {
        sk: usage_sk(reservation.day, &usage.model),
        expression: expression.to_owned(),
        condition: None,
        names,
        values,
    }
}

#[async_trait]
impl Limiter for DynamoLimiter {
    async fn acquire(
        &self,
        key: &KeyRecord,
        estimate: Estimate,
        now_secs: u64,
    ) -> Result<Reservation, LimitError> {
        let plan =
            Plan::new(key, estimate).map_err(|limit| LimitError::exceeded(limit, now_secs))?;
        let mut reservation = plan.reservation(Arc::from(key.id.as_str()), now_secs);
        // Minute item first: when both refuse, RPM and TPM are reported before the budget, as
        // `Plan` orders them.
        let mut updates = Vec::new();
        if let Some(window) = plan.window {
            updates.push((
                window_update(&window, reservation.minute),
                Refusal::Window(window),
            ));
        }
        if let Some(budget) = plan.budget {
            updates.push((budget_update(&budget, reservation.month), Refusal::Budget));
        }
        if updates.is_empty() {
            return Ok(reservation);
        }
        match self.admit(&key.id, &updates).await {
            Ok(None) => Ok(reservation),
            Ok(Some(limit)) => Err(LimitError::exceeded(limit, now_secs)),
            Err(error) => match self.failure_policy {
                FailurePolicy::Closed => Err(LimitError::Unavailable(error)),
                FailurePolicy::Open => {
                    tracing::warn!(
                        %error,
                        key_id = %key.id,
                        "limits table unavailable; admitting unchecked (GATEWAY_LIMITS_FAILURE_POLICY=open)"
                    );
                    reservation.tokens = 0;
                    reservation.nano_usd = 0;
                    Ok(reservation)
                }
            },
        }
    }

    async fn settle(&self, reservation: Reservation, billed: Billed) {
        // A window that has ended no longer limits anything: its tokens are left as they are.
        let tokens_update = tokens_settlement(&reservation, billed.tokens)
            .filter(|_| now_secs() / 60 == reservation.minute);
        let spend_update = spend_settlement(&reservation, billed.nano_usd());
        let usage_updates: Vec<CounterUpdate> = billed
            .models
            .iter()
            .map(|usage| usage_settlement(&reservation, usage))
            .collect();
        let key_id = &reservation.key_id;
        tokio::join!(
            futures_util::future::join_all(
                usage_updates
                    .into_iter()
                    .map(|update| self.settle_update(key_id, update))
            ),
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
    use crate::limits::tests::{estimate, key};
    use crate::limits::to_nano_usd;

    fn reservation(tokens: u64, cost_usd: f64) -> Reservation {
        Reservation {
            key_id: Arc::from("key_1"),
            minute: 29_000_000,
            month: 202_611,
            day: 20_139,
            tokens,
            nano_usd: to_nano_usd(cost_usd),
        }
    }

    #[test]
    fn item_keys_follow_the_documented_layout() {
        assert_eq!(limits_pk("key_9"), "key#key_9");
        assert_eq!(minute_sk(29_000_000), "minute#29000000");
        assert_eq!(month_sk(202_611), "month#202611");
    }

    #[test]
    fn window_condition_covers_only_the_limits_the_key_has() {
        let rpm_only = window_update(
            &WindowCheck {
                rpm: Some(50),
                tpm: None,
            },
            7,
        );
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

        let both = window_update(
            &WindowCheck {
                rpm: Some(50),
                tpm: Some((1000, 300)),
            },
            7,
        );
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
        let update = budget_update(&plan.budget.unwrap(), 202_611);
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
            budget_update(&free.budget.unwrap(), 202_611).values[":budget_left"],
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
        assert_eq!(window_refusal(&check, Some(&item(2))), RPM);
        assert_eq!(window_refusal(&check, Some(&item(1))), TPM);
        let rpm_only = WindowCheck {
            rpm: Some(2),
            tpm: None,
        };
        assert_eq!(window_refusal(&rpm_only, None), RPM);
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

        let spend = spend_settlement(&reservation(0, 0.6), 250_000_000).unwrap();
        assert_eq!(spend.sk, "month#202611");
        assert_eq!(spend.expression, "ADD #committed :delta, #spent :spent");
        assert_eq!(spend.values[":delta"], n(-350_000_000));
        assert_eq!(spend.values[":spent"], n(250_000_000));
        // A key without a budget still records its spend, in both counters.
        let unbudgeted = spend_settlement(&reservation(0, 0.0), 250_000_000).unwrap();
        assert_eq!(unbudgeted.values[":delta"], n(250_000_000));
        assert_eq!(spend_settlement(&reservation(0, 0.0), 0), None);
    }
}
