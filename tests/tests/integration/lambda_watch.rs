//! The built `chat` binary (`target/debug/chat`) as a Lambda function under `cargo lambda watch`,
//! over DynamoDB tables in moto: plain and streamed completions and a 401 through watch's HTTP
//! front (`/lambda-url/<function>/...`), which turns each request into a Function URL-style
//! (API Gateway v2) event and hands it to the function through its emulated Runtime API.
//!
//! `tests/cargo-lambda` installs cargo-lambda; `tests/run` passes its path in `CARGO_LAMBDA`.
//!
//! Watch runs with `--only-lambda-apis`: it builds and starts nothing, and the test starts the
//! prebuilt binary itself with `AWS_LAMBDA_RUNTIME_API` pointing at watch. Watch only serves
//! functions that are binaries of the package it reads with `cargo metadata`, so it is given a
//! stub manifest in a temporary folder naming the two functions below (never compiled); that keeps
//! it away from the workspace, whose files and `Cargo.lock` other builds are using.
//!
//! Response modes: watch 1.9's front sends `requestContext.domainName = "localhost"`, not the
//! `<id>.lambda-url.<region>.on.aws` of a real Function URL, so `GATEWAY_RESPONSE_MODE=auto` would
//! answer it buffered, like an HTTP API. Each function therefore sets its mode explicitly, both
//! behind one watch instance: `chat` streams every answer (what `auto` does for a real Function URL
//! or a REST API with response streaming) and `chat-buffered` buffers every answer (what `auto`
//! does for an HTTP API or an ALB). Both must answer plain and streamed requests correctly.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::moto::Moto;
use crate::common::within;
use serde_json::{Value, json};

/// How long watch may take to serve its port (it runs `cargo metadata` first).
const WATCH_READY_WITHIN: Duration = Duration::from_secs(60);
/// How long one request through watch may take, the function's first poll included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The mock's pause before each chunk: a stream that really streams spreads its chunks over time.
const CHUNK_DELAY_MS: u64 = 100;
const PROMPT: &str = "hello through cargo lambda watch";
const ANSWER: &str = "Mock answer to: hello through cargo lambda watch";

/// The two functions watch serves (binary names in the stub manifest) and their response modes.
const STREAMING: &str = "chat";
const BUFFERED: &str = "chat-buffered";

/// A binary of this workspace, built by `tests/run` before the tests.
fn workspace_binary(name: &str, package: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let binary = target.join("debug").join(name);
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p {package}` (tests/run does)",
        binary.display()
    );
    binary
}

/// The `cargo-lambda` executable from `CARGO_LAMBDA`; the test fails without it.
fn cargo_lambda() -> PathBuf {
    let path = std::env::var_os("CARGO_LAMBDA")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "CARGO_LAMBDA is not set: it must name the `cargo-lambda` executable. Run the \
                 tests through `tests/run`, or as `CARGO_LAMBDA=$(tests/cargo-lambda) cargo test \
                 -p gateway-tests --test integration lambda_watch`."
            )
        });
    assert!(
        path.is_file(),
        "CARGO_LAMBDA={} does not exist: run tests/cargo-lambda",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

fn unique_name(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("gateway-{what}-{}-{nanos}", std::process::id())
}

/// A temporary folder (outside every crate, so no log written there triggers a rebuild), removed
/// on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let path = std::env::temp_dir().join(unique_name(what));
        std::fs::create_dir_all(&path).expect("temporary folder");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed when dropped, its output in a log file read back for failure messages.
struct Process {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Process {
    fn spawn(mut command: Command, name: &'static str, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { child, name, log }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the process has written, and whether it is still running.
    fn report(&mut self) -> String {
        let state = match self.child.try_wait() {
            Ok(None) => "running".to_owned(),
            Ok(Some(status)) => format!("exited: {status}"),
            Err(e) => format!("state unknown: {e}"),
        };
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: String = log
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        format!(
            "--- {} ({state}), {}:\n{tail}",
            self.name,
            self.log.display()
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cargo lambda watch --only-lambda-apis` on a free loopback port: the Runtime API the functions
/// poll and the HTTP front the test calls.
struct Watch {
    process: Process,
    port: u16,
}

impl Watch {
    fn start(dir: &Path) -> Self {
        let cargo_lambda = cargo_lambda();
        // The package watch reads its function names from: one binary per function. The sources
        // are never compiled (watch starts nothing with --only-lambda-apis).
        let manifest_dir = dir.join("functions");
        std::fs::create_dir_all(&manifest_dir).expect("manifest folder");
        std::fs::write(manifest_dir.join("main.rs"), "fn main() {}\n").expect("stub source");
        std::fs::write(
            manifest_dir.join("Cargo.toml"),
            format!(
                r#"[package]
name = "chat-under-watch"
version = "0.0.0"
edition = "2021"
publish = false

[workspace]

[[bin]]
name = "{STREAMING}"
path = "main.rs"

[[bin]]
name = "{BUFFERED}"
path = "main.rs"
"#
            ),
        )
        .expect("stub manifest");
        // Another process can take the free port between the probe and watch's bind: try again.
        let mut failures = Vec::new();
        for attempt in 0..3 {
            let port = free_port();
            let mut command = Command::new(&cargo_lambda);
            command
                .args(["lambda", "watch", "--only-lambda-apis", "--quiet"])
                .args(["--invoke-address", "127.0.0.1"])
                .args(["--invoke-port", &port.to_string()])
                .arg("--manifest-path")
                .arg(manifest_dir.join("Cargo.toml"))
                .current_dir(dir)
                .env("NO_COLOR", "1");
            let log = dir.join(format!("watch-{attempt}.log"));
            let mut process = Process::spawn(command, "cargo lambda watch", log);
            let deadline = Instant::now() + WATCH_READY_WITHIN;
            while process.running() && Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self { process, port };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            failures.push(process.report());
        }
        panic!(
            "cargo lambda watch ({}) did not serve its port:\n{}",
            cargo_lambda.display(),
            failures.join("\n")
        );
    }

    /// The value of `AWS_LAMBDA_RUNTIME_API` for `function`: watch's Runtime API lives under
    /// `/.rt`, and `/.rt/<function>` is that function's own queue of invocations.
    fn runtime_api(&self, function: &str) -> String {
        format!("http://127.0.0.1:{}/.rt/{function}", self.port)
    }

    /// The Function URL-style front of `function`.
    fn url(&self, function: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}/lambda-url/{function}{path}", self.port)
    }
}

