//! The AWS backends of the batch path against moto server: the batch store on DynamoDB (files,
//! uploads, batches with compare-and-swap, results recorded once), file bodies on S3 and the
//! batch queue on SQS (batched sends, delays, redelivery, the dead-letter queue).
//!
//! moto answers one request at a time (`tests/moto`), so no test long-polls SQS: a waiting
//! receive would hold every other test's requests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use bytes::Bytes;
use gateway::batch::dynamo::DynamoBatchStore;
use gateway::batch::store::{
    BatchRecord, BatchStatus, BatchStore, Counts, FileRecord, ItemResult, UploadPart, UploadRecord,
    UploadStatus,
};
use gateway::error::StoreError;
use gateway::files::FileBodies;
use gateway::files::s3::S3Bodies;
use gateway::queue::sqs::{REASON_ATTRIBUTE, SqsQueue};
use gateway::queue::{Queue, Received};
use gateway::storage::dynamo::create_batch_table;

use crate::common::moto::Moto;

async fn store(test: &str) -> (Arc<Moto>, DynamoBatchStore) {
    let moto = Moto::shared();
    let client = moto.client();
    let table = format!("{test}-batch");
    create_batch_table(&client, &table).await.unwrap();
    (moto, DynamoBatchStore::new(client, table))
}

fn file(tenant: &str, id: &str) -> FileRecord {
    FileRecord {
        id: id.into(),
        tenant: tenant.into(),
        purpose: "batch".into(),
        filename: format!("{id}.jsonl"),
        bytes: 42,
        created_at: 1_700_000_000,
        expires_at: None,
        objects: vec![format!("files/{id}")],
    }
}

fn batch(tenant: &str, id: &str) -> BatchRecord {
    BatchRecord {
        id: id.into(),
        tenant: tenant.into(),
        key_id: "key-1".into(),
        endpoint: "/v1/chat/completions".into(),
        input_file_id: Some("file-1".into()),
        completion_window: "24h".into(),
        status: BatchStatus::Validating,
        created_at: 1_700_000_000,
        expires_at: 1_700_086_400,
        in_progress_at: None,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        output_file_id: None,
        error_file_id: None,
        errors: Vec::new(),
        metadata: Some(BTreeMap::from([("team".to_owned(), "search".to_owned())])),
        total: 0,
        expanded: 0,
        direct: false,
        version: 0,
    }
}

