//! Deterministic fault injection chosen by the model name, so integration tests can drive the
//! gateway's retry, fallback, circuit-breaker and stream-failure handling. The gateway forwards the
//! upstream model (or Azure deployment) from its own config, so the fault lives in that name:
//!
//! `fault:` followed by `;`-separated settings, `key=value` or bare flags, for example
//! `fault:status=429;times=1;retry_after=2` or `fault:tokens=60;cut_after=40`.
//!
//! | setting | effect |
//! |---|---|
//! | `status=N` | HTTP N (400..=599) in the vendor's error body |
//! | `code=C` | OpenAI error code and its message (Anthropic: matching message); alone it implies 400 (429 for `rate_limit_exceeded` / `insufficient_quota`) |
//! | `retry_after=S` | `Retry-After: S` on the error (otherwise none, even on 429) |
//! | `times=K` | only the first K attempts fail |
//! | `for_ms=T` | only attempts within T ms of the first one fail |
//! | `reset` | TCP reset before any response byte |
//! | `hang` | no response for an hour |
//! | `headers_delay_ms=T` | T ms before the response headers |
//! | `first_token_ms=T` | streams: T ms between the role chunk and the first token; else delays the response |
//! | `tokens=M` | the answer is exactly `w1 ... wM` (always, not gated by `times` / `for_ms`) |
//! | `cut_after=N` | streams: connection closed after N content events, no finish / `[DONE]` |
//! | `stall_after=N;stall_ms=T` | streams: T ms pause after N content events |
//! | `malformed_at=N` | streams: the N-th content event is invalid JSON |
//! | `tool_index=I` | streams (OpenAI): the first content event is a tool-call delta with `index` I |
//! | `no_done` | streams: no `[DONE]` / message_stop, connection held open 30 s |
//! | `no_usage` | no usage anywhere |
//!
//! Pre-header faults run in order `headers_delay_ms`, `hang`, `reset`, `status`. Every setting
//! except `tokens` is gated by `times` and `for_ms` (both must hold): once they have run out the
//! request is answered normally. Attempts are counted per full model string (Azure: the
//! deployment), and that count and the time of the first attempt are cleared by
//! `POST /_mock/reset`. A malformed spec is answered with a 400 saying what is wrong.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::connect_info::Connected,
    http::{
        HeaderValue,
        header::{CACHE_CONTROL, CONTENT_TYPE},
    },
    response::{IntoResponse, Response},
    serve::{IncomingStream, Listener},
};
use futures_util::{StreamExt, future, stream};
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};

pub const PREFIX: &str = "fault:";

/// `hang` never answers; an hour is far beyond any gateway timeout.
const HANG: Duration = Duration::from_secs(3600);
/// How long `no_done` keeps the finished stream open before ending it.
const NO_DONE_HOLD: Duration = Duration::from_secs(30);
/// Before a cut the body waits this long, so hyper flushes what was sent before it: on a body
/// error hyper closes at once, discarding buffered frames (even the status line if the whole
/// stream was ready at once, which turns the cut into an empty reply).
const CUT_GRACE: Duration = Duration::from_millis(20);
/// Per-model cap on recorded attempt times, so long benchmarks cannot grow memory without bound.
const MAX_TIMESTAMPS: usize = 10_000;

/// A parsed `fault:` model name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FaultSpec {
    pub status: Option<u16>,
    pub code: Option<String>,
    pub retry_after: Option<String>,
    pub times: Option<u64>,
    pub for_ms: Option<u64>,
    pub reset: bool,
    pub hang: bool,
    pub headers_delay_ms: Option<u64>,
    pub first_token_ms: Option<u64>,
    pub tokens: Option<usize>,
    pub cut_after: Option<usize>,
    pub stall_after: Option<usize>,
    pub stall_ms: Option<u64>,
    pub malformed_at: Option<usize>,
    pub tool_index: Option<u64>,
    pub no_done: bool,
    pub no_usage: bool,
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("`{key}` needs a non-negative integer, got `{value}`"))
}

impl FaultSpec {
    /// `None` for an ordinary model; otherwise the spec, or why it is malformed.
    pub fn parse(model: &str) -> Option<Result<Self, String>> {
        model.strip_prefix(PREFIX).map(Self::parse_settings)
    }

