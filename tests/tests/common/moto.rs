//! moto server, the local AWS emulator the DynamoDB tests run against, as a child process on a
//! free loopback port. `tests/moto` installs it; `tests/run` passes its path in `MOTO_SERVER`.
//!
//! Nothing here touches the process environment: tests run in parallel in one process, so each
//! client is configured explicitly with the endpoint and the test credentials.
#![allow(dead_code)] // each test crate including this uses a different subset

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};

/// How long a starting server may take to accept connections (it usually takes under a second).
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running moto server, killed when dropped.
pub struct Moto {
    child: Child,
    endpoint: String,
}

/// The server the tests running right now share: moto holds 60-100 MB, so concurrent tests use
/// one (each with its own tables) instead of one each.
static SHARED: Mutex<Weak<Moto>> = Mutex::new(Weak::new());

impl Moto {
    /// The shared server, started by the first test that needs it and killed when the last test
    /// holding it finishes.
    pub fn shared() -> Arc<Moto> {
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(moto) = shared.upgrade() {
            return moto;
        }
        let moto = Arc::new(Moto::start());
        *shared = Arc::downgrade(&moto);
        moto
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
            let mut child = Command::new(&server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run MOTO_SERVER={}: {e}", server.display()));
            if accepts_connections(&mut child, port) {
                return Self {
                    child,
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
