//! The HTTP surface (port 8080): provider pingbacks and health probes.

pub mod health;
pub mod pingback;
pub mod server;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::DefaultBodyLimit, routing::get};

pub use pingback::PingbackError;

use crate::{
    channels::Channels,
    config::Settings,
    payments::{
        Providers,
        group_commit::{GroupCommit, Notification},
    },
    ratelimit::Limiter,
    store::Db,
    store::redis::RedisHandle,
};

/// The most a callback body may carry; provider notifications are a few KiB.
const MAX_CALLBACK_BODY: usize = 64 * 1024;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Where verified notifications are stored and applied (concurrent ones in one transaction).
    pub notifications: GroupCommit<Notification>,
    pub settings: Arc<Settings>,
    pub channels: Channels,
    /// The providers whose callbacks are served.
    pub providers: Providers,
    pub redis: Option<RedisHandle>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Refused pingbacks per source address.
    pub pingback_refusals: Option<Limiter>,
    pub shutting_down: Arc<AtomicBool>,
    /// The database's and Redis's state as last checked, for every readiness surface.
    pub dependencies: Arc<health::Dependencies>,
}

impl AppState {
    pub fn pingback_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.pingback_timeout_ms)
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// From now on `/readyz` answers not ready, so load balancers stop sending traffic.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
}

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
