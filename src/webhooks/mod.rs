//! Merchant webhooks: every event a merchant subscribed to is delivered to its endpoint as signed
//! JSON (Standard Webhooks), from a durable outbox written with the event, retried for at least a
//! day, with a delivery log, a manual redeliver and a test send.

pub mod dispatcher;
pub mod endpoints;
pub mod outbox;
pub mod signature;

use crate::{secrets::CryptoError, store::StoreError, validation::InvalidArgument};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    #[error("no webhook endpoint or delivery with this id")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("webhook secret: {0}")]
    Crypto(#[from] CryptoError),
    #[error("stored webhook data is unreadable: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for WebhookError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}
