//! API keys, scopes, admin routes and per-key limits, through the router.

use std::sync::Arc;

use crate::common::{MockUpstream, TestGateway, chat, now_secs, test_config, within};
use futures_util::StreamExt;
use gateway::keys::NewKey;
use serde_json::json;

async fn gateway() -> (MockUpstream, TestGateway) {
    let upstream = MockUpstream::start(&[]);
    let gateway = TestGateway::start(&test_config(&upstream.url)).await;
    (upstream, gateway)
}

fn new_key(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
        ..NewKey::default()
    }
}

#[tokio::test]
async fn missing_unknown_expired_and_revoked_keys_get_401() {
    within(30, async {
        let (_upstream, gw) = gateway().await;
        let body = chat("mock", "hi");
        let no_key = gw
            .send(
                gw.http
                    .post(format!("{}/v1/chat/completions", gw.url))
                    .body(body.to_string()),
            )
            .await;
        assert_eq!(no_key.status, 401);
        assert_eq!(no_key.json()["error"]["code"], "invalid_api_key");

        let unknown = gw.post("/v1/chat/completions", "gw-nope", &body).await;
        assert_eq!(unknown.status, 401);

        let (expired, _) = gw
            .key(NewKey {
                expires_at: Some(now_secs() - 1),
                ..new_key("old")
            })
            .await;
        let reply = gw.post("/v1/chat/completions", &expired, &body).await;
        assert_eq!(reply.status, 401);
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("expired")
        );

        let (admin, _) = gw
            .key(NewKey {
                admin: true,
                ..new_key("admin")
            })
            .await;
        let (doomed, record) = gw.key(new_key("doomed")).await;
        assert_eq!(
            gw.post("/v1/chat/completions", &doomed, &body).await.status,
            200
        );
        let revoke = gw
            .send(
                gw.http
                    .delete(format!("{}/v1/admin/keys/{}", gw.url, record.id))
                    .bearer_auth(&admin),
            )
            .await;
        assert_eq!(revoke.status, 200);
        // Revoking through the gateway applies at once, despite the key cache.
        let reply = gw.post("/v1/chat/completions", &doomed, &body).await;
        assert_eq!(reply.status, 401);
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("revoked")
        );
    })
    .await;
}

#[tokio::test]
async fn a_model_outside_the_key_scope_gets_403() {
    within(30, async {
        let (_upstream, gw) = gateway().await;
        let (scoped, _) = gw
            .key(NewKey {
                models: vec!["mock".into()],
                ..new_key("scoped")
            })
            .await;
        assert_eq!(
            gw.post("/v1/chat/completions", &scoped, &chat("mock", "hi"))
                .await
                .status,
            200
        );
        let denied = gw
            .post("/v1/chat/completions", &scoped, &chat("gpt", "hi"))
            .await;
        assert_eq!(denied.status, 403);
        assert_eq!(denied.json()["error"]["type"], "permission_error");
        let denied = gw
            .post(
                "/v1/embeddings",
                &scoped,
                &json!({"model": "mock-embed", "input": "x"}),
            )
            .await;
        assert_eq!(denied.status, 403);
    })
    .await;
}

