//! The audit log of key administration: who created, revoked, rotated or changed which key.
//!
//! Every entry goes to a store behind [`AuditLog`] (the `audit` table of the embedded SQLite file,
//! or the DynamoDB table named by `GATEWAY_AUDIT_TABLE`) and to a JSON log line (target `audit`).
//! Entries name fields, never their values, so no secret or hash reaches them.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, KeyType};
use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::clock::month_of;
use crate::error::StoreError;
use crate::storage::dynamo::{WriteError, backend, create_table_with_keys, raced, s, string_attr};
use crate::storage::embedded::{EmbeddedStore, decode_record, encode_record, to_sql_int};

/// The environment variable naming the DynamoDB audit table.
pub const AUDIT_TABLE_ENV: &str = "GATEWAY_AUDIT_TABLE";
/// Most entries one listing returns.
pub const MAX_AUDIT_LIMIT: usize = 1000;

const MONTH: &str = "month";
const ENTRY: &str = "entry";
const BODY: &str = "body";

/// What was done to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    Create,
    Revoke,
    Rotate,
    Update,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Epoch milliseconds.
    pub at: u64,
    /// The key that acted, or `cli` (with the OS user) for the local CLI.
    pub actor_key_id: String,
    pub actor_tenant: String,
    pub action: AuditAction,
    pub target_key_id: String,
    /// Names of the fields set or changed; never their values.
    #[serde(default)]
    pub changes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Where audit entries are kept.
#[async_trait]
pub trait AuditLog: Send + Sync {
    async fn append(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// The newest entries of this month and the last, newest first, at most `limit`.
    async fn newest(&self, limit: usize, now_secs: u64) -> Result<Vec<AuditEntry>, StoreError>;
}

/// Writes the log line, then the entry to `log`. The action has already happened when this runs,
/// so a failed write does not undo or fail it: it is logged at error level (the log line above
/// still records the action) and the caller answers with the action's result.
pub async fn record(log: &dyn AuditLog, entry: AuditEntry) {
    match serde_json::to_string(&entry) {
        Ok(json) => tracing::info!(target: "audit", entry = %json, "key administration"),
        Err(error) => tracing::error!(target: "audit", %error, "cannot encode an audit entry"),
    }
    if let Err(error) = log.append(&entry).await {
        tracing::error!(target: "audit", %error, action = ?entry.action,
            target_key_id = %entry.target_key_id, "writing the audit entry failed");
    }
}

/// The YYYYMM month before `month`.
fn previous_month(month: u32) -> u32 {
    if month % 100 == 1 {
        (month / 100 - 1) * 100 + 12
    } else {
        month - 1
    }
}

/// `YYYY-MM`, the DynamoDB partition of a month.
fn month_key(month: u32) -> String {
    format!("{:04}-{:02}", month / 100, month % 100)
}

/// Only the log line: for AWS runs without `GATEWAY_AUDIT_TABLE`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogOnlyAudit;

#[async_trait]
impl AuditLog for LogOnlyAudit {
    async fn append(&self, _entry: &AuditEntry) -> Result<(), StoreError> {
        Ok(())
    }

    async fn newest(&self, _limit: usize, _now_secs: u64) -> Result<Vec<AuditEntry>, StoreError> {
        Err(StoreError::Backend(format!(
            "no audit table is configured ({AUDIT_TABLE_ENV}); entries are in the logs only"
        )))
    }
}

#[async_trait]
impl AuditLog for EmbeddedStore {
    async fn append(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let text = encode_record(entry, "audit entry")?;
        self.with_conn(|conn| {
            conn.execute(
                "INSERT INTO audit (at, entry) VALUES (?1, ?2)",
                params![to_sql_int(entry.at), text],
            )
        })
        .map(drop)
    }

    async fn newest(&self, limit: usize, now_secs: u64) -> Result<Vec<AuditEntry>, StoreError> {
        let since_ms = month_start_ms(previous_month(month_of(now_secs)));
        let limit = to_sql_int(limit.min(MAX_AUDIT_LIMIT) as u64);
        self.with_conn(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT entry FROM audit WHERE at >= ?1 ORDER BY at DESC, rowid DESC LIMIT ?2",
            )?;
            let rows = statement.query_map(params![to_sql_int(since_ms), limit], |row| {
                decode_record(&row.get::<_, String>(0)?)
            })?;
            rows.collect()
        })
    }
}

