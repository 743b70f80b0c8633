//! Provider notifications (Paymentwall pingbacks, and what the stuck-payment sweep learns by
//! asking): stored raw and applied to the payment in one transaction, deduplicated on the
//! provider's unique id `(channel, ref, type[, UNIQUE_REF])`. The caller answers the provider only
//! after this returns, so an acknowledged notification is always committed.

use sqlx::{AnyConnection, Row};

use super::{
    Payment, PaymentError, PaymentOutcome, PaymentStatus,
    event_log::EventDetail,
    refunds, repo,
    status::next_status,
    subscriptions::{self, SubscriptionEnd, SubscriptionStatus},
};
use crate::store::{Db, StoreError, now_ms};

/// A verified notification as received, for the raw log.
#[derive(Debug, Clone)]
pub struct RawNotification {
    pub channel_key: String,
    pub provider_ref: String,
    pub kind: i64,
    /// Tells apart two notifications of one ref and type (e.g. two partial reversals); may be empty.
    pub unique_ref: String,
    /// The query string exactly as received (it carries no secret: the signature is a digest).
    pub query: String,
}

/// What the provider reported, in paygate's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderEvent {
    /// Completion, reviews (a completion of a paid subscription payment with a new ref is a renewal).
    Payment(PaymentOutcome),
    /// Money went back, as the provider classifies it.
    Reversal(ReversalNotice),
    /// The provider says the payment is refunded (payment status API): confirms pending refunds.
    RefundConfirmed,
    SubscriptionEnded(SubscriptionEnd),
}

/// Money the provider took back. The provider maps its own reason codes onto `kind`; the code and
/// its meaning are kept on the cancellation for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReversalNotice {
    pub kind: ReversalKind,
    /// The provider's own reason code, if it has codes.
    pub provider_reason: Option<i64>,
    /// What the reason means, in words.
    pub description: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReversalKind {
    /// The whole payment refunded: confirms every open refund request the provider may have seen.
    FullRefund,
    /// Part of it refunded: confirms the oldest open request (or records an unasked partial refund).
    PartialRefund,
    /// A chargeback: everything not yet reversed goes.
    Chargeback,
    /// Any other reversal (fraud, a bad conversion): everything not yet reversed goes.
    Other,
}

#[derive(Debug, Clone)]
pub struct Notice {
    pub payment_id: String,
    pub provider_ref: String,
    pub event: ProviderEvent,
    pub test: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A payment moved (or a renewal payment was made); the event records it.
    Changed { payment: Box<Payment>, event_id: i64 },
    /// A valid notification that changes nothing (late or replayed after the payment moved on).
    Unchanged,
    /// The same notification was applied before.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    #[error("no payment {0} on this channel")]
    UnknownPayment(String),
    #[error("the payment changed concurrently; retry")]
    Concurrent,
    #[error(transparent)]
    Payment(PaymentError),
}

impl From<PaymentError> for NotificationError {
    fn from(e: PaymentError) -> Self {
        match e {
            PaymentError::Concurrent => Self::Concurrent,
            other => Self::Payment(other),
        }
    }
}

impl From<StoreError> for NotificationError {
    fn from(e: StoreError) -> Self {
        Self::Payment(e.into())
    }
}

impl From<sqlx::Error> for NotificationError {
    fn from(e: sqlx::Error) -> Self {
        Self::Payment(StoreError::from(e).into())
    }
}

const OUTCOME_APPLIED: &str = "applied";
const OUTCOME_UNMATCHED: &str = "unmatched";

/// Stores `raw` and applies `notice` atomically. A notice for an unknown payment is stored (so
/// nothing is lost) and reported as an error, so the provider retries it.
pub async fn ingest(db: &Db, raw: &RawNotification, notice: &Notice) -> Result<Applied, NotificationError> {
    let mut tx = db.pool().begin().await?;
    let seen = record_delivery(&mut tx, raw, &notice.payment_id).await?;
    if seen == Seen::Applied {
        tx.commit().await?;
        return Ok(Applied::Duplicate);
    }
    let result = apply(&mut tx, &raw.channel_key, notice).await;
    match &result {
        Ok(_) if seen == Seen::Again => mark(&mut tx, raw, OUTCOME_APPLIED).await?,
        Ok(_) => {}
        Err(NotificationError::UnknownPayment(_)) => mark(&mut tx, raw, OUTCOME_UNMATCHED).await?,
        Err(_) => return result, // rolled back on drop
    }
    tx.commit().await?;
    if matches!(result, Ok(Applied::Changed { .. })) {
        db.signal_commit();
    }
    result
}

