//! The Redis connection the Redis backends share (`limits::redis`, `cache::redis`): one
//! connection manager per process that reconnects after Redis restarts, every call bounded by a
//! timeout. The URL comes from `GATEWAY_REDIS_URL` (`redis://` or `rediss://` for TLS, user and
//! password in it) and is never logged: it holds the password. `GATEWAY_REDIS_TIMEOUT_MS` sets
//! the timeout.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The environment variable holding the Redis URL.
pub const REDIS_URL_ENV: &str = "GATEWAY_REDIS_URL";

/// The environment variable setting the longest a Redis call may take, in milliseconds.
pub const REDIS_TIMEOUT_ENV: &str = "GATEWAY_REDIS_TIMEOUT_MS";

/// The longest any one Redis call may take by default, connecting included: a request never
/// waits on an unreachable Redis for longer. Redis answers in well under a millisecond; a process
/// whose threads are busy with a burst of requests polls the answer late, hence the margin.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to Redis, cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct Redis {
    connection: ConnectionManager,
    timeout: Duration,
}

impl Redis {
    /// A connection to the Redis at `url`, made on first use (so a gateway starts while Redis is
    /// down, refusing limited requests until it is up). The error names what is wrong with the
    /// URL, never the URL.
    pub fn open(url: &str, timeout: Duration) -> Result<Self, String> {
        // `rediss://` builds its rustls configuration with the process default provider.
        crate::tls::install_crypto_provider();
        let client = redis::Client::open(url)
            .map_err(|e| format!("{REDIS_URL_ENV} is not a valid Redis URL: {}", describe(&e)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnection is retried briefly in the background; a call after that gives up
            // starts a new round, so Redis coming back is noticed by the next request.
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("cannot set up the Redis connection: {}", describe(&e)))?;
        Ok(Self {
            connection,
            timeout,
        })
    }

    /// A connection to the Redis `GATEWAY_REDIS_URL` names, with the timeout
    /// `GATEWAY_REDIS_TIMEOUT_MS` sets (else [`DEFAULT_TIMEOUT`]).
    pub fn from_env() -> Result<Self, String> {
        let url = std::env::var(REDIS_URL_ENV)
            .ok()
            .filter(|url| !url.trim().is_empty())
            .ok_or_else(|| format!("{REDIS_URL_ENV} must name the Redis server (redis://...)"))?;
        let timeout = match std::env::var(REDIS_TIMEOUT_ENV) {
            Ok(ms) => ms
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| format!("{REDIS_TIMEOUT_ENV} must be a number of milliseconds"))?,
            Err(_) => DEFAULT_TIMEOUT,
        };
        Self::open(&url, timeout)
    }

    /// Runs `call` on the connection within the timeout; the error says what `what` was
    /// and why it failed, without the server's address.
    pub async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, String>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.timeout, call(self.connection.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(format!("{what} on Redis failed: {}", describe(&error))),
            Err(_) => Err(format!(
                "{what} on Redis timed out after {} ms",
                self.timeout.as_millis()
            )),
        }
    }
}

/// A Redis error in terms that hold no address or credential: its kind, and the OS error of a
/// failed connection.
fn describe(error: &redis::RedisError) -> String {
    if error.is_connection_refusal() {
        "connection refused".to_owned()
    } else if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connection_dropped() || error.is_io_error() {
        "connection lost".to_owned()
    } else {
        format!("{:?}", error.kind())
    }
}
