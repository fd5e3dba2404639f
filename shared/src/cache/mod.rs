//! The response cache: exact match on a hash of the canonical request, partitioned per tenant,
//! with single flight so concurrent identical misses in one process make one upstream call.

pub mod dynamo;
pub mod embedded;
pub mod key;
#[cfg(feature = "memcached")]
pub mod memcached;
pub mod near_miss;
#[cfg(feature = "redis")]
pub mod redis;
pub mod semantic;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::HeaderMap;
use http::header::{CACHE_CONTROL, HeaderName};
use tokio::sync::watch;

use crate::api::ChatRequest;
use crate::error::StoreError;
use key::CacheKey;

/// Response bodies by the hash of the canonical request.
#[async_trait::async_trait]
pub trait CacheStore: Send + Sync {
    async fn get(&self, key: &[u8; 32]) -> Result<Option<Bytes>, StoreError>;
    /// Stores a body for `ttl_s` seconds. Implementations may write in the background.
    async fn put(&self, key: &[u8; 32], body: Bytes, ttl_s: u64) -> Result<(), StoreError>;

    /// The bodies of many keys, in the order of `keys`; stops reading at `deadline` (the keys
    /// not read by then are misses). The default reads one key at a time.
    async fn get_many(
        &self,
        keys: &[[u8; 32]],
        deadline: tokio::time::Instant,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let mut bodies = Vec::with_capacity(keys.len());
        for key in keys {
            let body = match tokio::time::timeout_at(deadline, self.get(key)).await {
                Ok(body) => body?,
                Err(_) => None,
            };
            bodies.push(body);
        }
        Ok(bodies)
    }
}

/// Whether a request may use the cache, from its headers and sampling parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    Use,
    /// The client asked to bypass (`Cache-Control: no-cache`/`no-store`, `x-gateway-cache: bypass`)
    /// or the model has caching off.
    Bypass,
    /// Sampling is random (temperature above 0) and the client did not opt in: not cached.
    Skip,
}

impl CacheMode {
    pub fn decide(headers: &HeaderMap, request: &ChatRequest, ttl_s: u64) -> Self {
        static X_GATEWAY_CACHE: HeaderName = HeaderName::from_static("x-gateway-cache");
        let header_has = |name: &HeaderName, needle: &[u8]| {
            headers
                .get_all(name)
                .iter()
                .filter(|v| v.to_str().is_ok())
                .any(|v| {
                    v.as_bytes()
                        .windows(needle.len())
                        .any(|w| w.eq_ignore_ascii_case(needle))
                })
        };
        if ttl_s == 0
            || header_has(&CACHE_CONTROL, b"no-cache")
            || header_has(&CACHE_CONTROL, b"no-store")
            || header_has(&X_GATEWAY_CACHE, b"bypass")
        {
            return CacheMode::Bypass;
        }
        if header_has(&X_GATEWAY_CACHE, b"use") || request.temperature == Some(0.0) {
            CacheMode::Use
        } else {
            CacheMode::Skip
        }
    }

    /// `x-gateway-cache` of an answer not served from the cache.
    pub fn header_value(self) -> &'static str {
        match self {
            CacheMode::Use => "MISS",
            CacheMode::Bypass | CacheMode::Skip => "BYPASS",
        }
    }
}

type Inflight = Mutex<HashMap<CacheKey, watch::Receiver<Option<Bytes>>>>;

pub struct ResponseCache {
    store: Arc<dyn CacheStore>,
    inflight: Arc<Inflight>,
}

pub enum Lookup {
    Hit(Bytes),
    /// This request leads: it calls upstream and must `complete` (or drop) the guard.
    Miss(Leader),
    /// The request's deadline passed while it waited for an identical request's answer.
    DeadlinePassed,
}

/// Held by the one request fetching an answer that others wait for. Dropping it without
/// completing (an error, a cut stream) releases the waiters to make their own calls.
pub struct Leader {
    key: CacheKey,
    sender: watch::Sender<Option<Bytes>>,
    inflight: Arc<Inflight>,
    store: Arc<dyn CacheStore>,
    /// Runs once the answer is stored (the semantic cache remembers the question then).
    after_store: Option<BoxFuture<'static, ()>>,
}

impl Leader {
    /// The cache key the answer will be stored under.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Work to do once the answer is stored, and only then.
    pub fn after_store(&mut self, work: BoxFuture<'static, ()>) {
        self.after_store = Some(work);
    }

