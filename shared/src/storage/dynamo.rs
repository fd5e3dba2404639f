//! The DynamoDB backends: API keys, limits (RPM, TPM, monthly budget) and the response cache, over
//! one `aws_sdk_dynamodb::Client`. Endpoints and credentials come from the standard AWS
//! environment (`AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL` included), so the same code runs
//! against DynamoDB and against moto.
//!
//! Table layout. Every table has the partition key `pk` (S), the limits table also the sort key
//! `sk` (S); the TTL attribute is `expires_at` (N, epoch seconds).
//!
//! - keys table
//!   - `pk = "key#<sha256 hex of the secret>"`: `id` (S), `record` (S, the `KeyRecord` as JSON).
//!   - `pk = "id#<key id>"`: `hash` (S), the hash of the key item with that id. Written in the same
//!     transaction as the key item, so ids are unique and revoking by id needs no scan.
//! - limits table
//!   - `pk = "key#<key id>"`, `sk = "minute#<epoch minute>"`: `requests` (N), `tokens` (N),
//!     `expires_at` (the end of the next minute).
//!   - `pk = "key#<key id>"`, `sk = "month#<YYYYMM>"`: `committed_nano_usd` (N, spent plus
//!     in-flight reservations), `spent_nano_usd` (N).
//! - cache table
//!   - `pk = "cache#<hex of the 32-byte cache key>"`: `body` (B), `enc` (S, `"deflate"` when the
//!     body is compressed, absent otherwise), `expires_at`.
//!
//! Key items carry no `expires_at`: an expired key stays readable so clients are told it expired
//! rather than that it is unknown. Month items carry none either: they are the spend history.
//!
//! Exactness: every admission is one conditional write. RPM and TPM share the minute item
//! (`ADD requests :one, tokens :t` on condition `requests < :rpm AND tokens <= :tpm - :t`); the
//! budget keeps `committed = spent + in-flight reservations` in one attribute, because a condition
//! cannot add two attributes (`ADD committed :estimate` on condition `committed <= :budget_left`,
//! `budget - estimate` worked out here: a request must fit in what is left of the budget). A key
//! with both writes the two items in one transaction, so a request refused by its budget does not
//! consume RPM or TPM. Money is counted in integer nano-dollars, so `ADD` is exact and a cheap
//! request (a few micro-dollars) is not rounded away. Writes that meet a transaction in progress
//! are retried here (the SDK does not). One key's minute item is a single item, so a single key
//! is admitted at most at DynamoDB's per-item write rate (about 1 000 a second): sharding it would
//! give up exactness.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{BuildError, DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, Delete, KeySchemaElement,
    KeyType, Put, ReturnValuesOnConditionCheckFailure, ScalarAttributeType,
    TimeToLiveSpecification, TimeToLiveStatus, TransactWriteItem, Update,
};
use bytes::Bytes;
use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use rand::Rng;

use crate::backends::Backends;
use crate::cache::CacheStore;
use crate::clock::{month_of, now_secs, secs_until_next_month};
use crate::error::StoreError;
use crate::keys::KeyRecord;
use crate::keys::KeyStore;
use crate::limits::{BUDGET, Estimate, LimitError, Limiter, RPM, Reservation, TPM};

const PK: &str = "pk";
const SK: &str = "sk";
const EXPIRES_AT: &str = "expires_at";
const ID: &str = "id";
const RECORD: &str = "record";
const HASH: &str = "hash";
const REQUESTS: &str = "requests";
const TOKENS: &str = "tokens";
const COMMITTED: &str = "committed_nano_usd";
const SPENT: &str = "spent_nano_usd";
const BODY: &str = "body";
const ENCODING: &str = "enc";
const DEFLATE: &str = "deflate";

/// Bodies up to this size are stored as they are: compressing them saves little.
const COMPRESS_OVER: usize = 4 * 1024;
/// DynamoDB items are at most 400 KB, attribute names and the other attributes included; the
/// body may take all but 1 KB of it.
const MAX_STORED_BODY: usize = 400 * 1024 - 1024;

/// DynamoDB refuses a write to an item a transaction is changing (and cancels one of two
/// transactions that meet), and the SDK does not retry either: such writes, and key changes that
/// raced another writer, are retried this many times with jittered backoff.
const CONFLICT_ATTEMPTS: u32 = 8;

