//! The one typed configuration: a TOML file mapping public model names to deployments.
//!
//! Unknown fields are rejected and every error names the field it is about, so a bad config
//! fails at start-up instead of at the first request. Secrets are never written in the file:
//! a provider names the environment variable that holds its credential.

pub mod secrets;

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
    pub routing: RoutingConfig,
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
    /// Where the local server also serves `/metrics` without a key, for a Prometheus scraper on
    /// a private network; unset, `/metrics` is only on the main listener, for admin keys.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `gateway-local` only (on Lambda, API Gateway owns the client connection). From accept,
    /// or from a keep-alive connection's first byte, to the end of the request head.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// How long a keep-alive connection may wait for its next request after a response.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// How long a response write may wait for a client that stopped reading (its socket buffers
    /// full) before the connection is closed.
    #[serde(default = "default_write_stall_timeout_ms")]
    pub write_stall_timeout_ms: u64,
    /// From the first read of a request body to its end.
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// After `min_body_rate_grace_ms`, a request body must keep arriving at this average rate.
    #[serde(default = "default_min_body_bytes_per_s")]
    pub min_body_bytes_per_s: u64,
    #[serde(default = "default_min_body_rate_grace_ms")]
    pub min_body_rate_grace_ms: u64,
    /// Client connections served at once; beyond it the longest-waiting idle connection is
    /// closed to make room, or, when every connection has a request in flight, the new one is
    /// answered 503 with `Retry-After`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// On SIGINT or SIGTERM, how long requests in flight may take to finish.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: None,
            max_body_bytes: default_max_body_bytes(),
            key_cache_ttl_ms: default_key_cache_ttl_ms(),
            metrics_listen: None,
            header_read_timeout_ms: default_header_read_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            write_stall_timeout_ms: default_write_stall_timeout_ms(),
            body_read_timeout_ms: default_body_read_timeout_ms(),
            min_body_bytes_per_s: default_min_body_bytes_per_s(),
            min_body_rate_grace_ms: default_min_body_rate_grace_ms(),
            max_connections: default_max_connections(),
            drain_timeout_ms: default_drain_timeout_ms(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}

fn default_key_cache_ttl_ms() -> u64 {
    1_000
}

fn default_header_read_timeout_ms() -> u64 {
    10_000
}
// Longer than the idle time of the SDKs' connection pools (httpx 5 s, Node 4 s), so a pooled
// connection is dropped by its client first and a request never races the server's close.
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_write_stall_timeout_ms() -> u64 {
    30_000
}
fn default_body_read_timeout_ms() -> u64 {
    60_000
}
fn default_min_body_bytes_per_s() -> u64 {
    1_024
}
fn default_min_body_rate_grace_ms() -> u64 {
    5_000
}
fn default_max_connections() -> usize {
    1_024
}
fn default_drain_timeout_ms() -> u64 {
    10_000
}

/// The longest timeout a config may set: beyond a day it is a mistake, and it keeps every
/// deadline computed from it far from overflowing.
const MAX_TIMEOUT_MS: u64 = 86_400_000;

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

/// Retries, backoff and circuit breaking, for every model.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Most provider calls one request may make, retries and fallbacks included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Exponential backoff with full jitter: the n-th retry waits a random time up to
    /// `min(backoff_max_ms, backoff_base_ms * 2^n)`.
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// A provider's `Retry-After` is honoured up to this; a longer one moves on to a fallback
    /// (or returns the 429) instead of holding the request.
    #[serde(default = "default_max_retry_after_ms")]
    pub max_retry_after_ms: u64,
    /// After a stream's finish reason, how long to wait for its usage chunk and end.
    #[serde(default = "default_stream_finish_grace_ms")]
    pub stream_finish_grace_ms: u64,
    #[serde(default)]
    pub breaker: BreakerConfig,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            backoff_base_ms: default_backoff_base_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            max_retry_after_ms: default_max_retry_after_ms(),
            stream_finish_grace_ms: default_stream_finish_grace_ms(),
            breaker: BreakerConfig::default(),
        }
    }
}

fn default_max_attempts() -> u32 {
    4
}
fn default_backoff_base_ms() -> u64 {
    250
}
fn default_backoff_max_ms() -> u64 {
    4_000
}
fn default_max_retry_after_ms() -> u64 {
    10_000
}
fn default_stream_finish_grace_ms() -> u64 {
    500
}

/// A circuit breaker per deployment: it opens after `consecutive_failures` failures in a row, or
/// when at least `min_requests` of the last `window` calls include a `failure_rate` share of
/// failures; stays open `open_ms`; then lets one probe through and closes if it succeeds.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "default_failure_rate")]
    pub failure_rate: f64,
    #[serde(default = "default_window")]
    pub window: u32,
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            failure_rate: default_failure_rate(),
            window: default_window(),
            min_requests: default_min_requests(),
            open_ms: default_open_ms(),
        }
    }
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_failure_rate() -> f64 {
    0.5
}
fn default_window() -> u32 {
    20
}
fn default_min_requests() -> u32 {
    10
}
fn default_open_ms() -> u64 {
    30_000
}

