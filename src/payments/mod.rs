//! Payments: checkout creation, the status machine, and applying what providers report.

pub mod checkout;
pub mod model;
pub mod money;
pub mod notifications;
pub mod repo;
pub mod status;

pub use model::Payment;
pub use status::{PaymentOutcome, PaymentStatus};

use crate::{channels::ChannelError, error::InvalidArgument, store::StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    #[error("payment not found")]
    NotFound,
    #[error("merchant_uid already used by another payment")]
    MerchantUidTaken,
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("provider: {0}")]
    Provider(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored payment is unreadable: {0}")]
    Corrupt(String),
}
