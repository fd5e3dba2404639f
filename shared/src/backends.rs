//! The bundle of backends an entrypoint hands to the gateway: embedded (one SQLite file, limits in
//! process) or AWS (DynamoDB).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::Client;

use crate::batch::dynamo::DynamoBatchStore;
use crate::batch::{BatchBackends, BatchSettings};
use crate::cache::CacheStore;
use crate::cache::dynamo::DynamoCacheStore;
use crate::error::StoreError;
use crate::files::folder::FolderBodies;
use crate::files::s3::S3Bodies;
use crate::keys::KeyStore;
use crate::keys::dynamo::DynamoKeyStore;
use crate::keys::edge::{EdgeKeys, NoEdgeKeys};
use crate::limits::Limiter;
use crate::limits::dynamo::DynamoLimiter;
use crate::limits::local::{LocalLimiter, SpendSink};
use crate::queue::embedded::EmbeddedQueue;
use crate::queue::sqs::SqsQueue;
use crate::storage::dynamo::DynamoConfig;
use crate::storage::embedded::EmbeddedStore;

#[derive(Clone)]
pub struct Backends {
    pub keys: Arc<dyn KeyStore>,
    pub limiter: Arc<dyn Limiter>,
    pub cache: Arc<dyn CacheStore>,
    /// API Gateway keys for usage plans on AWS; nothing locally.
    pub edge: Arc<dyn EdgeKeys>,
    /// Batch jobs' store, file bodies and queue; `None` where they are not configured (the
    /// batch routes then answer 404).
    pub batch: Option<BatchBackends>,
}

impl Backends {
    /// Keys and cache in the embedded store, limits in process with spend persisted there and
    /// reloaded from it.
    pub fn embedded(store: &Arc<EmbeddedStore>) -> Result<Self, StoreError> {
        let spent = store.spend_this_month()?;
        let sink: Arc<dyn SpendSink> = store.clone();
        Ok(Self {
            keys: store.clone(),
            limiter: Arc::new(LocalLimiter::new(Some(sink), spent)),
            cache: store.clone(),
            edge: Arc::new(NoEdgeKeys),
            batch: None,
        })
    }

    /// The DynamoDB backends, configured from the environment. Call once per process (Lambda
    /// container).
    pub async fn aws_from_env() -> Result<Self, String> {
        let sdk_config = aws_config::defaults(BehaviorVersion::latest()).load().await;
        Self::aws(&sdk_config)
    }

    /// The DynamoDB backends over an AWS config the process already loaded, tables named by the
    /// environment.
    pub fn aws(sdk_config: &aws_config::SdkConfig) -> Result<Self, String> {
        let config = DynamoConfig::from_env()?;
        let client = crate::storage::dynamo::client(sdk_config);
        let mut backends = Self::dynamo(&client, &config);
        backends.batch = BatchBackends::aws(sdk_config, &client, |name| std::env::var(name).ok())?;
        Ok(backends)
    }

    /// The DynamoDB backends over an existing client.
    pub fn dynamo(client: &Client, config: &DynamoConfig) -> Self {
        Self {
            keys: Arc::new(DynamoKeyStore::new(client.clone(), config)),
            limiter: Arc::new(DynamoLimiter::new(client.clone(), config)),
            cache: Arc::new(DynamoCacheStore::new(client.clone(), config)),
            edge: Arc::new(NoEdgeKeys),
            batch: None,
        }
    }
}

/// How long a locally received batch message stays hidden: longer than an item can run (a
/// model's total timeout is 120 s by default), or it would run twice.
const LOCAL_VISIBILITY_SECS: u64 = 300;

impl BatchBackends {
    /// Locally: metadata and the queue in the embedded store, file bodies under
    /// `<dir>/objects`. Settings from `lookup` (`GATEWAY_BATCH_*`, and
    /// `GATEWAY_BATCH_VISIBILITY_SECS` for the queue's visibility timeout).
    pub fn embedded(
        store: &Arc<EmbeddedStore>,
        dir: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let visibility = match lookup("GATEWAY_BATCH_VISIBILITY_SECS").filter(|v| !v.is_empty()) {
            None => LOCAL_VISIBILITY_SECS,
            Some(value) => value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|secs| (1..=43_200).contains(secs))
                .ok_or_else(|| {
                    format!("GATEWAY_BATCH_VISIBILITY_SECS is `{value}`; expected 1 to 43200")
                })?,
        };
        let settings = BatchSettings::from_lookup(lookup)?;
        Ok(Self {
            store: store.clone(),
            bodies: Arc::new(FolderBodies::new(dir.join("objects"))),
            queue: Arc::new(EmbeddedQueue::new(
                Arc::clone(store),
                Duration::from_secs(visibility),
                settings.max_receives,
            )),
            settings,
        })
    }

    /// On AWS, when the stack names the batch table, the bucket and the queue
    /// (`GATEWAY_BATCH_TABLE`, `GATEWAY_BUCKET`, `GATEWAY_BATCH_QUEUE_URL`; the dead-letter queue
    /// by `GATEWAY_BATCH_DLQ_URL`); `None` when none is set.
    pub fn aws(
        sdk_config: &aws_config::SdkConfig,
        dynamo: &Client,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, String> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let (table, bucket, queue_url) = match (
            get("GATEWAY_BATCH_TABLE"),
            get("GATEWAY_BUCKET"),
            get("GATEWAY_BATCH_QUEUE_URL"),
        ) {
            (None, None, None) => return Ok(None),
            (Some(table), Some(bucket), Some(queue)) => (table, bucket, queue),
            _ => {
                return Err(
                    "batch jobs need all of GATEWAY_BATCH_TABLE, GATEWAY_BUCKET and \
                     GATEWAY_BATCH_QUEUE_URL"
                        .into(),
                );
            }
        };
        let settings = BatchSettings::from_lookup(&lookup)?;
        Ok(Some(Self {
            store: Arc::new(DynamoBatchStore::new(dynamo.clone(), table)),
            bodies: Arc::new(S3Bodies::new(crate::files::s3::client(sdk_config), bucket)),
            queue: Arc::new(SqsQueue::new(
                crate::queue::sqs::client(sdk_config),
                queue_url,
                get("GATEWAY_BATCH_DLQ_URL"),
            )),
            settings,
        }))
    }
}