/// The largest `max_dimensions` a model may declare (and so the largest vector a request can
/// make the gateway allocate per input).
pub const MAX_EMBEDDING_DIMENSIONS: u32 = 16_384;

/// `max_dimensions` of an embedding model that declares none: text-embedding-3-large's size, the
/// largest of OpenAI's models.
pub const DEFAULT_MAX_DIMENSIONS: u32 = 3_072;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible API: OpenAI, vLLM, Ollama, Groq, Together, ...
    Openai,
    /// Azure OpenAI: deployment URLs, `api-version` and the `api-key` header.
    Azure,
    Anthropic,
    /// Amazon Bedrock's Converse API: IAM credentials from the standard AWS chain, no API key.
    Bedrock,
    /// The built-in deterministic model.
    Mock,
}

impl ProviderKind {
    /// Whether the provider serves `/v1/embeddings` (Anthropic and Bedrock's Converse do not).
    pub fn has_embeddings(self) -> bool {
        matches!(
            self,
            ProviderKind::Openai | ProviderKind::Azure | ProviderKind::Mock
        )
    }
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
    /// Bedrock only: the AWS region (default: the standard AWS environment, e.g. `AWS_REGION`).
    #[serde(default)]
    pub region: Option<String>,
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
    /// From sending a streamed request to its first token.
    #[serde(default = "default_first_token_ms")]
    pub first_token_ms: u64,
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
            first_token_ms: default_first_token_ms(),
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
fn default_first_token_ms() -> u64 {
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
    /// Where the model is served; empty for a routing alias (`route`).
    #[serde(default)]
    pub deployments: Vec<DeploymentConfig>,
    /// Makes this model an alias that picks one of its candidates per request.
    #[serde(default)]
    pub route: Option<RouteConfig>,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub price: Price,
    #[serde(default)]
    pub context_window: Option<u64>,
    /// Most completion tokens one choice may ask for (`max_tokens`); default: the context window.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// Embedding models: the largest `dimensions` a request may ask for.
    #[serde(default)]
    pub max_dimensions: Option<u32>,
    #[serde(default)]
    pub cache: Option<ModelCacheConfig>,
    #[serde(default)]
    pub fallbacks: Vec<String>,
}

/// What a model can take; requests needing more are not sent to it by a routing alias.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default = "yes")]
    pub tools: bool,
    #[serde(default = "yes")]
    pub images: bool,
    #[serde(default = "yes")]
    pub json: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            tools: true,
            images: true,
            json: true,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteStrategy {
    /// The cheapest candidate able to serve the request, unless the classifier escalates.
    Cost,
}

/// A routing alias such as `auto`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub strategy: RouteStrategy,
    pub candidates: Vec<String>,
    /// The model for requests the classifier judges hard; default: the priciest candidate.
    #[serde(default)]
    pub strong: Option<String>,
    #[serde(default)]
    pub escalate: EscalationRules,
}

/// The rule-based classifier: a request matching any rule needs the strong model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationRules {
    /// Prompts at least this long (estimated tokens).
    #[serde(default = "default_escalate_tokens")]
    pub min_prompt_tokens: u64,
    /// Words in the last user message that signal hard work (matched case-insensitively).
    #[serde(default = "default_escalate_keywords")]
    pub keywords: Vec<String>,
    /// Requests offering at least this many tools.
    #[serde(default = "default_escalate_tools")]
    pub min_tools: usize,
}

impl Default for EscalationRules {
    fn default() -> Self {
        Self {
            min_prompt_tokens: default_escalate_tokens(),
            keywords: default_escalate_keywords(),
            min_tools: default_escalate_tools(),
        }
    }
}

