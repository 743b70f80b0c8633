//! Logging: `tracing` events as JSON lines (default) or human-readable text.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured level.
/// `to_stderr` keeps stdout clean for commands whose output is data (admin commands).
pub fn init(format: LogFormat, level: &str, to_stderr: bool) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let result = match (format, to_stderr) {
        (LogFormat::Json, false) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Json, true) => builder.json().flatten_event(true).with_writer(std::io::stderr).try_init(),
        (LogFormat::Text, false) => builder.try_init(),
        (LogFormat::Text, true) => builder.with_writer(std::io::stderr).try_init(),
    };
    // A second init (tests that call `serve` twice in one process) keeps the first subscriber.
    let _ = result;
}

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder once per process and returns its handle for `/metrics`.
pub fn metrics() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .and_then(|builder| builder.install_recorder())
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .clone()
}
