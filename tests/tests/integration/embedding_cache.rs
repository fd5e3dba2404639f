//! The embedding cache behind `/v1/embeddings` and `embed_texts`, over real sockets with the mock
//! provider counting upstream calls; and `CacheStore::get_many` on DynamoDB against moto.

use base64::Engine;
use bytes::Bytes;
use gateway::cache::CacheStore;
use gateway::cache::dynamo::DynamoCacheStore;
use gateway::keys::NewKey;
use gateway::pipeline::embeddings::embed_texts;
use gateway::storage::dynamo::{DynamoConfig, FailurePolicy, create_tables};
use serde_json::{Value, json};

use crate::common::moto::Moto;
use crate::common::{MockUpstream, TestGateway, test_config, within};

/// `gpt-embed` is served by the mock provider process, which counts what reaches it.
const MODEL: &str = "gpt-embed";

async fn gateway() -> (MockUpstream, TestGateway, String) {
    let upstream = MockUpstream::start(&[]);
    let gateway = TestGateway::start(&test_config(&upstream.url)).await;
    let key = gateway.plain_key().await;
    (upstream, gateway, key)
}

async fn tenant_key(gateway: &TestGateway, tenant: &str) -> String {
    gateway
        .key(NewKey {
            name: tenant.into(),
            tenant: Some(tenant.into()),
            ..NewKey::default()
        })
        .await
        .0
}

fn vectors(body: &Value) -> Vec<Vec<f32>> {
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|item| serde_json::from_value(item["embedding"].clone()).expect("floats"))
        .collect()
}

fn indices(body: &Value) -> Vec<u64> {
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|item| item["index"].as_u64().expect("index"))
        .collect()
}

#[tokio::test]
async fn the_same_input_twice_is_answered_without_an_upstream_call() {
    within(30, async {
        let (upstream, gw, key) = gateway().await;
        let request = json!({"model": MODEL, "input": "the quick brown fox"});
        let first = gw.post("/v1/embeddings", &key, &request).await;
        assert_eq!(
            first.status,
            200,
            "{}",
            String::from_utf8_lossy(&first.body)
        );
        assert_eq!(first.header("x-gateway-cache"), Some("MISS"));
        assert_eq!(first.header("x-gateway-cache-hits"), Some("0/1"));
        let calls = upstream.requests().await;

        let second = gw.post("/v1/embeddings", &key, &request).await;
        assert_eq!(second.status, 200);
        assert_eq!(second.header("x-gateway-cache"), Some("HIT"));
        assert_eq!(second.header("x-gateway-cache-hits"), Some("1/1"));
        assert_eq!(upstream.requests().await, calls, "no upstream call");
        let (first, second) = (first.json(), second.json());
        assert_eq!(vectors(&second), vectors(&first));
        assert_eq!(second["model"], first["model"]);
        // Usage counts the cached input by its stored token count; nothing is billed for it.
        assert_eq!(second["usage"]["prompt_tokens"], 4);
        assert_eq!(
            second["usage"]["prompt_tokens"],
            first["usage"]["prompt_tokens"]
        );
    })
    .await;
}

#[tokio::test]
async fn only_uncached_inputs_go_upstream_and_the_order_is_kept() {
    within(30, async {
        let (upstream, gw, key) = gateway().await;
        let warm = gw
            .post(
                "/v1/embeddings",
                &key,
                &json!({"model": MODEL, "input": ["alpha beta", "gamma"]}),
            )
            .await
            .json();
        let calls = upstream.requests().await;

        let mixed = gw
            .post(
                "/v1/embeddings",
                &key,
                &json!({"model": MODEL, "input": ["gamma", "a new text here", "alpha beta"]}),
            )
            .await;
        assert_eq!(mixed.status, 200);
        assert_eq!(mixed.header("x-gateway-cache"), Some("PARTIAL"));
        assert_eq!(mixed.header("x-gateway-cache-hits"), Some("2/3"));
        assert_eq!(upstream.requests().await, calls + 1);
        let sent = upstream.stats().await["last_request"]["input"].clone();
        assert_eq!(
            sent,
            json!(["a new text here"]),
            "only the miss goes upstream"
        );
        let mixed = mixed.json();
        assert_eq!(indices(&mixed), vec![0, 1, 2]);
        let (warm, got) = (vectors(&warm), vectors(&mixed));
        assert_eq!(got[0], warm[1]);
        assert_eq!(got[2], warm[0]);
        let fresh = gw
            .post_with(
                "/v1/embeddings",
                &key,
                &json!({"model": MODEL, "input": "a new text here"}),
                &[("x-gateway-cache", "bypass")],
            )
            .await
            .json();
        assert_eq!(got[1], vectors(&fresh)[0]);
        // Every input's tokens: 1 (gamma) + 4 + 2 (alpha beta), words as the mock counts them.
        assert_eq!(mixed["usage"]["prompt_tokens"], 7);
    })
    .await;
}

