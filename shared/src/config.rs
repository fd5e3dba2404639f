//! The one typed configuration: a TOML file mapping public model names to deployments.
//!
//! Unknown fields are rejected and every error names the field it is about, so a bad config
//! fails at start-up instead of at the first request. Secrets are never written in the file:
//! a provider names the environment variable that holds its credential.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default)]
    pub listen: Option<String>,
    /// Request bodies above this size are refused with 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// How long a key record read from the store is trusted before it is read again; this bounds
    /// how long a revocation made by another process takes to apply.
    #[serde(default = "default_key_cache_ttl_ms")]
    pub key_cache_ttl_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: None,
            max_body_bytes: default_max_body_bytes(),
            key_cache_ttl_ms: default_key_cache_ttl_ms(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}

fn default_key_cache_ttl_ms() -> u64 {
    1_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CachePartition {
    /// Each tenant sees only the answers cached for its own requests.
    #[default]
    Tenant,
    /// All tenants share answers (only for deployments with no tenant-private prompts).
    Global,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub partition: CachePartition,
    /// TTL for models that do not set their own; 0 turns the response cache off.
    #[serde(default = "default_cache_ttl_s")]
    pub default_ttl_s: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            partition: CachePartition::Tenant,
            default_ttl_s: default_cache_ttl_s(),
        }
    }
}

fn default_cache_ttl_s() -> u64 {
    3600
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible API: OpenAI, vLLM, Ollama, Groq, Together, ...
    Openai,
    /// Azure OpenAI: deployment URLs, `api-version` and the `api-key` header.
    Azure,
    Anthropic,
    /// The built-in deterministic model.
    Mock,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    #[serde(default)]
    pub base_url: Option<String>,
    /// The name of the environment variable holding the credential, never the credential.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Azure's `api-version` query parameter, or Anthropic's `anthropic-version` header.
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Mock only: delay before answering.
    #[serde(default)]
    pub latency_ms: u64,
    /// Mock only: delay between streamed chunks.
    #[serde(default)]
    pub chunk_delay_ms: u64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// From sending the request to the response headers.
    #[serde(default = "default_first_byte_ms")]
    pub first_byte_ms: u64,
    /// Most time allowed between two streamed chunks.
    #[serde(default = "default_idle_ms")]
    pub idle_ms: u64,
    /// Whole request, stream included.
    #[serde(default = "default_total_ms")]
    pub total_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: default_connect_ms(),
            first_byte_ms: default_first_byte_ms(),
            idle_ms: default_idle_ms(),
            total_ms: default_total_ms(),
        }
    }
}

fn default_connect_ms() -> u64 {
    5_000
}
fn default_first_byte_ms() -> u64 {
    60_000
}
fn default_idle_ms() -> u64 {
    30_000
}
fn default_total_ms() -> u64 {
    600_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    #[default]
    Chat,
    Embedding,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default)]
    pub kind: ModelKind,
    pub deployments: Vec<DeploymentConfig>,
    #[serde(default)]
    pub price: Price,
    #[serde(default)]
    pub context_window: Option<u64>,
    #[serde(default)]
    pub cache: Option<ModelCacheConfig>,
    #[serde(default)]
    pub fallbacks: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    pub provider: String,
    /// The model name the provider knows (for Azure, the deployment name).
    pub model: String,
    /// The upstream model version; part of the cache key, so a new version never serves
    /// answers cached from the old one.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub input_per_mtok: f64,
    #[serde(default)]
    pub output_per_mtok: f64,
}