    fn parse_settings(settings: &str) -> Result<Self, String> {
        let mut spec = Self::default();
        let mut seen = Vec::new();
        for setting in settings.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = match setting.split_once('=') {
                Some((key, value)) => (key.trim(), Some(value.trim())),
                None => (setting, None),
            };
            if seen.contains(&key) {
                return Err(format!("`{key}` is given twice"));
            }
            seen.push(key);
            let flag = |set: &mut bool| match value {
                None => {
                    *set = true;
                    Ok(())
                }
                Some(_) => Err(format!("`{key}` is a flag and takes no value")),
            };
            let value = || value.ok_or_else(|| format!("`{key}` needs a value (`{key}=...`)"));
            match key {
                "reset" => flag(&mut spec.reset)?,
                "hang" => flag(&mut spec.hang)?,
                "no_done" => flag(&mut spec.no_done)?,
                "no_usage" => flag(&mut spec.no_usage)?,
                "status" => {
                    let status: u16 = number(key, value()?)?;
                    if !(400..=599).contains(&status) {
                        return Err(format!("`status` must be 400..=599, got {status}"));
                    }
                    spec.status = Some(status);
                }
                "code" => {
                    let code = value()?;
                    if code.is_empty() {
                        return Err("`code` must not be empty".to_owned());
                    }
                    spec.code = Some(code.to_owned());
                }
                "retry_after" => {
                    let retry_after = value()?;
                    if retry_after.is_empty() || HeaderValue::from_str(retry_after).is_err() {
                        return Err(format!("`retry_after={retry_after}` is no header value"));
                    }
                    spec.retry_after = Some(retry_after.to_owned());
                }
                "times" => spec.times = Some(number(key, value()?)?),
                "for_ms" => spec.for_ms = Some(number(key, value()?)?),
                "headers_delay_ms" => spec.headers_delay_ms = Some(number(key, value()?)?),
                "first_token_ms" => spec.first_token_ms = Some(number(key, value()?)?),
                "tokens" => spec.tokens = Some(number(key, value()?)?),
                "cut_after" => spec.cut_after = Some(number(key, value()?)?),
                "stall_after" => spec.stall_after = Some(number(key, value()?)?),
                "stall_ms" => spec.stall_ms = Some(number(key, value()?)?),
                "malformed_at" => {
                    let at = number(key, value()?)?;
                    if at == 0 {
                        return Err("`malformed_at` counts from 1".to_owned());
                    }
                    spec.malformed_at = Some(at);
                }
                "tool_index" => spec.tool_index = Some(number(key, value()?)?),
                _ => {
                    return Err(format!(
                        "unknown setting `{key}`; known: status, code, retry_after, times, for_ms, reset, hang, headers_delay_ms, first_token_ms, tokens, cut_after, stall_after, stall_ms, malformed_at, tool_index, no_done, no_usage"
                    ));
                }
            }
        }
        if spec.tool_index.is_some() && spec.malformed_at.is_some() {
            return Err("`tool_index` and `malformed_at` both replace a content event".to_owned());
        }
        if spec.stall_after.is_some() != spec.stall_ms.is_some() {
            return Err("`stall_after` and `stall_ms` go together".to_owned());
        }
        Ok(spec)
    }

    /// Whether the faults fire for the attempt numbered `index` (0 for the first) that arrived
    /// `since_first` after the first attempt for this model.
    pub fn active(&self, index: u64, since_first: Duration) -> bool {
        self.times.is_none_or(|times| index < times)
            && self
                .for_ms
                .is_none_or(|ms| since_first < Duration::from_millis(ms))
    }

    /// The status this spec fails with: `status`, else one implied by `code`.
    fn error_status(&self) -> Option<u16> {
        self.status.or_else(|| {
            self.code.as_deref().map(|code| match code {
                "rate_limit_exceeded" | "insufficient_quota" => 429,
                "invalid_api_key" => 401,
                "model_not_found" => 404,
                _ => 400,
            })
        })
    }
}

/// The HTTP error a fault answers with, rendered by each vendor in its own body shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFault {
    pub status: u16,
    pub code: Option<String>,
    pub retry_after: Option<String>,
}

/// What to do to one request: the spec after `times` / `for_ms` are applied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub headers_delay: Option<Duration>,
    pub hang: bool,
    pub reset: bool,
    pub error: Option<ErrorFault>,
    pub first_token: Option<Duration>,
    /// Not gated by `times` / `for_ms`: a retry should see the same answer, only whole.
    pub tokens: Option<usize>,
    pub cut_after: Option<usize>,
    pub stall: Option<(usize, Duration)>,
    pub malformed_at: Option<usize>,
    /// Replaces the first content event with a tool-call delta at this index.
    pub tool_index: Option<u64>,
    pub no_done: bool,
    pub no_usage: bool,
}

