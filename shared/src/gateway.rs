//! The gateway's state, built once per process (or Lambda container) from the config and the
//! backends: the model registry, the authenticator, the limiter and the response cache.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Authenticator;
use crate::background::Background;
use crate::cache::ResponseCache;
use crate::config::{
    CachePartition, Capabilities, Config, ConfigError, ModelKind, Price, RouteConfig,
    RoutingConfig, Timeouts,
};
use crate::edge::EdgeKeys;
use crate::error::ApiError;
use crate::limits::Limiter;
use crate::providers::routing::DeploymentHealth;
use crate::providers::{ErrorSource, Provider};
use crate::store::Backends;

/// One way to serve a model: a provider and the model name it knows.
pub struct Deployment {
    pub provider_name: String,
    pub provider: Arc<Provider>,
    pub model: String,
    pub version: Option<String>,
    pub weight: u32,
    pub timeouts: Timeouts,
    pub health: DeploymentHealth,
}

impl Deployment {
    /// This deployment as the source of an error answered for the public model `model`.
    pub fn error_source<'a>(&'a self, model: &'a str) -> ErrorSource<'a> {
        ErrorSource {
            provider: &self.provider_name,
            model,
            upstream_model: &self.model,
        }
    }
}

/// A public model name and everything needed to serve it.
pub struct ModelRoute {
    pub name: String,
    pub kind: ModelKind,
    pub deployments: Vec<Deployment>,
    pub price: Price,
    pub context_window: Option<u64>,
    pub cache_ttl_s: u64,
    pub fallbacks: Vec<String>,
    pub capabilities: Capabilities,
    /// Set for a routing alias (such as `auto`), which has no deployments of its own.
    pub alias: Option<RouteConfig>,
}

pub struct Gateway {
    pub models: BTreeMap<String, Arc<ModelRoute>>,
    pub auth: Authenticator,
    pub limiter: Arc<dyn Limiter>,
    pub cache: ResponseCache,
    pub cache_partition: CachePartition,
    pub routing: RoutingConfig,
    pub max_body_bytes: usize,
    pub started_at: u64,
    pub background: Background,
    pub edge: Arc<dyn EdgeKeys>,
}

impl Gateway {
    /// Builds the gateway; credentials are read through `env` (the process environment in
    /// production, a map in tests). Fails naming the config field at fault.
    pub fn new(
        config: &Config,
        backends: Backends,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut providers = BTreeMap::new();
        for (name, provider_config) in &config.providers {
            providers.insert(
                name.clone(),
                Arc::new(Provider::from_config(name, provider_config, env)?),
            );
        }
        let mut models = BTreeMap::new();
        for (name, model) in &config.models {
            let deployments = model
                .deployments
                .iter()
                .map(|d| {
                    // `Config::from_toml` checked that every deployment names a known provider.
                    let timeouts = config
                        .providers
                        .get(&d.provider)
                        .map(|p| p.timeouts)
                        .unwrap_or_default();
                    let provider = providers.get(&d.provider).cloned().ok_or_else(|| {
                        ConfigError::new(
                            format!("models.{name}.deployments"),
                            format!("unknown provider `{}`", d.provider),
                        )
                    })?;
                    Ok(Deployment {
                        provider_name: d.provider.clone(),
                        provider,
                        model: d.model.clone(),
                        version: d.version.clone(),
                        weight: d.weight,
                        timeouts,
                        health: DeploymentHealth::new(config.routing.breaker),
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
            models.insert(
                name.clone(),
                Arc::new(ModelRoute {
                    name: name.clone(),
                    kind: model.kind,
                    deployments,
                    price: model.price,
                    context_window: model.context_window,
                    cache_ttl_s: config.cache_ttl_s(model),
                    fallbacks: model.fallbacks.clone(),
                    capabilities: model.capabilities,
                    alias: model.route.clone(),
                }),
            );
        }
        Ok(Self {
            models,
            auth: Authenticator::new(
                backends.keys,
                Duration::from_millis(config.server.key_cache_ttl_ms),
            ),
            limiter: backends.limiter,
            cache: ResponseCache::new(backends.cache),
            cache_partition: config.cache.partition,
            routing: config.routing,
            max_body_bytes: config.server.max_body_bytes,
            started_at: crate::providers::now_secs(),
            background: Background::default(),
            edge: backends.edge,
        })
    }

    pub fn model(&self, name: &str) -> Result<&Arc<ModelRoute>, ApiError> {
        self.models
            .get(name)
            .ok_or_else(|| ApiError::model_not_found(name))
    }

    /// The cache partition of a tenant: its own, unless the cache is configured global.
    pub fn cache_partition<'a>(&self, tenant: &'a str) -> Option<&'a str> {
        match self.cache_partition {
            CachePartition::Tenant => Some(tenant),
            CachePartition::Global => None,
        }
    }
}
