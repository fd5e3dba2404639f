//! `gateway-local replay` and `gateway-local trace-gen`: what the response cache saves on a
//! trace of chat requests. The trace runs twice through the real pipeline in this process (the
//! router, auth, limits, cache and the built-in mock model, over an embedded store in a
//! temporary folder), once with the cache on and once with it off, and the two bills are
//! compared.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use gateway::backends::Backends;
use gateway::config::Config;
use gateway::keys::NewKey;
use gateway::keys::edge::provision;
use gateway::state::Gateway;
use gateway::storage::embedded::EmbeddedStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::Failure;

/// The most a trace line or an answer may hold (the gateway's own body cap is lower).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// The most requests and distinct prompts `trace-gen` writes (the Zipf table is one f64 each).
const MAX_REQUESTS: u64 = 10_000_000;
const MAX_UNIQUE: u64 = 1_000_000;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The trace: one chat completion request (JSON) per line, optionally with a `tenant`
    /// field (each tenant gets a key of its own; the cache is per tenant). `stream` is ignored:
    /// a streamed answer is billed as the same answer in one piece.
    trace: PathBuf,
    /// Print the report as one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct TraceGenArgs {
    /// Requests in the trace
    #[arg(long, default_value_t = 1000)]
    requests: u64,
    /// Distinct prompts to draw from
    #[arg(long, default_value_t = 100)]
    unique: u64,
    /// Zipf exponent: prompt k (1-based) is drawn with weight 1/k^s (0 = uniform)
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Seed of the draw (the same seed writes the same trace)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The model every request names
    #[arg(long, default_value = "mock")]
    model: String,
}

/// What one pass over the trace cost.
#[derive(Default, serde::Serialize)]
struct Bill {
    requests: u64,
    failed: u64,
    cache_hits: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
}

