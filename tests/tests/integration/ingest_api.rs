//! The collections API over the embedded backends (SQLite collections and vectors, the embedded
//! ingest queue), with embeddings from the mock provider process (word overlap, and a count of
//! the calls it received): ingest and query, re-ingest unchanged and changed documents, delete,
//! tenant isolation, the retrieval cache, and a queued ingest run by the worker.

use std::sync::Arc;
use std::time::Duration;

use gateway::ingest::backends::IngestBackends;
use gateway::keys::NewKey;
use gateway::vectors::embedded::EmbeddedVectors;
use serde_json::{Value, json};

use crate::common::{MockUpstream, Reply, TestGateway, test_config, within};

/// The embedding model served by the mock provider process (`gpt-embed` -> `embed-test`).
pub const MODEL: &str = "gpt-embed";

pub async fn collections_gateway(upstream: &MockUpstream) -> TestGateway {
    TestGateway::start_with(
        &test_config(&upstream.url),
        std::future::pending(),
        |gateway, store, dir| {
            gateway.ingest = Some(IngestBackends::embedded(store, dir, |_| None).unwrap());
            gateway.vectors = Some(Arc::new(EmbeddedVectors::new(Arc::clone(store))));
        },
    )
    .await
}

pub async fn tenant_key(gw: &TestGateway, tenant: &str) -> String {
    gw.key(NewKey {
        name: format!("{tenant}-key"),
        tenant: Some(tenant.to_owned()),
        ..NewKey::default()
    })
    .await
    .0
}

async fn get(gw: &TestGateway, path: &str, key: &str) -> Reply {
    gw.send(gw.http.get(format!("{}{path}", gw.url)).bearer_auth(key))
        .await
}

pub(crate) async fn delete(gw: &TestGateway, path: &str, key: &str) -> Reply {
    gw.send(gw.http.delete(format!("{}{path}", gw.url)).bearer_auth(key))
        .await
}

