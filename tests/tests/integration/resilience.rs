//! Retries, fallbacks, circuit breaking, timeouts and broken streams, through the router against
//! the mock provider's fault injection (`fault:` model names), plain and streamed.

use std::time::{Duration, Instant};

use crate::common::{Metrics, MockUpstream, Reply, TestGateway, chat, within};
use gateway::keys::{ContextPolicy, NewKey};
use serde_json::{Value, json};

/// Timeouts are short so the slow scenarios (a first token after 20 s, a 30 s stall, a provider
/// that never answers) are cut in about a second.
fn config(upstream: &str) -> String {
    let mut config = format!(
        r#"
[routing]
max_attempts = 4
backoff_base_ms = 100
backoff_max_ms = 400
max_retry_after_ms = 3000
stream_finish_grace_ms = 300
breaker = {{ consecutive_failures = 2, failure_rate = 1.0, window = 10, min_requests = 10, open_ms = 1500 }}

[providers.faulty]
kind = "openai"
base_url = "{upstream}/v1"
api_key_env = "UPSTREAM_KEY"
timeouts = {{ connect_ms = 1000, first_byte_ms = 1000, first_token_ms = 1000, idle_ms = 1000, total_ms = 8000 }}

[providers.claude]
kind = "anthropic"
base_url = "{upstream}"
api_key_env = "UPSTREAM_KEY"
timeouts = {{ connect_ms = 1000, first_byte_ms = 1000, first_token_ms = 1000, idle_ms = 1000, total_ms = 8000 }}

[models.backup]
deployments = [{{ provider = "faulty", model = "backup-model" }}]
price = {{ input_per_mtok = 100, output_per_mtok = 200 }}
context_window = 100000

[models.small]
deployments = [{{ provider = "faulty", model = "small-model" }}]
context_window = 50

[models.cheap]
deployments = [{{ provider = "faulty", model = "cheap-model" }}]
price = {{ input_per_mtok = 0.1, output_per_mtok = 0.4 }}
context_window = 100000
capabilities = {{ tools = false }}

[models.strong]
deployments = [{{ provider = "faulty", model = "strong-model" }}]
price = {{ input_per_mtok = 5, output_per_mtok = 15 }}
context_window = 100000

[models.auto]
route = {{ strategy = "cost", candidates = ["cheap", "strong"] }}

[providers.impatient]
kind = "openai"
base_url = "{upstream}/v1"
api_key_env = "UPSTREAM_KEY"
timeouts = {{ connect_ms = 1000, first_byte_ms = 10000, first_token_ms = 10000, idle_ms = 10000, total_ms = 700 }}

[models.slow-answer]
deployments = [{{ provider = "impatient", model = "fault:headers_delay_ms=5000" }}]

[models.slow-first-token]
deployments = [{{ provider = "impatient", model = "fault:first_token_ms=5000" }}]

[models.stalling]
deployments = [{{ provider = "impatient", model = "fault:stall_after=3;stall_ms=5000" }}]

[models.locked-out]
deployments = [{{ provider = "faulty", model = "fault:status=401" }}]
fallbacks = ["backup"]

[models.narrow]
deployments = [{{ provider = "faulty", model = "narrow-model" }}]
context_window = 50
fallbacks = ["backup"]
"#
    );
    let faults = [
        (
            "retry-after",
            "fault:status=429;times=1;retry_after=2",
            false,
        ),
        ("limited", "fault:status=429", false),
        ("limited-fb", "fault:status=429", true),
        ("once-500", "fault:status=500;times=1", false),
        ("down", "fault:status=503", true),
        ("reset", "fault:reset", true),
        ("silent", "fault:hang", true),
        ("slow-first", "fault:first_token_ms=20000", true),
        ("cut", "fault:tokens=60;cut_after=40", true),
        ("stall", "fault:stall_after=5;stall_ms=30000", true),
        ("stall-early", "fault:stall_after=0;stall_ms=30000", true),
        ("malformed", "fault:malformed_at=3", true),
        ("no-done", "fault:no_done", false),
        ("no-usage", "fault:no_usage", false),
        (
            "too-long",
            "fault:status=400;code=context_length_exceeded",
            true,
        ),
        ("filtered", "fault:status=400;code=content_filter", true),
        ("recovering", "fault:status=503;for_ms=2000", true),
    ];
    for (alias, fault, with_fallback) in faults {
        config.push_str(&format!(
            "\n[models.{alias}]\ndeployments = [{{ provider = \"faulty\", model = \"{fault}\" }}]\ncontext_window = 1000\nprice = {{ input_per_mtok = 1, output_per_mtok = 1 }}\n"
        ));
        if with_fallback {
            config.push_str("fallbacks = [\"backup\"]\n");
        }
    }
    config.push_str(
        "\n[models.claude-cut]\ndeployments = [{ provider = \"claude\", model = \"fault:tokens=60;cut_after=40\" }]\n",
    );
    config
}

