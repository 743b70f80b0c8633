//! Payments: checkout, the status machine, refunds, subscriptions, idempotency, and applying what
//! providers report.

pub mod cancellations;
pub mod checkout;
pub mod event_log;
pub mod group_commit;
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
    #[error("subscription not found")]
    SubscriptionNotFound,
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
    let id = write_change(conn, None, payment, kind, detail).await?;
    id.ok_or_else(|| PaymentError::Corrupt("an event insert returned no row".into()))
}

/// Moves the payment to `next` (a compare-and-set on the version before) and records the change
/// as `record` does. `None` when someone else moved it first: then nothing was written.
pub async fn record_update(
    conn: &mut sqlx::AnyConnection,
    next: &Payment,
    kind: event_log::EventKind,
    detail: Option<&event_log::EventDetail>,
) -> Result<Option<i64>, PaymentError> {
    write_change(conn, Some(next), next, kind, detail).await
}

/// On PostgreSQL one statement makes every write (the update, the event, the webhook row): the
/// pingback's transaction is round trips, most of its cost on a busy machine. SQLite has no
/// writes in `WITH`; there each is its own statement.
async fn write_change(
    conn: &mut sqlx::AnyConnection,
    update: Option<&Payment>,
    payment: &Payment,
    kind: event_log::EventKind,
    detail: Option<&event_log::EventDetail>,
) -> Result<Option<i64>, PaymentError> {
    let queued = crate::webhooks::outbox::Queued {
        merchant_id: &payment.merchant_id,
        payment_id: &payment.payment_id,
        event_type: kind.as_str(),
        now: crate::store::now_ms(),
    };
    let data = webhook_data(payment, detail);
    if crate::store::Backend::of(conn).writes_in_ctes() {
        return write_in_one_statement(conn, update, payment, kind, detail, &queued, data).await;
    }
    if let Some(next) = update
        && !repo::update(conn, next).await?
    {
        return Ok(None);
    }
    let position = event_log::append(conn, payment, kind, detail).await?;
    let mut data = data;
    data["event_id"] = position.to_string().into();
    crate::webhooks::outbox::enqueue(conn, queued.merchant_id, queued.payment_id, queued.event_type, data).await?;
    Ok(Some(position.id))
}

/// `WITH moved AS (UPDATE ...), event AS (INSERT ... RETURNING ...), queued AS (INSERT ... SELECT ...)`:
/// the event is appended only if the compare-and-set moved the payment, and the webhook body gets
/// the event's id in SQL. Parameters: the update's 13, the event's 7, the outbox row's 7, then the
/// body before and after the id.
async fn write_in_one_statement(
    conn: &mut sqlx::AnyConnection,
    update: Option<&Payment>,
    payment: &Payment,
    kind: event_log::EventKind,
    detail: Option<&event_log::EventDetail>,
    queued: &crate::webhooks::outbox::Queued<'_>,
    data: serde_json::Value,
) -> Result<Option<i64>, PaymentError> {
    use crate::webhooks::outbox;
    let (moved, event) = match update {
        Some(_) => (
            format!("moved AS (UPDATE payments SET {} RETURNING 1), ", repo::UPDATE_SET),
            event_log::insert_select(14, "moved"),
        ),
        None => (String::new(), event_log::insert_values(1)),
    };
    let queue_first = if update.is_some() { 21 } else { 8 };
    let payload = format!("${} || event.txid || '-' || event.event_id || ${}", queue_first + 7, queue_first + 8);
    let sql = format!(
        "WITH {moved}event AS (INSERT INTO payment_events {event} RETURNING event_id, txid), \
         queued AS ({}) SELECT event_id, txid FROM event",
        outbox::queue_sql(queue_first, &payload, ", event")
    );
    let mut query = sqlx::query(&sql);
    if let Some(next) = update {
        query = repo::bind_update(query, next);
    }
    let query = outbox::bind_queued(event_log::bind_event(query, payment, kind, detail)?, queued);
    let (head, tail) = outbox::payload_around_event_id(queued.event_type, data, queued.now);
    let row = query.bind(head).bind(tail).fetch_optional(&mut *conn).await?;
    Ok(row.as_ref().map(event_log::position_of).transpose()?.map(|p| p.id))
}

