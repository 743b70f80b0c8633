//! Payment provider adapters. Each provider is a module implementing the port the payments domain
//! owns (`payments::provider::Provider`); `app` wires them in. Provider callbacks (pingbacks) have
//! their own HTTP route per provider in `ingest`.

pub mod paymentwall;

use std::{sync::OnceLock, time::Duration};

pub use crate::payments::provider::{PaymentMethod, Provider, ProviderError, RemotePayment};

static HTTP: OnceLock<reqwest::Client> = OnceLock::new();

/// Sets the timeouts of outgoing provider calls, and whether they may reach internal addresses
/// (a channel's `api_base_url` is merchant input). Once, at start-up.
pub fn init_http(connect_timeout: Duration, total_timeout: Duration, allow_internal_targets: bool) {
    let _ = ALLOW_INTERNAL.set(allow_internal_targets);
    let _ = HTTP.set(build_http(connect_timeout, total_timeout, allow_internal_targets));
}

fn build_http(connect_timeout: Duration, total_timeout: Duration, allow_internal_targets: bool) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(total_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("paygate/", env!("CARGO_PKG_VERSION")));
    if !allow_internal_targets {
        builder = builder.no_proxy().dns_resolver(std::sync::Arc::new(crate::net::egress::PublicOnly));
    }
    builder.build().expect("the HTTP client builds with static settings")
}

/// The client for provider APIs: short timeouts, no redirects, public addresses only unless allowed.
pub fn http() -> &'static reqwest::Client {
    HTTP.get_or_init(|| build_http(Duration::from_secs(3), Duration::from_secs(10), allow_internal()))
}

static ALLOW_INTERNAL: OnceLock<bool> = OnceLock::new();

fn allow_internal() -> bool {
    *ALLOW_INTERNAL.get().unwrap_or(&false)
}

/// Checks a provider base URL the way outgoing calls are checked.
pub fn check_base_url(url: &str) -> Result<(), String> {
    crate::net::egress::check_url_naming(url, allow_internal(), "PAYGATE_PROVIDER_ALLOW_PRIVATE_TARGETS").map(|_| ())
}
