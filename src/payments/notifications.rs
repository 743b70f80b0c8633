//! Provider notifications (Paymentwall pingbacks): stored raw and applied to the payment in one
//! transaction, deduplicated on the provider's unique id `(channel, ref, type)`. The caller answers
//! the provider only after this returns, so an acknowledged notification is always committed.

use sqlx::{AnyConnection, Row};

use super::{Payment, PaymentError, PaymentOutcome, repo, status::next_status};
use crate::{
    events,
    store::{Db, StoreError, now_ms},
};

/// A verified notification as received, for the raw log.
#[derive(Debug, Clone)]
pub struct RawNotification {
    pub channel_key: String,
    pub provider_ref: String,
    pub kind: i64,
    /// The query string exactly as received (it carries no secret: the signature is a digest).
    pub query: String,
}

/// What the notification means for a payment. `None`: a kind paygate cannot apply yet.
#[derive(Debug, Clone)]
pub struct PaymentNotice {
    pub payment_id: String,
    pub outcome: PaymentOutcome,
    pub test: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The payment moved; the event records it.
    Changed { payment: Box<Payment>, event_id: i64 },
    /// A valid notification that changes nothing (late or replayed after the payment moved on).
    Unchanged,
    /// The same notification was applied before.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    #[error("stored, but this notification type is not applied yet")]
    Deferred,
    #[error("no payment {0} on this channel")]
    UnknownPayment(String),
    #[error("the payment changed concurrently; retry")]
    Concurrent,
    #[error(transparent)]
    Payment(#[from] PaymentError),
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
const OUTCOME_DEFERRED: &str = "deferred";
const OUTCOME_UNMATCHED: &str = "unmatched";

/// Stores `raw` and applies `notice` atomically. Deferred and unmatched notifications are stored
/// (so nothing is lost) but answered as errors, so the provider retries them later.
pub async fn ingest(
    db: &Db,
    raw: &RawNotification,
    notice: Option<&PaymentNotice>,
) -> Result<Applied, NotificationError> {
    let mut tx = db.pool().begin().await?;
    if record_delivery(&mut tx, raw).await? {
        tx.commit().await?;
        return Ok(Applied::Duplicate);
    }
    let Some(notice) = notice else {
        set_outcome(&mut tx, raw, OUTCOME_DEFERRED, None).await?;
        tx.commit().await?;
        return Err(NotificationError::Deferred);
    };
    let result = apply(&mut tx, raw, notice).await;
    let outcome = match &result {
        Ok(_) => OUTCOME_APPLIED,
        Err(NotificationError::UnknownPayment(_)) => OUTCOME_UNMATCHED,
        Err(_) => return result, // rolled back on drop
    };
    set_outcome(&mut tx, raw, outcome, Some(&notice.payment_id)).await?;
    tx.commit().await?;
    result
}

/// Inserts the raw row or counts a repeat delivery. True when it was already applied.
async fn record_delivery(conn: &mut AnyConnection, raw: &RawNotification) -> Result<bool, NotificationError> {
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO pingbacks (pingback_id, channel_key, ref, type, query, outcome, received_at, last_seen_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (channel_key, ref, type) DO NOTHING",
    )
    .bind(format!("pb_{}", ulid::Ulid::new()))
    .bind(&raw.channel_key)
    .bind(&raw.provider_ref)
    .bind(raw.kind)
    .bind(&raw.query)
    .bind("received")
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(false);
    }
    let row = sqlx::query(
        "UPDATE pingbacks SET deliveries = deliveries + 1, last_seen_at = $1 \
         WHERE channel_key = $2 AND ref = $3 AND type = $4 RETURNING outcome",
    )
    .bind(now)
    .bind(&raw.channel_key)
    .bind(&raw.provider_ref)
    .bind(raw.kind)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get::<String, _>("outcome")? == OUTCOME_APPLIED)
}

async fn set_outcome(
    conn: &mut AnyConnection,
    raw: &RawNotification,
    outcome: &str,
    payment_id: Option<&str>,
) -> Result<(), NotificationError> {
    sqlx::query("UPDATE pingbacks SET outcome = $1, payment_id = $2 WHERE channel_key = $3 AND ref = $4 AND type = $5")
        .bind(outcome)
        .bind(payment_id)
        .bind(&raw.channel_key)
        .bind(&raw.provider_ref)
        .bind(raw.kind)
        .execute(conn)
        .await?;
    Ok(())
}

async fn apply(
    conn: &mut AnyConnection,
    raw: &RawNotification,
    notice: &PaymentNotice,
) -> Result<Applied, NotificationError> {
    let Some(current) = repo::get_in_tx(conn, &notice.payment_id).await? else {
        return Err(NotificationError::UnknownPayment(notice.payment_id.clone()));
    };
    // A pingback signed with one channel's secret may only touch that channel's payments.
    if current.channel_key != raw.channel_key {
        return Err(NotificationError::UnknownPayment(notice.payment_id.clone()));
    }
    let Some(next) = next_status(current.status, notice.outcome) else {
        tracing::info!(
            payment_id = %current.payment_id, status = %current.status, outcome = ?notice.outcome,
            "notification changes nothing"
        );
        return Ok(Applied::Unchanged);
    };
    let now = now_ms();
    let mut updated = current.clone();
    updated.status = next;
    updated.updated_at = now;
    updated.test = notice.test;
    match notice.outcome {
        PaymentOutcome::Completed | PaymentOutcome::ReviewAccepted => {
            updated.provider_ref = Some(raw.provider_ref.clone());
            updated.paid_at = Some(now);
        }
        PaymentOutcome::ReviewStarted => updated.provider_ref = Some(raw.provider_ref.clone()),
        PaymentOutcome::Declined => updated.failed_at = Some(now),
    }
    // The row was read in this transaction; a concurrent writer that got there first makes the
    // compare-and-set fail, and the provider's retry will see the new state.
    if !repo::update_status(conn, current.status, &updated).await? {
        return Err(NotificationError::Concurrent);
    }
    let event_id = events::append(conn, &updated, notice.outcome.event_kind()).await?;
    Ok(Applied::Changed { payment: Box::new(updated), event_id })
}
