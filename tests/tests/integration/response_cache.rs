//! The response cache through the router: hits, bypasses, replay, partitioning, single flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Metrics, MockUpstream, TestGateway, chat, test_config, within};
use gateway::keys::NewKey;
use serde_json::json;

async fn gateway(mock_args: &[&str]) -> (MockUpstream, TestGateway, String) {
    let upstream = MockUpstream::start(mock_args);
    let gateway = TestGateway::start(&test_config(&upstream.url)).await;
    let key = gateway.plain_key().await;
    (upstream, gateway, key)
}

fn deterministic(model: &str, text: &str) -> serde_json::Value {
    let mut body = chat(model, text);
    body["temperature"] = json!(0);
    body
}

#[tokio::test]
async fn repeated_temperature_zero_request_is_a_hit_with_an_identical_body() {
    within(30, async {
        let (upstream, gw, key) = gateway(&[]).await;
        let body = deterministic("gpt", "cache me");
        let first = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(first.header("x-gateway-cache"), Some("MISS"));
        let second = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(second.header("x-gateway-cache"), Some("HIT"));
        assert_eq!(first.body, second.body);
        assert_eq!(upstream.requests().await, 1, "a hit makes no upstream call");
        // `user` and `metadata` do not change the answer, so they do not change the key.
        let mut tagged = body.clone();
        tagged["user"] = json!("someone");
        tagged["metadata"] = json!({"k": "v"});
        let third = gw.post("/v1/chat/completions", &key, &tagged).await;
        assert_eq!(third.header("x-gateway-cache"), Some("HIT"));
    })
    .await;
}

#[tokio::test]
async fn a_streamed_request_is_answered_from_cache_as_an_sse_replay() {
    within(30, async {
        let (upstream, gw, key) = gateway(&[]).await;
        let body = deterministic("gpt", "replay this answer");
        let plain = gw.post("/v1/chat/completions", &key, &body).await.json();
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        let replay = gw.post("/v1/chat/completions", &key, &streamed).await;
        assert_eq!(replay.header("x-gateway-cache"), Some("HIT"));
        assert_eq!(replay.header("content-type"), Some("text/event-stream"));
        assert_eq!(
            replay.streamed_text(),
            plain["choices"][0]["message"]["content"].as_str().unwrap()
        );
        assert_eq!(replay.sse_data().last().map(String::as_str), Some("[DONE]"));
        assert_eq!(replay.sse_chunks().last().unwrap()["usage"], plain["usage"]);
        assert_eq!(upstream.requests().await, 1);
    })
    .await;
}

#[tokio::test]
async fn a_completed_stream_is_cached_for_plain_requests() {
    within(30, async {
        let (upstream, gw, key) = gateway(&[]).await;
        let mut streamed = deterministic("gpt", "stream then plain");
        streamed["stream"] = json!(true);
        let first = gw.post("/v1/chat/completions", &key, &streamed).await;
        assert_eq!(first.header("x-gateway-cache"), Some("MISS"));
        let text = first.streamed_text();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let plain = gw
            .post(
                "/v1/chat/completions",
                &key,
                &deterministic("gpt", "stream then plain"),
            )
            .await;
        assert_eq!(plain.header("x-gateway-cache"), Some("HIT"));
        assert_eq!(plain.json()["choices"][0]["message"]["content"], text);
        assert_eq!(upstream.requests().await, 1);
    })
    .await;
}

#[tokio::test]
async fn cache_control_and_sampling_decide_whether_the_cache_is_used() {
    within(30, async {
        let (upstream, gw, key) = gateway(&[]).await;
        let body = deterministic("gpt", "bypass me");
        gw.post("/v1/chat/completions", &key, &body).await;
        let bypass = gw
            .post_with(
                "/v1/chat/completions",
                &key,
                &body,
                &[("cache-control", "no-cache")],
            )
            .await;
        assert_eq!(bypass.header("x-gateway-cache"), Some("BYPASS"));
        for header in [("x-gateway-cache", "bypass"), ("cache-control", "no-store")] {
            let bypass = gw
                .post_with("/v1/chat/completions", &key, &body, &[header])
                .await;
            assert_eq!(
                bypass.header("x-gateway-cache"),
                Some("BYPASS"),
                "{header:?}"
            );
        }

        let mut random = chat("gpt", "random sampling");
        random["temperature"] = json!(0.9);
        let a = gw.post("/v1/chat/completions", &key, &random).await;
        let b = gw.post("/v1/chat/completions", &key, &random).await;
        assert_eq!(a.header("x-gateway-cache"), Some("BYPASS"));
        assert_eq!(b.header("x-gateway-cache"), Some("BYPASS"));

        let opt_in = [("x-gateway-cache", "use")];
        let c = gw
            .post_with("/v1/chat/completions", &key, &random, &opt_in)
            .await;
        let d = gw
            .post_with("/v1/chat/completions", &key, &random, &opt_in)
            .await;
        assert_eq!(c.header("x-gateway-cache"), Some("MISS"));
        assert_eq!(d.header("x-gateway-cache"), Some("HIT"));
        // The first request, the three bypasses, the two random ones and the opt-in miss.
        assert_eq!(upstream.requests().await, 7);
    })
    .await;
}

