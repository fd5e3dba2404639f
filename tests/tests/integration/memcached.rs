//! The Memcached response cache (`[cache.memcached]`) against a real `memcached` that each test
//! starts on a free loopback port: store, hit and expiry; bodies over the item size limit not
//! cached and still answered whole; a server that is down is a miss; and two `gateway-local`
//! processes sharing answers through it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::cache::CacheStore;
use gateway::cache::memcached::MemcachedCacheStore;
use gateway::config::Config;
use serde_json::{Value, json};

use crate::common::local::{LocalServer, TempDir, cli, free_port};
use crate::common::within;

/// `memcached` on a loopback port, with a 1 MiB item limit; killed when dropped.
struct Memcached {
    child: Child,
    address: String,
}

impl Memcached {
    fn start() -> Self {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> Self {
        let child = Command::new("memcached")
            .args(["-l", "127.0.0.1", "-U", "0", "-m", "64", "-I", "1m"])
            .args(["-p", &port.to_string()])
            // Running as root (CI), memcached wants a user to switch to.
            .args(["-u", "nobody"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("memcached starts (tests/run installs it: tests/debian-packages)");
        let address = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "memcached listens within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, address }
    }
}

impl Memcached {
    /// Items the server has stored since it started (`stats`: `total_items`).
    async fn items_stored(&self) -> u64 {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let mut stream = tokio::net::TcpStream::connect(&self.address)
            .await
            .expect("memcached connection");
        stream.write_all(b"stats\r\n").await.expect("stats sent");
        let mut lines = BufReader::new(stream).lines();
        while let Some(line) = lines.next_line().await.expect("stats line") {
            if let Some(count) = line.strip_prefix("STAT total_items ") {
                return count.trim().parse().expect("a count");
            }
            assert_ne!(line, "END", "stats has total_items");
        }
        panic!("stats ended early")
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn store(address: &str, max_item_bytes: usize) -> MemcachedCacheStore {
    let config = Config::from_toml(&format!(
        "[cache.memcached]\naddress = \"{address}\"\ntimeout_ms = 500\nmax_item_bytes = {max_item_bytes}\n"
    ))
    .expect("config");
    let memcached = config.cache.memcached.expect("memcached config");
    MemcachedCacheStore::new(address.to_owned(), &memcached)
}

#[tokio::test]
async fn a_stored_body_is_read_back_until_it_expires() {
    within(30, async {
        let server = Memcached::start();
        let cache = store(&server.address, 1024 * 1024);
        assert_eq!(cache.get(&[1; 32]).await.unwrap(), None);
        let body = Bytes::from_static(b"{\"answer\":\"kept\"}");
        cache.put(&[1; 32], body.clone(), 1).await.unwrap();
        cache
            .put(&[2; 32], Bytes::from_static(b"longer"), 3600)
            .await
            .unwrap();
        assert_eq!(cache.get(&[1; 32]).await.unwrap(), Some(body));
        // Memcached's clock ticks once a second: a 1 s item is gone within about 2 s.
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.get(&[1; 32]).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "the item expires");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            cache.get(&[2; 32]).await.unwrap().as_deref(),
            Some(&b"longer"[..]),
            "an item with a longer TTL stays"
        );
    })
    .await;
}

#[tokio::test]
async fn bodies_over_the_item_limit_are_not_cached_and_never_cut() {
    within(30, async {
        let server = Memcached::start();
        let cache = store(&server.address, 1024 * 1024);
        let just_fits = Bytes::from(vec![b'a'; 1024 * 1024 - 1024]);
        cache.put(&[1; 32], just_fits.clone(), 60).await.unwrap();
        assert_eq!(cache.get(&[1; 32]).await.unwrap(), Some(just_fits));
        cache
            .put(&[2; 32], Bytes::from(vec![b'b'; 1024 * 1024 + 1]), 60)
            .await
            .unwrap();
        assert_eq!(cache.get(&[2; 32]).await.unwrap(), None);

        // A config that claims more than the server's `-I`: the server refuses the item, the
        // write is skipped and the connection still serves the next call.
        let optimistic = store(&server.address, 4 * 1024 * 1024);
        optimistic
            .put(&[3; 32], Bytes::from(vec![b'c'; 2 * 1024 * 1024]), 60)
            .await
            .unwrap();
        assert_eq!(optimistic.get(&[3; 32]).await.unwrap(), None);
        optimistic
            .put(&[4; 32], Bytes::from_static(b"small"), 60)
            .await
            .unwrap();
        assert_eq!(
            optimistic.get(&[4; 32]).await.unwrap().as_deref(),
            Some(&b"small"[..])
        );
    })
    .await;
}

#[tokio::test]
async fn a_server_that_is_down_is_a_miss_and_is_used_again_once_it_is_back() {
    within(30, async {
        let port = free_port();
        let cache = store(&format!("127.0.0.1:{port}"), 1024 * 1024);
        let started = Instant::now();
        for _ in 0..50 {
            assert_eq!(cache.get(&[1; 32]).await.unwrap(), None);
            cache
                .put(&[1; 32], Bytes::from_static(b"x"), 60)
                .await
                .unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "misses while down do not wait: {:?}",
            started.elapsed()
        );

        let _server = Memcached::start_on(port);
        // While down, one call a second tries the server again.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            cache
                .put(&[1; 32], Bytes::from_static(b"back"), 60)
                .await
                .unwrap();
            if cache.get(&[1; 32]).await.unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "the cache is used again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

fn config(address: &str) -> String {
    format!(
        r#"
[cache]
# Both processes below have their own keys: a global partition lets them share answers.
partition = "global"

[cache.memcached]
address = "{address}"
max_item_bytes = 4096

[providers.mock]
kind = "mock"

[models.mock]
deployments = [{{ provider = "mock", model = "mock" }}]
"#
    )
}

async fn ask(url: &str, key: &str, text: &str) -> (Option<String>, Value) {
    let response = gateway::tls::http_client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({
            "model": "mock",
            "temperature": 0,
            "messages": [{"role": "user", "content": text}],
        }))
        .send()
        .await
        .expect("chat request");
    assert_eq!(response.status(), 200);
    let cache = response
        .headers()
        .get("x-gateway-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (cache, response.json().await.expect("JSON answer"))
}

#[tokio::test]
async fn gateway_local_processes_share_answers_through_memcached() {
    within(60, async {
        let server = Memcached::start();
        let (first_dir, second_dir) = (TempDir::new("memcached-a"), TempDir::new("memcached-b"));
        let mut urls_and_keys = Vec::new();
        for dir in [&first_dir, &second_dir] {
            let key = cli(dir.path(), &["keys", "create", "--name", "cached"])
                .trim()
                .to_owned();
            let local = LocalServer::start(dir.path(), &config(&server.address), &[]);
            urls_and_keys.push((local, key));
        }
        let [(first, first_key), (second, second_key)] = &urls_and_keys[..] else {
            unreachable!()
        };

        let (cache, answer) = ask(&first.url, first_key, "what is cached").await;
        assert_eq!(cache.as_deref(), Some("MISS"));
        // The answer is written in the background once it is sent.
        while server.items_stored().await == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (cache, again) = ask(&first.url, first_key, "what is cached").await;
        assert_eq!(cache.as_deref(), Some("HIT"));
        assert_eq!(again["choices"], answer["choices"]);
        // The other process has its own embedded store: its hit comes from memcached.
        let (cache, shared) = ask(&second.url, second_key, "what is cached").await;
        assert_eq!(cache.as_deref(), Some("HIT"));
        assert_eq!(shared["choices"], answer["choices"]);

        // An answer over the 4 KiB item limit is answered whole, and not cached.
        let long_question: String = (0..1000).map(|i| format!("w{i} ")).collect();
        for _ in 0..2 {
            let (cache, answer) = ask(&first.url, first_key, &long_question).await;
            assert_eq!(cache.as_deref(), Some("MISS"));
            let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
            assert!(content.ends_with("w999"), "the whole answer: {content:.80}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(
            server.items_stored().await,
            1,
            "only the short answer was stored"
        );
    })
    .await;
}