fn result(custom_id: &str, line: u64, ok: bool) -> ItemResult {
    ItemResult {
        custom_id: custom_id.into(),
        line,
        ok,
        record: format!(r#"{{"custom_id":"{custom_id}"}}"#),
    }
}

fn ids<T>(records: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    records.iter().map(|r| id(r).to_owned()).collect()
}

#[tokio::test]
async fn batch_store_keeps_files_and_uploads_per_tenant_and_lists_files_newest_first() {
    let (_moto, store) = store("batch-files").await;
    for id in ["file-001", "file-002", "file-003"] {
        store.put_file(&file("acme", id)).await.unwrap();
    }
    store.put_file(&file("other", "file-004")).await.unwrap();

    assert_eq!(
        store.get_file("acme", "file-002").await.unwrap(),
        Some(file("acme", "file-002"))
    );
    assert_eq!(store.get_file("other", "file-002").await.unwrap(), None);

    let first = store.list_files("acme", None, 2).await.unwrap();
    assert_eq!(ids(&first, |f| &f.id), ["file-003", "file-002"]);
    let rest = store.list_files("acme", Some("file-002"), 2).await.unwrap();
    assert_eq!(ids(&rest, |f| &f.id), ["file-001"]);
    let others = store.list_files("other", None, 100).await.unwrap();
    assert_eq!(ids(&others, |f| &f.id), ["file-004"]);

    assert!(!store.delete_file("other", "file-001").await.unwrap());
    assert!(store.delete_file("acme", "file-001").await.unwrap());
    assert!(!store.delete_file("acme", "file-001").await.unwrap());
    assert_eq!(store.get_file("acme", "file-001").await.unwrap(), None);

    let upload = UploadRecord {
        id: "upload-1".into(),
        tenant: "acme".into(),
        filename: "big.jsonl".into(),
        purpose: "batch".into(),
        mime_type: "application/jsonl".into(),
        bytes: 300,
        created_at: 1_700_000_000,
        expires_at: 1_700_003_600,
        status: UploadStatus::Pending,
        file_id: None,
    };
    store.put_upload(&upload).await.unwrap();
    assert_eq!(store.get_upload("other", "upload-1").await.unwrap(), None);
    for part in ["part-1", "part-2", "part-3"] {
        store
            .put_upload_part(&UploadPart {
                id: part.into(),
                upload_id: "upload-1".into(),
                bytes: 100,
                created_at: 1_700_000_100,
                object: format!("uploads/upload-1/{part}"),
            })
            .await
            .unwrap();
    }
    let completed = UploadRecord {
        status: UploadStatus::Completed,
        file_id: Some("file-009".into()),
        ..upload
    };
    store.put_upload(&completed).await.unwrap();
    assert_eq!(
        store.get_upload("acme", "upload-1").await.unwrap(),
        Some(completed)
    );
    let mut parts = ids(&store.upload_parts("upload-1").await.unwrap(), |p| &p.id);
    parts.sort();
    assert_eq!(parts, ["part-1", "part-2", "part-3"]);
    assert!(store.upload_parts("upload-2").await.unwrap().is_empty());
    // Uploads and files share the tenant's partition; the file list holds only files.
    assert_eq!(
        ids(&store.list_files("acme", None, 100).await.unwrap(), |f| &f
            .id),
        ["file-003", "file-002"]
    );
}

#[tokio::test]
async fn batch_store_lists_batches_newest_first_and_pages_after_a_cursor() {
    let (_moto, store) = store("batch-list").await;
    for n in 1..=7 {
        store
            .create_batch(&batch("acme", &format!("batch-{n:03}")))
            .await
            .unwrap();
    }
    store
        .create_batch(&batch("other", "batch-100"))
        .await
        .unwrap();
    // Files of the tenant sit in the same partition and stay out of the batch list.
    store.put_file(&file("acme", "file-999")).await.unwrap();

    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_batches("acme", after.as_deref(), 3)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|(b, _)| b.id.clone());
        pages.push(ids(&page, |(b, _)| &b.id));
    }
    assert_eq!(
        pages,
        [
            vec!["batch-007", "batch-006", "batch-005"],
            vec!["batch-004", "batch-003", "batch-002"],
            vec!["batch-001"],
        ]
    );
    let others = store.list_batches("other", None, 100).await.unwrap();
    assert_eq!(ids(&others, |(b, _)| &b.id), ["batch-100"]);
    assert_eq!(others.first().map(|(_, c)| *c), Some(Counts::default()));
    assert_eq!(store.get_batch("other", "batch-001").await.unwrap(), None);
}