#[tokio::test]
async fn tenants_do_not_share_cached_answers() {
    within(30, async {
        let (upstream, gw, key) = gateway(&[]).await;
        let (other_tenant, _) = gw
            .key(NewKey {
                name: "other".into(),
                tenant: Some("globex".into()),
                ..NewKey::default()
            })
            .await;
        let body = deterministic("gpt", "tenant private");
        let first = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(first.header("x-gateway-cache"), Some("MISS"));
        let other = gw.post("/v1/chat/completions", &other_tenant, &body).await;
        assert_eq!(other.header("x-gateway-cache"), Some("MISS"));
        assert_eq!(upstream.requests().await, 2);
        // Another key of the first key's tenant shares its partition: a hit.
        let colleague = gw.plain_key().await;
        let shared = gw.post("/v1/chat/completions", &colleague, &body).await;
        assert_eq!(shared.header("x-gateway-cache"), Some("HIT"));
        assert_eq!(shared.body, first.body);
        assert_eq!(upstream.requests().await, 2);
    })
    .await;
}

#[tokio::test]
async fn errors_are_never_cached() {
    within(30, async {
        let (upstream, gw, key) = gateway(&[]).await;
        // A 400 is neither retried nor counted by the circuit breaker: one upstream call each.
        let body = deterministic("err-400", "fails");
        for _ in 0..3 {
            let reply = gw.post("/v1/chat/completions", &key, &body).await;
            assert_eq!(reply.status, 400);
            assert_ne!(reply.header("x-gateway-cache"), Some("HIT"));
        }
        assert_eq!(upstream.requests().await, 3);
    })
    .await;
}

/// Identical requests sent while the first one's upstream call is in flight wait for its answer:
/// one upstream call, and every waiter answered with it (a hit) once it exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_misses_make_one_upstream_call() {
    within(30, async {
        // The mock answers each call after 1 s.
        let (upstream, gw, key) = gateway(&["--latency-ms", "1000"]).await;
        let gw = Arc::new(gw);
        let body = deterministic("gpt", "everyone at once");
        let send = || {
            let (gw, key, body) = (Arc::clone(&gw), key.clone(), body.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                let reply = gw.post("/v1/chat/completions", &key, &body).await;
                (reply, sent.elapsed())
            })
        };
        let started = Instant::now();
        let leader = send();
        while upstream.requests().await == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The first request's call is in flight: its answer exists 1 s after it was sent at the
        // earliest, so a waiter sent now is answered no sooner than about 1 s later.
        let waiters: Vec<_> = (0..11).map(|_| send()).collect();
        let sent_within = started.elapsed();
        assert!(
            sent_within < Duration::from_millis(400),
            "the waiters were sent only {sent_within:?} after the first request"
        );
        let (first, _) = leader.await.expect("leader");
        assert_eq!(first.status, 200);
        assert_eq!(first.header("x-gateway-cache"), Some("MISS"));
        for waiter in waiters {
            let (reply, waited) = waiter.await.expect("waiter");
            assert_eq!(reply.status, 200);
            assert_eq!(reply.header("x-gateway-cache"), Some("HIT"));
            assert_eq!(reply.body, first.body);
            assert!(
                waited >= Duration::from_millis(1000) - sent_within - Duration::from_millis(100),
                "a waiter was answered after {waited:?}, before the first answer existed"
            );
        }
        assert_eq!(upstream.requests().await, 1);
    })
    .await;
}

#[tokio::test]
async fn a_global_partition_shares_answers_across_tenants() {
    within(30, async {
        let upstream = MockUpstream::start(&[]);
        let config = format!(
            "[cache]\npartition = \"global\"\n{}",
            test_config(&upstream.url)
        );
        let gw = TestGateway::start(&config).await;
        let tenant_key = |tenant: &str| NewKey {
            name: tenant.into(),
            tenant: Some(tenant.into()),
            ..NewKey::default()
        };
        let (acme, _) = gw.key(tenant_key("acme")).await;
        let (globex, _) = gw.key(tenant_key("globex")).await;
        let body = deterministic("gpt", "shared by everyone");
        let first = gw.post("/v1/chat/completions", &acme, &body).await;
        assert_eq!(first.header("x-gateway-cache"), Some("MISS"));
        let other = gw.post("/v1/chat/completions", &globex, &body).await;
        assert_eq!(other.header("x-gateway-cache"), Some("HIT"));
        assert_eq!(other.body, first.body);
        assert_eq!(upstream.requests().await, 1);
    })
    .await;
}