pub(crate) async fn create(gw: &TestGateway, key: &str, name: &str) -> Value {
    let reply = gw
        .post(
            "/v1/collections",
            key,
            &json!({"name": name, "embedding_model": MODEL, "dimensions": 512,
                    "chunking": {"max_tokens": 64, "overlap_tokens": 8}}),
        )
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

pub(crate) async fn ingest(
    gw: &TestGateway,
    key: &str,
    collection: &str,
    documents: Value,
) -> Value {
    let reply = gw
        .post(
            &format!("/v1/collections/{collection}/documents"),
            key,
            &json!({ "documents": documents }),
        )
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

pub(crate) async fn query(gw: &TestGateway, key: &str, collection: &str, text: &str) -> Reply {
    gw.post(
        &format!("/v1/collections/{collection}/query"),
        key,
        &json!({"query": text, "top_k": 4}),
    )
    .await
}

/// The HR-only query both the API test and the vector-store conformance suite ask: "reset VPN
/// password" within team "hr", which only the HR document may answer.
pub(crate) async fn query_hr_only(gw: &TestGateway, key: &str, collection: &str) -> Reply {
    gw.post(
        &format!("/v1/collections/{collection}/query"),
        key,
        &json!({"query": "reset VPN password", "top_k": 4, "filter": {"team": "hr"}}),
    )
    .await
}

fn statuses(report: &Value) -> Vec<(String, String)> {
    report["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                d["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub(crate) fn documents_of(reply: &Reply) -> Vec<String> {
    reply.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| hit["document_id"].as_str().unwrap().to_owned())
        .collect()
}

pub fn corpus() -> Value {
    json!([
        {"id": "it/vpn.md", "markdown": "# VPN\n\nTo reset your VPN password open the VPN portal and choose reset password. The VPN client reconnects after the password reset.", "metadata": {"team": "it"}},
        {"id": "hr/holidays.txt", "text": "Employees get twenty five holiday days per year. Unused holiday days carry over until March.", "metadata": {"team": "hr"}},
        {"id": "finance/expenses.txt", "text": "Submit expense reports with receipts within thirty days. Travel expenses need manager approval.", "metadata": {"team": "finance"}},
        {"id": "it/laptop.txt", "text": "A new laptop is ordered through the service desk. Laptop refresh happens every three years.", "metadata": {"team": "it"}}
    ])
}

#[tokio::test]
async fn an_ingested_corpus_answers_a_query_with_the_right_document_first() {
    within(60, async {
        let upstream = MockUpstream::start(&[]);
        let gw = collections_gateway(&upstream).await;
        let key = tenant_key(&gw, "acme").await;
        let created = create(&gw, &key, "handbook").await;
        assert_eq!(created["object"], "collection");
        assert_eq!(created["version"], 0);

        let report = ingest(&gw, &key, "handbook", corpus()).await;
        assert_eq!(report["object"], "collection.ingest");
        assert!(statuses(&report).iter().all(|(_, s)| s == "created"));
        assert_eq!(report["totals"]["created"], 4);
        assert!(report["collection_version"].as_u64().unwrap() >= 4);

        for (question, expected) in [
            ("how do I reset my VPN password", "it/vpn.md"),
            ("how many holiday days do employees get", "hr/holidays.txt"),
            ("expense reports receipts approval", "finance/expenses.txt"),
        ] {
            let reply = query(&gw, &key, "handbook", question).await;
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            let hits = reply.json();
            assert_eq!(hits["object"], "list");
            let first = &hits["data"][0];
            assert_eq!(first["document_id"], expected, "{question}: {hits}");
            assert!(first["chunk_id"].as_str().unwrap().starts_with(expected));
            assert!(first["score"].as_f64().unwrap() > 0.0);
            assert!(!first["text"].as_str().unwrap().is_empty());
        }

        // Metadata is filterable: only the HR document answers within team "hr".
        let filtered = query_hr_only(&gw, &key, "handbook").await;
        assert_eq!(filtered.status, 200);
        assert_eq!(documents_of(&filtered), ["hr/holidays.txt"]);

        let document = get(&gw, "/v1/collections/handbook/documents/it/vpn.md", &key).await;
        assert_eq!(document.status, 200);
        assert_eq!(document.json()["format"], "markdown");
        assert_eq!(document.json()["metadata"]["team"], "it");
        let listed = get(&gw, "/v1/collections", &key).await.json();
        assert_eq!(listed["object"], "list");
        assert_eq!(listed["data"][0]["document_count"], 4);
    })
    .await;
}

#[tokio::test]
async fn unchanged_documents_cost_no_embedding_call_and_a_changed_one_replaces_its_chunks() {
    within(60, async {
        let upstream = MockUpstream::start(&[]);
        let gw = collections_gateway(&upstream).await;
        let key = tenant_key(&gw, "acme").await;
        create(&gw, &key, "handbook").await;
        let first = ingest(&gw, &key, "handbook", corpus()).await;
        let calls = upstream.requests().await;
        assert!(calls >= 1);

        let again = ingest(&gw, &key, "handbook", corpus()).await;
        assert!(
            statuses(&again).iter().all(|(_, s)| s == "unchanged"),
            "{again}"
        );
        assert_eq!(again["totals"]["embedding_calls"], 0);
        assert_eq!(
            upstream.requests().await,
            calls,
            "no upstream call for unchanged documents"
        );
        assert_eq!(again["collection_version"], first["collection_version"]);

        let old_chunks = get(
            &gw,
            "/v1/collections/handbook/documents/hr/holidays.txt",
            &key,
        )
        .await
        .json()["chunk_ids"]
            .clone();
        let mut changed = corpus();
        changed[1]["text"] =
            json!("Employees get thirty sabbatical weeks after ten years of service.");
        let report = ingest(&gw, &key, "handbook", changed).await;
        assert_eq!(
            statuses(&report),
            [
                ("it/vpn.md".to_owned(), "unchanged".to_owned()),
                ("hr/holidays.txt".to_owned(), "replaced".to_owned()),
                ("finance/expenses.txt".to_owned(), "unchanged".to_owned()),
                ("it/laptop.txt".to_owned(), "unchanged".to_owned()),
            ]
        );
        assert_eq!(report["documents"][1]["embedding_calls"], 1);
        assert_eq!(
            upstream.requests().await,
            calls + 1,
            "only the changed document"
        );

        // Its old chunks are gone: no query returns them; the new text answers.
        let reply = query(&gw, &key, "handbook", "holiday days carry over until March").await;
        let old: Vec<&str> = old_chunks
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        for hit in reply.json()["data"].as_array().unwrap() {
            assert!(!old.contains(&hit["chunk_id"].as_str().unwrap()), "{hit}");
            assert!(!hit["text"].as_str().unwrap().contains("March"), "{hit}");
        }
        let reply = query(&gw, &key, "handbook", "sabbatical weeks").await;
        assert_eq!(documents_of(&reply)[0], "hr/holidays.txt");
    })
    .await;
}

#[tokio::test]
async fn a_deleted_document_or_collection_is_never_returned() {
    within(60, async {
        let upstream = MockUpstream::start(&[]);
        let gw = collections_gateway(&upstream).await;
        let key = tenant_key(&gw, "acme").await;
        create(&gw, &key, "handbook").await;
        ingest(&gw, &key, "handbook", corpus()).await;

        let deleted = delete(&gw, "/v1/collections/handbook/documents/it/vpn.md", &key).await;
        assert_eq!(deleted.status, 200);
        assert_eq!(deleted.json()["deleted"], true);
        let gone = get(&gw, "/v1/collections/handbook/documents/it/vpn.md", &key).await;
        assert_eq!(gone.status, 404);
        let reply = query(&gw, &key, "handbook", "reset VPN password portal").await;
        assert!(!documents_of(&reply).contains(&"it/vpn.md".to_owned()));
        let again = delete(&gw, "/v1/collections/handbook/documents/it/vpn.md", &key).await;
        assert_eq!(again.status, 404);

        let dropped = delete(&gw, "/v1/collections/handbook", &key).await;
        assert_eq!(dropped.status, 200);
        assert_eq!(get(&gw, "/v1/collections/handbook", &key).await.status, 404);
        assert_eq!(query(&gw, &key, "handbook", "laptop").await.status, 404);
        // A collection made again under the name starts empty: no vector survived.
        create(&gw, &key, "handbook").await;
        let reply = query(&gw, &key, "handbook", "laptop refresh service desk").await;
        assert_eq!(reply.status, 200);
        assert!(documents_of(&reply).is_empty(), "{}", reply.json());
    })
    .await;
}

#[tokio::test]
async fn another_tenant_gets_404_for_every_collection_route() {
    within(60, async {
        let upstream = MockUpstream::start(&[]);
        let gw = collections_gateway(&upstream).await;
        let owner = tenant_key(&gw, "acme").await;
        let other = tenant_key(&gw, "globex").await;
        create(&gw, &owner, "handbook").await;
        ingest(&gw, &owner, "handbook", corpus()).await;

        let base = "/v1/collections/handbook";
        for reply in [
            get(&gw, base, &other).await,
            query(&gw, &other, "handbook", "VPN password").await,
            gw.post(
                &format!("{base}/documents"),
                &other,
                &json!({"documents": [{"id": "x.txt", "text": "planted"}]}),
            )
            .await,
            get(&gw, &format!("{base}/documents/it/vpn.md"), &other).await,
            delete(&gw, &format!("{base}/documents/it/vpn.md"), &other).await,
            delete(&gw, base, &other).await,
        ] {
            assert_eq!(
                reply.status,
                404,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
        }
        assert_eq!(
            get(&gw, "/v1/collections", &other).await.json()["data"],
            json!([])
        );
        // The other tenant's collection of the same name is its own.
        create(&gw, &other, "handbook").await;
        let reply = query(&gw, &other, "handbook", "VPN password").await;
        assert!(documents_of(&reply).is_empty());
        let reply = query(&gw, &owner, "handbook", "VPN password").await;
        assert_eq!(documents_of(&reply)[0], "it/vpn.md");
    })
    .await;
}

#[tokio::test]
async fn identical_queries_hit_the_retrieval_cache_until_the_collection_changes() {
    within(60, async {
        let upstream = MockUpstream::start(&[]);
        let gw = collections_gateway(&upstream).await;
        let key = tenant_key(&gw, "acme").await;
        create(&gw, &key, "handbook").await;
        ingest(&gw, &key, "handbook", corpus()).await;

        let first = query(&gw, &key, "handbook", "laptop refresh").await;
        assert_eq!(first.header("x-gateway-cache"), Some("MISS"));
        let second = query(&gw, &key, "handbook", "laptop refresh").await;
        assert_eq!(second.header("x-gateway-cache"), Some("HIT"));
        assert_eq!(second.json()["data"], first.json()["data"]);
        // Another top_k is another query.
        let other = gw
            .post(
                "/v1/collections/handbook/query",
                &key,
                &json!({"query": "laptop refresh", "top_k": 1}),
            )
            .await;
        assert_eq!(other.header("x-gateway-cache"), Some("MISS"));

        ingest(
            &gw,
            &key,
            "handbook",
            json!([{"id": "it/laptop-2.txt", "text": "Laptop refresh for engineers is every two years."}]),
        )
        .await;
        let after = query(&gw, &key, "handbook", "laptop refresh").await;
        assert_eq!(after.header("x-gateway-cache"), Some("MISS"));
        assert!(
            after.json()["collection_version"].as_u64()
                > first.json()["collection_version"].as_u64()
        );
        assert!(documents_of(&after).contains(&"it/laptop-2.txt".to_owned()));
    })
    .await;
}

#[tokio::test]
async fn a_queued_ingest_is_answered_202_and_run_by_the_worker() {
    within(60, async {
        let upstream = MockUpstream::start(&[]);
        let gw = collections_gateway(&upstream).await;
        tokio::spawn(gateway::pipeline::ingest::run_worker(Arc::clone(
            &gw.gateway,
        )));
        let key = tenant_key(&gw, "acme").await;
        create(&gw, &key, "handbook").await;
        let reply = gw
            .post(
                "/v1/collections/handbook/documents",
                &key,
                &json!({"documents": corpus(), "async": true}),
            )
            .await;
        assert_eq!(
            reply.status,
            202,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let job = reply.json();
        assert_eq!(job["object"], "collection.ingest_job");
        assert_eq!(job["status"], "queued");
        let path = format!(
            "/v1/collections/handbook/jobs/{}",
            job["id"].as_str().unwrap()
        );
        let done = loop {
            let job = get(&gw, &path, &key).await.json();
            if job["status"] == "completed" || job["status"] == "failed" {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["counts"]["created"], 4);
        let reply = query(&gw, &key, "handbook", "reset VPN password").await;
        assert_eq!(documents_of(&reply)[0], "it/vpn.md");
        // The job belongs to its tenant.
        let other = tenant_key(&gw, "globex").await;
        assert_eq!(get(&gw, &path, &other).await.status, 404);
    })
    .await;
}

#[tokio::test]
async fn bad_collection_and_document_requests_are_400_naming_the_field() {
    within(60, async {
        let upstream = MockUpstream::start(&[]);
        let gw = collections_gateway(&upstream).await;
        let key = tenant_key(&gw, "acme").await;
        for (body, param) in [
            (
                json!({"name": "Bad Name", "embedding_model": MODEL}),
                "name",
            ),
            (
                json!({"name": "ok", "embedding_model": "mock"}),
                "embedding_model",
            ),
            (
                json!({"name": "ok", "embedding_model": MODEL,
                       "chunking": {"max_tokens": 100, "overlap_tokens": 90}}),
                "chunking",
            ),
        ] {
            let reply = gw.post("/v1/collections", &key, &body).await;
            assert_eq!(reply.status, 400, "{body}");
            assert_eq!(reply.json()["error"]["param"], param, "{body}");
        }
        create(&gw, &key, "handbook").await;
        let conflict = gw
            .post(
                "/v1/collections",
                &key,
                &json!({"name": "handbook", "embedding_model": MODEL}),
            )
            .await;
        assert_eq!(conflict.status, 409);
        let many: Vec<Value> = (0..101)
            .map(|i| json!({"id": format!("d{i}.txt"), "text": "x"}))
            .collect();
        for documents in [
            json!(many),
            json!([{"id": "../escape.txt", "text": "x"}]),
            json!([{"id": "a.txt", "text": "x", "markdown": "y"}]),
            json!([{"id": "a.txt", "text": "x", "metadata": {"nested": {"a": 1}}}]),
            json!([{"id": "a.txt", "text": "x".repeat(600 * 1024)}]),
        ] {
            let reply = gw
                .post(
                    "/v1/collections/handbook/documents",
                    &key,
                    &json!({ "documents": documents }),
                )
                .await;
            assert_eq!(
                reply.status,
                400,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
        }
        let reply = gw
            .post(
                "/v1/collections/handbook/query",
                &key,
                &json!({"query": "x", "top_k": 101}),
            )
            .await;
        assert_eq!(reply.status, 400);
        assert_eq!(reply.json()["error"]["param"], "top_k");
    })
    .await;
}