#[tokio::test]
async fn admin_routes_create_list_and_need_an_admin_key() {
    within(30, async {
    let (_upstream, gw) = gateway().await;
    let (admin, _) = gw
        .key(NewKey {
            admin: true,
            ..new_key("admin")
        })
        .await;
    let (user, _) = gw.key(new_key("user")).await;
    let created = gw
        .post(
            "/v1/admin/keys",
            &admin,
            &json!({"name": "svc", "models": ["mock"], "rpm": 10, "budget_usd": 5.0, "tenant": "acme"}),
        )
        .await;
    assert_eq!(created.status, 201);
    let created = created.json();
    let secret = created["key"].as_str().unwrap().to_owned();
    assert_eq!(created["tenant"], "acme");
    assert_eq!(
        gw.post("/v1/chat/completions", &secret, &chat("mock", "hi"))
            .await
            .status,
        200
    );
    let listed = gw
        .send(
            gw.http
                .get(format!("{}/v1/admin/keys", gw.url))
                .bearer_auth(&admin),
        )
        .await
        .json();
    let names: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"svc"));
    assert!(
        !listed.to_string().contains(&secret),
        "secrets are never listed"
    );

    let forbidden = gw
        .post("/v1/admin/keys", &user, &json!({"name": "x"}))
        .await;
    assert_eq!(forbidden.status, 403);
    let bad = gw
        .post(
            "/v1/admin/keys",
            &admin,
            &json!({"name": "x", "rpm": "lots"}),
        )
        .await;
    assert_eq!(bad.status, 400);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rpm_admits_exactly_the_limit_among_parallel_requests() {
    within(30, async {
        let (_upstream, gw) = gateway().await;
        let (key, _) = gw
            .key(NewKey {
                rpm: Some(7),
                ..new_key("rpm")
            })
            .await;
        let gw = Arc::new(gw);
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let (gw, key) = (Arc::clone(&gw), key.clone());
                tokio::spawn(async move {
                    gw.post(
                        "/v1/chat/completions",
                        &key,
                        &chat("mock", &format!("n{i}")),
                    )
                    .await
                })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            let reply = task.await.unwrap();
            match reply.status {
                200 => ok += 1,
                429 => {
                    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
                    assert!((1..=60).contains(&retry));
                    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
                }
                other => panic!("unexpected status {other}"),
            }
        }
        // A test straddling a minute boundary may see a fresh window; both outcomes are exact.
        assert!(ok == 7 || ok == 14, "admitted {ok}");
    })
    .await;
}

#[tokio::test]
async fn tpm_counts_the_prompt_estimate_and_max_tokens() {
    within(30, async {
        let (_upstream, gw) = gateway().await;
        let (key, _) = gw
            .key(NewKey {
                tpm: Some(100),
                ..new_key("tpm")
            })
            .await;
        let mut big = chat("mock", "hello");
        big["max_tokens"] = json!(150);
        let refused = gw.post("/v1/chat/completions", &key, &big).await;
        assert_eq!(refused.status, 429);
        assert!(
            refused.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("tokens per minute")
        );
        let mut small = chat("mock", "hello");
        small["max_tokens"] = json!(20);
        assert_eq!(
            gw.post("/v1/chat/completions", &key, &small).await.status,
            200
        );
    })
    .await;
}

#[tokio::test]
async fn budget_refuses_requests_once_spent_including_streams() {
    within(30, async {
        let (_upstream, gw) = gateway().await;
        // The mock model costs $1000/M input and $2000/M output. Each request below is estimated at
        // $0.02 (10 prompt tokens, 5 output tokens) and costs about $0.012: the budget admits the
        // first two, and a third only if its estimate fits in what they left.
        let (key, record) = gw
            .key(NewKey {
                budget_usd: Some(0.05),
                ..new_key("budget")
            })
            .await;
        let mut streamed = chat("mock", "spend some");
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        streamed["max_tokens"] = json!(5);
        let first = gw.post("/v1/chat/completions", &key, &streamed).await;
        assert_eq!(first.status, 200);
        assert_eq!(first.sse_data().last().map(String::as_str), Some("[DONE]"));
        // The stream is billed for its own usage, at the model's price, before anything else.
        let usage = first.sse_chunks().last().expect("chunks")["usage"].clone();
        let (prompt, completion) = (
            usage["prompt_tokens"].as_f64().expect("prompt tokens"),
            usage["completion_tokens"]
                .as_f64()
                .expect("completion tokens"),
        );
        assert_eq!(completion, 5.0, "{usage}");
        let stream_cost = (prompt * 1000.0 + completion * 2000.0) / 1e6;
        let spent = gw.spent(&record.id).await;
        assert!(
            (spent - stream_cost).abs() < 1e-12,
            "the stream's spend {spent} is not its cost {stream_cost}"
        );

        let mut plain = chat("mock", "spend more");
        plain["max_tokens"] = json!(5);
        let mut replies = Vec::new();
        for _ in 0..3 {
            replies.push(gw.post("/v1/chat/completions", &key, &plain).await);
        }
        let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 200, 429]);
        let refused = &replies[2];
        assert_eq!(refused.error_code().as_deref(), Some("budget_exceeded"));
        assert!(refused.header("retry-after").is_some());

        // What is persisted for the next start is the stream's cost plus the two answers'.
        let plain_costs: f64 = replies[..2]
            .iter()
            .map(|r| {
                r.header("x-gateway-cost-usd")
                    .and_then(|c| c.parse::<f64>().ok())
                    .expect("a cost header")
            })
            .sum();
        let spent = gw.spent(&record.id).await;
        let expected = stream_cost + plain_costs;
        assert!((spent - expected).abs() < 1e-7, "{spent} vs {expected}");
    })
    .await;
}

