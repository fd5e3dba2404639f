//! `bench-driver`: the measurements no standard load tool makes.
//!
//! - `load`: open-loop load at a fixed rate (requests start on schedule whatever the answers do),
//!   timing each request from the moment it is sent to its first token (streams: the first SSE
//!   event carrying content; plain: the response headers) and to its end. `--unique` puts a fresh
//!   value in place of `{n}` in the body of each request, which makes every request a cache miss.
//! - `keepalive`: a closed loop of streamed requests, one after another on each of `--connections`
//!   keep-alive connections (as an SDK's connection pool sends them), timing each stream to its
//!   first token, to its end, and the gaps between its SSE events as they arrive.
//! - `coldstart`: starts a Lambda binary against a Runtime API stand-in that records the moment
//!   of the first `GET /2018-06-01/runtime/invocation/next` and never answers; repeated `--runs`
//!   times.
//! - `invoke`: runs a Lambda binary against a Runtime API stand-in that hands it the same event
//!   `--warmup` + `--runs` times, one invocation at a time: the event on `/next`, then the whole
//!   `/response` body (buffered, or a streamed prelude and body), then the function's next poll
//!   before the next event. Times each measured invocation (event handed to the last byte of its
//!   response) and reads the process's CPU time (utime + stime of /proc/PID/stat, all threads;
//!   and the tasks' schedstat, in ns) between its poll after the warm-up and its poll after the
//!   last measured invocation, so work done after a response (settlement) is counted.
//!
//! Every result is one JSON line on stdout. Every loop is bounded in count and in time.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

mod invoke;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn usage() -> ! {
    eprintln!(
        "usage:\n  bench-driver load --url URL --body-file FILE [--key KEY] [--header 'NAME: VALUE']... [--stream] [--unique] \
         --rate RPS --duration SECS [--warmup SECS] [--timeout SECS] [--label TEXT]\n  \
         bench-driver keepalive --url URL --body-file FILE [--key KEY] [--header 'NAME: VALUE']... \
         [--connections N] --duration SECS [--warmup SECS] [--timeout SECS] [--label TEXT]\n  \
         bench-driver coldstart --bin PATH [--runs N] [--fresh-dir-env VAR] [--timeout SECS] [--label TEXT]\n  \
         bench-driver invoke --bin PATH --event-file FILE [--runs N] [--warmup N] [--expect-status CODE] \
         [--delayed-ack] [--log FILE] [--timeout SECS] [--label TEXT]"
    );
    std::process::exit(2)
}

struct Args(Vec<String>);

impl Args {
    fn value(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.0.get(i + 1))
            .map(String::as_str)
    }
    fn values(&self, name: &str) -> Vec<&str> {
        self.0
            .windows(2)
            .filter(|w| w[0] == name)
            .map(|w| w[1].as_str())
            .collect()
    }
    fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }
    fn required(&self, name: &str) -> &str {
        self.value(name).unwrap_or_else(|| {
            eprintln!("bench-driver: {name} is required");
            usage()
        })
    }
    fn number(&self, name: &str, default: f64) -> f64 {
        match self.value(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("bench-driver: {name} must be a number, got `{v}`");
                usage()
            }),
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = argv.first().cloned() else {
        usage()
    };
    let args = Args(argv);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // One worker: the driver shares two cores with the gateway and the mock.
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match mode.as_str() {
        "load" => runtime.block_on(load(&args)),
        "keepalive" => runtime.block_on(keepalive(&args)),
        "coldstart" => runtime.block_on(coldstart(&args)),
        "invoke" => runtime.block_on(invoke::invoke(&args)),
        _ => usage(),
    };
    match result {
        Ok(value) => println!("{value}"),
        Err(error) => {
            eprintln!("bench-driver: {error}");
            std::process::exit(1);
        }
    }
}

/// Percentiles of microsecond samples.
fn summary(samples: &mut [u64]) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_unstable();
    let at = |p: f64| {
        let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1]
    };
    let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
    json!({
        "n": samples.len(),
        "min": samples[0],
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": samples[samples.len() - 1],
        "mean": mean.round(),
    })
}

/// True once `seen` holds an SSE event with a non-empty `content` delta.
fn has_token(seen: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"content\":\"";
    seen.windows(NEEDLE.len())
        .enumerate()
        .any(|(i, w)| w == NEEDLE && seen.get(i + NEEDLE.len()).is_some_and(|b| *b != b'"'))
}

struct Timing {
    first_us: u64,
    total_us: u64,
}

/// What every request of a run carries: the URL and the headers.
struct Target {
    url: hyper::Uri,
    headers: Vec<(String, String)>,
}

