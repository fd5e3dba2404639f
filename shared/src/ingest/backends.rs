//! The ingest path's backends and settings: the collection store, the file bodies and queue of
//! queued ingests, from the environment on Lambda and the data directory locally.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;

use crate::files::FileBodies;
use crate::files::folder::FolderBodies;
use crate::files::s3::S3Bodies;
use crate::ingest::dynamo::DynamoCollectionStore;
use crate::ingest::embedded::EmbeddedCollections;
use crate::ingest::store::CollectionStore;
use crate::queue::Queue;
use crate::queue::embedded::EmbeddedQueue;
use crate::queue::sqs::SqsQueue;
use crate::storage::embedded::EmbeddedStore;

/// The name of the ingest queue in the embedded store's queue table.
pub const LOCAL_QUEUE_NAME: &str = "ingest";
/// How long a locally received ingest message stays hidden: longer than a queued ingest runs.
const LOCAL_VISIBILITY: Duration = Duration::from_secs(900);
const LOCAL_MAX_RECEIVES: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestSettings {
    /// How long a retrieval result is cached (0: not cached); a write to the collection makes
    /// its entries unreachable sooner (the version is in the key).
    pub retrieval_cache_ttl_s: u64,
    /// Where uploads to the bucket are ingested from: `{prefix}{tenant}/{collection}/{id}`.
    pub upload_prefix: String,
    /// An ingest estimated at more chunks than this goes through the queue.
    pub queue_over_chunks: u64,
    /// An ingest of more bytes than this goes through the queue.
    pub queue_over_bytes: u64,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            retrieval_cache_ttl_s: 300,
            upload_prefix: "ingest/".to_owned(),
            queue_over_chunks: 256,
            queue_over_bytes: 1024 * 1024,
        }
    }
}

impl IngestSettings {
    /// Reads `GATEWAY_RETRIEVAL_CACHE_TTL_S`, `GATEWAY_INGEST_PREFIX`,
    /// `GATEWAY_INGEST_QUEUE_OVER_CHUNKS` and `GATEWAY_INGEST_QUEUE_OVER_BYTES` through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut settings = Self::default();
        let number = |name: &str, max: u64| -> Result<Option<u64>, String> {
            match lookup(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(value) => value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n <= max)
                    .map(Some)
                    .ok_or_else(|| format!("{name} is `{value}`; expected 0 to {max}")),
            }
        };
        if let Some(ttl) = number("GATEWAY_RETRIEVAL_CACHE_TTL_S", 86_400)? {
            settings.retrieval_cache_ttl_s = ttl;
        }
        if let Some(chunks) = number("GATEWAY_INGEST_QUEUE_OVER_CHUNKS", 1_000_000)? {
            settings.queue_over_chunks = chunks;
        }
        if let Some(bytes) = number("GATEWAY_INGEST_QUEUE_OVER_BYTES", 1 << 30)? {
            settings.queue_over_bytes = bytes;
        }
        if let Some(prefix) = lookup("GATEWAY_INGEST_PREFIX").filter(|p| !p.trim().is_empty()) {
            let prefix = prefix.trim().trim_start_matches('/').to_owned();
            settings.upload_prefix = if prefix.ends_with('/') {
                prefix
            } else {
                format!("{prefix}/")
            };
        }
        Ok(settings)
    }
}

/// Collections, and what queued ingests need: their documents' bodies and the queue.
#[derive(Clone)]
pub struct IngestBackends {
    pub store: Arc<dyn CollectionStore>,
    /// `None` where the stack has no bucket or ingest queue: large ingests are then refused.
    pub queued: Option<QueuedIngest>,
    pub settings: IngestSettings,
}

#[derive(Clone)]
pub struct QueuedIngest {
    pub bodies: Arc<dyn FileBodies>,
    pub queue: Arc<dyn Queue>,
}

impl IngestBackends {
    /// Locally: collections and the ingest queue in the embedded store, queued documents under
    /// `<dir>/objects`.
    pub fn embedded(
        store: &Arc<EmbeddedStore>,
        dir: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let settings = IngestSettings::from_lookup(lookup)?;
        let collections = EmbeddedCollections::new(Arc::clone(store)).map_err(|e| e.to_string())?;
        Ok(Self {
            store: Arc::new(collections),
            queued: Some(QueuedIngest {
                bodies: Arc::new(FolderBodies::new(dir.join("objects"))),
                queue: Arc::new(EmbeddedQueue::named(
                    Arc::clone(store),
                    LOCAL_QUEUE_NAME,
                    LOCAL_VISIBILITY,
                    LOCAL_MAX_RECEIVES,
                )),
            }),
            settings,
        })
    }

    /// On AWS, when the stack names the collections table (`GATEWAY_COLLECTIONS_TABLE`); queued
    /// ingests when it also names the bucket and the ingest queue (`GATEWAY_BUCKET`,
    /// `GATEWAY_INGEST_QUEUE_URL`). `None` when no collections table is set.
    pub fn aws(
        sdk_config: &aws_config::SdkConfig,
        dynamo: &Client,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, String> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        // A `let` over the literal: infra/contract.py follows it to learn the table.
        let table = match get("GATEWAY_COLLECTIONS_TABLE") {
            Some(table) => table,
            None => return Ok(None),
        };
        let queued = match (get("GATEWAY_BUCKET"), get("GATEWAY_INGEST_QUEUE_URL")) {
            (Some(bucket), Some(queue_url)) => Some(QueuedIngest {
                bodies: Arc::new(S3Bodies::new(crate::files::s3::client(sdk_config), bucket)),
                queue: Arc::new(SqsQueue::new(
                    crate::queue::sqs::client(sdk_config),
                    queue_url,
                    None,
                )),
            }),
            _ => None,
        };
        Ok(Some(Self {
            store: Arc::new(DynamoCollectionStore::over_table(dynamo.clone(), table)),
            queued,
            settings: IngestSettings::from_lookup(&lookup)?,
        }))
    }
}
