//! The Redis backend against a real `redis-server`: the limiter and the response cache over
//! Redis behave as the in-process and DynamoDB ones do, two `gateway-local --backend redis`
//! processes on one Redis admit exactly a key's RPM, and a Redis outage gives clean 503s and
//! recovers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::cache::CacheStore;
use gateway::cache::redis::RedisCacheStore;
use gateway::keys::KeyRecord;
use gateway::limits::redis::RedisLimiter;
use gateway::limits::{BUDGET, Estimate, LimitError, Limiter, RPM, TPM, to_nano_usd};
use gateway::storage::redis::Redis;
use gateway::usage::Billed;
use serde_json::json;

use crate::common::local::{LocalServer, TempDir, cli};
use crate::common::redis::RedisServer;
use crate::common::within;

fn key(id: &str, rpm: Option<u64>, tpm: Option<u64>, budget_usd: Option<f64>) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        name: "t".into(),
        rpm,
        tpm,
        budget_usd,
        ..KeyRecord::default()
    }
}

fn estimate(tokens: u64, cost_usd: f64) -> Estimate {
    Estimate { tokens, cost_usd }
}

fn billed(tokens: u64, cost_usd: f64) -> Billed {
    Billed::one("m", tokens, 0, to_nano_usd(cost_usd))
}

fn refused_by(result: Result<gateway::limits::Reservation, LimitError>) -> Option<&'static str> {
    match result {
        Err(LimitError::Exceeded { limit, .. }) => Some(limit),
        _ => None,
    }
}

#[tokio::test]
async fn redis_limiter_admits_exactly_the_rpm_across_limiters() {
    within(60, async {
        let server = RedisServer::start();
        // Two limiters with connections of their own, as two processes have.
        let limiters = [
            Arc::new(RedisLimiter::new(
                Redis::open(&server.url(), Duration::from_secs(2)).unwrap(),
                None,
            )),
            Arc::new(RedisLimiter::new(
                Redis::open(&server.url(), Duration::from_secs(2)).unwrap(),
                None,
            )),
        ];
        let k = Arc::new(key("key_rpm", Some(50), None, None));
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let (limiter, k) = (Arc::clone(&limiters[i % 2]), Arc::clone(&k));
                tokio::spawn(async move { limiter.acquire(&k, Estimate::default(), 120).await })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => admitted += 1,
                Err(LimitError::Exceeded {
                    limit,
                    retry_after_secs,
                }) => assert_eq!((limit, retry_after_secs), (RPM, 60)),
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(admitted, 50);
        // A new minute opens a new window.
        assert!(
            limiters[0]
                .acquire(&k, Estimate::default(), 180)
                .await
                .is_ok()
        );
    })
    .await;
}

#[tokio::test]
async fn redis_limiter_reserves_tpm_then_settles_to_actual_usage() {
    within(60, async {
        let server = RedisServer::start();
        let limiter = RedisLimiter::new(
            Redis::open(&server.url(), Duration::from_secs(2)).unwrap(),
            None,
        );
        let k = key("key_tpm", None, Some(100), None);
        // Settlement only corrects the window it is in: the current minute.
        let now = gateway::clock::now_secs();
        let first = limiter.acquire(&k, estimate(80, 0.0), now).await.unwrap();
        assert_eq!(
            refused_by(limiter.acquire(&k, estimate(80, 0.0), now).await),
            Some(TPM)
        );
        // It used 10 of the 80 it reserved: the rest goes back to the window.
        limiter.settle(first, billed(10, 0.0)).await;
        assert!(limiter.acquire(&k, estimate(80, 0.0), now).await.is_ok());
    })
    .await;
}

