//! DynamoDB plumbing shared by the key store (`keys::dynamo`), the limiter (`limits::dynamo`) and
//! the response cache (`cache::dynamo`): their configuration, one client with bounded calls, table
//! creation, attribute helpers, and the handling of conditional writes and transactions that
//! meet other writers, written once. Endpoints and credentials come from the standard AWS
//! environment (`AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL` included), so the same code runs
//! against DynamoDB and against moto.
//!
//! Every table has the partition key `pk` (S), the limits table also the sort key `sk` (S); the
//! TTL attribute is `expires_at` (N, epoch seconds). Each concern documents its items beside its
//! code.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::error::{BuildError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, KeySchemaElement,
    KeyType, ScalarAttributeType, TimeToLiveSpecification, TimeToLiveStatus,
};
use rand::Rng;

use crate::error::StoreError;

pub(crate) const PK: &str = "pk";
pub(crate) const SK: &str = "sk";
pub(crate) const EXPIRES_AT: &str = "expires_at";

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

/// A client for the three tables over an AWS config the process already loaded (one per
/// container, shared by every client), each call bounded by `ATTEMPT_TIMEOUT` /
/// `OPERATION_TIMEOUT`.
pub fn client(sdk_config: &aws_config::SdkConfig) -> Client {
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
    // Stalled-stream protection wraps every request and response body in a throughput check;
    // the two timeouts already bound each call, and these bodies are a few hundred bytes
    // (tests/bench/PROFILE.md: about 8 % of a call's instructions).
    Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(sdk_config)
            .timeout_config(timeouts)
            .stalled_stream_protection(
                aws_sdk_dynamodb::config::StalledStreamProtectionConfig::disabled(),
            )
            .build(),
    )
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

/// Creates the batch table (`pk` and `sk`, on-demand, TTL on `expires_at`; see `batch::dynamo`)
/// unless it exists, and waits until it is usable. For tests and local runs, like `create_tables`.
pub async fn create_batch_table(client: &Client, table: &str) -> Result<(), StoreError> {
    create_table(client, table, true).await
}

/// Creates the responses table (`pk`, on-demand, TTL on `expires_at`; see `responses::dynamo`)
/// unless it exists, and waits until it is usable. For tests and local runs, like `create_tables`.
pub async fn create_responses_table(client: &Client, table: &str) -> Result<(), StoreError> {
    create_table(client, table, false).await
}

async fn create_table(client: &Client, table: &str, with_sort_key: bool) -> Result<(), StoreError> {
    let mut keys = vec![(PK, KeyType::Hash)];
    if with_sort_key {
        keys.push((SK, KeyType::Range));
    }
    create_table_with_keys(client, table, &keys).await?;
    enable_ttl(client, table).await
}