#[tokio::test]
async fn batch_store_updates_are_compare_and_swap_and_terminal_batches_leave_the_open_index() {
    let (_moto, store) = store("batch-cas").await;
    let created = BatchRecord {
        version: 5, // ignored: a new batch starts at version 0
        ..batch("acme", "batch-cas-1")
    };
    store.create_batch(&created).await.unwrap();
    store
        .create_batch(&batch("other", "batch-cas-2"))
        .await
        .unwrap();
    assert!(matches!(
        store.create_batch(&batch("acme", "batch-cas-1")).await,
        Err(StoreError::Conflict(_))
    ));

    let (stored, counts) = store
        .get_batch("acme", "batch-cas-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.version, counts), (0, Counts::default()));
    assert_eq!(stored, batch("acme", "batch-cas-1"));

    let in_progress = BatchRecord {
        status: BatchStatus::InProgress,
        in_progress_at: Some(1_700_000_010),
        total: 3,
        version: 1,
        ..stored.clone()
    };
    assert!(store.update_batch(&in_progress).await.unwrap());
    // A writer that read version 0 too comes second and changes nothing.
    let stale = BatchRecord {
        status: BatchStatus::Cancelling,
        version: 1,
        ..stored
    };
    assert!(!store.update_batch(&stale).await.unwrap());
    let (read, _) = store
        .get_batch("acme", "batch-cas-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, in_progress);

    // Updates leave the counts alone.
    store
        .record_result("acme", "batch-cas-1", &result("a", 0, true))
        .await
        .unwrap();
    let expanded = BatchRecord {
        expanded: 3,
        version: 2,
        ..in_progress
    };
    assert!(store.update_batch(&expanded).await.unwrap());
    let (_, counts) = store
        .get_batch("acme", "batch-cas-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counts.completed, 1);

    let mut open = store.open_batches().await.unwrap();
    open.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(ids(&open, |b| &b.id), ["batch-cas-1", "batch-cas-2"]);
    assert_eq!(
        open.first(),
        Some(&expanded),
        "the index holds the latest document"
    );

    let completed = BatchRecord {
        status: BatchStatus::Completed,
        completed_at: Some(1_700_000_100),
        version: 3,
        ..expanded
    };
    assert!(store.update_batch(&completed).await.unwrap());
    let open = store.open_batches().await.unwrap();
    assert_eq!(ids(&open, |b| &b.id), ["batch-cas-2"]);
}

#[tokio::test]
async fn batch_store_records_each_result_once_under_concurrent_duplicate_deliveries() {
    let (_moto, store) = store("batch-results").await;
    let store = Arc::new(store);
    store.create_batch(&batch("acme", "batch-r")).await.unwrap();

    let deliveries = (0..20).map(|_| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .record_result("acme", "batch-r", &result("item-1", 0, true))
                .await
        })
    });
    let mut outcomes = Vec::new();
    for delivery in deliveries {
        outcomes.push(delivery.await.unwrap().unwrap());
    }
    let recorded: Vec<Counts> = outcomes.into_iter().flatten().collect();
    assert_eq!(
        recorded,
        [Counts {
            completed: 1,
            failed: 0
        }],
        "exactly one delivery records the result"
    );

    let failed = store
        .record_result("acme", "batch-r", &result("item-2", 1, false))
        .await
        .unwrap();
    assert_eq!(
        failed,
        Some(Counts {
            completed: 1,
            failed: 1
        })
    );
    // A second outcome of a recorded item (a late retry that failed) changes nothing.
    assert_eq!(
        store
            .record_result("acme", "batch-r", &result("item-1", 0, false))
            .await
            .unwrap(),
        None
    );
    let (_, counts) = store.get_batch("acme", "batch-r").await.unwrap().unwrap();
    assert_eq!(counts.done(), 2);

    assert_eq!(
        store.get_result("batch-r", "item-1").await.unwrap(),
        Some(result("item-1", 0, true))
    );
    assert_eq!(store.get_result("batch-r", "item-3").await.unwrap(), None);
    let mut results = store.results("batch-r").await.unwrap();
    results.sort_by_key(|r| r.line);
    assert_eq!(
        results,
        [result("item-1", 0, true), result("item-2", 1, false)]
    );

    // A large record (a long completion) is stored compressed and read back whole.
    let long = ItemResult {
        record: "All work and no play. ".repeat(40_000),
        ..result("item-long", 2, true)
    };
    store.record_result("acme", "batch-r", &long).await.unwrap();
    assert_eq!(
        store.get_result("batch-r", "item-long").await.unwrap(),
        Some(long)
    );

    assert!(
        store
            .record_result("acme", "no-such-batch", &result("x", 0, true))
            .await
            .is_err(),
        "a result of an unknown batch is refused"
    );
    assert_eq!(store.get_result("no-such-batch", "x").await.unwrap(), None);
}

pub(crate) async fn bucket(moto: &Moto, name: &str) -> S3Bodies {
    let client = gateway::files::s3::client(&moto.sdk_config());
    client.create_bucket().bucket(name).send().await.unwrap();
    S3Bodies::new(client, name.to_owned())
}

#[tokio::test]
async fn s3_bodies_are_written_read_and_deleted() {
    let moto = Moto::shared();
    let bodies = bucket(&moto, "batch-bodies").await;
    let body = Bytes::from("{\"custom_id\":\"a\"}\n".repeat(10_000));
    bodies.put("files/file-1", body.clone()).await.unwrap();
    assert_eq!(bodies.get("files/file-1").await.unwrap(), Some(body));
    bodies
        .put("files/file-1", Bytes::from_static(b"replaced"))
        .await
        .unwrap();
    assert_eq!(
        bodies.get("files/file-1").await.unwrap(),
        Some(Bytes::from_static(b"replaced"))
    );

    assert_eq!(bodies.get("files/missing").await.unwrap(), None);
    bodies.delete("files/file-1").await.unwrap();
    assert_eq!(bodies.get("files/file-1").await.unwrap(), None);
    bodies.delete("files/file-1").await.unwrap();
}

