//! Per-RPC observability as a tower layer: a server span (continuing the caller's W3C trace
//! context) and the metrics `paygate_grpc_requests_total{method, code}` and
//! `paygate_grpc_request_duration_seconds{method}` (until the response headers, which for a stream
//! is when it opens).

use std::{
    collections::HashSet,
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll},
    time::Instant,
};

use prost::Message;
use prost_types::FileDescriptorSet;

use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::proto;

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

/// The label of every request that is not a method this server serves: unknown paths are
/// answered before authentication, so a label per path would let anyone grow the label set (and
/// the process) without bound.
const OTHER: &str = "other";

/// `package.Service/Method` of every method this server serves, from the descriptors it was built
/// with (paygate's, health's and reflection's): the only label values besides `OTHER`.
static SERVED_METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    [
        proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    .filter_map(|encoded| FileDescriptorSet::decode(encoded).ok())
    .flat_map(|set| set.file)
    .flat_map(|file| {
        let package = file.package().to_owned();
        file.service.into_iter().flat_map(move |service| {
            let prefix = format!("{package}.{}/", service.name());
            service.method.into_iter().map(move |method| format!("{prefix}{}", method.name()))
        })
    })
    .collect()
});

fn method_label(path: &str) -> &'static str {
    path.strip_prefix('/').and_then(|method| SERVED_METHODS.get(method)).map_or(OTHER, String::as_str)
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
            metrics::histogram!("paygate_grpc_request_duration_seconds", "method" => method)
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
    fn only_served_methods_are_labels() {
        for served in [
            "paygate.v1.PaymentService/GetPayment",
            "paygate.v1.MerchantService/CreateApiKey",
            "grpc.health.v1.Health/Check",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(method_label(&format!("/{served}")), served);
        }
        // Under a served package or service, but not served: one label for all of them.
        for unknown in [
            "/evil/random-1234",
            "/paygate.v1.0123456789abcdef/fedcba9876543210",
            "/paygate.v1.PaymentService/NoSuchMethod",
            "/paygate.v1.PaymentService/GetPayment/extra",
            "paygate.v1.PaymentService/GetPayment",
            "/grpc.health.v1.Health/",
        ] {
            assert_eq!(method_label(unknown), "other", "{unknown}");
        }
    }
}
