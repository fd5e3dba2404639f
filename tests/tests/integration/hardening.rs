//! One request must never take the gateway down, stall another request or reach a model outside
//! its key's scope: the crash and resource defects found by attacking a release build, replayed
//! through the real router against the mock provider.

use std::time::{Duration, Instant};

use crate::common::{MockUpstream, TestGateway, chat};
use gateway::keys::NewKey;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const TIMEOUT: Duration = Duration::from_secs(30);

fn config(upstream: &str) -> String {
    format!(
        r#"
[routing]
backoff_base_ms = 10
backoff_max_ms = 20

[providers.mock]
kind = "mock"

[providers.upstream]
kind = "openai"
base_url = "{upstream}/v1"
api_key_env = "UPSTREAM_KEY"
timeouts = {{ connect_ms = 1000, first_byte_ms = 10000, first_token_ms = 10000, idle_ms = 10000, total_ms = 30000 }}

[models.mock]
deployments = [{{ provider = "mock", model = "mock" }}]
context_window = 2000

[models.mock-embed]
kind = "embedding"
deployments = [{{ provider = "mock", model = "mock-embed" }}]
max_dimensions = 1024

[models.gpt-embed]
kind = "embedding"
deployments = [{{ provider = "upstream", model = "embed-test" }}]
price = {{ input_per_mtok = 0.5 }}

[models.embed-alias]
kind = "embedding"
route = {{ strategy = "cost", candidates = ["mock-embed", "gpt-embed"] }}

[models.embed-flaky]
kind = "embedding"
deployments = [{{ provider = "upstream", model = "fault:status=500;times=1" }}]

[models.embed-down]
kind = "embedding"
deployments = [{{ provider = "upstream", model = "fault:status=503" }}]
fallbacks = ["gpt-embed"]

[models.primary]
deployments = [{{ provider = "upstream", model = "fault:status=503" }}]
price = {{ input_per_mtok = 1, output_per_mtok = 1 }}
fallbacks = ["premium"]

[models.premium]
deployments = [{{ provider = "upstream", model = "premium-model" }}]
price = {{ input_per_mtok = 1000, output_per_mtok = 1000 }}
context_window = 100000

[models.small]
deployments = [{{ provider = "upstream", model = "small-model" }}]
context_window = 50
fallbacks = ["premium"]

[models.cheap]
deployments = [{{ provider = "upstream", model = "cheap-model" }}]
price = {{ input_per_mtok = 0.1, output_per_mtok = 0.1 }}

[models.strong]
deployments = [{{ provider = "upstream", model = "strong-model" }}]
price = {{ input_per_mtok = 10, output_per_mtok = 10 }}

[models.auto]
route = {{ strategy = "cost", candidates = ["cheap", "strong"], strong = "strong" }}

[models.cached-once]
deployments = [{{ provider = "mock", model = "mock" }}]

[models.huge-tool-index]
deployments = [{{ provider = "upstream", model = "fault:tool_index=4294967295" }}]

[models.long-answer]
deployments = [{{ provider = "upstream", model = "fault:tokens=40000" }}]
"#
    )
}

async fn setup() -> (MockUpstream, TestGateway, String) {
    let upstream = MockUpstream::start(&[]);
    let gateway = TestGateway::start(&config(&upstream.url)).await;
    let key = gateway.plain_key().await;
    (upstream, gateway, key)
}

async fn scoped_key(gateway: &TestGateway, models: &[&str]) -> String {
    gateway
        .key(NewKey {
            name: "scoped".into(),
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            ..NewKey::default()
        })
        .await
        .0
}

async fn attempts(upstream: &MockUpstream, model: &str) -> u64 {
    upstream.stats().await["by_model"][model]
        .as_u64()
        .unwrap_or(0)
}