#[tokio::test]
async fn embed_texts_reports_hits_calls_and_spend_of_the_misses_only() {
    within(30, async {
        // The built-in mock (priced) serves this one.
        let (_upstream, gw, _) = gateway().await;
        let (_, record) = gw
            .key(NewKey {
                name: "ingest".into(),
                ..NewKey::default()
            })
            .await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        let texts: Vec<String> = vec!["one two".into(), "three".into(), "one two".into()];
        let first = embed_texts(
            &gw.gateway,
            &record,
            "mock-embed",
            &texts,
            Some(8),
            deadline,
        )
        .await
        .expect("embedded");
        assert_eq!(first.cache_hits, 0);
        assert_eq!(first.upstream_calls, 1);
        assert_eq!(first.vectors.len(), 3);
        assert_eq!(first.vectors[0], first.vectors[2], "a repeated text");
        assert!(first.vectors.iter().all(|v| v.len() == 8));
        // "one two" once upstream (2 tokens) and "three" (1), but usage counts every input.
        assert_eq!(first.prompt_tokens, 5);
        assert_eq!(first.model, "mock-embed");
        assert_eq!(first.provider, "mock");
        let spent_after_first = gw.spent(&record.id).await;

        let more: Vec<String> = vec!["three".into(), "four five six".into()];
        let second = embed_texts(&gw.gateway, &record, "mock-embed", &more, Some(8), deadline)
            .await
            .expect("embedded");
        assert_eq!(second.cache_hits, 1);
        assert_eq!(second.upstream_calls, 1);
        assert_eq!(second.vectors[0], first.vectors[1]);
        assert_eq!(second.prompt_tokens, 4);
        // 3 upstream tokens at $1000/M; the cached "three" costs nothing.
        let spent = gw.spent(&record.id).await - spent_after_first;
        assert!(
            (second.cost_usd - 0.003).abs() < 1e-12,
            "{}",
            second.cost_usd
        );
        assert!((spent - 0.003).abs() < 1e-12, "spend {spent}");
    })
    .await;
}

#[tokio::test]
async fn another_tenant_embedding_the_same_text_misses() {
    within(30, async {
        let (upstream, gw, _) = gateway().await;
        let (first, other) = (
            tenant_key(&gw, "tenant-a").await,
            tenant_key(&gw, "tenant-b").await,
        );
        let request = json!({"model": MODEL, "input": "a private sentence"});
        let reply = gw.post("/v1/embeddings", &first, &request).await;
        assert_eq!(reply.header("x-gateway-cache"), Some("MISS"));
        let calls = upstream.requests().await;
        let reply = gw.post("/v1/embeddings", &other, &request).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-gateway-cache"), Some("MISS"));
        assert_eq!(upstream.requests().await, calls + 1);
        let reply = gw.post("/v1/embeddings", &first, &request).await;
        assert_eq!(reply.header("x-gateway-cache"), Some("HIT"));
    })
    .await;
}

