//! What an operator reads: Prometheus `/metrics`, which needs an admin key unless it is served on
//! a listener of its own (`server.metrics_listen`), and log lines, which carry the request id
//! and the details an error body leaves out. Through the router, and through `gateway-local`.

use std::time::Duration;

use crate::common::local::{ADMIN_KEY, LocalServer, TempDir, free_port};
use crate::common::{TestGateway, within};
use gateway::keys::NewKey;

const CONFIG: &str = r#"
[providers.mock]
kind = "mock"

[models.mock]
deployments = [{ provider = "mock", model = "mock" }]
"#;

async fn get(url: &str, key: Option<&str>) -> (u16, String) {
    let mut request = gateway::tls::http_client()
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

#[tokio::test]
async fn gateway_local_serves_metrics_without_a_key_only_on_metrics_listen() {
    within(60, async {
        let metrics_port = free_port();
        let config = format!("[server]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n{CONFIG}");
        let dir = TempDir::new("metrics-listen");
        let server = LocalServer::start(dir.path(), &config, &[]);
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
        let dir = TempDir::new("request-id-logs");
        let server = LocalServer::start(
            dir.path(),
            &config,
            &[("GATEWAY_TEST_UPSTREAM_KEY", "sk-test")],
        );
        let response = gateway::tls::http_client()
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
