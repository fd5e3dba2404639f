//! Usage reports after a mixed run: plain, streamed, cached, a cut stream, a fallback, embeddings,
//! the Messages API and a batch item, on the embedded store and on DynamoDB (moto). The report
//! must add up, to the nano-dollar, to what each request cost: the `x-gateway-cost-usd` headers,
//! the usage of streams and batch outputs at the model's price, and for the cut stream (whose
//! cost no client sees) what it added to the key's spend.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gateway::batch::BatchBackends;
use gateway::batch::worker::Worker;
use gateway::keys::NewKey;
use gateway::limits::dynamo::DynamoLimiter;
use gateway::limits::to_nano_usd;
use gateway::pipeline::batch::PipelineRunner;
use gateway::storage::dynamo::{DynamoConfig, create_tables};
use gateway::usage::dynamo::DynamoUsageStore;
use serde_json::{Value, json};

use crate::common::batch::{content, create_batch, finished, line, upload};
use crate::common::moto::Moto;
use crate::common::{MockUpstream, TestGateway, chat, now_secs, test_config, within};

/// Nano-dollars per token of the models the run uses (`test_config` prices, and `cut` below).
fn nano_per_token(model: &str) -> (i64, i64) {
    match model {
        "mock" => (1_000_000, 2_000_000),
        "gpt" => (1_000, 2_000),
        _ => panic!("no price for {model}"),
    }
}

/// A `x-gateway-cost-usd` value (a decimal USD amount) in nano-dollars, exactly.
fn header_nano(text: &str) -> i64 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    assert!(fraction.len() <= 9, "{text}");
    let fraction = format!("{fraction:0<9}");
    whole.parse::<i64>().expect("whole") * 1_000_000_000
        + fraction.parse::<i64>().expect("fraction")
}

fn usage_nano(model: &str, prompt: &Value, completion: &Value) -> i64 {
    let (input, output) = nano_per_token(model);
    let tokens = |v: &Value| i64::try_from(v.as_u64().expect("a token count")).expect("fits");
    tokens(prompt) * input + tokens(completion) * output
}

static NEXT: AtomicU64 = AtomicU64::new(0);

enum Store {
    Embedded,
    Dynamo,
}

