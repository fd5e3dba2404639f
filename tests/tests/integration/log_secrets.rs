//! No secret in the logs: `gateway-local` at `RUST_LOG=trace` and at its default level, with
//! provider keys set to recognisable values, goes through every route family (chat plain,
//! streamed, from the cache and failing; embeddings; the admin key API; files and batches;
//! collections; a provider that refuses its key and one that cannot be reached; a revoked and an
//! unknown gateway key), and nothing it wrote on stdout or stderr holds a provider key, a
//! gateway key or the admin key.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::batch::upload;
use crate::common::local::{ADMIN_KEY, LocalServer, TempDir, free_port};
use crate::common::{MockUpstream, UPSTREAM_KEY, within};

/// Refused by the mock provider (it requires [`UPSTREAM_KEY`]).
const WRONG_PROVIDER_KEY: &str = "sk-wrong-PROVIDER-SECRET-7f3a9c";
/// The key of a provider nobody listens for.
const UNREACHABLE_PROVIDER_KEY: &str = "sk-down-PROVIDER-SECRET-51be02";
/// The environment the config's providers read their keys from.
const PROVIDER_KEYS: [(&str, &str); 3] = [
    ("UPSTREAM_KEY", UPSTREAM_KEY),
    ("WRONG_PROVIDER_KEY", WRONG_PROVIDER_KEY),
    ("UNREACHABLE_PROVIDER_KEY", UNREACHABLE_PROVIDER_KEY),
];
/// Personal data sent to the `redact_logs` model: an email and a (Luhn-valid) card number.
const EMAIL: &str = "jane.sentinel@example.org";
const CARD: &str = "4111 1111 1111 1111";
/// A gateway key that was never issued.
const UNKNOWN_GATEWAY_KEY: &str = "gw-unknown-GATEWAY-SECRET-c0ffee";

fn config(upstream: &str, closed_port: u16) -> String {
    format!(
        r#"
[routing]
max_attempts = 1

[providers.mock]
kind = "mock"

[providers.upstream]
kind = "openai"
base_url = "{upstream}/v1"
api_key_env = "UPSTREAM_KEY"

[providers.refused]
kind = "openai"
base_url = "{upstream}/v1"
api_key_env = "WRONG_PROVIDER_KEY"

[providers.down]
kind = "openai"
base_url = "http://127.0.0.1:{closed_port}/v1"
api_key_env = "UNREACHABLE_PROVIDER_KEY"

[models.gpt]
deployments = [{{ provider = "upstream", model = "gpt-test" }}]

[models.gpt-embed]
kind = "embedding"
deployments = [{{ provider = "upstream", model = "embed-test" }}]

[models.mock-embed]
kind = "embedding"
deployments = [{{ provider = "mock", model = "mock-embed" }}]

[models.private]
deployments = [{{ provider = "upstream", model = "gpt-test" }}]
[models.private.guard]
pii = "redact_logs"

[models.refused]
deployments = [{{ provider = "refused", model = "gpt-test" }}]

[models.down]
deployments = [{{ provider = "down", model = "gpt-test" }}]
"#
    )
}

struct Client {
    url: String,
    http: reqwest::Client,
}

impl Client {
    async fn call(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(key)
            .timeout(Duration::from_secs(20));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("answered");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, key, Some(body)).await
    }
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "temperature": 0, "messages": [{"role": "user", "content": text}]})
}