/// Bounds on every DynamoDB call, so an unreachable table fails a request (or applies the limits
/// failure policy) within seconds instead of holding it until the Lambda times out.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do when the limits table cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Refuse the request (503): limits and budgets are never exceeded.
    #[default]
    Closed,
    /// Admit the request unchecked and log a warning: availability over enforcement.
    Open,
}

/// Table names and the limits failure policy, from the environment the SAM template sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoConfig {
    pub keys_table: String,
    pub limits_table: String,
    pub cache_table: String,
    pub limits_failure_policy: FailurePolicy,
}

impl DynamoConfig {
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let table = |name: &str| {
            lookup(name)
                .filter(|value| !value.trim().is_empty())
                .ok_or_else(|| format!("{name} is not set: it names a DynamoDB table"))
        };
        let policy_variable = "GATEWAY_LIMITS_FAILURE_POLICY";
        let policy = lookup(policy_variable).map(|value| value.trim().to_ascii_lowercase());
        let limits_failure_policy = match policy.as_deref() {
            None | Some("") | Some("closed") => FailurePolicy::Closed,
            Some("open") => FailurePolicy::Open,
            Some(other) => {
                return Err(format!(
                    "{policy_variable} is `{other}`; expected `closed` or `open`"
                ));
            }
        };
        Ok(Self {
            keys_table: table("GATEWAY_KEYS_TABLE")?,
            limits_table: table("GATEWAY_LIMITS_TABLE")?,
            cache_table: table("GATEWAY_CACHE_TABLE")?,
            limits_failure_policy,
        })
    }
}

/// The DynamoDB backends, configured from the environment: one AWS config and one client for the
/// three tables, each call bounded by `ATTEMPT_TIMEOUT` / `OPERATION_TIMEOUT`. Call once per
/// process (Lambda container).
pub async fn backends_from_env() -> Result<Backends, String> {
    let sdk_config = aws_config::defaults(BehaviorVersion::latest()).load().await;
    backends_from_sdk_config(&sdk_config)
}

/// The DynamoDB backends over an AWS config the process already loaded (one per container,
/// shared by every client).
pub fn backends_from_sdk_config(sdk_config: &aws_config::SdkConfig) -> Result<Backends, String> {
    let config = DynamoConfig::from_env()?;
    // `GATEWAY_DYNAMODB_TIMEOUT_MS` raises both bounds for slow stand-ins (an emulator under a
    // burst); DynamoDB itself answers in milliseconds.
    let (attempt, operation) = match std::env::var("GATEWAY_DYNAMODB_TIMEOUT_MS")
        .ok()
        .and_then(|ms| ms.trim().parse::<u64>().ok())
    {
        Some(ms) => (Duration::from_millis(ms), Duration::from_millis(ms)),
        None => (ATTEMPT_TIMEOUT, OPERATION_TIMEOUT),
    };
    let timeouts = TimeoutConfig::builder()
        .operation_attempt_timeout(attempt)
        .operation_timeout(operation)
        .build();
    let client = Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(sdk_config)
            .timeout_config(timeouts)
            .build(),
    );
    Ok(backends(&client, &config))
}

/// The DynamoDB backends over an existing client.
pub fn backends(client: &Client, config: &DynamoConfig) -> Backends {
    let store = Arc::new(DynamoStore::new(client.clone(), config));
    Backends {
        keys: store.clone(),
        limiter: Arc::new(DynamoLimiter::new(client.clone(), config)),
        cache: store,
        edge: Arc::new(crate::keys::edge::NoEdgeKeys),
    }
}

/// Creates the three tables (on-demand capacity, TTL on `expires_at`) unless they exist, and waits
/// until they are usable. For tests and local runs; on AWS the SAM template owns the tables.
pub async fn create_tables(client: &Client, config: &DynamoConfig) -> Result<(), StoreError> {
    for (table, with_sort_key) in [
        (&config.keys_table, false),
        (&config.limits_table, true),
        (&config.cache_table, false),
    ] {
        create_table(client, table, with_sort_key).await?;
    }
    Ok(())
}

