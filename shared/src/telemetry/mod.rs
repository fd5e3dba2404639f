//! Logs (JSON lines through `tracing`), metrics as Prometheus counters (served at `/metrics`),
//! and on Lambda the same facts as CloudWatch Embedded Metric Format lines on stdout: CloudWatch
//! turns them into metrics with no API call on the request path.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("gateway");
    let metrics = Metrics {
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

    pub fn record_usage(&self, model: &str, input: u64, output: u64, cost_usd: f64) {
        if let Some(emf) = EMF.as_ref() {
            Emf::write(&emf.usage_line(model, input, output, cost_usd));
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

    /// The EMF line for one answered request.
    pub fn request_line(&self, facts: &RequestFacts) -> String {
        let mut fields = serde_json::Map::new();
        let mut metrics = vec![("Latency", "Milliseconds"), ("Requests", "Count")];
        fields.insert("Latency".into(), facts.latency_ms.into());
        fields.insert("Requests".into(), 1.into());
        if let Some(ttft) = facts.time_to_first_token_ms {
            metrics.push(("TimeToFirstToken", "Milliseconds"));
            fields.insert("TimeToFirstToken".into(), ttft.into());
        }
        if let Some(overhead) = facts.overhead_ms {
            metrics.push(("GatewayOverhead", "Milliseconds"));
            fields.insert("GatewayOverhead".into(), overhead.into());
        }
        let cache_metric = match facts.cache.as_deref() {
            Some("HIT") => Some("CacheHit"),
            Some("MISS") => Some("CacheMiss"),
            Some("BYPASS") => Some("CacheBypass"),
            _ => None,
        };
        if let Some(name) = cache_metric {
            metrics.push((name, "Count"));
            fields.insert(name.into(), 1.into());
        }
        if facts.status == 429 {
            metrics.push(("RateLimited", "Count"));
            fields.insert("RateLimited".into(), 1.into());
        }
        let mut directives = Vec::new();
        if let Some(model) = &facts.model {
            fields.insert("Model".into(), model.clone().into());
            directives
                .push(self.directive(serde_json::json!([["FunctionName"], ["Model"]]), &metrics));
        } else {
            directives.push(self.directive(serde_json::json!([["FunctionName"]]), &metrics));
        }
        if facts.status >= 400 && facts.status != 429 {
            let error_type = match facts.status {
                400..=499 => "client",
                502 | 504 => "provider",
                _ => "gateway",
            };
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
        }
        self.line(directives, fields)
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
        let names: Vec<&str> = directives[0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"TimeToFirstToken") && names.contains(&"GatewayOverhead"));
        assert_eq!(directives[1]["Metrics"][0]["Name"], "Errors");

        let usage: serde_json::Value =
            serde_json::from_str(&emf.usage_line("gpt", 10, 5, 0.25)).unwrap();
        assert_eq!(usage["OutputTokens"], 5);
        assert_eq!(usage["CostUsd"], 0.25);
    }

    #[test]
    fn counters_render_in_prometheus_text() {
        Metrics::count(&METRICS.retries, &[("reason", "rate_limited")]);
        METRICS.record_usage("m", 3, 4, 0.5);
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
}