/// Epoch milliseconds at the start of the YYYYMM `month`.
fn month_start_ms(month: u32) -> u64 {
    crate::clock::month_start_secs(month).saturating_mul(1000)
}

/// The audit table in DynamoDB: hash key `month` (S, `YYYY-MM`), range key `entry` (S,
/// `<epoch ms, 15 digits>#<8 hex random>`), the entry as JSON in `body`.
pub struct DynamoAuditLog {
    client: Client,
    table: String,
}

impl DynamoAuditLog {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Creates the table (`month` and `entry`, on-demand, no expiry: entries are kept) unless it
    /// exists. For tests and local runs; on AWS the SAM template owns it.
    pub async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
        create_table_with_keys(
            client,
            table,
            &[(MONTH, KeyType::Hash), (ENTRY, KeyType::Range)],
        )
        .await
    }

    async fn month(&self, month: u32, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut entries = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#month = :month")
                .expression_attribute_names("#month", MONTH)
                .expression_attribute_values(":month", s(month_key(month)))
                .scan_index_forward(false)
                .limit(i32::try_from(limit.saturating_sub(entries.len())).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| backend("Query on the audit table", &e))?;
            for item in page.items() {
                if let Some(body) = string_attr(item, BODY) {
                    let entry = serde_json::from_str(&body)
                        .map_err(|e| StoreError::Backend(format!("unreadable audit entry: {e}")))?;
                    entries.push(entry);
                }
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() || entries.len() >= limit {
                return Ok(entries);
            }
        }
    }
}

#[async_trait]
impl AuditLog for DynamoAuditLog {
    async fn append(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let body = encode_record(entry, "audit entry")?;
        let month = month_of(entry.at / 1000);
        let sort = format!("{:015}#{:08x}", entry.at, rand::random::<u32>());
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(MONTH, s(month_key(month)))
            .item(ENTRY, s(sort))
            .item(BODY, s(body))
            // Never overwrite an entry (a random suffix collision in the same millisecond).
            .condition_expression("attribute_not_exists(#entry)")
            .expression_attribute_names("#entry", ENTRY)
            .send()
            .await;
        raced("PutItem on the audit table", result)
            .map(drop)
            .map_err(|e| match e {
                WriteError::Backend(message) => StoreError::Backend(message),
                WriteError::Conflict => {
                    StoreError::Backend("an audit entry with the same key exists".into())
                }
            })
    }

    async fn newest(&self, limit: usize, now_secs: u64) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = limit.min(MAX_AUDIT_LIMIT);
        let this_month = month_of(now_secs);
        let mut entries = self.month(this_month, limit).await?;
        if entries.len() < limit {
            let rest = limit - entries.len();
            entries.extend(self.month(previous_month(this_month), rest).await?);
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::embedded::test_dir;

    fn entry(at: u64, target: &str) -> AuditEntry {
        AuditEntry {
            at,
            actor_key_id: "admin".into(),
            actor_tenant: "default".into(),
            action: AuditAction::Create,
            target_key_id: target.into(),
            changes: vec!["name".into()],
            request_id: Some("req_1".into()),
        }
    }

    #[test]
    fn months_and_their_keys() {
        assert_eq!(previous_month(202601), 202512);
        assert_eq!(previous_month(202612), 202611);
        assert_eq!(month_key(202603), "2026-03");
        // 2026-12-01T00:00:00Z
        assert_eq!(month_start_ms(202612), 1_796_083_200_000);
    }

    #[tokio::test]
    async fn the_embedded_log_lists_this_and_last_month_newest_first() {
        let dir = test_dir("audit");
        let store = EmbeddedStore::open(&dir).unwrap();
        let now_secs = 1_796_083_200 + 3600; // an hour into 2026-12
        let old = 1_790_000_000_000; // 2026-09: too old
        let last_month = 1_795_000_000_000; // 2026-11
        let this_month = now_secs * 1000;
        for (at, target) in [(old, "k0"), (last_month, "k1"), (this_month, "k2")] {
            store.append(&entry(at, target)).await.unwrap();
        }
        let listed = store.newest(10, now_secs).await.unwrap();
        let targets: Vec<&str> = listed.iter().map(|e| e.target_key_id.as_str()).collect();
        assert_eq!(targets, ["k2", "k1"]);
        assert_eq!(store.newest(1, now_secs).await.unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