async fn create_table(client: &Client, table: &str, with_sort_key: bool) -> Result<(), StoreError> {
    let mut keys = vec![(PK, KeyType::Hash)];
    if with_sort_key {
        keys.push((SK, KeyType::Range));
    }
    let mut request = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest);
    for (name, key_type) in keys {
        request = request
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(build_error)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(key_type)
                    .build()
                    .map_err(build_error)?,
            );
    }
    if let Err(error) = request.send().await
        && !error
            .as_service_error()
            .is_some_and(|e| e.is_resource_in_use_exception())
    {
        return Err(backend(&format!("CreateTable {table}"), &error));
    }
    client
        .wait_until_table_exists()
        .table_name(table)
        .wait(Duration::from_secs(120))
        .await
        .map_err(|e| backend(&format!("waiting for table {table}"), &e))?;
    let ttl = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| backend(&format!("DescribeTimeToLive {table}"), &e))?;
    let enabled = ttl.time_to_live_description().is_some_and(|d| {
        d.attribute_name() == Some(EXPIRES_AT)
            && matches!(
                d.time_to_live_status(),
                Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
            )
    });
    if !enabled {
        client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(EXPIRES_AT)
                    .enabled(true)
                    .build()
                    .map_err(build_error)?,
            )
            .send()
            .await
            .map_err(|e| backend(&format!("UpdateTimeToLive {table}"), &e))?;
    }
    Ok(())
}

fn sdk_message(what: &str, error: &impl std::error::Error) -> String {
    format!("DynamoDB {what} failed: {}", DisplayErrorContext(error))
}

fn backend(what: &str, error: &impl std::error::Error) -> StoreError {
    StoreError::Backend(sdk_message(what, error))
}

fn build_error(error: BuildError) -> StoreError {
    StoreError::Backend(format!("invalid DynamoDB request: {error}"))
}

fn key_pk(hash: &str) -> String {
    format!("key#{hash}")
}

fn id_pk(id: &str) -> String {
    format!("id#{id}")
}

fn limits_pk(key_id: &str) -> String {
    format!("key#{key_id}")
}

fn minute_sk(minute: u64) -> String {
    format!("minute#{minute}")
}

fn month_sk(month: u32) -> String {
    format!("month#{month}")
}

fn cache_pk(key: &[u8; 32]) -> String {
    format!("cache#{}", hex::encode(key))
}

/// USD to integer nano-dollars; negative and non-finite amounts count as nothing.
fn to_nano_usd(usd: f64) -> i64 {
    // `as` saturates, and NaN.max(0.0) is 0.0.
    (usd.max(0.0) * 1e9).round() as i64
}

