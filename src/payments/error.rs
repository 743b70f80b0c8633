//! What can go wrong with a payment, in terms the API answers with, and with a provider (the
//! port's error, re-exported by `provider`); errors convert themselves.

use crate::{channels::ChannelError, store::StoreError, validation::InvalidArgument};

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    #[error("payment not found")]
    NotFound,
    #[error("subscription not found")]
    SubscriptionNotFound,
    #[error("merchant_uid already used by another payment")]
    MerchantUidTaken,
    #[error("{0}")]
    NotRefundable(String),
    #[error("{0}")]
    NotCancellable(String),
    /// ConfirmDelivery for a payment nothing was paid for.
    #[error("{0}")]
    NotDeliverable(String),
    /// ResolveCancellation on a cancellation whose outcome is known.
    #[error("{0}")]
    NotResolvable(String),
    #[error("the provider refused: {0}")]
    ProviderRefused(String),
    #[error("the provider cannot be reached ({0}); nothing was changed")]
    ProviderUnavailable(String),
    #[error("this payment was checked with the provider moments ago; retry in {} ms", retry_after.as_millis())]
    SyncedRecently { retry_after: std::time::Duration },
    #[error("idempotency_key was already used with a different request")]
    IdempotencyMismatch,
    #[error("a request with this idempotency_key is still in progress; retry later")]
    IdempotencyInFlight,
    #[error("the payment changed concurrently; retry")]
    Concurrent,
    /// A cursor before events retention expired; the position is the oldest cursor still available.
    #[error("events after this cursor were expired by retention; the oldest cursor still available is {0}")]
    CursorExpired(crate::payments::core::Position),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("provider: {0}")]
    Provider(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored payment is unreadable: {0}")]
    Corrupt(String),
}

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

/// What a provider's failure means to the caller: its refusal is a failed precondition (with its
/// words); not reaching it, or not understanding its answer, is "unavailable, nothing changed".
impl From<ProviderError> for PaymentError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Refused(message) => Self::ProviderRefused(message),
            ProviderError::Unreachable(detail) | ProviderError::BadAnswer(detail) => Self::ProviderUnavailable(detail),
            ProviderError::Unsupported(detail) => Self::Provider(detail),
        }
    }
}

impl From<sqlx::Error> for PaymentError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<crate::webhooks::WebhookError> for PaymentError {
    fn from(e: crate::webhooks::WebhookError) -> Self {
        match e {
            crate::webhooks::WebhookError::Store(store) => Self::Store(store),
            other => Self::Corrupt(other.to_string()),
        }
    }
}
