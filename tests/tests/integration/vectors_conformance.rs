//! One vector-store conformance suite, run against every backend behind `VectorStore`: the
//! embedded index, S3 Vectors, Pinecone and Weaviate (the last three against stand-ins that follow
//! the vendors' API references: see `vectors_aws`, `vectors_pinecone`, `vectors_weaviate`).
//! Backend-specific behaviour (batching limits, how refusals map) stays in those modules.

use std::sync::Arc;

use gateway::config::Config;
use gateway::error::StoreError;
use gateway::ingest::backends::IngestBackends;
use gateway::storage::embedded::EmbeddedStore;
use gateway::vectors::embedded::EmbeddedVectors;
use gateway::vectors::pinecone::PineconeVectorStore;
use gateway::vectors::weaviate::WeaviateVectorStore;
use gateway::vectors::{CollectionStores, MetadataFilter, Namespace, VectorRecord, VectorStore};
use serde_json::{Value, json};

use crate::common::local::TempDir;
use crate::common::{MockUpstream, TestGateway, test_config, within};
use crate::ingest_api::{
    MODEL, corpus, create, delete as delete_path, documents_of, ingest, query as query_text,
    query_hr_only, tenant_key,
};

fn ns(tenant: &str, collection: &str) -> Namespace {
    Namespace {
        tenant: tenant.into(),
        collection: collection.into(),
    }
}

fn record(key: &str, vector: [f32; 3], text: &str, metadata: Value) -> VectorRecord {
    VectorRecord {
        key: key.into(),
        vector: vector.to_vec(),
        text: text.into(),
        metadata: metadata.as_object().unwrap().clone(),
    }
}

/// Two documents' chunks (`hr.md#0`, `hr.md#1`), one of `it.md` and one of `hr.md.old`, whose
/// key starts like `hr.md`'s.
fn handbook() -> Vec<VectorRecord> {
    vec![
        record(
            "hr.md#0",
            [1.0, 0.0, 0.0],
            "holidays",
            json!({"lang": "en", "tags": ["hr", "policy"], "year": 2023, "draft": false}),
        ),
        record(
            "hr.md#1",
            [0.9, 0.1, 0.0],
            "sick leave",
            json!({"lang": "fr", "tags": ["it"], "year": 2024}),
        ),
        record(
            "it.md#0",
            [0.0, 1.0, 0.0],
            "vpn",
            json!({"lang": "en", "year": 2025, "draft": true}),
        ),
        record(
            "hr.md.old#0",
            [0.0, 0.0, 1.0],
            "old holidays",
            json!({"lang": "de", "tags": ["it", "policy"]}),
        ),
    ]
}

async fn keys(
    store: &dyn VectorStore,
    namespace: &Namespace,
    filter: Option<Value>,
) -> Vec<String> {
    let filter = filter.map(|f| MetadataFilter::parse(&f).unwrap());
    let hits = store
        .query(namespace, &[1.0, 1.0, 1.0], 10, filter.as_ref())
        .await
        .unwrap();
    let mut keys: Vec<String> = hits.into_iter().map(|hit| hit.key).collect();
    keys.sort();
    keys
}

fn is_client_error(result: Result<impl std::fmt::Debug, StoreError>, needle: &str) {
    match result {
        Err(StoreError::Invalid(message)) => assert!(message.contains(needle), "{message}"),
        other => panic!("expected a client error naming `{needle}`, got {other:?}"),
    }
}