#[tokio::test]
async fn redis_limiter_budget_admits_what_fits_and_survives_a_redis_restart() {
    within(60, async {
        let mut server = RedisServer::start();
        let limiter = RedisLimiter::new(
            Redis::open(&server.url(), Duration::from_secs(2)).unwrap(),
            None,
        );
        let k = key("key_budget", None, None, Some(1.0));
        assert_eq!(
            refused_by(limiter.acquire(&k, estimate(0, 220_000.0), 0).await),
            Some(BUDGET)
        );
        let a = limiter.acquire(&k, estimate(0, 0.4), 0).await.unwrap();
        let b = limiter.acquire(&k, estimate(0, 0.4), 0).await.unwrap();
        // 0.8 is reserved while those run: 0.4 more does not fit, 0.15 does.
        assert_eq!(
            refused_by(limiter.acquire(&k, estimate(0, 0.4), 0).await),
            Some(BUDGET)
        );
        let c = limiter.acquire(&k, estimate(0, 0.15), 0).await.unwrap();
        limiter.settle(a, billed(0, 0.3)).await;
        limiter.settle(b, billed(0, 0.3)).await;
        limiter.settle(c, billed(0, 0.0)).await;
        assert_eq!(limiter.spent_usd("key_budget", 0).await.unwrap(), 0.6);

        // The month's spend is persisted (append-only file): a restart keeps it.
        server.kill();
        assert!(matches!(
            limiter.spent_usd("key_budget", 0).await,
            Err(LimitError::Unavailable(_))
        ));
        server.resume();
        let spent = retry_until_available(|| limiter.spent_usd("key_budget", 0)).await;
        assert_eq!(spent, 0.6);
        let d = limiter.acquire(&k, estimate(0, 0.4), 0).await.unwrap();
        limiter.settle(d, billed(0, 0.4)).await;
        // Nothing is left: even a request estimated at nothing is refused.
        assert_eq!(
            refused_by(limiter.acquire(&k, estimate(0, 0.0), 0).await),
            Some(BUDGET)
        );
    })
    .await;
}

