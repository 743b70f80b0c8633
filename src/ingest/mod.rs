//! The HTTP surface (port 8080): provider pingbacks and health probes.

pub mod client_ip;
pub mod health;
pub mod pingback;

use axum::{Router, routing::get};
use ipnet::IpNet;

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

/// Parses `10.0.0.0/8` or a bare address (as a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<std::net::IpAddr>().map(IpNet::from).map_err(|_| format!("{s:?} is not a CIDR block or IP address"))
}