/// The queue `name` (with its visibility timeout) and a dead-letter queue, as `SqsQueue`s, with
/// the raw client and the dead-letter queue's URL.
async fn queue(
    moto: &Moto,
    name: &str,
    visibility_secs: u32,
) -> (SqsQueue, aws_sdk_sqs::Client, String) {
    let client = gateway::queue::sqs::client(&moto.sdk_config());
    let url = client
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_secs.to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dead_letter_url = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue = SqsQueue::new(client.clone(), url, Some(dead_letter_url.clone()));
    (queue, client, dead_letter_url)
}

/// Receives (without long polling) until `want` messages arrived or `within` passed.
async fn receive_all(queue: &SqsQueue, want: usize, within: Duration) -> Vec<Received> {
    let deadline = Instant::now() + within;
    let mut received = Vec::new();
    while received.len() < want && Instant::now() < deadline {
        let batch = queue.receive(10, 0).await.unwrap();
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        received.extend(batch);
    }
    received
}

#[tokio::test]
async fn sqs_queue_sends_in_groups_of_ten_and_every_message_arrives_once() {
    let moto = Moto::shared();
    let (queue, _, _) = queue(&moto, "batch-send", 30).await;
    let bodies: Vec<String> = (0..25).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    queue.send(&bodies, 0).await.unwrap();

    let received = receive_all(&queue, 25, Duration::from_secs(10)).await;
    let mut got: Vec<String> = received.iter().map(|m| m.body.clone()).collect();
    got.sort();
    let mut sent = bodies.clone();
    sent.sort();
    assert_eq!(got, sent);
    assert!(received.iter().all(|m| m.receive_count == 1));
    for message in &received {
        queue.delete(&message.handle).await.unwrap();
    }
    assert!(queue.receive(10, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqs_queue_delays_messages_and_redelivers_what_was_not_deleted() {
    let moto = Moto::shared();
    let (queue, _, _) = queue(&moto, "batch-redeliver", 1).await;
    queue.send(&["later".to_owned()], 2).await.unwrap();
    assert!(
        queue.receive(10, 0).await.unwrap().is_empty(),
        "a delayed message is not visible at once"
    );
    let first = receive_all(&queue, 1, Duration::from_secs(10)).await;
    assert_eq!(
        first
            .iter()
            .map(|m| (m.body.as_str(), m.receive_count))
            .collect::<Vec<_>>(),
        [("later", 1)]
    );

    // Not deleted: it comes back once its visibility timeout (1 s) passed, counted twice.
    let again = receive_all(&queue, 1, Duration::from_secs(10)).await;
    assert_eq!(
        again
            .iter()
            .map(|m| (m.body.as_str(), m.receive_count))
            .collect::<Vec<_>>(),
        [("later", 2)]
    );
    for message in &again {
        queue.delete(&message.handle).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        queue.receive(10, 0).await.unwrap().is_empty(),
        "a deleted message never comes back"
    );
}

#[tokio::test]
async fn sqs_queue_dead_letters_a_message_with_its_reason() {
    let moto = Moto::shared();
    let (queue, client, dead_letter_url) = queue(&moto, "batch-poison", 30).await;
    queue
        .dead_letter("not json", "malformed message: expected value at line 1")
        .await
        .unwrap();

    let output = client
        .receive_message()
        .queue_url(&dead_letter_url)
        .message_attribute_names("All")
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    let messages = output.messages();
    assert_eq!(messages.len(), 1);
    let message = messages.first().unwrap();
    assert_eq!(message.body(), Some("not json"));
    let reason = message
        .message_attributes()
        .and_then(|a| a.get(REASON_ATTRIBUTE))
        .and_then(|v| v.string_value());
    assert_eq!(reason, Some("malformed message: expected value at line 1"));
    assert!(
        queue.receive(10, 0).await.unwrap().is_empty(),
        "the main queue is untouched"
    );

    let without_dead_letter_queue = SqsQueue::new(client, dead_letter_url, None);
    let error = without_dead_letter_queue
        .dead_letter("x", "y")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("dead-letter"), "{error}");
}
