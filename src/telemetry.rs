//! Telemetry: `tracing` events as JSON lines (default) or text; spans exported over OTLP (gRPC)
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard `OTEL_*` variables apply), with W3C
//! trace context taken from incoming requests and passed on to outgoing ones; Prometheus metrics.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    field::RecordFields,
    fmt::{
        self, FormatFields, FormattedFields,
        format::{JsonFields, Writer},
        writer::BoxMakeWriter,
    },
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

use crate::config::LogFormat;

/// Flushes exported spans when dropped (at exit).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    /// Writes out the log lines still queued when dropped.
    _log_writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured level.
/// `to_stderr` keeps stdout clean for commands whose output is data (admin commands).
/// Call inside a Tokio runtime: the span exporter runs on it.
pub fn init(format: LogFormat, level: &str, to_stderr: bool) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = if to_stderr { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
    // The server's lines go through a thread of their own that writes whatever is queued in one
    // go: a request never waits for a write to stdout, and a busy server makes one write per
    // batch of lines, not one per line. Nothing is dropped (a full queue waits). Commands write
    // to stderr as they go.
    let (writer, log_writer) = if to_stderr {
        (BoxMakeWriter::new(std::io::stderr), None)
    } else {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("paygate-log")
            .finish(std::io::BufWriter::new(std::io::stdout()));
        (BoxMakeWriter::new(writer), Some(guard))
    };
    let logs = match format.resolved(terminal) {
        // The current span's fields once, not again in the list of every enclosing span.
        LogFormat::Json | LogFormat::Auto => fmt::layer()
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .with_target(false)
            .fmt_fields(AppendJsonFields)
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => fmt::layer().with_target(false).with_writer(writer).boxed(),
    };
    let provider = otlp_provider();
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("paygate")));
    // A second init (tests that run commands in one process) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(filter).with(logs).with(otel).try_init();
    TelemetryGuard { provider, _log_writer: log_writer }
}

/// A span's fields as a JSON object, as `JsonFields` writes them, except that a field recorded
/// later is appended to the object: `JsonFields` parses the object and writes it again on every
/// `record`, which cost a request about a twentieth of its CPU. A field recorded twice appears
/// twice; the line's reader keeps the last, as a JSON object's reader does.
struct AppendJsonFields;

impl<'writer> FormatFields<'writer> for AppendJsonFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> std::fmt::Result {
        JsonFields::new().format_fields(writer, fields)
    }

    fn add_fields(&self, current: &'writer mut FormattedFields<Self>, fields: &span::Record<'_>) -> std::fmt::Result {
        let mut added = String::new();
        JsonFields::new().format_fields(Writer::new(&mut added), fields)?;
        let fields = &mut current.fields;
        match added.strip_prefix('{') {
            Some("}") => {}
            // `{"a":1}` and `{"b":2}` make `{"a":1,"b":2}`.
            Some(rest) if fields.len() > 2 && fields.ends_with('}') => {
                fields.pop();
                fields.push(',');
                fields.push_str(rest);
            }
            _ => *fields = added,
        }
        Ok(())
    }
}

/// The OTLP span pipeline, when an endpoint is configured; nothing (and no noise) otherwise.
fn otlp_provider() -> Option<SdkTracerProvider> {
    let configured = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()));
    if !configured {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("paygate: OTLP exporter not started: {e}");
            return None;
        }
    };
    global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("paygate").build())
        .build();
    global::set_tracer_provider(provider.clone());
    Some(provider)
}

/// Reads W3C trace context from request headers (gRPC metadata are HTTP/2 headers).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::try_from(key), http::HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` a child of the trace context the caller sent, if any, and records its trace id
/// (the `trace_id` field) so log lines within it carry it, exported or not.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use opentelemetry::trace::TraceContextExt;
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(parent);
    let exported = span.context().span().span_context().trace_id();
    let trace_id = if exported != opentelemetry::trace::TraceId::INVALID {
        Some(exported.to_string())
    } else {
        // Not exporting: still log the caller's trace id from its `traceparent`.
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split('-').nth(1))
            .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned)
    };
    if let Some(trace_id) = trace_id {
        span.record("trace_id", trace_id.as_str());
    }
}

/// Trace context headers for an outgoing request made within the current span.
pub fn outgoing_trace_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeaderInjector(&mut headers)));
    headers
}

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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::{fmt, layer::SubscriberExt};

    use super::AppendJsonFields;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn fields_recorded_later_join_the_spans_json_object() {
        let lines = Lines::default();
        let writer = lines.clone();
        let layer = fmt::layer()
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .fmt_fields(AppendJsonFields)
            .with_writer(move || writer.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let span = tracing::info_span!(
                "rpc",
                method = "Checkout",
                payment_id = tracing::field::Empty,
                code = tracing::field::Empty,
                quote = tracing::field::Empty
            );
            span.record("payment_id", "pay_1");
            span.record("code", 0);
            span.record("quote", "a \"quoted\" }, value");
            span.in_scope(|| tracing::info!(n = 1, "checkout created"));
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["span"]["method"], "Checkout");
        assert_eq!(line["span"]["payment_id"], "pay_1");
        assert_eq!(line["span"]["code"], 0);
        assert_eq!(line["span"]["quote"], "a \"quoted\" }, value");
        assert_eq!((line["n"].as_i64(), line["message"].as_str()), (Some(1), Some("checkout created")));
    }
}
