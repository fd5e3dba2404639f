//! Client connections over real loopback sockets, served as `gateway-local` serves them
//! (`gateway::http::server`): header-read, idle and body timeouts, the minimum body rate, the
//! connection cap, the immediate 413 on a declared length, TCP_NODELAY on streams, the write-stall
//! timeout, and shutdown.

use std::time::{Duration, Instant};

use crate::common::{MockUpstream, TestGateway, chat, test_config};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every test ends within this, whatever the server does.
const TEST_LIMIT: Duration = Duration::from_secs(20);

/// The test config with these `[server]` settings in front.
fn config(upstream: &str, server: &str) -> String {
    format!("[server]\n{server}\n{}", test_config(upstream))
}

async fn connect(gw: &TestGateway) -> TcpStream {
    let address = gw.url.trim_start_matches("http://");
    TcpStream::connect(address).await.expect("connect")
}

/// How long until the server closes `stream` (EOF or reset), or `None` if it is still open
/// after `within`. Whatever the server sends meanwhile is read and ignored.
async fn closed_within(
    stream: &mut (impl AsyncRead + Unpin),
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let until_closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, until_closed).await.ok()
}

struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Reads one response with a `Content-Length` body, or `None` if none comes within `within`.
async fn read_response(
    stream: &mut (impl AsyncRead + Unpin),
    within: Duration,
) -> Option<RawResponse> {
    let read = async {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            data.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())?;
        let mut body = data[head_end..].to_vec();
        while body.len() < length {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&buf[..n]);
        }
        body.truncate(length);
        Some(RawResponse {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n";

/// The head of a chat request whose body (of `length` bytes) the caller sends, or not.
fn chat_head(key: &str, length: u64) -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn connections_that_never_finish_a_request_head_are_closed_after_the_header_timeout() {
    tokio::time::timeout(TEST_LIMIT, async {
        let upstream = MockUpstream::start(&[]);
        let gw = TestGateway::start(&config(
            &upstream.url,
            "header_read_timeout_ms = 300\nidle_timeout_ms = 10000",
        ))
        .await;
        let mut silent = connect(&gw).await;
        let mut slow = connect(&gw).await;
        // A slowloris: a byte of head every 50 ms, never the blank line that ends it.
        let (mut reader, mut writer) = slow.split();
        let trickle = async {
            for byte in
                b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaa"
            {
                if writer.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let closed = async {
            let mut buf = [0u8; 1024];
            let started = Instant::now();
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return started.elapsed(),
                    Ok(_) => {}
                }
            }
        };
        let slow_closed = tokio::select! {
            elapsed = closed => Some(elapsed),
            () = trickle => None,
        };
        let silent_closed = closed_within(&mut silent, Duration::from_secs(2)).await;
        let slow_closed = slow_closed.expect("the slow head is cut before it is all sent");
        assert!(
            slow_closed < Duration::from_millis(1000),
            "slow head closed after {slow_closed:?}"
        );
        let silent_closed = silent_closed.expect("a silent connection is closed");
        assert!(
            silent_closed < Duration::from_millis(1000),
            "{silent_closed:?}"
        );
    })
    .await
    .expect("test finishes in time");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_lasts_the_idle_timeout_not_the_header_timeout() {
    tokio::time::timeout(TEST_LIMIT, async {
        let upstream = MockUpstream::start(&[]);
        let gw = TestGateway::start(&config(
            &upstream.url,
            "header_read_timeout_ms = 300\nidle_timeout_ms = 1500",
        ))
        .await;
        let mut stream = connect(&gw).await;
        stream.write_all(HEALTH).await.expect("send");
        let first = read_response(&mut stream, Duration::from_secs(2)).await;
        assert_eq!(first.map(|r| r.status), Some(200));
        // Idle for longer than the header timeout: the pooled connection must still be usable.
        assert_eq!(
            closed_within(&mut stream, Duration::from_millis(800)).await,
            None,
            "closed while idle before the idle timeout"
        );
        stream.write_all(HEALTH).await.expect("send again");
        let second = read_response(&mut stream, Duration::from_secs(2)).await;
        assert_eq!(second.map(|r| r.status), Some(200));
        let closed = closed_within(&mut stream, Duration::from_secs(4))
            .await
            .expect("an idle connection is closed after the idle timeout");
        assert!(
            closed >= Duration::from_millis(1200) && closed < Duration::from_millis(2500),
            "closed {closed:?} after the response"
        );
    })
    .await
    .expect("test finishes in time");
}

#[tokio::test]
async fn idle_sockets_beyond_the_connection_cap_do_not_lock_clients_out() {
    tokio::time::timeout(TEST_LIMIT, async {
        let upstream = MockUpstream::start(&[]);
        let gw = TestGateway::start(&config(
            &upstream.url,
            "max_connections = 8\nheader_read_timeout_ms = 10000\nidle_timeout_ms = 10000",
        ))
        .await;
        let mut idle = Vec::new();
        for _ in 0..40 {
            idle.push(connect(&gw).await);
        }
        let started = Instant::now();
        let reply = gw.send(gw.http.get(format!("{}/health", gw.url))).await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        // Each connection over the cap closed the one that had waited longest.
        let mut closed = 0;
        for stream in &mut idle {
            if closed_within(stream, Duration::from_millis(20))
                .await
                .is_some()
            {
                closed += 1;
            }
        }
        assert!(closed >= 40 - 8, "only {closed} idle sockets were closed");
    })
    .await
    .expect("test finishes in time");
}

#[tokio::test]
async fn a_new_connection_gets_503_with_retry_after_when_every_connection_is_busy() {
    tokio::time::timeout(TEST_LIMIT, async {
        let upstream = MockUpstream::start(&[]);
        let gw = TestGateway::start(&config(
            &upstream.url,
            "max_connections = 2\nbody_read_timeout_ms = 10000\nmin_body_rate_grace_ms = 10000",
        ))
        .await;
        let key = gw.plain_key().await;
        // Requests in flight: their heads are in, their bodies never finish.
        let mut busy = Vec::new();
        for _ in 0..2 {
            let mut stream = connect(&gw).await;
            stream.write_all(&chat_head(&key, 100)).await.expect("send");
            stream.write_all(b"{").await.expect("send");
            busy.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let mut refused = connect(&gw).await;
        refused.write_all(HEALTH).await.expect("send");
        let reply = read_response(&mut refused, Duration::from_secs(2))
            .await
            .expect("a refusal, not silence");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("retry-after"), Some("1"));
        assert!(reply.header("x-request-id").is_some());
        assert_eq!(reply.json()["error"]["type"], "api_error");
        assert!(
            closed_within(&mut refused, Duration::from_secs(1))
                .await
                .is_some()
        );
        // Once the busy connections are gone, there is room again.
        drop(busy);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reply = gw.send(gw.http.get(format!("{}/health", gw.url))).await;
        assert_eq!(reply.status, 200);
    })
    .await
    .expect("test finishes in time");
}

#[tokio::test]
async fn a_body_not_complete_within_the_body_timeout_gets_408() {
    tokio::time::timeout(TEST_LIMIT, async {
        let upstream = MockUpstream::start(&[]);
        let gw = TestGateway::start(&config(
            &upstream.url,
            "body_read_timeout_ms = 500\nmin_body_rate_grace_ms = 10000",
        ))
        .await;
        let key = gw.plain_key().await;
        let mut stream = connect(&gw).await;
        stream.write_all(&chat_head(&key, 100)).await.expect("send");
        stream.write_all(br#"{"model":"mock""#).await.expect("send");
        let started = Instant::now();
        let reply = read_response(&mut stream, Duration::from_secs(3))
            .await
            .expect("an answer to the stalled body");
        let elapsed = started.elapsed();
        assert_eq!(reply.status, 408);
        assert_eq!(reply.json()["error"]["code"], "request_timeout");
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(1500),
            "{elapsed:?}"
        );
        assert!(
            closed_within(&mut stream, Duration::from_secs(1))
                .await
                .is_some()
        );
    })
    .await
    .expect("test finishes in time");
}

#[tokio::test]
async fn a_body_slower_than_the_minimum_rate_gets_408_before_the_body_timeout() {
    tokio::time::timeout(TEST_LIMIT, async {
        let upstream = MockUpstream::start(&[]);
        let gw = TestGateway::start(&config(
            &upstream.url,
            "body_read_timeout_ms = 10000\nmin_body_bytes_per_s = 1000\nmin_body_rate_grace_ms = 300",
        ))
        .await;
        let key = gw.plain_key().await;
        let mut stream = connect(&gw).await;
        stream.write_all(&chat_head(&key, 1000)).await.expect("send");
        let started = Instant::now();
        let (mut reader, mut writer) = stream.into_split();
        // 10 bytes a second, a hundredth of the minimum.
        let trickle = tokio::spawn(async move {
            while writer.write_all(b" ").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let reply = read_response(&mut reader, Duration::from_secs(5))
            .await
            .expect("an answer to the trickling body");
        let elapsed = started.elapsed();
        trickle.abort();
        assert_eq!(reply.status, 408);
        let message = reply.json()["error"]["message"].to_string();
        assert!(message.contains("minimum rate"), "{message}");
        assert!(elapsed < Duration::from_millis(2000), "{elapsed:?}");
    })
    .await
    .expect("test finishes in time");
}

#[tokio::test]
async fn a_declared_content_length_over_the_cap_gets_413_without_waiting_for_the_body() {
    tokio::time::timeout(TEST_LIMIT, async {
        let upstream = MockUpstream::start(&[]);
        let gw = TestGateway::start(&test_config(&upstream.url)).await;
        let key = gw.plain_key().await;
        let mut stream = connect(&gw).await;
        let started = Instant::now();
        stream
            .write_all(&chat_head(&key, 99_999_999_999))
            .await
            .expect("send");
        let reply = read_response(&mut stream, Duration::from_secs(2))
            .await
            .expect("an answer before any body byte");
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(reply.status, 413);
        assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
        assert!(reply.header("x-request-id").is_some());
    })
    .await
    .expect("test finishes in time");
}

/// The median time from the first chunk of a stream to its end, over `runs` streamed requests
/// sent one after another on one keep-alive connection (the first, which opens the connection,
/// is left out). From the first chunk, so the gateway's own work before it does not count.
async fn stream_tail_median(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
    runs: usize,
) -> Duration {
    let mut tails = Vec::new();
    for run in 0..=runs {
        let mut response = client
            .post(url)
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("stream starts");
        assert_eq!(response.status(), 200);
        let mut first = None;
        let mut text = Vec::new();
        while let Some(chunk) = response.chunk().await.expect("stream continues") {
            first.get_or_insert_with(Instant::now);
            text.extend_from_slice(&chunk);
        }
        let tail = first.expect("a chunk").elapsed();
        assert!(text.ends_with(b"data: [DONE]\n\n"), "{text:?}");
        if run > 0 {
            tails.push(tail);
        }
    }
    tails.sort();
    tails[tails.len() / 2]
}

#[tokio::test]
async fn a_stream_on_a_keep_alive_connection_ends_with_the_upstream() {
    tokio::time::timeout(TEST_LIMIT, async {
        // The upstream sends its whole stream at once, so the gateway writes its chunks back to
        // back: without TCP_NODELAY every one after the first waits for the client's delayed ACK.
        let upstream = MockUpstream::start(&[]);
        let gw = TestGateway::start(&test_config(&upstream.url)).await;
        let key = gw.plain_key().await;
        let client = gateway::tls::http_client_builder()
            .pool_max_idle_per_host(1)
            .build()
            .expect("client");
        let mut body = chat("gpt", "tell me a story in a few more words than usual");
        body["stream"] = json!(true);
        let direct = {
            let mut body = body.clone();
            body["model"] = json!("gpt-test");
            let url = format!("{}/v1/chat/completions", upstream.url);
            stream_tail_median(&client, &url, crate::common::UPSTREAM_KEY, &body, 7).await
        };
        let url = format!("{}/v1/chat/completions", gw.url);
        let through = stream_tail_median(&client, &url, &key, &body, 7).await;
        // The delayed ACK costs ~40 ms; a debug build's relay of the chunks, a few at most.
        assert!(
            through < direct + Duration::from_millis(15),
            "first chunk to end: through the gateway {through:?}, direct {direct:?}"
        );
    })
    .await
    .expect("test finishes in time");
}

/// An OpenAI-compatible upstream whose chat stream never ends: one 1 KB chunk after another, as
/// fast as they are taken.
async fn endless_stream_upstream() -> String {
    async fn endless() -> axum::response::Response {
        let chunk = json!({
            "id": "chatcmpl-endless", "object": "chat.completion.chunk", "created": 0,
            "model": "gpt-test",
            "choices": [{"index": 0, "delta": {"content": "x".repeat(1024)}, "finish_reason": null}]
        });
        let frame = bytes::Bytes::from(format!("data: {chunk}\n\n"));
        let frames = futures_util::stream::repeat(Ok::<_, std::convert::Infallible>(frame));
        axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(axum::body::Body::from_stream(frames))
            .expect("response")
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(endless));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

#[tokio::test]
async fn a_client_that_stops_reading_a_stream_is_disconnected_after_the_write_stall_timeout() {
    tokio::time::timeout(TEST_LIMIT, async {
        let upstream = endless_stream_upstream().await;
        let gw = TestGateway::start(&config(&upstream, "write_stall_timeout_ms = 300")).await;
        let key = gw.plain_key().await;
        // A small receive buffer, so the gateway's writes wait soon even on a loaded machine.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(8 * 1024).expect("receive buffer");
        let address = gw.url.trim_start_matches("http://").parse().expect("address");
        let mut stream = socket.connect(address).await.expect("connect");
        let body = json!({"model": "gpt", "stream": true, "messages": [{"role": "user", "content": "go"}]})
            .to_string();
        let mut request = chat_head(&key, body.len() as u64);
        request.extend_from_slice(body.as_bytes());
        stream.write_all(&request).await.expect("send");
        // Not reading: the socket buffers fill and the gateway's writes wait.
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Closed, reading drains what was buffered and meets the end; still open, the endless
        // stream flows again and never ends.
        let closed = closed_within(&mut stream, Duration::from_secs(5)).await;
        assert!(
            closed.is_some(),
            "the gateway kept the connection of a client that stopped reading"
        );
    })
    .await
    .expect("test finishes in time");
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns_without_waiting_for_them() {
    tokio::time::timeout(TEST_LIMIT, async {
        let upstream = MockUpstream::start(&[]);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut gw = TestGateway::start_until(
            &config(
                &upstream.url,
                "idle_timeout_ms = 60000\ndrain_timeout_ms = 5000",
            ),
            async {
                let _ = stopped.await;
            },
        )
        .await;
        let mut idle = connect(&gw).await;
        idle.write_all(HEALTH).await.expect("send");
        let first = read_response(&mut idle, Duration::from_secs(2)).await;
        assert_eq!(first.map(|r| r.status), Some(200));
        let started = Instant::now();
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(2), &mut gw.server)
            .await
            .expect("serve returns promptly")
            .expect("serve does not panic");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            closed_within(&mut idle, Duration::from_secs(1))
                .await
                .is_some()
        );
    })
    .await
    .expect("test finishes in time");
}
