//! The HTTP port's routes.

use axum::{Router, extract::DefaultBodyLimit, routing::get};

use super::{AppState, health, pingback};

/// The most a callback body may carry; provider notifications are a few KiB.
const MAX_CALLBACK_BODY: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/pingback/paymentwall/{channel_key}", get(pingback::paymentwall))
        .route(
            "/callbacks/{provider}/{channel_key}",
            get(pingback::callback).post(pingback::callback).layer(DefaultBodyLimit::max(MAX_CALLBACK_BODY)),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state)
}