/// How a request ends before its response headers.
#[derive(Debug)]
pub enum Early {
    /// The connection was reset; the response built for this is never sent, unless the server
    /// was started without [`KillableListener`].
    Reset,
    Error(ErrorFault),
}

impl Plan {
    /// The plan for `model` at this attempt; an ordinary model gets the empty (normal) plan.
    pub fn for_request(model: &str, attempt: &Attempt) -> Result<Self, String> {
        let Some(spec) = FaultSpec::parse(model) else {
            return Ok(Self::default());
        };
        let spec = spec.map_err(|problem| format!("mock provider: bad fault spec: {problem}"))?;
        Ok(Self::from_spec(
            &spec,
            spec.active(attempt.index, attempt.since_first),
        ))
    }

    fn from_spec(spec: &FaultSpec, active: bool) -> Self {
        let tokens = spec.tokens;
        if !active {
            return Self {
                tokens,
                ..Self::default()
            };
        }
        Self {
            headers_delay: spec.headers_delay_ms.map(Duration::from_millis),
            hang: spec.hang,
            reset: spec.reset,
            error: spec.error_status().map(|status| ErrorFault {
                status,
                code: spec.code.clone(),
                retry_after: spec.retry_after.clone(),
            }),
            first_token: spec.first_token_ms.map(Duration::from_millis),
            tokens,
            cut_after: spec.cut_after,
            stall: spec
                .stall_after
                .zip(spec.stall_ms.map(Duration::from_millis)),
            malformed_at: spec.malformed_at.or(spec.tool_index.map(|_| 1)),
            tool_index: spec.tool_index,
            no_done: spec.no_done,
            no_usage: spec.no_usage,
        }
    }

    /// Applies the faults that act before any response header: delay, hang, reset, error status.
    pub async fn before_headers(&self, attempt: &Attempt) -> Result<(), Early> {
        if let Some(delay) = self.headers_delay {
            tokio::time::sleep(delay).await;
        }
        if self.hang {
            tokio::time::sleep(HANG).await;
        }
        if self.reset {
            if let Some(connection) = &attempt.connection {
                connection.kill();
            }
            return Err(Early::Reset);
        }
        match &self.error {
            Some(error) => Err(Early::Error(error.clone())),
            None => Ok(()),
        }
    }

    /// For a non-streamed answer, `first_token_ms` delays the whole response.
    pub async fn before_body(&self) {
        if let Some(delay) = self.first_token {
            tokio::time::sleep(delay).await;
        }
    }

    /// The stream as timed steps: `head`, then the content events with the stream faults applied,
    /// then `tail` and `done`. `malformed` stands in for the `malformed_at`-th content event.
    pub fn shape(&self, frames: Frames, malformed: &str) -> Vec<Step> {
        let Frames {
            head,
            content,
            tail,
            done,
        } = frames;
        let len = content.len();
        let mut steps: Vec<Step> = head.into_iter().map(Step::Frame).collect();
        if let Some(delay) = self.first_token {
            steps.push(Step::Pause(delay));
        }
        // Cut and stall act once that many content events are out; a count past the last one
        // acts just before the finishing events.
        let cut_at = self.cut_after.map(|n| n.min(len));
        let stall_at = self.stall.map(|(n, pause)| (n.min(len), pause));
        let mut content = content.into_iter();
        for sent in 0..=len {
            if cut_at == Some(sent) {
                steps.push(Step::Cut);
                return steps;
            }
            if let Some((_, pause)) = stall_at.filter(|(at, _)| *at == sent) {
                steps.push(Step::Pause(pause));
            }
            let Some(frame) = content.next() else {
                break;
            };
            if self.malformed_at == Some(sent + 1) {
                steps.push(Step::Frame(malformed.to_owned()));
            } else {
                steps.push(Step::Frame(frame));
            }
        }
        steps.extend(tail.into_iter().map(Step::Frame));
        if self.no_done {
            steps.push(Step::Pause(NO_DONE_HOLD));
        } else {
            steps.extend(done.map(Step::Frame));
        }
        steps
    }
}

/// A streamed answer split where faults act on it, each part already SSE-encoded.
#[derive(Debug, Default, Clone)]
pub struct Frames {
    /// Before any content: OpenAI's role chunk; Anthropic's message_start, content_block_start, ping.
    pub head: Vec<String>,
    /// One event per token (or tool-argument piece).
    pub content: Vec<String>,
    /// The finishing events: OpenAI's finish and usage chunks; Anthropic's content_block_stop and
    /// message_delta.
    pub tail: Vec<String>,
    /// The end marker: OpenAI's `data: [DONE]`; Anthropic's message_stop.
    pub done: Option<String>,
}

