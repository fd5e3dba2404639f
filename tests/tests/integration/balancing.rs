//! Several deployments of one model: power-of-two-choices balancing drawn by weight, and a
//! circuit breaker per deployment, through the router against the mock provider. Deployments are
//! told apart by their upstream model names, which the mock counts.

use crate::common::{Metrics, MockUpstream, TestGateway, chat, within};

fn config(upstream: &str) -> String {
    format!(
        r#"
[routing]
max_attempts = 4
backoff_base_ms = 10
backoff_max_ms = 20
breaker = {{ consecutive_failures = 2, failure_rate = 1.0, window = 10, min_requests = 10, open_ms = 60000 }}

[providers.pool]
kind = "openai"
base_url = "{upstream}/v1"
api_key_env = "UPSTREAM_KEY"

[models.fast-or-slow]
deployments = [
    {{ provider = "pool", model = "quick-one" }},
    {{ provider = "pool", model = "fault:headers_delay_ms=300" }},
]

[models.weighted]
deployments = [
    {{ provider = "pool", model = "light-but-quick", weight = 1 }},
    {{ provider = "pool", model = "fault:headers_delay_ms=30", weight = 10 }},
    {{ provider = "pool", model = "fault:headers_delay_ms=31", weight = 10 }},
]

[models.one-down]
deployments = [
    {{ provider = "pool", model = "healthy-1" }},
    {{ provider = "pool", model = "fault:status=503" }},
    {{ provider = "pool", model = "healthy-2" }},
]
"#
    )
}

async fn setup() -> (MockUpstream, TestGateway, String) {
    let upstream = MockUpstream::start(&[]);
    let gateway = TestGateway::start(&config(&upstream.url)).await;
    let key = gateway.plain_key().await;
    (upstream, gateway, key)
}

async fn calls(upstream: &MockUpstream, model: &str) -> u64 {
    upstream.stats().await["by_model"][model]
        .as_u64()
        .unwrap_or(0)
}

/// Of two deployments, the one with the lower latency wins once both have answered: the slow
/// one is called again only while its latency is unknown. (Drawn at random, it would serve half.)
#[tokio::test]
async fn the_faster_of_two_deployments_serves_once_both_are_known() {
    within(30, async {
        let (upstream, gw, key) = setup().await;
        for i in 0..30 {
            let reply = gw
                .post(
                    "/v1/chat/completions",
                    &key,
                    &chat("fast-or-slow", &format!("q{i}")),
                )
                .await;
            assert_eq!(reply.status, 200);
        }
        let slow = calls(&upstream, "fault:headers_delay_ms=300").await;
        let quick = calls(&upstream, "quick-one").await;
        assert_eq!(slow + quick, 30);
        // Once, while its latency was unknown; twice at most if a stall made the quick one look
        // slow for a moment.
        assert!(slow <= 2, "the slow deployment served {slow} of 30");
    })
    .await;
}

/// The two candidates are drawn by weight: a quick deployment of weight 1 beside two slower ones
/// of weight 10 is a candidate in about 13% of the draws (and then wins). Were the candidates
/// drawn uniformly, it would be one in two of every three and serve about 67%.
#[tokio::test]
async fn candidates_are_drawn_by_weight() {
    within(30, async {
        let (upstream, gw, key) = setup().await;
        for i in 0..60 {
            let reply = gw
                .post(
                    "/v1/chat/completions",
                    &key,
                    &chat("weighted", &format!("q{i}")),
                )
                .await;
            assert_eq!(reply.status, 200);
        }
        let light = calls(&upstream, "light-but-quick").await;
        let heavy = [
            calls(&upstream, "fault:headers_delay_ms=30").await,
            calls(&upstream, "fault:headers_delay_ms=31").await,
        ];
        assert_eq!(light + heavy[0] + heavy[1], 60);
        assert!(
            light <= 25,
            "weight 1 of 21 served {light} of 60 ({heavy:?})"
        );
    })
    .await;
}

/// A dead deployment among healthy ones: every request is answered by a healthy one, the dead one
/// is called until its breaker opens (two failures in a row) and then not at all.
#[tokio::test]
async fn a_dead_deployment_is_skipped_once_its_breaker_opens() {
    within(30, async {
        let (upstream, gw, key) = setup().await;
        // This module's provider is named `pool`: the series are this test's alone.
        let opened = |metrics: &Metrics| {
            metrics.value(
                "gateway_breaker_transitions_total",
                &[("deployment", "pool/fault:status=503"), ("state", "open")],
            )
        };
        let before = gw.metrics().await;
        for i in 0..20 {
            let reply = gw
                .post(
                    "/v1/chat/completions",
                    &key,
                    &chat("one-down", &format!("q{i}")),
                )
                .await;
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(reply.header("x-gateway-model"), Some("one-down"));
        }
        assert_eq!(calls(&upstream, "fault:status=503").await, 2);
        let healthy = calls(&upstream, "healthy-1").await + calls(&upstream, "healthy-2").await;
        assert_eq!(healthy, 20);
        assert_eq!(opened(&gw.metrics().await) - opened(&before), 1.0);
    })
    .await;
}