#[tokio::test]
async fn budget_refuses_a_request_whose_own_estimate_does_not_fit() {
    within(30, async {
        let (_upstream, gw) = gateway().await;
        let (key, record) = gw
            .key(NewKey {
                budget_usd: Some(0.05),
                ..new_key("small-budget")
            })
            .await;
        // Nothing is spent yet, but 100 output tokens at $2000/M ($0.2) do not fit in $0.05.
        let mut costly = chat("mock", "hi");
        costly["max_tokens"] = json!(100);
        let refused = gw.post("/v1/chat/completions", &key, &costly).await;
        assert_eq!(refused.status, 429);
        assert_eq!(refused.error_code().as_deref(), Some("budget_exceeded"));
        // The issue's request, estimated at about $1,100,000: never admitted (whether the
        // budget or a cap on `max_tokens` refuses it).
        let mut huge = chat("mock", "hi");
        huge["max_tokens"] = json!(4_294_967_295u64);
        huge["n"] = json!(128);
        let refused = gw.post("/v1/chat/completions", &key, &huge).await;
        assert!(
            matches!(refused.status, 400 | 429),
            "{}: {}",
            refused.status,
            String::from_utf8_lossy(&refused.body)
        );
        // The refusals reserved nothing: a request that fits is admitted, and it alone is spent.
        let mut small = chat("mock", "hi");
        small["max_tokens"] = json!(5);
        let admitted = gw.post("/v1/chat/completions", &key, &small).await;
        assert_eq!(admitted.status, 200);
        let cost: f64 = admitted
            .header("x-gateway-cost-usd")
            .and_then(|c| c.parse().ok())
            .expect("a cost header");
        let spent = gw.spent(&record.id).await;
        assert!(
            cost > 0.0 && (spent - cost).abs() < 1e-7,
            "{spent} vs {cost}"
        );
    })
    .await;
}

/// Every request reserves what it uses (see `exact_request`), so the number admitted from a
/// parallel burst is exact whatever the order in which they settle. The price makes each answer
/// cost $0.375, which binary floating point holds exactly, as it does every sum of them.
const EXACT_CONFIG: &str = r#"
[providers.mock]
kind = "mock"
latency_ms = 200

[models.mock]
deployments = [{ provider = "mock", model = "mock" }]
price = { input_per_mtok = 0, output_per_mtok = 125000 }
"#;

/// Fourteen one-letter words: the prompt estimate (27 characters / 4, rounded up, plus 4 per
/// message and 3) is 14 tokens, what the mock counts (one per word); with `max_tokens = 3` the
/// mock answers exactly 3 tokens. Each request reserves and uses 17 tokens and costs $0.375.
fn exact_request() -> serde_json::Value {
    json!({"model": "mock", "max_tokens": 3, "messages": [{"role": "user", "content": "a a a a a a a a a a a a a a"}]})
}

/// Sends `count` identical requests at once; (admitted, refused with `code`).
async fn parallel_burst(
    gw: &Arc<TestGateway>,
    key: &str,
    count: usize,
    code: &str,
) -> (usize, usize) {
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let (gw, key) = (Arc::clone(gw), key.to_owned());
            tokio::spawn(async move {
                gw.post("/v1/chat/completions", &key, &exact_request())
                    .await
            })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for task in tasks {
        let reply = task.await.expect("task");
        match reply.status {
            200 => admitted += 1,
            429 => {
                assert_eq!(reply.error_code().as_deref(), Some(code));
                refused += 1;
            }
            other => panic!(
                "unexpected {other}: {}",
                String::from_utf8_lossy(&reply.body)
            ),
        }
    }
    (admitted, refused)
}

