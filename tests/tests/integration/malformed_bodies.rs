//! Malformed requests written by hand on a raw socket to `gateway-local`, on every route that
//! takes a body (from the route table in `gateway::http::scopes`): an oversized body declared or
//! chunked, bytes that are not UTF-8, JSON nested 100,000 deep, a body of another content type.
//! Each is a 4xx in OpenAI's error shape, within seconds, and the process lives on. A bad query
//! string is likewise a 400 in that shape, not the framework's plain-text rejection.

use std::time::Duration;

use crate::common::local::{ADMIN_KEY, LocalServer, TempDir};
use crate::common::within;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_BODY: usize = 256 * 1024;

fn config() -> String {
    format!(
        r#"
[server]
max_body_bytes = {MAX_BODY}

[providers.mock]
kind = "mock"

[models.mock]
deployments = [{{ provider = "mock", model = "mock" }}]

[models.mock-embed]
kind = "embedding"
deployments = [{{ provider = "mock", model = "mock-embed" }}]
"#
    )
}

/// Every (method, path) of the router that takes a request body, with its path parameters
/// filled in.
fn body_routes() -> Vec<(&'static str, String)> {
    let routes: Vec<(&'static str, String)> = gateway::http::scopes::ROUTE_SCOPES
        .iter()
        .filter(|(method, ..)| matches!(*method, "POST" | "PATCH" | "PUT"))
        .map(|(method, path, _)| {
            let filled = path
                .replace("{*id}", "doc-1")
                .replace("{id}", "missing-1")
                .replace("{name}", "coll");
            (*method, filled)
        })
        .collect();
    assert!(routes.len() >= 14, "{routes:?}");
    routes
}

/// A response read off the socket.
struct RawReply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawReply {
    /// Asserts a 4xx whose body is OpenAI's error shape.
    fn assert_openai_4xx(&self, case: &str) {
        assert!(
            (400..500).contains(&self.status),
            "{case}: status {} ({})",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        assert!(
            self.head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{case}: {}",
            self.head
        );
        let json: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{case}: not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        });
        assert!(json["error"]["message"].is_string(), "{case}: {json}");
        assert!(json["error"]["type"].is_string(), "{case}: {json}");
    }
}

/// Sends `head` then `body` (write errors ignored: the server may answer and close before
/// reading it all) and reads the answer to the end of the connection, within 10 s.
async fn exchange(address: &str, head: String, body: &[u8]) -> RawReply {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut socket = TcpStream::connect(address).await.expect("connect");
        socket.write_all(head.as_bytes()).await.expect("write head");
        let _ = socket.write_all(body).await;
        let mut raw = Vec::new();
        let mut buffer = [0u8; 8192];
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(buffer.get(..n).unwrap_or_default()),
            }
            if complete(&raw) {
                break;
            }
        }
        parse(&raw)
    })
    .await
    .unwrap_or_else(|_| panic!("no answer within 10 s to {head}"))
}

fn split_head(raw: &[u8]) -> Option<(String, &[u8])> {
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((
        String::from_utf8_lossy(&raw[..at]).into_owned(),
        &raw[at + 4..],
    ))
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// Whether a whole response (with a `Content-Length`) has arrived; a chunked one is read to
/// the end of the connection.
fn complete(raw: &[u8]) -> bool {
    split_head(raw)
        .and_then(|(head, body)| Some(body.len() >= content_length(&head)?))
        .unwrap_or(false)
}

fn parse(raw: &[u8]) -> RawReply {
    let (head, rest) = split_head(raw)
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.get(..content_length(&head).unwrap_or(rest.len()))
            .unwrap_or(rest)
            .to_vec()
    };
    RawReply { status, head, body }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&rest[..at]).trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < at + 2 + size {
            break;
        }
        body.extend_from_slice(&rest[at + 2..at + 2 + size]);
        rest = rest.get(at + 4 + size..).unwrap_or_default();
    }
    body
}

fn head(method: &str, path: &str, address: &str, headers: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {ADMIN_KEY}\r\nconnection: close\r\n{headers}\r\n"
    )
}

async fn still_alive(address: &str, case: &str) {
    let reply = exchange(
        address,
        format!("GET /health HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n"),
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "/health after {case}");
}

/// A chunked body (a multipart file part, when `multipart`) of more than `MAX_BODY` bytes.
fn oversized_chunked(multipart: bool) -> Vec<u8> {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    if multipart {
        chunks.push(
            b"--XyZ\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n"
                .to_vec(),
        );
    }
    chunks.extend((0..(MAX_BODY / (64 * 1024) + 2)).map(|_| vec![b'a'; 64 * 1024]));
    let mut body = Vec::new();
    for chunk in chunks {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_route_answers_malformed_bodies_with_an_openai_4xx_and_survives() {
    within(240, async {
        let dir = TempDir::new("malformed");
        let server = LocalServer::start(dir.path(), &config(), &[]);
        let address = server.url.trim_start_matches("http://").to_owned();
        let nested = "[".repeat(100_000);
        let multipart =
            "--XyZ\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ--\r\n";

        for (method, path) in body_routes() {
            // A multipart route reads the body as multipart: it gets a file part too large.
            let takes_multipart = path == "/v1/files" || path.ends_with("/parts");
            let json_type = if takes_multipart {
                "content-type: multipart/form-data; boundary=XyZ\r\n"
            } else {
                "content-type: application/json\r\n"
            };
            let chunked = oversized_chunked(takes_multipart);
            let cases: Vec<(&str, String, Vec<u8>)> = vec![
                (
                    "declared oversized body, none sent",
                    format!("{json_type}content-length: {}\r\n", MAX_BODY + 1),
                    Vec::new(),
                ),
                (
                    "chunked oversized body",
                    format!("{json_type}transfer-encoding: chunked\r\n"),
                    chunked.clone(),
                ),
                (
                    "bytes that are not UTF-8",
                    format!("{json_type}content-length: 6\r\n"),
                    b"{\"\xff\xfe\"}".to_vec(),
                ),
                (
                    "JSON nested 100,000 deep",
                    format!("{json_type}content-length: {}\r\n", nested.len()),
                    nested.clone().into_bytes(),
                ),
                (
                    "a multipart body",
                    format!(
                        "content-type: multipart/form-data; boundary=XyZ\r\ncontent-length: {}\r\n",
                        multipart.len()
                    ),
                    multipart.as_bytes().to_vec(),
                ),
                (
                    "a JSON body where multipart is expected, or an empty one",
                    format!("{json_type}content-length: 2\r\n"),
                    b"{}".to_vec(),
                ),
            ];
            for (case, headers, body) in cases {
                let label = format!("{method} {path}: {case}");
                let reply =
                    exchange(&address, head(method, &path, &address, &headers), &body).await;
                reply.assert_openai_4xx(&label);
                // A route naming an id that does not exist may say so first.
                if case.contains("oversized") && !path.contains("missing-1") {
                    assert_eq!(reply.status, 413, "{label}");
                }
            }
            still_alive(&address, &format!("{method} {path}")).await;
        }

        for query in [
            "/v1/admin/audit?limit=-1",
            "/v1/admin/audit?limit=many",
            "/v1/files?limit=-1",
            "/v1/files?limit=lots",
            "/v1/batches?limit=-1",
            "/v1/batches?limit=99999999999999999999999",
        ] {
            let reply = exchange(&address, head("GET", query, &address, ""), b"").await;
            reply.assert_openai_4xx(query);
            assert_eq!(reply.status, 400, "{query}");
        }
        still_alive(&address, "the bad queries").await;
        drop(server);
    })
    .await;
}