async fn still_serves(gateway: &TestGateway, key: &str) {
    let reply = gateway
        .post("/v1/chat/completions", key, &chat("mock", "still there?"))
        .await;
    assert_eq!(reply.status, 200, "the gateway must keep serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_names_aliases_without_deployments() {
    tokio::time::timeout(TIMEOUT, async {
        let (_upstream, gateway, key) = setup().await;
        let reply = gateway
            .send(
                gateway
                    .http
                    .get(format!("{}/v1/models", gateway.url))
                    .bearer_auth(&key),
            )
            .await;
        assert_eq!(reply.status, 200);
        let models = reply.json()["data"].as_array().cloned().unwrap_or_default();
        let auto = models
            .iter()
            .find(|m| m["id"] == "auto")
            .expect("the alias is listed");
        assert_eq!(auto["owned_by"], "gateway");
        let served = models
            .iter()
            .find(|m| m["id"] == "premium")
            .expect("premium listed");
        assert_eq!(served["owned_by"], "upstream");
        let head = gateway
            .send(
                gateway
                    .http
                    .head(format!("{}/v1/models", gateway.url))
                    .bearer_auth(&key),
            )
            .await;
        assert_eq!(head.status, 200);
        still_serves(&gateway, &key).await;
    })
    .await
    .expect("within the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_sizes_are_bounded_before_anything_is_allocated() {
    tokio::time::timeout(TIMEOUT, async {
        let (_upstream, gateway, key) = setup().await;
        let embed = |input: Value, dimensions: u64| {
            json!({"model": "mock-embed", "input": input, "dimensions": dimensions})
        };
        let reply = gateway
            .post("/v1/embeddings", &key, &embed(json!("a text"), 4_294_967_295))
            .await;
        assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.json()["error"]["param"], "dimensions");

        let many: Vec<&str> = vec!["x"; 2048];
        let reply = gateway
            .post("/v1/embeddings", &key, &embed(json!(many), 200_000))
            .await;
        assert_eq!(reply.status, 400);
        assert_eq!(reply.json()["error"]["param"], "dimensions");

        let too_many: Vec<&str> = vec!["x"; 2049];
        let reply = gateway
            .post("/v1/embeddings", &key, &embed(json!(too_many), 8))
            .await;
        assert_eq!(reply.status, 400);
        assert_eq!(reply.json()["error"]["param"], "input");

        let too_long = "word ".repeat(300_000);
        let reply = gateway
            .post("/v1/embeddings", &key, &embed(json!(too_long), 8))
            .await;
        assert_eq!(reply.status, 400);
        assert_eq!(reply.json()["error"]["param"], "input");

        // The model's own maximum is served.
        let reply = gateway
            .post("/v1/embeddings", &key, &embed(json!(["a", "b"]), 1024))
            .await;
        assert_eq!(reply.status, 200);
        let vectors = reply.json()["data"].as_array().cloned().unwrap_or_default();
        assert_eq!(vectors.len(), 2);
        assert_eq!(vectors[0]["embedding"].as_array().map(Vec::len), Some(1024));
        still_serves(&gateway, &key).await;
    })
    .await
    .expect("within the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_beyond_the_model_is_refused() {
    tokio::time::timeout(TIMEOUT, async {
        let (_upstream, gateway, key) = setup().await;
        let mut body = chat("mock", "hi");
        body["max_tokens"] = json!(4_294_967_295u64);
        body["n"] = json!(128);
        let reply = gateway.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(reply.status, 400);
        assert_eq!(reply.json()["error"]["param"], "max_tokens");
        body["max_tokens"] = json!(2000);
        body["n"] = json!(1);
        let reply = gateway.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(reply.status, 200);
    })
    .await
    .expect("within the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_to_an_alias_are_served_by_its_cheapest_allowed_candidate() {
    tokio::time::timeout(TIMEOUT, async {
        let (_upstream, gateway, key) = setup().await;
        let body = json!({"model": "embed-alias", "input": ["a", "b"]});
        let reply = gateway.post("/v1/embeddings", &key, &body).await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.header("x-gateway-model"), Some("mock-embed"));

        let scoped = scoped_key(&gateway, &["embed-alias", "gpt-embed"]).await;
        let reply = gateway.post("/v1/embeddings", &scoped, &body).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-gateway-model"), Some("gpt-embed"));

        let alias_only = scoped_key(&gateway, &["embed-alias"]).await;
        let reply = gateway.post("/v1/embeddings", &alias_only, &body).await;
        assert_eq!(reply.status, 403);
    })
    .await
    .expect("within the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_retried_and_fall_back_like_chat() {
    tokio::time::timeout(TIMEOUT, async {
        let (upstream, gateway, key) = setup().await;
        let reply = gateway
            .post(
                "/v1/embeddings",
                &key,
                &json!({"model": "embed-flaky", "input": "a"}),
            )
            .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(attempts(&upstream, "fault:status=500;times=1").await, 2);

        let reply = gateway
            .post(
                "/v1/embeddings",
                &key,
                &json!({"model": "embed-down", "input": "a"}),
            )
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-gateway-model"), Some("gpt-embed"));
        // One retry in place, then the fallback, once.
        assert_eq!(attempts(&upstream, "fault:status=503").await, 2);
        assert_eq!(attempts(&upstream, "embed-test").await, 1);
    })
    .await
    .expect("within the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_an_absurd_tool_call_index_ends_with_an_error_event() {
    tokio::time::timeout(TIMEOUT, async {
        let (_upstream, gateway, key) = setup().await;
        let mut body = chat("huge-tool-index", "call a tool");
        body["stream"] = json!(true);
        let reply = gateway.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(reply.status, 200);
        let events = reply.sse_data();
        let last = events.last().cloned().unwrap_or_default();
        assert!(
            last.contains("\"error\""),
            "the stream ends with an error: {events:?}"
        );
        assert!(
            !events.iter().any(|e| e.contains("tool_calls")),
            "the bad chunk is not relayed: {events:?}"
        );
        still_serves(&gateway, &key).await;
    })
    .await
    .expect("within the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_aliases_and_reroutes_stay_inside_the_key_scope() {
    tokio::time::timeout(TIMEOUT, async {
        let (upstream, gateway, _) = setup().await;
        // The fallback is outside the key's scope: the primary's failure is the answer.
        let primary_only = scoped_key(&gateway, &["primary"]).await;
        let reply = gateway
            .post(
                "/v1/chat/completions",
                &primary_only,
                &chat("primary", "hi"),
            )
            .await;
        assert!(reply.status >= 500, "status {}", reply.status);
        assert_eq!(attempts(&upstream, "premium-model").await, 0);

        // A key that may use both gets the fallback.
        let both = scoped_key(&gateway, &["primary", "premium"]).await;
        let reply = gateway
            .post("/v1/chat/completions", &both, &chat("primary", "hi"))
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-gateway-model"), Some("premium"));

        // The alias's strong model is not in scope: the allowed candidate serves.
        let auto_cheap = scoped_key(&gateway, &["auto", "cheap"]).await;
        let reply = gateway
            .post(
                "/v1/chat/completions",
                &auto_cheap,
                &chat("auto", "prove this step by step"),
            )
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-gateway-model"), Some("cheap"));
        assert_eq!(attempts(&upstream, "strong-model").await, 0);

        // No candidate in scope at all.
        let auto_only = scoped_key(&gateway, &["auto"]).await;
        let reply = gateway
            .post("/v1/chat/completions", &auto_only, &chat("auto", "hi"))
            .await;
        assert_eq!(reply.status, 403);

        // A prompt too long for `small` is not rerouted to a model outside the scope.
        let small_only = scoped_key(&gateway, &["small"]).await;
        let long = "word ".repeat(400);
        let reply = gateway
            .post("/v1/chat/completions", &small_only, &chat("small", &long))
            .await;
        assert_eq!(reply.status, 400);
        assert_eq!(
            reply.error_code().as_deref(),
            Some("context_length_exceeded")
        );
        assert_eq!(attempts(&upstream, "premium-model").await, 1);
    })
    .await
    .expect("within the timeout");
}

/// A client that asks for a long cacheable stream and never reads it must not hold the identical
/// request of another key: the leader's answer is read at the upstream's pace and cached. (The
/// answer, about 10 MB of SSE, is more than the socket buffers of a client that does not read.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_leader_that_never_reads_does_not_hold_identical_requests() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let upstream = MockUpstream::start(&[]);
        let gateway = TestGateway::start(&config(&upstream.url)).await;
        let tenant_key = |name: &str| NewKey {
            name: name.into(),
            tenant: Some("acme".into()),
            ..NewKey::default()
        };
        let (reader, _) = gateway.key(tenant_key("reader")).await;
        let (stalled, _) = gateway.key(tenant_key("stalled")).await;
        let mut body = chat("long-answer", "tell me everything");
        body["temperature"] = json!(0);
        body["stream"] = json!(true);

        // The stalled client: sends its request on a raw socket and reads nothing.
        let address = gateway.url.trim_start_matches("http://").to_owned();
        let mut socket = tokio::net::TcpStream::connect(&address).await.expect("connect");
        let payload = serde_json::to_vec(&body).expect("json");
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {stalled}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            payload.len()
        );
        socket.write_all(head.as_bytes()).await.expect("write head");
        socket.write_all(&payload).await.expect("write body");
        // Until the upstream is asked, the stalled request is not yet the leader.
        let started = Instant::now();
        while attempts(&upstream, "fault:tokens=40000").await == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "the leader never called upstream");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        body["stream"] = json!(false);
        let reply = tokio::time::timeout(
            Duration::from_secs(40),
            gateway.post("/v1/chat/completions", &reader, &body),
        )
        .await
        .expect("the identical request is answered though the leader's client never reads");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-gateway-cache"), Some("HIT"));
        assert_eq!(attempts(&upstream, "fault:tokens=40000").await, 1);
        drop(socket);
    })
    .await
    .expect("within the timeout");
}