fn from_nano_usd(nano: i64) -> f64 {
    nano as f64 / 1e9
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn string_attr(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

fn number_attr<T: std::str::FromStr>(
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Option<T> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// Why a write that may race another writer did not happen.
enum WriteError {
    /// Another writer got there first (a transaction in progress, or state read before the write
    /// changed): try again.
    Conflict,
    Backend(String),
}

async fn retry_on_conflict<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, WriteError>>,
{
    for n in 0..CONFLICT_ATTEMPTS {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(WriteError::Backend(message)) => return Err(message),
            Err(WriteError::Conflict) => {
                // Full jitter, 5 ms doubling up to 320 ms: contending writers spread out.
                let cap_ms = 5u64 << n.min(6);
                let wait_ms = rand::rng().random_range(0..=cap_ms);
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            }
        }
    }
    Err(format!(
        "{what}: still conflicting with concurrent writers after {CONFLICT_ATTEMPTS} attempts"
    ))
}

/// How a cancelled transaction failed, from its per-item reasons.
enum Cancellation<'a> {
    /// A condition failed; the reasons are in the order of the transaction's items.
    Condition(&'a [CancellationReason]),
    Conflict,
}

fn cancellation<R>(error: &SdkError<TransactWriteItemsError, R>) -> Option<Cancellation<'_>> {
    let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
        error.as_service_error()
    else {
        return None;
    };
    let reasons = cancelled.cancellation_reasons();
    if reasons.iter().any(condition_failed) {
        Some(Cancellation::Condition(reasons))
    } else if reasons
        .iter()
        .any(|r| r.code() == Some("TransactionConflict"))
    {
        Some(Cancellation::Conflict)
    } else {
        None
    }
}

fn condition_failed(reason: &CancellationReason) -> bool {
    reason.code() == Some("ConditionalCheckFailed")
}

/// A condition expression with its names and values, for puts and deletes in transactions.
struct Condition {
    expression: &'static str,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Condition {
    fn absent() -> Self {
        Self {
            expression: "attribute_not_exists(#pk)",
            names: HashMap::from([("#pk".to_owned(), PK.to_owned())]),
            values: HashMap::new(),
        }
    }

    /// The item exists with `attribute = value`.
    fn holds(attribute: &str, value: &str) -> Self {
        Self {
            expression: "#attr = :value",
            names: HashMap::from([("#attr".to_owned(), attribute.to_owned())]),
            values: HashMap::from([(":value".to_owned(), s(value))]),
        }
    }

    /// The item is absent, or has `attribute = value`.
    fn absent_or_holds(attribute: &str, value: &str) -> Self {
        Self {
            expression: "attribute_not_exists(#pk) OR #attr = :value",
            names: HashMap::from([
                ("#pk".to_owned(), PK.to_owned()),
                ("#attr".to_owned(), attribute.to_owned()),
            ]),
            values: HashMap::from([(":value".to_owned(), s(value))]),
        }
    }

    fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        // DynamoDB rejects an empty value map.
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

fn transact_put(
    table: &str,
    item: HashMap<String, AttributeValue>,
    condition: Condition,
) -> Result<TransactWriteItem, WriteError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression(condition.expression)
        .set_expression_attribute_values(condition.values())
        .set_expression_attribute_names(Some(condition.names))
        .build()
        .map_err(|e| WriteError::Backend(format!("invalid DynamoDB request: {e}")))?;
    Ok(TransactWriteItem::builder().put(put).build())
}

fn transact_delete(
    table: &str,
    pk: String,
    condition: Condition,
) -> Result<TransactWriteItem, WriteError> {
    let delete = Delete::builder()
        .table_name(table)
        .key(PK, s(pk))
        .condition_expression(condition.expression)
        .set_expression_attribute_values(condition.values())
        .set_expression_attribute_names(Some(condition.names))
        .build()
        .map_err(|e| WriteError::Backend(format!("invalid DynamoDB request: {e}")))?;
    Ok(TransactWriteItem::builder().delete(delete).build())
}

/// Keys and cached responses in DynamoDB.
pub struct DynamoStore {
    client: Client,
    keys_table: String,
    cache_table: String,
}

impl DynamoStore {
    pub fn new(client: Client, config: &DynamoConfig) -> Self {
        Self {
            client,
            keys_table: config.keys_table.clone(),
            cache_table: config.cache_table.clone(),
        }
    }

    /// One string attribute of a keys-table item, read strongly consistent because it decides a
    /// conditional write.
    async fn read_key_attr(
        &self,
        pk: String,
        attribute: &str,
    ) -> Result<Option<String>, WriteError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.keys_table)
            .key(PK, s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| WriteError::Backend(sdk_message("GetItem on the keys table", &e)))?;
        Ok(output.item().and_then(|item| string_attr(item, attribute)))
    }
}

fn key_item(hash: &str, record: &KeyRecord) -> Result<HashMap<String, AttributeValue>, StoreError> {
    let json = serde_json::to_string(record)
        .map_err(|e| StoreError::Backend(format!("cannot encode key record: {e}")))?;
    Ok(HashMap::from([
        (PK.to_owned(), s(key_pk(hash))),
        (ID.to_owned(), s(&record.id)),
        (RECORD.to_owned(), s(json)),
    ]))
}

fn id_item(id: &str, hash: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([(PK.to_owned(), s(id_pk(id))), (HASH.to_owned(), s(hash))])
}

fn decode_record(item: &HashMap<String, AttributeValue>) -> Result<KeyRecord, StoreError> {
    let json = item
        .get(RECORD)
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| StoreError::Backend("key item without a `record` attribute".into()))?;
    serde_json::from_str(json)
        .map_err(|e| StoreError::Backend(format!("key item with an unreadable record: {e}")))
}

