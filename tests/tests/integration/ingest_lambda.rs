//! The `ingest` function's handler (`gateway::lambda::ingest::handle_event`) fed real event
//! payloads — a classic S3 notification (the `aws_lambda_events` fixture), EventBridge's S3
//! "Object Created" (AWS's documented example), and SQS records of the ingest queue — over the
//! AWS backends in moto: keys and the collections table in DynamoDB, uploads and queued
//! documents in S3, the ingest queue in SQS. Vectors go to the embedded store (moto has no
//! `QueryVectors`); embeddings come from the mock provider process.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use gateway::backends::Backends;
use gateway::config::Config;
use gateway::ingest::backends::IngestBackends;
use gateway::keys::{KeyRecord, NewKey, generate_key};
use gateway::lambda::ingest::{IngestHandler, handle_event};
use gateway::pipeline::ingest;
use gateway::pipeline::retrieve::retrieve;
use gateway::state::Gateway;
use gateway::storage::dynamo::{DynamoConfig, create_batch_table, create_tables};
use gateway::storage::embedded::EmbeddedStore;
use gateway::vectors::embedded::EmbeddedVectors;
use serde_json::{Value, json};

use crate::common::local::TempDir;
use crate::common::moto::Moto;
use crate::common::{MockUpstream, UPSTREAM_KEY, now_secs, test_config, within};

static NEXT: AtomicU64 = AtomicU64::new(0);

