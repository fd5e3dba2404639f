//! Mock upstream LLM provider speaking the real OpenAI, Azure OpenAI and Anthropic wire formats,
//! so integration tests and benchmarks can exercise the gateway offline and deterministically.
//!
//! It prints `listening on http://ADDR` once bound; `GET /_mock/stats` shows what it received.
//! Model names starting with `fault:` inject failures; see `mock_provider/fault.rs`.

// A binary's root resolves modules beside it, where cargo would take them for more binaries.
#[path = "mock_provider/anthropic.rs"]
mod anthropic;
#[path = "mock_provider/embed.rs"]
mod embed;
#[path = "mock_provider/fault.rs"]
mod fault;
#[path = "mock_provider/generate.rs"]
mod generate;
#[path = "mock_provider/openai.rs"]
mod openai;

use std::{
    collections::BTreeMap,
    io::Write,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Body,
    extract::{ConnectInfo, DefaultBodyLimit, Request, State},
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use clap::Parser;
use fault::{Attempt, History, KillSwitch, KillableListener};
use serde::Serialize;
use serde_json::{Value, json};

/// Large enough for long-context and batch-embedding benchmarks.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

#[derive(Parser, Debug)]
#[command(about = "Mock OpenAI / Azure OpenAI / Anthropic upstream for gateway tests")]
struct Args {
    /// Address to bind; port 0 picks a free port, which is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Delay before sending response headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Delay between streamed SSE events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// API key every request must carry; when unset any key (or none) is accepted.
    #[arg(long, env = "MOCK_PROVIDER_REQUIRE_KEY", hide_env_values = true)]
    require_key: Option<String>,
}

pub struct AppState {
    latency: Duration,
    chunk_delay: Duration,
    require_key: Option<String>,
    ids: AtomicU64,
    stats: Mutex<Stats>,
    /// The Anthropic prompt prefixes cached so far (each up to its last `cache_control`), so a
    /// repeat reads what the first request wrote.
    prompt_cache: Mutex<std::collections::HashSet<String>>,
}

/// What tests read back from `/_mock/stats`.
#[derive(Default, Serialize)]
struct Stats {
    requests: u64,
    last_request: Value,
    last_headers: BTreeMap<String, String>,
    /// `by_model` and `timestamps`: attempts per model (or Azure deployment), which also drive
    /// the `fault:` models' `times` and `for_ms`.
    #[serde(flatten)]
    history: History,
}

/// Why a presented API key was refused.
pub enum AuthFailure {
    Missing,
    Invalid,
}

impl AppState {
    fn new(args: &Args) -> Self {
        Self {
            latency: Duration::from_millis(args.latency_ms),
            chunk_delay: Duration::from_millis(args.chunk_delay_ms),
            require_key: args.require_key.clone(),
            ids: AtomicU64::new(1),
            stats: Mutex::default(),
            prompt_cache: Mutex::default(),
        }
    }

    /// Whether `prefix` was cached before; it is cached from now on.
    pub fn prompt_cached(&self, prefix: String) -> bool {
        let mut cache = self
            .prompt_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        !cache.insert(prefix)
    }

    /// A process-unique number for response ids.
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    pub fn chunk_delay(&self) -> Duration {
        self.chunk_delay
    }

    /// Checks `presented` against `--require-key`; anything passes when no key is required.
    pub fn check_key(&self, presented: Option<&str>) -> Result<(), AuthFailure> {
        match (&self.require_key, presented) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(AuthFailure::Missing),
            (Some(required), Some(key)) if key == required => Ok(()),
            (Some(_), Some(_)) => Err(AuthFailure::Invalid),
        }
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        // Stats stay usable even if a handler panicked while holding the lock.
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Error triggers chosen by the request's model name, mapped to each vendor's real errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Unauthorized,
    BadRequest,
    ContextLength,
    ContentFilter,
    RateLimited,
    Internal,
    Unavailable,
    Overloaded,
}

impl Fault {
    pub fn from_model(model: &str) -> Option<Self> {
        Some(match model {
            "error-401" => Self::Unauthorized,
            "error-400" => Self::BadRequest,
            "error-context" => Self::ContextLength,
            "error-content-filter" => Self::ContentFilter,
            "error-429" => Self::RateLimited,
            "error-500" => Self::Internal,
            "error-503" => Self::Unavailable,
            "error-529" => Self::Overloaded,
            _ => return None,
        })
    }
}

/// A JSON request body, only if it is a JSON object as every vendor requires.
pub fn parse_object(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok().filter(Value::is_object)
}

/// A field that is present and not `null` (clients often send explicit nulls for defaults).
pub fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    value.get(name).filter(|v| !v.is_null())
}

pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The model a request is for: the Azure deployment in the path, else the body's `model`.
fn model_key(path: &str, body: &Value) -> Option<String> {
    match path.strip_prefix("/openai/deployments/") {
        // Decoded as axum's `Path` extractor decodes it for the Azure handlers.
        Some(rest) => rest.split('/').next().map(percent_decode),
        None => body.get("model").and_then(Value::as_str).map(str::to_owned),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let escaped = (byte == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                i += 3;
            }
            None => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Records every API request for `/_mock/stats` and hands the handler its [`Attempt`], then
/// applies `--latency-ms`.
async fn record(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
    };
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = model_key(parts.uri.path(), &json);
    let mut attempt = Attempt {
        connection: parts
            .extensions
            .get::<ConnectInfo<KillSwitch>>()
            .map(|info| info.0.clone()),
        ..Attempt::default()
    };
    {
        let mut stats = state.stats();
        stats.requests += 1;
        if let Some(model) = &model {
            (attempt.index, attempt.since_first) = stats.history.record(model, Instant::now());
        }
        stats.last_request = json;
        stats.last_headers.clear();
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            stats
                .last_headers
                .entry(name.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
    }
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    parts.extensions.insert(attempt);
    next.run(Request::from_parts(parts, Body::from(body))).await
}

async fn stats(State(state): State<Arc<AppState>>) -> Response {
    Json(&*state.stats()).into_response()
}

async fn reset(State(state): State<Arc<AppState>>) -> Json<Value> {
    *state.stats() = Stats::default();
    Json(json!({"reset": true}))
}

fn app(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(openai::azure_chat),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(openai::azure_embeddings),
        )
        .route("/v1/messages", post(anthropic::messages))
        .fallback(openai::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), record))
        // `record` already bounds the body; the extractors must not re-apply axum's 2 MB default.
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/_mock/stats", get(stats))
        .route("/_mock/reset", post(reset))
        .merge(api)
        .with_state(state)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let state = Arc::new(AppState::new(&args));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on http://{}", listener.local_addr()?)?;
    stdout.flush()?;
    // The `reset` fault needs each connection's kill switch; see `KillableListener`.
    let app = app(state).into_make_service_with_connect_info::<KillSwitch>();
    axum::serve(KillableListener(listener), app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_key_prefers_the_azure_deployment() {
        let body = json!({"model": "gpt-4o"});
        assert_eq!(
            model_key("/v1/chat/completions", &body).as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(
            model_key(
                "/openai/deployments/fault:status=429%3Btimes=1/chat/completions",
                &body
            )
            .as_deref(),
            Some("fault:status=429;times=1")
        );
        assert_eq!(model_key("/v1/models", &Value::Null), None);
    }

    #[test]
    fn percent_decoding_leaves_bad_escapes_alone() {
        assert_eq!(percent_decode("a%20b%3d%zz%4"), "a b=%zz%4");
        assert_eq!(percent_decode("%+1"), "%+1");
    }
}
