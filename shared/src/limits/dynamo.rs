//! Limits counted in DynamoDB (the limits table), exact across any number of processes.
//!
//! One item per key holds every counter: `pk = "key#<key id>"`, `sk = "limits"`, with
//! `window_minute` (N, the epoch minute the window counters belong to), `requests` and `tokens`
//! (N), `budget_month` (N, YYYYMM), `committed_nano_usd` (N, spent plus in-flight reservations)
//! and `spent_nano_usd` (N) for that month, and the usage of the key's current usage day
//! (`usage_day`, `usage_writes`, `u#<model>#...`: shared/src/usage/dynamo.rs describes them and
//! the per-day usage rows, `usage#...`, the spend history, which a day's counters are copied to
//! when the key's next day starts).
//!
//! Cost and exactness: an admission is one conditional UpdateItem of that item (1 write unit), and
//! so is a settlement, its usage included. The admission `ADD`s the request, its tokens and its
//! estimate on condition that the item's windows are the current ones and its counters admit it, as
//! `WindowCheck::refusal` and `BudgetCheck::admits` say (a condition cannot add two attributes, so
//! the budget is checked as `committed <= budget - estimate`, worked out here). One write means a
//! request refused by any limit consumes nothing. When the condition fails, the item as it was
//! (`ReturnValuesOnConditionCheckFailure::AllOld`) tells a refusal from a window that has ended;
//! the latter is written again, starting the ended window anew (`SET` on condition that the item's
//! window is older), which a racing writer can do only once. So the first request of a minute (or
//! month) pays a second write; every other admission pays one. Likewise the first settlement of a
//! key's day pays for starting it: one write per model the key used on its previous day (the copy)
//! and one to empty the counters, once per key and day, which amortises to nothing next to the
//! day's requests. Money is counted in integer nano-dollars, so `ADD` is exact. One key's counters
//! are one item, so a single key is admitted at most at DynamoDB's per-item write rate (about 1 000
//! a second): sharding it would give up exactness.
//!
//! Tables written by earlier versions kept the month in a `month#<YYYYMM>` item: when a key's
//! item does not exist yet, that item's spend is carried into the new one, so an upgrade in the
//! middle of a month does not reset budgets.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use crate::clock::month_of;
use crate::keys::KeyRecord;
use crate::limits::{
    BUDGET, Estimate, LimitError, Limiter, Plan, Reservation, SpendSettlement, from_nano_usd,
};
use crate::storage::dynamo::{
    DynamoConfig, FailurePolicy, PK, Rejection, SK, WriteError, conflict_backoff, n, number_attr,
    raced, rejection, retry_on_conflict, s, sdk_message,
};
use crate::usage::dynamo::{
    DayCounters, LIMITS_SK as COUNTERS_SK, USAGE_DAY, USAGE_WRITES, copy_update, day_counter_names,
    is_day_counter, usage_sk, usage_update,
};
use crate::usage::{Billed, ModelUsage};

const MINUTE: &str = "window_minute";
const REQUESTS: &str = "requests";
const TOKENS: &str = "tokens";
const MONTH: &str = "budget_month";
const COMMITTED: &str = "committed_nano_usd";
const SPENT: &str = "spent_nano_usd";

/// Writes of one admission or settlement: the fast path, then at most a window (or usage day)
/// started anew and a few races with other writers doing the same.
const STATE_ATTEMPTS: usize = 6;

/// Attempts to start a key's next usage day: each one that fails met a settlement of the old
/// day that arrived meanwhile (and copies again).
const USAGE_DAY_ATTEMPTS: u32 = 8;

fn limits_pk(key_id: &str) -> String {
    format!("key#{key_id}")
}

/// The month item of earlier versions, read once per key to carry its spend over.
fn legacy_month_sk(month: u32) -> String {
    format!("month#{month}")
}

/// A key's counters as a refused write found them; absent attributes read as an item that has
/// never counted that window.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counters {
    exists: bool,
    minute: Option<u64>,
    requests: u64,
    tokens: u64,
    month: Option<u32>,
    committed: i64,
    /// The usage day the item holds (none before its first settlement).
    usage: Option<DayCounters>,
    /// The names of that day's counters, which starting the next day removes.
    day_attributes: Vec<String>,
}

