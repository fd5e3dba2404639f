//! What a crash of `gateway-local` loses (README, "What a crash can lose"): spend and cache
//! entries go to SQLite through a background writer that commits every 100 ms, so a process
//! killed outright loses at most the last 100 ms of them; keys are written synchronously.

use std::time::Duration;

use crate::common::local::{ADMIN_KEY, LocalServer, TempDir, cli};
use crate::common::within;
use serde_json::{Value, json};

const CONFIG: &str = r#"
[providers.mock]
kind = "mock"

[models.mock]
deployments = [{ provider = "mock", model = "mock" }]
price = { input_per_mtok = 1000, output_per_mtok = 2000 }
"#;

/// A write this old when the process is killed has survived: the writer's 100 ms batch window,
/// and time for its commit.
const SETTLED: Duration = Duration::from_millis(300);

async fn post(url: &str, key: &str, body: &Value) -> reqwest::Response {
    gateway::tls::http_client()
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("answered")
}

/// Asks a cacheable question; the cache result and the cost of the answer.
async fn ask(url: &str, key: &str, text: &str) -> (String, f64) {
    let body =
        json!({"model": "mock", "temperature": 0, "messages": [{"role": "user", "content": text}]});
    let response = post(&format!("{url}/v1/chat/completions"), key, &body).await;
    assert_eq!(response.status().as_u16(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let cost = header("x-gateway-cost-usd").parse().expect("a cost");
    (header("x-gateway-cache"), cost)
}

/// The spend `keys list` shows for the key named `name`.
fn listed_spend(listing: &str, name: &str) -> f64 {
    let line = listing
        .lines()
        .find(|line| line.split_whitespace().nth(2) == Some(name))
        .unwrap_or_else(|| panic!("no key {name} in:\n{listing}"));
    // ID PREFIX NAME TENANT RPM TPM BUDGET_USD SPENT_USD STATUS
    line.split_whitespace()
        .nth(7)
        .and_then(|spent| spent.parse().ok())
        .unwrap_or_else(|| panic!("no spend in {line}"))
}

#[tokio::test]
async fn a_killed_gateway_loses_at_most_its_last_100_ms_of_spend_and_cache_entries() {
    within(60, async {
        let dir = TempDir::new("crash");
        let key = cli(dir.path(), &["keys", "create", "--name", "crashing"])
            .trim()
            .to_owned();
        let server = LocalServer::start(dir.path(), CONFIG, &[]);

        let mut settled_cost = 0.0;
        for i in 0..10 {
            let (cache, cost) = ask(&server.url, &key, &format!("settled question {i}")).await;
            assert_eq!(cache, "MISS");
            settled_cost += cost;
        }
        tokio::time::sleep(SETTLED).await;
        // Answered within the last few milliseconds before the crash: these may be lost.
        let mut recent_cost = 0.0;
        for i in 0..10 {
            recent_cost += ask(&server.url, &key, &format!("recent question {i}"))
                .await
                .1;
        }
        // A key made through the admin API just before the crash.
        let created = post(
            &format!("{}/v1/admin/keys", server.url),
            ADMIN_KEY,
            &json!({"name": "late"}),
        )
        .await;
        assert_eq!(created.status().as_u16(), 201);
        let created: Value =
            serde_json::from_slice(&created.bytes().await.expect("body")).expect("json");
        let late = created["key"].as_str().expect("a secret").to_owned();
        server.crash();

        let server = LocalServer::start(dir.path(), CONFIG, &[]);
        let spent = listed_spend(&cli(dir.path(), &["keys", "list"]), "crashing");
        // `keys list` prints 6 decimals.
        assert!(
            spent >= settled_cost - 1e-6,
            "spend older than {SETTLED:?} was lost: {spent} of {settled_cost}"
        );
        assert!(spent <= settled_cost + recent_cost + 1e-6, "{spent}");
        for i in 0..10 {
            let (cache, _) = ask(&server.url, &key, &format!("settled question {i}")).await;
            assert_eq!(
                cache, "HIT",
                "a cache entry older than {SETTLED:?} was lost"
            );
        }
        let mut recent_hits = 0;
        for i in 0..10 {
            if ask(&server.url, &key, &format!("recent question {i}"))
                .await
                .0
                == "HIT"
            {
                recent_hits += 1;
            }
        }
        eprintln!(
            "after SIGKILL: {recent_hits} of 10 cache entries and ${:.6} of ${recent_cost:.6} of \
             spend from the last moments survived; everything older than {SETTLED:?} did",
            spent - settled_cost
        );
        // Keys are written before the admin API answers.
        let (cache, _) = ask(&server.url, &late, "the late key still works").await;
        assert_eq!(cache, "MISS");
    })
    .await;
}
