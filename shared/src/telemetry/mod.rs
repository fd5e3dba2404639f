//! Logs (JSON lines through `tracing`), metrics as Prometheus counters (served at `/metrics`),
//! and on Lambda the same facts as CloudWatch Embedded Metric Format lines on stdout: CloudWatch
//! turns them into metrics with no API call on the request path.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::StoreError;

#[cfg(feature = "otlp")]
pub mod otlp;

/// The target of the spans that make a request's trace (auth, limits, cache, retrieval, each
/// provider attempt): exported over OTLP when gateway-local has an endpoint, and never in the
/// log lines (the current span of a log line stays the request's, with its `request_id`).
/// Disabled, such a span costs one check of its callsite.
pub const SPAN_TARGET: &str = "gateway::trace";

/// Installs the JSON log subscriber; safe to call more than once (later calls do nothing).
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::registry().with(log_layer()).try_init();
}

/// JSON log lines on stderr, filtered by `log_filter`.
fn log_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use tracing_subscriber::Layer;
    tracing_subscriber::fmt::layer()
        .json()
        .with_writer(std::io::stderr)
        // The request's span (its `request_id`) on every line written while it is handled.
        .with_current_span(true)
        .with_span_list(false)
        .with_filter(log_filter())
}

/// What the log lines show: RUST_LOG (default `info`), less the capped targets' bodies and the
/// trace spans.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let mut filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The AWS SDK, hyper and reqwest log request and response bodies (prompts, answers, keys)
    // at debug and trace: RUST_LOG=trace for the gateway must not turn that on. A directive
    // naming one of them explicitly is the operator's choice and is kept.
    for target in CAPPED_LOG_TARGETS {
        if !spec.contains(target)
            && let Ok(directive) = format!("{target}=info").parse()
        {
            filter = filter.add_directive(directive);
        }
    }
    if let Ok(directive) = format!("{SPAN_TARGET}=off").parse() {
        filter = filter.add_directive(directive);
    }
    filter
}

/// Targets held at `info` whatever RUST_LOG asks for the gateway (prefixes: `aws_sdk_` covers
/// every SDK crate).
const CAPPED_LOG_TARGETS: [&str; 8] = [
    "aws_smithy",
    "aws_sdk_",
    "aws_config",
    "aws_runtime",
    "hyper",
    "reqwest",
    "h2",
    "rustls",
];

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    /// Answered requests by HTTP status.
    pub requests: Family<Labels, Counter>,
    /// Whole responses (streams: until their end), seconds.
    pub request_seconds: Histogram,
    /// Streams: until the first token left for the client, seconds.
    pub time_to_first_token_seconds: Histogram,
    /// Time spent in the gateway itself (latency minus the provider's part), seconds.
    pub overhead_seconds: Histogram,
    /// Provider calls by deployment and outcome (`ok` or the error class).
    pub attempts: Family<Labels, Counter>,
    /// Retries of a deployment, by reason.
    pub retries: Family<Labels, Counter>,
    /// Moves to a fallback model, by reason.
    pub fallbacks: Family<Labels, Counter>,
    /// Circuit breaker state changes, by deployment and new state.
    pub breaker_transitions: Family<Labels, Counter>,
    /// Cache lookups by result (HIT, MISS, BYPASS) and cache store failures.
    pub cache: Family<Labels, Counter>,
    pub tokens: Family<Labels, Counter>,
    pub cost_usd: Family<Labels, Counter<f64, AtomicU64>>,
    /// Streams ended with an error after they started, by reason.
    pub broken_streams: Family<Labels, Counter>,
    /// Batch items by outcome: `completed`, `failed`, `deferred` (rate-limited, re-sent
    /// later), `retried` (left for redelivery).
    pub batch_items: Family<Labels, Counter>,
    /// Retrieved chunks kept out of a RAG prompt, by the guard rule they tripped.
    pub rag_dropped_chunks: Family<Labels, Counter>,
    /// Prompt-injection findings in requests, by source (user, tool, retrieved), rule and action.
    pub guard_findings: Family<Labels, Counter>,
    /// Personal data found in chat requests, by kind and the policy's action.
    pub pii_findings: Family<Labels, Counter>,
    /// Answers checked against a `response_format` JSON schema, by model and result: `valid`,
    /// `retried_valid` (valid when asked again), `invalid`.
    pub output_validation: Family<Labels, Counter>,
}