impl Counters {
    fn read(item: Option<&HashMap<String, AttributeValue>>) -> Self {
        let Some(item) = item else {
            return Self::default();
        };
        Self {
            exists: true,
            minute: number_attr(item, MINUTE),
            requests: number_attr(item, REQUESTS).unwrap_or(0),
            tokens: number_attr(item, TOKENS).unwrap_or(0),
            month: number_attr(item, MONTH),
            committed: number_attr(item, COMMITTED).unwrap_or(0),
            usage: DayCounters::read(item),
            day_attributes: item
                .keys()
                .filter(|name| is_day_counter(name))
                .cloned()
                .collect(),
        }
    }

    fn window(&self, minute: u64) -> Window {
        window_state(self.minute.map(u128::from), u128::from(minute))
    }

    fn budget(&self, month: u32) -> Window {
        window_state(self.month.map(u128::from), u128::from(month))
    }
}

/// Where the item's window stands against the one a write is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// The same window: add to its counters.
    Current,
    /// The item holds an older window (or none): start this one anew.
    Ended,
    /// The item is already in a later window (the writer's clock is behind, or a settlement
    /// arrives after its window ended).
    Later,
}

fn window_state(item: Option<u128>, this: u128) -> Window {
    match item {
        Some(item) if item == this => Window::Current,
        Some(item) if item > this => Window::Later,
        _ => Window::Ended,
    }
}

