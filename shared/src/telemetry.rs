//! Logs (JSON lines through `tracing`) and metrics (Prometheus counters, served at `/metrics`).

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::store::StoreError;

/// Installs the JSON log subscriber; safe to call more than once (later calls do nothing).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .try_init();
}

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

/// The cache never fails a request: a store error becomes a miss, a log line and a count.
pub fn cache_store_failed(error: &StoreError) {
    tracing::warn!(%error, "response cache unavailable; bypassing");
    Metrics::count(&METRICS.cache, &[("result", "ERROR")]);
}

#[cfg(test)]
mod tests {
    use super::*;

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