#[async_trait]
impl KeyStore for DynamoStore {
    async fn get_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        // Strongly consistent: a key works as soon as it is created, and a revocation is seen
        // by the next read (the authenticator's in-process cache bounds how often that is).
        let output = self
            .client
            .get_item()
            .table_name(&self.keys_table)
            .key(PK, s(key_pk(hash)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend("GetItem on the keys table", &e))?;
        output.item().map(decode_record).transpose()
    }

    async fn insert(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError> {
        let key_item = &key_item(hash, record)?;
        let id_item = &id_item(&record.id, hash);
        let inserted = retry_on_conflict("creating a key", || async move {
            let result = self
                .client
                .transact_write_items()
                .transact_items(transact_put(
                    &self.keys_table,
                    key_item.clone(),
                    Condition::absent(),
                )?)
                .transact_items(transact_put(
                    &self.keys_table,
                    id_item.clone(),
                    Condition::absent(),
                )?)
                .send()
                .await;
            match result {
                Ok(_) => Ok(true),
                Err(error) => match cancellation(&error) {
                    Some(Cancellation::Condition(_)) => Ok(false),
                    Some(Cancellation::Conflict) => Err(WriteError::Conflict),
                    None => Err(WriteError::Backend(sdk_message(
                        "TransactWriteItems on the keys table",
                        &error,
                    ))),
                },
            }
        })
        .await
        .map_err(StoreError::Backend)?;
        if inserted {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("key `{}`", record.id)))
        }
    }

    /// Keeps the pairing `key#<hash>` <-> `id#<id>` intact when either side moves: the old key
    /// item of this id and the old id item of this hash are deleted in the same transaction.
    /// Every Lambda container runs this at start-up for the bootstrap admin key, so concurrent
    /// calls are the normal case: each write is conditional on the state it read, and retried.
    async fn upsert(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError> {
        let key_item = &key_item(hash, record)?;
        let id = record.id.as_str();
        retry_on_conflict("replacing a key", || async move {
            let (hash_of_id, id_of_hash) = tokio::try_join!(
                self.read_key_attr(id_pk(id), HASH),
                self.read_key_attr(key_pk(hash), ID),
            )?;
            if hash_of_id.as_deref() == Some(hash) && id_of_hash.as_deref() == Some(id) {
                // Already paired: a single conditional put, which never meets a transaction.
                let condition = Condition::holds(ID, id);
                let result = self
                    .client
                    .put_item()
                    .table_name(&self.keys_table)
                    .set_item(Some(key_item.clone()))
                    .condition_expression(condition.expression)
                    .set_expression_attribute_values(condition.values())
                    .set_expression_attribute_names(Some(condition.names))
                    .send()
                    .await;
                return match result {
                    Ok(_) => Ok(()),
                    Err(error)
                        if error.as_service_error().is_some_and(|e| {
                            e.is_conditional_check_failed_exception()
                                || e.is_transaction_conflict_exception()
                        }) =>
                    {
                        Err(WriteError::Conflict)
                    }
                    Err(error) => Err(WriteError::Backend(sdk_message(
                        "PutItem on the keys table",
                        &error,
                    ))),
                };
            }
            let mut transaction = self
                .client
                .transact_write_items()
                .transact_items(transact_put(
                    &self.keys_table,
                    key_item.clone(),
                    match &id_of_hash {
                        Some(previous) => Condition::holds(ID, previous),
                        None => Condition::absent(),
                    },
                )?)
                .transact_items(transact_put(
                    &self.keys_table,
                    id_item(id, hash),
                    match &hash_of_id {
                        Some(previous) => Condition::holds(HASH, previous),
                        None => Condition::absent(),
                    },
                )?);
            if let Some(old_hash) = hash_of_id.as_deref().filter(|h| *h != hash) {
                transaction = transaction.transact_items(transact_delete(
                    &self.keys_table,
                    key_pk(old_hash),
                    Condition::absent_or_holds(ID, id),
                )?);
            }
            if let Some(old_id) = id_of_hash.as_deref().filter(|i| *i != id) {
                transaction = transaction.transact_items(transact_delete(
                    &self.keys_table,
                    id_pk(old_id),
                    Condition::absent_or_holds(HASH, hash),
                )?);
            }
            match transaction.send().await {
                Ok(_) => Ok(()),
                Err(error) if cancellation(&error).is_some() => Err(WriteError::Conflict),
                Err(error) => Err(WriteError::Backend(sdk_message(
                    "TransactWriteItems on the keys table",
                    &error,
                ))),
            }
        })
        .await
        .map_err(StoreError::Backend)
    }

    /// Scans the table (an admin operation, not on the request path), sorted by id.
    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut items = self
            .client
            .scan()
            .table_name(&self.keys_table)
            .filter_expression("begins_with(#pk, :prefix)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":prefix", s("key#"))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        let mut records = Vec::new();
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| backend("Scan on the keys table", &e))?;
            records.push(decode_record(&item)?);
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        retry_on_conflict("revoking a key", || async move {
            let Some(hash) = self.read_key_attr(id_pk(id), HASH).await? else {
                return Ok(false);
            };
            let output = self
                .client
                .get_item()
                .table_name(&self.keys_table)
                .key(PK, s(key_pk(&hash)))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| WriteError::Backend(sdk_message("GetItem on the keys table", &e)))?;
            let Some(item) = output.item() else {
                return Ok(false);
            };
            let mut record = decode_record(item).map_err(|e| WriteError::Backend(e.to_string()))?;
            if record.id != id {
                return Ok(false);
            }
            let old_json = string_attr(item, RECORD).unwrap_or_default();
            record.disabled = true;
            let new_json = serde_json::to_string(&record)
                .map_err(|e| WriteError::Backend(format!("cannot encode key record: {e}")))?;
            // Conditional on the record read, so a concurrent change is not overwritten.
            let result = self
                .client
                .update_item()
                .table_name(&self.keys_table)
                .key(PK, s(key_pk(&hash)))
                .update_expression("SET #record = :new")
                .condition_expression("#record = :old")
                .expression_attribute_names("#record", RECORD)
                .expression_attribute_values(":new", s(new_json))
                .expression_attribute_values(":old", s(old_json))
                .send()
                .await;
            match result {
                Ok(_) => Ok(true),
                Err(error)
                    if error.as_service_error().is_some_and(|e| {
                        e.is_conditional_check_failed_exception()
                            || e.is_transaction_conflict_exception()
                    }) =>
                {
                    Err(WriteError::Conflict)
                }
                Err(error) => Err(WriteError::Backend(sdk_message(
                    "UpdateItem on the keys table",
                    &error,
                ))),
            }
        })
        .await
        .map_err(StoreError::Backend)
    }
}

