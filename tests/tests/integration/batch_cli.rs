//! `gateway-local batch` (the CLI, an HTTP client of a running gateway) against a real
//! `gateway-local` process, whose embedded queue and worker run the batch: submit (a file posted
//! whole, and one sent through the Uploads API in parts), watch until it ends, and the results
//! (output file, error file, one `custom_id`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::common::batch::line;
use crate::common::local::{LocalServer, TempDir, cli, gateway_local};
use crate::common::within;

const CONFIG: &str = r#"
[providers.mock]
kind = "mock"

[models.mock]
deployments = [{ provider = "mock", model = "mock" }]
price = { input_per_mtok = 1000, output_per_mtok = 2000 }
"#;

/// `gateway-local batch <args>` against `server` with `key` (given as `GATEWAY_API_KEY`, as a
/// user would export it); run off the async runtime, since `watch` blocks for seconds.
async fn batch(server: &LocalServer, key: &str, args: &[&str]) -> Output {
    let mut command = Command::new(gateway_local());
    command
        .arg("batch")
        .args(args)
        .args(["--url", &server.url])
        .env("GATEWAY_API_KEY", key)
        .env_remove("OPENAI_API_KEY")
        .env_remove("GATEWAY_URL")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || command.output().expect("gateway-local runs"))
        .await
        .expect("joined")
}

/// Its standard output, after checking that it succeeded.
async fn batch_ok(server: &LocalServer, key: &str, args: &[&str]) -> String {
    let output = batch(server, key, args).await;
    assert!(
        output.status.success(),
        "gateway-local batch {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn write_input(dir: &Path, name: &str, lines: &[String]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").expect("input written");
    path.to_str().expect("utf-8 path").to_owned()
}

/// The JSONL records of a results listing.
fn records(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn custom_ids(records: &[Value]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| r["custom_id"].as_str().expect("custom_id").to_owned())
        .collect()
}

/// Creates a key in a fresh data folder and starts `gateway-local` on it.
fn start(name: &str) -> (TempDir, LocalServer, String) {
    let dir = TempDir::new(name);
    let key = cli(dir.path(), &["keys", "create", "--name", name])
        .trim()
        .to_owned();
    let server = LocalServer::start(dir.path(), CONFIG, &[]);
    (dir, server, key)
}

#[tokio::test]
async fn submit_watch_and_results_run_a_batch_with_one_bad_line_to_the_end() {
    within(120, async {
        let (dir, server, key) = start("batch-cli");
        let lines: Vec<String> = (0..12)
            .map(|i| {
                let model = if i == 5 { "no-such-model" } else { "mock" };
                line(&format!("req-{i}"), model, &format!("question {i}"))
            })
            .collect();
        let input = write_input(dir.path(), "input.jsonl", &lines);

        let submitted = batch_ok(&server, &key, &["submit", &input, "--metadata", "run=cli"]).await;
        let id = submitted.trim().to_owned();
        assert!(id.starts_with("batch_"), "submit printed {submitted:?}");

        let watched = batch_ok(&server, &key, &["watch", &id, "--timeout-secs", "90"]).await;
        assert!(watched.contains(&format!("{id} completed")), "{watched}");
        assert!(
            watched.contains("requests: 12 total, 11 completed, 1 failed"),
            "{watched}"
        );

        let output = records(&batch_ok(&server, &key, &["results", &id]).await);
        let expected: BTreeSet<String> = (0..12)
            .filter(|&i| i != 5)
            .map(|i| format!("req-{i}"))
            .collect();
        assert_eq!(output.len(), 11, "one record per good line");
        assert_eq!(custom_ids(&output), expected);
        for record in &output {
            assert_eq!(record["response"]["status_code"], 200, "{record}");
        }

        let errors = records(&batch_ok(&server, &key, &["results", &id, "--errors"]).await);
        assert_eq!(custom_ids(&errors), BTreeSet::from(["req-5".to_owned()]));

        let one =
            records(&batch_ok(&server, &key, &["results", &id, "--custom-id", "req-3"]).await);
        assert_eq!(custom_ids(&one), BTreeSet::from(["req-3".to_owned()]));

        let status = batch_ok(&server, &key, &["status", &id]).await;
        assert!(status.starts_with(&format!("{id} completed")), "{status}");
        assert!(status.contains("output_file_id: file-"), "{status}");
        let listed = batch_ok(&server, &key, &["list", "--limit", "5"]).await;
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(&id) && l.contains("completed")),
            "{listed}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_file_over_the_part_size_is_submitted_through_the_uploads_api() {
    within(120, async {
        let (dir, server, key) = start("batch-cli-parts");
        let padding = "x".repeat(1500);
        let lines: Vec<String> = (0..100)
            .map(|i| line(&format!("big-{i}"), "mock", &format!("{i} {padding}")))
            .collect();
        let input = write_input(dir.path(), "big.jsonl", &lines);
        let size = std::fs::metadata(&input).expect("input").len();
        assert!(size > 2 * 65_536 && size <= 3 * 65_536, "{size} bytes");

        let output = batch(&server, &key, &["submit", &input, "--part-size", "65536"]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(stderr.contains("uploaded part 3 of 3"), "{stderr}");
        let id = String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_owned();

        batch_ok(&server, &key, &["watch", &id, "--timeout-secs", "90"]).await;
        let results = records(&batch_ok(&server, &key, &["results", &id]).await);
        let expected: BTreeSet<String> = (0..100).map(|i| format!("big-{i}")).collect();
        assert_eq!(results.len(), 100);
        assert_eq!(custom_ids(&results), expected);
    })
    .await;
}

#[tokio::test]
async fn the_cli_prints_the_gateways_error_and_fails() {
    within(60, async {
        let (_dir, server, key) = start("batch-cli-errors");
        let output = batch(&server, &key, &["status", "batch_missing"]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr
                .contains("GET /v1/batches/batch_missing: HTTP 404: No such batch: batch_missing"),
            "{stderr}"
        );

        let output = batch(&server, "gw-not-a-key", &["list"]).await;
        assert!(!output.status.success());
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("HTTP 401"),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    })
    .await;
}