fn minute_now() -> u64 {
    now_secs() / 60
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpm_admits_exactly_what_fits_among_parallel_requests() {
    within(30, async {
        let gw = Arc::new(TestGateway::start(EXACT_CONFIG).await);
        // 510 tokens a minute: exactly 30 requests of 17. A burst that straddles a minute
        // boundary is sent again with a fresh key.
        for attempt in 0..2 {
            let (key, _) = gw
                .key(NewKey {
                    tpm: Some(510),
                    ..new_key("tpm-burst")
                })
                .await;
            let minute = minute_now();
            let counts = parallel_burst(&gw, &key, 100, "rate_limit_exceeded").await;
            if minute_now() == minute {
                assert_eq!(counts, (30, 70));
                return;
            }
            eprintln!("burst {attempt} straddled a minute boundary");
        }
        panic!("both bursts straddled a minute boundary");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_admits_exactly_what_fits_among_parallel_requests() {
    within(30, async {
        let gw = Arc::new(TestGateway::start(EXACT_CONFIG).await);
        // $7.50 buys exactly 20 requests of $0.375.
        let (key, record) = gw
            .key(NewKey {
                budget_usd: Some(7.5),
                ..new_key("budget-burst")
            })
            .await;
        assert_eq!(
            parallel_burst(&gw, &key, 100, "budget_exceeded").await,
            (20, 80)
        );
        let spent = gw.spent(&record.id).await;
        assert_eq!(spent, 7.5);
        assert_eq!(
            parallel_burst(&gw, &key, 5, "budget_exceeded").await,
            (0, 5)
        );
    })
    .await;
}

/// A stream the client leaves midway is billed for what was produced up to then: more than
/// nothing, far less than the whole answer, and its reservation is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_abandons_is_billed_for_what_was_produced() {
    within(30, async {
        // 400 words at 50 ms each: 20 s for the whole answer.
        let upstream = MockUpstream::start(&["--chunk-delay-ms", "50"]);
        // $1 per output token, nothing for the prompt: the spend counts the tokens produced.
        let config = format!(
            "{}\n[models.words]\ndeployments = [{{ provider = \"upstream\", model = \"fault:tokens=400\" }}]\nprice = {{ input_per_mtok = 0, output_per_mtok = 1000000 }}\n",
            test_config(&upstream.url)
        );
        let gw = TestGateway::start(&config).await;
        // Each request reserves its 1000 output tokens ($1000): the budget holds one at a time.
        let (key, record) = gw
            .key(NewKey {
                budget_usd: Some(1500.0),
                ..new_key("abandons")
            })
            .await;
        let mut body = chat("words", "talk to me");
        body["stream"] = json!(true);
        body["max_tokens"] = json!(1000);
        let response = gw
            .http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status().as_u16(), 200);
        let mut received = String::new();
        let mut events = response.bytes_stream();
        while received.matches("\"content\"").count() < 10 {
            let chunk = events.next().await.expect("more events").expect("bytes");
            received.push_str(&String::from_utf8_lossy(&chunk));
        }
        drop(events);
        let received_chars: usize = received
            .split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
            .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::len))
            .sum();

        let started = std::time::Instant::now();
        let spent = loop {
            let spent = gw
                .gateway
                .limiter
                .spent_usd(&record.id, now_secs())
                .await
                .expect("spend");
            if spent > 0.0 {
                break spent;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "the abandoned stream was never billed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        // A stream cut before its usage is counted at about 4 characters a token: at least what
        // the client received, far less than the whole answer (over 450).
        let received_tokens = received_chars.div_ceil(4) as f64;
        assert!(
            spent >= received_tokens && spent < 200.0,
            "billed ${spent} for {received_chars} characters received"
        );
        assert_eq!(gw.spent(&record.id).await, spent);
        // Its $1000 reservation was released: another request of the same size fits.
        let mut again = chat("words", "again");
        again["max_tokens"] = json!(1000);
        let reply = gw.post("/v1/chat/completions", &key, &again).await;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    })
    .await;
}