/// Every route family once; returns the gateway keys it was given.
async fn exercise(client: &Client) -> Vec<String> {
    let (status, created) = client
        .post(
            "/v1/admin/keys",
            ADMIN_KEY,
            json!({"name": "log-test", "tenant": "acme"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().expect("a secret").to_owned();
    let key_id = created["id"].as_str().expect("an id").to_owned();
    let (status, listed) = client
        .call(Method::GET, "/v1/admin/keys", ADMIN_KEY, None)
        .await;
    assert_eq!(status, 200, "{listed}");

    // Chat: plain, then the same from the cache, streamed, and refused by the gateway.
    let plain = chat("gpt", "hello from the log test");
    assert_eq!(
        client
            .post("/v1/chat/completions", &key, plain.clone())
            .await
            .0,
        200
    );
    assert_eq!(
        client.post("/v1/chat/completions", &key, plain).await.0,
        200
    );
    let mut streamed = chat("gpt", "stream for the log test");
    streamed["stream"] = json!(true);
    assert_eq!(
        client.post("/v1/chat/completions", &key, streamed).await.0,
        200
    );
    assert_eq!(
        client
            .post("/v1/chat/completions", &key, chat("no-such-model", "x"))
            .await
            .0,
        404
    );
    // Providers that refuse the key or cannot be reached.
    let (status, refused) = client
        .post("/v1/chat/completions", &key, chat("refused", "x"))
        .await;
    assert!(status >= 400, "{refused}");
    let (status, down) = client
        .post("/v1/chat/completions", &key, chat("down", "x"))
        .await;
    assert!(status >= 500, "{down}");

    let (status, embedded) = client
        .post(
            "/v1/embeddings",
            &key,
            json!({"model": "gpt-embed", "input": ["one", "two"]}),
        )
        .await;
    assert_eq!(status, 200, "{embedded}");

    // Files and a batch, run to its end by the in-process worker.
    let line = json!({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
        "body": chat("gpt", "batch item for the log test")});
    let file = upload(&client.url, &key, format!("{line}\n")).await;
    let file_id = file["id"].as_str().expect("a file id");
    let (status, batch) = client
        .post(
            "/v1/batches",
            &key,
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                "completion_window": "24h"}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    let batch_path = format!("/v1/batches/{}", batch["id"].as_str().expect("a batch id"));
    for _ in 0..100 {
        let (_, batch) = client.call(Method::GET, &batch_path, &key, None).await;
        if batch["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Collections: create, add, query.
    let (status, collection) = client
        .post(
            "/v1/collections",
            &key,
            json!({"name": "notes", "embedding_model": "mock-embed"}),
        )
        .await;
    assert!(status < 300, "{collection}");
    let (status, added) = client
        .post(
            "/v1/collections/notes/documents",
            &key,
            json!({"documents": [{"id": "a.txt", "text": "The VPN portal resets passwords."}]}),
        )
        .await;
    assert_eq!(status, 200, "{added}");
    let (status, found) = client
        .post(
            "/v1/collections/notes/query",
            &key,
            json!({"query": "reset password", "top_k": 2}),
        )
        .await;
    assert_eq!(status, 200, "{found}");

    // Revoked and unknown gateway keys.
    let (status, revoked) = client
        .call(
            Method::DELETE,
            &format!("/v1/admin/keys/{key_id}"),
            ADMIN_KEY,
            None,
        )
        .await;
    assert!(status < 300, "{revoked}");
    assert_eq!(
        client
            .post("/v1/chat/completions", &key, chat("gpt", "x"))
            .await
            .0,
        401
    );
    assert_eq!(
        client
            .post(
                "/v1/chat/completions",
                UNKNOWN_GATEWAY_KEY,
                chat("gpt", "x")
            )
            .await
            .0,
        401
    );
    vec![key]
}

async fn no_secret_in_logs(rust_log: Option<&str>) {
    let upstream = MockUpstream::start(&[]);
    let dir = TempDir::new("log-secrets");
    let server = LocalServer::start_logging(
        dir.path(),
        &config(&upstream.url, free_port()),
        &[
            ("UPSTREAM_KEY", UPSTREAM_KEY),
            ("WRONG_PROVIDER_KEY", WRONG_PROVIDER_KEY),
            ("UNREACHABLE_PROVIDER_KEY", UNREACHABLE_PROVIDER_KEY),
        ],
        rust_log,
    );
    let client = Client {
        url: server.url.clone(),
        http: gateway::tls::http_client(),
    };
    let gateway_keys = exercise(&client).await;
    // Lines written after the last response (settling, the batch worker) arrive too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let output = server.output();
    // The capture works: the failed provider calls are logged at every level.
    assert!(
        output.iter().any(|l| l.contains("provider call failed")),
        "{output:?}"
    );
    let mut secrets = vec![
        UPSTREAM_KEY.to_owned(),
        WRONG_PROVIDER_KEY.to_owned(),
        UNREACHABLE_PROVIDER_KEY.to_owned(),
        UNKNOWN_GATEWAY_KEY.to_owned(),
        ADMIN_KEY.to_owned(),
    ];
    secrets.extend(gateway_keys);
    for secret in &secrets {
        let leaks: Vec<&String> = output.iter().filter(|l| l.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "`{secret}` is in the output at RUST_LOG={rust_log:?}:\n{}",
            leaks
                .iter()
                .take(5)
                .map(|l| l.chars().take(600).collect::<String>())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                found.push(path);
            }
        }
    }
    found
}

/// Under `pii = "redact_logs"` the provider sees the personal data and the client gets its
/// answer, but no log line at trace level, no cache entry and no batch result file holds it.
#[tokio::test]
async fn personal_data_under_redact_logs_stays_out_of_logs_cache_and_batch_files() {
    within(120, async {
        let upstream = MockUpstream::start(&[]);
        let dir = TempDir::new("log-pii");
        let server = LocalServer::start_logging(
            dir.path(),
            &config(&upstream.url, free_port()),
            &PROVIDER_KEYS,
            Some("trace"),
        );
        let client = Client {
            url: server.url.clone(),
            http: gateway::tls::http_client(),
        };
        let prompt = format!("Mail {EMAIL} about card {CARD}, please.");
        let (status, created) = client
            .post("/v1/admin/keys", ADMIN_KEY, json!({"name": "pii-logs"}))
            .await;
        assert_eq!(status, 201, "{created}");
        let key = created["key"].as_str().expect("a secret").to_owned();
        for _ in 0..2 {
            let response = client
                .http
                .post(format!("{}/v1/chat/completions", client.url))
                .bearer_auth(&key)
                .json(&chat("private", &prompt))
                .send()
                .await
                .expect("answered");
            // Never answered from the shared cache.
            assert_ne!(
                response
                    .headers()
                    .get("x-gateway-cache")
                    .map(|v| v.as_bytes()),
                Some(&b"HIT"[..])
            );
            let answer: Value = response.json().await.expect("json");
            // The provider saw the text (the mock echoes it), so its absence below means
            // something.
            assert!(answer.to_string().contains(EMAIL), "{answer}");
        }
        let mut streamed = chat("private", &prompt);
        streamed["stream"] = json!(true);
        assert_eq!(
            client.post("/v1/chat/completions", &key, streamed).await.0,
            200
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        for needle in [EMAIL, CARD] {
            let stored = files_containing(&dir.path().join("data"), needle);
            assert!(stored.is_empty(), "`{needle}` is stored in {stored:?}");
        }

        // A batch item: its result file holds placeholders, not the data.
        let line = json!({"custom_id": "p", "method": "POST", "url": "/v1/chat/completions",
            "body": chat("private", &prompt)});
        let file = upload(&client.url, &key, format!("{line}\n")).await;
        let (status, batch) = client
            .post(
                "/v1/batches",
                &key,
                json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                    "completion_window": "24h"}),
            )
            .await;
        assert_eq!(status, 200, "{batch}");
        let batch_path = format!("/v1/batches/{}", batch["id"].as_str().expect("an id"));
        let mut done = Value::Null;
        for _ in 0..100 {
            done = client.call(Method::GET, &batch_path, &key, None).await.1;
            if done["status"] == "completed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let output_id = done["output_file_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{done}"));
        let output = client
            .http
            .get(format!("{}/v1/files/{output_id}/content", client.url))
            .bearer_auth(&key)
            .send()
            .await
            .expect("answered")
            .text()
            .await
            .expect("text");
        assert!(output.contains("\"custom_id\":\"p\""), "{output}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let logs = server.output();
        assert!(!logs.is_empty(), "no log lines captured");
        for needle in [EMAIL, CARD] {
            assert!(
                !output.contains(needle),
                "`{needle}` in the result file: {output}"
            );
            let leaks: Vec<&String> = logs.iter().filter(|l| l.contains(needle)).collect();
            assert!(
                leaks.is_empty(),
                "`{needle}` is logged:\n{}",
                leaks
                    .iter()
                    .take(5)
                    .map(|l| l.chars().take(600).collect::<String>())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    })
    .await;
}

#[tokio::test]
async fn no_secret_is_logged_at_trace_level() {
    within(120, no_secret_in_logs(Some("trace"))).await;
}

#[tokio::test]
async fn no_secret_is_logged_at_the_default_level() {
    within(120, no_secret_in_logs(None)).await;
}