/// Sets the outcome of a stored notification (unmatched: kept for the record and the provider's
/// retries; applied: a retry matched after all).
async fn mark(conn: &mut AnyConnection, raw: &RawNotification, outcome: &str) -> Result<(), NotificationError> {
    sqlx::query(
        "UPDATE pingbacks SET outcome = $1 WHERE channel_key = $2 AND ref = $3 AND type = $4 AND unique_ref = $5",
    )
    .bind(outcome)
    .bind(&raw.channel_key)
    .bind(&raw.provider_ref)
    .bind(raw.kind)
    .bind(&raw.unique_ref)
    .execute(conn)
    .await?;
    Ok(())
}

/// Applies what paygate learned by asking the provider (no raw notification to keep).
pub async fn apply_learned(db: &Db, channel_key: &str, notice: &Notice) -> Result<Applied, NotificationError> {
    let mut tx = db.pool().begin().await?;
    let result = apply(&mut tx, channel_key, notice).await?;
    tx.commit().await?;
    if matches!(result, Applied::Changed { .. }) {
        db.signal_commit();
    }
    Ok(result)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    New,
    /// Delivered before but not applied (it matched no payment then).
    Again,
    Applied,
}

/// Inserts the raw row or counts a repeat delivery.
async fn record_delivery(
    conn: &mut AnyConnection,
    raw: &RawNotification,
    payment_id: &str,
) -> Result<Seen, NotificationError> {
    let now = now_ms();
    // Written as applied: if applying fails, the transaction rolls back (or marks it unmatched).
    let inserted = sqlx::query(
        "INSERT INTO pingbacks (pingback_id, channel_key, ref, type, unique_ref, query, outcome, payment_id, \
         received_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, 'applied', $7, $8, $8) \
         ON CONFLICT (channel_key, ref, type, unique_ref) DO NOTHING",
    )
    .bind(format!("pb_{}", ulid::Ulid::new()))
    .bind(&raw.channel_key)
    .bind(&raw.provider_ref)
    .bind(raw.kind)
    .bind(&raw.unique_ref)
    .bind(&raw.query)
    .bind(payment_id)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Seen::New);
    }
    let row = sqlx::query(
        "UPDATE pingbacks SET deliveries = deliveries + 1, last_seen_at = $1 \
         WHERE channel_key = $2 AND ref = $3 AND type = $4 AND unique_ref = $5 RETURNING outcome",
    )
    .bind(now)
    .bind(&raw.channel_key)
    .bind(&raw.provider_ref)
    .bind(raw.kind)
    .bind(&raw.unique_ref)
    .fetch_one(&mut *conn)
    .await?;
    Ok(if row.try_get::<String, _>("outcome")? == OUTCOME_APPLIED { Seen::Applied } else { Seen::Again })
}

async fn apply(conn: &mut AnyConnection, channel_key: &str, notice: &Notice) -> Result<Applied, NotificationError> {
    let mut current = match repo::get_in_tx(conn, &notice.payment_id).await? {
        // A notification signed with one channel's secret may only touch that channel's payments.
        Some(payment) if payment.channel_key == channel_key => payment,
        _ => return Err(NotificationError::UnknownPayment(notice.payment_id.clone())),
    };
    // A subscription's notifications all name its first payment (`goodsid`); one about a renewal
    // carries the renewal's ref, so that payment is the one it concerns.
    if current.subscription_id.is_some()
        && current.provider_ref.as_deref().is_some_and(|r| r != notice.provider_ref)
        && let Some(renewal) = repo::find_by_provider_ref(conn, channel_key, &notice.provider_ref).await?
    {
        current = renewal;
    }
    match notice.event {
        ProviderEvent::Payment(outcome) => {
            // Money taken under a new ref for a payment already settled: a subscription renewal (or,
            // for a one-time payment, the buyer paying twice). Recorded as a new payment, never dropped.
            let another_payment = outcome != PaymentOutcome::Declined
                && !matches!(current.status, PaymentStatus::Ready | PaymentStatus::PendingReview)
                && current.provider_ref.as_deref().is_some_and(|r| r != notice.provider_ref);
            if another_payment {
                renew(conn, &current, outcome, notice).await
            } else {
                settle(conn, &current, outcome, notice).await
            }
        }
        ProviderEvent::Reversal(reversal) => reverse(conn, &current, notice, &reversal).await,
        ProviderEvent::RefundConfirmed => {
            let Some((next, kind, cancellation)) = refunds::apply_refund_confirmed(conn, &current).await? else {
                return Ok(Applied::Unchanged);
            };
            let event_id = super::record(conn, &next, kind, Some(&EventDetail::cancellation(&cancellation))).await?;
            Ok(Applied::Changed { payment: Box::new(next), event_id })
        }
        ProviderEvent::SubscriptionEnded(end) => end_subscription(conn, &current, end).await,
    }
}

