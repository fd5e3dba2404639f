//! The DynamoDB backends against moto server: keys, the response cache and exact limits,
//! including conditional failures and several limiter instances sharing one table.

use std::collections::HashMap;
use std::sync::Arc;

use crate::common::moto::{Moto, client_for};
use crate::common::{now_secs, within};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use gateway::backends::Backends;
use gateway::cache::CacheStore;
use gateway::cache::dynamo::DynamoCacheStore;
use gateway::error::StoreError;
use gateway::keys::KeyStore;
use gateway::keys::dynamo::DynamoKeyStore;
use gateway::keys::{KeyRecord, NewKey, ensure_admin_key, generate_key, hash_secret};
use gateway::limits::dynamo::DynamoLimiter;
use gateway::limits::{BUDGET, Estimate, LimitError, Limiter, RPM, TPM};
use gateway::storage::dynamo::{DynamoConfig, FailurePolicy, create_tables};
use gateway::usage::dynamo::DynamoUsageStore;
use gateway::usage::{Billed, ModelUsage, UsageQuery, UsageStore};

/// Tables of one test on the shared moto server.
struct Tables {
    _moto: Arc<Moto>,
    moto_endpoint: String,
    client: Client,
    config: DynamoConfig,
}

impl Tables {
    async fn create(test: &str) -> Self {
        let moto = Moto::shared();
        let client = moto.client();
        let config = DynamoConfig {
            keys_table: format!("{test}-keys"),
            limits_table: format!("{test}-limits"),
            cache_table: format!("{test}-cache"),
            limits_failure_policy: FailurePolicy::Closed,
        };
        create_tables(&client, &config).await.expect("tables");
        Self {
            moto_endpoint: moto.endpoint().to_owned(),
            _moto: moto,
            client,
            config,
        }
    }

    fn keys(&self) -> DynamoKeyStore {
        DynamoKeyStore::new(self.client.clone(), &self.config)
    }

    fn cache(&self) -> DynamoCacheStore {
        DynamoCacheStore::new(self.client.clone(), &self.config)
    }

    fn limiter(&self) -> DynamoLimiter {
        DynamoLimiter::new(self.client.clone(), &self.config)
    }

    /// A limiter with a client of its own, as another Lambda container has.
    fn other_container_limiter(&self) -> DynamoLimiter {
        DynamoLimiter::new(client_for(&self.moto_endpoint), &self.config)
    }
}

fn new_key(name: &str) -> (String, KeyRecord) {
    let (hash, _secret, record) = generate_key(
        NewKey {
            name: name.into(),
            ..NewKey::default()
        },
        now_secs(),
    )
    .expect("key");
    (hash, record)
}

fn limited_key(id: &str, rpm: Option<u64>, tpm: Option<u64>, budget_usd: Option<f64>) -> KeyRecord {
    KeyRecord {
        id: id.to_owned(),
        name: id.to_owned(),
        rpm,
        tpm,
        budget_usd,
        ..KeyRecord::default()
    }
}

fn estimate(tokens: u64, cost_usd: f64) -> Estimate {
    Estimate { tokens, cost_usd }
}

/// A time at the start of the current minute, given to the limiter instead of waiting: settlement
/// only corrects the window it was reserved in, so a test that settles must not straddle a minute,
/// and the limiter reads no clock of its own.
fn start_of_this_minute() -> u64 {
    now_secs() / 60 * 60
}

