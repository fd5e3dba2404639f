//! OpenTelemetry traces over OTLP/HTTP (protobuf) for gateway-local, when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: the request
//! span is the parent of one span each for auth, limits, cache, retrieval and every provider
//! attempt (`SPAN_TARGET`). Spans hold names, ids and outcomes, never prompts or keys.
//!
//! Spans go through the SDK's batch processor: a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`,
//! default 2048) that drops spans when full rather than wait, exported from a thread of its own,
//! so a slow or absent collector never holds a request. `Traces::shutdown` flushes what is queued.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::SPAN_TARGET;

/// The service name when `OTEL_SERVICE_NAME` does not give one.
const SERVICE_NAME: &str = "ai-gateway";

/// The exporter of a running trace pipeline; flush it with `shutdown` before the process exits.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Exports what is still queued and stops the exporter (waits for at most the export
    /// timeout, `OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "could not flush the OpenTelemetry traces");
        }
    }
}

/// The OTLP endpoint the environment names, if any (the traces-only variable first).
fn configured_endpoint(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|name| env(name).filter(|value| !value.trim().is_empty()))
}

/// Installs the JSON log subscriber, and with an OTLP endpoint in the environment the trace
/// exporter beside it. Returns the exporter to flush at exit; `None` (logs only) without an
/// endpoint, or when the exporter cannot be built (said in a log line).
pub fn init_logging_and_traces(env: &dyn Fn(&str) -> Option<String>) -> Option<Traces> {
    if configured_endpoint(env).is_none() {
        super::init_logging();
        return None;
    }
    // The exporter sends with a reqwest (blocking) client, which needs the crypto provider.
    crate::tls::install_crypto_provider();
    // The exporter reads the endpoint, headers and timeout from the same standard variables.
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build();
    let exporter = match exporter {
        Ok(exporter) => exporter,
        Err(error) => {
            super::init_logging();
            tracing::error!(%error, "OpenTelemetry traces are off: the OTLP exporter could not be built");
            return None;
        }
    };
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none_or(|name| name.trim().is_empty()) {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("gateway");
    // The request span (from the request-id layer) and the trace spans; no events, whose
    // fields are the log lines' business.
    let traced = tracing_subscriber::filter::filter_fn(|metadata| {
        metadata.is_span()
            && (metadata.target() == SPAN_TARGET
                || (metadata.name() == "request" && metadata.target().starts_with("gateway::http")))
    });
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(traced);
    if tracing_subscriber::registry()
        .with(super::log_layer())
        .with(spans)
        .try_init()
        .is_err()
    {
        // A subscriber was there already: this one's spans would go nowhere.
        let _ = provider.shutdown();
        return None;
    }
    Some(Traces { provider })
}

#[cfg(test)]
mod tests {
    use super::configured_endpoint;

    #[test]
    fn the_traces_endpoint_wins_and_blank_means_none() {
        let both = |name: &str| Some(format!("http://{name}"));
        assert_eq!(
            configured_endpoint(&both).as_deref(),
            Some("http://OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        );
        let blank = |_: &str| Some("  ".to_owned());
        assert_eq!(configured_endpoint(&blank), None);
        assert_eq!(configured_endpoint(&|_: &str| None), None);
    }
}