/// What every backend must do; `store` holds 3-dimensional vectors and nothing yet.
async fn conformance(store: &dyn VectorStore) {
    let acme = ns("acme", "handbook");
    store.put(&acme, handbook()).await.unwrap();

    // The same key in another collection or tenant is another vector, which no query or delete
    // in this namespace touches (checked below).
    let (other_collection, other_tenant) = (ns("acme", "notes"), ns("globex", "handbook"));
    let stranger = |text: &str| {
        vec![record(
            "hr.md#0",
            [1.0, 0.0, 0.0],
            text,
            json!({"lang": "en"}),
        )]
    };
    store
        .put(&other_collection, stranger("notes"))
        .await
        .unwrap();
    store.put(&other_tenant, stranger("globex")).await.unwrap();

    // Ranked by cosine similarity (whatever the vectors' length), top_k honoured, text and
    // metadata as written.
    let hits = store.query(&acme, &[2.0, 0.0, 0.0], 2, None).await.unwrap();
    let ranked: Vec<&str> = hits.iter().map(|h| h.key.as_str()).collect();
    assert_eq!(ranked, ["hr.md#0", "hr.md#1"]);
    assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);
    assert!(hits[0].score > hits[1].score && hits[1].score > 0.9);
    assert_eq!(hits[0].text, "holidays");
    assert_eq!(
        Value::Object(hits[0].metadata.clone()),
        json!({"lang": "en", "tags": ["hr", "policy"], "year": 2023, "draft": false})
    );
    assert_eq!(
        store
            .query(&acme, &[0.0, 0.0, 1.0], 10, None)
            .await
            .unwrap()
            .len(),
        4
    );
    assert!(
        store
            .query(&acme, &[1.0, 0.0, 0.0], 0, None)
            .await
            .unwrap()
            .is_empty()
    );

    // Each filter operator, with the embedded index's semantics.
    let filtered = [
        (json!({"lang": "en"}), vec!["hr.md#0", "it.md#0"]),
        (json!({"year": 2024}), vec!["hr.md#1"]),
        (json!({"draft": true}), vec!["it.md#0"]),
        (
            json!({"tags": {"$eq": "it"}}),
            vec!["hr.md#1", "hr.md.old#0"],
        ),
        (
            json!({"lang": {"$ne": "en"}}),
            vec!["hr.md#1", "hr.md.old#0"],
        ),
        (json!({"tags": {"$ne": "it"}}), vec!["hr.md#0", "it.md#0"]),
        (json!({"year": {"$gt": 2023}}), vec!["hr.md#1", "it.md#0"]),
        (json!({"year": {"$gte": 2024}}), vec!["hr.md#1", "it.md#0"]),
        (json!({"year": {"$lt": 2024}}), vec!["hr.md#0"]),
        (json!({"year": {"$lte": 2024}}), vec!["hr.md#0", "hr.md#1"]),
        (
            json!({"lang": {"$in": ["fr", "de"]}}),
            vec!["hr.md#1", "hr.md.old#0"],
        ),
        (json!({"tags": {"$in": ["hr", "finance"]}}), vec!["hr.md#0"]),
        (json!({"lang": {"$nin": ["en", "fr"]}}), vec!["hr.md.old#0"]),
        (
            json!({"tags": {"$nin": ["it"]}}),
            vec!["hr.md#0", "it.md#0"],
        ),
        (
            json!({"draft": {"$exists": true}}),
            vec!["hr.md#0", "it.md#0"],
        ),
        (
            json!({"draft": {"$exists": false}}),
            vec!["hr.md#1", "hr.md.old#0"],
        ),
        (
            json!({"lang": "en", "year": {"$gte": 2024}}),
            vec!["it.md#0"],
        ),
        (
            json!({"$and": [{"tags": "policy"}, {"lang": {"$ne": "de"}}]}),
            vec!["hr.md#0"],
        ),
        (
            json!({"$or": [{"lang": "de"}, {"tags": {"$in": ["hr"]}}]}),
            vec!["hr.md#0", "hr.md.old#0"],
        ),
    ];
    for (filter, expected) in filtered {
        let mut expected: Vec<String> = expected.into_iter().map(String::from).collect();
        expected.sort();
        assert_eq!(
            keys(store, &acme, Some(filter.clone())).await,
            expected,
            "filter {filter}"
        );
    }

    let hits = store
        .query(&acme, &[1.0, 0.0, 0.0], 10, None)
        .await
        .unwrap();
    assert_eq!(hits.len(), 4);
    assert_eq!(hits[0].text, "holidays");
    let hits = store
        .query(&other_tenant, &[1.0, 0.0, 0.0], 10, None)
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].text, "globex");
    store
        .delete(&other_collection, &["hr.md#0".into()])
        .await
        .unwrap();
    assert!(keys(store, &other_collection, None).await.is_empty());
    assert_eq!(keys(store, &acme, None).await.len(), 4);

    // A re-upsert of a key replaces its vector, text and metadata.
    store
        .put(
            &acme,
            vec![record(
                "hr.md#1",
                [0.0, 0.5, 1.0],
                "rewritten",
                json!({"lang": "es"}),
            )],
        )
        .await
        .unwrap();
    let hits = store.query(&acme, &[0.0, 0.5, 1.0], 1, None).await.unwrap();
    assert_eq!(
        (hits[0].key.as_str(), hits[0].text.as_str()),
        ("hr.md#1", "rewritten")
    );
    assert_eq!(
        Value::Object(hits[0].metadata.clone()),
        json!({"lang": "es"})
    );
    assert!(
        keys(store, &acme, Some(json!({"lang": "fr"})))
            .await
            .is_empty()
    );
    assert_eq!(keys(store, &acme, None).await.len(), 4);

    // Deleting a document's chunks removes exactly those; unknown keys are no error.
    store
        .delete(
            &acme,
            &["hr.md#0".into(), "hr.md#1".into(), "never-stored".into()],
        )
        .await
        .unwrap();
    assert_eq!(keys(store, &acme, None).await, ["hr.md.old#0", "it.md#0"]);
    assert_eq!(keys(store, &other_tenant, None).await, ["hr.md#0"]);

    // A vector of the wrong dimension, and too many results, are the client's errors.
    let short = vec![record("new", [1.0, 0.0, 0.0], "x", json!({}))]
        .into_iter()
        .map(|mut r| {
            r.vector.pop();
            r
        })
        .collect();
    is_client_error(store.put(&acme, short).await, "3 dimensions");
    is_client_error(
        store.query(&acme, &[1.0, 0.0], 1, None).await,
        "3 dimensions",
    );
    is_client_error(store.query(&acme, &[1.0, 0.0, 0.0], 101, None).await, "100");
}