/// An answer from a fallback model is not what the model asked for would have said: it is not
/// stored, under that model's key or the fallback's.
#[tokio::test]
async fn fallback_answers_are_never_cached() {
    within(30, async {
        let (upstream, gw, key) = gateway(&[]).await;
        // `flaky` always fails (503) and falls back to `gpt`.
        let body = deterministic("flaky", "answered by the fallback");
        for _ in 0..2 {
            let reply = gw.post("/v1/chat/completions", &key, &body).await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.header("x-gateway-model"), Some("gpt"));
            assert_eq!(reply.header("x-gateway-cache"), Some("MISS"));
        }
        let direct = gw
            .post(
                "/v1/chat/completions",
                &key,
                &deterministic("gpt", "answered by the fallback"),
            )
            .await;
        assert_eq!(direct.header("x-gateway-cache"), Some("MISS"));
        assert_eq!(upstream.stats().await["by_model"]["gpt-test"], 3);
    })
    .await;
}

/// A stream cut before its end is not an answer: the next identical request is a miss that
/// gets the whole answer, and only that is served from the cache afterwards.
#[tokio::test]
async fn incomplete_streams_are_never_cached() {
    within(30, async {
        let upstream = MockUpstream::start(&[]);
        let config = format!(
            "{}\n[models.cut-once]\ndeployments = [{{ provider = \"upstream\", model = \"fault:tokens=60;cut_after=40;times=1\" }}]\n",
            test_config(&upstream.url)
        );
        let gw = TestGateway::start(&config).await;
        let key = gw.plain_key().await;
        let mut body = deterministic("cut-once", "tell me sixty words");
        body["stream"] = json!(true);
        let cut = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(cut.status, 200);
        assert!(!cut.sse_data().contains(&"[DONE]".to_owned()), "the first stream is cut");
        let whole = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(whole.header("x-gateway-cache"), Some("MISS"));
        assert_eq!(whole.sse_data().last().map(String::as_str), Some("[DONE]"));
        assert_eq!(whole.streamed_text().split_whitespace().count(), 60);
        let replay = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(replay.header("x-gateway-cache"), Some("HIT"));
        assert_eq!(replay.streamed_text(), whole.streamed_text());
    })
    .await;
}

/// A hit makes no upstream call and costs nothing: the cost header says 0, the key's spend and
/// the model's cost and token counters do not move.
#[tokio::test]
async fn cache_hits_cost_nothing() {
    within(30, async {
        let upstream = MockUpstream::start(&[]);
        // A model only this test uses: its counters are this test's alone.
        let config = format!(
            "{}\n[models.priced-for-hits]\ndeployments = [{{ provider = \"upstream\", model = \"priced-model\" }}]\nprice = {{ input_per_mtok = 1000, output_per_mtok = 2000 }}\n",
            test_config(&upstream.url)
        );
        let gw = TestGateway::start(&config).await;
        let (key, record) = gw
            .key(NewKey {
                name: "hits".into(),
                ..NewKey::default()
            })
            .await;
        let cost = |m: &Metrics| m.value("gateway_cost_usd_total", &[("model", "priced-for-hits")]);
        let tokens =
            |m: &Metrics| m.value("gateway_tokens_total", &[("model", "priced-for-hits")]);
        let before = gw.metrics().await;
        let body = deterministic("priced-for-hits", "what does this cost");
        let miss = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(miss.header("x-gateway-cache"), Some("MISS"));
        let paid: f64 = miss
            .header("x-gateway-cost-usd")
            .and_then(|c| c.parse().ok())
            .expect("a cost");
        assert!(paid > 0.0);
        let spent = gw.spent(&record.id).await;
        assert!((spent - paid).abs() < 1e-7, "{spent} vs {paid}");
        let after_miss = gw.metrics().await;

        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        for hit in [body.clone(), streamed] {
            let reply = gw.post("/v1/chat/completions", &key, &hit).await;
            assert_eq!(reply.header("x-gateway-cache"), Some("HIT"));
            assert_eq!(reply.header("x-gateway-cost-usd"), Some("0"));
        }
        assert_eq!(upstream.requests().await, 1);
        assert_eq!(gw.spent(&record.id).await, spent, "a hit added spend");
        let after_hits = gw.metrics().await;
        assert_eq!(cost(&after_hits), cost(&after_miss));
        assert_eq!(tokens(&after_hits), tokens(&after_miss));
        assert!(cost(&after_miss) - cost(&before) > 0.0);
    })
    .await;
}
