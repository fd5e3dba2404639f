//! `gateway-local`, the binary this workspace builds, as a child process over an embedded store
//! in a folder of the test's, with its log lines collected: for what only the real process shows
//! (its listeners, its logs, what a crash of it loses).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The admin key every `LocalServer` starts with (`GATEWAY_ADMIN_KEY`).
pub const ADMIN_KEY: &str = "gw-operator-test-admin";

/// The `gateway-local` binary of this workspace (built by `tests/run` before the tests).
pub fn gateway_local() -> PathBuf {
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A fresh folder in the temporary directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "gateway-{name}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("folder");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `gateway-local` serving a config over the embedded store in `<dir>/data`; killed (SIGKILL)
/// when dropped.
pub struct LocalServer {
    child: Child,
    pub url: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl LocalServer {
    /// Starts the server with `config` written to `<dir>/gateway.toml` and its data in
    /// `<dir>/data`, which a previous server in the same folder may have left.
    pub fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_logging(dir, config, env, Some("info"))
    }

    /// `start` with `RUST_LOG` set to `rust_log`, or unset (the binary's default level).
    pub fn start_logging(
        dir: &Path,
        config: &str,
        env: &[(&str, &str)],
        rust_log: Option<&str>,
    ) -> Self {
        let config_path = dir.join("gateway.toml");
        std::fs::write(&config_path, config).expect("config written");
        let mut command = Command::new(gateway_local());
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .env("GATEWAY_ADMIN_KEY", ADMIN_KEY)
            .env("GATEWAY_BACKEND", "embedded")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
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
        let collected = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Ok(mut logs) = collected.lock() {
                    logs.push(line);
                }
            }
        });
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in banner: {line}"))
            .to_owned();
        Self { child, url, logs }
    }

    /// Ends the process as a crash would (SIGKILL): it gets no chance to write anything more.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process as an operator would (SIGTERM) and waits up to 20 s for it to exit,
    /// having flushed what it holds.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "SIGTERM sent");
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "gateway-local exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("gateway-local did not exit within 20 s of SIGTERM");
    }

    /// Every line the process has written so far, on stdout (after its banner) and stderr.
    pub fn output(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The first log line that contains every one of `needles`, waiting up to 5 s for it.
    pub async fn log_line(&self, needles: &[&str]) -> String {
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
    }
}

/// `gateway-local <args>` (the key CLI) over the store in `<dir>/data`; its standard output.
pub fn cli(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(gateway_local())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .env("GATEWAY_BACKEND", "embedded")
        .env_remove("GATEWAY_ADMIN_KEY")
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