/// The AWS and gateway settings shared by `gateway-local` (tables, key) and the function.
struct Environment {
    vars: Vec<(&'static str, String)>,
}

impl Environment {
    fn new(moto: &Moto, config: &Path) -> Self {
        let prefix = unique_name("watch");
        Self {
            vars: vec![
                ("AWS_ENDPOINT_URL", moto.endpoint().to_owned()),
                ("AWS_ACCESS_KEY_ID", "test".into()),
                ("AWS_SECRET_ACCESS_KEY", "test".into()),
                ("AWS_REGION", "us-east-1".into()),
                ("AWS_EC2_METADATA_DISABLED", "true".into()),
                ("GATEWAY_KEYS_TABLE", format!("{prefix}-keys")),
                ("GATEWAY_LIMITS_TABLE", format!("{prefix}-limits")),
                ("GATEWAY_CACHE_TABLE", format!("{prefix}-cache")),
                ("GATEWAY_CONFIG", config.display().to_string()),
                ("RUST_LOG", "info".into()),
            ],
        }
    }

    fn command(&self, binary: PathBuf) -> Command {
        let mut command = Command::new(binary);
        command
            .envs(self.vars.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("GATEWAY_ADMIN_KEY")
            .env_remove("GATEWAY_RESPONSE_MODE")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL_DYNAMODB");
        command
    }

    /// Runs `gateway-local --backend aws` with `args`; its stdout.
    fn gateway_local(&self, args: &[&str]) -> String {
        let output = self
            .command(workspace_binary("gateway-local", "local"))
            .args(["--backend", "aws"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("gateway-local runs");
        assert!(
            output.status.success(),
            "gateway-local {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    /// The chat binary as `function` behind `watch`, answering in `mode`.
    fn chat(&self, watch: &Watch, function: &str, mode: &str, log: PathBuf) -> Process {
        let mut command = self.command(workspace_binary("chat", "chat"));
        command
            .env("GATEWAY_RESPONSE_MODE", mode)
            .env("AWS_LAMBDA_RUNTIME_API", watch.runtime_api(function))
            .env("AWS_LAMBDA_FUNCTION_NAME", function)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{function}"),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .env_remove("AWS_LAMBDA_MAX_CONCURRENCY");
        Process::spawn(command, "chat", log)
    }
}

/// A request through watch's front; the response's status, headers and body chunks with the time
/// each arrived after the request was sent.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    chunks: Vec<(Duration, bytes::Bytes)>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn body(&self) -> String {
        let bytes: Vec<u8> = self.chunks.iter().flat_map(|(_, c)| c.to_vec()).collect();
        String::from_utf8(bytes).expect("utf-8 body")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body())
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body()))
    }

