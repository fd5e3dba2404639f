//! API keys, scopes, admin routes and per-key limits, through the router.

use std::sync::Arc;

use crate::common::{MockUpstream, TestGateway, chat, now_secs, test_config, within};
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
        // The request, estimated at about $1,100,000: never admitted (whether the
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
