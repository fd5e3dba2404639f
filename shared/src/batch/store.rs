//! What the batch path stores: file metadata, uploads and their parts, batches with their
//! request counts, and one result per item. DynamoDB (the batch table) on AWS
//! (`batch::dynamo`), SQLite locally (`batch::embedded`).
//!
//! Every record but the counts is a JSON document with a version. Changes to a batch are
//! compare-and-swap on that version, so the API (cancel), the expander and the finalizer never
//! overwrite each other; the counts are atomic counters beside the document, raised only in the
//! same atomic write that records an item's first result, so redelivery never counts twice.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::limits::local::Spend;

/// A file's metadata. Its body is the concatenation of `objects` (one for a file posted whole,
/// one per part for a file assembled by the Uploads API) in `files::FileBodies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub id: String,
    pub tenant: String,
    /// `batch` (input), `batch_output` (results and errors), or another OpenAI purpose.
    pub purpose: String,
    pub filename: String,
    pub bytes: u64,
    pub created_at: u64,
    #[serde(default)]
    pub expires_at: Option<u64>,
    pub objects: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadStatus {
    Pending,
    Completed,
    Cancelled,
    Expired,
}

/// An upload in progress (OpenAI's Uploads API): parts arrive one request each, `complete`
/// makes them a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub id: String,
    pub tenant: String,
    pub filename: String,
    pub purpose: String,
    pub mime_type: String,
    /// The size the client declared; `complete` checks the parts add up to it.
    pub bytes: u64,
    pub created_at: u64,
    pub expires_at: u64,
    pub status: UploadStatus,
    #[serde(default)]
    pub file_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadPart {
    pub id: String,
    pub upload_id: String,
    pub bytes: u64,
    pub created_at: u64,
    /// Where its body is (`files::part_key`).
    pub object: String,
}

/// OpenAI's batch lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    /// No item will run any more and the files are written (or the batch failed validation).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Completed | Self::Expired | Self::Cancelled
        )
    }
}

/// One entry of a batch's `errors.data` (why validation failed the whole batch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineError {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub param: Option<String>,
    /// 1-based line of the input file.
    #[serde(default)]
    pub line: Option<u64>,
}

/// A batch job: one from the Batches API (an input file), or a job of messages sent straight to
/// the queue (`direct`: no file, no known total).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: String,
    pub tenant: String,
    /// The key the batch acts for: its scope, limits and budget apply to every item.
    pub key_id: String,
    pub endpoint: String,
    #[serde(default)]
    pub input_file_id: Option<String>,
    pub completion_window: String,
    pub status: BatchStatus,
    pub created_at: u64,
    /// When `completion_window` ends: unfinished items then fail with `batch_expired`.
    pub expires_at: u64,
    #[serde(default)]
    pub in_progress_at: Option<u64>,
    #[serde(default)]
    pub finalizing_at: Option<u64>,
    #[serde(default)]
    pub completed_at: Option<u64>,
    #[serde(default)]
    pub failed_at: Option<u64>,
    #[serde(default)]
    pub expired_at: Option<u64>,
    #[serde(default)]
    pub cancelling_at: Option<u64>,
    #[serde(default)]
    pub cancelled_at: Option<u64>,
    #[serde(default)]
    pub output_file_id: Option<String>,
    #[serde(default)]
    pub error_file_id: Option<String>,
    #[serde(default)]
    pub errors: Vec<LineError>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Requests in the input file, known once validation passed (0 before).
    #[serde(default)]
    pub total: u64,
    /// Lines the expander has enqueued: where a restarted expander resumes.
    #[serde(default)]
    pub expanded: u64,
    #[serde(default)]
    pub direct: bool,
    /// Raised by every replacement; `update_batch` swaps only from the version it read.
    #[serde(default)]
    pub version: u64,
}

/// Items of a batch with a result: each counted once, by the write that recorded it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub completed: u64,
    pub failed: u64,
}

impl Counts {
    pub fn done(self) -> u64 {
        self.completed + self.failed
    }
}

/// The result of one item: its line of the output file (`ok`) or of the error file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemResult {
    pub custom_id: String,
    /// 0-based line of the input file, for ordering the output (0 for direct jobs).
    pub line: u64,
    pub ok: bool,
    /// The JSONL record, as written to the output or error file.
    pub record: String,
}

#[async_trait]
pub trait BatchStore: Send + Sync {
    async fn put_file(&self, file: &FileRecord) -> Result<(), StoreError>;
    /// A file of the tenant; `None` if it does not exist or belongs to another tenant.
    async fn get_file(&self, tenant: &str, id: &str) -> Result<Option<FileRecord>, StoreError>;
    /// The tenant's files, newest first, starting after the file `after` (ids sort by time).
    async fn list_files(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileRecord>, StoreError>;
    /// Deletes a file's metadata; false if the tenant has no such file.
    async fn delete_file(&self, tenant: &str, id: &str) -> Result<bool, StoreError>;

    /// Creates or replaces an upload.
    async fn put_upload(&self, upload: &UploadRecord) -> Result<(), StoreError>;
    async fn get_upload(&self, tenant: &str, id: &str) -> Result<Option<UploadRecord>, StoreError>;
    async fn put_upload_part(&self, part: &UploadPart) -> Result<(), StoreError>;
    /// Every part of an upload, in no particular order.
    async fn upload_parts(&self, upload_id: &str) -> Result<Vec<UploadPart>, StoreError>;

    /// Creates a batch (`version` 0, counts 0); `Conflict` if the id exists.
    async fn create_batch(&self, batch: &BatchRecord) -> Result<(), StoreError>;
    async fn get_batch(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(BatchRecord, Counts)>, StoreError>;
    /// The tenant's batches, newest first, starting after the batch `after`.
    async fn list_batches(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(BatchRecord, Counts)>, StoreError>;
    /// Replaces the batch with `batch` (whose `version` must be one above the stored one) if
    /// the stored version is still `batch.version - 1`; false if another writer came first.
    async fn update_batch(&self, batch: &BatchRecord) -> Result<bool, StoreError>;
    /// Batches not yet terminal, of every tenant (for the expiry sweep).
    async fn open_batches(&self) -> Result<Vec<BatchRecord>, StoreError>;

    /// Records an item's result and raises the batch's counts, atomically and once per
    /// `custom_id`: `None` if the item already had a result (nothing changed), else the counts
    /// after this one.
    async fn record_result(
        &self,
        tenant: &str,
        batch_id: &str,
        result: &ItemResult,
    ) -> Result<Option<Counts>, StoreError>;
    /// `record_result`, and the item's `spend` committed with it where the store keeps spend
    /// (the embedded store); spend of an item recorded before is dropped, never billed twice.
    /// Stores whose spend lives elsewhere (DynamoDB: the limits table, written at settlement)
    /// ignore `spend`.
    async fn record_result_with_spend(
        &self,
        tenant: &str,
        batch_id: &str,
        result: &ItemResult,
        spend: &[Spend],
    ) -> Result<Option<Counts>, StoreError> {
        let _ = spend;
        self.record_result(tenant, batch_id, result).await
    }
    async fn get_result(
        &self,
        batch_id: &str,
        custom_id: &str,
    ) -> Result<Option<ItemResult>, StoreError>;
    /// Every result of a batch (at most the batch's total), in no particular order.
    async fn results(&self, batch_id: &str) -> Result<Vec<ItemResult>, StoreError>;
}
