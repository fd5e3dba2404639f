//! `gateway-local ingest DIR --collection C` (an HTTP client of a running gateway) against a
//! real `gateway-local` process: the .txt and .md files under a folder become documents whose
//! ids are their paths, a second run over unchanged files embeds nothing, and the collection
//! answers queries from what was ingested.

use std::process::{Command, Output, Stdio};

use serde_json::json;

use crate::common::local::{LocalServer, TempDir, cli, gateway_local};
use crate::common::within;

const CONFIG: &str = r#"
[providers.mock]
kind = "mock"

[models.mock-embed]
kind = "embedding"
deployments = [{ provider = "mock", model = "mock-embed" }]
"#;

async fn ingest(server: &LocalServer, key: &str, args: &[&str]) -> Output {
    let mut command = Command::new(gateway_local());
    command
        .arg("ingest")
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

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "gateway-local ingest failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_cli_ingests_a_folder_and_a_second_run_embeds_nothing() {
    within(120, async {
        let dir = TempDir::new("ingest-cli");
        let server = LocalServer::start(dir.path(), CONFIG, &[]);
        let key = cli(dir.path(), &["keys", "create", "--name", "me"])
            .trim()
            .to_owned();
        let docs = dir.path().join("docs");
        std::fs::create_dir_all(docs.join("hr")).unwrap();
        std::fs::write(
            docs.join("vpn.md"),
            "# VPN\n\nReset your VPN password in the VPN portal.",
        )
        .unwrap();
        std::fs::write(
            docs.join("hr/holidays.txt"),
            "Employees get twenty five holiday days per year.",
        )
        .unwrap();
        std::fs::write(docs.join("logo.png"), "not a document").unwrap();
        let folder = docs.to_str().unwrap();

        let first = stdout_of(
            &ingest(
                &server,
                &key,
                &[
                    folder,
                    "--collection",
                    "handbook",
                    "--create",
                    "--model",
                    "mock-embed",
                ],
            )
            .await,
        );
        assert!(first.contains("ingested 2 files into handbook"), "{first}");
        assert!(
            first.contains("2 created, 0 replaced, 0 unchanged"),
            "{first}"
        );
        assert!(!first.contains("; 0 embedding calls"), "{first}");

        let second = stdout_of(&ingest(&server, &key, &[folder, "--collection", "handbook"]).await);
        assert!(
            second.contains("0 created, 0 replaced, 2 unchanged"),
            "{second}"
        );
        assert!(second.contains("; 0 embedding calls"), "{second}");

        let http = gateway::tls::http_client();
        let answer: serde_json::Value = http
            .post(format!("{}/v1/collections/handbook/query", server.url))
            .bearer_auth(&key)
            .json(&json!({"query": "how many holiday days per year", "top_k": 2}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            answer["data"][0]["document_id"], "hr/holidays.txt",
            "{answer}"
        );

        // A collection that does not exist, without --create: a clear failure.
        let missing = ingest(&server, &key, &[folder, "--collection", "nope"]).await;
        assert!(!missing.status.success());
        let stderr = String::from_utf8_lossy(&missing.stderr);
        assert!(stderr.contains("No collection named `nope`"), "{stderr}");
    })
    .await;
}
