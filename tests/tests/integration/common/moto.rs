//! moto server, the local AWS emulator the DynamoDB tests run against, as a child process on a
//! free loopback port. `tests/moto` installs it; `tests/run` passes its path in `MOTO_SERVER`.
//!
//! One server serves the whole test process (each test makes tables of its own, with names no
//! other test uses): moto takes a second or two to start and holds 60-100 MB. Only the burst
//! tests get a second one. Servers live as long as the process, and die with it even when the
//! process is killed (see `WITH_LIFELINE`).
//!
//! DynamoDB, SQS and S3 tests share the server. Nothing here touches the process environment: tests run in parallel in one process, so each
//! client is configured explicitly with the endpoint and the test credentials.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};

/// How long a starting server may take to accept connections (it usually takes under a second).
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running moto server, killed when dropped or when the test process ends.
pub struct Moto {
    child: Child,
    /// The write end of the server's lifeline: closed when this process ends, however it ends.
    _lifeline: ChildStdin,
    endpoint: String,
}

/// The server of this test process, started by the first test that needs it.
static SHARED: OnceLock<Arc<Moto>> = OnceLock::new();
/// The server of the tests that send bursts of hundreds of requests (`aws_backend`).
static FOR_BURSTS: OnceLock<Arc<Moto>> = OnceLock::new();

/// Runs the server with its standard input as a lifeline: a watcher reads it and kills the
/// server at end of file, which comes when the test process exits or is killed (statics are not
/// dropped at exit, so `Drop` cannot do it). `exec` keeps the server's pid the child's pid.
const WITH_LIFELINE: &str = r#"exec 3<&0; (read -r _ <&3; kill "$$") </dev/null & exec "$0" "$@""#;

impl Moto {
    /// The server every test of this process shares.
    pub fn shared() -> Arc<Moto> {
        Arc::clone(SHARED.get_or_init(|| Arc::new(Moto::start())))
    }

    /// The server of the burst tests: moto answers one request at a time (`tests/moto`), so a
    /// burst of 500 would hold every other test's requests for seconds, and their requests would
    /// skew the burst's timing.
    pub fn for_bursts() -> Arc<Moto> {
        Arc::clone(FOR_BURSTS.get_or_init(|| Arc::new(Moto::start())))
    }

    /// Starts a server of its own.
    pub fn start() -> Self {
        let server = std::env::var_os("MOTO_SERVER")
            .filter(|path| !path.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "MOTO_SERVER is not set: it must name moto's `moto_server`. Run the tests \
                     through `tests/run`, or as `MOTO_SERVER=$(tests/moto) cargo test ...`."
                )
            });
        // Another process can take the free port between the probe and moto's bind: try again.
        for _ in 0..3 {
            let port = free_port();
            let mut child = Command::new("/bin/sh")
                .args(["-c", WITH_LIFELINE])
                .arg(&server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run MOTO_SERVER={}: {e}", server.display()));
            let lifeline = child.stdin.take().expect("piped stdin");
            if accepts_connections(&mut child, port) {
                return Self {
                    child,
                    _lifeline: lifeline,
                    endpoint: format!("http://127.0.0.1:{port}"),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("moto_server ({}) did not start", server.display());
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A DynamoDB client for this server.
    pub fn client(&self) -> Client {
        client_for(&self.endpoint)
    }

    /// An AWS config for this server, as a Lambda process loads one (for the library's own
    /// `client` functions: `queue::sqs::client`, `files::s3::client`).
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(gateway::tls::aws_http_client())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "test", "test", None, None, "moto",
            )))
            .build()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DynamoDB client for `endpoint` with moto's test credentials, configured explicitly so no
/// credential provider looks at the environment, profile files or the instance metadata service.
pub fn client_for(endpoint: &str) -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(gateway::tls::aws_http_client())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
        .build();
    Client::from_conf(config)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Waits until the server accepts connections; false if it exited or took too long.
fn accepts_connections(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + READY_WITHIN;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
