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
    /// The provider could not be reached; nothing was done there.
    #[error("the provider cannot be reached: {0}")]
    Unreachable(String),
    /// The provider answered something paygate does not understand.
    #[error("unexpected answer from the provider: {0}")]
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

/// Sets the timeouts of outgoing provider calls (once, at start-up; later calls keep the first).
pub fn init_http(connect_timeout: Duration, total_timeout: Duration) {
    let _ = HTTP.set(build_http(connect_timeout, total_timeout));
}

fn build_http(connect_timeout: Duration, total_timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(total_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("paygate/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client builds with static settings")
}

/// The client for provider APIs: short timeouts, no redirects.
pub fn http() -> &'static reqwest::Client {
    HTTP.get_or_init(|| build_http(Duration::from_secs(3), Duration::from_secs(10)))
}