/// A cached body as stored: deflated when that makes a large body smaller.
#[derive(Debug, PartialEq)]
enum StoredBody {
    Plain(Bytes),
    Deflated(Vec<u8>),
}

impl StoredBody {
    fn encode(body: &Bytes) -> std::io::Result<Self> {
        if body.len() <= COMPRESS_OVER {
            return Ok(Self::Plain(body.clone()));
        }
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(body)?;
        let deflated = encoder.finish()?;
        Ok(if deflated.len() < body.len() {
            Self::Deflated(deflated)
        } else {
            Self::Plain(body.clone())
        })
    }

    fn len(&self) -> usize {
        match self {
            Self::Plain(body) => body.len(),
            Self::Deflated(body) => body.len(),
        }
    }
}

fn decode_body(stored: Vec<u8>, encoding: Option<&str>) -> Result<Bytes, StoreError> {
    match encoding {
        None => Ok(Bytes::from(stored)),
        Some(DEFLATE) => {
            let mut body = Vec::with_capacity(stored.len() * 4);
            DeflateDecoder::new(stored.as_slice())
                .read_to_end(&mut body)
                .map_err(|e| StoreError::Backend(format!("corrupt cached body: {e}")))?;
            Ok(Bytes::from(body))
        }
        Some(other) => Err(StoreError::Backend(format!(
            "cached body in an unknown encoding `{other}`"
        ))),
    }
}