/// A gateway over `store`, with the batch worker running in process over the embedded queue
/// (on DynamoDB the items settle through the DynamoDB limiter, as the batch function's do).
async fn start(store: Store, upstream: &MockUpstream) -> (TestGateway, Option<Arc<Moto>>) {
    let config = format!(
        "{}\n[models.cut]\ndeployments = [{{ provider = \"upstream\", model = \"fault:tokens=60;cut_after=40\" }}]\nprice = {{ input_per_mtok = 1000, output_per_mtok = 2000 }}\n",
        test_config(&upstream.url)
    );
    let dynamo = match store {
        Store::Embedded => None,
        Store::Dynamo => {
            let moto = Moto::shared();
            let name = format!(
                "usage-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            );
            let tables = DynamoConfig {
                keys_table: format!("{name}-keys"),
                limits_table: format!("{name}-limits"),
                cache_table: format!("{name}-cache"),
                limits_failure_policy: Default::default(),
            };
            create_tables(&moto.client(), &tables)
                .await
                .expect("tables");
            Some((moto, tables))
        }
    };
    let aws = dynamo
        .as_ref()
        .map(|(moto, tables)| (moto.client(), tables.clone()));
    let gw = TestGateway::start_with(
        &config,
        std::future::pending(),
        move |gateway, store, dir| {
            gateway.batch = Some(BatchBackends::embedded(store, dir, |_| None).expect("batch"));
            if let Some((client, tables)) = aws {
                gateway.limiter = Arc::new(DynamoLimiter::new(client.clone(), &tables));
                gateway.usage = Some(Arc::new(DynamoUsageStore::new(client, &tables)));
            }
        },
    )
    .await;
    let gateway = Arc::clone(&gw.gateway);
    let worker = Worker::new(
        gateway.batch.clone().expect("batch"),
        Arc::clone(gateway.auth.store()),
        Arc::new(PipelineRunner(Arc::clone(&gateway))),
    );
    tokio::spawn(Arc::new(worker).run());
    (gw, dynamo.map(|(moto, _)| moto))
}

/// The key's spend this month in nano-dollars, once settling is done.
async fn spent_nano(gw: &TestGateway, key_id: &str) -> i64 {
    gw.gateway.background.idle().await;
    let spent = gw
        .gateway
        .limiter
        .spent_usd(key_id, now_secs())
        .await
        .expect("spend");
    to_nano_usd(spent)
}

fn deterministic(model: &str, text: &str) -> Value {
    let mut body = chat(model, text);
    body["temperature"] = json!(0);
    body
}

async fn mixed_run_is_reported_to_the_nano_dollar(store: Store) {
    let upstream = MockUpstream::start(&[]);
    let (gw, _moto) = start(store, &upstream).await;
    let (key, record) = gw
        .key(NewKey {
            name: "usage".into(),
            ..NewKey::default()
        })
        .await;
    let mut costs: Vec<(&str, i64)> = Vec::new();
    let header = |reply: &crate::common::Reply| {
        header_nano(reply.header("x-gateway-cost-usd").expect("a cost header"))
    };

    // Plain, then the same again from the cache: billed nothing, but a request all the same.
    let body = deterministic("mock", "count these words please");
    let plain = gw.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(plain.status, 200, "{:?}", plain.body);
    assert_eq!(plain.header("x-gateway-cache"), Some("MISS"));
    costs.push(("plain", header(&plain)));
    let hit = gw.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(hit.header("x-gateway-cache"), Some("HIT"));
    costs.push(("cache hit", header(&hit)));

    // Streamed: its cost is its usage chunk at the model's price.
    let mut streamed = chat("mock", "stream some words");
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let stream = gw.post("/v1/chat/completions", &key, &streamed).await;
    let usage = stream.sse_chunks().last().expect("chunks")["usage"].clone();
    costs.push((
        "stream",
        usage_nano("mock", &usage["prompt_tokens"], &usage["completion_tokens"]),
    ));

    // A fallback: `flaky` fails and `gpt` answers, and is the model billed.
    let fallback = gw
        .post("/v1/chat/completions", &key, &chat("flaky", "fall back"))
        .await;
    assert_eq!(fallback.header("x-gateway-model"), Some("gpt"));
    costs.push(("fallback", header(&fallback)));

    // Embeddings and the Messages API share the settlement.
    let embedding = gw
        .post(
            "/v1/embeddings",
            &key,
            &json!({"model": "mock-embed", "input": ["one two three", "four five"]}),
        )
        .await;
    assert_eq!(embedding.status, 200, "{:?}", embedding.body);
    costs.push(("embeddings", header(&embedding)));
    let message = gw
        .post(
            "/v1/messages",
            &key,
            &json!({"model": "mock", "max_tokens": 20,
                    "messages": [{"role": "user", "content": "hello there"}]}),
        )
        .await;
    assert_eq!(message.status, 200, "{:?}", message.body);
    let usage = message.json()["usage"].clone();
    costs.push((
        "messages",
        usage_nano("mock", &usage["input_tokens"], &usage["output_tokens"]),
    ));

    // A batch of two items: each output's usage at the model's price.
    let lines = [
        line("first", "mock", "batch item one"),
        line("second", "mock", "batch item two words"),
    ];
    let file = upload(&gw.url, &key, lines.join("\n")).await;
    let batch = create_batch(&gw.url, &key, file["id"].as_str().expect("file id")).await;
    let done = finished(&gw.url, &key, batch["id"].as_str().expect("batch id")).await;
    assert_eq!(done["status"], "completed", "{done}");
    let output = content(
        &gw.url,
        &key,
        done["output_file_id"].as_str().expect("output"),
    )
    .await;
    assert_eq!(output.len(), 2);
    for record in &output {
        let usage = &record["response"]["body"]["usage"];
        costs.push((
            "batch item",
            usage_nano("mock", &usage["prompt_tokens"], &usage["completion_tokens"]),
        ));
    }

    // A cut stream: billed what it observed, which only the spend shows.
    let before = spent_nano(&gw, &record.id).await;
    let mut cut = chat("cut", "tell me sixty words");
    cut["stream"] = json!(true);
    let reply = gw.post("/v1/chat/completions", &key, &cut).await;
    assert!(
        !reply.sse_data().contains(&"[DONE]".to_owned()),
        "the stream is cut"
    );
    let cut_cost = spent_nano(&gw, &record.id).await - before;
    assert!(cut_cost > 0, "a cut stream is billed what it used");
    costs.push(("cut stream", cut_cost));

    let expected: i64 = costs.iter().map(|(_, nano)| nano).sum();
    // The embedded store's writer commits every 100 ms: the report reads what it committed.
    gw.store.flush();
    let report = gw.get("/v1/usage", &key).await;
    assert_eq!(report.status, 200, "{:?}", report.body);
    let report = report.json();
    assert_eq!(
        report["total"]["cost_nano_usd"].as_i64(),
        Some(expected),
        "{costs:?} against {report}"
    );
    assert_eq!(report["total"]["requests"], 9, "{report}");
    assert_eq!(spent_nano(&gw, &record.id).await, expected);
    let by_model: HashMap<&str, &Value> = report["data"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| (row["model"].as_str().expect("model"), row))
        .collect();
    // Plain, its cache hit, the stream, the message and both batch items.
    assert_eq!(by_model["mock"]["requests"], 6, "{report}");
    assert_eq!(by_model["gpt"]["requests"], 1, "{report}");
    assert_eq!(by_model["cut"]["requests"], 1, "{report}");
    assert_eq!(by_model["mock-embed"]["requests"], 1, "{report}");
    assert!(!by_model.contains_key("flaky"), "{report}");
    assert_eq!(
        by_model["gpt"]["cost_nano_usd"].as_i64(),
        Some(costs[3].1),
        "the fallback is billed to the model that answered"
    );

    // The admin report says the same, as CSV too.
    let (admin, _) = gw
        .key(NewKey {
            name: "admin".into(),
            admin: true,
            ..NewKey::default()
        })
        .await;
    let csv = gw
        .get(
            &format!("/v1/admin/usage?key={}&format=csv", record.id),
            &admin,
        )
        .await;
    assert_eq!(csv.status, 200, "{:?}", csv.body);
    assert!(
        csv.header("content-type")
            .is_some_and(|t| t.starts_with("text/csv"))
    );
    let text = String::from_utf8(csv.body.to_vec()).expect("utf-8");
    let csv_total: i64 = text
        .lines()
        .skip(1)
        .map(|row| {
            let cells: Vec<&str> = row.split(',').collect();
            assert_eq!(cells[0], record.id, "{text}");
            cells[6].parse::<i64>().expect("cost_nano_usd")
        })
        .sum();
    assert_eq!(csv_total, expected, "{text}");
    let everyone = gw.get("/v1/admin/usage", &admin).await.json();
    assert_eq!(everyone["total"]["cost_nano_usd"].as_i64(), Some(expected));
}

#[tokio::test]
async fn a_mixed_run_is_reported_to_the_nano_dollar_in_the_embedded_store() {
    within(
        60,
        mixed_run_is_reported_to_the_nano_dollar(Store::Embedded),
    )
    .await;
}

#[tokio::test]
async fn a_mixed_run_is_reported_to_the_nano_dollar_in_dynamodb() {
    within(90, mixed_run_is_reported_to_the_nano_dollar(Store::Dynamo)).await;
}

/// A request whose first answer fails its JSON schema and is asked for again from the same
/// model: the report has one line for that model, one request, with both calls' tokens and cost.
async fn a_retry_on_the_same_model_is_reported_as_one_request_with_both_calls(store: Store) {
    let upstream = MockUpstream::start(&[]);
    let (gw, _moto) = start(store, &upstream).await;
    let (key, _) = gw
        .key(NewKey {
            name: "retried".into(),
            ..NewKey::default()
        })
        .await;
    let answers = ["Sure! {x: 1}", r#"{"x": 1, "y": 2}"#];
    let body = json!({
        "model": "mock",
        "messages": [{"role": "user", "content": format!("mock-answers: {}", json!(answers))}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "point", "strict": true,
            "schema": {"type": "object",
                "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                "required": ["x", "y"], "additionalProperties": false}}},
    });
    let reply = gw.post("/v1/chat/completions", &key, &body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let usage = reply.json()["usage"].clone();
    // 3 completion words, then 4: the response's usage covers both calls.
    assert_eq!(usage["completion_tokens"], 7, "{usage}");
    let cost = header_nano(reply.header("x-gateway-cost-usd").expect("a cost header"));
    assert_eq!(
        cost,
        usage_nano("mock", &usage["prompt_tokens"], &usage["completion_tokens"])
    );
    gw.gateway.background.idle().await;
    gw.store.flush();
    let report = gw.get("/v1/usage", &key).await.json();
    let rows = report["data"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{report}");
    let row = &rows[0];
    assert_eq!(
        (
            row["model"].as_str(),
            row["requests"].as_u64(),
            row["input_tokens"].as_u64(),
            row["output_tokens"].as_u64(),
            row["cost_nano_usd"].as_i64()
        ),
        (
            Some("mock"),
            Some(1),
            usage["prompt_tokens"].as_u64(),
            Some(7),
            Some(cost)
        ),
        "{report}"
    );
}

#[tokio::test]
async fn a_retry_on_the_same_model_is_reported_with_both_calls_in_the_embedded_store() {
    within(
        60,
        a_retry_on_the_same_model_is_reported_as_one_request_with_both_calls(Store::Embedded),
    )
    .await;
}

#[tokio::test]
async fn a_retry_on_the_same_model_is_reported_with_both_calls_in_dynamodb() {
    within(
        60,
        a_retry_on_the_same_model_is_reported_as_one_request_with_both_calls(Store::Dynamo),
    )
    .await;
}

#[tokio::test]
async fn usage_reports_refuse_bad_dates_and_keys_without_the_usage_scope() {
    within(30, async {
        let upstream = MockUpstream::start(&[]);
        let gw = TestGateway::start(&test_config(&upstream.url)).await;
        let key = gw.plain_key().await;
        for query in [
            "from=2026-02-30",
            "from=yesterday",
            "from=2026-12-02&to=2026-12-01",
            "from=2020-01-01&to=2026-01-01",
        ] {
            let reply = gw.get(&format!("/v1/usage?{query}"), &key).await;
            assert_eq!(reply.status, 400, "{query}: {:?}", reply.body);
            assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
        }
        let chat_only = gw
            .key(NewKey {
                name: "chat only".into(),
                scopes: vec![gateway::keys::Scope::Chat],
                ..NewKey::default()
            })
            .await
            .0;
        assert_eq!(gw.get("/v1/usage", &chat_only).await.status, 403);
        assert_eq!(gw.get("/v1/admin/usage", &key).await.status, 403);
    })
    .await;
}