impl Frames {
    /// Every frame in order, as a fault-free stream sends them.
    #[cfg(test)]
    pub fn all(self) -> Vec<String> {
        let mut frames = self.head;
        frames.extend(self.content);
        frames.extend(self.tail);
        frames.extend(self.done);
        frames
    }
}

/// One step of a streamed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Frame(String),
    Pause(Duration),
    /// Abort the connection mid-body: the body stream fails, so hyper drops the connection
    /// without the terminating chunk and the client sees a truncated transfer. It comes after
    /// [`CUT_GRACE`], or hyper would drop its unflushed buffer, headers and all, with it.
    Cut,
}

/// A `text/event-stream` response playing `steps`, with `delay` before every frame but the first.
pub fn sse_steps(steps: Vec<Step>, delay: Duration) -> Response {
    let mut frames_sent = 0_usize;
    let events = stream::iter(steps)
        .then(move |step| {
            let wait = match &step {
                Step::Frame(_) => {
                    frames_sent += 1;
                    (frames_sent > 1).then_some(delay)
                }
                Step::Pause(pause) => Some(*pause),
                Step::Cut => Some(CUT_GRACE),
            };
            async move {
                if let Some(wait) = wait.filter(|w| !w.is_zero()) {
                    tokio::time::sleep(wait).await;
                }
                match step {
                    Step::Frame(frame) => Some(Ok(frame)),
                    Step::Pause(_) => None,
                    Step::Cut => Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "mock provider: cut_after fault",
                    ))),
                }
            }
        })
        .filter_map(future::ready);
    (
        [
            (CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response()
}

/// What the mock knows about one request when a handler runs, set by the recording middleware.
#[derive(Debug, Default, Clone)]
pub struct Attempt {
    /// How many requests for the same model came before this one since the last reset.
    pub index: u64,
    /// Time since the first of those requests (zero for the first).
    pub since_first: Duration,
    /// Resets this request's TCP connection; absent when not served by [`KillableListener`].
    pub connection: Option<KillSwitch>,
}

/// Per-model attempt counts and times, served by `/_mock/stats` as `by_model` and `timestamps`.
#[derive(Debug, Default, Serialize)]
pub struct History {
    by_model: BTreeMap<String, u64>,
    /// Milliseconds since the model's first attempt, one per attempt (capped per model).
    timestamps: BTreeMap<String, Vec<u64>>,
    #[serde(skip)]
    first: HashMap<String, Instant>,
}

impl History {
    /// Counts an attempt for `model` at `now`; returns its index and time since the first one.
    pub fn record(&mut self, model: &str, now: Instant) -> (u64, Duration) {
        let first = *self.first.entry(model.to_owned()).or_insert(now);
        let since_first = now.saturating_duration_since(first);
        let count = self.by_model.entry(model.to_owned()).or_default();
        let index = *count;
        *count += 1;
        let times = self.timestamps.entry(model.to_owned()).or_default();
        if times.len() < MAX_TIMESTAMPS {
            times.push(u64::try_from(since_first.as_millis()).unwrap_or(u64::MAX));
        }
        (index, since_first)
    }
}

/// Lets a handler reset its own connection (see [`KillableListener`]).
#[derive(Debug, Default, Clone)]
pub struct KillSwitch(Arc<AtomicBool>);

impl KillSwitch {
    pub fn kill(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn killed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The `reset` fault needs to drop a connection before any response byte, which a handler
/// cannot do: whatever it returns, hyper writes a status line. So the server accepts through
/// this listener, which wraps every socket in a [`KillableStream`] and hands the stream's
/// [`KillSwitch`] to handlers as connect info. A handler flips the switch and returns; when
/// hyper then writes the response, the write fails, hyper drops the connection and the socket,
/// set to linger zero, closes with a TCP RST. The client sees "connection reset by peer" with
/// no status line, as from a crashed upstream or a load balancer killing the connection.
pub struct KillableListener(pub TcpListener);

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    // Small SSE frames go out when sent, so stream timings are what tests expect.
                    // Best effort: without it the stream is only slower.
                    let _ = inner.set_nodelay(true);
                    let kill = KillSwitch::default();
                    return (KillableStream { inner, kill }, addr);
                }
                // Per-connection failures (the peer gave up already) need no pause; others, such
                // as running out of file descriptors, would spin, so back off as axum does.
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    eprintln!("mock provider: accept failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl Connected<IncomingStream<'_, KillableListener>> for KillSwitch {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.io().kill.clone()
    }
}

/// A TCP stream that fails every operation once its [`KillSwitch`] is flipped.
pub struct KillableStream {
    inner: TcpStream,
    kill: KillSwitch,
}

impl KillableStream {
    fn check(&self) -> io::Result<()> {
        if self.kill.killed() {
            // Linger zero makes the close that follows a reset; it never blocks, unlike a linger
            // timeout. If it fails the close is an ordinary FIN, still with no response.
            let _ = self.inner.set_zero_linger();
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "mock provider: reset fault",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(model: &str) -> FaultSpec {
        FaultSpec::parse(model).unwrap().unwrap()
    }

    fn problem(model: &str) -> String {
        FaultSpec::parse(model).unwrap().unwrap_err()
    }

    #[test]
    fn ordinary_models_are_not_faults() {
        assert!(FaultSpec::parse("gpt-4o").is_none());
        assert!(FaultSpec::parse("error-429").is_none());
        assert!(FaultSpec::parse("Fault:status=429").is_none());
    }

    #[test]
    fn parses_values_and_flags() {
        assert_eq!(
            spec("fault:status=429;times=1;retry_after=2"),
            FaultSpec {
                status: Some(429),
                times: Some(1),
                retry_after: Some("2".into()),
                ..FaultSpec::default()
            }
        );
        let all = spec(
            "fault: status=503 ; code=x;for_ms=60000;reset;hang;headers_delay_ms=5;first_token_ms=20000;tokens=60;cut_after=40;stall_after=3;stall_ms=30000;malformed_at=2;no_done;no_usage;",
        );
        assert_eq!(
            all,
            FaultSpec {
                status: Some(503),
                code: Some("x".into()),
                retry_after: None,
                times: None,
                for_ms: Some(60_000),
                reset: true,
                hang: true,
                headers_delay_ms: Some(5),
                first_token_ms: Some(20_000),
                tokens: Some(60),
                cut_after: Some(40),
                stall_after: Some(3),
                stall_ms: Some(30_000),
                malformed_at: Some(2),
                tool_index: None,
                no_done: true,
                no_usage: true,
            }
        );
        assert_eq!(spec("fault:"), FaultSpec::default());
        assert_eq!(
            spec("fault:retry_after=Wed, 21 Oct 2015 07:28:00 GMT").retry_after,
            Some("Wed, 21 Oct 2015 07:28:00 GMT".into())
        );
    }

    #[test]
    fn rejects_malformed_specs() {
        for (model, expected) in [
            ("fault:status=abc", "non-negative integer"),
            ("fault:status=200", "400..=599"),
            ("fault:status", "needs a value"),
            ("fault:reset=1", "takes no value"),
            ("fault:times=-1", "non-negative integer"),
            ("fault:bogus=1", "unknown setting `bogus`"),
            ("fault:times=1;times=2", "given twice"),
            ("fault:stall_after=3", "go together"),
            ("fault:stall_ms=3", "go together"),
            ("fault:malformed_at=0", "counts from 1"),
            ("fault:code=", "must not be empty"),
            ("fault:retry_after=", "no header value"),
        ] {
            let problem = problem(model);
            assert!(problem.contains(expected), "{model}: {problem}");
        }
    }

    #[test]
    fn code_implies_a_status() {
        let error = |model: &str| {
            Plan::from_spec(&spec(model), true)
                .error
                .map(|error| error.status)
        };
        assert_eq!(error("fault:code=context_length_exceeded"), Some(400));
        assert_eq!(error("fault:code=content_filter"), Some(400));
        assert_eq!(error("fault:code=rate_limit_exceeded"), Some(429));
        assert_eq!(error("fault:status=413;code=whatever"), Some(413));
        assert_eq!(error("fault:tokens=3"), None);
    }

    #[test]
    fn times_limits_failing_attempts() {
        let once = spec("fault:status=500;times=1");
        assert!(once.active(0, Duration::ZERO));
        assert!(!once.active(1, Duration::ZERO));
        let never = spec("fault:status=500;times=0");
        assert!(!never.active(0, Duration::ZERO));
        let forever = spec("fault:status=503");
        assert!(forever.active(1_000_000, Duration::from_secs(86_400)));
    }

    #[test]
    fn for_ms_limits_the_failing_window() {
        let window = spec("fault:status=503;for_ms=60000");
        assert!(window.active(0, Duration::ZERO));
        assert!(window.active(50, Duration::from_millis(59_999)));
        assert!(!window.active(51, Duration::from_millis(60_000)));
        let both = spec("fault:status=503;for_ms=1000;times=2");
        assert!(both.active(1, Duration::from_millis(10)));
        assert!(!both.active(2, Duration::from_millis(10)), "times ran out");
        assert!(
            !both.active(0, Duration::from_millis(1000)),
            "window closed"
        );
    }

    #[test]
    fn inactive_plans_keep_only_tokens() {
        let spec = spec("fault:status=429;reset;tokens=5;cut_after=2;no_done;times=1");
        let later = Plan::from_spec(&spec, false);
        assert_eq!(
            later,
            Plan {
                tokens: Some(5),
                ..Plan::default()
            }
        );
        let first = Plan::from_spec(&spec, true);
        assert!(first.reset && first.no_done);
        assert_eq!(first.cut_after, Some(2));
    }

    #[test]
    fn history_counts_attempts_per_model_and_clock() {
        let mut history = History::default();
        let t0 = Instant::now();
        assert_eq!(history.record("a", t0), (0, Duration::ZERO));
        let t1 = t0 + Duration::from_millis(2_000);
        assert_eq!(history.record("a", t1), (1, Duration::from_millis(2_000)));
        assert_eq!(history.record("b", t1), (0, Duration::ZERO));
        let t2 = t0 + Duration::from_millis(2_500);
        assert_eq!(history.record("a", t2), (2, Duration::from_millis(2_500)));
        let json = serde_json::to_value(&history).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "by_model": {"a": 3, "b": 1},
                "timestamps": {"a": [0, 2000, 2500], "b": [0]},
            })
        );
    }

    #[test]
    fn plans_follow_attempt_state() {
        let model = "fault:status=429;times=1;retry_after=2";
        let mut history = History::default();
        let t0 = Instant::now();
        let plan = |(index, since_first)| {
            let attempt = Attempt {
                index,
                since_first,
                connection: None,
            };
            Plan::for_request(model, &attempt).unwrap()
        };
        let first = plan(history.record(model, t0));
        assert_eq!(
            first.error,
            Some(ErrorFault {
                status: 429,
                code: None,
                retry_after: Some("2".into())
            })
        );
        assert_eq!(plan(history.record(model, t0)), Plan::default());
        assert_eq!(
            Plan::for_request("gpt-4o", &Attempt::default()),
            Ok(Plan::default())
        );
        assert!(
            Plan::for_request("fault:nope", &Attempt::default())
                .unwrap_err()
                .contains("bad fault spec")
        );
    }

    fn frames(content: usize) -> Frames {
        Frames {
            head: vec!["head".into()],
            content: (1..=content).map(|i| format!("c{i}")).collect(),
            tail: vec!["finish".into(), "usage".into()],
            done: Some("done".into()),
        }
    }

    fn labels(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|step| match step {
                Step::Frame(frame) => frame.clone(),
                Step::Pause(pause) => format!("pause {}", pause.as_millis()),
                Step::Cut => "cut".into(),
            })
            .collect()
    }

    fn shaped(model: &str, content: usize) -> Vec<String> {
        labels(&Plan::from_spec(&spec(model), true).shape(frames(content), "bad"))
    }

    #[test]
    fn shapes_streams() {
        assert_eq!(
            shaped("fault:", 2),
            ["head", "c1", "c2", "finish", "usage", "done"]
        );
        assert_eq!(shaped("fault:cut_after=1", 3), ["head", "c1", "cut"]);
        assert_eq!(shaped("fault:cut_after=0", 3), ["head", "cut"]);
        assert_eq!(shaped("fault:cut_after=9", 2), ["head", "c1", "c2", "cut"]);
        assert_eq!(
            shaped("fault:first_token_ms=20;stall_after=1;stall_ms=30", 2),
            [
                "head", "pause 20", "c1", "pause 30", "c2", "finish", "usage", "done"
            ]
        );
        assert_eq!(
            shaped("fault:stall_after=2;stall_ms=5", 2),
            ["head", "c1", "c2", "pause 5", "finish", "usage", "done"]
        );
        assert_eq!(
            shaped("fault:malformed_at=2", 3),
            ["head", "c1", "bad", "c3", "finish", "usage", "done"]
        );
        assert_eq!(
            shaped("fault:no_done", 1),
            ["head", "c1", "finish", "usage", "pause 30000"]
        );
    }
}