/// One UpdateItem of a key's counters, built from parts.
#[derive(Debug, Clone, Default, PartialEq)]
struct CounterUpdate {
    set: Vec<String>,
    add: Vec<String>,
    remove: Vec<String>,
    conditions: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl CounterUpdate {
    fn name(&mut self, placeholder: &str, attribute: &str) {
        self.names
            .insert(placeholder.to_owned(), attribute.to_owned());
    }

    fn value(&mut self, placeholder: &str, value: AttributeValue) {
        self.values.insert(placeholder.to_owned(), value);
    }

    fn set(&mut self, clauses: &[&str]) {
        self.set
            .extend(clauses.iter().map(|clause| (*clause).to_owned()));
    }

    fn add(&mut self, clauses: &[&str]) {
        self.add
            .extend(clauses.iter().map(|clause| (*clause).to_owned()));
    }

    fn require(&mut self, condition: &str) {
        self.conditions.push(condition.to_owned());
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    fn expression(&self) -> String {
        let mut clauses = Vec::new();
        if !self.set.is_empty() {
            clauses.push(format!("SET {}", self.set.join(", ")));
        }
        if !self.add.is_empty() {
            clauses.push(format!("ADD {}", self.add.join(", ")));
        }
        if !self.remove.is_empty() {
            clauses.push(format!("REMOVE {}", self.remove.join(", ")));
        }
        clauses.join(" ")
    }

    fn condition(&self) -> Option<String> {
        (!self.conditions.is_empty()).then(|| self.conditions.join(" AND "))
    }

    /// The names and values the expression and condition use: DynamoDB refuses a request that
    /// defines one it does not use, and the parts above define theirs together.
    fn used_placeholders(&self) -> (HashMap<String, String>, HashMap<String, AttributeValue>) {
        let text = format!(
            "{} {}",
            self.expression(),
            self.condition().unwrap_or_default()
        );
        let used: std::collections::HashSet<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '#' | ':')))
            .collect();
        let names = self
            .names
            .iter()
            .filter(|(placeholder, _)| used.contains(placeholder.as_str()))
            .map(|(placeholder, name)| (placeholder.clone(), name.clone()))
            .collect();
        let values = self
            .values
            .iter()
            .filter(|(placeholder, _)| used.contains(placeholder.as_str()))
            .map(|(placeholder, value)| (placeholder.clone(), value.clone()))
            .collect();
        (names, values)
    }

    /// The minute window: adds the request (and its tokens) to the current window on condition
    /// that its counters admit it, or starts an ended window with this request alone.
    fn window(&mut self, plan: &Plan, minute: u64, state: Window) {
        let Some(check) = &plan.window else {
            return;
        };
        self.name("#minute", MINUTE);
        self.name("#requests", REQUESTS);
        self.name("#tokens", TOKENS);
        self.value(":minute", n(minute));
        self.value(":one", n(1));
        self.value(":tokens", n(check.reserved_tokens()));
        if state == Window::Current {
            self.require("#minute = :minute");
            self.add(&["#requests :one"]);
            if let Some(rpm) = check.rpm {
                self.require("#requests < :rpm");
                self.value(":rpm", n(rpm));
            }
            if let Some(tokens_left) = check.tokens_left() {
                self.add(&["#tokens :tokens"]);
                self.require("#tokens <= :tpm_left");
                self.value(":tpm_left", n(tokens_left));
            }
        } else {
            // `Plan::new` refused a request no empty window admits.
            self.require("(attribute_not_exists(#minute) OR #minute < :minute)");
            self.set(&["#minute = :minute", "#requests = :one", "#tokens = :tokens"]);
        }
    }

    /// The month: adds the estimate to what is committed on condition that it fits in what is
    /// left, or starts an ended month with it (and what `carried` says was spent before).
    fn budget(&mut self, plan: &Plan, month: u32, state: Window, carried: i64) {
        let Some(check) = &plan.budget else {
            return;
        };
        self.month(month);
        if state == Window::Current {
            self.require("#month = :month");
            self.require("#committed <= :budget_left");
            self.add(&["#committed :reserve"]);
            self.value(":reserve", n(check.reserve_nano));
            self.value(":budget_left", n(check.committed_at_most()));
        } else {
            self.start_month(check.reserve_nano.saturating_add(carried), carried);
        }
    }

    /// Settles a reservation's spend: the change to the current month, or an ended month started
    /// with it (a key without a budget has admissions that never touched the month).
    fn spend(&mut self, settlement: SpendSettlement, month: u32, state: Window, carried: i64) {
        self.month(month);
        match state {
            Window::Current => {
                self.require("#month = :month");
                self.add(&["#committed :delta", "#spent :spent"]);
                self.value(":delta", n(settlement.committed_change));
                self.value(":spent", n(settlement.spent));
            }
            Window::Ended => {
                let spent = settlement.spent.saturating_add(carried);
                self.start_month(spent, spent);
            }
            // The month it was reserved in has ended: only the usage items keep it.
            Window::Later => {}
        }
    }

    fn month(&mut self, month: u32) {
        self.name("#month", MONTH);
        self.name("#committed", COMMITTED);
        self.name("#spent", SPENT);
        self.value(":month", n(month));
    }

    fn start_month(&mut self, committed: i64, spent: i64) {
        self.require("(attribute_not_exists(#month) OR #month < :month)");
        self.set(&[
            "#month = :month",
            "#committed = :committed",
            "#spent = :spent_start",
        ]);
        self.value(":committed", n(committed));
        self.value(":spent_start", n(spent));
    }

    /// Settles a reservation's tokens: only while its minute is the item's window (an ended
    /// window no longer limits anything).
    fn tokens(&mut self, change: i64, minute: u64) {
        self.name("#minute", MINUTE);
        self.name("#tokens", TOKENS);
        self.value(":minute", n(minute));
        self.value(":tokens_delta", n(change));
        self.require("#minute = :minute");
        self.add(&["#tokens :tokens_delta"]);
    }

    /// Folds a settled request's usage (one line per model) into the item's usage day: adds it
    /// on condition that the item's day is the request's, or that the item has none yet (this
    /// write starts it).
    fn usage(&mut self, day: u32, models: &[ModelUsage]) {
        self.usage_day(day);
        self.value(":write", n(1));
        self.require("(attribute_not_exists(#usage_day) OR #usage_day = :usage_day)");
        self.set(&["#usage_day = :usage_day"]);
        self.add(&["#usage_writes :write"]);
        for (index, usage) in models.iter().enumerate() {
            let counts = [
                n(usage.requests),
                n(usage.input_tokens),
                n(usage.output_tokens),
                n(usage.nano_usd),
            ];
            let names = day_counter_names(&usage.model);
            for (field, (name, count)) in names.into_iter().zip(counts).enumerate() {
                let (name_placeholder, value_placeholder) =
                    (format!("#u{index}_{field}"), format!(":u{index}_{field}"));
                self.add
                    .push(format!("{name_placeholder} {value_placeholder}"));
                self.names.insert(name_placeholder, name);
                self.values.insert(value_placeholder, count);
            }
        }
    }

    /// Starts usage day `day` in place of `old`, whose counters (`attributes`) have been copied
    /// to its day rows: on condition that no settlement was folded into it since it was read.
    fn next_usage_day(&mut self, old: &DayCounters, attributes: &[String], day: u32) {
        self.usage_day(day);
        self.value(":old_day", n(old.day));
        self.value(":copied_writes", n(old.writes));
        self.value(":no_writes", n(0));
        self.require("#usage_day = :old_day AND #usage_writes = :copied_writes");
        self.set(&["#usage_day = :usage_day", "#usage_writes = :no_writes"]);
        for (index, name) in attributes.iter().enumerate() {
            let placeholder = format!("#old{index}");
            self.remove.push(placeholder.clone());
            self.names.insert(placeholder, name.clone());
        }
    }

    fn usage_day(&mut self, day: u32) {
        self.name("#usage_day", USAGE_DAY);
        self.name("#usage_writes", USAGE_WRITES);
        self.value(":usage_day", n(day));
    }
}

