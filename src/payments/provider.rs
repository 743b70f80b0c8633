//! The provider port: what paygate needs from a payment provider, in its own terms. Outbound: the
//! hosted page, refunds, status. Inbound: a callback read, verified and turned into a neutral
//! `Notice`, so the HTTP layer only hands requests over. The channel-config half is
//! `channels::config::ConfigRules`. Adapters (`providers::*`) implement it; `app` hands them in
//! as `Providers`.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use serde::Serialize;

pub use super::core::notice::{
    Notice, ProviderEvent, RawNotification, RemotePayment, RemoteState, RemoteSubscription, ReversalKind,
    ReversalNotice,
};
/// The payment's words a provider reads and answers in.
pub use super::core::{
    Payment, PaymentOutcome, Subscription,
    delivery::Delivery,
    money::{self, MinorUnits},
    risk_profile::{CustomerHistory, ProfileTime, RiskProfile},
    subscription::SubscriptionEnd,
};
pub use super::error::ProviderError;
use crate::channels::{Channel, config::ConfigRules};

/// A payment method the provider offers in a country.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PaymentMethod {
    /// The code to pass as `payment_method` (Paymentwall `ps`).
    pub id: String,
    pub name: String,
    pub image_url: String,
}

/// A provider callback as the HTTP layer received it.
#[derive(Debug, Clone, Copy)]
pub struct Callback<'a> {
    /// The sender's address (the client address behind trusted proxies).
    pub source: IpAddr,
    /// The query string exactly as received; "" when there was none.
    pub query: &'a str,
    pub body: &'a [u8],
}

/// A callback the provider verified: what it reports, and the raw record to keep.
#[derive(Debug, Clone)]
pub struct CallbackNotice {
    pub notice: Notice,
    pub raw: RawNotification,
}

/// Why a callback was refused (the message is what the sender is answered), or, for `Config`,
/// could not be read on paygate's side.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("source address {0} is not allowed for this channel")]
    SourceNotAllowed(IpAddr),
    /// Unreadable; the message names the part and the problem.
    #[error("{0}")]
    Malformed(String),
    #[error("bad signature")]
    BadSignature,
    /// Signed in a way the channel does not accept.
    #[error("{0}")]
    SignatureNotAccepted(String),
    /// A test-mode callback for a LIVE channel.
    #[error("{0}")]
    TestOnLive(String),
    /// The channel's stored config does not read: nothing the sender did.
    #[error(transparent)]
    Config(#[from] ProviderError),
}

#[tonic::async_trait]
pub trait Provider: ConfigRules {
    /// Reads a callback meant for `channel`, with every check the provider's protocol asks for
    /// (source address, signature, test mode), and says what it reports in paygate's terms.
    fn read_callback(&self, channel: &Channel, callback: &Callback<'_>) -> Result<CallbackNotice, CallbackError>;

    /// The body answering a callback whose effects are committed.
    fn callback_answer(&self) -> &'static str {
        "OK"
    }