fn default_escalate_tokens() -> u64 {
    4_000
}
fn default_escalate_keywords() -> Vec<String> {
    [
        "prove",
        "proof",
        "step by step",
        "analyze",
        "analyse",
        "refactor",
        "debug",
        "architecture",
        "derive",
        "optimize",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}
fn default_escalate_tools() -> usize {
    5
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

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (value, name) in [
            (self.header_read_timeout_ms, "header_read_timeout_ms"),
            (self.idle_timeout_ms, "idle_timeout_ms"),
            (self.body_read_timeout_ms, "body_read_timeout_ms"),
            (self.write_stall_timeout_ms, "write_stall_timeout_ms"),
            (self.min_body_rate_grace_ms, "min_body_rate_grace_ms"),
            (self.drain_timeout_ms, "drain_timeout_ms"),
        ] {
            if value == 0 || value > MAX_TIMEOUT_MS {
                return Err(ConfigError::new(
                    format!("server.{name}"),
                    format!("must be between 1 and {MAX_TIMEOUT_MS} (one day)"),
                ));
            }
        }
        if self.min_body_bytes_per_s == 0 {
            return Err(ConfigError::new(
                "server.min_body_bytes_per_s",
                "must be greater than 0",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "server.max_connections",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
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
max_dimensions = 1536
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
        self.server.validate()?;
        if self.server.max_body_bytes == 0 {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                "must be greater than 0",
            ));
        }
        for (name, provider) in &self.providers {
            let field = |f: &str| format!("providers.{name}.{f}");
            // Bedrock's endpoint follows from its region; `base_url` only overrides it.
            let needs_url = !matches!(provider.kind, ProviderKind::Mock | ProviderKind::Bedrock);
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
            if provider.kind == ProviderKind::Bedrock && provider.api_key_env.is_some() {
                return Err(ConfigError::new(
                    field("api_key_env"),
                    "is not used by Bedrock, which signs with IAM credentials from the AWS \
                     environment (role, profile or AWS_ACCESS_KEY_ID); remove it",
                ));
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
                (t.first_token_ms, "first_token_ms"),
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
        let r = &self.routing;
        if r.max_attempts == 0 {
            return Err(ConfigError::new(
                "routing.max_attempts",
                "must be at least 1",
            ));
        }
        let b = &r.breaker;
        if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
            return Err(ConfigError::new(
                "routing.breaker.failure_rate",
                "must be in (0, 1]",
            ));
        }
        if b.consecutive_failures == 0 || b.window == 0 || b.min_requests > b.window {
            return Err(ConfigError::new(
                "routing.breaker",
                "consecutive_failures and window must be at least 1, min_requests at most window",
            ));
        }
        for (name, model) in &self.models {
            let field = |f: &str| format!("models.{name}.{f}");
            match &model.route {
                None if model.deployments.is_empty() => {
                    return Err(ConfigError::new(
                        field("deployments"),
                        "needs at least one deployment (or a `route` making the model an alias)",
                    ));
                }
                Some(_) if !model.deployments.is_empty() => {
                    return Err(ConfigError::new(
                        field("route"),
                        "a routing alias has candidates, not deployments",
                    ));
                }
                Some(route) => self.validate_route(name, model, route)?,
                None => {}
            }
            let mut total_weight: u64 = 0;
            for (i, d) in model.deployments.iter().enumerate() {
                let Some(provider) = self.providers.get(&d.provider) else {
                    return Err(ConfigError::new(
                        field(&format!("deployments[{i}].provider")),
                        format!("unknown provider `{}`", d.provider),
                    ));
                };
                if model.kind == ModelKind::Embedding && !provider.kind.has_embeddings() {
                    return Err(ConfigError::new(
                        field(&format!("deployments[{i}].provider")),
                        format!(
                            "provider `{}` has no embeddings API; an embedding model needs an \
                             OpenAI-compatible, Azure or mock provider",
                            d.provider
                        ),
                    ));
                }
                if d.weight == 0 {
                    return Err(ConfigError::new(
                        field(&format!("deployments[{i}].weight")),
                        "must be greater than 0",
                    ));
                }
                total_weight += u64::from(d.weight);
                if total_weight > u64::from(u32::MAX) {
                    return Err(ConfigError::new(
                        field("deployments"),
                        format!("the weights add up to more than {}", u32::MAX),
                    ));
                }
            }
            if model.max_output_tokens == Some(0) {
                return Err(ConfigError::new(
                    field("max_output_tokens"),
                    "must be greater than 0",
                ));
            }
            match model.max_dimensions {
                Some(_) if model.kind != ModelKind::Embedding => {
                    return Err(ConfigError::new(
                        field("max_dimensions"),
                        "only applies to embedding models",
                    ));
                }
                Some(d) if d == 0 || d > MAX_EMBEDDING_DIMENSIONS => {
                    return Err(ConfigError::new(
                        field("max_dimensions"),
                        format!("must be between 1 and {MAX_EMBEDDING_DIMENSIONS}"),
                    ));
                }
                _ => {}
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
                    Some(other) if other.route.is_some() => {
                        return Err(ConfigError::new(
                            field(&format!("fallbacks[{i}]")),
                            format!(
                                "`{fallback}` is a routing alias; a fallback must be a model \
                                 with deployments"
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    fn validate_route(
        &self,
        name: &str,
        model: &ModelConfig,
        route: &RouteConfig,
    ) -> Result<(), ConfigError> {
        let field = |f: &str| format!("models.{name}.route.{f}");
        if route.candidates.is_empty() {
            return Err(ConfigError::new(
                field("candidates"),
                "needs at least one model",
            ));
        }
        for (i, candidate) in route.candidates.iter().chain(&route.strong).enumerate() {
            let at = if i < route.candidates.len() {
                format!("candidates[{i}]")
            } else {
                "strong".to_owned()
            };
            match self.models.get(candidate) {
                None => {
                    return Err(ConfigError::new(
                        field(&at),
                        format!("unknown model `{candidate}`"),
                    ));
                }
                Some(target) if target.route.is_some() => {
                    return Err(ConfigError::new(
                        field(&at),
                        format!("`{candidate}` is itself an alias"),
                    ));
                }
                Some(target) if target.kind != model.kind => {
                    return Err(ConfigError::new(
                        field(&at),
                        format!("`{candidate}` is not the same kind of model"),
                    ));
                }
                Some(_) => {}
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

    fn rejected_at(text: &str) -> String {
        Config::from_toml(text).unwrap_err().field
    }

    #[test]
    fn configs_that_would_fail_per_request_are_refused_at_start_up() {
        let providers = r#"
            [providers.mock]
            kind = "mock"
            [providers.claude]
            kind = "anthropic"
            base_url = "http://127.0.0.1:1"
            [models.a]
            deployments = [{ provider = "mock", model = "a" }]
            [models.b]
            deployments = [{ provider = "mock", model = "b" }]
            [models.auto]
            route = { strategy = "cost", candidates = ["a", "b"] }
        "#;
        let overflowing = format!(
            "{providers}\n[models.heavy]\ndeployments = [{{ provider = \"mock\", model = \"x\", weight = 4294967295 }}, {{ provider = \"mock\", model = \"y\", weight = 2 }}]\n"
        );
        assert_eq!(rejected_at(&overflowing), "models.heavy.deployments");
        assert_eq!(
            rejected_at(&format!("[server]\nmax_body_bytes = 0\n{providers}")),
            "server.max_body_bytes"
        );
        let alias_fallback = format!(
            "{providers}\n[models.c]\ndeployments = [{{ provider = \"mock\", model = \"c\" }}]\nfallbacks = [\"auto\"]\n"
        );
        assert_eq!(rejected_at(&alias_fallback), "models.c.fallbacks[0]");
        let embed_on_claude = format!(
            "{providers}\n[models.e]\nkind = \"embedding\"\ndeployments = [{{ provider = \"claude\", model = \"e\" }}]\n"
        );
        assert_eq!(
            rejected_at(&embed_on_claude),
            "models.e.deployments[0].provider"
        );
        let huge_dimensions = format!(
            "{providers}\n[models.e]\nkind = \"embedding\"\ndeployments = [{{ provider = \"mock\", model = \"e\" }}]\nmax_dimensions = 4294967295\n"
        );
        assert_eq!(rejected_at(&huge_dimensions), "models.e.max_dimensions");
        assert!(Config::from_toml(providers).is_ok());
    }

    #[test]
    fn zero_or_huge_connection_limits_are_rejected_by_name() {
        for (line, field) in [
            (
                "header_read_timeout_ms = 0",
                "server.header_read_timeout_ms",
            ),
            ("idle_timeout_ms = 0", "server.idle_timeout_ms"),
            ("body_read_timeout_ms = 0", "server.body_read_timeout_ms"),
            (
                "body_read_timeout_ms = 86400001",
                "server.body_read_timeout_ms",
            ),
            ("min_body_bytes_per_s = 0", "server.min_body_bytes_per_s"),
            (
                "min_body_rate_grace_ms = 0",
                "server.min_body_rate_grace_ms",
            ),
            ("max_connections = 0", "server.max_connections"),
            ("drain_timeout_ms = 0", "server.drain_timeout_ms"),
        ] {
            let err = Config::from_toml(&format!("[server]\n{line}\n")).unwrap_err();
            assert_eq!(err.field, field, "{line}");
        }
        let server = Config::from_toml("[server]\nidle_timeout_ms = 1\n")
            .unwrap()
            .server;
        assert_eq!(server.idle_timeout_ms, 1);
        assert_eq!(server.header_read_timeout_ms, 10_000);
    }

    #[test]
    fn price_is_per_million_tokens() {
        let price = Price {
            input_per_mtok: 2.0,
            output_per_mtok: 8.0,
        };
        assert!((price.cost_usd(500_000, 250_000) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn metrics_listen_is_a_socket_address() {
        let config = Config::from_toml("[server]\nmetrics_listen = \"127.0.0.1:9464\"\n").unwrap();
        assert_eq!(
            config.server.metrics_listen,
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        assert_eq!(Config::from_toml("").unwrap().server.metrics_listen, None);
        let err = Config::from_toml("[server]\nmetrics_listen = \"localhost\"\n").unwrap_err();
        assert_eq!(err.field, "server.metrics_listen");
    }
}
