//! Payments: checkout, the status machine, refunds, subscriptions, idempotency, and applying what
//! providers report.

pub mod cancellations;
pub mod checkout;
pub mod event_log;
pub mod idempotency;
pub mod methods;
pub mod model;
pub mod money;
pub mod notifications;
pub mod provider;
pub mod refunds;
pub mod repo;
pub mod status;
pub mod subscriptions;
pub mod sweep;

pub use model::Payment;
pub use status::{PaymentOutcome, PaymentStatus};

pub use provider::{Provider, ProviderError, Providers};

use crate::{channels::ChannelError, store::StoreError, validation::InvalidArgument};

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    #[error("payment not found")]
    NotFound,
    #[error("merchant_uid already used by another payment")]
    MerchantUidTaken,
    #[error("{0}")]
    NotRefundable(String),
    #[error("{0}")]
    NotCancellable(String),
    /// ResolveCancellation on a cancellation whose outcome is known.
    #[error("{0}")]
    NotResolvable(String),
    #[error("the provider refused: {0}")]
    ProviderRefused(String),
    #[error("the provider cannot be reached ({0}); nothing was changed")]
    ProviderUnavailable(String),
    #[error("idempotency_key was already used with a different request")]
    IdempotencyMismatch,
    #[error("a request with this idempotency_key is still in progress; retry later")]
    IdempotencyInFlight,
    #[error("the payment changed concurrently; retry")]
    Concurrent,
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("provider: {0}")]
    Provider(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored payment is unreadable: {0}")]
    Corrupt(String),
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

/// Records a change in the caller's transaction: its event in the log and the webhook that
/// announces it, so neither commits without the other. Returns the event's id.
pub async fn record(
    conn: &mut sqlx::AnyConnection,
    payment: &Payment,
    kind: event_log::EventKind,
    detail: Option<&event_log::EventDetail>,
) -> Result<i64, PaymentError> {
    use event_log::EventDetail;
    let position = event_log::append(conn, payment, kind, detail).await?;
    let mut data = serde_json::json!({ "event_id": position.to_string(), "payment": payment });
    match detail {
        Some(EventDetail::Cancellation(value)) => data["cancellation"] = value.clone(),
        Some(EventDetail::Subscription(value)) => data["subscription"] = value.clone(),
        None => {}
    }
    crate::webhooks::outbox::enqueue(conn, &payment.merchant_id, &payment.payment_id, kind.as_str(), data)
        .await
        .map_err(|e| match e {
            crate::webhooks::WebhookError::Store(store) => PaymentError::Store(store),
            other => PaymentError::Corrupt(other.to_string()),
        })?;
    Ok(position.id)
}
