//! The `batch` function's handler (`gateway::lambda::batch::handle_event`) fed real SQS event
//! payloads (the `aws_lambda_events` fixture, filled with messages received from the queue) and
//! the scheduled sweep's EventBridge payload, over the AWS backends in moto: keys, limits and the
//! batch table in DynamoDB, bodies in S3, the queue and its dead-letter queue in SQS. `drain`
//! plays Lambda's event source mapping: receive, invoke, delete what the handler did not list in
//! `batchItemFailures`, until the queue is empty.
//!
//! Models: the built-in mock provider, and the mock provider process for failures: `fault:`
//! models that answer 429 (with `Retry-After: 1`) a set number of times, or 500 always.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use bytes::Bytes;
use gateway::backends::Backends;
use gateway::batch::batches_api::{self, NewBatch};
use gateway::batch::dynamo::DynamoBatchStore;
use gateway::batch::files_api;
use gateway::batch::worker::Worker;
use gateway::batch::{BatchBackends, BatchSettings};
use gateway::config::Config;
use gateway::keys::{KeyRecord, NewKey, generate_key};
use gateway::lambda::batch::handle_event;
use gateway::pipeline::batch::PipelineRunner;
use gateway::queue::Received;
use gateway::queue::sqs::{REASON_ATTRIBUTE, SqsQueue};
use gateway::state::Gateway;
use gateway::storage::dynamo::{DynamoConfig, create_batch_table, create_tables};
use serde_json::{Value, json};

use crate::batch_aws::bucket;
use crate::common::moto::Moto;
use crate::common::{MockUpstream, UPSTREAM_KEY, now_secs, within};

/// Fourteen one-letter words: with `max_tokens = 3` the mock reserves and uses exactly what it
/// estimates (see `aws_backend`), so each answer costs 3 output tokens: $0.003 at the price below.
const PROMPT: &str = "a a a a a a a a a a a a a a";
const COST: f64 = 0.003;

fn config(upstream: &str) -> String {
    format!(
        r#"
[cache]
default_ttl_s = 0

[routing]
max_attempts = 1

[providers.mock]
kind = "mock"

[providers.upstream]
kind = "openai"
base_url = "{upstream}/v1"
api_key_env = "UPSTREAM_KEY"

[models.mock]
deployments = [{{ provider = "mock", model = "mock" }}]
price = {{ input_per_mtok = 0, output_per_mtok = 1000 }}

[models.throttled]
deployments = [{{ provider = "upstream", model = "fault:status=429;times=4;retry_after=1" }}]

[models.broken]
deployments = [{{ provider = "upstream", model = "fault:status=500" }}]

[models.embed]
kind = "embedding"
deployments = [{{ provider = "mock", model = "mock-embed" }}]
"#
    )
}

