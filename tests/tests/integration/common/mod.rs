//! Shared by the integration tests: the mock provider as a child process, and the gateway's real
//! router served in process on a loopback port over an embedded store in a temporary folder.

pub mod anthropic;
pub mod batch;
pub mod local;
pub mod moto;
pub mod redis;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use gateway::backends::Backends;
use gateway::clock::month_of;
use gateway::config::Config;
use gateway::keys::KeyStore;
use gateway::keys::{KeyRecord, NewKey, generate_key};
use gateway::state::Gateway;
use gateway::storage::embedded::EmbeddedStore;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// The credential the gateway must forward to the mock provider.
pub const UPSTREAM_KEY: &str = "sk-upstream-test";

/// `mock-provider` on a free loopback port, killed when dropped.
pub struct MockUpstream {
    child: Child,
    pub url: String,
}

impl MockUpstream {
    pub fn start(extra_args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mock-provider"))
            .args(["--listen", "127.0.0.1:0"])
            .args(extra_args)
            .env("MOCK_PROVIDER_REQUIRE_KEY", UPSTREAM_KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mock-provider starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("mock-provider prints its address");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .expect("address line")
            .to_owned();
        Self { child, url }
    }

    pub async fn stats(&self) -> Value {
        let body = gateway::tls::http_client()
            .get(format!("{}/_mock/stats", self.url))
            .send()
            .await
            .expect("stats")
            .bytes()
            .await
            .expect("stats body");
        serde_json::from_slice(&body).expect("stats json")
    }

    pub async fn requests(&self) -> u64 {
        self.stats().await["requests"]
            .as_u64()
            .expect("request count")
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config with the built-in mock, and OpenAI-compatible, Azure and Anthropic providers all
/// pointing at the mock provider; the `err-*` models make the mock answer with that error.
pub fn test_config(upstream: &str) -> String {
    let mut config = format!(
        r#"
[providers.mock]
kind = "mock"

[providers.upstream]
kind = "openai"
base_url = "{upstream}/v1"
api_key_env = "UPSTREAM_KEY"

[providers.azure]
kind = "azure"
base_url = "{upstream}"
api_key_env = "UPSTREAM_KEY"
api_version = "2024-10-21"

[providers.claude]
kind = "anthropic"
base_url = "{upstream}"
api_key_env = "UPSTREAM_KEY"

[models.mock]
deployments = [{{ provider = "mock", model = "mock" }}]
price = {{ input_per_mtok = 1000, output_per_mtok = 2000 }}
context_window = 2000

[models.mock-embed]
kind = "embedding"
deployments = [{{ provider = "mock", model = "mock-embed" }}]
price = {{ input_per_mtok = 1000 }}

[models.gpt]
deployments = [{{ provider = "upstream", model = "gpt-test" }}]
price = {{ input_per_mtok = 1, output_per_mtok = 2 }}

[models.gpt-embed]
kind = "embedding"
deployments = [{{ provider = "upstream", model = "embed-test" }}]

[models.azure-gpt]
deployments = [{{ provider = "azure", model = "my-deployment" }}]

[models.claude]
deployments = [{{ provider = "claude", model = "claude-test" }}]
price = {{ input_per_mtok = 3, output_per_mtok = 15 }}

[models.flaky]
deployments = [{{ provider = "upstream", model = "error-503" }}]
fallbacks = ["gpt"]
"#
    );
    for (alias, provider, upstream_model) in [
        ("err-429", "upstream", "error-429"),
        ("err-401", "upstream", "error-401"),
        ("err-500", "upstream", "error-500"),
        ("err-400", "upstream", "error-400"),
        ("err-context", "upstream", "error-context"),
        ("err-content", "upstream", "error-content-filter"),
        ("claude-529", "claude", "error-529"),
        ("claude-429", "claude", "error-429"),
        ("claude-context", "claude", "error-context"),
    ] {
        config.push_str(&format!(
            "\n[models.{alias}]\ndeployments = [{{ provider = \"{provider}\", model = \"{upstream_model}\" }}]\n"
        ));
    }
    config
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// The gateway router on a loopback port, as `gateway-local` serves it.
pub struct TestGateway {
    pub url: String,
    pub gateway: Arc<Gateway>,
    pub store: Arc<EmbeddedStore>,
    pub http: reqwest::Client,
    dir: PathBuf,
    /// The server task: it ends after the shutdown future given to `start_until` completes.
    pub server: tokio::task::JoinHandle<()>,
}

impl TestGateway {
    pub async fn start(config_toml: &str) -> Self {
        Self::start_until(config_toml, std::future::pending()).await
    }

    pub async fn start_until(
        config_toml: &str,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self::start_with(config_toml, shutdown, |_, _, _| {}).await
    }

    /// `start_until`, with `configure` setting what `Gateway::new` leaves unset (batch,
    /// collections, vectors) over the test's store and folder before the router takes it.
    pub async fn start_with(
        config_toml: &str,
        shutdown: impl Future<Output = ()> + Send + 'static,
        configure: impl FnOnce(&mut Gateway, &Arc<EmbeddedStore>, &std::path::Path),
    ) -> Self {
        let config = Config::from_toml(config_toml).expect("valid test config");
        let dir = std::env::temp_dir().join(format!(
            "gateway-it-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let store = EmbeddedStore::open(&dir).expect("store opens");
        let env: HashMap<&str, &str> = HashMap::from([("UPSTREAM_KEY", UPSTREAM_KEY)]);
        let lookup = move |name: &str| env.get(name).map(|v| (*v).to_owned());
        let gateway = Gateway::new(
            &config,
            Backends::embedded(&store).expect("backends"),
            &lookup,
        )
        .expect("gateway builds");
        let mut gateway = gateway;
        // Stored responses, as `gateway-local` keeps them in its embedded store.
        gateway.responses = Some(Arc::clone(&store) as _);
        gateway.usage = Some(Arc::clone(&store) as _);
        configure(&mut gateway, &store, &dir);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let gateway = Arc::new(gateway);
        let router = gateway::http::router(Arc::clone(&gateway));
        let server = tokio::spawn(async move {
            gateway::http::server::serve(listener, router, &config.server, shutdown).await;
        });
        Self {
            url,
            gateway,
            store,
            http: gateway::tls::http_client(),
            dir,
            server,
        }
    }

    pub async fn key(&self, new: NewKey) -> (String, KeyRecord) {
        let (hash, secret, record) = generate_key(new, now_secs()).expect("key");
        self.store.insert(&hash, &record).await.expect("insert key");
        (secret, record)
    }

    pub async fn plain_key(&self) -> String {
        self.key(NewKey {
            name: "test".into(),
            ..NewKey::default()
        })
        .await
        .0
    }

    /// The spend recorded this month for a key, in USD, as the store holds it once the work
    /// responses left behind (settling, in the background when it has to wait) is done.
    pub async fn spent(&self, key_id: &str) -> f64 {
        self.gateway.background.idle().await;
        self.store.flush();
        let month = month_of(now_secs());
        self.store
            .spend_this_month()
            .expect("spend")
            .get(&(key_id.to_owned(), month))
            .copied()
            .unwrap_or(0.0)
    }

    /// `/metrics` as an admin sees it.
    pub async fn metrics(&self) -> Metrics {
        let (admin, _) = self
            .key(NewKey {
                name: "metrics-reader".into(),
                admin: true,
                ..NewKey::default()
            })
            .await;
        let reply = self
            .send(
                self.http
                    .get(format!("{}/metrics", self.url))
                    .bearer_auth(admin),
            )
            .await;
        assert_eq!(reply.status, 200);
        Metrics(String::from_utf8_lossy(&reply.body).into_owned())
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Reply {
        self.post_with(path, key, body, &[]).await
    }

    pub async fn post_with(
        &self,
        path: &str,
        key: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).expect("json"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Reply::read(request.send().await.expect("gateway answers")).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        self.send(
            self.http
                .get(format!("{}{path}", self.url))
                .bearer_auth(key),
        )
        .await
    }

    pub async fn delete(&self, path: &str, key: &str) -> Reply {
        self.send(
            self.http
                .delete(format!("{}{path}", self.url))
                .bearer_auth(key),
        )
        .await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        Reply::read(request.send().await.expect("gateway answers")).await
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("body");
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `data:` payloads of an SSE body, in order; `[DONE]` stays a string.
    pub fn sse_data(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.body)
            .split("\n\n")
            .filter_map(|event| {
                event
                    .lines()
                    .find_map(|line| line.strip_prefix("data: "))
                    .map(str::to_owned)
            })
            .collect()
    }

    /// The (event name, data) pairs of a named-event SSE body (Anthropic's Messages and
    /// OpenAI's Responses streams), checking each frame's framing and that its data's `type`
    /// is its name.
    pub fn named_events(&self) -> Vec<(String, Value)> {
        let body = String::from_utf8_lossy(&self.body).into_owned();
        assert!(body.ends_with("\n\n"), "{body}");
        body.split_terminator("\n\n")
            .map(|frame| {
                let (event, data) = frame
                    .split_once('\n')
                    .unwrap_or_else(|| panic!("frame without data: {frame:?}"));
                let name = event
                    .strip_prefix("event: ")
                    .expect("event line")
                    .to_owned();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").expect("data line"))
                        .expect("data is JSON");
                assert_eq!(data["type"], name.as_str(), "{frame}");
                (name, data)
            })
            .collect()
    }

    /// The SSE chunks as JSON (without the closing `[DONE]`).
    pub fn sse_chunks(&self) -> Vec<Value> {
        self.sse_data()
            .iter()
            .filter(|d| d.as_str() != "[DONE]")
            .map(|d| serde_json::from_str(d).expect("chunk json"))
            .collect()
    }

    /// Concatenated `delta.content` of choice 0.
    pub fn streamed_text(&self) -> String {
        self.sse_chunks()
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    pub fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_owned)
    }
}

/// The Prometheus text of `/metrics`. The registry is one per process, shared by every test of
/// this binary: tests read counters whose labels (a model, deployment or provider name) only they
/// use, and compare them before and after what they do.
pub struct Metrics(pub String);

impl Metrics {
    /// The sum of the samples of `name` whose labels include every one of `labels` (0 when none
    /// has been recorded).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
                if metric != name {
                    return None;
                }
                let found = parse_labels(rest.strip_suffix('}')?);
                let matches = labels
                    .iter()
                    .all(|(k, v)| found.iter().any(|(fk, fv)| fk == k && fv == v));
                matches.then(|| value.parse::<f64>().expect("a sample value"))
            })
            .sum()
    }
}

/// `a="x",b="y"` as pairs (values with `\"` and `\\` escapes unescaped).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        labels.push((key.trim_start_matches(',').to_owned(), value));
        rest = &after[end..];
    }
    labels
}

pub use gateway::clock::now_secs;

pub fn chat(model: &str, text: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// Runs a test body, failing it if it takes longer than `secs` instead of letting it hang.
pub async fn within<F: std::future::Future>(secs: u64, test: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(secs), test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {secs} s"))
}
