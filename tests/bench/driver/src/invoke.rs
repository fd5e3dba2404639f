//! `invoke`: a Lambda binary driven through the Runtime API, one invocation at a time.
//!
//! The stand-in answers `GET /2018-06-01/runtime/invocation/next` with the event (and the headers
//! Lambda sends: request id, deadline, function ARN, trace id), takes the whole body of
//! `POST .../invocation/{id}/response` (buffered JSON, or a streamed metadata prelude, eight NUL
//! bytes and the body), and records `.../error` and `/runtime/init/error` as failures. The next
//! event is handed only once the function polls again: what it does after answering (settlement,
//! usage writes) happens before that poll, inside the CPU window, as on Lambda, where it is billed.
//!
//! The stand-in ACKs every segment at once (TCP_QUICKACK after each read): the Rust runtime's
//! client writes a streamed response's last chunks without TCP_NODELAY, so against a receiver
//! that delays its ACKs (Linux's default on an established request/response connection) Nagle's
//! algorithm holds the terminating chunk for about 40 ms. `--delayed-ack` keeps the kernel's
//! default, to show that stall.

use std::convert::Infallible;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};

use super::{Args, summary};

const NEXT: &str = "/2018-06-01/runtime/invocation/next";
const INVOCATION: &str = "/2018-06-01/runtime/invocation/";
const INIT_ERROR: &str = "/2018-06-01/runtime/init/error";

/// An accepted connection that ACKs each segment as soon as it is read (TCP_QUICKACK does not
/// stick: the kernel may fall back to delayed ACKs, so it is set again after every read).
struct QuickAck {
    socket: TcpStream,
    on: bool,
}