/// From 5 ms (a cache hit) to two minutes (a long stream).
const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// The gateway's own part is sub-millisecond when healthy; the top buckets catch store stalls.
const OVERHEAD_BUCKETS_SECONDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("gateway");
    let metrics = Metrics {
        requests: Family::default(),
        request_seconds: Histogram::new(LATENCY_BUCKETS_SECONDS),
        time_to_first_token_seconds: Histogram::new(LATENCY_BUCKETS_SECONDS),
        overhead_seconds: Histogram::new(OVERHEAD_BUCKETS_SECONDS),
        attempts: Family::default(),
        retries: Family::default(),
        fallbacks: Family::default(),
        breaker_transitions: Family::default(),
        cache: Family::default(),
        tokens: Family::default(),
        cost_usd: Family::default(),
        broken_streams: Family::default(),
        batch_items: Family::default(),
        rag_dropped_chunks: Family::default(),
        guard_findings: Family::default(),
        pii_findings: Family::default(),
        output_validation: Family::default(),
        registry: Registry::default(),
    };
    registry.register(
        "requests",
        "Answered requests by HTTP status",
        metrics.requests.clone(),
    );
    registry.register(
        "request_duration_seconds",
        "Whole responses, streams until their end",
        metrics.request_seconds.clone(),
    );
    registry.register(
        "time_to_first_token_seconds",
        "Streams until their first token",
        metrics.time_to_first_token_seconds.clone(),
    );
    registry.register(
        "overhead_seconds",
        "Time spent in the gateway itself: latency minus the provider's part",
        metrics.overhead_seconds.clone(),
    );
    registry.register(
        "provider_attempts",
        "Provider calls by outcome",
        metrics.attempts.clone(),
    );
    registry.register("retries", "Retries by reason", metrics.retries.clone());
    registry.register(
        "fallbacks",
        "Fallbacks by reason",
        metrics.fallbacks.clone(),
    );
    registry.register(
        "breaker_transitions",
        "Circuit breaker state changes",
        metrics.breaker_transitions.clone(),
    );
    registry.register("cache", "Cache lookups and failures", metrics.cache.clone());
    registry.register(
        "tokens",
        "Tokens by model and direction",
        metrics.tokens.clone(),
    );
    registry.register(
        "cost_usd",
        "Provider cost in USD by model",
        metrics.cost_usd.clone(),
    );
    registry.register(
        "broken_streams",
        "Streams cut after they started",
        metrics.broken_streams.clone(),
    );
    registry.register(
        "batch_items",
        "Batch items by outcome",
        metrics.batch_items.clone(),
    );
    registry.register(
        "rag_dropped_chunks",
        "Retrieved chunks dropped from RAG prompts, by guard rule",
        metrics.rag_dropped_chunks.clone(),
    );
    registry.register(
        "guard_findings",
        "Prompt-injection findings, by source, rule and action",
        metrics.guard_findings.clone(),
    );
    registry.register(
        "pii_findings",
        "Personal data found in chat requests, by kind and action",
        metrics.pii_findings.clone(),
    );
    registry.register(
        "output_validation",
        "Answers checked against a response_format JSON schema, by result",
        metrics.output_validation.clone(),
    );
    Metrics {
        registry,
        ..metrics
    }
});

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    pub fn count(family: &Family<Labels, Counter>, labels: &[(&'static str, &str)]) {
        let labels: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        family.get_or_create(&labels).inc();
    }

    /// One answered request's latency facts (a stream's when it ends).
    pub fn record_request(&self, facts: &RequestFacts) {
        Self::count(&self.requests, &[("status", &facts.status.to_string())]);
        self.request_seconds.observe(facts.latency_ms / 1000.0);
        if let Some(ttft) = facts.time_to_first_token_ms {
            self.time_to_first_token_seconds.observe(ttft / 1000.0);
        }
        if let Some(overhead) = facts.overhead_ms {
            self.overhead_seconds.observe(overhead / 1000.0);
        }
    }

    /// Tokens and cost billed to `model`: into the request's own line when `trace` is the
    /// request being answered, else (batch items) a line of their own.
    pub fn record_usage(
        &self,
        trace: Option<&RequestTrace>,
        model: &str,
        input: u64,
        output: u64,
        cost_usd: f64,
    ) {
        match trace {
            Some(trace) => trace.update(|t| {
                t.input_tokens += input;
                t.output_tokens += output;
                t.cost_usd += cost_usd;
            }),
            None => {
                if let Some(emf) = EMF.as_ref() {
                    Emf::write(&emf.usage_line(model, input, output, cost_usd));
                }
            }
        }
        let model_label = || vec![("model", model.to_owned())];
        let mut input_labels = model_label();
        input_labels.push(("direction", "input".to_owned()));
        self.tokens.get_or_create(&input_labels).inc_by(input);
        let mut output_labels = model_label();
        output_labels.push(("direction", "output".to_owned()));
        self.tokens.get_or_create(&output_labels).inc_by(output);
        self.cost_usd.get_or_create(&model_label()).inc_by(cost_usd);
    }

    /// One provider call of `deployment` (`provider/model`) and its outcome (`ok` or the error
    /// class).
    pub fn record_attempt(&self, provider: &str, deployment: &str, outcome: &str) {
        Metrics::count(
            &self.attempts,
            &[("provider", provider), ("outcome", outcome)],
        );
        let failed = outcome != "ok";
        match RequestTrace::current() {
            Some(trace) => trace.update(|t| {
                t.attempts += 1;
                t.failed_attempts += u32::from(failed);
                t.deployment = Some(deployment.to_owned());
            }),
            None => emit_event(&[("ProviderAttempts", 1)], failed, deployment),
        }
    }

    /// A retry (of the same deployment or another deployment of the model), by reason.
    pub fn record_retry(&self, reason: &str) {
        Metrics::count(&self.retries, &[("reason", reason)]);
        match RequestTrace::current() {
            Some(trace) => trace.update(|t| t.retries += 1),
            None => emit_event(&[("Retries", 1)], false, ""),
        }
    }

    /// A move from model `from` to its fallback `to`, by reason.
    pub fn record_fallback(&self, from: &str, to: &str, reason: &str) {
        Metrics::count(
            &self.fallbacks,
            &[("from", from), ("to", to), ("reason", reason)],
        );
        match RequestTrace::current() {
            Some(trace) => trace.update(|t| t.fallbacks += 1),
            None => emit_event(&[("Fallbacks", 1)], false, ""),
        }
    }

    /// A circuit breaker state change: rare, so always a line of its own.
    pub fn record_breaker_transition(&self, deployment: &str, state: &str) {
        Metrics::count(
            &self.breaker_transitions,
            &[("deployment", deployment), ("state", state)],
        );
        if let Some(emf) = EMF.as_ref() {
            Emf::write(&emf.breaker_line(deployment, state));
        }
    }

    /// A stream that broke after its first token: the request answered 200 but failed.
    pub fn record_broken_stream(&self, trace: Option<&RequestTrace>, reason: &str) {
        Metrics::count(&self.broken_streams, &[("reason", reason)]);
        match trace {
            Some(trace) => trace.update(|t| t.broken_stream = Some(reason.to_owned())),
            None => emit_event(&[("BrokenStreams", 1)], false, ""),
        }
    }
}

/// An event outside any request (a batch item's provider call): a line of its own.
fn emit_event(counts: &[(&str, u32)], failed: bool, deployment: &str) {
    if let Some(emf) = EMF.as_ref() {
        Emf::write(&emf.event_line(counts, failed, deployment));
    }
}

tokio::task_local! {
    static CURRENT_REQUEST: Arc<RequestTrace>;
}

/// What one request did while it was handled (who asked, provider calls, retries, fallbacks,
/// usage, a broken stream), gathered for its one EMF and log line.
#[derive(Debug, Default)]
pub struct RequestTrace {
    fields: Mutex<TraceFields>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct TraceFields {
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    /// The deployment (`provider/model`) of the last provider call.
    pub deployment: Option<String>,
    pub attempts: u32,
    pub failed_attempts: u32,
    pub retries: u32,
    pub fallbacks: u32,
    /// Why a stream broke after its first token.
    pub broken_stream: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

impl RequestTrace {
    /// The trace of the request whose handler is running, if any.
    pub fn current() -> Option<Arc<RequestTrace>> {
        CURRENT_REQUEST.try_with(Arc::clone).ok()
    }

    /// Runs `work` (a request's handler) with `trace` as the current trace.
    pub async fn scope<F: Future>(trace: Arc<RequestTrace>, work: F) -> F::Output {
        CURRENT_REQUEST.scope(trace, work).await
    }

    pub fn update(&self, change: impl FnOnce(&mut TraceFields)) {
        if let Ok(mut fields) = self.fields.lock() {
            change(&mut fields);
        }
    }

    pub fn snapshot(&self) -> TraceFields {
        self.fields
            .lock()
            .map(|fields| fields.clone())
            .unwrap_or_default()
    }
}

/// CloudWatch Embedded Metric Format, on when the process runs on Lambda.
pub struct Emf {
    namespace: String,
    function: String,
}

/// Written when `AWS_LAMBDA_FUNCTION_NAME` is set; namespace from `GATEWAY_METRICS_NAMESPACE`.
pub static EMF: LazyLock<Option<Emf>> = LazyLock::new(|| {
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok()?;
    let namespace = std::env::var("GATEWAY_METRICS_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "AiGateway".to_owned());
    Some(Emf {
        namespace,
        function,
    })
});

/// One request's facts, as the dashboard and alarms of `infra/template.yaml` read them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RequestFacts {
    pub model: Option<String>,
    pub status: u16,
    /// Whole response (a stream: until its end), milliseconds.
    pub latency_ms: f64,
    /// Streams: until the first token reached the client.
    pub time_to_first_token_ms: Option<f64>,
    /// Time spent in the gateway itself: latency minus the provider's part.
    pub overhead_ms: Option<f64>,
    /// `HIT`, `MISS` or `BYPASS`.
    pub cache: Option<String>,
    pub request_id: Option<String>,
    pub trace: TraceFields,
}

impl RequestFacts {
    /// Whose fault a failed request is: `client` (a 4xx but 429), `provider` (the provider
    /// failed: 502, 504, or a stream broken after its first token), `gateway` (any other 5xx).
    pub fn error_type(&self) -> Option<&'static str> {
        if self.trace.broken_stream.is_some() {
            return Some("provider");
        }
        match self.status {
            429 => None,
            400..=499 => Some("client"),
            502 | 504 => Some("provider"),
            500..=599 => Some("gateway"),
            _ => None,
        }
    }
}

/// The request line's metrics that are also counted by model (what the dashboard's per-model
/// widgets read); the others are by function only.
const BY_MODEL: [&str; 6] = [
    "Requests",
    "Latency",
    "TimeToFirstToken",
    "InputTokens",
    "OutputTokens",
    "CostUsd",
];

/// Milliseconds to the microsecond: a clock reading's last digits are noise, and each one is a
/// byte of every request's log line.
fn to_microseconds(milliseconds: f64) -> serde_json::Value {
    ((milliseconds * 1000.0).round() / 1000.0).into()
}

impl Emf {
    fn line(
        &self,
        directives: Vec<serde_json::Value>,
        mut fields: serde_json::Map<String, serde_json::Value>,
    ) -> String {
        let timestamp = crate::clock::now_millis();
        fields.insert(
            "_aws".to_owned(),
            serde_json::json!({"Timestamp": timestamp, "CloudWatchMetrics": directives}),
        );
        fields.insert("FunctionName".to_owned(), self.function.clone().into());
        serde_json::Value::Object(fields).to_string()
    }

    fn directive(
        &self,
        dimensions: serde_json::Value,
        metrics: &[(&str, &str)],
    ) -> serde_json::Value {
        let metrics: Vec<_> = metrics
            .iter()
            .map(|(name, unit)| serde_json::json!({"Name": name, "Unit": unit}))
            .collect();
        serde_json::json!({"Namespace": self.namespace, "Dimensions": dimensions, "Metrics": metrics})
    }

    /// The one line of an answered request: its metrics, and as plain properties what an
    /// operator needs to find it (request id, key, tenant, deployment, status, error type).
    /// Never a prompt, an answer or a key.
    pub fn request_line(&self, facts: &RequestFacts) -> String {
        let trace = &facts.trace;
        let mut fields = serde_json::Map::new();
        let mut metrics = vec![("Latency", "Milliseconds"), ("Requests", "Count")];
        fields.insert("Latency".into(), to_microseconds(facts.latency_ms));
        fields.insert("Requests".into(), 1.into());
        fields.insert("Status".into(), facts.status.into());
        let properties = [
            ("RequestId", &facts.request_id),
            ("KeyId", &trace.key_id),
            ("Tenant", &trace.tenant),
            ("Deployment", &trace.deployment),
            ("BrokenStream", &trace.broken_stream),
        ];
        for (name, value) in properties {
            if let Some(value) = value {
                fields.insert(name.into(), value.clone().into());
            }
        }
        if let Some(ttft) = facts.time_to_first_token_ms {
            metrics.push(("TimeToFirstToken", "Milliseconds"));
            fields.insert("TimeToFirstToken".into(), to_microseconds(ttft));
        }
        if let Some(overhead) = facts.overhead_ms {
            metrics.push(("GatewayOverhead", "Milliseconds"));
            fields.insert("GatewayOverhead".into(), to_microseconds(overhead));
        }
        let cache_metric = match facts.cache.as_deref() {
            Some("HIT") => Some("CacheHit"),
            Some("MISS") => Some("CacheMiss"),
            Some("BYPASS") => Some("CacheBypass"),
            _ => None,
        };
        let rate_limited = facts.status == 429;
        let broken = trace.broken_stream.is_some();
        let counts = [
            (cache_metric, 1),
            (rate_limited.then_some("RateLimited"), 1),
            (broken.then_some("BrokenStreams"), 1),
            ((trace.retries > 0).then_some("Retries"), trace.retries),
            (
                (trace.fallbacks > 0).then_some("Fallbacks"),
                trace.fallbacks,
            ),
        ];
        for (name, count) in counts {
            if let Some(name) = name {
                metrics.push((name, "Count"));
                fields.insert(name.into(), count.into());
            }
        }
        if trace.input_tokens > 0 || trace.output_tokens > 0 || trace.cost_usd > 0.0 {
            metrics.extend([
                ("InputTokens", "Count"),
                ("OutputTokens", "Count"),
                ("CostUsd", "None"),
            ]);
            fields.insert("InputTokens".into(), trace.input_tokens.into());
            fields.insert("OutputTokens".into(), trace.output_tokens.into());
            fields.insert("CostUsd".into(), trace.cost_usd.into());
        }
        let mut directives = Vec::new();
        if let Some(model) = &facts.model {
            fields.insert("Model".into(), model.clone().into());
            // Every metric and dimension set is a custom metric CloudWatch bills monthly: only
            // the per-model views (traffic, latency, tokens, cost) get the Model dimension.
            let (by_model, by_function): (Vec<_>, Vec<_>) = metrics
                .into_iter()
                .partition(|(name, _)| BY_MODEL.contains(name));
            directives
                .push(self.directive(serde_json::json!([["FunctionName"], ["Model"]]), &by_model));
            if !by_function.is_empty() {
                directives
                    .push(self.directive(serde_json::json!([["FunctionName"]]), &by_function));
            }
        } else {
            directives.push(self.directive(serde_json::json!([["FunctionName"]]), &metrics));
        }
        if trace.attempts > 0 {
            fields.insert("ProviderAttempts".into(), trace.attempts.into());
            fields.insert("ProviderFailures".into(), trace.failed_attempts.into());
            directives.push(self.attempts_directive(trace.deployment.is_some()));
        }
        if let Some(error_type) = facts.error_type() {
            fields.insert("ErrorType".into(), error_type.into());
            fields.insert("Errors".into(), 1.into());
            directives.push(self.directive(
                serde_json::json!([
                    ["FunctionName"],
                    ["FunctionName", "ErrorType"],
                    ["ErrorType"]
                ]),
                &[("Errors", "Count")],
            ));
            // The gateway's and the providers' failures, not the client's: what the error
            // rate alarm watches.
            if error_type != "client" {
                fields.insert("Failures".into(), 1.into());
                directives.push(self.directive(
                    serde_json::json!([["FunctionName"]]),
                    &[("Failures", "Count")],
                ));
            }
        }
        self.line(directives, fields)
    }

    /// Provider calls and failed calls, by function and by deployment.
    fn attempts_directive(&self, by_deployment: bool) -> serde_json::Value {
        let dimensions = if by_deployment {
            serde_json::json!([["FunctionName"], ["Deployment"]])
        } else {
            serde_json::json!([["FunctionName"]])
        };
        self.directive(
            dimensions,
            &[("ProviderAttempts", "Count"), ("ProviderFailures", "Count")],
        )
    }

    /// Counts of something that happened outside a request (a batch item's provider call).
    pub fn event_line(&self, counts: &[(&str, u32)], failed: bool, deployment: &str) -> String {
        let mut fields = serde_json::Map::new();
        let mut directives = Vec::new();
        let mut metrics = Vec::new();
        for (name, count) in counts {
            if *name == "ProviderAttempts" {
                fields.insert("ProviderAttempts".into(), (*count).into());
                fields.insert("ProviderFailures".into(), u32::from(failed).into());
                fields.insert("Deployment".into(), deployment.into());
                directives.push(self.attempts_directive(true));
            } else {
                fields.insert((*name).into(), (*count).into());
                metrics.push((*name, "Count"));
            }
        }
        if !metrics.is_empty() {
            directives.push(self.directive(serde_json::json!([["FunctionName"]]), &metrics));
        }
        self.line(directives, fields)
    }

    /// A circuit breaker's state change, by function and by new state (`open`, `half_open`,
    /// `closed`).
    pub fn breaker_line(&self, deployment: &str, state: &str) -> String {
        let mut fields = serde_json::Map::new();
        fields.insert("BreakerTransitions".into(), 1.into());
        fields.insert("Deployment".into(), deployment.into());
        fields.insert("BreakerState".into(), state.into());
        let directive = self.directive(
            serde_json::json!([["FunctionName"], ["FunctionName", "BreakerState"]]),
            &[("BreakerTransitions", "Count")],
        );
        self.line(vec![directive], fields)
    }

    /// An authorizer invocation that failed for a reason of ours (the key store unreachable,
    /// a malformed event): API Gateway answers 500. Rejected keys (401) are not counted.
    pub fn authorizer_failure_line(&self) -> String {
        let mut fields = serde_json::Map::new();
        fields.insert("AuthorizerFailures".into(), 1.into());
        let directive = self.directive(
            serde_json::json!([["FunctionName"]]),
            &[("AuthorizerFailures", "Count")],
        );
        self.line(vec![directive], fields)
    }

    /// The EMF line for the usage and cost billed to a model.
    pub fn usage_line(&self, model: &str, input: u64, output: u64, cost_usd: f64) -> String {
        let mut fields = serde_json::Map::new();
        fields.insert("Model".into(), model.into());
        fields.insert("InputTokens".into(), input.into());
        fields.insert("OutputTokens".into(), output.into());
        fields.insert("CostUsd".into(), cost_usd.into());
        let directive = self.directive(
            serde_json::json!([["FunctionName"], ["Model"]]),
            &[
                ("InputTokens", "Count"),
                ("OutputTokens", "Count"),
                ("CostUsd", "None"),
            ],
        );
        self.line(vec![directive], fields)
    }

    /// The EMF line for one answer checked against a `response_format` schema:
    /// `OutputValidationValid`, `...RetriedValid` or `...Invalid`, by function and by model.
    pub fn output_validation_line(&self, model: &str, result: &str) -> String {
        let name = match result {
            "valid" => "OutputValidationValid",
            "retried_valid" => "OutputValidationRetriedValid",
            _ => "OutputValidationInvalid",
        };
        let mut fields = serde_json::Map::new();
        fields.insert("Model".into(), model.into());
        fields.insert(name.into(), 1.into());
        let directive = self.directive(
            serde_json::json!([["FunctionName"], ["Model"]]),
            &[(name, "Count")],
        );
        self.line(vec![directive], fields)
    }

    /// The EMF line for one batch item: its outcome (`BatchItemsCompleted`, `...Failed`,
    /// `...Deferred`, `...Retried`) and how long its message waited in the queue.
    pub fn batch_item_line(&self, outcome: &str, queue_lag_ms: Option<u64>) -> String {
        let name = match outcome {
            "completed" => "BatchItemsCompleted",
            "failed" => "BatchItemsFailed",
            "deferred" => "BatchItemsDeferred",
            _ => "BatchItemsRetried",
        };
        let mut fields = serde_json::Map::new();
        fields.insert(name.into(), 1.into());
        let mut metrics = vec![(name, "Count")];
        if let Some(lag) = queue_lag_ms {
            fields.insert("BatchQueueLag".into(), lag.into());
            metrics.push(("BatchQueueLag", "Milliseconds"));
        }
        let directive = self.directive(serde_json::json!([["FunctionName"]]), &metrics);
        self.line(vec![directive], fields)
    }

    pub fn write(line: &str) {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
    }
}

/// The cache never fails a request: a store error becomes a miss, a log line and a count.
pub fn cache_store_failed(error: &StoreError) {
    tracing::warn!(%error, "response cache unavailable; bypassing");
    Metrics::count(&METRICS.cache, &[("result", "ERROR")]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_item_lines_count_the_outcome_and_the_queue_lag() {
        let emf = Emf {
            namespace: "AiGateway".into(),
            function: "gw-batch".into(),
        };
        let line: serde_json::Value =
            serde_json::from_str(&emf.batch_item_line("deferred", Some(1500))).unwrap();
        assert_eq!(line["BatchItemsDeferred"], 1);
        assert_eq!(line["BatchQueueLag"], 1500);
        let metrics: Vec<&str> = line["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert_eq!(metrics, ["BatchItemsDeferred", "BatchQueueLag"]);
        let failed: serde_json::Value =
            serde_json::from_str(&emf.batch_item_line("failed", None)).unwrap();
        assert_eq!(failed["BatchItemsFailed"], 1);
        assert!(failed.get("BatchQueueLag").is_none());
    }

    #[test]
    fn output_validation_lines_count_the_result_by_model() {
        let emf = Emf {
            namespace: "AiGateway".into(),
            function: "gw-chat".into(),
        };
        let line: serde_json::Value =
            serde_json::from_str(&emf.output_validation_line("gpt", "retried_valid")).unwrap();
        assert_eq!(line["OutputValidationRetriedValid"], 1);
        assert_eq!(line["Model"], "gpt");
        assert_eq!(
            line["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
            "OutputValidationRetriedValid"
        );
    }

    #[test]
    fn request_line_times_are_written_to_the_microsecond() {
        let emf = Emf {
            namespace: "AiGateway".into(),
            function: "gw-chat".into(),
        };
        let text = emf.request_line(&RequestFacts {
            model: Some("gpt".into()),
            status: 200,
            latency_ms: 25.769054999999998,
            time_to_first_token_ms: Some(3.0004999),
            overhead_ms: Some(0.123456789),
            ..RequestFacts::default()
        });
        let line: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(line["Latency"], 25.769);
        assert_eq!(line["TimeToFirstToken"], 3.0);
        assert_eq!(line["GatewayOverhead"], 0.123);
        assert!(!text.contains("25.76905"), "{text}");
    }

    #[test]
    fn emf_lines_carry_the_metrics_the_dashboard_reads() {
        let emf = Emf {
            namespace: "AiGateway".into(),
            function: "gw-chat".into(),
        };
        let line: serde_json::Value = serde_json::from_str(&emf.request_line(&RequestFacts {
            model: Some("gpt".into()),
            status: 502,
            latency_ms: 12.5,
            time_to_first_token_ms: Some(3.0),
            overhead_ms: Some(0.2),
            cache: Some("MISS".into()),
            ..RequestFacts::default()
        }))
        .unwrap();
        assert_eq!(line["FunctionName"], "gw-chat");
        assert_eq!(line["Latency"], 12.5);
        assert_eq!(line["CacheMiss"], 1);
        assert_eq!(line["ErrorType"], "provider");
        let directives = line["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives[0]["Namespace"], "AiGateway");
        assert_eq!(
            directives[0]["Dimensions"],
            serde_json::json!([["FunctionName"], ["Model"]])
        );
        assert_eq!(
            metric_names(&directives[0]),
            ["Latency", "Requests", "TimeToFirstToken"]
        );
        assert_eq!(
            directives[1]["Dimensions"],
            serde_json::json!([["FunctionName"]])
        );
        assert_eq!(
            metric_names(&directives[1]),
            ["GatewayOverhead", "CacheMiss"]
        );
        assert_eq!(directives[2]["Metrics"][0]["Name"], "Errors");

        let usage: serde_json::Value =
            serde_json::from_str(&emf.usage_line("gpt", 10, 5, 0.25)).unwrap();
        assert_eq!(usage["OutputTokens"], 5);
        assert_eq!(usage["CostUsd"], 0.25);
    }

    fn chat_emf() -> Emf {
        Emf {
            namespace: "AiGateway".into(),
            function: "gw-chat".into(),
        }
    }

    fn metric_names(directive: &serde_json::Value) -> Vec<&str> {
        directive["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect()
    }

    /// The directives of a line that count `metric`.
    fn directives_of<'a>(line: &'a serde_json::Value, metric: &str) -> Vec<&'a serde_json::Value> {
        line["_aws"]["CloudWatchMetrics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| metric_names(d).contains(&metric))
            .collect()
    }

    #[test]
    fn a_stream_broken_after_its_first_token_is_a_provider_failure() {
        let facts = RequestFacts {
            model: Some("gpt".into()),
            status: 200,
            trace: TraceFields {
                broken_stream: Some("incomplete".into()),
                ..TraceFields::default()
            },
            ..RequestFacts::default()
        };
        let line: serde_json::Value =
            serde_json::from_str(&chat_emf().request_line(&facts)).unwrap();
        assert_eq!(line["ErrorType"], "provider");
        assert_eq!(line["Failures"], 1);
        assert_eq!(line["BrokenStreams"], 1);
        assert_eq!(line["BrokenStream"], "incomplete");
        assert_eq!(
            directives_of(&line, "Failures")[0]["Dimensions"],
            serde_json::json!([["FunctionName"]])
        );
    }

    #[test]
    fn client_errors_and_rate_limits_are_not_failures() {
        for status in [400, 401, 404, 429] {
            let facts = RequestFacts {
                status,
                ..RequestFacts::default()
            };
            let line: serde_json::Value =
                serde_json::from_str(&chat_emf().request_line(&facts)).unwrap();
            assert!(line.get("Failures").is_none(), "{status}: {line}");
            assert!(directives_of(&line, "Failures").is_empty(), "{status}");
        }
        for (status, error_type) in [(500, "gateway"), (503, "gateway"), (502, "provider")] {
            let facts = RequestFacts {
                status,
                ..RequestFacts::default()
            };
            let line: serde_json::Value =
                serde_json::from_str(&chat_emf().request_line(&facts)).unwrap();
            assert_eq!(line["ErrorType"], error_type);
            assert_eq!(line["Failures"], 1, "{status}");
        }
    }

    #[test]
    fn the_request_line_carries_provider_calls_usage_and_who_asked() {
        let facts = RequestFacts {
            model: Some("gpt".into()),
            status: 200,
            request_id: Some("req_1".into()),
            trace: TraceFields {
                key_id: Some("key_1".into()),
                tenant: Some("acme".into()),
                deployment: Some("openai/gpt-4o".into()),
                attempts: 3,
                failed_attempts: 2,
                retries: 1,
                fallbacks: 1,
                input_tokens: 10,
                output_tokens: 5,
                cost_usd: 0.25,
                ..TraceFields::default()
            },
            ..RequestFacts::default()
        };
        let line: serde_json::Value =
            serde_json::from_str(&chat_emf().request_line(&facts)).unwrap();
        for (name, value) in [
            ("RequestId", serde_json::json!("req_1")),
            ("KeyId", serde_json::json!("key_1")),
            ("Tenant", serde_json::json!("acme")),
            ("Deployment", serde_json::json!("openai/gpt-4o")),
            ("ProviderAttempts", serde_json::json!(3)),
            ("ProviderFailures", serde_json::json!(2)),
            ("Retries", serde_json::json!(1)),
            ("Fallbacks", serde_json::json!(1)),
            ("OutputTokens", serde_json::json!(5)),
            ("CostUsd", serde_json::json!(0.25)),
            ("Status", serde_json::json!(200)),
        ] {
            assert_eq!(line[name], value, "{name}");
        }
        assert_eq!(
            directives_of(&line, "ProviderAttempts")[0]["Dimensions"],
            serde_json::json!([["FunctionName"], ["Deployment"]])
        );
        assert_eq!(
            directives_of(&line, "CostUsd")[0]["Dimensions"],
            serde_json::json!([["FunctionName"], ["Model"]])
        );
        assert!(line.get("Errors").is_none());
    }

    #[tokio::test]
    async fn provider_calls_in_a_request_count_into_its_trace() {
        let trace = Arc::new(RequestTrace::default());
        RequestTrace::scope(Arc::clone(&trace), async {
            METRICS.record_attempt("openai", "openai/gpt-4o", "server_error");
            METRICS.record_retry("server_error");
            METRICS.record_attempt("openai", "openai/gpt-4o-mini", "ok");
            METRICS.record_fallback("a", "b", "server_error");
            METRICS.record_usage(RequestTrace::current().as_deref(), "m", 3, 4, 0.5);
        })
        .await;
        let fields = trace.snapshot();
        assert_eq!((fields.attempts, fields.failed_attempts), (2, 1));
        assert_eq!((fields.retries, fields.fallbacks), (1, 1));
        assert_eq!(fields.deployment.as_deref(), Some("openai/gpt-4o-mini"));
        assert_eq!((fields.input_tokens, fields.output_tokens), (3, 4));
        assert!(RequestTrace::current().is_none());
    }

    #[test]
    fn events_outside_a_request_and_breaker_changes_have_lines_of_their_own() {
        let emf = chat_emf();
        let attempt: serde_json::Value =
            serde_json::from_str(&emf.event_line(&[("ProviderAttempts", 1)], true, "openai/gpt"))
                .unwrap();
        assert_eq!(attempt["ProviderFailures"], 1);
        assert_eq!(attempt["Deployment"], "openai/gpt");
        assert_eq!(directives_of(&attempt, "ProviderAttempts").len(), 1);
        let retry: serde_json::Value =
            serde_json::from_str(&emf.event_line(&[("Retries", 1)], false, "")).unwrap();
        assert_eq!(directives_of(&retry, "Retries").len(), 1);
        let breaker: serde_json::Value =
            serde_json::from_str(&emf.breaker_line("openai/gpt", "open")).unwrap();
        assert_eq!(breaker["BreakerState"], "open");
        assert_eq!(
            directives_of(&breaker, "BreakerTransitions")[0]["Dimensions"],
            serde_json::json!([["FunctionName"], ["FunctionName", "BreakerState"]])
        );
    }

    /// infra/alarms.py feeds this file to the alarms as the authorizer's failure: it must stay
    /// what the code writes (but the timestamp).
    #[test]
    fn the_alarm_tests_authorizer_line_is_the_one_the_code_writes() {
        let emf = Emf {
            namespace: "AiGateway".into(),
            function: "authorizer".into(),
        };
        let mut written: serde_json::Value =
            serde_json::from_str(&emf.authorizer_failure_line()).unwrap();
        written["_aws"]["Timestamp"] = 0.into();
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../../infra/emf/authorizer-failure.json"))
                .unwrap();
        assert_eq!(written, fixture);
    }

    #[test]
    fn counters_render_in_prometheus_text() {
        Metrics::count(&METRICS.retries, &[("reason", "rate_limited")]);
        METRICS.record_usage(None, "m", 3, 4, 0.5);
        let text = METRICS.render();
        assert!(
            text.contains("gateway_retries_total{reason=\"rate_limited\"}"),
            "{text}"
        );
        assert!(
            text.contains("gateway_tokens_total{model=\"m\",direction=\"output\"} 4"),
            "{text}"
        );
    }

    #[test]
    fn requests_render_as_a_status_counter_and_latency_histograms() {
        METRICS.record_request(&RequestFacts {
            status: 418,
            latency_ms: 40.0,
            time_to_first_token_ms: Some(20.0),
            overhead_ms: Some(0.3),
            ..RequestFacts::default()
        });
        let text = METRICS.render();
        assert!(
            text.contains("gateway_requests_total{status=\"418\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gateway_request_duration_seconds_bucket{le=\"0.05\"}"),
            "{text}"
        );
        assert!(
            text.contains("gateway_time_to_first_token_seconds_count"),
            "{text}"
        );
        assert!(
            text.contains("gateway_overhead_seconds_bucket{le=\"0.0005\"}"),
            "{text}"
        );
    }
}
