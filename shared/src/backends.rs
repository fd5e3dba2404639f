//! The bundle of backends an entrypoint hands to the gateway: embedded (one SQLite file, limits in
//! process), AWS (DynamoDB), or Redis (limits and response cache in Redis, the rest embedded).

use std::sync::Arc;

use aws_sdk_dynamodb::Client;

use crate::cache::CacheStore;
use crate::cache::dynamo::DynamoCacheStore;
use crate::error::StoreError;
use crate::keys::KeyStore;
use crate::keys::audit::{AUDIT_TABLE_ENV, AuditLog, DynamoAuditLog, LogOnlyAudit};
use crate::keys::dynamo::DynamoKeyStore;
use crate::keys::edge::{EdgeKeys, NoEdgeKeys};
use crate::limits::Limiter;
use crate::limits::dynamo::DynamoLimiter;
use crate::limits::local::{LocalLimiter, SpendSink};
use crate::storage::dynamo::DynamoConfig;
use crate::storage::embedded::EmbeddedStore;

#[derive(Clone)]
pub struct Backends {
    pub keys: Arc<dyn KeyStore>,
    pub limiter: Arc<dyn Limiter>,
    pub cache: Arc<dyn CacheStore>,
    /// API Gateway keys for usage plans on AWS; nothing locally.
    pub edge: Arc<dyn EdgeKeys>,
    /// Where key administration is recorded (besides the `audit` log line).
    pub audit: Arc<dyn AuditLog>,
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
            audit: store.clone(),
        })
    }

    /// Limits and the response cache in Redis, shared by every process on it; keys, the audit
    /// trail and usage rows stay in the embedded store.
    #[cfg(feature = "redis")]
    pub fn redis(
        store: &Arc<EmbeddedStore>,
        redis: &crate::storage::redis::Redis,
    ) -> Result<Self, StoreError> {
        let usage: Arc<dyn SpendSink> = store.clone();
        Ok(Self {
            limiter: Arc::new(crate::limits::redis::RedisLimiter::new(
                redis.clone(),
                Some(usage),
            )),
            cache: Arc::new(crate::cache::redis::RedisCacheStore::new(redis.clone())),
            ..Self::embedded(store)?
        })
    }

    /// The DynamoDB backends, configured from the environment. Call once per process (Lambda
    /// container).
    pub async fn aws_from_env() -> Result<Self, String> {
        let sdk_config = crate::tls::aws_config().load().await;
        Self::aws(&sdk_config)
    }

    /// The DynamoDB backends over an AWS config the process already loaded, tables named by the
    /// environment.
    pub fn aws(sdk_config: &aws_config::SdkConfig) -> Result<Self, String> {
        let config = DynamoConfig::from_env()?;
        let client = crate::storage::dynamo::client(sdk_config);
        let mut backends = Self::dynamo(&client, &config);
        match std::env::var(AUDIT_TABLE_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            Some(table) => backends.audit = Arc::new(DynamoAuditLog::new(client, table)),
            None => tracing::warn!(
                "{AUDIT_TABLE_ENV} is not set: key administration is audited in the logs only"
            ),
        }
        Ok(backends)
    }

    /// The DynamoDB backends over an existing client; the audit trail goes to the logs only
    /// (set `audit` to a [`DynamoAuditLog`] to keep it in a table).
    pub fn dynamo(client: &Client, config: &DynamoConfig) -> Self {
        Self {
            keys: Arc::new(DynamoKeyStore::new(client.clone(), config)),
            limiter: Arc::new(DynamoLimiter::new(client.clone(), config)),
            cache: Arc::new(DynamoCacheStore::new(client.clone(), config)),
            edge: Arc::new(NoEdgeKeys),
            audit: Arc::new(LogOnlyAudit),
        }
    }
}