async fn one(
    client: &HttpClient,
    target: &Target,
    body: Bytes,
    stream: bool,
) -> Result<Timing, String> {
    let mut request = Request::post(target.url.clone()).header(CONTENT_TYPE, "application/json");
    for (name, value) in &target.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    let mut first = (!stream).then(|| started.elapsed());
    let mut seen: Vec<u8> = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if first.is_none() {
            seen.extend_from_slice(data);
            if has_token(&seen) {
                first = Some(started.elapsed());
            }
        }
        if !status.is_success() || stream {
            tail.extend_from_slice(data);
            if tail.len() > 4096 {
                tail.drain(..tail.len() - 512);
            }
        }
    }
    let total = started.elapsed();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&tail);
        return Err(format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    if stream && !tail.windows(12).any(|w| w == b"data: [DONE]") {
        return Err("stream ended without [DONE]".to_owned());
    }
    let first = first.ok_or("stream carried no token")?;
    Ok(Timing {
        first_us: first.as_micros() as u64,
        total_us: total.as_micros() as u64,
    })
}

struct Phase {
    first: Vec<u64>,
    total: Vec<u64>,
    lag: Vec<u64>,
    errors: u64,
    error_sample: Option<String>,
    sent: u64,
    elapsed: Duration,
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    client: &HttpClient,
    target: &Arc<Target>,
    template: &str,
    unique: Option<&str>,
    stream: bool,
    rate: f64,
    duration: f64,
    timeout: Duration,
) -> Phase {
    let count = (rate * duration).round().max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let fixed = Bytes::from(template.to_owned());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let start = tokio::time::Instant::now();
    for i in 0..count {
        let at = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(at).await;
        let lag = at.elapsed().as_micros() as u64;
        let body = match unique {
            Some(nonce) => Bytes::from(template.replace("{n}", &format!("{nonce}-{i}"))),
            None => fixed.clone(),
        };
        let (client, target, tx) = (client.clone(), Arc::clone(target), tx.clone());
        tokio::spawn(async move {
            let result = tokio::time::timeout(timeout, one(&client, &target, body, stream))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {} s", timeout.as_secs())));
            let _ = tx.send((result, lag));
        });
    }
    drop(tx);
    let mut phase = Phase {
        first: Vec::with_capacity(count as usize),
        total: Vec::with_capacity(count as usize),
        lag: Vec::with_capacity(count as usize),
        errors: 0,
        error_sample: None,
        sent: count,
        elapsed: Duration::ZERO,
    };
    // Every task ends within `timeout`; the extra second only guards against a lost sender.
    let drain_deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(1);
    while let Ok(Some((result, lag))) = tokio::time::timeout_at(drain_deadline, rx.recv()).await {
        phase.lag.push(lag);
        match result {
            Ok(timing) => {
                phase.first.push(timing.first_us);
                phase.total.push(timing.total_us);
            }
            Err(error) => {
                phase.errors += 1;
                phase.error_sample.get_or_insert(error);
            }
        }
    }
    phase.errors += count - phase.lag.len() as u64;
    phase.elapsed = start.elapsed();
    phase
}

fn body_template(args: &Args) -> Result<String, String> {
    let body_file = args.required("--body-file");
    std::fs::read_to_string(body_file).map_err(|e| format!("{body_file}: {e}"))
}

/// `--key` and `--header` as request headers.
fn headers(args: &Args) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    if let Some(key) = args.value("--key") {
        headers.push((AUTHORIZATION.as_str().to_owned(), format!("Bearer {key}")));
    }
    for header in args.values("--header") {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("--header `{header}` is not `name: value`"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Ok(headers)
}

async fn load(args: &Args) -> Result<Value, String> {
    let url: hyper::Uri = args
        .required("--url")
        .parse()
        .map_err(|e| format!("--url: {e}"))?;
    let template = body_template(args)?;
    let target = Arc::new(Target {
        url,
        headers: headers(args)?,
    });
    let stream = args.flag("--stream");
    let rate = args.number("--rate", 100.0);
    let duration = args.number("--duration", 5.0);
    let warmup = args.number("--warmup", 1.0);
    let timeout = Duration::from_secs_f64(args.number("--timeout", 10.0));
    if !(rate > 0.0 && rate <= 100_000.0 && duration > 0.0 && duration <= 600.0) {
        return Err("--rate must be in (0, 100000] and --duration in (0, 600]".to_owned());
    }
    let nonce = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let unique = args.flag("--unique").then_some(nonce.as_str());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector);
    let mut warmup_ok = 0;
    if warmup > 0.0 {
        let warm_nonce = format!("warm-{nonce}");
        let unique = unique.map(|_| warm_nonce.as_str());
        let phase = run_phase(
            &client, &target, &template, unique, stream, rate, warmup, timeout,
        )
        .await;
        if phase.errors == phase.sent {
            return Err(format!(
                "every warm-up request failed: {}",
                phase.error_sample.unwrap_or_default()
            ));
        }
        warmup_ok = phase.total.len();
    }
    let mut phase = run_phase(
        &client, &target, &template, unique, stream, rate, duration, timeout,
    )
    .await;
    let ok = phase.total.len() as u64;
    Ok(json!({
        "label": args.value("--label").unwrap_or(""),
        "mode": if stream { "stream" } else { "plain" },
        "rate": rate,
        "sent": phase.sent,
        "ok": ok,
        "warmup_ok": warmup_ok,
        "errors": phase.errors,
        "error_sample": phase.error_sample,
        "achieved_rps": ok as f64 / phase.elapsed.as_secs_f64(),
        "first_us": summary(&mut phase.first),
        "total_us": summary(&mut phase.total),
        "send_lag_us": summary(&mut phase.lag),
    }))
}

