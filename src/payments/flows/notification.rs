//! Provider notifications (Paymentwall pingbacks, and what the stuck-payment sweep learns by
//! asking): stored raw and applied to the payment in one transaction, deduplicated on the
//! provider's unique id `(channel, ref, type[, UNIQUE_REF])`. The caller answers the provider only
//! after this returns, so an acknowledged notification is always committed. Read, decide
//! (`core::notification`), write.

use sqlx::AnyConnection;

use crate::{
    payments::{
        Payment, PaymentError,
        core::{
            Cancellation, EventDetail, EventKind,
            notification::{Decision, SubscriptionChange, decide},
            subscription::{Subscription, SubscriptionStatus, renewal_after_end},
        },
        provider::{Notice, ProviderEvent, RawNotification},
        store::{
            cancellations, changes, payments as rows,
            pingbacks::{self, OUTCOME_APPLIED, OUTCOME_UNMATCHED, Seen},
            reversal, subscriptions,
        },
    },
    store::{Db, StoreError, now_ms},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A payment moved (or a renewal payment was made); the event records it. `renewed_after_end`:
    /// the payment renews a subscription that had already ended, as it had ended (counted once the
    /// transaction commits).
    Changed { payment: Box<Payment>, event_id: i64, renewed_after_end: Option<SubscriptionStatus> },
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

/// Stores `raw` and applies `notice` atomically, in a transaction of its own. A notice for an
/// unknown payment is stored (so nothing is lost) and reported as an error, so the provider
/// retries it.
pub async fn ingest(db: &Db, raw: &RawNotification, notice: &Notice) -> Result<Applied, NotificationError> {
    let mut tx = db.pool().begin().await?;
    let result = ingest_in(&mut tx, raw, notice).await?;
    tx.commit().await?;
    committed(db, std::slice::from_ref(&result));
    result
}

/// What one notification did inside a transaction: what its sender is told once that commits
/// (applied, or an unknown payment whose raw record is kept).
pub type Committable = Result<Applied, NotificationError>;

/// Stores `raw` and applies `notice` in the caller's transaction. The outer error means the
/// transaction must roll back (a conflict, or the store failing); the inner result is the answer
/// for after the commit.
pub async fn ingest_in(
    conn: &mut AnyConnection,
    raw: &RawNotification,
    notice: &Notice,
) -> Result<Committable, NotificationError> {
    let (seen, payment) = pingbacks::record_delivery(conn, raw, &notice.payment_id).await?;
    apply_recorded(conn, raw, notice, seen, payment).await
}

/// `ingest_in` after the raw record was stored (`seen`) and the payment it names read.
pub async fn apply_recorded(
    conn: &mut AnyConnection,
    raw: &RawNotification,
    notice: &Notice,
    seen: Seen,
    payment: Option<Payment>,
) -> Result<Committable, NotificationError> {
    let applied = match prepare(conn, raw, notice, seen, payment).await? {
        Prepared::Answer(answer) => return Ok(answer),
        Prepared::Write(decision) => write(conn, *decision).await?,
    };
    applied_after_all(conn, raw, seen).await?;
    Ok(Ok(applied))
}

/// Where a recorded notification stands before its writes.
pub enum Prepared {
    /// Nothing to write: the sender's answer (a duplicate, or an unknown payment now marked so).
    Answer(Committable),
    Write(Box<Decision>),
}

/// Reads what the decision needs and decides; an unknown payment's record is marked unmatched.
pub async fn prepare(
    conn: &mut AnyConnection,
    raw: &RawNotification,
    notice: &Notice,
    seen: Seen,
    payment: Option<Payment>,
) -> Result<Prepared, NotificationError> {
    if seen == Seen::Applied {
        return Ok(Prepared::Answer(Ok(Applied::Duplicate)));
    }
    match read(conn, &raw.channel_key, notice, payment).await {
        Ok((current, subscription, open)) => {
            let decision = decide(&current, subscription.as_ref(), &open, notice, now_ms())?;
            log(&current, notice, &decision);
            Ok(Prepared::Write(Box::new(decision)))
        }
        Err(unknown @ NotificationError::UnknownPayment(_)) => {
            pingbacks::mark(conn, raw, OUTCOME_UNMATCHED).await?;
            Ok(Prepared::Answer(Err(unknown)))
        }
        Err(other) => Err(other),
    }
}

/// What the decision needs: the payment the notice concerns, its subscription, and (for money
/// going back) its open refund requests.
async fn read(
    conn: &mut AnyConnection,
    channel_key: &str,
    notice: &Notice,
    payment: Option<Payment>,
) -> Result<(Payment, Option<Subscription>, Vec<Cancellation>), NotificationError> {
    let mut current = match payment {
        // A notification signed with one channel's secret may only touch that channel's payments.
        Some(payment) if payment.channel_key == channel_key => payment,
        _ => return Err(NotificationError::UnknownPayment(notice.payment_id.clone())),
    };
    // The subscription before the renewal lookup below (a renewal shares its first payment's
    // subscription). Each statement reads what is committed when it runs, so a renewal of this
    // ref that another transaction commits after this read is either seen by the lookup, or makes
    // this one's compare-and-set on the subscription fail: never two renewals for one ref. (Read
    // after the lookup, a renewal committed in between was missed by the lookup yet counted in
    // the subscription read, and the same ref was renewed twice.)
    let subscription = match &current.subscription_id {
        Some(id) => subscriptions::get(conn, id).await?,
        None => None,
    };
    // A subscription's notifications all name its first payment (`goodsid`); one about a renewal
    // carries the renewal's ref, so that payment is the one it concerns.
    if current.subscription_id.is_some()
        && current.provider_ref.as_deref().is_some_and(|r| r != notice.provider_ref)
        && let Some(renewal) = rows::find_by_provider_ref(conn, channel_key, &notice.provider_ref).await?
    {
        current = renewal;
    }
    let open = match notice.event {
        ProviderEvent::Reversal(_) | ProviderEvent::RefundConfirmed => {
            cancellations::requested(conn, &current.payment_id).await?
        }
        _ => Vec::new(),
    };
    Ok((current, subscription, open))
}

/// The decisions an operator may want to hear of.
fn log(current: &Payment, notice: &Notice, decision: &Decision) {
    match decision {
        Decision::Unchanged => {
            tracing::info!(payment_id = %current.payment_id, status = %current.status, event = ?notice.event, "notification changes nothing")
        }
        Decision::Renew { subscription: None, .. } => {
            tracing::warn!(payment_id = %current.payment_id, provider_ref = %notice.provider_ref, "a second payment for a one-time checkout; recorded")
        }
        Decision::Renew { subscription: Some(change), .. } if change.before.status.is_final() => {
            let sub = &change.before;
            tracing::warn!(subscription_id = %sub.subscription_id, status = sub.status.as_str(), "renewal of an ended subscription recorded anyway")
        }
        _ => {}
    }
}

/// Carries out a decision in the caller's transaction, with its event and outbox rows.
pub async fn write(conn: &mut AnyConnection, decision: Decision) -> Result<Applied, NotificationError> {
    let renewed_after_end = match &decision {
        Decision::Renew { subscription: Some(change), .. } => renewal_after_end(&change.before),
        _ => None,
    };
    let (payment, kind, detail) = match decision {
        Decision::Unchanged => return Ok(Applied::Unchanged),
        Decision::Settle { next, kind, subscription } => {
            let detail = write_subscription(conn, subscription).await?;
            let moved = changes::record_update(conn, &next, kind, detail.as_ref()).await?;
            let event_id = moved.ok_or(NotificationError::Concurrent)?;
            return Ok(Applied::Changed { payment: Box::new(next), event_id, renewed_after_end });
        }
        Decision::Renew { mut payment, kind, subscription } => {
            // Only a payment stored before the namespace existed can hold the name: never fail over it.
            if rows::merchant_uid_taken(conn, &payment.merchant_id, &payment.merchant_uid).await? {
                payment.merchant_uid = format!("{}/{}", payment.merchant_uid, payment.payment_id);
            }
            rows::insert_in_tx(conn, &payment).await?;
            (payment, kind, write_subscription(conn, subscription).await?)
        }
        Decision::EndSubscription { payment, kind, subscription } => {
            (payment, kind, write_subscription(conn, Some(subscription)).await?)
        }
        Decision::Reverse(effect) => {
            reversal::write_reversal(conn, &effect).await?;
            (effect.next, effect.kind, Some(EventDetail::cancellation(&effect.completed)))
        }
    };
    let event_id = changes::record(conn, &payment, kind, detail.as_ref()).await?;
    Ok(Applied::Changed { payment: Box::new(payment), event_id, renewed_after_end })
}

/// Writes a subscription change (compare-and-set); the event then carries the subscription.
async fn write_subscription(
    conn: &mut AnyConnection,
    change: Option<SubscriptionChange>,
) -> Result<Option<EventDetail>, NotificationError> {
    let Some(SubscriptionChange { before, after }) = change else { return Ok(None) };
    if !subscriptions::update(conn, &before, &after).await? {
        return Err(NotificationError::Concurrent);
    }
    Ok(Some(EventDetail::subscription(&after)))
}

/// A notification stored earlier as unmatched that has now been applied says so.
pub async fn applied_after_all(
    conn: &mut AnyConnection,
    raw: &RawNotification,
    seen: Seen,
) -> Result<(), NotificationError> {
    if seen == Seen::Again {
        pingbacks::mark(conn, raw, OUTCOME_APPLIED).await?;
    }
    Ok(())
}

/// After the commit of `results`: wakes the local event tailer, and counts money after a
/// subscription's end.
pub fn committed(db: &Db, results: &[Committable]) {
    if results.iter().any(|r| matches!(r, Ok(Applied::Changed { .. }))) {
        db.signal_commit();
    }
    for result in results {
        if let Ok(Applied::Changed { renewed_after_end: Some(status), .. }) = result {
            count_renewal_after_end(*status);
        }
    }
}

const RENEWALS_AFTER_END: &str = "paygate_subscription_renewals_after_end_total";

/// Money after a subscription ended needs a person: counted for alerting (the subscription keeps
/// the durable count).
fn count_renewal_after_end(status: SubscriptionStatus) {
    metrics::counter!(RENEWALS_AFTER_END, "status" => status.as_str()).increment(1);
}

/// Shows the counter at 0 from the start, so an alert on its increase sees the first one too.
pub fn announce_metrics() {
    for status in [SubscriptionStatus::Cancelled, SubscriptionStatus::Expired, SubscriptionStatus::PaymentFailed] {
        metrics::counter!(RENEWALS_AFTER_END, "status" => status.as_str()).absolute(0);
    }
}

/// Applies what paygate learned by asking the provider (no raw notification to keep).
pub async fn apply_learned(db: &Db, channel_key: &str, notice: &Notice) -> Result<Applied, NotificationError> {
    apply_asked(db, channel_key, notice, None).await
}

/// `apply_learned` for `SyncPayment`: a change is followed, in the same transaction, by a
/// `payment.synced` event, so a stream or a webhook receiver can tell where it came from.
pub async fn apply_synced(db: &Db, channel_key: &str, notice: &Notice) -> Result<Applied, NotificationError> {
    apply_asked(db, channel_key, notice, Some(EventKind::PaymentSynced)).await
}

async fn apply_asked(
    db: &Db,
    channel_key: &str,
    notice: &Notice,
    then: Option<EventKind>,
) -> Result<Applied, NotificationError> {
    let mut tx = db.pool().begin().await?;
    let payment = rows::get_in_tx(&mut tx, &notice.payment_id).await?;
    let mut result = apply(&mut tx, channel_key, notice, payment).await?;
    if let (Some(kind), Applied::Changed { payment, event_id, .. }) = (then, &mut result) {
        *event_id = changes::record(&mut tx, payment, kind, None).await?;
    }
    tx.commit().await?;
    if matches!(result, Applied::Changed { .. }) {
        db.signal_commit();
    }
    Ok(result)
}

/// Applies `notice` to `payment` (as read in this transaction: the one it names, if any).
async fn apply(
    conn: &mut AnyConnection,
    channel_key: &str,
    notice: &Notice,
    payment: Option<Payment>,
) -> Result<Applied, NotificationError> {
    let (current, subscription, open) = read(conn, channel_key, notice, payment).await?;
    let decision = decide(&current, subscription.as_ref(), &open, notice, now_ms())?;
    log(&current, notice, &decision);
    write(conn, decision).await
}