async fn settle(
    conn: &mut AnyConnection,
    current: &Payment,
    outcome: PaymentOutcome,
    notice: &Notice,
) -> Result<Applied, NotificationError> {
    let Some(status) = next_status(current.status, outcome) else {
        tracing::info!(payment_id = %current.payment_id, status = %current.status, ?outcome, "notification changes nothing");
        return Ok(Applied::Unchanged);
    };
    let now = now_ms();
    let mut next = current.next_version(now);
    next.status = status;
    next.test = notice.test;
    match outcome {
        PaymentOutcome::Completed | PaymentOutcome::ReviewAccepted => {
            next.provider_ref = Some(notice.provider_ref.clone());
            next.paid_at = Some(now);
        }
        PaymentOutcome::ReviewStarted => next.provider_ref = Some(notice.provider_ref.clone()),
        PaymentOutcome::Declined => next.failed_at = Some(now),
    }
    if !repo::update(conn, &next).await? {
        return Err(NotificationError::Concurrent);
    }
    let mut detail = None;
    if status == PaymentStatus::Paid
        && let Some(subscription_id) = &next.subscription_id
        && let Some(sub) = subscriptions::get(conn, subscription_id).await?
        && sub.status == SubscriptionStatus::Pending
    {
        let active = subscriptions::Subscription { status: SubscriptionStatus::Active, updated_at: now, ..sub.clone() };
        if !subscriptions::update(conn, &sub, &active).await? {
            return Err(NotificationError::Concurrent);
        }
        detail = Some(EventDetail::subscription(&active));
    }
    let event_id = super::record(conn, &next, outcome.event_kind(), detail.as_ref()).await?;
    Ok(Applied::Changed { payment: Box::new(next), event_id })
}

/// The `merchant_uid` namespace of payments paygate records itself: a leading `~`, which a
/// merchant's own `merchant_uid` may not have (checkout refuses it), so the two never collide.
pub const GENERATED_UID_PREFIX: char = '~';

/// A payment paygate records itself, named after the payment it follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated<'a> {
    /// The n-th renewal of a subscription.
    Renewal(i64),
    /// Money taken again under this provider ref for a one-time payment.
    Repeat(&'a str),
}

/// `~<uid>/renewal/<n>` or `~<uid>/repeat/<ref>`.
pub fn generated_merchant_uid(original: &str, generated: Generated<'_>) -> String {
    match generated {
        Generated::Renewal(n) => format!("{GENERATED_UID_PREFIX}{original}/renewal/{n}"),
        Generated::Repeat(provider_ref) => format!("{GENERATED_UID_PREFIX}{original}/repeat/{provider_ref}"),
    }
}

