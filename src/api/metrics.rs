//! Per-RPC observability as a tower layer: a server span (continuing the caller's W3C trace
//! context) and the metrics `paygate_grpc_requests_total{method, code}` and
//! `paygate_grpc_request_duration_seconds{method}` (until the response headers, which for a stream
//! is when it opens).

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

#[derive(Clone, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics { inner }
    }
}

#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
}

/// Only paths this server serves become label values, so a caller cannot grow the label set.
fn method_label(path: &str) -> String {
    let known = ["/paygate.v1.", "/grpc.health.v1.", "/grpc.reflection."];
    if known.iter().any(|p| path.starts_with(p)) && path.len() <= 100 {
        path.trim_start_matches('/').to_owned()
    } else {
        "other".to_owned()
    }
}

impl<S, B> Service<http::Request<B>> for Metrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = method_label(request.uri().path());
        let started = Instant::now();
        let span = tracing::info_span!(
            "rpc", otel.name = %method, otel.kind = "server", rpc.system = "grpc", rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty, payment_id = tracing::field::Empty,
            channel_key = tracing::field::Empty, trace_id = tracing::field::Empty
        );
        crate::telemetry::continue_trace(&span, request.headers());
        let record = span.clone();
        Box::pin(async move {
            let response = inner.call(request).instrument(span).await;
            // An error status is in the headers ("trailers-only"); a success's comes later as 0.
            let code = match &response {
                Ok(r) => r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_owned(),
                Err(_) => "transport_error".to_owned(),
            };
            record.record("rpc.grpc.status_code", code.as_str());
            metrics::histogram!("paygate_grpc_request_duration_seconds", "method" => method.clone())
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("paygate_grpc_requests_total", "method" => method, "code" => code).increment(1);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(method_label("/paygate.v1.PaymentService/GetPayment"), "paygate.v1.PaymentService/GetPayment");
        assert_eq!(method_label("/evil/random-1234"), "other");
    }
}