/// Creates `table` with string attributes `keys` (on-demand) unless it exists, and waits until it
/// is usable.
pub(crate) async fn create_table_with_keys(
    client: &Client,
    table: &str,
    keys: &[(&str, KeyType)],
) -> Result<(), StoreError> {
    let mut request = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest);
    for (name, key_type) in keys {
        request = request
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(*name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(build_error)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(*name)
                    .key_type(key_type.clone())
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
    Ok(())
}

/// Turns on expiry by `expires_at` unless it is on.
async fn enable_ttl(client: &Client, table: &str) -> Result<(), StoreError> {
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

pub(crate) fn sdk_message(what: &str, error: &impl std::error::Error) -> String {
    format!("DynamoDB {what} failed: {}", DisplayErrorContext(error))
}

pub(crate) fn backend(what: &str, error: &impl std::error::Error) -> StoreError {
    StoreError::Backend(sdk_message(what, error))
}

pub(crate) fn build_error(error: BuildError) -> StoreError {
    StoreError::Backend(format!("invalid DynamoDB request: {error}"))
}

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(crate) fn string_attr(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

pub(crate) fn number_attr<T: std::str::FromStr>(
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Option<T> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// Why a write that may race another writer did not happen.
pub(crate) enum WriteError {
    /// Another writer got there first (a transaction in progress, or state read before the write
    /// changed): try again.
    Conflict,
    Backend(String),
}

impl From<BuildError> for WriteError {
    fn from(error: BuildError) -> Self {
        WriteError::Backend(format!("invalid DynamoDB request: {error}"))
    }
}

/// Runs `attempt` until it neither succeeds nor fails for good, sleeping a jittered backoff after
/// each conflict.
pub(crate) async fn retry_on_conflict<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, WriteError>>,
{
    for n in 0..CONFLICT_ATTEMPTS {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(WriteError::Backend(message)) => return Err(message),
            Err(WriteError::Conflict) => conflict_backoff(n).await,
        }
    }
    Err(format!(
        "{what}: still conflicting with concurrent writers after {CONFLICT_ATTEMPTS} attempts"
    ))
}

/// Sleeps before attempt `attempt + 1` of a write that met another writer: full jitter, 5 ms
/// doubling up to 320 ms, so contending writers spread out.
pub(crate) async fn conflict_backoff(attempt: u32) {
    let cap_ms = 5u64 << attempt.min(6);
    let wait_ms = rand::rng().random_range(0..=cap_ms);
    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
}

/// Why DynamoDB turned a write down, read the same way for a single-item write and for a
/// transaction.
#[derive(Debug)]
pub(crate) enum Rejection<'a> {
    /// A condition did not hold. For a transaction, the reasons in the order of its items; for a
    /// single-item write, none.
    Condition(&'a [CancellationReason]),
    /// The write met a transaction in progress (or, for a transaction, another transaction).
    Conflict,
}

/// The rejection behind a failed write; `None` when it failed for another reason (throttling, a
/// network error, ...), which retrying at once would not cure.
pub(crate) fn rejection<E, R>(error: &SdkError<E, R>) -> Option<Rejection<'_>>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let service = error.as_service_error()?;
    let service_error: &(dyn std::error::Error + 'static) = service;
    if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
        service_error.downcast_ref::<TransactWriteItemsError>()
    {
        let reasons = cancelled.cancellation_reasons();
        return if reasons.iter().any(condition_failed) {
            Some(Rejection::Condition(reasons))
        } else if reasons
            .iter()
            .any(|r| r.code() == Some("TransactionConflict"))
        {
            Some(Rejection::Conflict)
        } else {
            None
        };
    }
    match service.code()? {
        "ConditionalCheckFailedException" => Some(Rejection::Condition(&[])),
        "TransactionConflictException" => Some(Rejection::Conflict),
        _ => None,
    }
}

/// The outcome of a write conditional on state read just before it (or not conditional at all):
/// a failed condition means another writer changed that state meanwhile, so it is retried like
/// a conflict.
pub(crate) fn raced<T, E, R>(what: &str, result: Result<T, SdkError<E, R>>) -> Result<T, WriteError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: Debug,
{
    result.map_err(|error| match rejection(&error) {
        Some(_) => WriteError::Conflict,
        None => WriteError::Backend(sdk_message(what, &error)),
    })
}

pub(crate) fn condition_failed(reason: &CancellationReason) -> bool {
    reason.code() == Some("ConditionalCheckFailed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
    use aws_sdk_dynamodb::types::error::{
        ConditionalCheckFailedException, ProvisionedThroughputExceededException,
        TransactionConflictException,
    };

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
            rejection(&cancelled(&["None", "ConditionalCheckFailed"])),
            Some(Rejection::Condition(reasons)) if reasons.len() == 2
        ));
        // A failed condition decides even when the other item also met a transaction.
        assert!(matches!(
            rejection(&cancelled(&[
                "TransactionConflict",
                "ConditionalCheckFailed"
            ])),
            Some(Rejection::Condition(_))
        ));
        assert!(matches!(
            rejection(&cancelled(&["TransactionConflict", "None"])),
            Some(Rejection::Conflict)
        ));
        assert!(rejection(&cancelled(&["ThrottlingError", "None"])).is_none());
    }

    #[test]
    fn single_writes_are_refusals_conflicts_or_failures() {
        // As parsed from a response: the error code is in the metadata.
        let meta = |code: &str| ErrorMetadata::builder().code(code).build();
        let failed =
            |error: UpdateItemError| SdkError::<UpdateItemError, ()>::service_error(error, ());
        let condition = failed(UpdateItemError::ConditionalCheckFailedException(
            ConditionalCheckFailedException::builder()
                .meta(meta("ConditionalCheckFailedException"))
                .build(),
        ));
        let conflict = failed(UpdateItemError::TransactionConflictException(
            TransactionConflictException::builder()
                .meta(meta("TransactionConflictException"))
                .build(),
        ));
        let throttled = failed(UpdateItemError::ProvisionedThroughputExceededException(
            ProvisionedThroughputExceededException::builder()
                .meta(meta("ProvisionedThroughputExceededException"))
                .build(),
        ));
        assert!(matches!(
            rejection(&condition),
            Some(Rejection::Condition([]))
        ));
        assert!(matches!(rejection(&conflict), Some(Rejection::Conflict)));
        assert!(rejection(&throttled).is_none());
        assert!(matches!(
            raced("UpdateItem", Err::<(), _>(condition)),
            Err(WriteError::Conflict)
        ));
        assert!(matches!(
            raced("UpdateItem", Err::<(), _>(throttled)),
            Err(WriteError::Backend(message)) if message.contains("UpdateItem")
        ));
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