#[tokio::test]
async fn the_embedded_index_conforms() {
    within(30, async {
        let dir = TempDir::new("conformance");
        let store = EmbeddedVectors::new(EmbeddedStore::open(dir.path()).unwrap());
        conformance(&store).await;
    })
    .await;
}

#[tokio::test]
async fn pinecone_conforms() {
    within(30, async {
        let (host, _) = crate::vectors_pinecone::start().await;
        let store = PineconeVectorStore::new(
            host,
            crate::vectors_pinecone::API_KEY.into(),
            3,
            "collection handbook".into(),
        );
        conformance(&store).await;
    })
    .await;
}

#[tokio::test]
async fn weaviate_conforms() {
    within(30, async {
        let (url, _) = crate::vectors_weaviate::start().await;
        let store = WeaviateVectorStore::new(
            url,
            crate::vectors_weaviate::CLASS.into(),
            crate::vectors_weaviate::API_KEY.into(),
            3,
            "collection handbook".into(),
        );
        conformance(&store).await;
    })
    .await;
}

#[tokio::test]
async fn s3_vectors_conforms() {
    within(30, async {
        let store = crate::vectors_aws::stand_in_store().await;
        conformance(&store).await;
    })
    .await;
}

/// The end-to-end half of the suite for a vendor's store, through the router: a gateway whose
/// config adds `vendor_table` (a `[vectors.<vendor>.handbook]` table of 512 dimensions whose key
/// variable is `key_env`) ingests, queries with and without a filter, and deletes a document of
/// the `handbook` collection in that vendor's store (`stored` lists the chunk keys it holds), while
/// a collection the config does not name stays in the default store. Returns the gateway and the
/// tenant's key for the vendor's own checks.
pub(crate) async fn a_configured_collection_round_trips(
    vendor_table: &str,
    key_env: &'static str,
    api_key: &'static str,
    stored: impl Fn() -> Vec<String>,
) -> (TestGateway, String) {
    let upstream = MockUpstream::start(&[]);
    let config = format!("{}\n{vendor_table}", test_config(&upstream.url));
    let vectors_config = Config::from_toml(&config).unwrap().vectors;
    let gw = TestGateway::start_with(&config, std::future::pending(), |gateway, store, dir| {
        gateway.ingest = Some(IngestBackends::embedded(store, dir, |_| None).unwrap());
        let embedded = Arc::new(EmbeddedVectors::new(Arc::clone(store)));
        let env = |name: &str| (name == key_env).then(|| api_key.to_owned());
        gateway.vectors =
            Some(CollectionStores::configured(&vectors_config, embedded, env).unwrap());
    })
    .await;
    let key = tenant_key(&gw, "acme").await;
    create(&gw, &key, "handbook").await;
    ingest(&gw, &key, "handbook", corpus()).await;
    let keys = stored();
    assert!(keys.iter().any(|k| k.starts_with("it/vpn.md")), "{keys:?}");

    let reply = query_text(&gw, &key, "handbook", "how do I reset my VPN password").await;
    assert_eq!(documents_of(&reply)[0], "it/vpn.md", "{}", reply.json());
    let filtered = query_hr_only(&gw, &key, "handbook").await;
    assert_eq!(documents_of(&filtered), ["hr/holidays.txt"]);

    // Deleting a document deletes its recorded chunks from the vendor's store.
    let deleted = delete_path(&gw, "/v1/collections/handbook/documents/it/vpn.md", &key).await;
    assert_eq!(deleted.status, 200, "{}", deleted.json());
    let keys = stored();
    assert!(
        !keys.is_empty() && !keys.iter().any(|k| k.starts_with("it/vpn.md")),
        "{keys:?}"
    );

    // A collection not in the config stays in the default store.
    let before = stored().len();
    let reply = gw
        .post(
            "/v1/collections",
            &key,
            &json!({"name": "notes", "embedding_model": MODEL, "dimensions": 512}),
        )
        .await;
    assert_eq!(reply.status, 200);
    ingest(&gw, &key, "notes", corpus()).await;
    assert_eq!(stored().len(), before);
    (gw, key)
}