#[async_trait]
impl CacheStore for DynamoStore {
    async fn get(&self, key: &[u8; 32]) -> Result<Option<Bytes>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.cache_table)
            .key(PK, s(cache_pk(key)))
            .send()
            .await
            .map_err(|e| backend("GetItem on the cache table", &e))?;
        let Some(mut item) = output.item else {
            return Ok(None);
        };
        // DynamoDB deletes expired items lazily (moto never does): expiry is checked here.
        if number_attr::<u64>(&item, EXPIRES_AT).is_none_or(|at| at <= now_secs()) {
            return Ok(None);
        }
        let encoding = string_attr(&item, ENCODING);
        let Some(AttributeValue::B(body)) = item.remove(BODY) else {
            return Err(StoreError::Backend(
                "cache item without a binary `body`".into(),
            ));
        };
        decode_body(body.into_inner(), encoding.as_deref()).map(Some)
    }

    async fn put(&self, key: &[u8; 32], body: Bytes, ttl_s: u64) -> Result<(), StoreError> {
        let stored = StoredBody::encode(&body)
            .map_err(|e| StoreError::Backend(format!("cannot compress a cached body: {e}")))?;
        if stored.len() > MAX_STORED_BODY {
            tracing::warn!(
                size = body.len(),
                stored_size = stored.len(),
                "response too large for a DynamoDB item; not cached"
            );
            return Ok(());
        }
        let mut request = self
            .client
            .put_item()
            .table_name(&self.cache_table)
            .item(PK, s(cache_pk(key)))
            .item(EXPIRES_AT, n(now_secs() + ttl_s));
        request = match stored {
            StoredBody::Plain(body) => request.item(BODY, AttributeValue::B(Blob::new(body))),
            StoredBody::Deflated(body) => request
                .item(BODY, AttributeValue::B(Blob::new(body)))
                .item(ENCODING, s(DEFLATE)),
        };
        request
            .send()
            .await
            .map_err(|e| backend("PutItem on the cache table", &e))?;
        Ok(())
    }
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
                    Err(error) => match error.as_service_error() {
                        Some(e) if e.is_conditional_check_failed_exception() => {
                            let old = match e {
                                UpdateItemError::ConditionalCheckFailedException(failed) => {
                                    failed.item()
                                }
                                _ => None,
                            };
                            Ok(Some(refusal.limit(old)))
                        }
                        Some(e) if e.is_transaction_conflict_exception() => {
                            Err(WriteError::Conflict)
                        }
                        _ => Err(WriteError::Backend(sdk_message(
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
                Err(error) => match cancellation(&error) {
                    Some(Cancellation::Condition(reasons)) => Ok(updates
                        .iter()
                        .zip(reasons)
                        .find(|(_, reason)| condition_failed(reason))
                        .map(|((_, refusal), reason)| refusal.limit(reason.item()))),
                    Some(Cancellation::Conflict) => Err(WriteError::Conflict),
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
            .build()
            .map_err(|e| WriteError::Backend(format!("invalid DynamoDB request: {e}")))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// An unconditional counter update at settlement, retried on conflicts and logged on failure.
    async fn settle_update(&self, key_id: &str, update: CounterUpdate) {
        let pk = limits_pk(key_id);
        let pk = pk.as_str();
        let update = &update;
        let result = retry_on_conflict("settling a request", || async move {
            match self.update_item(pk, update.clone(), false).await {
                Ok(_) => Ok(()),
                Err(error)
                    if error
                        .as_service_error()
                        .is_some_and(|e| e.is_transaction_conflict_exception()) =>
                {
                    Err(WriteError::Conflict)
                }
                Err(error) => Err(WriteError::Backend(sdk_message(
                    "UpdateItem on the limits table",
                    &error,
                ))),
            }
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
        assert_eq!(key_pk("ab12"), "key#ab12");
        assert_eq!(id_pk("key_9"), "id#key_9");
        assert_eq!(limits_pk("key_9"), "key#key_9");
        assert_eq!(minute_sk(29_000_000), "minute#29000000");
        assert_eq!(month_sk(202_611), "month#202611");
        assert_eq!(cache_pk(&[0xab; 32]), format!("cache#{}", "ab".repeat(32)));
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

    fn cancelled(codes: &[&str]) -> SdkError<TransactWriteItemsError, ()> {
        let mut exception = aws_sdk_dynamodb::types::error::TransactionCanceledException::builder();
        for code in codes {
            exception =
                exception.cancellation_reasons(CancellationReason::builder().code(*code).build());
        }
        SdkError::service_error(
            TransactWriteItemsError::TransactionCanceledException(exception.build()),
            (),
        )
    }

    #[test]
    fn cancelled_transactions_are_refusals_conflicts_or_failures() {
        assert!(matches!(
            cancellation(&cancelled(&["None", "ConditionalCheckFailed"])),
            Some(Cancellation::Condition(reasons)) if reasons.len() == 2
        ));
        // A failed condition decides even when the other item also met a transaction.
        assert!(matches!(
            cancellation(&cancelled(&[
                "TransactionConflict",
                "ConditionalCheckFailed"
            ])),
            Some(Cancellation::Condition(_))
        ));
        assert!(matches!(
            cancellation(&cancelled(&["TransactionConflict", "None"])),
            Some(Cancellation::Conflict)
        ));
        assert!(cancellation(&cancelled(&["ThrottlingError", "None"])).is_none());
    }

    #[tokio::test]
    async fn conflicts_are_retried_and_other_failures_are_not() {
        let mut calls = 0;
        let result = retry_on_conflict("test", || {
            calls += 1;
            let outcome = if calls < 3 {
                Err(WriteError::Conflict)
            } else {
                Ok(calls)
            };
            async move { outcome }
        })
        .await;
        assert_eq!(result, Ok(3));

        let mut calls = 0;
        let result: Result<(), String> = retry_on_conflict("test", || {
            calls += 1;
            async { Err(WriteError::Backend("unreachable".into())) }
        })
        .await;
        assert_eq!((result, calls), (Err("unreachable".to_owned()), 1));

        let result: Result<(), String> =
            retry_on_conflict("contended", || async { Err(WriteError::Conflict) }).await;
        assert!(result.unwrap_err().contains("contended"));
    }

    #[test]
    fn large_bodies_are_deflated_and_restored() {
        let small = Bytes::from_static(b"{\"id\":\"x\"}");
        assert_eq!(
            StoredBody::encode(&small).unwrap(),
            StoredBody::Plain(small)
        );

        let large = Bytes::from("{\"content\":\"hello world\"}".repeat(1_000));
        let StoredBody::Deflated(deflated) = StoredBody::encode(&large).unwrap() else {
            panic!("a repetitive 25 KB body should be deflated");
        };
        assert!(deflated.len() < large.len() / 10);
        assert_eq!(decode_body(deflated, Some(DEFLATE)).unwrap(), large);
        assert!(decode_body(vec![1, 2, 3], Some("zstd")).is_err());
    }

    #[test]
    fn incompressible_bodies_are_stored_plain() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..8_192)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let noise = Bytes::from(noise);
        assert_eq!(
            StoredBody::encode(&noise).unwrap(),
            StoredBody::Plain(noise)
        );
    }

    #[test]
    fn config_names_the_missing_variable() {
        let env = HashMap::from([
            ("GATEWAY_KEYS_TABLE", "keys"),
            ("GATEWAY_LIMITS_TABLE", "limits"),
        ]);
        let error =
            DynamoConfig::from_lookup(|name| env.get(name).map(|v| (*v).to_owned())).unwrap_err();
        assert!(error.contains("GATEWAY_CACHE_TABLE"), "{error}");

        let mut env = env;
        env.insert("GATEWAY_CACHE_TABLE", "cache");
        let config =
            DynamoConfig::from_lookup(|name| env.get(name).map(|v| (*v).to_owned())).unwrap();
        assert_eq!(config.cache_table, "cache");
        assert_eq!(config.limits_failure_policy, FailurePolicy::Closed);

        env.insert("GATEWAY_LIMITS_FAILURE_POLICY", "open");
        let config =
            DynamoConfig::from_lookup(|name| env.get(name).map(|v| (*v).to_owned())).unwrap();
        assert_eq!(config.limits_failure_policy, FailurePolicy::Open);

        env.insert("GATEWAY_LIMITS_FAILURE_POLICY", "sometimes");
        let error =
            DynamoConfig::from_lookup(|name| env.get(name).map(|v| (*v).to_owned())).unwrap_err();
        assert!(error.contains("GATEWAY_LIMITS_FAILURE_POLICY"), "{error}");
    }
}
