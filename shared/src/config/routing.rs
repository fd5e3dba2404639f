//! `[cache]` and `[routing]`: defaults of the response cache, retries, backoff and circuit
//! breaking, for every model.

use serde::Deserialize;

use super::ConfigError;

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
    /// How long an embedding stays in the embedding cache; 0 turns that cache off.
    #[serde(default = "default_embedding_ttl_s")]
    pub embedding_ttl_s: u64,
    /// `[cache.memcached]`: responses and embeddings cached in Memcached instead of the storage
    /// backend (`gateway-local` only; keys, limits and spend stay where they were).
    #[serde(default)]
    pub memcached: Option<MemcachedConfig>,
}

/// A Memcached server for the response cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemcachedConfig {
    /// `host:port`; unset, it is read from the environment variable `address_env`.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default = "default_memcached_address_env")]
    pub address_env: String,
    /// Each get, set and connect gives up after this; a server that does not answer in time is a
    /// cache miss.
    #[serde(default = "default_memcached_timeout_ms")]
    pub timeout_ms: u64,
    /// The server's item size limit (`memcached -I`, 1 MiB by default): larger bodies are not
    /// cached.
    #[serde(default = "default_memcached_max_item_bytes")]
    pub max_item_bytes: usize,
}

fn default_memcached_address_env() -> String {
    "GATEWAY_MEMCACHED_ADDRESS".to_owned()
}
fn default_memcached_timeout_ms() -> u64 {
    250
}
fn default_memcached_max_item_bytes() -> usize {
    1024 * 1024
}

/// Memcached's largest item size (`-I` accepts up to 1 GiB).
const MAX_MEMCACHED_ITEM_BYTES: usize = 1024 * 1024 * 1024;

impl MemcachedConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout_ms == 0 || self.timeout_ms > super::server::MAX_TIMEOUT_MS {
            return Err(ConfigError::new(
                "cache.memcached.timeout_ms",
                "must be between 1 and 86400000 (one day)",
            ));
        }
        if !(4096..=MAX_MEMCACHED_ITEM_BYTES).contains(&self.max_item_bytes) {
            return Err(ConfigError::new(
                "cache.memcached.max_item_bytes",
                "must be between 4096 and 1073741824 (Memcached's range for -I)",
            ));
        }
        if self.address.as_deref().is_some_and(|a| a.trim().is_empty()) {
            return Err(ConfigError::new(
                "cache.memcached.address",
                "must be host:port, or left out to read the environment variable",
            ));
        }
        Ok(())
    }

    /// The server address: `address`, else the environment variable `address_env`.
    pub fn resolve_address(&self, env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
        self.address
            .clone()
            .or_else(|| env(&self.address_env).filter(|a| !a.trim().is_empty()))
            .ok_or_else(|| {
                format!(
                    "cache.memcached: no address in the config and {} is not set",
                    self.address_env
                )
            })
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            partition: CachePartition::Tenant,
            default_ttl_s: default_cache_ttl_s(),
            embedding_ttl_s: default_embedding_ttl_s(),
            memcached: None,
        }
    }
}

fn default_cache_ttl_s() -> u64 {
    3600
}

/// 30 days: an embedding never changes while the model and its `version` stay the same.
fn default_embedding_ttl_s() -> u64 {
    30 * 24 * 3600
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