impl QuickAck {
    fn quickack(&self) {
        if !self.on {
            return;
        }
        let one: libc::c_int = 1;
        // SAFETY: a valid open socket, and a pointer to an int of the size passed.
        unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.socket).poll_read(cx, buf);
        if result.is_ready() {
            self.quickack();
        }
        result
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

/// What the function sent back for one invocation, and when its last byte arrived.
struct Done {
    id: String,
    at: Instant,
    outcome: Result<Answer, String>,
}

struct Answer {
    status: u16,
    bytes: usize,
}

struct Stand {
    events: Mutex<mpsc::UnboundedReceiver<(String, Bytes)>>,
    polls: mpsc::UnboundedSender<Instant>,
    done: mpsc::UnboundedSender<Done>,
}

/// The status of a response body: the `statusCode` of the streamed prelude (before the eight NUL
/// bytes) or of the buffered JSON answer.
fn status_of(body: &[u8]) -> Result<u16, String> {
    let head = match body.windows(8).position(|w| w == [0u8; 8]) {
        Some(end) => &body[..end],
        None => body,
    };
    let value: Value = serde_json::from_slice(head).map_err(|e| {
        format!(
            "response is not a Lambda HTTP answer ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    })?;
    value["statusCode"]
        .as_u64()
        .map(|s| s as u16)
        .ok_or_else(|| "response has no statusCode".to_owned())
}

async fn handle(stand: Arc<Stand>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let reply = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if method == Method::GET && path == NEXT {
        let _ = stand.polls.send(Instant::now());
        let next = stand.events.lock().await.recv().await;
        let Some((id, event)) = next else {
            return reply(StatusCode::GONE, "{}");
        };
        let deadline_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
            + 60_000;
        return Response::builder()
            .header("content-type", "application/json")
            .header("lambda-runtime-aws-request-id", &id)
            .header("lambda-runtime-deadline-ms", deadline_ms.to_string())
            .header(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:bench",
            )
            .header(
                "lambda-runtime-trace-id",
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0",
            )
            .body(Full::new(event))
            .unwrap_or_else(|_| reply(StatusCode::INTERNAL_SERVER_ERROR, "{}"));
    }
    if method == Method::POST && path == INIT_ERROR {
        let body = request.into_body().collect().await.map(|c| c.to_bytes());
        let text = body.map_or_else(|e| e.to_string(), |b| String::from_utf8_lossy(&b).into());
        let _ = stand.done.send(Done {
            id: "init".to_owned(),
            at: Instant::now(),
            outcome: Err(format!("init error: {text}")),
        });
        return reply(StatusCode::ACCEPTED, "{\"status\":\"OK\"}");
    }
    if method == Method::POST
        && let Some(rest) = path.strip_prefix(INVOCATION)
        && let Some((id, kind)) = rest.split_once('/')
        && (kind == "response" || kind == "error")
    {
        let id = id.to_owned();
        let collected = request.into_body().collect().await;
        let at = Instant::now();
        let outcome = match collected {
            Err(e) => Err(format!("reading the {kind} body: {e}")),
            Ok(collected) => {
                let error_trailer = collected
                    .trailers()
                    .and_then(|t| t.get("lambda-runtime-function-error-type"))
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                let body = collected.to_bytes();
                if kind == "error" {
                    Err(format!(
                        "invocation error: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    ))
                } else if let Some(error) = error_trailer {
                    Err(format!("streamed response ended with error {error}"))
                } else {
                    status_of(&body).map(|status| Answer {
                        status,
                        bytes: body.len(),
                    })
                }
            }
        };
        let _ = stand.done.send(Done { id, at, outcome });
        return reply(StatusCode::ACCEPTED, "{\"status\":\"OK\"}");
    }
    reply(StatusCode::NOT_FOUND, "{}")
}

/// CPU time a process has used so far, in microseconds: utime + stime of /proc/PID/stat (every
/// thread, those that ended included), at the kernel's tick resolution.
fn stat_cpu_us(pid: u32, ticks_per_s: u64) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The command name (field 2) may hold spaces; the fields after its `)` start at field 3.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("unreadable /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat has no field {}", i + 3))
    };
    // utime is field 14 and stime field 15: indexes 11 and 12 after the `)`.
    Ok((ticks(11)? + ticks(12)?) * 1_000_000 / ticks_per_s)
}

/// The same in nanoseconds from each live thread's schedstat (finer, but threads that ended are
/// missing): a cross-check of the tick count.
fn schedstat_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

async fn next_poll(
    polls: &mut mpsc::UnboundedReceiver<Instant>,
    done: &mut mpsc::UnboundedReceiver<Done>,
    timeout: Duration,
    what: &str,
) -> Result<Instant, String> {
    tokio::select! {
        poll = polls.recv() => poll.ok_or_else(|| "the stand-in stopped".to_owned()),
        failure = done.recv() => Err(match failure {
            Some(Done { id, outcome: Err(e), .. }) => format!("{id}: {e}"),
            Some(Done { id, .. }) => format!("an unexpected response for {id} before {what}"),
            None => "the stand-in stopped".to_owned(),
        }),
        _ = tokio::time::sleep(timeout) => Err(format!("no poll within {} s ({what})", timeout.as_secs_f64())),
    }
}

pub async fn invoke(args: &Args) -> Result<Value, String> {
    let bin = args.required("--bin").to_owned();
    let event_file = args.required("--event-file");
    let event = Bytes::from(std::fs::read(event_file).map_err(|e| format!("{event_file}: {e}"))?);
    let runs = args.number("--runs", 200.0).clamp(1.0, 100_000.0) as usize;
    let warmup = args.number("--warmup", 20.0).clamp(0.0, 100_000.0) as usize;
    let timeout = Duration::from_secs_f64(args.number("--timeout", 10.0));
    let expect = args.number("--expect-status", 200.0) as u16;
    let ticks = ticks_per_second();

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (polls_tx, mut polls) = mpsc::unbounded_channel();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let stand = Arc::new(Stand {
        events: Mutex::new(events_rx),
        polls: polls_tx,
        done: done_tx,
    });
    let quickack = !args.flag("--delayed-ack");
    let server = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            let socket = QuickAck {
                socket,
                on: quickack,
            };
            socket.quickack();
            let stand = Arc::clone(&stand);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let stand = Arc::clone(&stand);
                    async move { Ok::<_, Infallible>(handle(stand, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });

    let output = |path: Option<&str>| -> Result<Stdio, String> {
        match path {
            None => Ok(Stdio::null()),
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Stdio::from)
                .map_err(|e| format!("{path}: {e}")),
        }
    };
    let log = args.value("--log");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&bin)
        .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
        .stdin(Stdio::null())
        .stdout(output(log)?)
        .stderr(output(log)?)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn {bin}: {e}"))?;
    let pid = child.id().ok_or("the function exited at once")?;

    let result = async {
        let first = next_poll(&mut polls, &mut done, Duration::from_secs(30), "first poll").await?;
        let init_us = (first - started).as_micros() as u64;
        let mut wall = Vec::with_capacity(runs);
        let mut turnaround = Vec::with_capacity(runs);
        let (mut errors, mut error_sample, mut bytes) = (0u64, None, 0usize);
        let mut cpu_before = (0, 0);
        for i in 0..warmup + runs {
            if i == warmup {
                cpu_before = (stat_cpu_us(pid, ticks)?, schedstat_cpu_ns(pid));
            }
            let id = format!("bench-{i}");
            let handed = Instant::now();
            events_tx
                .send((id.clone(), event.clone()))
                .map_err(|_| "the stand-in stopped")?;
            let answer = tokio::time::timeout(timeout, done.recv())
                .await
                .map_err(|_| {
                    format!(
                        "invocation {i}: no response within {} s",
                        timeout.as_secs_f64()
                    )
                })?
                .ok_or("the stand-in stopped")?;
            if answer.id != id {
                return Err(format!(
                    "invocation {i}: a response for {} instead",
                    answer.id
                ));
            }
            let polled =
                next_poll(&mut polls, &mut done, timeout, "the poll after a response").await?;
            if i < warmup {
                continue;
            }
            match answer.outcome {
                Ok(Answer { status, bytes: b }) if status == expect => {
                    wall.push((answer.at - handed).as_micros() as u64);
                    turnaround.push((polled - handed).as_micros() as u64);
                    bytes = b;
                }
                Ok(Answer { status, .. }) => {
                    errors += 1;
                    error_sample.get_or_insert(format!("status {status}, expected {expect}"));
                }
                Err(e) => {
                    errors += 1;
                    error_sample.get_or_insert(e);
                }
            }
        }
        // The function is waiting on its next poll again: everything the measured invocations
        // caused is done.
        let cpu_after = (stat_cpu_us(pid, ticks)?, schedstat_cpu_ns(pid));
        let cpu_us = cpu_after.0.saturating_sub(cpu_before.0);
        let schedstat_us = cpu_after.1.saturating_sub(cpu_before.1) as f64 / 1000.0;
        Ok(json!({
            "label": args.value("--label").unwrap_or(""),
            "bin": bin,
            "mode": "invoke",
            "quickack": quickack,
            "runs": runs,
            "warmup": warmup,
            "ok": wall.len(),
            "errors": errors,
            "error_sample": error_sample,
            "response_bytes": bytes,
            "init_us": init_us,
            "wall_us": summary(&mut wall),
            "turnaround_us": summary(&mut turnaround),
            "cpu_us_total": cpu_us,
            "cpu_us_per_invocation": cpu_us as f64 / runs as f64,
            "cpu_resolution_us_per_invocation": 2.0 * 1e6 / ticks as f64 / runs as f64,
            "schedstat_us_per_invocation": schedstat_us / runs as f64,
        }))
    }
    .await;
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    server.abort();
    result
}