/// The value of the cache counter for `result` on `model`, as `/metrics` shows it.
fn cache_count(metrics: &str, result: &str, model: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("gateway_cache_total{"))
        .filter(|line| {
            line.contains(&format!("result=\"{result}\""))
                && line.contains(&format!("model=\"{model}\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_result_is_counted_once() {
    tokio::time::timeout(TIMEOUT, async {
        let (_upstream, gateway, key) = setup().await;
        let (admin, _) = gateway
            .key(NewKey {
                name: "ops".into(),
                admin: true,
                ..NewKey::default()
            })
            .await;
        let mut body = chat("cached-once", "count me once");
        body["temperature"] = json!(0);
        let first = gateway.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(first.header("x-gateway-cache"), Some("MISS"));
        let second = gateway.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(second.header("x-gateway-cache"), Some("HIT"));
        let metrics = gateway
            .send(
                gateway
                    .http
                    .get(format!("{}/metrics", gateway.url))
                    .bearer_auth(&admin),
            )
            .await;
        assert_eq!(metrics.status, 200);
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        assert_eq!(cache_count(&text, "MISS", "cached-once"), 1, "{text}");
        assert_eq!(cache_count(&text, "HIT", "cached-once"), 1, "{text}");
    })
    .await
    .expect("within the timeout");
}
