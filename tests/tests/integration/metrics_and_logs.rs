//! What an operator reads: Prometheus `/metrics`, which needs an admin key unless it is served on
//! a listener of its own (`server.metrics_listen`), and log lines, which carry the request id
//! and the details an error body leaves out. Through the router, and through `gateway-local`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{TestGateway, within};
use gateway::keys::NewKey;

const CONFIG: &str = r#"
[providers.mock]
kind = "mock"

[models.mock]
deployments = [{ provider = "mock", model = "mock" }]
"#;

const ADMIN_KEY: &str = "gw-operator-test-admin";

async fn get(url: &str, key: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test]
async fn metrics_on_the_main_router_need_an_admin_key() {
    within(30, async {
        let gw = TestGateway::start(CONFIG).await;
        let user = gw.plain_key().await;
        let (admin, _) = gw
            .key(NewKey {
                name: "ops".into(),
                admin: true,
                ..NewKey::default()
            })
            .await;
        let url = format!("{}/metrics", gw.url);
        let (status, body) = get(&url, None).await;
        assert_eq!(status, 401, "{body}");
        assert!(!body.contains("gateway_"), "{body}");
        let (status, body) = get(&url, Some(&user)).await;
        assert_eq!(status, 403, "{body}");
        assert!(!body.contains("gateway_"), "{body}");
        let (status, body) = get(&url, Some(&admin)).await;
        assert_eq!(status, 200);
        assert!(body.contains("# EOF"), "{body}");
    })
    .await;
}

#[tokio::test]
async fn the_metrics_router_serves_metrics_alone_without_a_key() {
    within(30, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, gateway::http::metrics_router()).await;
        });
        let (status, body) = get(&format!("{url}/metrics"), None).await;
        assert_eq!(status, 200);
        assert!(body.contains("# EOF"), "{body}");
        // Nothing else is served there.
        assert_eq!(get(&format!("{url}/v1/models"), None).await.0, 404);
        assert_eq!(get(&format!("{url}/health"), None).await.0, 404);
    })
    .await;
}

/// The `gateway-local` binary of this workspace (built by `tests/run` before the tests).
fn gateway_local() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let binary = target.join("debug/gateway-local");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p local` (tests/run does)",
        binary.display()
    );
    binary
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// `gateway-local` with an embedded store in a folder of its own, its log lines collected;
/// killed when dropped.
struct LocalServer {
    child: Child,
    url: String,
    logs: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
}

impl LocalServer {
    fn start(name: &str, config: &str, env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("gateway-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("folder");
        let config_path = dir.join("gateway.toml");
        std::fs::write(&config_path, config).expect("config written");
        let mut child = Command::new(gateway_local())
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .env("GATEWAY_ADMIN_KEY", ADMIN_KEY)
            .env("GATEWAY_BACKEND", "embedded")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gateway-local starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let collected = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Ok(mut logs) = collected.lock() {
                    logs.push(line);
                }
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("banner");
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in banner: {line}"))
            .to_owned();
        Self {
            child,
            url,
            logs,
            dir,
        }
    }

    /// The first log line that contains every one of `needles`, waiting up to 5 s for it.
    async fn log_line(&self, needles: &[&str]) -> String {
        for _ in 0..50 {
            let found = self.logs.lock().ok().and_then(|logs| {
                logs.iter()
                    .find(|line| needles.iter().all(|n| line.contains(n)))
                    .cloned()
            });
            if let Some(line) = found {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs = self.logs.lock().map(|l| l.join("\n")).unwrap_or_default();
        panic!("no log line with {needles:?}:\n{logs}");
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn gateway_local_serves_metrics_without_a_key_only_on_metrics_listen() {
    within(60, async {
        let metrics_port = free_port();
        let config = format!("[server]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n{CONFIG}");
        let server = LocalServer::start("metrics-listen", &config, &[]);
        let (status, body) = get(&format!("http://127.0.0.1:{metrics_port}/metrics"), None).await;
        assert_eq!(status, 200);
        assert!(body.contains("# EOF"), "{body}");
        // The main listener still needs an admin key.
        let main = format!("{}/metrics", server.url);
        assert_eq!(get(&main, None).await.0, 401);
        assert_eq!(get(&main, Some(ADMIN_KEY)).await.0, 200);
    })
    .await;
}

#[tokio::test]
async fn a_provider_failure_is_logged_in_full_with_the_request_id() {
    within(60, async {
        let closed = free_port();
        let config = format!(
            r#"
[routing]
max_attempts = 1

[providers.azure-east]
kind = "azure"
base_url = "http://127.0.0.1:{closed}"
api_key_env = "GATEWAY_TEST_UPSTREAM_KEY"
api_version = "2024-10-21"

[models.gpt-east]
deployments = [{{ provider = "azure-east", model = "secret-deployment" }}]
"#
        );
        let server = LocalServer::start(
            "request-id-logs",
            &config,
            &[("GATEWAY_TEST_UPSTREAM_KEY", "sk-test")],
        );
        let response = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", server.url))
            .bearer_auth(ADMIN_KEY)
            .header("x-request-id", "req-operator-test-1")
            .header("content-type", "application/json")
            .body(
                serde_json::json!({"model": "gpt-east", "messages": [{"role": "user", "content": "hi"}]})
                    .to_string(),
            )
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status().as_u16(), 502);
        assert_eq!(
            response.headers()["x-request-id"].to_str().ok(),
            Some("req-operator-test-1")
        );
        let body = response.text().await.unwrap_or_default();
        assert!(!body.contains("secret-deployment"), "{body}");
        // What the body leaves out is in the log, under the request's id.
        let line = server
            .log_line(&[
                "req-operator-test-1",
                "provider call failed",
                &format!("127.0.0.1:{closed}"),
                "secret-deployment",
            ])
            .await;
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
        assert_eq!(parsed["span"]["request_id"], "req-operator-test-1");
    })
    .await;
}
