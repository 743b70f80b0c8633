//! Payment providers. Each provider is a module; `Provider` is what the rest of paygate needs from
//! one. Provider callbacks (pingbacks) have their own HTTP route per provider in `ingest`.

pub mod paymentwall;

use crate::{
    channels::{self, Channel},
    payments::Payment,
};

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the payment cannot be expressed for this provider: {0}")]
    Unsupported(String),
}

pub trait Provider: Send + Sync {
    /// The URL of the provider's hosted payment page for this payment, signed with the channel's secret.
    fn checkout_url(&self, channel: &Channel, payment: &Payment) -> Result<String, ProviderError>;
}

pub fn for_channel(channel: &Channel) -> &'static dyn Provider {
    match channel.provider {
        channels::Provider::Paymentwall => &paymentwall::Paymentwall,
    }
}
