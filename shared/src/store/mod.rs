//! The storage traits: every stateful part of the gateway sits behind one of these, with an
//! embedded implementation (local run, tests, small installs) and an AWS one.

pub mod dynamo;
pub mod embedded;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::auth::KeyRecord;
use crate::edge::EdgeKeys;
use crate::limits::Limiter;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("storage backend failed: {0}")]
    Backend(String),
}

/// API keys, addressed by the SHA-256 of the secret: the secret itself is never stored.
#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn get_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Creates a key; fails with `Conflict` if the hash or the id exists.
    async fn insert(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError>;
    /// Creates or replaces a key (used for the bootstrap admin key).
    async fn upsert(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError>;
    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Marks a key revoked; false if no key has that id.
    async fn revoke(&self, id: &str) -> Result<bool, StoreError>;
}

/// Response bodies by the hash of the canonical request.
#[async_trait]
pub trait CacheStore: Send + Sync {
    async fn get(&self, key: &[u8; 32]) -> Result<Option<Bytes>, StoreError>;
    /// Stores a body for `ttl_s` seconds. Implementations may write in the background.
    async fn put(&self, key: &[u8; 32], body: Bytes, ttl_s: u64) -> Result<(), StoreError>;
}

/// The backends an entrypoint hands to the gateway.
#[derive(Clone)]
pub struct Backends {
    pub keys: Arc<dyn KeyStore>,
    pub limiter: Arc<dyn Limiter>,
    pub cache: Arc<dyn CacheStore>,
    /// API Gateway keys for usage plans on AWS; nothing locally.
    pub edge: Arc<dyn EdgeKeys>,
}