impl Bill {
    fn hit_rate(&self) -> f64 {
        ratio(self.cache_hits, self.requests)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// One request of the trace: the tenant whose key sends it, and the body as sent.
struct TracedRequest {
    tenant: String,
    body: String,
}

fn read_trace(path: &Path) -> Result<Vec<TracedRequest>, Failure> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read trace {}: {e}", path.display()))?;
    let mut requests = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line_number = index + 1;
        let line = line.map_err(|e| format!("{}:{line_number}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > MAX_BODY_BYTES {
            return Err(format!("{}:{line_number}: line too long", path.display()).into());
        }
        let Ok(Value::Object(mut request)) = serde_json::from_str::<Value>(&line) else {
            return Err(format!(
                "{}:{line_number}: not a JSON object (one chat request per line)",
                path.display()
            )
            .into());
        };
        let tenant = match request.remove("tenant") {
            None | Some(Value::Null) => "replay".to_owned(),
            Some(Value::String(tenant)) => tenant,
            Some(_) => {
                return Err(
                    format!("{}:{line_number}: `tenant` is not a string", path.display()).into(),
                );
            }
        };
        request.remove("stream");
        request.remove("stream_options");
        request
            .entry("model")
            .or_insert_with(|| Value::from("mock"));
        requests.push(TracedRequest {
            tenant,
            body: Value::Object(request).to_string(),
        });
    }
    Ok(requests)
}

/// A folder in the temporary directory for one pass's store, removed when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends every request of the trace, in order, through a gateway of its own over a fresh
/// store; `use_cache` asks each request to use the response cache (`x-gateway-cache: use`) or
/// to bypass it.
async fn run_pass(
    config: &Config,
    trace: &[TracedRequest],
    use_cache: bool,
) -> Result<Bill, Failure> {
    let scratch = ScratchDir(std::env::temp_dir().join(format!(
        "gateway-replay-{}-{}",
        std::process::id(),
        if use_cache { "cached" } else { "uncached" }
    )));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let store = EmbeddedStore::open(&scratch.0)?;
    let backends = Backends::embedded(&store)?;
    let mut secrets = BTreeMap::new();
    for tenant in trace.iter().map(|r| r.tenant.as_str()) {
        if secrets.contains_key(tenant) {
            continue;
        }
        let new = NewKey {
            name: "replay".to_owned(),
            tenant: Some(tenant.to_owned()),
            ..NewKey::default()
        };
        let (secret, _) = provision(backends.keys.as_ref(), backends.edge.as_ref(), new).await?;
        secrets.insert(tenant.to_owned(), secret);
    }
    // No credentials: only the config's mock providers can answer, never a real one.
    let gateway = Arc::new(Gateway::new(config, backends, &|_| None)?);
    let router = gateway::http::router(Arc::clone(&gateway));
    let cache_header = if use_cache { "use" } else { "bypass" };
    let mut bill = Bill::default();
    for traced in trace {
        let secret = secrets.get(&traced.tenant).map_or("", String::as_str);
        let request = Request::post("/v1/chat/completions")
            .header(header::AUTHORIZATION, format!("Bearer {secret}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-gateway-cache", cache_header)
            .body(Body::from(traced.body.clone()))?;
        let response = router.clone().oneshot(request).await?;
        bill.requests += 1;
        let status = response.status();
        let header_text = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let hit = header_text("x-gateway-cache").is_some_and(|v| v.ends_with("HIT"));
        let cost = header_text("x-gateway-cost-usd")
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let body = axum::body::to_bytes(response.into_body(), MAX_BODY_BYTES).await?;
        // The cache stores an answer after it is sent: let it land before the next request, as
        // it would between two requests of a real trace.
        gateway.background.idle().await;
        if !status.is_success() {
            bill.failed += 1;
            continue;
        }
        if hit {
            bill.cache_hits += 1;
            continue;
        }
        let usage = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|answer| answer.get("usage").cloned())
            .unwrap_or(Value::Null);
        let count = |field: &str| usage.get(field).and_then(Value::as_u64).unwrap_or(0);
        bill.input_tokens += count("prompt_tokens");
        bill.output_tokens += count("completion_tokens");
        bill.cost_usd += cost;
    }
    drop(router);
    store.flush();
    Ok(bill)
}

pub async fn replay(args: ReplayArgs, config: Config) -> Result<(), Failure> {
    let trace = read_trace(&args.trace)?;
    let distinct = trace
        .iter()
        .map(|r| (r.tenant.as_str(), r.body.as_str()))
        .collect::<HashSet<_>>()
        .len() as u64;
    let cached = run_pass(&config, &trace, true).await?;
    let uncached = run_pass(&config, &trace, false).await?;
    let requests = trace.len() as u64;
    let saved_usd = uncached.cost_usd - cached.cost_usd;
    let saved_fraction = if uncached.cost_usd > 0.0 {
        saved_usd / uncached.cost_usd
    } else {
        0.0
    };
    let repeat_rate = ratio(requests.saturating_sub(distinct), requests);
    if args.json {
        let report = json!({
            "requests": requests,
            "distinct": distinct,
            "repeat_rate": repeat_rate,
            "with_cache": cached,
            "without_cache": uncached,
            "saved_usd": saved_usd,
            "saved_fraction": saved_fraction,
        });
        println!("{report}");
        return Ok(());
    }
    let mut out = String::new();
    out.push_str(&format!(
        "{}: {requests} requests, {distinct} distinct (repeat rate {:.1} %)\n",
        args.trace.display(),
        repeat_rate * 100.0
    ));
    out.push_str(&format!(
        "{:<10} {:>9} {:>7} {:>11} {:>9} {:>13} {:>14} {:>12}\n",
        "cache",
        "requests",
        "failed",
        "cache hits",
        "hit rate",
        "input tokens",
        "output tokens",
        "cost USD"
    ));
    for (name, bill) in [("on", &cached), ("off", &uncached)] {
        out.push_str(&format!(
            "{name:<10} {:>9} {:>7} {:>11} {:>8.1}% {:>13} {:>14} {:>12.6}\n",
            bill.requests,
            bill.failed,
            bill.cache_hits,
            bill.hit_rate() * 100.0,
            bill.input_tokens,
            bill.output_tokens,
            bill.cost_usd
        ));
    }
    out.push_str(&format!(
        "saved by the cache: ${saved_usd:.6} ({:.1} % of the cost without it)\n",
        saved_fraction * 100.0
    ));
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

/// The prompt of rank `k`: every prompt has the same number of words, so every request of the
/// trace costs the same and the saved cost tracks the repeat rate.
fn prompt(k: u64) -> String {
    format!("Question {k:07}: summarise the answer to question number {k:07} in one line.")
}

pub fn trace_gen(args: TraceGenArgs) -> Result<(), Failure> {
    if args.unique == 0 || args.unique > MAX_UNIQUE {
        return Err(format!("--unique must be between 1 and {MAX_UNIQUE}").into());
    }
    if args.requests > MAX_REQUESTS {
        return Err(format!("--requests must be at most {MAX_REQUESTS}").into());
    }
    if !args.zipf.is_finite() || args.zipf < 0.0 {
        return Err("--zipf must be a finite number, 0 or more".into());
    }
    // The cumulative Zipf weights of ranks 1..=unique: a uniform draw below the total picks
    // the first rank whose cumulative weight exceeds it.
    let mut cumulative = Vec::with_capacity(usize::try_from(args.unique)?);
    let mut total = 0.0;
    for k in 1..=args.unique {
        total += 1.0 / (k as f64).powf(args.zipf);
        cumulative.push(total);
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for _ in 0..args.requests {
        let draw = rng.random::<f64>() * total;
        let rank = cumulative.partition_point(|&c| c <= draw) as u64 + 1;
        let request = json!({
            "model": args.model,
            "messages": [{"role": "user", "content": prompt(rank.min(args.unique))}],
        });
        writeln!(out, "{request}")?;
    }
    out.flush()?;
    Ok(())
}
