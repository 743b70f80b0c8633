//! The HTTP surface (port 8080): provider pingbacks and health probes.

pub mod health;
pub mod pingback;
pub mod server;

use axum::{Router, routing::get};

pub use pingback::PingbackError;

use crate::app::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/pingback/paymentwall/{channel_key}", get(pingback::paymentwall))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state)
}