    /// The callback's kind as a metric label: one of a few fixed values, whatever arrived.
    fn callback_label(&self, _callback: &Callback<'_>) -> &'static str {
        "other"
    }

    /// Whether a `custom_params` key is one the provider's checkout sets itself (and so a
    /// merchant may not).
    fn is_reserved_param(&self, _name: &str) -> bool {
        false
    }

    /// The URL of the provider's hosted payment page for this payment, signed with the channel's
    /// secret; with `subscription`, the page sells a recurring product. `profile` is the buyer's
    /// profile for the provider's risk scoring (personal data: into the URL, never into a log).
    fn checkout_url(
        &self,
        channel: &Channel,
        payment: &Payment,
        subscription: Option<&Subscription>,
        profile: &RiskProfile,
    ) -> Result<String, ProviderError>;

    /// Asks the provider to refund `amount` of a paid payment. The refund itself is reported
    /// later by a provider notification.
    async fn request_refund(
        &self,
        channel: &Channel,
        payment: &Payment,
        amount: MinorUnits,
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

    /// Whether the channel confirms every paid payment as delivered, by itself (digital goods).
    fn confirms_digital_delivery(&self, _channel: &Channel) -> bool {
        false
    }

    /// Reports a delivery of what `payment` bought. `Refused` is final; anything else is tried
    /// again (a report sent twice says the same thing twice).
    async fn confirm_delivery(
        &self,
        _channel: &Channel,
        _payment: &Payment,
        _delivery: &Delivery,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Refused(format!("{} has no delivery confirmation", self.display_name())))
    }

    /// The newest payment of the subscription `initial` started (a renewal, or `initial` itself),
    /// with the subscription's state; `None` when the provider cannot say (then the sweep learns
    /// nothing about the subscription, and its notifications stay the only source).
    async fn subscription_status(
        &self,
        _channel: &Channel,
        _initial: &Payment,
    ) -> Result<Option<RemotePayment>, ProviderError> {
        Ok(None)
    }
}

/// The providers paygate runs, by name, as wired at start-up.
#[derive(Clone, Default)]
pub struct Providers {
    by_name: HashMap<&'static str, Arc<dyn Provider>>,
}

impl Providers {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, provider: Arc<dyn Provider>) -> Self {
        self.by_name.insert(provider.name(), provider);
        self
    }

    pub fn get(&self, name: &str) -> Option<&dyn Provider> {
        self.by_name.get(name).map(AsRef::as_ref)
    }

    /// Their channel-config rules, for `channels`.
    pub fn config_rules(&self) -> Vec<Arc<dyn ConfigRules>> {
        self.by_name.values().map(|p| Arc::clone(p) as Arc<dyn ConfigRules>).collect()
    }

    /// The provider a channel's credentials belong to. A channel of a provider this build does not
    /// run (written by another build) gets one whose every call fails, saying so.
    pub fn for_channel(&self, channel: &Channel) -> &dyn Provider {
        self.get(&channel.provider).unwrap_or(&NotRunning)
    }
}

struct NotRunning;

const NOT_RUNNING: &str = "the channel's provider is not one this build of paygate runs";

impl ConfigRules for NotRunning {
    fn name(&self) -> &'static str {
        "not-running"
    }

    fn display_name(&self) -> &'static str {
        "unknown provider"
    }

    fn config_fields(&self) -> &'static [crate::channels::config::ConfigField] {
        &[]
    }

    fn check_config(
        &self,
        given: crate::channels::config::ProviderConfig,
        _: &crate::channels::config::ConfigContext<'_>,
        v: &mut crate::validation::Violations,
    ) -> crate::channels::config::ProviderConfig {
        v.add("provider", NOT_RUNNING);
        given
    }
}

#[tonic::async_trait]
impl Provider for NotRunning {
    fn read_callback(&self, _: &Channel, _: &Callback<'_>) -> Result<CallbackNotice, CallbackError> {
        Err(CallbackError::Malformed(NOT_RUNNING.into()))
    }

    fn checkout_url(
        &self,
        _: &Channel,
        _: &Payment,
        _: Option<&Subscription>,
        _: &RiskProfile,
    ) -> Result<String, ProviderError> {
        Err(ProviderError::Unsupported(NOT_RUNNING.into()))
    }

    async fn request_refund(&self, _: &Channel, _: &Payment, _: MinorUnits, _: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Unreachable(NOT_RUNNING.into()))
    }

    async fn stop_recurring(&self, _: &Channel, _: &Payment, _: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Unreachable(NOT_RUNNING.into()))
    }

    async fn payment_methods(&self, _: &Channel, _: &str) -> Result<Vec<PaymentMethod>, ProviderError> {
        Err(ProviderError::Unreachable(NOT_RUNNING.into()))
    }

    async fn payment_status(&self, _: &Channel, _: &Payment) -> Result<Option<RemotePayment>, ProviderError> {
        Err(ProviderError::Unreachable(NOT_RUNNING.into()))
    }
}