/// Money under a new ref for a payment already settled, recorded as a new payment linked to the
/// first: a subscription renewal (`~<uid>/renewal/<n>`), or a repeat purchase (`~<uid>/repeat/<ref>`).
/// A review (200) makes it PENDING_REVIEW; its 201 then finds it by ref.
async fn renew(
    conn: &mut AnyConnection,
    initial: &Payment,
    outcome: PaymentOutcome,
    notice: &Notice,
) -> Result<Applied, NotificationError> {
    let now = now_ms();
    let subscription = match &initial.subscription_id {
        Some(id) => Some(subscriptions::get(conn, id).await?.ok_or_else(|| {
            PaymentError::Corrupt(format!("payment {} names a missing subscription", initial.payment_id))
        })?),
        None => None,
    };
    let merchant_uid = match &subscription {
        Some(sub) => generated_merchant_uid(&initial.merchant_uid, Generated::Renewal(sub.renewals + 1)),
        None => {
            tracing::warn!(payment_id = %initial.payment_id, provider_ref = %notice.provider_ref, "a second payment for a one-time checkout; recorded");
            generated_merchant_uid(&initial.merchant_uid, Generated::Repeat(&notice.provider_ref))
        }
    };
    let payment_id = super::model::new_payment_id();
    // Only a payment stored before the namespace existed can hold it: never fail over it.
    let merchant_uid = if repo::merchant_uid_taken(conn, &initial.merchant_id, &merchant_uid).await? {
        format!("{merchant_uid}/{payment_id}")
    } else {
        merchant_uid
    };
    let reviewing = outcome == PaymentOutcome::ReviewStarted;
    let payment = Payment {
        payment_id,
        merchant_uid,
        status: if reviewing { PaymentStatus::PendingReview } else { PaymentStatus::Paid },
        provider_ref: Some(notice.provider_ref.clone()),
        test: notice.test,
        redirect_url: String::new(),
        cancelled_amount: 0,
        pending_cancel_amount: 0,
        version: 1,
        created_at: now,
        updated_at: now,
        paid_at: if reviewing { None } else { Some(now) },
        failed_at: None,
        cancelled_at: None,
        ..initial.clone()
    };
    repo::insert_in_tx(conn, &payment).await?;
    let mut detail = None;
    if let Some(sub) = subscription {
        if sub.status.is_final() {
            tracing::warn!(subscription_id = %sub.subscription_id, status = sub.status.as_str(), "renewal of an ended subscription recorded anyway");
        }
        let renewed = subscriptions::Subscription {
            renewals: sub.renewals + 1,
            status: if sub.status.is_final() { sub.status } else { SubscriptionStatus::Active },
            updated_at: now,
            ..sub.clone()
        };
        if !subscriptions::update(conn, &sub, &renewed).await? {
            return Err(NotificationError::Concurrent);
        }
        detail = Some(EventDetail::subscription(&renewed));
    }
    let event_id = super::record(conn, &payment, outcome.event_kind(), detail.as_ref()).await?;
    Ok(Applied::Changed { payment: Box::new(payment), event_id })
}

async fn reverse(
    conn: &mut AnyConnection,
    current: &Payment,
    notice: &Notice,
    reversal: &ReversalNotice,
) -> Result<Applied, NotificationError> {
    // A reversal that overtook its payment's completion still names the transaction.
    let mut current = current.clone();
    if current.provider_ref.is_none() {
        current.provider_ref = Some(notice.provider_ref.clone());
        current.test = notice.test;
    }
    let Some((next, kind, cancellation)) = refunds::apply_reversal(conn, &current, reversal).await? else {
        return Ok(Applied::Unchanged);
    };
    let event_id = super::record(conn, &next, kind, Some(&EventDetail::cancellation(&cancellation))).await?;
    Ok(Applied::Changed { payment: Box::new(next), event_id })
}

async fn end_subscription(
    conn: &mut AnyConnection,
    initial: &Payment,
    end: SubscriptionEnd,
) -> Result<Applied, NotificationError> {
    let Some(subscription_id) = &initial.subscription_id else { return Ok(Applied::Unchanged) };
    let Some(sub) = subscriptions::get(conn, subscription_id).await? else { return Ok(Applied::Unchanged) };
    if sub.status.is_final() {
        return Ok(Applied::Unchanged);
    }
    let now = now_ms();
    let ended =
        subscriptions::Subscription { status: end.status(), ended_at: Some(now), updated_at: now, ..sub.clone() };
    if !subscriptions::update(conn, &sub, &ended).await? {
        return Err(NotificationError::Concurrent);
    }
    let event_id = super::record(conn, initial, end.event_kind(), Some(&EventDetail::subscription(&ended))).await?;
    Ok(Applied::Changed { payment: Box::new(initial.clone()), event_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_live_in_their_own_namespace() {
        assert_eq!(generated_merchant_uid("gold", Generated::Renewal(2)), "~gold/renewal/2");
        assert_eq!(generated_merchant_uid("order-1", Generated::Repeat("b77")), "~order-1/repeat/b77");
        // What a merchant can choose (no leading '~') is never what paygate generates.
        let merchant_chosen = "gold/renewal/2";
        assert_ne!(generated_merchant_uid("gold", Generated::Renewal(2)), merchant_chosen);
        assert!(generated_merchant_uid(merchant_chosen, Generated::Renewal(1)).starts_with(GENERATED_UID_PREFIX));
    }
}
