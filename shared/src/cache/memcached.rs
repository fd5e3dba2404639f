//! Cached responses and embeddings in Memcached (`[cache.memcached]`), for `gateway-local`
//! instances that share one cache.
//!
//! A minimal client of Memcached's text protocol over tokio rather than a client crate: the
//! cache needs two commands (`get`, `set`), the Rust async clients on crates.io are either
//! unmaintained or pull in a connection-pool framework, and owning the reads lets every one be
//! bounded by the item size limit before it allocates.
//!
//! The cache never fails a request: a server that is down, slow or answers garbage is a miss (a
//! get) or a skipped write (a set), logged once when the outage starts and once when it ends.
//! While it is down, one call a second tries the server again; the others miss at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use crate::cache::CacheStore;
use crate::clock::now_secs;
use crate::config::MemcachedConfig;
use crate::error::StoreError;

/// Memcached counts the key and its item header against the item size limit (`-I`); this much of
/// the limit is left for them.
const ITEM_OVERHEAD_BYTES: usize = 512;
/// Longest reply line read: `VALUE <key> <flags> <bytes>`, or an error line.
const MAX_LINE_BYTES: u64 = 512;
/// Connections kept open for reuse; more concurrent calls open (and then close) their own.
const MAX_IDLE_CONNECTIONS: usize = 16;
/// Memcached reads an expiry above 30 days as a Unix time rather than a duration.
const MAX_RELATIVE_TTL_S: u64 = 30 * 24 * 3600;
/// While the server is down, how often a call tries it again.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Keeps the gateway's items apart from other users of the same server.
const KEY_PREFIX: &str = "gw:";

type Connection = BufStream<TcpStream>;

pub struct MemcachedCacheStore {
    address: String,
    timeout: Duration,
    max_body_bytes: usize,
    idle: Mutex<Vec<Connection>>,
    /// When the server last failed, while it is down.
    down_since: Mutex<Option<Instant>>,
}

/// Why one call failed; only ever logged (at the start of an outage).
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("no answer within the timeout")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

/// What a `set` came to.
enum Stored {
    Yes,
    /// The server refused the item (too large for its configured limit).
    Refused,
}

impl MemcachedCacheStore {
    /// A store for the server at `address`; no connection is made until the first call.
    pub fn new(address: String, config: &MemcachedConfig) -> Self {
        Self {
            address,
            timeout: Duration::from_millis(config.timeout_ms),
            max_body_bytes: config.max_item_bytes.saturating_sub(ITEM_OVERHEAD_BYTES),
            idle: Mutex::new(Vec::new()),
            down_since: Mutex::new(None),
        }
    }

    /// Runs one command on a pooled connection within the timeout; `None` while the server is
    /// down and not due for another try, or when the call failed (logged if an outage starts).
    async fn call<T>(
        &self,
        command: impl AsyncFnOnce(&mut Connection) -> Result<T, CallError>,
    ) -> Option<T> {
        if !self.due_for_a_try() {
            return None;
        }
        let attempt = async {
            let mut connection = match self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
                Some(connection) => connection,
                None => BufStream::new(TcpStream::connect(&self.address).await?),
            };
            let answer = command(&mut connection).await?;
            if let Ok(mut idle) = self.idle.lock()
                && idle.len() < MAX_IDLE_CONNECTIONS
            {
                idle.push(connection);
            }
            Ok::<_, CallError>(answer)
        };
        // A connection cut off mid-command by the timeout is dropped, never reused.
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout),
        };
        match result {
            Ok(answer) => {
                self.mark_up();
                Some(answer)
            }
            Err(error) => {
                self.mark_down(&error);
                None
            }
        }
    }

    fn due_for_a_try(&self) -> bool {
        let Ok(mut down_since) = self.down_since.lock() else {
            return true;
        };
        match *down_since {
            Some(since) if since.elapsed() < RETRY_INTERVAL => false,
            // This call is the retry; the others keep missing until it is answered.
            Some(_) => {
                *down_since = Some(Instant::now());
                true
            }
            None => true,
        }
    }

    fn mark_up(&self) {
        if let Ok(mut down_since) = self.down_since.lock()
            && down_since.take().is_some()
        {
            tracing::info!("memcached response cache reachable again");
        }
    }

    fn mark_down(&self, error: &CallError) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
        if let Ok(mut down_since) = self.down_since.lock() {
            if down_since.is_none() {
                tracing::warn!(
                    %error,
                    "memcached response cache unavailable; serving without it until it answers"
                );
            }
            *down_since = Some(Instant::now());
        }
    }
}

