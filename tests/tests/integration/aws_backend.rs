//! Two `gateway-local --backend aws` processes over one set of DynamoDB tables (moto): limits and
//! budgets stay exact across processes, as they must across Lambda containers.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::common::local::TempDir;
use crate::common::moto::Moto;
use crate::common::within;
use serde_json::json;

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

/// Everything a `gateway-local --backend aws` process needs to find its tables in moto.
struct Environment {
    vars: Vec<(&'static str, String)>,
    config: PathBuf,
    /// `--data-dir`: the AWS backend keeps nothing there, but the process must not create one
    /// in the checkout.
    data: TempDir,
}

impl Environment {
    fn new(moto: &Moto, name: &str) -> Self {
        let prefix = format!("{name}-{}", std::process::id());
        let config = std::env::temp_dir().join(format!("{prefix}.toml"));
        // Requests are built so that what is reserved is what is used (see `REQUEST`): settling
        // changes nothing, and the admitted count is exact however the burst interleaves.
        std::fs::write(
            &config,
            r#"
[providers.mock]
kind = "mock"
latency_ms = 500

[models.mock]
deployments = [{ provider = "mock", model = "mock" }]
price = { input_per_mtok = 0, output_per_mtok = 1000 }
"#,
        )
        .expect("config written");
        Self {
            vars: vec![
                ("AWS_ENDPOINT_URL", moto.endpoint().to_owned()),
                ("AWS_ACCESS_KEY_ID", "test".into()),
                ("AWS_SECRET_ACCESS_KEY", "test".into()),
                ("AWS_REGION", "us-east-1".into()),
                ("AWS_EC2_METADATA_DISABLED", "true".into()),
                ("GATEWAY_BACKEND", "aws".into()),
                ("GATEWAY_KEYS_TABLE", format!("{prefix}-keys")),
                ("GATEWAY_LIMITS_TABLE", format!("{prefix}-limits")),
                ("GATEWAY_CACHE_TABLE", format!("{prefix}-cache")),
                ("GATEWAY_AUDIT_TABLE", format!("{prefix}-audit")),
                ("RUST_LOG", "warn".into()),
                // moto is one Python process: a 500-request burst queues there for seconds.
                ("GATEWAY_DYNAMODB_TIMEOUT_MS", "60000".into()),
            ],
            config,
            data: TempDir::new(name),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(gateway_local());
        command
            .envs(self.vars.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("GATEWAY_ADMIN_KEY")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data.path())
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> String {
        let output = self
            .command()
            .args(args)
            .output()
            .expect("gateway-local runs");
        assert!(
            output.status.success(),
            "gateway-local {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    fn start(&self) -> Server {
        let mut child = self
            .command()
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("gateway-local starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("banner");
        // Keep the pipe drained, so the server never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in banner: {line}"))
            .to_owned();
        Server { child, url }
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The current calendar minute, by the clock the gateways read (the same machine's).
fn minute_now() -> u64 {
    gateway::clock::now_secs() / 60
}

/// A burst (see `burst`) counted in one RPM/TPM window: a burst that straddles a minute boundary
/// (it takes a few seconds) is sent again, with the next of `keys`, in the new minute.
async fn burst_in_one_minute(
    servers: &[Server],
    keys: &[String],
    count: usize,
    refused_by: &str,
) -> (usize, usize) {
    for key in keys {
        let minute = minute_now();
        let counts = burst(servers, key, count, refused_by).await;
        if minute_now() == minute {
            return counts;
        }
    }
    panic!("every burst straddled a minute boundary");
}

/// Fourteen one-letter words: the gateway's prompt estimate (27 characters / 4, rounded up, plus
/// 4 per message and 3) is 14 tokens, exactly what the mock counts (one per word). With
/// `max_tokens = 3` the mock answers exactly 3 tokens, so each request reserves and uses 17
/// tokens and costs 3 output tokens.
const PROMPT: &str = "a a a a a a a a a a a a a a";

/// What a refusal of each limit says: the limit's name, or the budget's error code.
const BY_RPM: &str = "requests per minute";
const BY_TPM: &str = "tokens per minute";
const BY_BUDGET: &str = "budget_exceeded";

/// Sends `count` requests at once, alternating between the servers; returns (admitted, refused),
/// and checks that every refusal is by the limit `refused_by` (see `BY_RPM` and the others).
async fn burst(servers: &[Server], key: &str, count: usize, refused_by: &str) -> (usize, usize) {
    let client = gateway::tls::http_client_builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let body = json!({"model": "mock", "max_tokens": 3, "messages": [{"role": "user", "content": PROMPT}]})
        .to_string();
    let urls: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.url.clone()).collect());
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let (client, urls, body, key) = (
                client.clone(),
                Arc::clone(&urls),
                body.clone(),
                key.to_owned(),
            );
            tokio::spawn(async move {
                let response = client
                    .post(format!("{}/v1/chat/completions", urls[i % urls.len()]))
                    .bearer_auth(key)
                    .header("content-type", "application/json")
                    .body(body)
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .expect("gateway answers");
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                let body = response.text().await.unwrap_or_default();
                (status, retry_after, body)
            })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for task in tasks {
        let (status, retry_after, body) = task.await.expect("task");
        match status {
            200 => admitted += 1,
            429 => {
                assert!(retry_after, "a 429 carries Retry-After");
                assert!(body.contains(refused_by), "refused by {refused_by}? {body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    (admitted, refused)
}

/// The tables, and a key made with `key_args`.
fn create_key(environment: &Environment, name: &str, key_args: &[&str]) -> String {
    let mut args = vec!["keys", "create", "--name", name];
    args.extend_from_slice(key_args);
    let key = environment.run(&args).trim().to_owned();
    assert!(key.starts_with("gw-"), "{key}");
    key
}

/// One test for every limit, one burst after another: moto answers one request at a time, so
/// parallel bursts would measure its queueing rather than the gateway (and the limiter's retries
/// on write conflicts would run out while it queues). Two keys per window limit: a burst that
/// straddles a minute boundary is sent again with the second.
#[tokio::test]
async fn limits_and_budgets_are_exact_across_two_processes() {
    within(300, async {
        let moto = Moto::for_bursts();
        let environment = Environment::new(&moto, "limits");
        environment.run(&["create-tables"]);
        let rpm = [
            create_key(&environment, "rpm", &["--rpm", "50"]),
            create_key(&environment, "rpm", &["--rpm", "50"]),
        ];
        // Each request reserves and uses 17 tokens.
        let tpm = [
            create_key(&environment, "tpm", &["--tpm", "510"]),
            create_key(&environment, "tpm", &["--tpm", "510"]),
        ];
        // Each answer is 3 output tokens at $1000 per million: $0.003; $0.06 buys exactly 20.
        let budget = create_key(&environment, "budget", &["--budget-usd", "0.06"]);
        let servers = [environment.start(), environment.start()];

        let counts = burst_in_one_minute(&servers, &rpm, 500, BY_RPM).await;
        assert_eq!(counts, (50, 450), "RPM 50: (admitted, refused)");

        let counts = burst_in_one_minute(&servers, &tpm, 500, BY_TPM).await;
        assert_eq!(counts, (30, 470), "TPM 510: (admitted, refused)");

        let counts = burst(&servers, &budget, 500, BY_BUDGET).await;
        assert_eq!(counts, (20, 480), "budget $0.06: (admitted, refused)");
        // Spend is settled after the answers; it reaches the budget and the key list shows it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let listing = environment.run(&["keys", "list"]);
        let line = listing
            .lines()
            .find(|line| line.contains(" budget "))
            .unwrap_or_else(|| panic!("no budget key in {listing}"));
        assert!(line.contains("0.060000"), "{listing}");
        let counts = burst(&servers, &budget, 5, BY_BUDGET).await;
        assert_eq!(counts, (0, 5), "budget spent: (admitted, refused)");

        // Keys with RPM, TPM and a budget at once, whose admission is one DynamoDB transaction over
        // three items: each limit binds in turn, every refusal is by that limit (a refusal reserves
        // nothing under the others: had it, the others would start refusing within the burst).
        let all_three = |rpm: &str, tpm: &str, budget: &str| {
            create_key(
                &environment,
                "all-three",
                &["--rpm", rpm, "--tpm", tpm, "--budget-usd", budget],
            )
        };
        // RPM 25 binds (TPM 1000 admits 58, the budget 333).
        let rpm_binds = [all_three("25", "1000", "1"), all_three("25", "1000", "1")];
        let counts = burst_in_one_minute(&servers, &rpm_binds, 200, BY_RPM).await;
        assert_eq!(
            counts,
            (25, 175),
            "RPM binding with TPM and budget: (admitted, refused)"
        );
        // TPM 340 binds at 20 (RPM 100, the budget 333).
        let tpm_binds = [all_three("100", "340", "1"), all_three("100", "340", "1")];
        let counts = burst_in_one_minute(&servers, &tpm_binds, 200, BY_TPM).await;
        assert_eq!(
            counts,
            (20, 180),
            "TPM binding with RPM and budget: (admitted, refused)"
        );
        // $0.045 binds at 15 (RPM 100, TPM 58); in any minute.
        let budget_binds = all_three("100", "1000", "0.045");
        let counts = burst(&servers, &budget_binds, 200, BY_BUDGET).await;
        assert_eq!(
            counts,
            (15, 185),
            "budget binding with RPM and TPM: (admitted, refused)"
        );
    })
    .await;
}

/// `create-tables` makes the audit table too, so key administration on the AWS backend is
/// recorded there and listed by `keys audit`.
#[tokio::test]
async fn create_tables_makes_the_audit_table_key_administration_writes_to() {
    within(120, async {
        let moto = Moto::shared();
        let environment = Environment::new(&moto, "audit-table");
        let ready = environment.run(&["create-tables"]);
        assert!(ready.contains("-audit"), "{ready}");
        let key = create_key(&environment, "audited", &[]);
        let listing = environment.run(&["keys", "audit"]);
        let entries: Vec<serde_json::Value> = listing
            .lines()
            .map(|line| serde_json::from_str(line).expect("an entry per line"))
            .collect();
        assert_eq!(entries.len(), 1, "{listing}");
        assert_eq!(entries[0]["action"], "create");
        assert!(!listing.contains(&key), "the secret is never audited");
    })
    .await;
}
