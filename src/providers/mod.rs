//! Payment providers. Each provider is a module; `Provider` is what the rest of paygate needs from
//! one. Provider callbacks (pingbacks) have their own HTTP route per provider in `ingest`.

pub mod paymentwall;

use std::{sync::OnceLock, time::Duration};

use serde::Serialize;

use crate::{
    channels::{self, Channel},
    payments::{Payment, subscriptions::Subscription},
};

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the payment cannot be expressed for this provider: {0}")]
    Unsupported(String),
    /// The provider answered and said no; its words are in the message.
    #[error("the provider refused: {0}")]
    Refused(String),
    /// The provider could not be reached; the request never arrived, so nothing was done there.
    #[error("the provider cannot be reached: {0}")]
    Unreachable(String),
    /// The request went out but no clear answer came back (timeout, an answer paygate does not
    /// understand): the provider may or may not have acted on it.
    #[error("no clear answer from the provider: {0}")]
    BadAnswer(String),
}

/// A payment method the provider offers in a country.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PaymentMethod {
    /// The code to pass as `payment_method` (Paymentwall `ps`).
    pub id: String,
    pub name: String,
    pub image_url: String,
}

/// What the provider says about a payment when asked directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePayment {
    pub provider_ref: String,
    /// Completed and not held for review.
    pub paid: bool,
    pub refunded: bool,
}

#[tonic::async_trait]
pub trait Provider: Send + Sync {
    /// The URL of the provider's hosted payment page for this payment, signed with the channel's
    /// secret; with `subscription`, the page sells a recurring product.
    fn checkout_url(
        &self,
        channel: &Channel,
        payment: &Payment,
        subscription: Option<&Subscription>,
    ) -> Result<String, ProviderError>;

    /// Asks the provider to refund `amount_minor` of a paid payment. The refund itself is reported
    /// later by a provider notification.
    async fn request_refund(
        &self,
        channel: &Channel,
        payment: &Payment,
        amount_minor: i64,
        reason: &str,
    ) -> Result<(), ProviderError>;

    /// Asks the provider to stop the recurring billing a payment started.
    async fn stop_recurring(&self, channel: &Channel, initial: &Payment, reason: &str) -> Result<(), ProviderError>;

    async fn payment_methods(&self, channel: &Channel, country_code: &str)
    -> Result<Vec<PaymentMethod>, ProviderError>;

    /// `None` when the provider knows no such payment (the buyer never paid).
    async fn payment_status(
        &self,
        channel: &Channel,
        payment: &Payment,
    ) -> Result<Option<RemotePayment>, ProviderError>;
}

pub fn for_channel(channel: &Channel) -> &'static dyn Provider {
    match channel.provider {
        channels::Provider::Paymentwall => &paymentwall::Paymentwall,
    }
}

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
    crate::net::egress::check_url(url, allow_internal()).map(|_| ())
}
