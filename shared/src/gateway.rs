//! The gateway's state, built once per process (or Lambda container) from the config and the
//! backends: the model registry, the authenticator, the limiter and the response cache.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Authenticator;
use crate::background::Background;
use crate::cache::ResponseCache;
use crate::config::{
    CachePartition, Capabilities, Config, ConfigError, DEFAULT_MAX_DIMENSIONS, ModelKind, Price,
    RouteConfig, RoutingConfig, Timeouts,
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

/// The deployments of a served model: never empty, so there is always a first one to name.
pub struct Deployments {
    first: Deployment,
    rest: Vec<Deployment>,
}

impl Deployments {
    /// None for an empty list.
    pub fn new(deployments: Vec<Deployment>) -> Option<Self> {
        let mut all = deployments.into_iter();
        let first = all.next()?;
        Some(Self {
            first,
            rest: all.collect(),
        })
    }

    pub fn first(&self) -> &Deployment {
        &self.first
    }

    pub fn get(&self, index: usize) -> Option<&Deployment> {
        match index.checked_sub(1) {
            None => Some(&self.first),
            Some(i) => self.rest.get(i),
        }
    }

    pub fn len(&self) -> usize {
        1 + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn iter(&self) -> impl Iterator<Item = &Deployment> {
        std::iter::once(&self.first).chain(&self.rest)
    }
}

/// A public model name served by deployments, and everything needed to serve it.
pub struct ServedModel {
    pub name: String,
    pub kind: ModelKind,
    pub deployments: Deployments,
    pub price: Price,
    pub context_window: Option<u64>,
    /// The most completion tokens one choice may ask for.
    pub max_output_tokens: Option<u64>,
    /// Embedding models: the largest `dimensions` a request may ask for.
    pub max_dimensions: u32,
    pub cache_ttl_s: u64,
    /// Served models of the same kind (checked at start-up), tried in order.
    pub fallbacks: Vec<String>,
    pub capabilities: Capabilities,
}

/// A routing alias (such as `auto`): picks one of its served candidates per request.
pub struct AliasModel {
    pub name: String,
    pub kind: ModelKind,
    pub route: RouteConfig,
}

/// A public model: served, or an alias. The two never mix, so nothing indexes into an alias's
/// (nonexistent) deployments.
pub enum Model {
    Served(Box<ServedModel>),
    Alias(AliasModel),
}

impl Model {
    pub fn name(&self) -> &str {
        match self {
            Model::Served(m) => &m.name,
            Model::Alias(a) => &a.name,
        }
    }

    pub fn kind(&self) -> ModelKind {
        match self {
            Model::Served(m) => m.kind,
            Model::Alias(a) => a.kind,
        }
    }

    /// Who answers for the model in `/v1/models`: its first provider, or the gateway for an alias.
    pub fn owned_by(&self) -> &str {
        match self {
            Model::Served(m) => &m.deployments.first().provider_name,
            Model::Alias(_) => "gateway",
        }
    }
}

pub struct Gateway {
    pub models: BTreeMap<String, Model>,
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
            if let Some(route) = &model.route {
                models.insert(
                    name.clone(),
                    Model::Alias(AliasModel {
                        name: name.clone(),
                        kind: model.kind,
                        route: route.clone(),
                    }),
                );
                continue;
            }
            let deployments = model
                .deployments
                .iter()
                .map(|d| {
                    let provider_config = config.providers.get(&d.provider);
                    let provider = providers.get(&d.provider).cloned();
                    let (Some(provider_config), Some(provider)) = (provider_config, provider)
                    else {
                        return Err(ConfigError::new(
                            format!("models.{name}.deployments"),
                            format!("unknown provider `{}`", d.provider),
                        ));
                    };
                    Ok(Deployment {
                        provider_name: d.provider.clone(),
                        provider,
                        model: d.model.clone(),
                        version: d.version.clone(),
                        weight: d.weight,
                        timeouts: provider_config.timeouts,
                        health: DeploymentHealth::new(config.routing.breaker),
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
            let deployments = Deployments::new(deployments).ok_or_else(|| {
                ConfigError::new(
                    format!("models.{name}.deployments"),
                    "needs at least one deployment (or a `route` making the model an alias)",
                )
            })?;
            models.insert(
                name.clone(),
                Model::Served(Box::new(ServedModel {
                    name: name.clone(),
                    kind: model.kind,
                    deployments,
                    price: model.price,
                    context_window: model.context_window,
                    max_output_tokens: model.max_output_tokens.or(model.context_window),
                    max_dimensions: model.max_dimensions.unwrap_or(DEFAULT_MAX_DIMENSIONS),
                    cache_ttl_s: config.cache_ttl_s(model),
                    fallbacks: model.fallbacks.clone(),
                    capabilities: model.capabilities,
                })),
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

    pub fn model(&self, name: &str) -> Result<&Model, ApiError> {
        self.models
            .get(name)
            .ok_or_else(|| ApiError::model_not_found(name))
    }

    /// A served model by name; None for an unknown name or an alias.
    pub fn served(&self, name: &str) -> Option<&ServedModel> {
        match self.models.get(name) {
            Some(Model::Served(model)) => Some(&**model),
            _ => None,
        }
    }

    /// The cache partition of a tenant: its own, unless the cache is configured global.
    pub fn cache_partition<'a>(&self, tenant: &'a str) -> Option<&'a str> {
        match self.cache_partition {
            CachePartition::Tenant => Some(tenant),
            CachePartition::Global => None,
        }
    }
}