/// A client for an endpoint where nothing listens, without the SDK's retries (which only make
/// the failure slower).
fn unreachable_client() -> Client {
    let config = client_for("http://127.0.0.1:1")
        .config()
        .to_builder()
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

fn refused_limit(result: Result<gateway::limits::Reservation, LimitError>) -> &'static str {
    match result {
        Err(LimitError::Exceeded { limit, .. }) => limit,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------- keys

#[tokio::test]
async fn keys_are_found_by_hash_and_duplicates_conflict() {
    within(60, async {
        let tables = Tables::create("keys-insert").await;
        let store = tables.keys();
        let (hash, record) = new_key("a");
        store.insert(&hash, &record).await.expect("insert");
        assert_eq!(
            store.get_by_hash(&hash).await.unwrap(),
            Some(record.clone())
        );
        assert_eq!(
            store.get_by_hash(&hash_secret("unknown")).await.unwrap(),
            None
        );

        assert!(matches!(
            store.insert(&hash, &record).await,
            Err(StoreError::Conflict(_))
        ));
        // The same id under another secret conflicts too, and leaves nothing behind.
        let other_hash = hash_secret("another secret");
        assert!(matches!(
            store.insert(&other_hash, &record).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.get_by_hash(&other_hash).await.unwrap(), None);
        assert_eq!(store.list().await.unwrap(), vec![record]);
    })
    .await;
}

#[tokio::test]
async fn upsert_replaces_a_key_and_moves_its_id_to_a_new_secret() {
    within(60, async {
        let tables = Tables::create("keys-upsert").await;
        let store = tables.keys();
        let (first_hash, mut record) = new_key("first");
        store.upsert(&first_hash, &record).await.expect("create");
        record.name = "renamed".into();
        store.upsert(&first_hash, &record).await.expect("replace");
        assert_eq!(
            store.get_by_hash(&first_hash).await.unwrap().unwrap().name,
            "renamed"
        );

        let second_hash = hash_secret("rotated secret");
        store.upsert(&second_hash, &record).await.expect("rotate");
        assert_eq!(store.get_by_hash(&first_hash).await.unwrap(), None);
        assert_eq!(
            store.get_by_hash(&second_hash).await.unwrap(),
            Some(record.clone())
        );
        assert_eq!(store.list().await.unwrap(), vec![record.clone()]);
        // Revocation follows the id to the key's current secret.
        assert!(store.revoke(&record.id).await.unwrap());
        assert!(
            store
                .get_by_hash(&second_hash)
                .await
                .unwrap()
                .unwrap()
                .disabled
        );
    })
    .await;
}

/// `ensure_admin_key` from `containers` cold-starting at once with the same secret.
async fn cold_start_storm(store: &Arc<dyn KeyStore>, secret: &'static str, containers: usize) {
    let tasks: Vec<_> = (0..containers)
        .map(|_| {
            let store = Arc::clone(store);
            tokio::spawn(async move { ensure_admin_key(store.as_ref(), secret, now_secs()).await })
        })
        .collect();
    for task in tasks {
        task.await
            .unwrap()
            .expect("every container's upsert succeeds");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_bootstrap_and_rotation_of_the_admin_key_leave_exactly_one() {
    within(60, async {
        let tables = Tables::create("keys-bootstrap").await;
        let store: Arc<dyn KeyStore> = Arc::new(tables.keys());
        cold_start_storm(&store, "gw-first-admin", 24).await;
        assert_eq!(store.list().await.unwrap().len(), 1);
        assert!(
            store
                .get_by_hash(&hash_secret("gw-first-admin"))
                .await
                .unwrap()
                .is_some()
        );

        // A deployment with a new GATEWAY_ADMIN_KEY: the id moves to the new secret exactly once.
        cold_start_storm(&store, "gw-rotated-admin", 24).await;
        let admins = store.list().await.unwrap();
        assert_eq!(admins.len(), 1, "{admins:?}");
        assert_eq!(
            store
                .get_by_hash(&hash_secret("gw-first-admin"))
                .await
                .unwrap(),
            None
        );
        assert!(
            store
                .get_by_hash(&hash_secret("gw-rotated-admin"))
                .await
                .unwrap()
                .is_some()
        );
        assert!(store.revoke("admin").await.unwrap());
        assert!(store.list().await.unwrap()[0].disabled);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_upserts_of_two_secrets_keep_the_id_paired_with_one() {
    within(60, async {
        let tables = Tables::create("keys-race").await;
        let store: Arc<dyn KeyStore> = Arc::new(tables.keys());
        // Each failed attempt is caused by another writer's success, so fewer writers than the
        // store's retry attempts always finish.
        let tasks: Vec<_> = ["gw-a", "gw-b", "gw-a", "gw-b", "gw-a", "gw-b"]
            .into_iter()
            .map(|secret| {
                let store = Arc::clone(&store);
                tokio::spawn(
                    async move { ensure_admin_key(store.as_ref(), secret, now_secs()).await },
                )
            })
            .collect();
        for task in tasks {
            task.await.unwrap().expect("every upsert succeeds");
        }
        let admins = store.list().await.unwrap();
        assert_eq!(admins.len(), 1, "{admins:?}");
        let a = store.get_by_hash(&hash_secret("gw-a")).await.unwrap();
        let b = store.get_by_hash(&hash_secret("gw-b")).await.unwrap();
        assert!(
            a.is_some() != b.is_some(),
            "one secret holds the id: {a:?} {b:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn list_returns_every_key_sorted_by_id() {
    within(60, async {
        let tables = Tables::create("keys-list").await;
        let store = tables.keys();
        let mut records = Vec::new();
        for i in 0..30 {
            let (hash, record) = new_key(&format!("k{i}"));
            store.insert(&hash, &record).await.expect("insert");
            records.push(record);
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(store.list().await.unwrap(), records);
    })
    .await;
}

#[tokio::test]
async fn revoke_disables_the_key_and_reports_unknown_ids() {
    within(60, async {
        let tables = Tables::create("keys-revoke").await;
        let store = tables.keys();
        let (hash, record) = new_key("to revoke");
        store.insert(&hash, &record).await.expect("insert");
        assert!(store.revoke(&record.id).await.unwrap());
        let revoked = store.get_by_hash(&hash).await.unwrap().unwrap();
        assert!(revoked.disabled);
        assert_eq!(revoked.name, record.name);
        assert!(!store.revoke("key_missing").await.unwrap());
    })
    .await;
}

// ------------------------------------------------------------------------------------ cache

async fn raw_cache_item(
    tables: &Tables,
    key: &[u8; 32],
) -> Option<HashMap<String, AttributeValue>> {
    tables
        .client
        .get_item()
        .table_name(&tables.config.cache_table)
        .key("pk", AttributeValue::S(format!("cache#{}", hex(key))))
        .send()
        .await
        .expect("get item")
        .item
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes that do not compress.
fn noise(len: usize) -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn cached_bodies_round_trip_through_the_shared_backends() {
    within(60, async {
        let tables = Tables::create("cache-small").await;
        let cache = Backends::dynamo(&tables.client, &tables.config).cache;
        let key = [1u8; 32];
        assert_eq!(cache.get(&key).await.unwrap(), None);
        let body = Bytes::from_static(br#"{"id":"chatcmpl-1","choices":[]}"#);
        cache.put(&key, body.clone(), 60).await.expect("put");
        assert_eq!(cache.get(&key).await.unwrap(), Some(body));
        let item = raw_cache_item(&tables, &key).await.expect("stored");
        assert!(
            !item.contains_key("enc"),
            "small bodies are stored as they are"
        );
    })
    .await;
}

#[tokio::test]
async fn large_bodies_are_stored_compressed_and_served_intact() {
    within(60, async {
    let tables = Tables::create("cache-large").await;
    let store = tables.cache();
    let key = [2u8; 32];
    // Over 1 MB of JSON: well past the item limit before compression.
    let body: Bytes = serde_json::to_vec(&serde_json::json!({
        "choices": (0..30_000).map(|i| serde_json::json!({"index": i, "text": "the same words again"})).collect::<Vec<_>>()
    }))
    .unwrap()
    .into();
    assert!(body.len() > 1_000_000);
    store.put(&key, body.clone(), 60).await.expect("put");
    let item = raw_cache_item(&tables, &key).await.expect("stored");
    assert_eq!(item["enc"], AttributeValue::S("deflate".into()));
    let stored = item["body"].as_b().expect("binary body").as_ref().len();
    assert!(stored < 400 * 1024, "stored {stored} bytes");
    assert_eq!(store.get(&key).await.unwrap(), Some(body));
    })
    .await;
}

#[tokio::test]
async fn bodies_too_large_for_an_item_are_not_cached() {
    within(60, async {
        let tables = Tables::create("cache-oversized").await;
        let store = tables.cache();
        let key = [3u8; 32];
        store
            .put(&key, noise(600 * 1024), 60)
            .await
            .expect("skipping is not an error");
        assert_eq!(raw_cache_item(&tables, &key).await, None);
        assert_eq!(store.get(&key).await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn expired_entries_are_not_served() {
    within(60, async {
        let tables = Tables::create("cache-expired").await;
        let store = tables.cache();
        let key = [4u8; 32];
        // As DynamoDB may still hold it (TTL deletion is lazy) and moto always does.
        tables
            .client
            .put_item()
            .table_name(&tables.config.cache_table)
            .item("pk", AttributeValue::S(format!("cache#{}", hex(&key))))
            .item("body", AttributeValue::B(Blob::new(&b"stale"[..])))
            .item(
                "expires_at",
                AttributeValue::N((now_secs() - 1).to_string()),
            )
            .send()
            .await
            .expect("put item");
        assert_eq!(store.get(&key).await.unwrap(), None);
    })
    .await;
}

// ----------------------------------------------------------------------------------- limits

/// Runs `n` concurrent acquisitions, alternating between `limiters`; returns how many were
/// admitted, and checks every refusal is `limit` with a Retry-After to the next minute.
async fn acquire_concurrently(
    limiters: &[Arc<DynamoLimiter>],
    key: &KeyRecord,
    n: usize,
    now: u64,
    limit: &'static str,
) -> usize {
    let key = Arc::new(key.clone());
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let limiter = Arc::clone(&limiters[i % limiters.len()]);
            let key = Arc::clone(&key);
            tokio::spawn(async move { limiter.acquire(&key, estimate(10, 0.0), now).await })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(LimitError::Exceeded {
                limit: refused,
                retry_after_secs,
            }) => {
                assert_eq!(refused, limit);
                assert_eq!(retry_after_secs, 60 - now % 60);
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rpm_admits_exactly_the_limit_under_concurrency() {
    within(60, async {
        let tables = Tables::create("limits-rpm").await;
        let limiter = Arc::new(tables.limiter());
        let key = limited_key("key_rpm", Some(50), None, None);
        let now = 1_800_000_015;
        assert_eq!(
            acquire_concurrently(std::slice::from_ref(&limiter), &key, 200, now, RPM).await,
            50
        );
        // The next minute is a new window.
        assert!(
            limiter
                .acquire(&key, estimate(10, 0.0), now + 60)
                .await
                .is_ok()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limiters_in_different_containers_share_the_counts() {
    within(60, async {
        let tables = Tables::create("limits-shared").await;
        let limiters = [
            Arc::new(tables.limiter()),
            Arc::new(tables.other_container_limiter()),
        ];
        let key = limited_key("key_shared", Some(50), Some(100_000), None);
        let now = 1_800_000_030;
        assert_eq!(
            acquire_concurrently(&limiters, &key, 200, now, RPM).await,
            50
        );

        let spender = limited_key("key_spender", None, None, Some(10.0));
        let reservation = limiters[0]
            .acquire(&spender, estimate(0, 0.5), now_secs())
            .await
            .expect("admitted");
        limiters[0].settle(reservation, billed(0, 0.25)).await;
        let seen_elsewhere = limiters[1]
            .spent_usd("key_spender", now_secs())
            .await
            .unwrap();
        assert!((seen_elsewhere - 0.25).abs() < 1e-9, "{seen_elsewhere}");
    })
    .await;
}

#[tokio::test]
async fn tpm_reserves_then_settles_to_actual_usage() {
    within(60, async {
        let tables = Tables::create("limits-tpm").await;
        let limiter = tables.limiter();
        let key = limited_key("key_tpm", None, Some(100), None);
        let now = start_of_this_minute();
        let first = limiter
            .acquire(&key, estimate(80, 0.0), now)
            .await
            .expect("admitted");
        match limiter.acquire(&key, estimate(80, 0.0), now).await {
            Err(LimitError::Exceeded {
                limit,
                retry_after_secs,
            }) => {
                assert_eq!(limit, TPM);
                assert_eq!(retry_after_secs, 60 - now % 60);
            }
            other => panic!("expected a TPM refusal, got {other:?}"),
        }
        // It used 10 of the 80 it reserved: the rest goes back to the window.
        limiter.settle(first, billed(10, 0.0)).await;
        assert!(limiter.acquire(&key, estimate(80, 0.0), now).await.is_ok());
        assert_eq!(
            refused_limit(limiter.acquire(&key, estimate(20, 0.0), now).await),
            TPM
        );
        // A reservation larger than the whole limit can never be admitted.
        assert_eq!(
            refused_limit(limiter.acquire(&key, estimate(101, 0.0), now).await),
            TPM
        );
    })
    .await;
}

#[tokio::test]
async fn budget_admits_only_requests_whose_estimate_fits_in_what_is_left() {
    within(60, async {
        let tables = Tables::create("limits-budget").await;
        let limiter = tables.limiter();
        let key = limited_key("key_budget", None, None, Some(1.0));
        let now = now_secs();
        // An estimate beyond the whole budget (a $0.01 key sending max_tokens 4294967295 and n 128
        // is estimated at about $220,000) is refused on a fresh key.
        match limiter.acquire(&key, estimate(0, 220_000.0), now).await {
            Err(LimitError::Exceeded {
                limit,
                retry_after_secs,
            }) => {
                assert_eq!(limit, BUDGET);
                assert_eq!(retry_after_secs, gateway::clock::secs_until_next_month(now));
            }
            other => panic!("expected a budget refusal, got {other:?}"),
        }
        let a = limiter
            .acquire(&key, estimate(0, 0.4), now)
            .await
            .expect("a");
        let b = limiter
            .acquire(&key, estimate(0, 0.4), now)
            .await
            .expect("b");
        // 0.8 is reserved while those run: 0.4 more does not fit in what is left, 0.15 does.
        assert_eq!(
            refused_limit(limiter.acquire(&key, estimate(0, 0.4), now).await),
            BUDGET
        );
        let c = limiter
            .acquire(&key, estimate(0, 0.15), now)
            .await
            .expect("c");
        limiter.settle(a, billed(0, 0.3)).await;
        limiter.settle(b, billed(0, 0.3)).await;
        limiter.settle(c, billed(0, 0.0)).await;
        let spent = limiter.spent_usd("key_budget", now).await.unwrap();
        assert!((spent - 0.6).abs() < 1e-9, "{spent}");
        // 0.4 is left: an estimate of exactly that fits, and then nothing is left, not even for a
        // request estimated at nothing.
        let d = limiter
            .acquire(&key, estimate(0, 0.4), now)
            .await
            .expect("d");
        limiter.settle(d, billed(0, 0.4)).await;
        assert_eq!(
            refused_limit(limiter.acquire(&key, estimate(0, 0.0), now).await),
            BUDGET
        );
        let spent = limiter.spent_usd("key_budget", now).await.unwrap();
        assert!((spent - 1.0).abs() < 1e-9, "{spent}");
        assert_eq!(limiter.spent_usd("key_never_used", now).await.unwrap(), 0.0);
    })
    .await;
}

#[tokio::test]
async fn a_budget_refusal_does_not_consume_rpm_or_tpm() {
    within(60, async {
        let tables = Tables::create("limits-atomic").await;
        let limiter = tables.limiter();
        let key = limited_key("key_atomic", Some(3), Some(1_000), Some(1.0));
        let now = start_of_this_minute();
        // Two of these fit in the budget, a third does not.
        let est = estimate(100, 0.4);
        let a = limiter.acquire(&key, est, now).await.expect("a");
        let b = limiter.acquire(&key, est, now).await.expect("b");
        for _ in 0..5 {
            assert_eq!(refused_limit(limiter.acquire(&key, est, now).await), BUDGET);
        }
        limiter.settle(a, billed(100, 0.1)).await;
        limiter.settle(b, billed(100, 0.1)).await;
        // Five budget refusals later the window still holds two requests and 200 tokens: a third
        // request with 800 tokens fits exactly, which it would not had the refusals counted.
        assert!(limiter.acquire(&key, estimate(800, 0.1), now).await.is_ok());
        assert_eq!(
            refused_limit(limiter.acquire(&key, estimate(1, 0.1), now).await),
            RPM
        );
    })
    .await;
}

#[tokio::test]
async fn a_window_refusal_does_not_reserve_budget() {
    within(60, async {
        let tables = Tables::create("limits-atomic-budget").await;
        let limiter = tables.limiter();
        let key = limited_key("key_window_first", Some(1), None, Some(1.0));
        let now = now_secs();
        limiter
            .acquire(&key, estimate(1, 0.4), now)
            .await
            .expect("first");
        for _ in 0..5 {
            assert_eq!(
                refused_limit(limiter.acquire(&key, estimate(1, 0.4), now).await),
                RPM
            );
        }
        // Only the admitted request's 0.4 is reserved: the next minute admits 0.4 more.
        assert!(
            limiter
                .acquire(&key, estimate(1, 0.4), now + 60)
                .await
                .is_ok()
        );
    })
    .await;
}

#[tokio::test]
async fn limits_fail_closed_when_the_table_is_unreachable() {
    within(60, async {
        let config = DynamoConfig {
            keys_table: "keys".into(),
            limits_table: "limits".into(),
            cache_table: "cache".into(),
            limits_failure_policy: FailurePolicy::Closed,
        };
        let limiter = DynamoLimiter::new(unreachable_client(), &config);
        let key = limited_key("key_closed", Some(10), None, None);
        match limiter.acquire(&key, estimate(1, 0.0), now_secs()).await {
            Err(LimitError::Unavailable(reason)) => {
                assert!(reason.contains("DynamoDB"), "{reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        // A key without limits needs no table.
        let unlimited = limited_key("key_unlimited", None, None, None);
        assert!(
            limiter
                .acquire(&unlimited, estimate(1, 0.0), now_secs())
                .await
                .is_ok()
        );
    })
    .await;
}

#[tokio::test]
async fn limits_fail_open_when_configured() {
    within(60, async {
        let config = DynamoConfig {
            keys_table: "keys".into(),
            limits_table: "limits".into(),
            cache_table: "cache".into(),
            limits_failure_policy: FailurePolicy::Open,
        };
        let limiter = DynamoLimiter::new(unreachable_client(), &config);
        let key = limited_key("key_open", Some(1), Some(10), Some(0.01));
        for _ in 0..3 {
            let reservation = limiter
                .acquire(&key, estimate(5, 0.001), now_secs())
                .await
                .expect("admitted unchecked");
            // Settling against the unreachable table logs and returns.
            limiter.settle(reservation, billed(5, 0.001)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn usage_admitted_unchecked_is_still_recorded() {
    within(60, async {
        let tables = Tables::create("limits-open-settle").await;
        let config = DynamoConfig {
            limits_failure_policy: FailurePolicy::Open,
            ..tables.config.clone()
        };
        let key = limited_key("key_recovered", None, None, Some(1.0));
        let unreachable = DynamoLimiter::new(unreachable_client(), &config);
        let reservation = unreachable
            .acquire(&key, estimate(0, 0.5), now_secs())
            .await
            .expect("admitted unchecked");
        // The table is back by the time the response ends: the spend is recorded, nothing is
        // released that was never reserved.
        let limiter = DynamoLimiter::new(tables.client.clone(), &config);
        limiter.settle(reservation, billed(0, 0.75)).await;
        let spent = limiter
            .spent_usd("key_recovered", now_secs())
            .await
            .unwrap();
        assert!((spent - 0.75).abs() < 1e-9, "{spent}");
        // 0.75 of 1.0 is committed: a request estimated at more than the 0.25 left is refused, one
        // at 0.25 gets in.
        assert_eq!(
            refused_limit(limiter.acquire(&key, estimate(0, 0.3), now_secs()).await),
            BUDGET
        );
        assert!(
            limiter
                .acquire(&key, estimate(0, 0.25), now_secs())
                .await
                .is_ok()
        );
    })
    .await;
}

/// The limits-table items of a key other than its usage rows.
async fn counter_items(tables: &Tables, key_id: &str) -> Vec<HashMap<String, AttributeValue>> {
    let output = tables
        .client
        .query()
        .table_name(&tables.config.limits_table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(format!("key#{key_id}")))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    output
        .items()
        .iter()
        .filter(|item| !item["sk"].as_s().unwrap().starts_with("usage#"))
        .cloned()
        .collect()
}

#[tokio::test]
async fn one_item_per_key_holds_every_counter_and_new_windows_start_anew() {
    within(60, async {
        let tables = Tables::create("limits-one-item").await;
        let limiter = tables.limiter();
        let key = limited_key("key_one_item", Some(2), Some(1_000), Some(1.0));
        let now = gateway::clock::month_start_secs(202_611) + 600;
        let a = limiter
            .acquire(&key, estimate(100, 0.4), now)
            .await
            .expect("a");
        limiter
            .acquire(&key, estimate(100, 0.4), now)
            .await
            .expect("b");
        assert_eq!(
            refused_limit(limiter.acquire(&key, estimate(100, 0.1), now).await),
            RPM
        );
        limiter.settle(a, billed(100, 0.3)).await;
        // The next minute counts from zero; the month still holds 0.3 spent + 0.4 reserved.
        limiter
            .acquire(&key, estimate(100, 0.3), now + 60)
            .await
            .expect("next minute");
        assert_eq!(
            refused_limit(limiter.acquire(&key, estimate(100, 0.1), now + 60).await),
            BUDGET
        );
        // The next month starts with nothing committed.
        let next_month = gateway::clock::month_start_secs(202_612) + 5;
        limiter
            .acquire(&key, estimate(100, 0.9), next_month)
            .await
            .expect("next month");
        assert_eq!(
            limiter.spent_usd("key_one_item", next_month).await.unwrap(),
            0.0
        );
        let items = counter_items(&tables, "key_one_item").await;
        assert_eq!(items.len(), 1, "every counter in one item: {items:?}");
        assert_eq!(items[0]["sk"].as_s().unwrap(), "limits");
        assert_eq!(items[0]["budget_month"].as_n().unwrap(), "202612");
    })
    .await;
}

#[tokio::test]
async fn a_settlement_after_its_minute_ended_leaves_the_new_window_alone() {
    within(60, async {
        let tables = Tables::create("limits-late-settle").await;
        let limiter = tables.limiter();
        let key = limited_key("key_late", None, Some(100), None);
        let now = start_of_this_minute();
        let first = limiter
            .acquire(&key, estimate(80, 0.0), now)
            .await
            .expect("first");
        limiter
            .acquire(&key, estimate(90, 0.0), now + 60)
            .await
            .expect("next minute");
        // The first request used 10 of its 80 tokens, but its minute has ended: the new window
        // keeps its 90, and 20 more do not fit.
        limiter.settle(first, billed(10, 0.0)).await;
        assert_eq!(
            refused_limit(limiter.acquire(&key, estimate(20, 0.0), now + 60).await),
            TPM
        );
        assert!(
            limiter
                .acquire(&key, estimate(10, 0.0), now + 60)
                .await
                .is_ok()
        );
    })
    .await;
}

#[tokio::test]
async fn an_upgrade_carries_the_months_spend_from_the_earlier_month_item() {
    within(60, async {
        let tables = Tables::create("limits-legacy").await;
        let now = now_secs();
        let month = gateway::clock::month_of(now);
        tables
            .client
            .put_item()
            .table_name(&tables.config.limits_table)
            .item("pk", AttributeValue::S("key#key_legacy".into()))
            .item("sk", AttributeValue::S(format!("month#{month}")))
            .item("committed_nano_usd", AttributeValue::N("900000000".into()))
            .item("spent_nano_usd", AttributeValue::N("900000000".into()))
            .send()
            .await
            .unwrap();
        let limiter = tables.limiter();
        let spent = limiter.spent_usd("key_legacy", now).await.unwrap();
        assert!((spent - 0.9).abs() < 1e-9, "{spent}");
        let key = limited_key("key_legacy", None, None, Some(1.0));
        assert_eq!(
            refused_limit(limiter.acquire(&key, estimate(0, 0.2), now).await),
            BUDGET
        );
        let reservation = limiter
            .acquire(&key, estimate(0, 0.05), now)
            .await
            .expect("fits");
        limiter.settle(reservation, billed(0, 0.05)).await;
        let spent = limiter.spent_usd("key_legacy", now).await.unwrap();
        assert!((spent - 0.95).abs() < 1e-9, "{spent}");
    })
    .await;
}

// ------------------------------------------------------------------------------------ usage

/// Counts the writes a client sends to one table: every attempt of PutItem, UpdateItem,
/// DeleteItem, BatchWriteItem and TransactWriteItems naming it, read from the HTTP request as
/// it leaves, so nothing the limiter does escapes the count.
#[derive(Debug)]
struct WriteCounter {
    table: String,
    writes: Arc<std::sync::Mutex<Vec<String>>>,
}

impl aws_sdk_dynamodb::config::Intercept for WriteCounter {
    fn name(&self) -> &'static str {
        "WriteCounter"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_dynamodb::config::RuntimeComponents,
        _: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let request = context.request();
        let operation = request
            .headers()
            .get("x-amz-target")
            .and_then(|target| target.strip_prefix("DynamoDB_20120810."))
            .unwrap_or_default()
            .to_owned();
        let body = request.body().bytes().unwrap_or_default();
        let names_table = String::from_utf8_lossy(body).contains(&format!("\"{}\"", self.table));
        let writes = [
            "PutItem",
            "UpdateItem",
            "DeleteItem",
            "BatchWriteItem",
            "TransactWriteItems",
        ];
        if names_table && writes.contains(&operation.as_str()) {
            self.writes.lock().unwrap().push(operation);
        }
        Ok(())
    }
}

/// An item's size as DynamoDB counts it for write units: attribute names and values in bytes,
/// numbers at one byte per two digits plus one.
fn item_bytes(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::S(text) => text.len(),
                    AttributeValue::N(number) => number.len().div_ceil(2) + 1,
                    other => panic!("unexpected attribute {other:?}"),
                }
        })
        .sum()
}

fn model_usage(model: &str, requests: u64, input: u64, output: u64, nano: i64) -> ModelUsage {
    ModelUsage {
        model: model.to_owned(),
        requests,
        input_tokens: input,
        output_tokens: output,
        nano_usd: nano,
    }
}

fn billed_to(models: &[ModelUsage]) -> Billed {
    Billed {
        tokens: models
            .iter()
            .map(|m| m.input_tokens + m.output_tokens)
            .sum(),
        models: models.to_vec(),
    }
}

/// Seconds into `day` (days since 1970-01-01).
fn during(day: u32, secs: u64) -> u64 {
    u64::from(day) * 86_400 + secs
}

#[tokio::test]
async fn a_request_writes_its_limits_item_twice_and_the_item_stays_under_one_write_unit() {
    within(60, async {
        let tables = Tables::create("usage-two-writes").await;
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let counted = client_for(&tables.moto_endpoint)
            .config()
            .to_builder()
            .interceptor(WriteCounter {
                table: tables.config.limits_table.clone(),
                writes: Arc::clone(&writes),
            })
            .build();
        let limiter = DynamoLimiter::new(Client::from_conf(counted), &tables.config);
        // RPM, TPM and a budget: every counter the admission and the settlement touch.
        let key = limited_key("key_two_writes", Some(100), Some(100_000), Some(50.0));
        let now = start_of_this_minute();
        let models = [
            "gpt-4o-mini",
            "claude-3-5-haiku",
            "llama-3.1-8b-instant",
            "gemini-2.0-flash",
        ];
        // The key's first request starts its minute, month and usage day.
        let first = limiter
            .acquire(&key, estimate(100, 0.01), now)
            .await
            .expect("first");
        limiter
            .settle(first, billed_to(&[model_usage(models[0], 1, 50, 20, 9)]))
            .await;
        for (index, model) in models.iter().enumerate() {
            writes.lock().unwrap().clear();
            let reservation = limiter
                .acquire(&key, estimate(100, 0.01), now)
                .await
                .expect("admitted");
            // A fallback after a failed validation bills two models in one request.
            let billed = if index == 0 {
                vec![
                    model_usage(models[3], 0, 40, 10, 7),
                    model_usage(model, 1, 60, 30, 11),
                ]
            } else {
                vec![model_usage(model, 1, 60, 30, 11)]
            };
            limiter.settle(reservation, billed_to(&billed)).await;
            assert_eq!(
                *writes.lock().unwrap(),
                ["UpdateItem", "UpdateItem"],
                "admission and settlement, usage included, for {model}"
            );
        }
        let items = counter_items(&tables, "key_two_writes").await;
        let [item] = items.as_slice() else {
            panic!("{items:?}")
        };
        let bytes = item_bytes(item);
        assert!(
            bytes < 1_024,
            "{bytes} bytes with {} models' usage",
            models.len()
        );
    })
    .await;
}

/// The report's rows of a key as (date, model) → (requests, input, output, nano-dollars).
async fn report_of(
    store: &DynamoUsageStore,
    key_id: Option<&str>,
    from: u32,
    to: u32,
) -> HashMap<(String, String), (u64, u64, u64, i64)> {
    let rows = store
        .usage(&UsageQuery {
            key_id: key_id.map(str::to_owned),
            from,
            to,
        })
        .await
        .expect("report");
    rows.into_iter()
        .filter(|row| key_id.is_none_or(|key| row.key_id == key))
        .map(|row| {
            (
                (row.date, row.model),
                (
                    row.requests,
                    row.input_tokens,
                    row.output_tokens,
                    row.cost_nano_usd,
                ),
            )
        })
        .collect()
}

/// What settling `billed` on `day` adds to the expected report.
fn expect(
    expected: &mut HashMap<(String, String), (u64, u64, u64, i64)>,
    day: u32,
    billed: &[ModelUsage],
) {
    for usage in billed {
        let row = expected
            .entry((gateway::clock::format_day(day), usage.model.clone()))
            .or_default();
        row.0 += usage.requests;
        row.1 += usage.input_tokens;
        row.2 += usage.output_tokens;
        row.3 += usage.nano_usd;
    }
}

#[tokio::test]
async fn the_usage_report_after_a_day_roll_equals_the_per_request_sum() {
    within(60, async {
        let tables = Tables::create("usage-day-roll").await;
        let limiter = tables.limiter();
        let store = DynamoUsageStore::new(tables.client.clone(), &tables.config);
        let key = limited_key("key_roll", None, Some(100_000), Some(100.0));
        let day = gateway::clock::parse_day("2026-11-10").unwrap();
        let mut expected = HashMap::new();
        // A row an earlier version wrote (every request added to it): kept, and added to.
        let legacy = model_usage("a", 2, 20, 4, 1_000);
        tables
            .client
            .put_item()
            .table_name(&tables.config.limits_table)
            .item("pk", AttributeValue::S("key#key_roll".into()))
            .item(
                "sk",
                AttributeValue::S(format!("usage#{}#a", gateway::clock::format_day(day))),
            )
            .item("key_id", AttributeValue::S("key_roll".into()))
            .item("model", AttributeValue::S("a".into()))
            .item("requests", AttributeValue::N("2".into()))
            .item("input_tokens", AttributeValue::N("20".into()))
            .item("output_tokens", AttributeValue::N("4".into()))
            .item("nano_usd", AttributeValue::N("1000".into()))
            .send()
            .await
            .unwrap();
        let legacy_nano = legacy.nano_usd;
        expect(&mut expected, day, &[legacy]);
        let requests: [(u32, Vec<ModelUsage>); 6] = [
            (day, vec![model_usage("a", 1, 10, 5, 300)]),
            (day, vec![model_usage("b", 1, 7, 3, 170)]),
            (
                day,
                vec![
                    model_usage("b", 0, 9, 2, 110),
                    model_usage("a", 1, 12, 6, 420),
                ],
            ),
            (day + 1, vec![model_usage("b", 1, 30, 10, 900)]),
            (day + 1, vec![model_usage("c", 1, 3, 1, 50)]),
            (day + 1, vec![model_usage("b", 1, 31, 11, 930)]),
        ];
        // A request admitted on the first day that ends after the second day has started.
        let straddler = limiter
            .acquire(&key, estimate(100, 0.01), during(day, 86_399))
            .await
            .expect("straddler");
        for (on, billed) in &requests {
            let reservation = limiter
                .acquire(&key, estimate(100, 0.01), during(*on, 3_600))
                .await
                .expect("admitted");
            limiter.settle(reservation, billed_to(billed)).await;
            expect(&mut expected, *on, billed);
        }
        let late = [model_usage("a", 1, 8, 8, 640), model_usage("d", 0, 1, 1, 5)];
        limiter.settle(straddler, billed_to(&late)).await;
        expect(&mut expected, day, &late);

        // The first day is on its rows now; the second still on the limits item.
        let items = counter_items(&tables, "key_roll").await;
        assert_eq!(
            *items[0]["usage_day"].as_n().unwrap(),
            (day + 1).to_string(),
            "{items:?}"
        );
        assert_eq!(
            report_of(&store, Some("key_roll"), day, day + 1).await,
            expected
        );
        assert_eq!(report_of(&store, None, day, day + 1).await, expected);
        // Each day alone.
        let first_day: HashMap<_, _> = expected
            .iter()
            .filter(|((date, _), _)| *date == gateway::clock::format_day(day))
            .map(|(slot, row)| (slot.clone(), *row))
            .collect();
        assert_eq!(
            report_of(&store, Some("key_roll"), day, day).await,
            first_day
        );
        let spent = limiter
            .spent_usd("key_roll", during(day + 1, 7_200))
            .await
            .unwrap();
        // The month's spend is every settlement's (the earlier version's row is history only).
        let settled: i64 = expected.values().map(|row| row.3).sum::<i64>() - legacy_nano;
        assert!((spent - settled as f64 / 1e9).abs() < 1e-12, "{spent}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_settlements_across_a_day_boundary_lose_and_double_nothing() {
    within(120, async {
        let tables = Tables::create("usage-day-race").await;
        let limiters = [
            Arc::new(tables.limiter()),
            Arc::new(tables.other_container_limiter()),
        ];
        let store = DynamoUsageStore::new(tables.client.clone(), &tables.config);
        let key = limited_key("key_race", None, None, Some(1_000.0));
        let day = gateway::clock::parse_day("2026-11-20").unwrap();
        let mut expected = HashMap::new();
        let mut request = |index: u64, on: u32| {
            let limiter = Arc::clone(&limiters[(index % 2) as usize]);
            let billed = vec![model_usage(
                ["a", "b", "c", "d"][(index % 4) as usize],
                1,
                index,
                2 * index,
                i64::try_from(1_000 + index).unwrap(),
            )];
            expect(&mut expected, on, &billed);
            let key = key.clone();
            async move {
                let reservation = limiter
                    .acquire(&key, estimate(10, 0.001), during(on, 60 + index))
                    .await
                    .expect("admitted");
                limiter.settle(reservation, billed_to(&billed)).await;
            }
        };
        // The first day's usage is on the limits item when the second day begins.
        for index in 0..8 {
            request(index, day).await;
        }
        // Then the two days' settlements race: the second day's first ones start it (copying
        // the first day) while the first day's keep arriving, folded in or added to its rows.
        let mut tasks = Vec::new();
        for index in 8..56 {
            tasks.push(tokio::spawn(request(
                index,
                day + u32::from(index % 3 == 0),
            )));
        }
        for task in tasks {
            task.await.expect("settled");
        }
        // First-day requests that straddled midnight, settled among the second day's.
        let tasks: Vec<_> = (56..72)
            .map(|index| tokio::spawn(request(index, day + u32::from(index % 2 == 0))))
            .collect();
        for task in tasks {
            task.await.expect("settled");
        }
        assert_eq!(
            report_of(&store, Some("key_race"), day, day + 1).await,
            expected
        );
        assert_eq!(report_of(&store, None, day, day + 1).await, expected);
    })
    .await;
}

/// Holds back every copy of a usage day a client sends (an UpdateItem setting `folded_version`),
/// as a container paused between reading a day's counters and copying them would.
#[derive(Debug)]
struct SlowCopies(std::time::Duration);

impl aws_sdk_dynamodb::config::Intercept for SlowCopies {
    fn name(&self) -> &'static str {
        "SlowCopies"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_dynamodb::config::RuntimeComponents,
        _: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let body = context.request().body().bytes().unwrap_or_default();
        if String::from_utf8_lossy(body).contains("folded_version") {
            // Blocks the thread of the process being slow, which runs nothing else.
            std::thread::sleep(self.0);
        }
        Ok(())
    }
}

/// Settles one request of `key` admitted on `day`, billed `billed`.
async fn settle_on(limiter: &DynamoLimiter, key: &KeyRecord, day: u32, billed: &[ModelUsage]) {
    let reservation = limiter
        .acquire(key, estimate(10, 0.001), during(day, 600))
        .await
        .expect("admitted");
    limiter.settle(reservation, billed_to(billed)).await;
}

#[tokio::test]
async fn a_slow_copy_of_a_usage_day_never_replaces_a_newer_one() {
    within(60, async {
        let tables = Tables::create("usage-slow-copy").await;
        let fast = tables.limiter();
        let store = DynamoUsageStore::new(tables.client.clone(), &tables.config);
        let key = limited_key("key_slow", None, None, None);
        let day = gateway::clock::parse_day("2026-11-15").unwrap();
        let usage = [model_usage("a", 1, 10, 5, 100)];
        let mut expected = HashMap::new();
        for _ in 0..2 {
            settle_on(&fast, &key, day, &usage).await;
            expect(&mut expected, day, &usage);
        }
        // Another process (a thread with a runtime of its own) starts the next day: it reads the
        // first day at two settlements, and its copy is held back.
        let next_day = {
            let (endpoint, config) = (tables.moto_endpoint.clone(), tables.config.clone());
            let (key, usage) = (key.clone(), usage.clone());
            std::thread::spawn(move || {
                let client = client_for(&endpoint)
                    .config()
                    .to_builder()
                    .interceptor(SlowCopies(std::time::Duration::from_millis(1_500)))
                    .build();
                let slow = DynamoLimiter::new(Client::from_conf(client), &config);
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime")
                    .block_on(settle_on(&slow, &key, day + 1, &usage));
            })
        };
        expect(&mut expected, day + 1, &usage);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // Meanwhile a third settlement of the first day, and another container starting the
        // next day with a copy of all three.
        settle_on(&fast, &key, day, &usage).await;
        expect(&mut expected, day, &usage);
        settle_on(&fast, &key, day + 1, &usage).await;
        expect(&mut expected, day + 1, &usage);
        tokio::task::spawn_blocking(move || next_day.join())
            .await
            .expect("joined")
            .expect("settled");
        assert_eq!(
            report_of(&store, Some("key_slow"), day, day + 1).await,
            expected
        );
    })
    .await;
}

/// One request billed to model `m`, its tokens all input.
fn billed(tokens: u64, cost_usd: f64) -> gateway::usage::Billed {
    gateway::usage::Billed::one("m", tokens, 0, gateway::limits::to_nano_usd(cost_usd))
}
