//! Cached responses in Redis: `gw:cache:<hex of the 32-byte cache key>` holds the body, and Redis
//! expires it after its TTL. Shared by every gateway process on the Redis. A Redis that cannot be
//! reached is a miss (the cache never fails a request): every call is bounded by the connection's
//! timeout.

use async_trait::async_trait;
use bytes::Bytes;

use crate::cache::CacheStore;
use crate::error::StoreError;
use crate::storage::redis::Redis;

/// Bodies over this size are not cached (never truncated): Redis takes values up to 512 MB, but
/// a large value blocks the server while it is copied, and DynamoDB's cache refuses far less.
const MAX_STORED_BODY: usize = 4 * 1024 * 1024;
/// Keys per MGET in `get_many`.
const MAX_KEYS_PER_MGET: usize = 100;

pub struct RedisCacheStore {
    redis: Redis,
}

impl RedisCacheStore {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }
}

fn cache_key(key: &[u8; 32]) -> String {
    format!("gw:cache:{}", hex::encode(key))
}

#[async_trait]
impl CacheStore for RedisCacheStore {
    async fn get(&self, key: &[u8; 32]) -> Result<Option<Bytes>, StoreError> {
        let key = cache_key(key);
        let body: Option<Vec<u8>> = self
            .redis
            .call("reading a cached response", |mut connection| async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut connection)
                    .await
            })
            .await
            .map_err(StoreError::Backend)?;
        Ok(body.map(Bytes::from))
    }

    /// MGET per [`MAX_KEYS_PER_MGET`] keys; keys not read by `deadline` are misses.
    async fn get_many(
        &self,
        keys: &[[u8; 32]],
        deadline: tokio::time::Instant,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let mut bodies = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_KEYS_PER_MGET) {
            let names: Vec<String> = chunk.iter().map(cache_key).collect();
            let read = self
                .redis
                .call("reading cached responses", |mut connection| async move {
                    redis::cmd("MGET")
                        .arg(names)
                        .query_async::<Vec<Option<Vec<u8>>>>(&mut connection)
                        .await
                });
            match tokio::time::timeout_at(deadline, read).await {
                Ok(found) => {
                    let found = found.map_err(StoreError::Backend)?;
                    bodies.extend(found.into_iter().map(|body| body.map(Bytes::from)));
                }
                Err(_) => break,
            }
        }
        bodies.resize(keys.len(), None);
        Ok(bodies)
    }

    async fn put(&self, key: &[u8; 32], body: Bytes, ttl_s: u64) -> Result<(), StoreError> {
        if body.len() > MAX_STORED_BODY {
            tracing::warn!(
                size = body.len(),
                "response too large to cache in Redis; not cached"
            );
            return Ok(());
        }
        if ttl_s == 0 {
            return Ok(());
        }
        let key = cache_key(key);
        self.redis
            .call("storing a cached response", |mut connection| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(body.as_ref())
                    .arg("EX")
                    .arg(ttl_s)
                    .query_async::<()>(&mut connection)
                    .await
            })
            .await
            .map_err(StoreError::Backend)
    }
}
