//! `[server]`: the listener, body and connection limits of `gateway-local`, and the key cache.

use serde::Deserialize;

use super::ConfigError;

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
pub(super) const MAX_TIMEOUT_MS: u64 = 86_400_000;

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