/// What one stream on a keep-alive connection took: to its first token, to its end, and between
/// each two SSE events in the order they arrived (events that arrive together are 0 apart).
struct StreamTiming {
    first_us: u64,
    total_us: u64,
    gaps_us: Vec<u64>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn open_connection(url: &hyper::Uri) -> Result<Sender, String> {
    let host = url.host().ok_or("--url has no host")?;
    let port = url.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn one_stream(
    sender: &mut Sender,
    target: &Target,
    body: Bytes,
) -> Result<StreamTiming, String> {
    let authority = target.url.authority().map_or("", |a| a.as_str());
    let mut request = Request::post(target.url.path())
        .header(hyper::header::HOST, authority)
        .header(CONTENT_TYPE, "application/json");
    for (name, value) in &target.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let started = Instant::now();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    let mut first = None;
    let mut seen: Vec<u8> = Vec::new();
    let mut events: Vec<Duration> = Vec::new();
    let mut after_newline = false;
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let at = started.elapsed();
        if first.is_none() {
            seen.extend_from_slice(data);
            if has_token(&seen) {
                first = Some(at);
            }
        }
        for byte in data.iter() {
            // An SSE event ends with a blank line.
            if *byte == b'\n' && after_newline {
                events.push(at);
                after_newline = false;
            } else {
                after_newline = *byte == b'\n';
            }
        }
    }
    let total = started.elapsed();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&seen);
        return Err(format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    let first = first.ok_or("stream carried no token")?;
    Ok(StreamTiming {
        first_us: first.as_micros() as u64,
        total_us: total.as_micros() as u64,
        gaps_us: events
            .windows(2)
            .map(|w| (w[1] - w[0]).as_micros() as u64)
            .collect(),
    })
}

/// One connection's closed loop until `until`: a new connection after a failure.
async fn keepalive_worker(
    target: Arc<Target>,
    body: Bytes,
    until: Instant,
    timeout: Duration,
) -> (Vec<StreamTiming>, u64, Option<String>) {
    let mut timings = Vec::new();
    let mut errors = 0;
    let mut error_sample = None;
    let mut sender = None;
    while Instant::now() < until {
        let result = tokio::time::timeout(timeout, async {
            if sender.is_none() {
                sender = Some(open_connection(&target.url).await?);
            }
            match sender.as_mut() {
                Some(sender) => one_stream(sender, &target, body.clone()).await,
                None => Err("no connection".to_owned()),
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", timeout.as_secs())));
        match result {
            Ok(timing) => timings.push(timing),
            Err(error) => {
                errors += 1;
                error_sample.get_or_insert(error);
                sender = None;
                // A refused or broken connection must not turn into a busy loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (timings, errors, error_sample)
}

async fn keepalive_phase(
    target: &Arc<Target>,
    body: &Bytes,
    connections: usize,
    duration: Duration,
    timeout: Duration,
) -> (Vec<StreamTiming>, u64, Option<String>, Duration) {
    let started = Instant::now();
    let until = started + duration;
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(keepalive_worker(
                Arc::clone(target),
                body.clone(),
                until,
                timeout,
            ))
        })
        .collect();
    let mut timings = Vec::new();
    let mut errors = 0;
    let mut error_sample = None;
    for worker in workers {
        match worker.await {
            Ok((mut t, e, sample)) => {
                timings.append(&mut t);
                errors += e;
                if error_sample.is_none() {
                    error_sample = sample;
                }
            }
            Err(e) => {
                errors += 1;
                error_sample.get_or_insert(format!("worker: {e}"));
            }
        }
    }
    (timings, errors, error_sample, started.elapsed())
}

async fn keepalive(args: &Args) -> Result<Value, String> {
    let url: hyper::Uri = args
        .required("--url")
        .parse()
        .map_err(|e| format!("--url: {e}"))?;
    if url.scheme_str() != Some("http") {
        return Err("--url must be http://".to_owned());
    }
    let body = Bytes::from(body_template(args)?);
    let target = Arc::new(Target {
        url,
        headers: headers(args)?,
    });
    let connections = args.number("--connections", 8.0);
    let duration = args.number("--duration", 5.0);
    let warmup = args.number("--warmup", 1.0);
    let timeout = Duration::from_secs_f64(args.number("--timeout", 10.0));
    if !((1.0..=256.0).contains(&connections) && duration > 0.0 && duration <= 600.0) {
        return Err("--connections must be in [1, 256] and --duration in (0, 600]".to_owned());
    }
    let connections = connections as usize;
    if warmup > 0.0 {
        let warm = Duration::from_secs_f64(warmup);
        let (timings, _, error_sample, _) =
            keepalive_phase(&target, &body, connections, warm, timeout).await;
        if timings.is_empty() {
            return Err(format!(
                "every warm-up stream failed: {}",
                error_sample.unwrap_or_default()
            ));
        }
    }
    let (timings, errors, error_sample, elapsed) = keepalive_phase(
        &target,
        &body,
        connections,
        Duration::from_secs_f64(duration),
        timeout,
    )
    .await;
    let mut first: Vec<u64> = timings.iter().map(|t| t.first_us).collect();
    let mut total: Vec<u64> = timings.iter().map(|t| t.total_us).collect();
    let mut gaps: Vec<u64> = timings.iter().flat_map(|t| t.gaps_us.clone()).collect();
    let ok = timings.len() as u64;
    Ok(json!({
        "label": args.value("--label").unwrap_or(""),
        "mode": "keepalive",
        "connections": connections,
        "ok": ok,
        "errors": errors,
        "error_sample": error_sample,
        "achieved_rps": ok as f64 / elapsed.as_secs_f64(),
        "first_us": summary(&mut first),
        "total_us": summary(&mut total),
        "gap_us": summary(&mut gaps),
    }))
}

/// Starts `bin` `runs` times; each time, the time from spawn to its first Runtime API poll.
async fn coldstart(args: &Args) -> Result<Value, String> {
    let bin = args.required("--bin").to_owned();
    let runs = args.number("--runs", 20.0).clamp(1.0, 500.0) as usize;
    let timeout = Duration::from_secs_f64(args.number("--timeout", 5.0));
    let fresh_dir_env = args.value("--fresh-dir-env");
    let scratch = std::env::temp_dir().join(format!("bench-coldstart-{}", std::process::id()));
    let mut samples = Vec::with_capacity(runs);
    let mut failures = Vec::new();
    for run in 0..runs {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        let address: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut command = tokio::process::Command::new(&bin);
        command
            .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(var) = fresh_dir_env {
            let dir = scratch.join(format!("run-{run}"));
            let _ = std::fs::remove_dir_all(&dir);
            command.env(var, &dir);
        }
        let started = Instant::now();
        let mut child = command.spawn().map_err(|e| format!("spawn {bin}: {e}"))?;
        let polled = tokio::time::timeout(timeout, async {
            let (mut socket, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut head = Vec::new();
            let mut buf = [0u8; 2048];
            loop {
                let n = socket.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("connection closed before a request".to_owned());
                }
                head.extend_from_slice(&buf[..n]);
                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let elapsed = started.elapsed();
                    let line = String::from_utf8_lossy(&head);
                    let line = line.lines().next().unwrap_or("").to_owned();
                    return if line.starts_with("GET /2018-06-01/runtime/invocation/next") {
                        Ok(elapsed)
                    } else {
                        Err(format!("first request was `{line}`"))
                    };
                }
                if head.len() > 65_536 {
                    return Err("request head too large".to_owned());
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no poll within {} s", timeout.as_secs_f64())));
        let _ = child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        match polled {
            Ok(elapsed) => samples.push(elapsed.as_micros() as u64),
            Err(error) => failures.push(error),
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if samples.is_empty() {
        return Err(format!(
            "{bin}: no run reached its first poll: {}",
            failures.first().cloned().unwrap_or_default()
        ));
    }
    Ok(json!({
        "label": args.value("--label").unwrap_or(""),
        "bin": bin,
        "runs": runs,
        "failures": failures.len(),
        "failure_sample": failures.first(),
        "start_to_poll_us": summary(&mut samples),
    }))
}