async fn setup() -> (MockUpstream, TestGateway, String) {
    let upstream = MockUpstream::start(&[]);
    let gateway = TestGateway::start(&config(&upstream.url)).await;
    let key = gateway.plain_key().await;
    (upstream, gateway, key)
}

fn streamed(model: &str, text: &str) -> Value {
    let mut body = chat(model, text);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body
}

async fn attempts(upstream: &MockUpstream, model: &str) -> u64 {
    upstream.stats().await["by_model"][model]
        .as_u64()
        .unwrap_or(0)
}

async fn reset(upstream: &MockUpstream) {
    gateway::tls::http_client()
        .post(format!("{}/_mock/reset", upstream.url))
        .send()
        .await
        .expect("reset");
}

/// After every scenario the gateway still answers a normal request.
async fn assert_healthy(gw: &TestGateway, key: &str) {
    let reply = gw
        .post(
            "/v1/chat/completions",
            key,
            &chat("backup", "are you alive"),
        )
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

fn assert_answered_by_backup(reply: &Reply) {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("x-gateway-model"), Some("backup"));
}

fn sse_error(reply: &Reply) -> Option<Value> {
    reply
        .sse_data()
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v.get("error").is_some())
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_after_that_delay() {
    within(30, async {
        let (upstream, gw, key) = setup().await;
        let model = "fault:status=429;times=1;retry_after=2";
        for body in [chat("retry-after", "hi"), streamed("retry-after", "hi")] {
            reset(&upstream).await;
            let started = Instant::now();
            let reply = gw.post("/v1/chat/completions", &key, &body).await;
            let elapsed = started.elapsed();
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            assert!(
                elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(4000),
                "{elapsed:?}"
            );
            assert_eq!(attempts(&upstream, model).await, 2, "no hammering");
            let gaps = &upstream.stats().await["timestamps"][model];
            let second = gaps[1].as_u64().unwrap();
            assert!(second >= 1900, "retried after {second} ms");
        }
        assert_healthy(&gw, &key).await;
    })
    .await;
}

#[tokio::test]
async fn endless_429s_back_off_then_fall_back_or_end_in_a_clean_429() {
    within(30, async {
        let (upstream, gw, key) = setup().await;
        let started = Instant::now();
        let reply = gw
            .post("/v1/chat/completions", &key, &chat("limited", "hi"))
            .await;
        assert_eq!(reply.status, 429);
        assert!(reply.header("retry-after").is_some());
        assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
        // Two: the second failure in a row opens the deployment's breaker (`consecutive_failures
        // = 2`), which ends the request before the attempt budget (4) does.
        assert_eq!(attempts(&upstream, "fault:status=429").await, 2);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );

        // With a fallback: one retry in place, then the fallback, called once.
        reset(&upstream).await;
        let reply = gw
            .post("/v1/chat/completions", &key, &streamed("limited-fb", "hi"))
            .await;
        assert_answered_by_backup(&reply);
        assert_eq!(reply.sse_data().last().map(String::as_str), Some("[DONE]"));
        assert_eq!(attempts(&upstream, "fault:status=429").await, 2);
        assert_eq!(attempts(&upstream, "backup-model").await, 1);
        assert_healthy(&gw, &key).await;

        // A breaker that never opens: the attempt budget alone ends the request, exactly.
        let patient = TestGateway::start(&format!(
            r#"
[routing]
max_attempts = 3
backoff_base_ms = 10
backoff_max_ms = 20
breaker = {{ consecutive_failures = 100, failure_rate = 1.0, window = 100, min_requests = 100, open_ms = 1000 }}

[providers.faulty]
kind = "openai"
base_url = "{}/v1"
api_key_env = "UPSTREAM_KEY"

[models.limited]
deployments = [{{ provider = "faulty", model = "fault:status=429" }}]
"#,
            upstream.url
        ))
        .await;
        let patient_key = patient.plain_key().await;
        reset(&upstream).await;
        let reply = patient
            .post("/v1/chat/completions", &patient_key, &chat("limited", "hi"))
            .await;
        assert_eq!(reply.status, 429);
        assert_eq!(attempts(&upstream, "fault:status=429").await, 3);
    })
    .await;
}