/// How one conditional write of a key's counters ended.
enum Written {
    Done,
    /// The condition did not hold; the item as it was then.
    Refused(Counters),
}

/// Limits counted in DynamoDB, exact across any number of processes: each admission is one
/// conditional write of the key's item (two when it starts a new minute or month).
///
/// A `Reservation` from this limiter records what it holds in the table: `tokens` are the
/// tokens added to the window (0 for a key without TPM) and `nano_usd` the estimate added to
/// `committed` (0 for a key without a budget). An admission under the open failure policy
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

    /// One conditional UpdateItem of the key's item, retried while it meets a transaction.
    async fn write(&self, key_id: &str, update: &CounterUpdate) -> Result<Written, String> {
        let pk = limits_pk(key_id);
        let pk = pk.as_str();
        retry_on_conflict("writing a key's limits", || async move {
            match self.update_item(pk, update).await {
                Ok(()) => Ok(Written::Done),
                Err(error) => match rejection(&error) {
                    Some(Rejection::Condition(_)) => {
                        Ok(Written::Refused(Counters::read(old_item(&error))))
                    }
                    Some(Rejection::Conflict) => Err(WriteError::Conflict),
                    None => Err(WriteError::Backend(sdk_message(
                        "UpdateItem on the limits table",
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
        update: &CounterUpdate,
    ) -> Result<(), SdkError<UpdateItemError, HttpResponse>> {
        let (names, values) = update.used_placeholders();
        self.client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(pk))
            .key(SK, s(COUNTERS_SK))
            .update_expression(update.expression())
            .set_condition_expression(update.condition())
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await
            .map(|_| ())
    }

    /// What an earlier version's `month#` item recorded as spent this month (0 without one).
    async fn legacy_spent(&self, key_id: &str, month: u32) -> Result<i64, String> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(limits_pk(key_id)))
            .key(SK, s(legacy_month_sk(month)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_message("GetItem on the limits table", &e))?;
        Ok(output
            .item()
            .and_then(|item| number_attr::<i64>(item, SPENT))
            .unwrap_or(0))
    }

    /// Admits and reserves under `plan`: `Ok(Err(limit))` when a limit refuses.
    async fn admit(
        &self,
        plan: &Plan,
        reservation: &mut Reservation,
    ) -> Result<Result<(), &'static str>, String> {
        let key_id = Arc::clone(&reservation.key_id);
        // The fast path assumes the item is in this minute and month.
        let (mut window, mut month) = (Window::Current, Window::Current);
        let mut carried = None;
        for _ in 0..STATE_ATTEMPTS {
            let mut update = CounterUpdate::default();
            update.window(plan, reservation.minute, window);
            update.budget(plan, reservation.month, month, carried.unwrap_or(0));
            let Written::Refused(found) = self.write(&key_id, &update).await? else {
                return Ok(Ok(()));
            };
            // A process whose clock is behind counts in the item's later window.
            if let (Window::Later, Some(later)) = (found.window(reservation.minute), found.minute) {
                reservation.minute = later;
            }
            if let (Window::Later, Some(later)) = (found.budget(reservation.month), found.month) {
                reservation.month = later;
            }
            window = found.window(reservation.minute);
            month = found.budget(reservation.month);
            let window_current = plan.window.is_none() || window == Window::Current;
            let month_current = plan.budget.is_none() || month == Window::Current;
            if window_current
                && let Some(limit) = plan
                    .window
                    .as_ref()
                    .and_then(|check| check.refusal(found.requests, found.tokens))
            {
                return Ok(Err(limit));
            }
            if month_current
                && plan
                    .budget
                    .as_ref()
                    .is_some_and(|check| !check.admits(found.committed))
            {
                return Ok(Err(BUDGET));
            }
            if let Some(check) = plan.budget.as_ref().filter(|_| !found.exists)
                && carried.is_none()
            {
                let spent = self.legacy_spent(&key_id, reservation.month).await?;
                if !check.admits(spent) {
                    return Ok(Err(BUDGET));
                }
                carried = Some(spent);
            }
        }
        Err(format!(
            "admitting a request: the key's limits item kept changing under {STATE_ATTEMPTS} attempts"
        ))
    }

    /// Replaces the reservation's tokens and estimate with what the request used, and folds its
    /// usage (`models`, one line per model) into the item's usage day, in one write.
    async fn settle_counters(
        &self,
        reservation: &Reservation,
        tokens_change: Option<i64>,
        spend: Option<SpendSettlement>,
        models: &[ModelUsage],
    ) -> Result<(), String> {
        let (mut tokens_change, mut month) = (tokens_change, Window::Current);
        let mut carried = None;
        let mut fold_usage = !models.is_empty();
        for _ in 0..STATE_ATTEMPTS {
            let mut update = CounterUpdate::default();
            if let Some(change) = tokens_change {
                update.tokens(change, reservation.minute);
            }
            if let Some(settlement) = spend {
                update.spend(settlement, reservation.month, month, carried.unwrap_or(0));
            }
            if fold_usage {
                update.usage(reservation.day, models);
            }
            if update.is_empty() {
                return Ok(());
            }
            let Written::Refused(found) = self.write(&reservation.key_id, &update).await? else {
                return Ok(());
            };
            if found.window(reservation.minute) != Window::Current {
                tokens_change = None;
            }
            month = found.budget(reservation.month);
            if !found.exists && carried.is_none() {
                carried = Some(
                    self.legacy_spent(&reservation.key_id, reservation.month)
                        .await?,
                );
            }
            let usage_day = found.usage.as_ref().map(|usage| usage.day);
            match usage_day {
                Some(day) if fold_usage && day < reservation.day => {
                    self.start_usage_day(&reservation.key_id, found, reservation.day)
                        .await?;
                }
                // The item has moved on to a later day (this request straddled midnight, or
                // its process's clock is behind): the request's day was copied to its rows
                // already, so its usage is added there.
                Some(day) if fold_usage && day > reservation.day => {
                    fold_usage = false;
                    futures_util::future::join_all(
                        models
                            .iter()
                            .map(|usage| self.record_usage(reservation, usage)),
                    )
                    .await;
                }
                _ => {}
            }
        }
        Err(format!(
            "settling a request: the key's limits item kept changing under {STATE_ATTEMPTS} attempts"
        ))
    }

    /// Starts the key's usage day `day` in the item, which `found` says holds an earlier one:
    /// copies that day's counters to its rows, then empties them and sets the new day, on
    /// condition that no settlement of the old day was folded in meanwhile.
    ///
    /// Races: a settlement of the old day that lands between the copy and the emptying bumps
    /// `usage_writes`, so the emptying fails and the counters as they are now (returned with the
    /// failure) are copied again. Copies are `SET`, each at the `usage_writes` it read, on
    /// condition that the row holds no newer one: copying twice counts once, and a slow copier
    /// never overwrites a newer copy. Once the day is emptied, a late settlement of it finds a
    /// later day and adds to the rows directly (kept apart from the copy). Readers count a
    /// day's newest copy, on the row or still on the item, so nothing is counted twice while
    /// this runs.
    async fn start_usage_day(
        &self,
        key_id: &str,
        mut found: Counters,
        day: u32,
    ) -> Result<(), String> {
        for attempt in 0..USAGE_DAY_ATTEMPTS {
            let Some(old) = found.usage.as_ref().filter(|old| old.day < day) else {
                // Another settlement started this day (or a later one) already.
                return Ok(());
            };
            futures_util::future::try_join_all(
                old.models
                    .iter()
                    .map(|usage| self.copy_day_row(key_id, old.day, old.writes, usage)),
            )
            .await?;
            let mut update = CounterUpdate::default();
            update.next_usage_day(old, &found.day_attributes, day);
            match self.write(key_id, &update).await? {
                Written::Done => return Ok(()),
                Written::Refused(now) => found = now,
            }
            conflict_backoff(attempt).await;
        }
        Err(format!(
            "starting a key's usage day: its counters kept changing under {USAGE_DAY_ATTEMPTS} attempts"
        ))
    }

    /// Copies a model's counters of usage day `day`, read at `version`, to its row, unless the
    /// row holds a copy at least as new.
    async fn copy_day_row(
        &self,
        key_id: &str,
        day: u32,
        version: u64,
        usage: &ModelUsage,
    ) -> Result<(), String> {
        let (expression, condition, names, values) = copy_update(key_id, usage, version);
        let pk = limits_pk(key_id);
        let sk = usage_sk(day, &usage.model);
        let (pk, sk, names, values) = (pk.as_str(), sk.as_str(), &names, &values);
        retry_on_conflict("copying a usage day", || async move {
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(PK, s(pk))
                .key(SK, s(sk))
                .update_expression(expression)
                .condition_expression(condition)
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .send()
                .await;
            match result {
                Ok(_) => Ok(()),
                Err(error) => match rejection(&error) {
                    // The row holds this copy or a newer one.
                    Some(Rejection::Condition(_)) => Ok(()),
                    Some(Rejection::Conflict) => Err(WriteError::Conflict),
                    None => Err(WriteError::Backend(sdk_message(
                        "UpdateItem on the limits table (usage day)",
                        &error,
                    ))),
                },
            }
        })
        .await
    }

    /// One model's usage added straight to its `usage#` item for the reservation's day: for a
    /// settlement whose day the limits item has moved past (its counters are copied already).
    async fn record_usage(&self, reservation: &Reservation, usage: &ModelUsage) {
        let (expression, names, values) = usage_update(&reservation.key_id, usage);
        let pk = limits_pk(&reservation.key_id);
        let sk = usage_sk(reservation.day, &usage.model);
        let (pk, sk) = (pk.as_str(), sk.as_str());
        let (names, values) = (&names, &values);
        let result = retry_on_conflict("recording usage", || async move {
            raced(
                "UpdateItem on the limits table",
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .key(PK, s(pk))
                    .key(SK, s(sk))
                    .update_expression(expression)
                    .set_expression_attribute_names(Some(names.clone()))
                    .set_expression_attribute_values(Some(values.clone()))
                    .send()
                    .await
                    .map(|_| ()),
            )
        })
        .await;
        if let Err(error) = result {
            tracing::error!(%error, key_id = %reservation.key_id, item = sk, "recording usage failed");
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
        if plan.window.is_none() && plan.budget.is_none() {
            return Ok(reservation);
        }
        match self.admit(&plan, &mut reservation).await {
            Ok(Ok(())) => Ok(reservation),
            Ok(Err(limit)) => Err(LimitError::exceeded(limit, now_secs)),
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
        let tokens_change = reservation.tokens_change(billed.tokens);
        let spend = reservation.spend_settlement(billed.nano_usd());
        if let Err(error) = self
            .settle_counters(&reservation, tokens_change, spend, &billed.models)
            .await
        {
            tracing::error!(
                %error,
                key_id = %reservation.key_id,
                "settling limits and usage failed: the reservation stays counted, the usage is not recorded"
            );
        }
    }

    async fn spent_usd(&self, key_id: &str, now_secs: u64) -> Result<f64, LimitError> {
        let month = month_of(now_secs);
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(limits_pk(key_id)))
            .key(SK, s(COUNTERS_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| LimitError::Unavailable(sdk_message("GetItem on the limits table", &e)))?;
        let spent = match output.item() {
            Some(item) if number_attr::<u32>(item, MONTH) == Some(month) => {
                number_attr::<i64>(item, SPENT).unwrap_or(0)
            }
            Some(_) => 0,
            None => self
                .legacy_spent(key_id, month)
                .await
                .map_err(LimitError::Unavailable)?,
        };
        Ok(from_nano_usd(spent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::tests::{estimate, key};

    fn plan(
        rpm: Option<u64>,
        tpm: Option<u64>,
        budget: Option<f64>,
        tokens: u64,
        cost: f64,
    ) -> Plan {
        Plan::new(&key(rpm, tpm, budget), estimate(tokens, cost)).unwrap()
    }

    fn item(pairs: &[(&str, i64)]) -> HashMap<String, AttributeValue> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), n(value)))
            .collect()
    }

    #[test]
    fn the_fast_path_adds_to_the_current_windows_on_one_condition() {
        let mut update = CounterUpdate::default();
        let both = plan(Some(50), Some(1000), Some(1.0), 300, 0.6);
        update.window(&both, 7, Window::Current);
        update.budget(&both, 202_612, Window::Current, 0);
        assert_eq!(
            update.expression(),
            "ADD #requests :one, #tokens :tokens, #committed :reserve"
        );
        assert_eq!(
            update.condition().as_deref(),
            Some(
                "#minute = :minute AND #requests < :rpm AND #tokens <= :tpm_left AND \
                 #month = :month AND #committed <= :budget_left"
            )
        );
        let (names, values) = update.used_placeholders();
        assert_eq!(values[":tpm_left"], n(700));
        assert_eq!(values[":budget_left"], n(400_000_000));
        assert_eq!(values[":reserve"], n(600_000_000));
        assert!(!names.contains_key("#spent") && !values.contains_key(":committed"));

        // RPM alone: no token counter is read or written.
        let mut rpm_only = CounterUpdate::default();
        rpm_only.window(&plan(Some(5), None, None, 10, 0.0), 7, Window::Current);
        assert_eq!(rpm_only.expression(), "ADD #requests :one");
        assert_eq!(
            rpm_only.condition().as_deref(),
            Some("#minute = :minute AND #requests < :rpm")
        );
        let (names, values) = rpm_only.used_placeholders();
        assert!(!names.contains_key("#tokens") && !values.contains_key(":tokens"));
    }

    #[test]
    fn an_ended_window_starts_anew_once() {
        let mut update = CounterUpdate::default();
        let both = plan(Some(50), Some(1000), Some(1.0), 300, 0.6);
        update.window(&both, 8, Window::Ended);
        update.budget(&both, 202_701, Window::Ended, 5);
        assert_eq!(
            update.expression(),
            "SET #minute = :minute, #requests = :one, #tokens = :tokens, #month = :month, \
             #committed = :committed, #spent = :spent_start"
        );
        assert_eq!(
            update.condition().as_deref(),
            Some(
                "(attribute_not_exists(#minute) OR #minute < :minute) AND \
                 (attribute_not_exists(#month) OR #month < :month)"
            )
        );
        let (_, values) = update.used_placeholders();
        assert_eq!(values[":committed"], n(600_000_005));
        assert_eq!(values[":spent_start"], n(5));
    }

    #[test]
    fn settlement_corrects_only_the_windows_still_current() {
        let settlement = SpendSettlement {
            committed_change: -350,
            spent: 250,
        };
        let mut update = CounterUpdate::default();
        update.tokens(-70, 7);
        update.spend(settlement, 202_612, Window::Current, 0);
        assert_eq!(
            update.expression(),
            "ADD #tokens :tokens_delta, #committed :delta, #spent :spent"
        );
        assert_eq!(
            update.condition().as_deref(),
            Some("#minute = :minute AND #month = :month")
        );
        // The month it was reserved in has ended: nothing left to write.
        let mut late = CounterUpdate::default();
        late.spend(settlement, 202_612, Window::Later, 0);
        assert!(late.is_empty());
        // A key without a budget starting its month at settlement.
        let mut first = CounterUpdate::default();
        first.spend(settlement, 202_612, Window::Ended, 0);
        let (_, values) = first.used_placeholders();
        assert_eq!(
            (&values[":committed"], &values[":spent_start"]),
            (&n(250), &n(250))
        );
    }

    #[test]
    fn settlement_folds_usage_into_the_usage_day_and_the_next_day_empties_it() {
        let mut update = CounterUpdate::default();
        let usage = ModelUsage {
            model: "a".into(),
            requests: 1,
            input_tokens: 10,
            output_tokens: 2,
            nano_usd: 30,
        };
        update.usage(20_000, &[usage]);
        assert_eq!(
            update.expression(),
            "SET #usage_day = :usage_day ADD #usage_writes :write, #u0_0 :u0_0, #u0_1 :u0_1, \
             #u0_2 :u0_2, #u0_3 :u0_3"
        );
        assert_eq!(
            update.condition().as_deref(),
            Some("(attribute_not_exists(#usage_day) OR #usage_day = :usage_day)")
        );
        let (names, values) = update.used_placeholders();
        assert_eq!(names["#u0_1"], "u#a#input_tokens");
        assert_eq!((&values[":u0_1"], &values[":u0_3"]), (&n(10), &n(30)));

        let found = Counters::read(Some(&item(&[
            (MINUTE, 7),
            (USAGE_DAY, 20_000),
            (USAGE_WRITES, 3),
            ("u#a#requests", 3),
            ("u#a#nano_usd", 90),
        ])));
        let old = found.usage.clone().unwrap_or_default();
        assert_eq!((old.day, old.writes), (20_000, 3));
        assert_eq!((old.models[0].requests, old.models[0].nano_usd), (3, 90));
        let mut next = CounterUpdate::default();
        next.next_usage_day(&old, &found.day_attributes, 20_001);
        let expression = next.expression();
        assert!(
            expression
                .starts_with("SET #usage_day = :usage_day, #usage_writes = :no_writes REMOVE #old"),
            "{expression}"
        );
        assert_eq!(
            next.condition().as_deref(),
            Some("#usage_day = :old_day AND #usage_writes = :copied_writes")
        );
        let (names, values) = next.used_placeholders();
        let mut removed: Vec<&String> = names
            .iter()
            .filter(|(placeholder, _)| placeholder.starts_with("#old"))
            .map(|(_, name)| name)
            .collect();
        removed.sort();
        assert_eq!(removed, ["u#a#nano_usd", "u#a#requests"]);
        assert_eq!(values[":copied_writes"], n(3));
    }

    #[test]
    fn the_item_as_found_tells_its_windows_apart() {
        let found = Counters::read(Some(&item(&[
            (MINUTE, 7),
            (REQUESTS, 3),
            (TOKENS, 40),
            (MONTH, 202_612),
            (COMMITTED, 9),
        ])));
        assert!(found.exists);
        assert_eq!((found.requests, found.tokens, found.committed), (3, 40, 9));
        assert_eq!(found.window(7), Window::Current);
        assert_eq!(found.window(8), Window::Ended);
        assert_eq!(found.window(6), Window::Later);
        assert_eq!(found.budget(202_701), Window::Ended);
        let missing = Counters::read(None);
        assert!(!missing.exists);
        assert_eq!(missing.window(7), Window::Ended);
        assert_eq!(missing.budget(202_612), Window::Ended);
    }
}