/// The webhook's `data` object for a change, without its `event_id`.
fn webhook_data(payment: &Payment, detail: Option<&event_log::EventDetail>) -> serde_json::Value {
    use event_log::EventDetail;
    let mut data = serde_json::json!({ "payment": payment });
    match detail {
        Some(EventDetail::Cancellation(value)) => data["cancellation"] = value.clone(),
        Some(EventDetail::Subscription(value)) => data["subscription"] = value.clone(),
        None => {}
    }
    data
}

impl From<crate::webhooks::WebhookError> for PaymentError {
    fn from(e: crate::webhooks::WebhookError) -> Self {
        match e {
            crate::webhooks::WebhookError::Store(store) => Self::Store(store),
            other => Self::Corrupt(other.to_string()),
        }
    }
}

/// Payments and subscriptions as the decision tests start from.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::collections::BTreeMap;

    use super::{
        Payment, PaymentStatus,
        cancellations::{Cancellation, CancellationStatus, TicketState, Trigger},
        subscriptions::{Subscription, SubscriptionStatus},
    };

    /// A merchant's open refund request `can_<amount>` on `pay_1`, its ticket at `ticket`.
    pub fn refund_request(amount: i64, ticket: TicketState, updated_at: i64) -> Cancellation {
        Cancellation {
            cancellation_id: format!("can_{amount}"),
            payment_id: "pay_1".into(),
            merchant_id: "mer_1".into(),
            amount_minor: Some(amount),
            reason: "asked".into(),
            trigger: Trigger::MerchantRequest,
            status: CancellationStatus::Requested,
            provider_reason: None,
            failure: None,
            ticket: Some(ticket),
            ticket_accepted_at: None,
            created_at: 0,
            updated_at,
            completed_at: None,
        }
    }

    /// A one-time payment `pay_1` of `amount` paid under ref `b1`, with these refunded amounts.
    pub fn payment(status: PaymentStatus, amount: i64, cancelled: i64, pending: i64) -> Payment {
        Payment {
            payment_id: "pay_1".into(),
            merchant_id: "mer_1".into(),
            channel_key: "ch_1".into(),
            merchant_uid: "order-1".into(),
            amount_minor: amount,
            currency: "USD".into(),
            order_name: "Gold".into(),
            customer_uid: "u".into(),
            customer_email: String::new(),
            payment_method: "all".into(),
            widget: "p1_1".into(),
            success_url: String::new(),
            failure_url: String::new(),
            country_code: String::new(),
            language: String::new(),
            custom_params: BTreeMap::new(),
            status,
            provider_ref: Some("b1".into()),
            test: true,
            redirect_url: String::new(),
            subscription_id: None,
            cancelled_amount: cancelled,
            pending_cancel_amount: pending,
            version: 1,
            created_at: 0,
            updated_at: 0,
            paid_at: Some(0),
            failed_at: None,
            cancelled_at: None,
        }
    }

    /// A checkout not paid yet (no ref, no paid time).
    pub fn unpaid(amount: i64) -> Payment {
        Payment { provider_ref: None, paid_at: None, ..payment(PaymentStatus::Ready, amount, 0, 0) }
    }

    /// Subscription `sub_1` started by `pay_1`, renewed `renewals` times.
    pub fn subscription(status: SubscriptionStatus, renewals: i64) -> Subscription {
        Subscription {
            subscription_id: "sub_1".into(),
            merchant_id: "mer_1".into(),
            channel_key: "ch_1".into(),
            initial_payment_id: "pay_1".into(),
            customer_uid: "u".into(),
            period_length: 1,
            period_type: "month".into(),
            recurring: true,
            status,
            renewals,
            renewals_after_end: 0,
            last_renewal_payment_id: None,
            last_renewal_at: None,
            started_at: Some(0),
            cancel_requested_at: None,
            ended_at: None,
            created_at: 0,
            updated_at: 0,
        }
    }
}