/// Calls `call` until Redis answers (the connection manager reconnects in the background).
async fn retry_until_available<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LimitError>>,
{
    let started = Instant::now();
    loop {
        match call().await {
            Ok(value) => return value,
            Err(error) => {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "Redis still unavailable: {error:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn redis_cache_stores_with_expiry_skips_large_bodies_and_misses_when_down() {
    within(60, async {
        let mut server = RedisServer::start();
        let store =
            RedisCacheStore::new(Redis::open(&server.url(), Duration::from_secs(2)).unwrap());
        store
            .put(&[1; 32], Bytes::from_static(b"body"), 60)
            .await
            .unwrap();
        store
            .put(&[2; 32], Bytes::from_static(b"short"), 1)
            .await
            .unwrap();
        assert_eq!(
            store.get(&[1; 32]).await.unwrap().as_deref(),
            Some(&b"body"[..])
        );
        let later = tokio::time::Instant::now() + Duration::from_secs(5);
        let many = store
            .get_many(&[[2; 32], [9; 32], [1; 32]], later)
            .await
            .unwrap();
        assert_eq!(
            many,
            vec![
                Some(Bytes::from_static(b"short")),
                None,
                Some(Bytes::from_static(b"body"))
            ]
        );
        // Redis expires the entry after its TTL.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(store.get(&[2; 32]).await.unwrap(), None);
        // A body over the size limit is not cached, never truncated.
        let large = Bytes::from(vec![b'x'; 4 * 1024 * 1024 + 1]);
        store.put(&[3; 32], large, 60).await.unwrap();
        assert_eq!(store.get(&[3; 32]).await.unwrap(), None);

        // Redis down: a read fails quickly (the response cache counts it as a miss).
        server.kill();
        let started = Instant::now();
        assert!(store.get(&[1; 32]).await.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

/// Every answer is 3 output tokens from the mock, at no cost.
const CONFIG: &str = r#"
[providers.mock]
kind = "mock"

[models.mock]
deployments = [{ provider = "mock", model = "mock" }]
"#;

/// `gateway-local --backend redis` on `redis`, with Redis calls timing out after `timeout_ms`.
fn start_gateway(dir: &std::path::Path, redis: &RedisServer, timeout_ms: &str) -> LocalServer {
    let url = redis.url();
    LocalServer::start_logging(
        dir,
        CONFIG,
        &[
            ("GATEWAY_BACKEND", "redis"),
            ("GATEWAY_REDIS_URL", &url),
            ("GATEWAY_REDIS_TIMEOUT_MS", timeout_ms),
        ],
        Some("warn"),
    )
}

fn create_key(dir: &std::path::Path, args: &[&str]) -> String {
    let mut all = vec!["keys", "create", "--name", "redis"];
    all.extend_from_slice(args);
    let key = cli(dir, &all).trim().to_owned();
    assert!(key.starts_with("gw-"), "{key}");
    key
}

/// Sends `count` requests at once, alternating between the gateways; returns each status.
async fn burst(urls: &[String], key: &str, count: usize) -> Vec<u16> {
    let client = gateway::tls::http_client();
    let body =
        json!({"model": "mock", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let request = client
                .post(format!("{}/v1/chat/completions", urls[i % urls.len()]))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body.clone())
                .timeout(Duration::from_secs(30));
            tokio::spawn(async move {
                let response = request.send().await.expect("gateway answers");
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                if status == 429 {
                    assert!(body.contains("requests per minute"), "{body}");
                }
                status
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(count);
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    statuses
}

#[tokio::test]
async fn two_gateways_on_one_redis_admit_exactly_the_rpm() {
    within(120, async {
        let redis = RedisServer::start();
        let dir = TempDir::new("redis-two");
        // Two keys: a burst that straddles a minute boundary is sent again with the second.
        let keys = [
            create_key(dir.path(), &["--rpm", "50"]),
            create_key(dir.path(), &["--rpm", "50"]),
        ];
        // Both share the data folder (keys stay in SQLite) and the Redis (limits).
        // Debug builds on a small machine: a burst of 1 000 keeps the gateways' threads busy
        // for seconds, and a Redis answer waits for one of them to be polled.
        let gateways = [
            start_gateway(dir.path(), &redis, "30000"),
            start_gateway(dir.path(), &redis, "30000"),
        ];
        let urls: Vec<String> = gateways.iter().map(|g| g.url.clone()).collect();
        for key in &keys {
            let minute = gateway::clock::now_secs() / 60;
            let statuses = burst(&urls, key, 1000).await;
            if gateway::clock::now_secs() / 60 != minute {
                continue;
            }
            let mut counts = std::collections::BTreeMap::new();
            for status in statuses {
                *counts.entry(status).or_insert(0) += 1;
            }
            assert_eq!(
                counts,
                [(200, 50), (429, 950)].into(),
                "RPM 50: requests by status"
            );
            return;
        }
        panic!("every burst straddled a minute boundary");
    })
    .await;
}

#[tokio::test]
async fn a_redis_outage_gives_clean_503s_and_recovers() {
    within(120, async {
        let mut redis = RedisServer::start();
        let dir = TempDir::new("redis-outage");
        let limited = create_key(dir.path(), &["--rpm", "1000"]);
        let gateway = start_gateway(dir.path(), &redis, "2000");
        let urls = [gateway.url.clone()];
        assert_eq!(burst(&urls, &limited, 5).await, vec![200; 5]);

        redis.kill();
        let client = gateway::tls::http_client();
        for _ in 0..3 {
            let started = Instant::now();
            let response = client
                .post(format!("{}/v1/chat/completions", gateway.url))
                .bearer_auth(&limited)
                .json(&json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}]}))
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .expect("the gateway answers during the outage");
            assert_eq!(response.status().as_u16(), 503);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "answered after {:?}",
                started.elapsed()
            );
            let body: serde_json::Value = response.json().await.expect("JSON error");
            let error = &body["error"];
            assert!(
                error["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Limits cannot be checked")),
                "{body}"
            );
            assert!(
                error.get("type").is_some() && error.get("code").is_some(),
                "{body}"
            );
            assert!(!body.to_string().contains("127.0.0.1"), "{body}");
        }

        redis.resume();
        let started = Instant::now();
        loop {
            let statuses = burst(&urls, &limited, 1).await;
            if statuses == [200] {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no recovery after Redis came back: {statuses:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(burst(&urls, &limited, 5).await, vec![200; 5]);
    })
    .await;
}
