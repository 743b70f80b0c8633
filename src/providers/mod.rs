//! Payment provider adapters. Each provider is a module implementing the port the payments domain
//! owns (`payments::provider::Provider`), outbound calls and inbound callbacks both; `app` wires
//! them in, each with the HTTP client it is given.

pub mod paymentwall;

use std::time::Duration;

pub use crate::payments::provider::{
    Delivery, PaymentMethod, Provider, ProviderError, RemotePayment, RemoteState, RemoteSubscription,
};

/// The HTTP client for provider APIs: short timeouts, no redirects, public addresses only unless
/// allowed (a channel's `api_base_url` is merchant input).
#[derive(Clone)]
pub struct ProviderHttp {
    client: reqwest::Client,
    allow_internal_targets: bool,
}

impl ProviderHttp {
    pub fn new(connect_timeout: Duration, total_timeout: Duration, allow_internal_targets: bool) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(total_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("paygate/", env!("CARGO_PKG_VERSION")));
        if !allow_internal_targets {
            builder = builder.no_proxy().dns_resolver(std::sync::Arc::new(crate::net::egress::PublicOnly));
        }
        let client = builder.build().expect("the HTTP client builds with static settings");
        Self { client, allow_internal_targets }
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Checks a provider URL the way outgoing calls are checked.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        crate::net::egress::check_url_naming(url, self.allow_internal_targets, "PAYGATE_PROVIDER_ALLOW_PRIVATE_TARGETS")
            .map(|_| ())
    }
}
