//! Probes: `/healthz` says the process is up; `/readyz` says it can do its work right now.
//!
//! Ready means one thing on every surface (`/readyz`, gRPC health, `paygate_ready`): not shutting
//! down and the database answers. Redis down is degraded, not unready: checkouts, pingbacks and
//! streams keep working (caches fall back to the database, streams to polling), so `/readyz`
//! answers 200 and says so, and `paygate_dependency_up{dependency="redis"}` is 0.

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
    // Checked now, not from the last round: a probe must not see a stale "ready".
    if !state.dependencies.check(&state.db, state.redis.as_ref()).await {
        return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n".into());
    }
    if !state.dependencies.redis_up() {
        let body = "ready, degraded: redis unreachable (caches read the database; channel changes and key \
                    revocations reach other replicas within their cache TTLs)\n";
        return (StatusCode::OK, body.into());
    }
    (StatusCode::OK, "ready\n".into())
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let pool = state.db.pool();
    let idle = pool.num_idle() as f64;
    metrics::gauge!("paygate_db_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("paygate_db_pool_connections", "state" => "in_use").set(f64::from(pool.size()) - idle);
    // The pool's limit beside its use: saturation (in use / max) is what the alert on the pool
    // watches, and the limit differs by backend (SQLite: one) and setting.
    metrics::gauge!("paygate_db_pool_max_connections").set(f64::from(pool.options().get_max_connections()));
    match &state.metrics {
        Some(handle) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled in this process\n").into_response(),
    }
}
