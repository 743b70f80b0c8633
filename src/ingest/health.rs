//! Probes: `/healthz` says the process is up; `/readyz` says it can do its work right now.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::AppState;

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    if state.shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    if let Err(e) = state.db.ping().await {
        tracing::warn!(error = %e, "readiness: database unreachable");
        return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n".into());
    }
    if let Some(redis) = &state.redis
        && let Err(e) = redis.ping().await
    {
        tracing::warn!(error = %e, "readiness: redis unreachable");
        return (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable\n".into());
    }
    (StatusCode::OK, "ready\n".into())
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let pool = state.db.pool();
    let idle = pool.num_idle() as f64;
    metrics::gauge!("paygate_db_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("paygate_db_pool_connections", "state" => "in_use").set(f64::from(pool.size()) - idle);
    match &state.metrics {
        Some(handle) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled in this process\n").into_response(),
    }
}