fn unique(test: &str) -> String {
    format!(
        "ing-{test}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/fixtures/lambda_events/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

struct Setup {
    _moto: Arc<Moto>,
    _upstream: MockUpstream,
    _dir: TempDir,
    handler: IngestHandler,
    bucket: String,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    key: KeyRecord,
}

async fn setup(test: &str) -> Setup {
    let moto = Moto::shared();
    let upstream = MockUpstream::start(&[]);
    let name = unique(test);
    let client = moto.client();
    let tables = DynamoConfig {
        keys_table: format!("{name}-keys"),
        limits_table: format!("{name}-limits"),
        cache_table: format!("{name}-cache"),
        limits_failure_policy: Default::default(),
    };
    create_tables(&client, &tables).await.unwrap();
    let collections_table = format!("{name}-collections");
    create_batch_table(&client, &collections_table)
        .await
        .unwrap();
    let sdk = moto.sdk_config();
    let s3 = gateway::files::s3::client(&sdk);
    s3.create_bucket().bucket(&name).send().await.unwrap();
    let sqs = gateway::queue::sqs::client(&sdk);
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("{name}-ingest"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let env = HashMap::from([
        ("UPSTREAM_KEY", UPSTREAM_KEY.to_owned()),
        ("GATEWAY_COLLECTIONS_TABLE", collections_table),
        ("GATEWAY_BUCKET", name.clone()),
        ("GATEWAY_INGEST_QUEUE_URL", queue_url.clone()),
    ]);
    let lookup = |name: &str| env.get(name).cloned();
    let config = Config::from_toml(&test_config(&upstream.url)).unwrap();
    let mut gateway = Gateway::new(&config, Backends::dynamo(&client, &tables), &lookup).unwrap();
    gateway.ingest = IngestBackends::aws(&sdk, &client, lookup).unwrap();
    assert!(gateway.ingest.as_ref().unwrap().queued.is_some());
    let dir = TempDir::new(&name);
    let vectors = EmbeddedStore::open(dir.path()).unwrap();
    gateway.vectors = Some(Arc::new(EmbeddedVectors::new(vectors)));
    let (hash, _, key) = generate_key(
        NewKey {
            name: "owner".into(),
            tenant: Some("acme".into()),
            ..NewKey::default()
        },
        now_secs(),
    )
    .unwrap();
    gateway.auth.store().insert(&hash, &key).await.unwrap();
    let gateway = Arc::new(gateway);
    let request = serde_json::from_value(json!({
        "name": "handbook", "embedding_model": "gpt-embed", "dimensions": 512
    }))
    .unwrap();
    ingest::create_collection(&gateway, &key, request)
        .await
        .unwrap();
    Setup {
        _moto: moto,
        _upstream: upstream,
        _dir: dir,
        handler: IngestHandler { gateway, s3 },
        bucket: name,
        sqs,
        queue_url,
        key,
    }
}

fn deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(30)
}

async fn upload(setup: &Setup, key: &str, text: &str) {
    setup
        .handler
        .s3
        .put_object()
        .bucket(&setup.bucket)
        .key(key)
        .body(text.as_bytes().to_vec().into())
        .send()
        .await
        .unwrap();
}

async fn first_document(setup: &Setup, question: &str) -> Option<String> {
    let retrieval = retrieve(
        &setup.handler.gateway,
        &setup.key,
        "handbook",
        question,
        4,
        None,
        deadline(),
    )
    .await
    .unwrap();
    retrieval.chunks.first().map(|c| c.document_id.clone())
}

/// The S3 notification fixture, naming `key` in the test's bucket (URL-encoded, as S3 sends it).
fn s3_event(setup: &Setup, key: &str, size: usize) -> Value {
    let mut event = fixture("example-s3-event.json");
    let record = &mut event["Records"][0]["s3"];
    record["bucket"]["name"] = json!(setup.bucket);
    record["bucket"]["arn"] = json!(format!("arn:aws:s3:::{}", setup.bucket));
    record["object"]["key"] = json!(key.replace('/', "%2F"));
    record["object"]["size"] = json!(size);
    event
}

#[tokio::test]
async fn an_s3_notification_ingests_the_upload_for_the_collections_owner() {
    within(90, async {
        let setup = setup("s3event").await;
        let text = "# VPN\n\nReset your VPN password in the VPN portal.";
        upload(&setup, "ingest/acme/handbook/guides/vpn.md", text).await;
        upload(&setup, "ingest/acme/handbook/logo.png", "not text").await;

        let event = s3_event(&setup, "ingest/acme/handbook/guides/vpn.md", text.len());
        let answer = handle_event(&setup.handler, event, deadline())
            .await
            .unwrap();
        assert_eq!(
            answer["ingested"],
            json!([{"document_id": "guides/vpn.md", "status": "created"}]),
            "{answer}"
        );
        assert_eq!(
            first_document(&setup, "reset VPN password")
                .await
                .as_deref(),
            Some("guides/vpn.md")
        );
        let document = ingest::get_document(
            &setup.handler.gateway,
            &setup.key,
            "handbook",
            "guides/vpn.md",
        )
        .await
        .unwrap();
        assert_eq!(document["format"], "markdown");

        // Delivered again: nothing to do.
        let event = s3_event(&setup, "ingest/acme/handbook/guides/vpn.md", text.len());
        let again = handle_event(&setup.handler, event, deadline())
            .await
            .unwrap();
        assert_eq!(again["ingested"][0]["status"], "unchanged");

        // Other extensions, other prefixes, and unknown collections are skipped, not failed.
        for key in [
            "ingest/acme/handbook/logo.png",
            "uploads/acme/handbook/a.txt",
            "ingest/acme/nope/a.txt",
        ] {
            let answer = handle_event(&setup.handler, s3_event(&setup, key, 8), deadline())
                .await
                .unwrap();
            assert_eq!(answer["ingested"], json!([]), "{key}: {answer}");
            assert_eq!(answer["skipped"][0]["key"], key, "{answer}");
        }
    })
    .await;
}

#[tokio::test]
async fn an_eventbridge_object_created_event_ingests_the_upload() {
    within(90, async {
        let setup = setup("bridge").await;
        let text = "Employees get twenty five holiday days per year.";
        upload(&setup, "ingest/acme/handbook/hr/holidays.txt", text).await;
        let mut event = fixture("example-eventbridge-s3-object-created.json");
        event["detail"]["bucket"]["name"] = json!(setup.bucket);
        event["detail"]["object"]["key"] = json!("ingest/acme/handbook/hr/holidays.txt");
        event["detail"]["object"]["size"] = json!(text.len());
        let answer = handle_event(&setup.handler, event, deadline())
            .await
            .unwrap();
        assert_eq!(
            answer["ingested"],
            json!([{"document_id": "hr/holidays.txt", "status": "created"}]),
            "{answer}"
        );
        assert_eq!(
            first_document(&setup, "how many holiday days")
                .await
                .as_deref(),
            Some("hr/holidays.txt")
        );
        let collection = ingest::get_collection(&setup.handler.gateway, &setup.key, "handbook")
            .await
            .unwrap();
        assert_eq!(collection["document_count"], 1);
        assert_eq!(collection["version"], 1);

        // The DynamoDB store deletes a document, then the collection.
        ingest::delete_document(
            &setup.handler.gateway,
            &setup.key,
            "handbook",
            "hr/holidays.txt",
        )
        .await
        .unwrap();
        assert_eq!(first_document(&setup, "how many holiday days").await, None);
        ingest::delete_collection(&setup.handler.gateway, &setup.key, "handbook")
            .await
            .unwrap();
        let listed = ingest::list_collections(&setup.handler.gateway, &setup.key)
            .await
            .unwrap();
        assert_eq!(listed["data"], json!([]));
    })
    .await;
}

#[tokio::test]
async fn a_queued_ingest_is_run_from_its_sqs_record() {
    within(90, async {
        let setup = setup("queued").await;
        let request = serde_json::from_value(json!({
            "documents": [{"id": "it/laptop.txt",
                           "text": "A new laptop is ordered through the service desk."}],
            "async": true
        }))
        .unwrap();
        let (status, job) = ingest::add_documents(
            &setup.handler.gateway,
            &setup.key,
            "handbook",
            request,
            deadline(),
        )
        .await
        .unwrap();
        assert_eq!(status.as_u16(), 202);
        let job_id = job["id"].as_str().unwrap().to_owned();

        let received = setup
            .sqs
            .receive_message()
            .queue_url(&setup.queue_url)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .wait_time_seconds(2)
            .send()
            .await
            .unwrap();
        let message = &received.messages()[0];
        let mut event = fixture("example-sqs-event.json");
        let mut record = event["Records"][0].clone();
        record["messageId"] = json!(message.message_id().unwrap());
        record["receiptHandle"] = json!(message.receipt_handle().unwrap());
        record["body"] = json!(message.body().unwrap());
        record["attributes"]["ApproximateReceiveCount"] = json!("1");
        event["Records"] = json!([record]);
        let answer = handle_event(&setup.handler, event.clone(), deadline())
            .await
            .unwrap();
        assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
        let job = ingest::get_job(&setup.handler.gateway, &setup.key, "handbook", &job_id)
            .await
            .unwrap();
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["counts"]["created"], 1);
        assert_eq!(
            first_document(&setup, "order a new laptop")
                .await
                .as_deref(),
            Some("it/laptop.txt")
        );
        // Redelivered: acknowledged, nothing redone.
        let answer = handle_event(&setup.handler, event, deadline())
            .await
            .unwrap();
        assert_eq!(answer["batchItemFailures"], json!([]));
    })
    .await;
}
