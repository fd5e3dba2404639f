//! The response cache through the router: hits, bypasses, replay, partitioning, single flight.

use std::sync::Arc;

use crate::common::{MockUpstream, TestGateway, chat, test_config};
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
}

#[tokio::test]
async fn a_streamed_request_is_answered_from_cache_as_an_sse_replay() {
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
}

#[tokio::test]
async fn a_completed_stream_is_cached_for_plain_requests() {
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
}

#[tokio::test]
async fn cache_control_and_sampling_decide_whether_the_cache_is_used() {
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
    assert_eq!(upstream.requests().await, 5);
}

#[tokio::test]
async fn tenants_do_not_share_cached_answers() {
    let (upstream, gw, key) = gateway(&[]).await;
    let (other_tenant, _) = gw
        .key(NewKey {
            name: "other".into(),
            tenant: Some("globex".into()),
            ..NewKey::default()
        })
        .await;
    let body = deterministic("gpt", "tenant private");
    gw.post("/v1/chat/completions", &key, &body).await;
    let other = gw.post("/v1/chat/completions", &other_tenant, &body).await;
    assert_eq!(other.header("x-gateway-cache"), Some("MISS"));
    assert_eq!(upstream.requests().await, 2);
}

#[tokio::test]
async fn errors_are_never_cached() {
    let (upstream, gw, key) = gateway(&[]).await;
    // A 400 is neither retried nor counted by the circuit breaker: one upstream call each.
    let body = deterministic("err-400", "fails");
    for _ in 0..3 {
        let reply = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(reply.status, 400);
        assert_ne!(reply.header("x-gateway-cache"), Some("HIT"));
    }
    assert_eq!(upstream.requests().await, 3);
}

#[tokio::test]
async fn concurrent_identical_misses_make_one_upstream_call() {
    let (upstream, gw, key) = gateway(&["--latency-ms", "300"]).await;
    let gw = Arc::new(gw);
    let body = deterministic("gpt", "everyone at once");
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (gw, key, body) = (Arc::clone(&gw), key.clone(), body.clone());
            tokio::spawn(async move { gw.post("/v1/chat/completions", &key, &body).await })
        })
        .collect();
    let mut bodies = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200);
        bodies.push(reply.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(upstream.requests().await, 1);
}
