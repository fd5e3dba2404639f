//! The model registry: every public model is served (by a non-empty list of deployments) or an
//! alias over served models, as two variants.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{
    Capabilities, Config, ConfigError, DEFAULT_MAX_DIMENSIONS, ModelKind, Price, RouteConfig,
    Timeouts,
};
use crate::error::ApiError;
use crate::providers::{ErrorSource, Provider};

use super::health::DeploymentHealth;

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
    /// `provider/model`, as metrics and logs name a deployment.
    pub fn label(&self) -> String {
        format!("{}/{}", self.provider_name, self.model)
    }

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

/// Every public model by name.
pub struct Registry {
    models: BTreeMap<String, Model>,
}

impl Registry {
    /// Builds the providers and models of the config; credentials are read through `env`. Fails
    /// naming the config field at fault.
    pub fn from_config(
        config: &Config,
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
        Ok(Self { models })
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

    /// Every model, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Model> {
        self.models.values()
    }
}