    /// Stores a complete answer and hands it to every waiting identical request.
    pub async fn complete(mut self, body: Bytes, ttl_s: u64) {
        let stored = self.store.put(&self.key, body.clone(), ttl_s).await;
        let _ = self.sender.send(Some(body));
        match stored {
            Ok(()) => {
                if let Some(work) = self.after_store.take() {
                    work.await;
                }
            }
            Err(error) => crate::telemetry::cache_store_failed(&error),
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Ok(mut inflight) = self.inflight.lock() {
            inflight.remove(&self.key);
        }
    }
}

impl ResponseCache {
    pub fn new(store: Arc<dyn CacheStore>) -> Self {
        Self {
            store,
            inflight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A stored answer, or an answer being fetched by an identical request (waited for until
    /// `deadline` at most), or the lead. A store that cannot be read is treated as a miss: the
    /// cache never fails a request.
    pub async fn lookup(&self, key: CacheKey, deadline: tokio::time::Instant) -> Lookup {
        loop {
            match self.store.get(&key).await {
                Ok(Some(body)) => return Lookup::Hit(body),
                Ok(None) => {}
                Err(error) => crate::telemetry::cache_store_failed(&error),
            }
            let waiting = {
                let Ok(mut inflight) = self.inflight.lock() else {
                    return Lookup::Miss(self.leader(key));
                };
                match inflight.get(&key) {
                    Some(receiver) => receiver.clone(),
                    None => {
                        let (sender, receiver) = watch::channel(None);
                        inflight.insert(key, receiver);
                        return Lookup::Miss(Leader {
                            key,
                            sender,
                            inflight: Arc::clone(&self.inflight),
                            store: Arc::clone(&self.store),
                            after_store: None,
                        });
                    }
                }
            };
            let mut waiting = waiting;
            let answer = tokio::time::timeout_at(deadline, waiting.wait_for(Option::is_some)).await;
            match answer {
                Err(_) => return Lookup::DeadlinePassed,
                Ok(Ok(body)) => {
                    if let Some(body) = body.clone() {
                        return Lookup::Hit(body);
                    }
                }
                Ok(Err(_)) => {}
            }
            // The leader gave up without an answer: try again, possibly leading this time.
        }
    }

    /// The store under the cache, for other key domains (the embedding cache).
    pub fn store(&self) -> &Arc<dyn CacheStore> {
        &self.store
    }

    fn leader(&self, key: CacheKey) -> Leader {
        let (sender, _) = watch::channel(None);
        Leader {
            key,
            sender,
            inflight: Arc::clone(&self.inflight),
            store: Arc::clone(&self.store),
            after_store: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StoreError;
    use async_trait::async_trait;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn request(body: serde_json::Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn mode_follows_headers_and_temperature() {
        let t0 = request(json!({"model": "m", "messages": [], "temperature": 0}));
        let t1 = request(json!({"model": "m", "messages": [], "temperature": 1}));
        let mut headers = HeaderMap::new();
        assert_eq!(CacheMode::decide(&headers, &t0, 60), CacheMode::Use);
        assert_eq!(CacheMode::decide(&headers, &t1, 60), CacheMode::Skip);
        assert_eq!(CacheMode::decide(&headers, &t0, 0), CacheMode::Bypass);
        headers.insert("x-gateway-cache", "use".parse().unwrap());
        assert_eq!(CacheMode::decide(&headers, &t1, 60), CacheMode::Use);
        headers.insert("cache-control", "no-store".parse().unwrap());
        assert_eq!(CacheMode::decide(&headers, &t1, 60), CacheMode::Bypass);
    }

    #[derive(Default)]
    struct MemoryStore {
        entries: Mutex<HashMap<CacheKey, Bytes>>,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl CacheStore for MemoryStore {
        async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(self.entries.lock().unwrap().get(key).cloned())
        }
        async fn put(&self, key: &CacheKey, body: Bytes, _: u64) -> Result<(), StoreError> {
            self.entries.lock().unwrap().insert(*key, body);
            Ok(())
        }
    }

    fn later() -> tokio::time::Instant {
        tokio::time::Instant::now() + std::time::Duration::from_secs(10)
    }

    #[tokio::test]
    async fn a_waiter_gives_up_at_its_own_deadline() {
        let cache = ResponseCache::new(Arc::new(MemoryStore::default()));
        let Lookup::Miss(_leader) = cache.lookup([3; 32], later()).await else {
            panic!("first lookup must miss")
        };
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            cache.lookup([3; 32], deadline),
        )
        .await
        .expect("the waiter returns by its deadline");
        assert!(matches!(waited, Lookup::DeadlinePassed));
        assert!(started.elapsed() >= std::time::Duration::from_millis(50));
    }

    #[tokio::test]
    async fn concurrent_identical_misses_have_one_leader() {
        let cache = Arc::new(ResponseCache::new(Arc::new(MemoryStore::default())));
        let leaders = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (cache, leaders) = (Arc::clone(&cache), Arc::clone(&leaders));
                tokio::spawn(async move {
                    match cache.lookup([1; 32], later()).await {
                        Lookup::Hit(body) => body,
                        Lookup::Miss(leader) => {
                            leaders.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            let body = Bytes::from_static(b"answer");
                            leader.complete(body.clone(), 60).await;
                            body
                        }
                        Lookup::DeadlinePassed => panic!("the waiter's deadline is far away"),
                    }
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(&task.await.unwrap()[..], b"answer");
        }
        assert_eq!(leaders.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_leader_releases_waiters() {
        let cache = Arc::new(ResponseCache::new(Arc::new(MemoryStore::default())));
        let Lookup::Miss(leader) = cache.lookup([2; 32], later()).await else {
            panic!("first lookup must miss")
        };
        let waiter = {
            let cache = Arc::clone(&cache);
            tokio::spawn(
                async move { matches!(cache.lookup([2; 32], later()).await, Lookup::Miss(_)) },
            )
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(leader);
        assert!(
            waiter.await.unwrap(),
            "the waiter leads once the first leader gives up"
        );
    }
}
