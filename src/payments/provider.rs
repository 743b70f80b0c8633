//! The provider port: what the payments domain needs from a payment provider, in its own terms.
//! Adapters (`providers::*`) implement it; `app` hands them in as `Providers`.

use std::sync::Arc;

use serde::Serialize;

use super::{Payment, subscriptions::Subscription};
use crate::channels::{self, Channel};

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
    /// Whether a `custom_params` key is one the provider's checkout sets itself (and so a
    /// merchant may not).
    fn is_reserved_param(&self, _name: &str) -> bool {
        false
    }

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

/// The providers paygate can use, one per provider kind, as wired at start-up.
#[derive(Clone)]
pub struct Providers {
    paymentwall: Arc<dyn Provider>,
}

impl Providers {
    pub fn new(paymentwall: Arc<dyn Provider>) -> Self {
        Self { paymentwall }
    }

    /// The provider a channel's credentials belong to.
    pub fn for_channel(&self, channel: &Channel) -> &dyn Provider {
        match channel.provider {
            channels::Provider::Paymentwall => self.paymentwall.as_ref(),
        }
    }
}
