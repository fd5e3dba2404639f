//! What collections keep beside their vectors: the collection (its embedding model, chunking and
//! a version raised by every write), one record per document (its content hash and chunk ids, so
//! an unchanged document costs nothing and a changed one knows which chunks to drop), and ingest
//! jobs for the queued path. DynamoDB on AWS (`ingest::dynamo`), SQLite locally
//! (`ingest::embedded`). Every read and write is scoped to a tenant: another tenant's collection
//! does not exist for it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::StoreError;
use crate::ingest::chunking::ChunkSettings;

/// A collection of one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionRecord {
    pub tenant: String,
    pub name: String,
    /// The public embedding model its documents and queries are embedded with.
    pub embedding_model: String,
    #[serde(default)]
    pub dimensions: Option<u32>,
    pub chunking: ChunkSettings,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// The key that created it: uploads to the bucket (which carry no key) are billed to it.
    pub owner_key_id: String,
    pub created_at: u64,
    /// Raised by every write to the collection's documents; the retrieval cache keys on it.
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub document_count: u64,
    #[serde(default)]
    pub chunk_count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentFormat {
    Text,
    Markdown,
}

/// A document as last ingested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentRecord {
    pub id: String,
    /// Hex SHA-256 of the text, its format and its metadata: equal means nothing to do.
    pub content_sha256: String,
    /// The vector keys of its chunks, in order.
    pub chunk_ids: Vec<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    pub format: DocumentFormat,
    pub bytes: u64,
    pub updated_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    InProgress,
    Completed,
    Failed,
}

/// Per-document outcomes of an ingest, added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestCounts {
    pub created: u64,
    pub replaced: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub chunks: u64,
    pub embedding_calls: u64,
    pub cache_hits: u64,
}

/// A queued ingest: its documents wait in the file bodies under `ingest-jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestJob {
    pub id: String,
    pub tenant: String,
    pub collection: String,
    /// The key the ingest is billed to.
    pub key_id: String,
    pub status: JobStatus,
    pub documents: u64,
    #[serde(default)]
    pub counts: IngestCounts,
    #[serde(default)]
    pub error: Option<String>,
    pub created_at: u64,
    #[serde(default)]
    pub completed_at: Option<u64>,
}

#[async_trait]
pub trait CollectionStore: Send + Sync {
    /// Creates a collection; `Conflict` if the tenant has one of that name.
    async fn create_collection(&self, collection: &CollectionRecord) -> Result<(), StoreError>;
    async fn get_collection(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<CollectionRecord>, StoreError>;
    /// The tenant's collections by name.
    async fn list_collections(&self, tenant: &str) -> Result<Vec<CollectionRecord>, StoreError>;
    /// Deletes a collection and its document records; false if the tenant has none of that name.
    async fn delete_collection(&self, tenant: &str, name: &str) -> Result<bool, StoreError>;

    async fn get_document(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
    ) -> Result<Option<DocumentRecord>, StoreError>;
    /// Every document of a collection (at most `limit`).
    async fn list_documents(
        &self,
        tenant: &str,
        collection: &str,
        limit: usize,
    ) -> Result<Vec<DocumentRecord>, StoreError>;
    /// Creates or replaces a document's record and raises the collection's version (and its
    /// counts), together; `None` if the collection is gone, else the new version.
    async fn put_document(
        &self,
        tenant: &str,
        collection: &str,
        document: &DocumentRecord,
    ) -> Result<Option<u64>, StoreError>;
    /// Deletes a document's record and raises the collection's version; the record deleted, or
    /// `None` if there was none.
    async fn delete_document(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
    ) -> Result<Option<DocumentRecord>, StoreError>;

    /// Creates or replaces an ingest job.
    async fn put_job(&self, job: &IngestJob) -> Result<(), StoreError>;
    async fn get_job(&self, tenant: &str, id: &str) -> Result<Option<IngestJob>, StoreError>;
}