    /// When the first byte of `needle` arrived, if it did.
    fn arrival_of(&self, needle: &str) -> Option<Duration> {
        let mut seen = Vec::new();
        for (at, chunk) in &self.chunks {
            seen.extend_from_slice(chunk);
            if String::from_utf8_lossy(&seen).contains(needle) {
                return Some(*at);
            }
        }
        None
    }
}

async fn post(url: &str, key: &str, body: Value) -> Result<Answer, String> {
    let client = gateway::tls::http_client();
    let started = Instant::now();
    let mut response = client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut chunks = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("POST {url}: body: {e}"))?
    {
        chunks.push((started.elapsed(), chunk));
    }
    Ok(Answer {
        status,
        headers,
        chunks,
    })
}

fn chat_body(stream: bool) -> Value {
    let mut body = json!({
        "model": "mock",
        "messages": [{"role": "user", "content": PROMPT}],
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|line| line.strip_prefix("data:"))
                .map(|data| data.trim().to_owned())
        })
        .collect()
}

/// Checks a plain completion: 200 with the mock's whole answer in an intact JSON body.
fn check_plain(answer: &Answer, function: &str) {
    assert_eq!(answer.status, 200, "{function}: {}", answer.body());
    assert!(
        answer
            .header("content-type")
            .starts_with("application/json"),
        "{function}: content-type {:?}",
        answer.header("content-type")
    );
    let completion = answer.json();
    assert_eq!(
        completion["object"], "chat.completion",
        "{function}: {completion}"
    );
    assert_eq!(
        completion["choices"][0]["message"]["content"], ANSWER,
        "{function}: {completion}"
    );
    assert_eq!(
        completion["choices"][0]["finish_reason"], "stop",
        "{function}"
    );
    assert!(
        completion["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0,
        "{function}: {completion}"
    );
    assert!(
        !answer.header("x-request-id").is_empty(),
        "{function}: x-request-id"
    );
    assert_eq!(answer.header("x-gateway-model"), "mock", "{function}");
}

/// Checks a streamed completion: SSE chunks that spell the mock's answer, usage, then `[DONE]`.
fn check_stream(answer: &Answer, function: &str) {
    let body = answer.body();
    assert_eq!(answer.status, 200, "{function}: {body}");
    assert!(
        answer
            .header("content-type")
            .starts_with("text/event-stream"),
        "{function}: content-type {:?}",
        answer.header("content-type")
    );
    let data = sse_data(&body);
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{function}: {body}"
    );
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{function}: {e}: {d}")))
        .collect();
    assert!(chunks.len() > 3, "{function}: {body}");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"),
        "{function}: {body}"
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, ANSWER, "{function}: {body}");
    assert!(
        chunks
            .iter()
            .any(|c| c["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0),
        "{function}: no usage chunk: {body}"
    );
}

/// Checks a wrong key's answer: 401 with OpenAI's error body.
fn check_unauthorized(answer: &Answer, function: &str) {
    assert_eq!(answer.status, 401, "{function}: {}", answer.body());
    let body = answer.json();
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{function}: {body}"
    );
    assert_eq!(error["type"], "invalid_request_error", "{function}: {body}");
    assert_eq!(error["code"], "invalid_api_key", "{function}: {body}");
    assert!(error.get("param").is_some(), "{function}: {body}");
}

#[tokio::test]
async fn chat_binary_answers_plain_and_streamed_through_cargo_lambda_watch() {
    within(300, async {
        let _ = cargo_lambda(); // fail first, and clearly, without cargo-lambda
        let dir = TempDir::new("lambda-watch");
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[providers.mock]
kind = "mock"
chunk_delay_ms = {CHUNK_DELAY_MS}

[models.mock]
deployments = [{{ provider = "mock", model = "mock" }}]
price = {{ input_per_mtok = 0.1, output_per_mtok = 0.4 }}
"#
            ),
        )
        .expect("config written");

        let moto = Moto::shared();
        let environment = Environment::new(&moto, &config);
        environment.gateway_local(&["create-tables"]);
        let key = environment
            .gateway_local(&["keys", "create", "--name", "lambda-watch"])
            .trim()
            .to_owned();
        assert!(key.starts_with("gw-"), "keys create printed {key:?}");

        let mut watch = Watch::start(dir.path());
        let mut functions = [
            (
                STREAMING,
                environment.chat(&watch, STREAMING, "stream", dir.path().join("chat.log")),
            ),
            (
                BUFFERED,
                environment.chat(
                    &watch,
                    BUFFERED,
                    "buffered",
                    dir.path().join("chat-buffered.log"),
                ),
            ),
        ];

        for (function, process) in &mut functions {
            let function = *function;
            let url = watch.url(function, "/v1/chat/completions");
            let outcome = async {
                let plain = post(&url, &key, chat_body(false)).await?;
                let streamed = post(&url, &key, chat_body(true)).await?;
                let refused = post(&url, "gw-not-a-key", chat_body(false)).await?;
                Ok::<_, String>((plain, streamed, refused))
            }
            .await;
            let (plain, streamed, refused) = match outcome {
                Ok(answers) => answers,
                Err(error) => panic!(
                    "{function}: {error}\n{}\n{}",
                    process.report(),
                    watch.process.report()
                ),
            };
            let checks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check_plain(&plain, function);
                check_stream(&streamed, function);
                check_unauthorized(&refused, function);
                check_mode(&plain, &streamed, function == STREAMING, function);
            }));
            if let Err(panic) = checks {
                eprintln!("{}\n{}", process.report(), watch.process.report());
                std::panic::resume_unwind(panic);
            }
        }
    })
    .await;
}