fn item_key(key: &[u8; 32]) -> String {
    // A hash already; hex keeps it within Memcached's 250-byte, no-whitespace key rules.
    format!("{KEY_PREFIX}{}", hex::encode(key))
}

/// One reply line, without its `\r\n`; bounded so a wrong server cannot make it allocate.
async fn read_line(connection: &mut Connection) -> Result<String, CallError> {
    let mut line = Vec::new();
    (&mut *connection)
        .take(MAX_LINE_BYTES)
        .read_until(b'\n', &mut line)
        .await?;
    match line.strip_suffix(b"\r\n") {
        Some(line) => Ok(String::from_utf8_lossy(line).into_owned()),
        None => Err(CallError::Protocol("reply line cut off or too long".into())),
    }
}

async fn get(
    connection: &mut Connection,
    key: &str,
    max_body_bytes: usize,
) -> Result<Option<Bytes>, CallError> {
    connection
        .write_all(format!("get {key}\r\n").as_bytes())
        .await?;
    connection.flush().await?;
    let line = read_line(connection).await?;
    if line == "END" {
        return Ok(None);
    }
    // VALUE <key> <flags> <bytes>
    let mut fields = line.split(' ');
    let (Some("VALUE"), Some(found), Some(_flags), Some(length), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(CallError::Protocol(line));
    };
    let length: usize = length
        .parse()
        .map_err(|_| CallError::Protocol(line.clone()))?;
    if found != key || length > max_body_bytes {
        return Err(CallError::Protocol(line));
    }
    let mut body = vec![0; length + 2];
    connection.read_exact(&mut body).await?;
    if body.split_off(length) != b"\r\n" || read_line(connection).await? != "END" {
        return Err(CallError::Protocol("value not terminated".into()));
    }
    Ok(Some(Bytes::from(body)))
}

async fn set(
    connection: &mut Connection,
    key: &str,
    body: &[u8],
    expiry: u64,
) -> Result<Stored, CallError> {
    connection
        .write_all(format!("set {key} 0 {expiry} {}\r\n", body.len()).as_bytes())
        .await?;
    connection.write_all(body).await?;
    connection.write_all(b"\r\n").await?;
    connection.flush().await?;
    let line = read_line(connection).await?;
    match line.as_str() {
        "STORED" => Ok(Stored::Yes),
        // The server's own limit is lower than the configured one.
        _ if line.starts_with("SERVER_ERROR object too large") => Ok(Stored::Refused),
        _ => Err(CallError::Protocol(line)),
    }
}

#[async_trait]
impl CacheStore for MemcachedCacheStore {
    async fn get(&self, key: &[u8; 32]) -> Result<Option<Bytes>, StoreError> {
        let key = item_key(key);
        let max_body_bytes = self.max_body_bytes;
        Ok(self
            .call(async |connection: &mut Connection| get(connection, &key, max_body_bytes).await)
            .await
            .flatten())
    }

    /// A body over the item size limit is not cached (never cut to fit); a write the server does
    /// not take is skipped, as a miss would be.
    async fn put(&self, key: &[u8; 32], body: Bytes, ttl_s: u64) -> Result<(), StoreError> {
        if ttl_s == 0 || body.len() > self.max_body_bytes {
            return Ok(());
        }
        let expiry = if ttl_s > MAX_RELATIVE_TTL_S {
            now_secs().saturating_add(ttl_s)
        } else {
            ttl_s
        };
        let key = item_key(key);
        if let Some(Stored::Refused) = self
            .call(async |connection: &mut Connection| set(connection, &key, &body, expiry).await)
            .await
        {
            tracing::debug!(
                bytes = body.len(),
                "memcached refused a response as too large"
            );
        }
        Ok(())
    }
}