struct Setup {
    _moto: Arc<Moto>,
    _upstream: MockUpstream,
    gateway: Arc<Gateway>,
    worker: Worker,
    batch: BatchBackends,
    store: Arc<DynamoBatchStore>,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    dead_letter_url: String,
    key: KeyRecord,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A unique name in the shared moto server.
fn unique(test: &str) -> String {
    format!(
        "lam-{test}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// The tables, bucket and queues of one test, a gateway over them, the worker the `batch`
/// function builds, and a key (`budget_usd` if given). The queue redrives to its dead-letter
/// queue after `settings.max_receives`, as the template configures it.
async fn setup(
    test: &str,
    settings: BatchSettings,
    visibility_secs: u32,
    budget_usd: Option<f64>,
) -> Setup {
    let moto = Moto::shared();
    let name = unique(test);
    let client = moto.client();
    let tables = DynamoConfig {
        keys_table: format!("{name}-keys"),
        limits_table: format!("{name}-limits"),
        cache_table: format!("{name}-cache"),
        limits_failure_policy: Default::default(),
    };
    create_tables(&client, &tables).await.unwrap();
    let batch_table = format!("{name}-batch");
    create_batch_table(&client, &batch_table).await.unwrap();
    let store = Arc::new(DynamoBatchStore::new(client.clone(), batch_table));
    let bodies = bucket(&moto, &name).await;

    let sqs = gateway::queue::sqs::client(&moto.sdk_config());
    let dead_letter_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dead_letter_arn = sqs
        .get_queue_attributes()
        .queue_url(&dead_letter_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap();
    let redrive = json!({"deadLetterTargetArn": dead_letter_arn,
                         "maxReceiveCount": settings.max_receives.to_string()});
    let queue_url = sqs
        .create_queue()
        .queue_name(&name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_secs.to_string(),
        )
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue = SqsQueue::new(
        sqs.clone(),
        queue_url.clone(),
        Some(dead_letter_url.clone()),
    );

    let upstream = MockUpstream::start(&[]);
    let backends = Backends::dynamo(&client, &tables);
    let batch = BatchBackends {
        store: store.clone(),
        bodies: Arc::new(bodies),
        queue: Arc::new(queue),
        settings,
    };
    let (hash, _, key) = generate_key(
        NewKey {
            name: test.into(),
            budget_usd,
            ..NewKey::default()
        },
        now_secs(),
    )
    .unwrap();
    backends.keys.insert(&hash, &key).await.unwrap();
    let config = Config::from_toml(&config(&upstream.url)).unwrap();
    let lookup = |name: &str| (name == "UPSTREAM_KEY").then(|| UPSTREAM_KEY.to_owned());
    let mut gateway = Gateway::new(&config, backends, &lookup).unwrap();
    gateway.batch = Some(batch.clone());
    let gateway = Arc::new(gateway);
    // As the `batch` function builds it.
    let worker = Worker::new(
        gateway.batch.clone().unwrap(),
        Arc::clone(gateway.auth.store()),
        Arc::new(PipelineRunner(Arc::clone(&gateway))),
    );
    Setup {
        _moto: moto,
        _upstream: upstream,
        gateway,
        worker,
        batch,
        store,
        sqs,
        queue_url,
        dead_letter_url,
        key,
    }
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/fixtures/lambda_events/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// An SQS event of `messages` as Lambda sends it: the fixture's record, each filled with one
/// message (`ids` are the message ids, which `batchItemFailures` names).
fn sqs_event(messages: &[(String, Received)]) -> Value {
    let template = fixture("example-sqs-event.json")["Records"][0].clone();
    let records: Vec<Value> = messages
        .iter()
        .map(|(id, message)| {
            let mut record = template.clone();
            record["messageId"] = json!(id);
            record["receiptHandle"] = json!(message.handle);
            record["body"] = json!(message.body);
            record["messageAttributes"] = json!({});
            record["eventSourceARN"] = json!("arn:aws:sqs:us-east-1:123456789012:batch");
            record["awsRegion"] = json!("us-east-1");
            record["attributes"]["ApproximateReceiveCount"] =
                json!(message.receive_count.to_string());
            let now = gateway::clock::now_millis().to_string();
            record["attributes"]["SentTimestamp"] = json!(now);
            record["attributes"]["ApproximateFirstReceiveTimestamp"] = json!(now);
            record
        })
        .collect();
    json!({"Records": records})
}

/// What the event source mapping saw while draining.
#[derive(Debug, Default)]
struct Drained {
    events: usize,
    records: usize,
    /// Records the handler listed in `batchItemFailures`.
    failures: usize,
    max_receive_count: u32,
}

static NEXT_MESSAGE_ID: AtomicU64 = AtomicU64::new(0);

/// How `deliver` treats one received batch of messages.
#[derive(Clone, Copy, PartialEq)]
enum Delivery {
    /// As Lambda: one event, then delete what did not fail.
    Once,
    /// The same records in two events (at-least-once delivery), then delete.
    Twice,
    /// Handled, but the worker dies before deleting anything.
    DiesBeforeDelete,
}

/// Invokes the handler with `messages` and deletes what it did not report failed.
async fn deliver(setup: &Setup, messages: Vec<Received>, how: Delivery, seen: &mut Drained) {
    let messages: Vec<(String, Received)> = messages
        .into_iter()
        .map(|m| {
            let id = format!(
                "059f36b4-87a3-44ab-83d2-{:012x}",
                NEXT_MESSAGE_ID.fetch_add(1, Ordering::SeqCst)
            );
            (id, m)
        })
        .collect();
    let event = sqs_event(&messages);
    let times = if how == Delivery::Twice { 2 } else { 1 };
    let mut failed = HashSet::new();
    for _ in 0..times {
        let response = handle_event(&setup.worker, event.clone()).await.unwrap();
        seen.events += 1;
        seen.records += messages.len();
        let failures = response["batchItemFailures"].as_array().unwrap();
        seen.failures += failures.len();
        for failure in failures {
            failed.insert(failure["itemIdentifier"].as_str().unwrap().to_owned());
        }
    }
    for (_, message) in &messages {
        seen.max_receive_count = seen.max_receive_count.max(message.receive_count);
    }
    if how == Delivery::DiesBeforeDelete {
        return;
    }
    for (id, message) in &messages {
        if !failed.contains(id) {
            setup.batch.queue.delete(&message.handle).await.unwrap();
        }
    }
}

/// Messages in the queue: visible, in flight or delayed.
async fn queued(setup: &Setup) -> u64 {
    let attributes = setup
        .sqs
        .get_queue_attributes()
        .queue_url(&setup.queue_url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        QueueAttributeName::ApproximateNumberOfMessagesDelayed,
    ]
    .iter()
    .map(|name| {
        attributes
            .get(name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    })
    .sum()
}

/// The event source mapping: receives up to 10 messages (no long polling: moto answers one
/// request at a time), delivers them as `how` says, until the queue holds nothing, waiting for
/// delayed and in-flight messages at most `within`.
async fn drain(setup: &Setup, how: Delivery, within: Duration) -> Drained {
    let deadline = Instant::now() + within;
    let mut seen = Drained::default();
    loop {
        let messages = setup.batch.queue.receive(10, 0).await.unwrap();
        if messages.is_empty() {
            if queued(setup).await == 0 {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "the queue still holds messages after {within:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if how == Delivery::Twice {
            // Each record in two events of its own, so the second delivery of an item comes
            // while its batch is still open (a finished batch ignores its items).
            for message in messages {
                deliver(setup, vec![message], how, &mut seen).await;
            }
        } else {
            deliver(setup, messages, how, &mut seen).await;
        }
    }
}

/// Receives at least one message, waiting at most 10 s.
async fn receive_some(setup: &Setup) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let messages = setup.batch.queue.receive(10, 0).await.unwrap();
        if !messages.is_empty() {
            return messages;
        }
        assert!(Instant::now() < deadline, "nothing to receive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn line(custom_id: &str, model: &str, text: &str) -> String {
    json!({
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "max_tokens": 3,
                 "messages": [{"role": "user", "content": text}]},
    })
    .to_string()
}

/// `count` mock lines `item-0`…, each with its own prompt (of the same length).
fn mock_lines(count: usize) -> Vec<String> {
    (0..count)
        .map(|n| {
            let text = PROMPT.replacen('a', &char::from(b'b' + n as u8).to_string(), 1);
            line(&format!("item-{n}"), "mock", &text)
        })
        .collect()
}

/// A batch of `lines` created through the Files and Batches APIs; its `expand` message is queued.
async fn create_batch(setup: &Setup, lines: &[String]) -> String {
    let file = files_api::create_file(
        &setup.batch,
        &setup.key.tenant,
        "input.jsonl",
        "batch",
        Bytes::from(lines.join("\n")),
    )
    .await
    .unwrap();
    let batch = batches_api::create_batch(
        &setup.batch,
        &setup.key,
        NewBatch {
            input_file_id: file["id"].as_str().unwrap().to_owned(),
            endpoint: "/v1/chat/completions".into(),
            completion_window: "24h".into(),
            metadata: None,
            output_expires_after: None,
        },
    )
    .await
    .unwrap();
    batch["id"].as_str().unwrap().to_owned()
}

async fn get_batch(setup: &Setup, id: &str) -> Value {
    batches_api::get_batch(&setup.batch, &setup.key.tenant, id)
        .await
        .unwrap()
}

/// The records of an output or error file by `custom_id`, each exactly once.
async fn file_records(setup: &Setup, file_id: &Value) -> HashMap<String, Value> {
    let Some(file_id) = file_id.as_str() else {
        return HashMap::new();
    };
    let body = files_api::file_content(&setup.batch, &setup.key.tenant, file_id)
        .await
        .unwrap();
    let mut records = HashMap::new();
    for line in String::from_utf8(body.to_vec()).unwrap().lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        let id = record["custom_id"].as_str().unwrap().to_owned();
        assert!(records.insert(id.clone(), record).is_none(), "{id} twice");
    }
    records
}

async fn spent(setup: &Setup) -> f64 {
    setup.gateway.background.idle().await;
    setup
        .gateway
        .limiter
        .spent_usd(&setup.key.id, now_secs())
        .await
        .unwrap()
}

fn counts(batch: &Value) -> (u64, u64, u64) {
    let c = &batch["request_counts"];
    (
        c["total"].as_u64().unwrap(),
        c["completed"].as_u64().unwrap(),
        c["failed"].as_u64().unwrap(),
    )
}

/// Messages in the dead-letter queue with their `reason` attribute, waiting for `want`.
async fn dead_letters(setup: &Setup, want: usize) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = Vec::new();
    while found.len() < want && Instant::now() < deadline {
        let output = setup
            .sqs
            .receive_message()
            .queue_url(&setup.dead_letter_url)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        for message in output.messages() {
            let reason = message
                .message_attributes()
                .and_then(|a| a.get(REASON_ATTRIBUTE))
                .and_then(|v| v.string_value())
                .unwrap_or_default()
                .to_owned();
            found.push((message.body().unwrap_or_default().to_owned(), reason));
        }
        if output.messages().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    found
}

#[tokio::test]
async fn every_record_delivered_twice_gives_one_result_each_and_is_billed_once() {
    within(120, async {
        let setup = setup("twice", BatchSettings::default(), 30, None).await;
        let id = create_batch(&setup, &mock_lines(5)).await;
        let seen = drain(&setup, Delivery::Twice, Duration::from_secs(60)).await;
        assert_eq!(seen.failures, 0, "{seen:?}");
        // The expand message and five items, each in two events.
        assert_eq!((seen.events, seen.records), (12, 12), "{seen:?}");

        let batch = get_batch(&setup, &id).await;
        assert_eq!(batch["status"], "completed", "{batch}");
        assert_eq!(counts(&batch), (5, 5, 0), "{batch}");
        let output = file_records(&setup, &batch["output_file_id"]).await;
        assert_eq!(output.len(), 5);
        assert!(batch["error_file_id"].is_null(), "{batch}");
        let billed: f64 = output
            .values()
            .map(|r| {
                r["response"]["body"]["usage"]["completion_tokens"]
                    .as_u64()
                    .unwrap() as f64
                    * 1000.0
                    / 1e6
            })
            .sum();
        assert!((billed - 5.0 * COST).abs() < 1e-9, "{billed}");
        let spent = spent(&setup).await;
        assert!(
            (spent - billed).abs() < 1e-9,
            "spent {spent}, items cost {billed}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_worker_dying_mid_batch_leaves_messages_that_come_back_and_complete_it_once() {
    within(120, async {
        let setup = setup("dies", BatchSettings::default(), 1, None).await;
        let id = create_batch(&setup, &mock_lines(6)).await;
        let mut seen = Drained::default();
        let expand = receive_some(&setup).await;
        deliver(&setup, expand, Delivery::Once, &mut seen).await;
        // Items: some handled and deleted, some handled by a worker that died before Lambda
        // deleted them, the rest never handled (dropped with the dead worker).
        let mut items = Vec::new();
        while items.len() < 6 {
            items.extend(receive_some(&setup).await);
        }
        let unhandled = items.split_off(4);
        let died = items.split_off(2);
        deliver(&setup, items, Delivery::Once, &mut seen).await;
        deliver(&setup, died, Delivery::DiesBeforeDelete, &mut seen).await;
        drop(unhandled);
        let before = get_batch(&setup, &id).await;
        assert_eq!(before["status"], "in_progress", "{before}");

        // Their visibility timeout (1 s) passes and another worker gets them.
        let rest = drain(&setup, Delivery::Once, Duration::from_secs(60)).await;
        assert!(rest.max_receive_count >= 2, "{rest:?}");
        let batch = get_batch(&setup, &id).await;
        assert_eq!(batch["status"], "completed", "{batch}");
        assert_eq!(counts(&batch), (6, 6, 0), "{batch}");
        let output = file_records(&setup, &batch["output_file_id"]).await;
        assert_eq!(output.len(), 6);
        assert!((spent(&setup).await - 6.0 * COST).abs() < 1e-9);
    })
    .await;
}

#[tokio::test]
async fn provider_429s_defer_items_without_spending_receives_until_they_succeed() {
    within(120, async {
        let settings = BatchSettings {
            max_receives: 2,
            ..BatchSettings::default()
        };
        let setup = setup("throttled", settings, 30, None).await;
        // `throttled` answers 429 (Retry-After: 1) to its first four calls, then normally: the
        // item is throttled twice as often as the queue's max receive count.
        let mut lines = mock_lines(2);
        lines.push(line("limited", "throttled", PROMPT));
        let id = create_batch(&setup, &lines).await;
        let seen = drain(&setup, Delivery::Once, Duration::from_secs(90)).await;
        assert_eq!(seen.failures, 0, "deferred, not failed: {seen:?}");
        assert_eq!(seen.max_receive_count, 1, "no receive spent: {seen:?}");
        // The expand message, three items, and the throttled item re-sent four times.
        assert_eq!(seen.records, 1 + 3 + 4, "{seen:?}");

        let batch = get_batch(&setup, &id).await;
        assert_eq!(batch["status"], "completed", "{batch}");
        assert_eq!(counts(&batch), (3, 3, 0), "{batch}");
        let output = file_records(&setup, &batch["output_file_id"]).await;
        assert_eq!(output["limited"]["response"]["status_code"], 200);
        assert!(dead_letters(&setup, 1).await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn poison_messages_go_to_the_dead_letter_queue_with_the_reason() {
    within(60, async {
        let setup = setup("poison", BatchSettings::default(), 30, None).await;
        let future = json!({"type": "expand", "version": 2, "tenant": "t", "batch_id": "b"});
        setup
            .batch
            .queue
            .send(&["not json".to_owned(), future.to_string()], 0)
            .await
            .unwrap();
        let seen = drain(&setup, Delivery::Once, Duration::from_secs(30)).await;
        assert_eq!(seen.records, 2, "{seen:?}");
        assert_eq!(seen.failures, 0, "{seen:?}");
        let mut dead = dead_letters(&setup, 2).await;
        dead.sort();
        assert_eq!(dead.len(), 2, "{dead:?}");
        assert_eq!(dead[0].0, "not json");
        assert!(dead[0].1.contains("not a batch message"), "{dead:?}");
        assert_eq!(dead[1].0, future.to_string());
        assert!(dead[1].1.contains("version 2"), "{dead:?}");
    })
    .await;
}

#[tokio::test]
async fn a_budget_spent_mid_batch_fails_the_remaining_items_and_is_never_exceeded() {
    within(120, async {
        // $0.006 buys two answers.
        let budget = 2.0 * COST;
        let setup = setup("budget", BatchSettings::default(), 30, Some(budget)).await;
        let id = create_batch(&setup, &mock_lines(5)).await;
        let seen = drain(&setup, Delivery::Once, Duration::from_secs(60)).await;
        assert_eq!(seen.failures, 0, "{seen:?}");
        let batch = get_batch(&setup, &id).await;
        assert_eq!(batch["status"], "completed", "{batch}");
        assert_eq!(counts(&batch), (5, 2, 3), "{batch}");
        let errors = file_records(&setup, &batch["error_file_id"]).await;
        assert_eq!(errors.len(), 3);
        for record in errors.values() {
            assert_eq!(record["response"]["status_code"], 429, "{record}");
            assert_eq!(
                record["response"]["body"]["error"]["code"], "budget_exceeded",
                "{record}"
            );
        }
        let spent = spent(&setup).await;
        assert!(spent <= budget + 1e-9, "spent {spent} of {budget}");
        assert!((spent - budget).abs() < 1e-9, "spent {spent} of {budget}");
    })
    .await;
}

#[tokio::test]
async fn a_batch_cancelled_mid_way_ends_cancelled() {
    within(120, async {
        let setup = setup("cancel", BatchSettings::default(), 1, None).await;
        let id = create_batch(&setup, &mock_lines(5)).await;
        let mut seen = Drained::default();
        let expand = receive_some(&setup).await;
        deliver(&setup, expand, Delivery::Once, &mut seen).await;
        let mut items = receive_some(&setup).await;
        items.truncate(2);
        let ran: Vec<String> = items
            .iter()
            .map(|m| serde_json::from_str::<Value>(&m.body).unwrap()["custom_id"].to_string())
            .collect();
        deliver(&setup, items, Delivery::Once, &mut seen).await;

        let cancelling = batches_api::cancel_batch(&setup.batch, &setup.key.tenant, &id)
            .await
            .unwrap();
        assert_eq!(cancelling["status"], "cancelling", "{cancelling}");
        drain(&setup, Delivery::Once, Duration::from_secs(60)).await;
        let batch = get_batch(&setup, &id).await;
        assert_eq!(batch["status"], "cancelled", "{batch}");
        assert_eq!(counts(&batch), (5, 2, 3), "{batch}");
        let output = file_records(&setup, &batch["output_file_id"]).await;
        let mut done: Vec<String> = output.keys().map(|k| json!(k).to_string()).collect();
        done.sort();
        let mut ran = ran;
        ran.sort();
        assert_eq!(done, ran);
        let errors = file_records(&setup, &batch["error_file_id"]).await;
        assert_eq!(errors.len(), 3);
        assert!(
            errors
                .values()
                .all(|r| r["error"]["code"] == "batch_cancelled"),
            "{errors:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn the_scheduled_sweep_expires_a_batch_past_its_window() {
    within(120, async {
        let setup = setup("expire", BatchSettings::default(), 30, None).await;
        let id = create_batch(&setup, &mock_lines(3)).await;
        let mut seen = Drained::default();
        let expand = receive_some(&setup).await;
        deliver(&setup, expand, Delivery::Once, &mut seen).await;

        // The completion window ends (compare-and-swap, as every writer of a batch does).
        use gateway::batch::store::BatchStore;
        let (mut record, _) = setup
            .store
            .get_batch(&setup.key.tenant, &id)
            .await
            .unwrap()
            .unwrap();
        record.expires_at = now_secs() - 1;
        record.version += 1;
        assert!(setup.store.update_batch(&record).await.unwrap());

        let sweep = handle_event(&setup.worker, fixture("example-eventbridge-schedule.json"))
            .await
            .unwrap();
        assert_eq!(sweep, json!({"expired": 1}));
        drain(&setup, Delivery::Once, Duration::from_secs(60)).await;
        let batch = get_batch(&setup, &id).await;
        assert_eq!(batch["status"], "expired", "{batch}");
        assert_eq!(counts(&batch), (3, 0, 3), "{batch}");
        let errors = file_records(&setup, &batch["error_file_id"]).await;
        assert_eq!(errors.len(), 3);
        assert!(
            errors
                .values()
                .all(|r| r["error"]["code"] == "batch_expired"),
            "{errors:?}"
        );
        assert_eq!(spent(&setup).await, 0.0);
    })
    .await;
}

#[tokio::test]
async fn a_transient_failure_on_the_last_receive_is_recorded_so_the_batch_completes() {
    within(120, async {
        let settings = BatchSettings {
            max_receives: 2,
            ..BatchSettings::default()
        };
        let setup = setup("last-receive", settings, 1, None).await;
        let mut lines = mock_lines(1);
        lines.push(line("down", "broken", PROMPT));
        let id = create_batch(&setup, &lines).await;
        let seen = drain(&setup, Delivery::Once, Duration::from_secs(60)).await;
        // Left for redelivery once (a 502 may pass), recorded on its second and last receive.
        assert_eq!(seen.failures, 1, "{seen:?}");
        assert_eq!(seen.max_receive_count, 2, "{seen:?}");
        let batch = get_batch(&setup, &id).await;
        assert_eq!(batch["status"], "completed", "{batch}");
        assert_eq!(counts(&batch), (2, 1, 1), "{batch}");
        let errors = file_records(&setup, &batch["error_file_id"]).await;
        assert_eq!(errors["down"]["response"]["status_code"], 502, "{errors:?}");
        assert!(dead_letters(&setup, 1).await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_direct_request_is_answered_by_job_and_custom_id_and_an_unknown_key_is_dead_lettered() {
    within(60, async {
        let setup = setup("direct", BatchSettings::default(), 30, None).await;
        let request = |key_id: &str| {
            json!({"type": "request", "version": 1, "key_id": key_id, "job_id": "nightly-7",
                   "custom_id": "q-1", "url": "/v1/chat/completions",
                   "body": {"model": "mock", "max_tokens": 3,
                            "messages": [{"role": "user", "content": PROMPT}]}})
            .to_string()
        };
        let unknown = request("key_nobody");
        setup
            .batch
            .queue
            .send(&[request(&setup.key.id), unknown.clone()], 0)
            .await
            .unwrap();
        let seen = drain(&setup, Delivery::Once, Duration::from_secs(30)).await;
        assert_eq!(seen.failures, 0, "{seen:?}");

        let text = batches_api::results(&setup.batch, &setup.key.tenant, "nightly-7", Some("q-1"))
            .await
            .unwrap();
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len(), 1, "{text}");
        assert_eq!(records[0]["custom_id"], "q-1");
        assert_eq!(records[0]["response"]["status_code"], 200, "{text}");
        assert!((spent(&setup).await - COST).abs() < 1e-9);

        let dead = dead_letters(&setup, 1).await;
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].0, unknown);
        assert!(dead[0].1.contains("key_id"), "{dead:?}");
    })
    .await;
}

#[tokio::test]
async fn an_answer_too_large_for_the_batch_table_is_recorded_as_its_error() {
    within(90, async {
        let setup = setup("too-large", BatchSettings::default(), 30, None).await;
        // Four choices, each echoing 190 KB of words that do not repeat: about 760 KB of
        // answer that deflates poorly, over what a DynamoDB item holds.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut words = Vec::new();
        let mut length = 0;
        while length < 190_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let word = format!("{:x}", seed >> 16);
            length += word.len() + 1;
            words.push(word);
        }
        let request = json!({"type": "request", "version": 1, "key_id": setup.key.id,
            "job_id": "huge", "custom_id": "big", "url": "/v1/chat/completions",
            "body": {"model": "mock", "n": 4,
                     "messages": [{"role": "user", "content": words.join(" ")}]}})
        .to_string();
        setup.batch.queue.send(&[request], 0).await.unwrap();
        let seen = drain(&setup, Delivery::Once, Duration::from_secs(60)).await;
        assert_eq!(seen.failures, 0, "{seen:?}");
        let text = batches_api::results(&setup.batch, &setup.key.tenant, "huge", Some("big"))
            .await
            .unwrap();
        let record: Value = serde_json::from_str(text.trim()).unwrap();
        let head: String = text.chars().take(300).collect();
        assert_eq!(record["error"]["code"], "response_too_large", "{head}");
        let job = get_batch(&setup, "huge").await;
        assert_eq!(counts(&job), (1, 0, 1));
    })
    .await;
}

#[tokio::test]
async fn the_sweep_closes_an_expired_batch_whose_items_were_lost() {
    within(120, async {
        let setup = setup("stalled", BatchSettings::default(), 30, None).await;
        let id = create_batch(&setup, &mock_lines(3)).await;
        let mut seen = Drained::default();
        let expand = receive_some(&setup).await;
        deliver(&setup, expand, Delivery::Once, &mut seen).await;
        // The items never run: as if SQS had dead-lettered them after repeated Lambda timeouts
        // (its redrive runs no code).
        let mut lost = 0;
        while lost < 3 {
            for message in receive_some(&setup).await {
                setup.batch.queue.delete(&message.handle).await.unwrap();
                lost += 1;
            }
        }

        // The window ended longer ago than the sweep's grace for items still in flight.
        use gateway::batch::store::BatchStore;
        let (mut record, _) = setup
            .store
            .get_batch(&setup.key.tenant, &id)
            .await
            .unwrap()
            .unwrap();
        let long_ago = now_secs() - 3600;
        record.expires_at = long_ago;
        record.expired_at = Some(long_ago);
        record.version += 1;
        assert!(setup.store.update_batch(&record).await.unwrap());

        handle_event(&setup.worker, fixture("example-eventbridge-schedule.json"))
            .await
            .unwrap();
        let batch = get_batch(&setup, &id).await;
        assert_eq!(batch["status"], "expired", "{batch}");
        assert_eq!(counts(&batch), (3, 0, 3), "{batch}");
        let errors = file_records(&setup, &batch["error_file_id"]).await;
        assert!(
            errors
                .values()
                .all(|r| r["error"]["code"] == "batch_expired"),
            "{errors:?}"
        );
    })
    .await;
}