#[tokio::test]
async fn a_single_500_is_retried_in_place() {
    within(30, async {
        let (upstream, gw, key) = setup().await;
        for body in [chat("once-500", "hi"), streamed("once-500", "hi")] {
            reset(&upstream).await;
            let reply = gw.post("/v1/chat/completions", &key, &body).await;
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(reply.header("x-gateway-model"), Some("once-500"));
            assert_eq!(attempts(&upstream, "fault:status=500;times=1").await, 2);
        }
    })
    .await;
}

#[tokio::test]
async fn a_provider_that_keeps_failing_falls_back_within_the_attempt_budget() {
    within(30, async {
        let (upstream, gw, key) = setup().await;
        for (model, fault) in [("down", "fault:status=503"), ("reset", "fault:reset")] {
            // The first request: one retry in place, and the second failure opens the breaker
            // (`consecutive_failures = 2`). The next request, within the breaker's `open_ms`,
            // goes straight to the fallback. The fallback is called once each time.
            for (body, expected) in [(chat(model, "hi"), 2), (streamed(model, "hi"), 0)] {
                reset(&upstream).await;
                let reply = gw.post("/v1/chat/completions", &key, &body).await;
                assert_answered_by_backup(&reply);
                let tries = attempts(&upstream, fault).await;
                assert_eq!(
                    tries, expected,
                    "{model}: attempts on the failing deployment"
                );
                assert_eq!(attempts(&upstream, "backup-model").await, 1, "{model}");
            }
        }
        assert_healthy(&gw, &key).await;
    })
    .await;
}

#[tokio::test]
async fn a_silent_provider_times_out_and_is_not_retried_in_place() {
    within(30, async {
        let (upstream, gw, key) = setup().await;
        for body in [chat("silent", "hi"), streamed("silent", "hi")] {
            reset(&upstream).await;
            let started = Instant::now();
            let reply = gw.post("/v1/chat/completions", &key, &body).await;
            assert_answered_by_backup(&reply);
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{:?}",
                started.elapsed()
            );
            assert_eq!(attempts(&upstream, "fault:hang").await, 1);
        }
        assert_healthy(&gw, &key).await;
    })
    .await;
}

#[tokio::test]
async fn a_first_token_that_never_comes_falls_back_before_anything_is_sent() {
    within(30, async {
        let (_upstream, gw, key) = setup().await;
        let started = Instant::now();
        let reply = gw
            .post("/v1/chat/completions", &key, &streamed("slow-first", "hi"))
            .await;
        assert_answered_by_backup(&reply);
        assert!(sse_error(&reply).is_none());
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        let reply = gw
            .post("/v1/chat/completions", &key, &streamed("stall-early", "hi"))
            .await;
        assert_answered_by_backup(&reply);
        assert_healthy(&gw, &key).await;
    })
    .await;
}

#[tokio::test]
async fn a_stream_cut_midway_ends_with_an_error_event_not_done() {
    within(30, async {
        let (_upstream, gw, key) = setup().await;
        for model in ["cut", "claude-cut"] {
            let reply = gw
                .post("/v1/chat/completions", &key, &streamed(model, "hi"))
                .await;
            assert_eq!(reply.status, 200);
            let words = reply.streamed_text().split_whitespace().count();
            assert!(
                (35..60).contains(&words),
                "{model}: {words} words reached the client"
            );
            assert!(!reply.sse_data().contains(&"[DONE]".to_owned()), "{model}");
            let error = sse_error(&reply).unwrap_or_else(|| panic!("{model}: no error event"));
            assert!(error["error"]["message"].is_string());
        }
        assert_healthy(&gw, &key).await;
    })
    .await;
}