#[tokio::test]
async fn other_dimensions_are_cached_apart() {
    within(30, async {
        let (upstream, gw, key) = gateway().await;
        let with =
            |dimensions: u32| json!({"model": MODEL, "input": "sized", "dimensions": dimensions});
        let reply = gw.post("/v1/embeddings", &key, &with(8)).await;
        assert_eq!(reply.header("x-gateway-cache"), Some("MISS"));
        let calls = upstream.requests().await;
        let reply = gw.post("/v1/embeddings", &key, &with(16)).await;
        assert_eq!(reply.header("x-gateway-cache"), Some("MISS"));
        assert_eq!(upstream.requests().await, calls + 1);
        assert_eq!(vectors(&reply.json())[0].len(), 16);
        let reply = gw.post("/v1/embeddings", &key, &with(8)).await;
        assert_eq!(reply.header("x-gateway-cache"), Some("HIT"));
        assert_eq!(vectors(&reply.json())[0].len(), 8);
    })
    .await;
}

#[tokio::test]
async fn base64_from_a_cached_entry_decodes_to_the_same_floats() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let floats = gw
            .post(
                "/v1/embeddings",
                &key,
                &json!({"model": MODEL, "input": ["encode me", "and me"], "dimensions": 12}),
            )
            .await
            .json();
        let encoded = gw
            .post(
                "/v1/embeddings",
                &key,
                &json!({"model": MODEL, "input": ["encode me", "and me"], "dimensions": 12, "encoding_format": "base64"}),
            )
            .await;
        assert_eq!(encoded.header("x-gateway-cache"), Some("HIT"));
        let encoded = encoded.json();
        let decoded: Vec<Vec<f32>> = encoded["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(item["embedding"].as_str().expect("base64 string"))
                    .unwrap();
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            })
            .collect();
        assert_eq!(decoded, vectors(&floats));
    })
    .await;
}

#[tokio::test]
async fn no_cache_skips_the_read_but_still_stores() {
    within(30, async {
        let (upstream, gw, key) = gateway().await;
        let request = json!({"model": MODEL, "input": "fresh please"});
        gw.post("/v1/embeddings", &key, &request).await;
        let calls = upstream.requests().await;
        let reply = gw
            .post_with(
                "/v1/embeddings",
                &key,
                &request,
                &[("cache-control", "no-cache")],
            )
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-gateway-cache"), Some("BYPASS"));
        assert_eq!(upstream.requests().await, calls + 1);

        let new_text = json!({"model": MODEL, "input": "stored on bypass"});
        gw.post_with(
            "/v1/embeddings",
            &key,
            &new_text,
            &[("x-gateway-cache", "bypass")],
        )
        .await;
        let reply = gw.post("/v1/embeddings", &key, &new_text).await;
        assert_eq!(reply.header("x-gateway-cache"), Some("HIT"));
    })
    .await;
}

#[tokio::test]
async fn dynamo_get_many_reads_every_key_in_order_across_chunks() {
    within(60, async {
        let moto = Moto::shared();
        let client = moto.client();
        let config = DynamoConfig {
            keys_table: "embed-many-keys".into(),
            limits_table: "embed-many-limits".into(),
            cache_table: "embed-many-cache".into(),
            limits_failure_policy: FailurePolicy::Closed,
        };
        create_tables(&client, &config).await.expect("tables");
        let store = DynamoCacheStore::new(client, &config);
        let key_of = |i: u32| {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key
        };
        // 230 stored keys: three BatchGetItem calls of at most 100.
        for i in 0..230u32 {
            store
                .put(&key_of(i), Bytes::from(format!("value {i}")), 60)
                .await
                .expect("put");
        }
        store
            .put(&key_of(9_999), Bytes::from_static(b"expired"), 0)
            .await
            .expect("put");
        let mut wanted: Vec<[u8; 32]> = (0..230u32).rev().map(key_of).collect();
        wanted.insert(5, key_of(5_000)); // never stored
        wanted.insert(7, key_of(9_999)); // expired
        wanted.push(key_of(3)); // asked twice
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let found = store.get_many(&wanted, deadline).await.expect("get_many");
        assert_eq!(found.len(), wanted.len());
        for (key, value) in wanted.iter().zip(&found) {
            let i = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
            if i < 230 {
                assert_eq!(value.as_deref(), Some(format!("value {i}").as_bytes()));
            } else {
                assert_eq!(value, &None, "key {i}");
            }
        }
    })
    .await;
}
