//! What the HTTP handlers share.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use super::dependencies::Dependencies;
use crate::{
    channels::Channels,
    config::Settings,
    payments::{Providers, flows::writers::NotificationIngest},
    ratelimit::Limiter,
    store::Db,
    store::redis::RedisHandle,
};

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Where verified notifications are stored and applied (concurrent ones in one transaction).
    pub notifications: Arc<dyn NotificationIngest>,
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
    pub dependencies: Arc<Dependencies>,
}

impl AppState {
    pub fn pingback_timeout(&self) -> Duration {
        self.settings.pingback_timeout
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// From now on `/readyz` answers not ready, so load balancers stop sending traffic.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
}