#[tokio::test]
async fn a_stalled_or_malformed_stream_is_never_passed_off_as_complete() {
    within(30, async {
        let (_upstream, gw, key) = setup().await;
        for model in ["stall", "malformed"] {
            let started = Instant::now();
            let reply = gw
                .post(
                    "/v1/chat/completions",
                    &key,
                    &streamed(model, "one two three four five six seven"),
                )
                .await;
            assert_eq!(reply.status, 200);
            assert!(sse_error(&reply).is_some(), "{model}: no error event");
            assert!(!reply.sse_data().contains(&"[DONE]".to_owned()), "{model}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{model}: {:?}",
                started.elapsed()
            );
        }
        assert_healthy(&gw, &key).await;
    })
    .await;
}

#[tokio::test]
async fn a_stream_without_done_finishes_promptly_on_its_finish_reason() {
    within(30, async {
        let (_upstream, gw, key) = setup().await;
        let started = Instant::now();
        let reply = gw
            .post(
                "/v1/chat/completions",
                &key,
                &streamed("no-done", "finish me"),
            )
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(reply.sse_data().last().map(String::as_str), Some("[DONE]"));
        assert!(reply.streamed_text().contains("finish me"));
        assert!(sse_error(&reply).is_none());
    })
    .await;
}

#[tokio::test]
async fn usage_is_counted_when_the_provider_omits_it() {
    within(30, async {
        let (_upstream, gw, key) = setup().await;
        let reply = gw
            .post(
                "/v1/chat/completions",
                &key,
                &streamed("no-usage", "count these words"),
            )
            .await;
        let chunks = reply.sse_chunks();
        let usage = &chunks.last().unwrap()["usage"];
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
        assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
    })
    .await;
}

