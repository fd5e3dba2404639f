//! The gateway's state, built once per process (or Lambda container) from the config and the
//! backends: the model registry, the authenticator, the limiter and the response cache.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backends::Backends;
use crate::background::Background;
use crate::batch::BatchBackends;
use crate::cache::ResponseCache;
use crate::config::{
    CachePartition, Config, ConfigError, EffectiveGuard, GuardSettings, RagBinding, RoutingConfig,
    SemanticCacheConfig,
};
use crate::ingest::backends::IngestBackends;
use crate::ingest::embedding_cache::EmbeddingCache;
use crate::keys::edge::EdgeKeys;
use crate::keys::{Authenticator, KeyRecord};
use crate::limits::Limiter;
use crate::routing::Registry;
use crate::vectors::VectorStore;

pub struct Gateway {
    pub models: Registry,
    pub auth: Authenticator,
    pub limiter: Arc<dyn Limiter>,
    pub cache: ResponseCache,
    pub cache_partition: CachePartition,
    /// Embeddings by tenant, model and text, in the response cache's store.
    pub embedding_cache: EmbeddingCache,
    pub routing: RoutingConfig,
    pub max_body_bytes: usize,
    pub started_at: u64,
    pub background: Background,
    pub edge: Arc<dyn EdgeKeys>,
    pub audit: Arc<dyn crate::keys::audit::AuditLog>,
    /// Usage per key, day and model, read back for the usage reports (the limiter writes it);
    /// `None` where reports are not served (the usage routes then answer 404).
    pub usage: Option<Arc<dyn crate::usage::UsageStore>>,
    /// Batch jobs' store, file bodies and queue; `None` where they are not configured (the
    /// batch routes then answer 404).
    pub batch: Option<BatchBackends>,
    /// Collections' records and queued ingests; `None` where they are not configured (the
    /// collections routes then answer 404).
    pub ingest: Option<IngestBackends>,
    /// Collections' vectors; `None` where no vector store is configured.
    pub vectors: Option<Arc<dyn VectorStore>>,
    /// Stored Responses API objects; `None` where no store is configured (responses are then
    /// answered but not stored).
    pub responses: Option<Arc<dyn crate::responses::ResponseStore>>,
    /// Chat model names bound to a collection (`[models.NAME] rag`).
    pub rag_bindings: BTreeMap<String, RagBinding>,
    /// Served chat models with a semantic cache (`[models.NAME.cache] semantic`).
    pub semantic_caches: BTreeMap<String, SemanticCacheConfig>,
    /// The gateway-wide guard settings (`[guard]`).
    pub guard: GuardSettings,
    /// Model names with guard settings of their own (`[models.NAME.guard]`).
    pub model_guards: BTreeMap<String, GuardSettings>,
}

impl Gateway {
    /// Builds the gateway; credentials are read through `env` (the process environment in
    /// production, a map in tests). Fails naming the config field at fault.
    pub fn new(
        config: &Config,
        backends: Backends,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let models = Registry::from_config(config, env)?;
        Ok(Self {
            models,
            auth: Authenticator::new(
                backends.keys,
                Duration::from_millis(config.server.key_cache_ttl_ms),
            ),
            limiter: backends.limiter,
            embedding_cache: EmbeddingCache::new(
                Arc::clone(&backends.cache),
                config.cache.embedding_ttl_s,
            ),
            cache: ResponseCache::new(backends.cache),
            cache_partition: config.cache.partition,
            routing: config.routing,
            max_body_bytes: config.server.max_body_bytes,
            started_at: crate::clock::now_secs(),
            background: Background::default(),
            edge: backends.edge,
            audit: backends.audit,
            usage: None,
            batch: None,
            ingest: None,
            vectors: None,
            responses: None,
            rag_bindings: config
                .models
                .iter()
                .filter_map(|(name, m)| Some((name.clone(), m.rag.clone()?)))
                .collect(),
            semantic_caches: config
                .models
                .iter()
                .filter_map(|(name, m)| Some((name.clone(), m.cache.as_ref()?.semantic.clone()?)))
                .collect(),
            guard: config.guard.clone(),
            model_guards: config
                .models
                .iter()
                .filter_map(|(name, m)| Some((name.clone(), m.guard.clone()?)))
                .collect(),
        })
    }

    /// The guard policy a request by `key` for the public model `model` runs under.
    pub fn guard_for<'a>(&'a self, key: &'a KeyRecord, model: &str) -> EffectiveGuard<'a> {
        EffectiveGuard::resolve(&self.guard, self.model_guards.get(model), &key.guard)
    }

    /// The cache partition of a tenant: its own, unless the cache is configured global.
    pub fn cache_partition<'a>(&self, tenant: &'a str) -> Option<&'a str> {
        match self.cache_partition {
            CachePartition::Tenant => Some(tenant),
            CachePartition::Global => None,
        }
    }
}