/// Checks that the function answered in its mode. Watch marks what a function streamed with
/// `lambda-runtime-function-response-mode: streaming`; a streamed answer's chunks arrive as the
/// mock produces them (CHUNK_DELAY_MS apart), a buffered one's all at once.
fn check_mode(plain: &Answer, streamed: &Answer, streams: bool, function: &str) {
    let marked = |a: &Answer| a.header("lambda-runtime-function-response-mode") == "streaming";
    let first = streamed.arrival_of("data: {").expect("a data chunk");
    let done = streamed.arrival_of("data: [DONE]").expect("[DONE]");
    eprintln!(
        "{function}: streamed answer in {} body chunks, first data at {first:?}, [DONE] at \
         {done:?}",
        streamed.chunks.len()
    );
    if streams {
        assert!(
            marked(plain) && marked(streamed),
            "{function}: not answered as a stream"
        );
        assert!(
            done.saturating_sub(first) >= Duration::from_millis(3 * CHUNK_DELAY_MS),
            "{function}: the stream arrived at once (first data at {first:?}, [DONE] at \
             {done:?}): something between the function and the client buffers it"
        );
    } else {
        assert!(
            !marked(plain) && !marked(streamed),
            "{function}: streamed, not buffered"
        );
    }
}

/// Measures the chat binary's init: from process start to its first Runtime API poll (`GET
/// .../invocation/next`), served here by a bare listener. Prints the times (`--nocapture`).
#[test]
fn chat_binary_polls_the_runtime_api_after_init() {
    let chat = workspace_binary("chat", "chat");
    let mut times = Vec::new();
    for _ in 0..6 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("address").port();
        let started = Instant::now();
        let child = Command::new(&chat)
            // Nothing answers at this endpoint: init must not call DynamoDB.
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", free_port()),
            )
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("GATEWAY_KEYS_TABLE", "keys")
            .env("GATEWAY_LIMITS_TABLE", "limits")
            .env("GATEWAY_CACHE_TABLE", "cache")
            .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
            .env("AWS_LAMBDA_FUNCTION_NAME", "chat")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("RUST_LOG", "warn")
            .env_remove("GATEWAY_CONFIG")
            .env_remove("GATEWAY_ADMIN_KEY")
            .env_remove("GATEWAY_RESPONSE_MODE")
            .env_remove("AWS_PROFILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chat starts");
        struct Kill(Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child_guard = Kill(child);
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = started + Duration::from_secs(30);
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
            if let Ok(Some(status)) = child_guard.0.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = child_guard.0.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!("chat exited before polling ({status}): {stderr}");
            }
            assert!(Instant::now() < deadline, "chat did not poll within 30 s");
            std::thread::sleep(Duration::from_micros(200));
        };
        stream.set_nonblocking(false).expect("blocking");
        // A test without an async runtime bounds its blocking read itself.
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let mut request_line = String::new();
        BufReader::new(&stream)
            .read_line(&mut request_line)
            .expect("request line");
        let elapsed = started.elapsed();
        assert!(
            request_line.starts_with("GET /2018-06-01/runtime/invocation/next "),
            "first Runtime API call: {request_line:?}"
        );
        times.push(elapsed);
        drop(child_guard); // kills the process
    }
    // The first start also pays for reading the binary from disk.
    let (first, mut warm) = (times[0], times[1..].to_vec());
    warm.sort();
    eprintln!(
        "chat init (process start to first Runtime API poll): first {first:?}, warm min {:?}, \
         median {:?}, max {:?} ({} runs)",
        warm[0],
        warm[warm.len() / 2],
        warm[warm.len() - 1],
        warm.len()
    );
}
