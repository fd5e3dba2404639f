//! Logs: JSON lines through `tracing`, filtered by `RUST_LOG` (default `info`).

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

/// The cache never fails a request: a store error becomes a miss and a log line.
pub fn cache_store_failed(error: &StoreError) {
    tracing::warn!(%error, "response cache unavailable; bypassing");
}