impl Price {
    pub fn cost_usd(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_per_mtok + output_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCacheConfig {
    pub ttl_s: u64,
}

/// A configuration error, naming the field it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config at `{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The config used when none is given: the built-in mock models, plus OpenAI and Anthropic
/// models when their keys are in the environment.
const BUILT_IN: &str = r#"
[providers.mock]
kind = "mock"

[models.mock]
deployments = [{ provider = "mock", model = "mock" }]
context_window = 128000
price = { input_per_mtok = 0.1, output_per_mtok = 0.4 }

[models.mock-embed]
kind = "embedding"
deployments = [{ provider = "mock", model = "mock-embed" }]
price = { input_per_mtok = 0.02 }
"#;

const BUILT_IN_OPENAI: &str = r#"
[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"

[models.gpt-4o-mini]
deployments = [{ provider = "openai", model = "gpt-4o-mini" }]
context_window = 128000
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }

[models.gpt-4o]
deployments = [{ provider = "openai", model = "gpt-4o" }]
context_window = 128000
price = { input_per_mtok = 2.50, output_per_mtok = 10.00 }

[models.text-embedding-3-small]
kind = "embedding"
deployments = [{ provider = "openai", model = "text-embedding-3-small" }]
price = { input_per_mtok = 0.02 }
"#;

const BUILT_IN_ANTHROPIC: &str = r#"
[providers.anthropic]
kind = "anthropic"
base_url = "https://api.anthropic.com"
api_key_env = "ANTHROPIC_API_KEY"

[models.claude-haiku]
deployments = [{ provider = "anthropic", model = "claude-haiku-4-5" }]
context_window = 200000
price = { input_per_mtok = 1.00, output_per_mtok = 5.00 }

[models.claude-sonnet]
deployments = [{ provider = "anthropic", model = "claude-sonnet-4-5" }]
context_window = 200000
price = { input_per_mtok = 3.00, output_per_mtok = 15.00 }
"#;

impl Config {
    /// Parses and checks a TOML config; errors name the offending field.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::new("(file)", e.message().to_owned()))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(path, e.into_inner().message().to_owned())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The built-in config for a first run: no keys needed.
    pub fn built_in(env: impl Fn(&str) -> Option<String>) -> Self {
        let mut text = BUILT_IN.to_owned();
        if env("OPENAI_API_KEY").is_some_and(|v| !v.is_empty()) {
            text.push_str(BUILT_IN_OPENAI);
        }
        if env("ANTHROPIC_API_KEY").is_some_and(|v| !v.is_empty()) {
            text.push_str(BUILT_IN_ANTHROPIC);
        }
        match Self::from_toml(&text) {
            Ok(config) => config,
            // The built-in text is a constant checked by a unit test; this cannot fail.
            Err(e) => unreachable!("built-in config is invalid: {e}"),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (name, provider) in &self.providers {
            let field = |f: &str| format!("providers.{name}.{f}");
            let needs_url = provider.kind != ProviderKind::Mock;
            match &provider.base_url {
                None if needs_url => {
                    return Err(ConfigError::new(field("base_url"), "is required"));
                }
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    return Err(ConfigError::new(
                        field("base_url"),
                        format!("`{url}` is not an http(s) URL"),
                    ));
                }
                _ => {}
            }
            if provider.kind == ProviderKind::Azure && provider.api_version.is_none() {
                return Err(ConfigError::new(
                    field("api_version"),
                    "is required for Azure OpenAI (for example \"2024-10-21\")",
                ));
            }
            let t = &provider.timeouts;
            for (value, name) in [
                (t.connect_ms, "connect_ms"),
                (t.first_byte_ms, "first_byte_ms"),
                (t.idle_ms, "idle_ms"),
                (t.total_ms, "total_ms"),
            ] {
                if value == 0 {
                    return Err(ConfigError::new(
                        field(&format!("timeouts.{name}")),
                        "must be greater than 0",
                    ));
                }
            }
        }
        for (name, model) in &self.models {
            let field = |f: &str| format!("models.{name}.{f}");
            if model.deployments.is_empty() {
                return Err(ConfigError::new(
                    field("deployments"),
                    "needs at least one deployment",
                ));
            }
            for (i, d) in model.deployments.iter().enumerate() {
                if !self.providers.contains_key(&d.provider) {
                    return Err(ConfigError::new(
                        field(&format!("deployments[{i}].provider")),
                        format!("unknown provider `{}`", d.provider),
                    ));
                }
                if d.weight == 0 {
                    return Err(ConfigError::new(
                        field(&format!("deployments[{i}].weight")),
                        "must be greater than 0",
                    ));
                }
            }
            for (value, f) in [
                (model.price.input_per_mtok, "price.input_per_mtok"),
                (model.price.output_per_mtok, "price.output_per_mtok"),
            ] {
                if !value.is_finite() || value < 0.0 {
                    return Err(ConfigError::new(field(f), "must be a non-negative number"));
                }
            }
            if model.context_window == Some(0) {
                return Err(ConfigError::new(
                    field("context_window"),
                    "must be greater than 0",
                ));
            }
            for (i, fallback) in model.fallbacks.iter().enumerate() {
                match self.models.get(fallback) {
                    None => {
                        return Err(ConfigError::new(
                            field(&format!("fallbacks[{i}]")),
                            format!("unknown model `{fallback}`"),
                        ));
                    }
                    Some(other) if other.kind != model.kind => {
                        return Err(ConfigError::new(
                            field(&format!("fallbacks[{i}]")),
                            format!("`{fallback}` is not the same kind of model"),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// The cache TTL of a model, in seconds; 0 means its answers are never cached.
    pub fn cache_ttl_s(&self, model: &ModelConfig) -> u64 {
        model.cache.map_or(self.cache.default_ttl_s, |c| c.ttl_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_config_is_valid_and_adds_vendors_only_with_keys() {
        let bare = Config::built_in(|_| None);
        assert!(bare.models.contains_key("mock"));
        assert!(bare.models.contains_key("mock-embed"));
        assert!(!bare.models.contains_key("gpt-4o-mini"));
        let full = Config::built_in(|_| Some("sk-test".to_owned()));
        assert!(full.models.contains_key("gpt-4o-mini"));
        assert!(full.models.contains_key("claude-haiku"));
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let err = Config::from_toml(
            r#"
            [providers.mock]
            kind = "mock"
            [models.m]
            deployments = [{ provider = "mock", model = "m" }]
            price = { input_per_mtok = 1, output_per_mtok = 2, per_request = 3 }
            "#,
        )
        .unwrap_err();
        assert_eq!(err.field, "models.m.price.per_request");
        assert!(err.message.contains("per_request"), "{err}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let err = Config::from_toml(
            r#"
            [providers.p]
            kind = "openai"
            base_url = "http://x"
            timeouts = { connect_ms = "fast" }
            "#,
        )
        .unwrap_err();
        assert_eq!(err.field, "providers.p.timeouts.connect_ms");
    }

    #[test]
    fn deployment_with_unknown_provider_is_rejected() {
        let err = Config::from_toml(
            r#"
            [models.m]
            deployments = [{ provider = "nope", model = "m" }]
            "#,
        )
        .unwrap_err();
        assert_eq!(err.field, "models.m.deployments[0].provider");
    }

    #[test]
    fn azure_needs_an_api_version() {
        let err = Config::from_toml(
            r#"
            [providers.az]
            kind = "azure"
            base_url = "https://x.openai.azure.com"
            api_key_env = "AZURE_KEY"
            "#,
        )
        .unwrap_err();
        assert_eq!(err.field, "providers.az.api_version");
    }

    #[test]
    fn price_is_per_million_tokens() {
        let price = Price {
            input_per_mtok: 2.0,
            output_per_mtok: 8.0,
        };
        assert!((price.cost_usd(500_000, 250_000) - 3.0).abs() < 1e-9);
    }
}
