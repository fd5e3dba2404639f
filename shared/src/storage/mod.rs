//! Storage plumbing shared by the concern folders: the error every store reports, the embedded
//! store (SQLite in a data directory) and the DynamoDB tables. Each concern's trait lives with
//! the concern (`keys::KeyStore`, `cache::CacheStore`, `limits::Limiter`).

pub mod dynamo;
pub mod embedded;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("storage backend failed: {0}")]
    Backend(String),
}
