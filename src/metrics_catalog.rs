//! Every metric paygate exports, in one list: name, type, help text, and the series shown before
//! anything has happened. [`announce`] runs once at startup, after the recorder is installed: every
//! metric gets its `# HELP` line, and the counters and histograms below are registered at zero, so
//! the first scrape already has them. An alert on `increase()` then sees the first event too (a
//! series that appears at 1 has no increase), and a dashboard shows 0 rather than "no data".
//!
//! Not made up at startup: gauges only a check can know (readiness, dependencies, the pool's
//! connections, refunds of unknown outcome), which their owners set within a second of starting,
//! and series whose labels are open-ended (gRPC method and code, pingback type and outcome), which
//! appear with their first request. `tests/e2e/observability.rs` scrapes a running paygate for every
//! metric the chart's alerts and dashboard name.

use crate::payments::flows::notification;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The series of a metric registered at zero at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtStart {
    /// None: its owner sets it (a gauge only a check can know, or open-ended labels).
    Nothing,
    /// The series without labels.
    Unlabelled,
    /// One series per value of one label (a closed set).
    Each(&'static str, &'static [&'static str]),
    /// Its owning module registers it (it knows the label values).
    ByOwner,
}

#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub at_start: AtStart,
}

const fn metric(name: &'static str, kind: Kind, help: &'static str, at_start: AtStart) -> Metric {
    Metric { name, kind, help, at_start }
}

use AtStart::{ByOwner, Each, Nothing, Unlabelled};
use Kind::{Counter, Gauge, Histogram};

pub const METRICS: &[Metric] = &[
    // Requests (api::metrics, ingest::pingback, payments::batch).
    metric("paygate_grpc_requests_total", Counter, "gRPC requests by method and status code.", Nothing),
    metric(
        "paygate_grpc_request_duration_seconds",
        Histogram,
        "gRPC request latency until the response headers (a stream: until it opens), by method.",
        Nothing,
    ),
    metric("paygate_pingbacks_total", Counter, "Provider callbacks by type and outcome.", Nothing),
    metric(
        "paygate_pingbacks_settled_in_one_statement_total",
        Counter,
        "Pingbacks settled by one statement from a copy of their payment.",
        Unlabelled,
    ),
    // The release (app): tells the replicas apart during an upgrade.
    metric(
        "paygate_build_info",
        Gauge,
        "1, labelled with the release's version and the schema (newest migration) it needs.",
        Nothing,
    ),
    // Readiness and dependencies (app, ingest::dependencies, ingest::health).
    metric("paygate_ready", Gauge, "1 while ready: not shutting down and the database answers.", Nothing),
    metric("paygate_dependency_up", Gauge, "1 while the dependency answered its last check.", Nothing),
    metric("paygate_db_pool_connections", Gauge, "Database pool connections by state (idle, in_use).", Nothing),
    metric("paygate_db_pool_max_connections", Gauge, "The database pool's size limit.", Nothing),
    metric("paygate_redis_errors_total", Counter, "Failed Redis calls by operation.", Each("op", REDIS_OPS)),
    // Caches (channels::cache, merchants::key_cache).
    metric(
        "paygate_channel_cache_requests_total",
        Counter,
        "Channel cache lookups by result.",
        Each("result", &["hit", "miss", "unknown", "redis_hit"]),
    ),
    metric("paygate_channel_cache_load_seconds", Histogram, "Channel loads from the database.", Unlabelled),
    metric(
        "paygate_channel_cache_invalidations_total",
        Counter,
        "Channel cache invalidations by source.",
        Each("source", &["write", "resync", "remote"]),
    ),
    metric(
        "paygate_channel_cache_rejected_total",
        Counter,
        "Channel copies in Redis rejected for a bad tag.",
        Unlabelled,
    ),
    metric("paygate_channel_cache_subscribed", Gauge, "1 while subscribed to channel invalidations in Redis.", Nothing),
    metric(
        "paygate_auth_cache_requests_total",
        Counter,
        "API key cache lookups by result.",
        Each("result", &["hit", "miss", "unknown"]),
    ),
    metric(
        "paygate_auth_cache_invalidations_total",
        Counter,
        "API key cache invalidations by source.",
        Each("source", &["write", "remote"]),
    ),
    metric(
        "paygate_rate_limited_total",
        Counter,
        "Requests refused by a rate limit, by limit.",
        Each("scope", &["api_key", "api_merchant", "auth_failures", "pingback_refusals"]),
    ),
    // Streams (events::hub).
    metric("paygate_open_streams", Gauge, "WatchPayments streams open now.", Unlabelled),
    metric("paygate_streams_lagged_total", Counter, "Streams ended for falling behind.", Unlabelled),
    metric("paygate_events_delivered_total", Counter, "Events handed to the stream hub.", Unlabelled),
    metric("paygate_event_log_reads_total", Counter, "Reads of the event log by the stream hub.", Unlabelled),
    metric(
        "paygate_event_delivery_lag_seconds",
        Histogram,
        "From an event's commit to the stream hub handing it on.",
        Unlabelled,
    ),
    // Webhooks, refunds, subscriptions (webhooks::dispatcher, payments::flows).
    metric(
        "paygate_webhook_deliveries_total",
        Counter,
        "Webhook delivery attempts by outcome.",
        Each("outcome", &["delivered", "failed", "gone"]),
    ),
    metric(
        "paygate_refund_tickets_total",
        Counter,
        "Refund tickets sent to the provider, by outcome.",
        Each("outcome", &["accepted", "refused", "unreachable", "unknown"]),
    ),
    metric("paygate_refunds_outcome_unknown", Gauge, "Refunds whose ticket's outcome is unknown, open now.", Nothing),
    metric(
        "paygate_subscription_renewals_after_end_total",
        Counter,
        "Renewals recorded after their subscription had ended, by the end they came after.",
        ByOwner,
    ),
    metric(
        "paygate_retention_rows_expired_total",
        Counter,
        "Rows deleted by retention in batches, by table (raw pingbacks; every table on SQLite).",
        Each("table", RETENTION_TABLES),
    ),
    metric(
        "paygate_retention_partitions_dropped_total",
        Counter,
        "Month partitions dropped by retention (PostgreSQL), by table.",
        Each("table", RETENTION_TABLES),
    ),
];

/// The tables `retention` expires.
const RETENTION_TABLES: &[&str] =
    &["payment_events", "pingbacks", "webhook_deliveries", "webhook_attempts", "audit_events"];

/// The operations `store::redis` names in `paygate_redis_errors_total`.
const REDIS_OPS: &[&str] = &["get", "set", "publish", "rate_limit"];

/// Describes every metric and registers the series shown from the start (see the module's docs).
pub fn announce() {
    for m in METRICS {
        match m.kind {
            Counter => metrics::describe_counter!(m.name, m.help),
            Gauge => metrics::describe_gauge!(m.name, m.help),
            Histogram => metrics::describe_histogram!(m.name, m.help),
        }
        let series: Vec<Vec<(&str, &str)>> = match m.at_start {
            Nothing | ByOwner => continue,
            Unlabelled => vec![vec![]],
            Each(label, values) => values.iter().map(|value| vec![(label, *value)]).collect(),
        };
        for labels in &series {
            match m.kind {
                Counter => metrics::counter!(m.name, labels).increment(0),
                Gauge => metrics::gauge!(m.name, labels).increment(0.0),
                Histogram => drop(metrics::histogram!(m.name, labels)),
            }
        }
    }
    notification::announce_metrics();
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn rendered_after_announce() -> String {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, announce);
        handle.render()
    }

    /// The sample lines of `name` (any labels) in Prometheus text.
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.split(['{', ' ']).next() == Some(name)).collect()
    }

    #[test]
    fn the_first_scrape_has_every_counter_and_histogram_at_zero() {
        let text = rendered_after_announce();
        for m in METRICS.iter().filter(|m| !matches!(m.at_start, Nothing)) {
            assert!(text.contains(&format!("# HELP {} {}", m.name, m.help)), "{}: no HELP line in\n{text}", m.name);
            let name = match m.kind {
                Histogram => format!("{}_count", m.name),
                _ => m.name.to_owned(),
            };
            let lines = samples(&text, &name);
            let expected = match m.at_start {
                Each(_, values) => values.len(),
                ByOwner => 3,
                _ => 1,
            };
            assert_eq!(lines.len(), expected, "{name}: series at start in\n{text}");
            assert!(lines.iter().all(|l| l.ends_with(" 0")), "{name}: not zero: {lines:?}");
        }
        // Nothing is made up: a gauge only a check can know is not shown before the check.
        assert!(samples(&text, "paygate_ready").is_empty());
        assert!(samples(&text, "paygate_dependency_up").is_empty());
    }

    /// Every `.rs` file under `dir`.
    fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                sources(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }

    /// The string literals `"paygate_..."` (whole literals of name characters) in `text`.
    fn metric_literals(text: &str) -> Vec<&str> {
        text.match_indices("\"paygate_")
            .filter_map(|(at, _)| {
                let rest = &text[at + 1..];
                let end = rest.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))?;
                rest[end..].starts_with('"').then(|| &rest[..end])
            })
            .collect()
    }

    /// A metric added in a module but not here would not be described, nor (if its zero matters)
    /// shown from the start; one here that no module records any more is a stale promise.
    #[test]
    fn the_catalog_names_every_metric_the_code_records_and_no_other() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let this = src.join("metrics_catalog.rs");
        let mut recorded = std::collections::BTreeSet::new();
        for file in files.iter().filter(|f| **f != this) {
            let text = std::fs::read_to_string(file).expect("read a source file");
            recorded.extend(metric_literals(&text).into_iter().map(str::to_owned));
        }
        let listed: std::collections::BTreeSet<String> = METRICS.iter().map(|m| m.name.to_owned()).collect();
        let unlisted: Vec<_> = recorded.difference(&listed).collect();
        let stale: Vec<_> = listed.difference(&recorded).collect();
        assert!(unlisted.is_empty(), "metrics recorded in src/ but missing from METRICS: {unlisted:?}");
        assert!(stale.is_empty(), "METRICS lists metrics nothing in src/ records: {stale:?}");
        assert!(recorded.len() >= 25, "the scan found too few metrics to be right: {recorded:?}");
    }
}