#[tokio::test]
async fn context_length_errors_go_to_a_larger_model_and_content_policy_comes_back() {
    within(30, async {
        let (upstream, gw, key) = setup().await;
        let reply = gw
            .post("/v1/chat/completions", &key, &chat("too-long", "hi"))
            .await;
        assert_answered_by_backup(&reply);
        // Not retried in place: straight to the larger model.
        let too_long = "fault:status=400;code=context_length_exceeded";
        assert_eq!(attempts(&upstream, too_long).await, 1);
        assert_eq!(attempts(&upstream, "backup-model").await, 1);

        // A content-policy refusal is the answer: one call, no retry, no fallback.
        for body in [chat("filtered", "hi"), streamed("filtered", "hi")] {
            reset(&upstream).await;
            let reply = gw.post("/v1/chat/completions", &key, &body).await;
            assert_eq!(reply.status, 400);
            assert_eq!(reply.error_code().as_deref(), Some("content_filter"));
            assert!(
                reply.json()["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
            assert_eq!(
                attempts(&upstream, "fault:status=400;code=content_filter").await,
                1,
                "never retried"
            );
            assert_eq!(attempts(&upstream, "backup-model").await, 0, "no fallback");
        }
    })
    .await;
}

#[tokio::test]
async fn the_breaker_opens_serves_from_the_fallback_and_closes_on_recovery() {
    within(30, async {
        let (upstream, gw, key) = setup().await;
        let fault = "fault:status=503;for_ms=2000";
        // The metrics are the process's, shared with every other test: these series are this
        // test's alone (no other test has this deployment or this model).
        let deployment = format!("faulty/{fault}");
        let transitions = |metrics: &Metrics, state: &str| {
            metrics.value(
                "gateway_breaker_transitions_total",
                &[("deployment", &deployment), ("state", state)],
            )
        };
        let fallbacks = |metrics: &Metrics, reason: &str| {
            metrics.value(
                "gateway_fallbacks_total",
                &[("from", "recovering"), ("to", "backup"), ("reason", reason)],
            )
        };
        let before = gw.metrics().await;

        // The first request fails twice (one retry in place), which opens the breaker
        // (`consecutive_failures = 2`), and falls back; while it is open the next requests go
        // to the fallback without calling the primary.
        for _ in 0..3 {
            let reply = gw
                .post("/v1/chat/completions", &key, &chat("recovering", "hi"))
                .await;
            assert_answered_by_backup(&reply);
        }
        assert_eq!(
            attempts(&upstream, fault).await,
            2,
            "open: primary not called"
        );
        assert_eq!(attempts(&upstream, "backup-model").await, 3);
        let open = gw.metrics().await;
        assert_eq!(
            transitions(&open, "open") - transitions(&before, "open"),
            1.0
        );
        assert_eq!(
            fallbacks(&open, "server") - fallbacks(&before, "server"),
            1.0
        );
        assert_eq!(
            fallbacks(&open, "unavailable") - fallbacks(&before, "unavailable"),
            2.0
        );

        // Once the primary has recovered (it fails for 2 s after its first call) and the
        // breaker's open time (1.5 s) has passed, the next request is the probe, and closes it.
        tokio::time::sleep(Duration::from_millis(2600)).await;
        let reply = gw
            .post("/v1/chat/completions", &key, &chat("recovering", "hi"))
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-gateway-model"), Some("recovering"));
        assert_eq!(attempts(&upstream, fault).await, 3);
        let closed = gw.metrics().await;
        for (state, count) in [("open", 1.0), ("half_open", 1.0), ("closed", 1.0)] {
            assert_eq!(
                transitions(&closed, state) - transitions(&before, state),
                count,
                "{state}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_fallback_answer_is_billed_to_the_fallback() {
    within(30, async {
        let (_upstream, gw, key) = setup().await;
        let reply = gw
            .post(
                "/v1/chat/completions",
                &key,
                &streamed("down", "bill the backup"),
            )
            .await;
        assert_answered_by_backup(&reply);
        let chunks = reply.sse_chunks();
        assert_eq!(chunks[0]["model"], "backup-model");
        let usage = &chunks.last().unwrap()["usage"];
        assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
        let plain = gw
            .post(
                "/v1/chat/completions",
                &key,
                &chat("down", "bill the backup"),
            )
            .await;
        let usage = &plain.json()["usage"];
        let expected = (usage["prompt_tokens"].as_f64().unwrap() * 100.0
            + usage["completion_tokens"].as_f64().unwrap() * 200.0)
            / 1e6;
        let cost: f64 = plain.header("x-gateway-cost-usd").unwrap().parse().unwrap();
        assert!((cost - expected).abs() < 1e-8, "{cost} vs {expected}");
    })
    .await;
}

#[tokio::test]
async fn auto_picks_the_cheap_model_unless_the_request_needs_the_strong_one() {
    within(30, async {
    let (upstream, gw, key) = setup().await;
    let simple = gw
        .post(
            "/v1/chat/completions",
            &key,
            &chat("auto", "what is the capital of France"),
        )
        .await;
    assert_eq!(simple.header("x-gateway-model"), Some("cheap"));
    assert_eq!(simple.header("x-gateway-route"), Some("cheapest"));

    let hard = gw
        .post(
            "/v1/chat/completions",
            &key,
            &chat(
                "auto",
                "Prove that there are infinitely many primes, step by step",
            ),
        )
        .await;
    assert_eq!(hard.header("x-gateway-model"), Some("strong"));
    assert_eq!(hard.header("x-gateway-route"), Some("strong:keyword"));

    let mut with_tools = chat("auto", "what is the weather");
    with_tools["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let tools = gw.post("/v1/chat/completions", &key, &with_tools).await;
    assert_eq!(
        tools.header("x-gateway-model"),
        Some("strong"),
        "cheap cannot use tools"
    );
    assert_eq!(
        upstream.stats().await["last_request"]["model"],
        "strong-model"
    );
    })
    .await;
}

#[tokio::test]
async fn context_trimming_keeps_the_system_prompt_and_the_last_turn() {
    within(30, async {
        let (upstream, gw, _) = setup().await;
        let (trimming, _) = gw
            .key(NewKey {
                name: "trim".into(),
                context_policy: ContextPolicy::Trim,
                ..NewKey::default()
            })
            .await;
        let (strict, _) = gw
            .key(NewKey {
                name: "strict".into(),
                ..NewKey::default()
            })
            .await;
        let long = "many words here ".repeat(20);
        let body = json!({"model": "small", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": long},
            {"role": "assistant", "content": long},
            {"role": "user", "content": "last question"}
        ]});
        let refused = gw.post("/v1/chat/completions", &strict, &body).await;
        assert_eq!(refused.status, 400);
        assert_eq!(
            refused.error_code().as_deref(),
            Some("context_length_exceeded")
        );

        let trimmed = gw.post("/v1/chat/completions", &trimming, &body).await;
        assert_eq!(
            trimmed.status,
            200,
            "{}",
            String::from_utf8_lossy(&trimmed.body)
        );
        assert_eq!(trimmed.header("x-gateway-context"), Some("trimmed:2"));
        let sent = upstream.stats().await["last_request"]["messages"].clone();
        assert_eq!(sent[0]["role"], "system");
        assert_eq!(sent[0]["content"], "Be brief.");
        assert_eq!(
            sent.as_array().unwrap().last().unwrap()["content"],
            "last question"
        );
        assert_eq!(sent.as_array().unwrap().len(), 2);
    })
    .await;
}

/// `timeouts.total_ms` bounds the whole request: an answer that has not come by then is a 504,
/// plain or before a stream's first token, and a stream that stalls past it ends with an error
/// event. (Every other timeout of the provider is far longer.)
#[tokio::test]
async fn total_ms_ends_a_request_with_a_504() {
    within(30, async {
        let (upstream, gw, key) = setup().await;
        for body in [
            chat("slow-answer", "hi"),
            streamed("slow-first-token", "hi"),
        ] {
            let started = Instant::now();
            let reply = gw.post("/v1/chat/completions", &key, &body).await;
            let elapsed = started.elapsed();
            assert_eq!(
                reply.status,
                504,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(reply.json()["error"]["type"], "timeout");
            assert!(
                elapsed >= Duration::from_millis(650) && elapsed < Duration::from_millis(2500),
                "{elapsed:?}"
            );
        }
        // Each once: a timeout is not retried in place.
        assert_eq!(attempts(&upstream, "fault:headers_delay_ms=5000").await, 1);
        assert_eq!(attempts(&upstream, "fault:first_token_ms=5000").await, 1);

        let started = Instant::now();
        let reply = gw
            .post(
                "/v1/chat/completions",
                &key,
                &streamed("stalling", "one two three four five"),
            )
            .await;
        assert_eq!(reply.status, 200);
        let error = sse_error(&reply).expect("an error event");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("deadline")),
            "{error}"
        );
        assert!(!reply.sse_data().contains(&"[DONE]".to_owned()));
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

/// A provider that refuses the gateway's credentials (401) is not retried: the request goes
/// straight to the fallback, and the client never sees a 401 about its own key.
#[tokio::test]
async fn a_credential_rejection_goes_straight_to_the_fallback() {
    within(30, async {
        let (upstream, gw, key) = setup().await;
        for body in [chat("locked-out", "hi"), streamed("locked-out", "hi")] {
            reset(&upstream).await;
            let reply = gw.post("/v1/chat/completions", &key, &body).await;
            assert_answered_by_backup(&reply);
            assert_eq!(attempts(&upstream, "fault:status=401").await, 1);
            assert_eq!(attempts(&upstream, "backup-model").await, 1);
        }
    })
    .await;
}

/// A conversation longer than the model's context window goes to its fallback with a larger
/// one, said in `x-gateway-context`; the model too small for it is never called.
#[tokio::test]
async fn a_conversation_too_long_for_the_model_is_rerouted_to_a_larger_fallback() {
    within(30, async {
        let (upstream, gw, key) = setup().await;
        let long = "many words here ".repeat(20);
        for body in [chat("narrow", &long), streamed("narrow", &long)] {
            let reply = gw.post("/v1/chat/completions", &key, &body).await;
            assert_answered_by_backup(&reply);
            assert_eq!(reply.header("x-gateway-context"), Some("rerouted:backup"));
        }
        assert_eq!(attempts(&upstream, "narrow-model").await, 0);
        assert_eq!(attempts(&upstream, "backup-model").await, 2);
        // A conversation that fits is the narrow model's.
        let reply = gw
            .post("/v1/chat/completions", &key, &chat("narrow", "short"))
            .await;
        assert_eq!(reply.header("x-gateway-model"), Some("narrow"));
        assert_eq!(reply.header("x-gateway-context"), None);
    })
    .await;
}
