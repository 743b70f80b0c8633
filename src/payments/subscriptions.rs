//! Subscriptions: a subscription checkout starts one; renewals (new refs on type 0 pingbacks)
//! create new payments linked to it; provider notifications end it.

use serde::Serialize;
use sqlx::AnyConnection;

use super::{
    Payment, PaymentError,
    event_log::{EventDetail, EventKind},
};
use crate::store::{Db, Flag, UnixMs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SubscriptionStatus {
    Pending,
    Active,
    Cancelled,
    Expired,
    PaymentFailed,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Active => "ACTIVE",
            Self::Cancelled => "CANCELLED",
            Self::Expired => "EXPIRED",
            Self::PaymentFailed => "PAYMENT_FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Active, Self::Cancelled, Self::Expired, Self::PaymentFailed]
            .into_iter()
            .find(|v| v.as_str() == s)
    }

    /// Ended subscriptions do not come back.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Cancelled | Self::Expired | Self::PaymentFailed)
    }
}

/// How a subscription ended, as the provider reported it (Paymentwall types 12, 13, 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionEnd {
    Cancelled,
    Expired,
    PaymentFailed,
}

impl SubscriptionEnd {
    pub fn status(self) -> SubscriptionStatus {
        match self {
            Self::Cancelled => SubscriptionStatus::Cancelled,
            Self::Expired => SubscriptionStatus::Expired,
            Self::PaymentFailed => SubscriptionStatus::PaymentFailed,
        }
    }

    pub fn event_kind(self) -> EventKind {
        match self {
            Self::Cancelled => EventKind::SubscriptionCancelled,
            Self::Expired => EventKind::SubscriptionExpired,
            Self::PaymentFailed => EventKind::SubscriptionPaymentFailed,
        }
    }
}

/// The subscription once its first payment is paid: one waiting for it starts (`None`: no change).
pub fn activated(sub: &Subscription, now: i64) -> Option<Subscription> {
    (sub.status == SubscriptionStatus::Pending).then(|| Subscription {
        status: SubscriptionStatus::Active,
        updated_at: now,
        ..sub.clone()
    })
}

/// The subscription after one more payment: counted; a live one is ACTIVE, an ended one stays ended.
pub fn renewed(sub: &Subscription, now: i64) -> Subscription {
    Subscription {
        renewals: sub.renewals + 1,
        status: if sub.status.is_final() { sub.status } else { SubscriptionStatus::Active },
        updated_at: now,
        ..sub.clone()
    }
}

/// The subscription after the provider ended it; one that already ended stays as it ended (`None`).
pub fn ended(sub: &Subscription, end: SubscriptionEnd, now: i64) -> Option<Subscription> {
    (!sub.status.is_final()).then(|| Subscription {
        status: end.status(),
        ended_at: Some(now),
        updated_at: now,
        ..sub.clone()
    })
}

/// What CancelSubscription does with the subscription as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelStep {
    /// Ended, or its cancel already asked: answer with it as it is (asking again is harmless).
    Answer,
    /// Ask the provider to stop billing.
    Ask,
}

pub fn cancel_step(sub: &Subscription) -> CancelStep {
    if sub.status.is_final() || sub.cancel_requested_at.is_some() { CancelStep::Answer } else { CancelStep::Ask }
}

/// Only billing that started can be stopped: the provider must have reported the first payment.
pub fn check_stoppable(initial: &Payment) -> Result<(), PaymentError> {
    match initial.provider_ref {
        Some(_) => Ok(()),
        None => {
            Err(PaymentError::NotCancellable("the subscription was never paid; there is no billing to stop".into()))
        }
    }
}

pub const PERIOD_TYPES: [&str; 4] = ["day", "week", "month", "year"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subscription {
    pub subscription_id: String,
    pub merchant_id: String,
    pub channel_key: String,
    pub initial_payment_id: String,
    pub period_length: i64,
    pub period_type: String,
    pub recurring: bool,
    pub status: SubscriptionStatus,
    pub renewals: i64,
    pub cancel_requested_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "subscription_id, merchant_id, channel_key, initial_payment_id, period_length, period_type, \
    recurring, status, renewals, cancel_requested_at, ended_at, created_at, updated_at";

pub async fn insert(conn: &mut AnyConnection, s: &Subscription) -> Result<(), PaymentError> {
    sqlx::query(&format!(
        "INSERT INTO subscriptions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .bind(&s.subscription_id)
    .bind(&s.merchant_id)
    .bind(&s.channel_key)
    .bind(&s.initial_payment_id)
    .bind(s.period_length)
    .bind(&s.period_type)
    .bind(Flag(s.recurring))
    .bind(s.status.as_str())
    .bind(s.renewals)
    .bind(s.cancel_requested_at.map(UnixMs))
    .bind(s.ended_at.map(UnixMs))
    .bind(UnixMs(s.created_at))
    .bind(UnixMs(s.updated_at))
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes the mutable fields if the row still has `previous`'s status and renewal count. A
/// cancel request, once recorded, stays (a writer holding an older copy cannot clear it).
pub async fn update(conn: &mut AnyConnection, previous: &Subscription, s: &Subscription) -> Result<bool, PaymentError> {
    let done = sqlx::query(
        "UPDATE subscriptions SET status = $1, renewals = $2, cancel_requested_at = COALESCE(cancel_requested_at, $3), \
         ended_at = $4, updated_at = $5 WHERE subscription_id = $6 AND status = $7 AND renewals = $8",
    )
    .bind(s.status.as_str())
    .bind(s.renewals)
    .bind(s.cancel_requested_at)
    .bind(s.ended_at)
    .bind(s.updated_at)
    .bind(&s.subscription_id)
    .bind(previous.status.as_str())
    .bind(previous.renewals)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(conn: &mut AnyConnection, subscription_id: &str) -> Result<Option<Subscription>, PaymentError> {
    let sql = format!("SELECT {COLUMNS} FROM subscriptions WHERE subscription_id = $1");
    let row = sqlx::query_as::<_, SubscriptionRow>(&sql).bind(subscription_id).fetch_optional(conn).await?;
    row.map(Subscription::try_from).transpose()
}

/// A subscription of `merchant_id` or one of its sub-merchants.
pub async fn get_in_scope(db: &Db, merchant_id: &str, subscription_id: &str) -> Result<Subscription, PaymentError> {
    let row = sqlx::query_as::<_, SubscriptionRow>(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE subscription_id = $2 AND merchant_id IN \
         (SELECT merchant_id FROM merchants WHERE merchant_id = $1 OR parent_id = $1)"
    ))
    .bind(merchant_id)
    .bind(subscription_id)
    .fetch_optional(db.pool())
    .await?;
    row.map(Subscription::try_from).transpose()?.ok_or(PaymentError::NotFound)
}

/// A `subscriptions` row as stored.
#[derive(sqlx::FromRow)]
struct SubscriptionRow {
    subscription_id: String,
    merchant_id: String,
    channel_key: String,
    initial_payment_id: String,
    period_length: i64,
    period_type: String,
    recurring: Flag,
    status: String,
    renewals: i64,
    cancel_requested_at: Option<UnixMs>,
    ended_at: Option<UnixMs>,
    created_at: UnixMs,
    updated_at: UnixMs,
}

impl TryFrom<SubscriptionRow> for Subscription {
    type Error = PaymentError;

    fn try_from(row: SubscriptionRow) -> Result<Self, PaymentError> {
        let status = SubscriptionStatus::parse(&row.status)
            .ok_or_else(|| PaymentError::Corrupt(format!("subscriptions.status: unknown {:?}", row.status)))?;
        Ok(Subscription {
            subscription_id: row.subscription_id,
            merchant_id: row.merchant_id,
            channel_key: row.channel_key,
            initial_payment_id: row.initial_payment_id,
            period_length: row.period_length,
            period_type: row.period_type,
            recurring: row.recurring.into(),
            status,
            renewals: row.renewals,
            cancel_requested_at: row.cancel_requested_at.map(i64::from),
            ended_at: row.ended_at.map(i64::from),
            created_at: row.created_at.into(),
            updated_at: row.updated_at.into(),
        })
    }
}

/// CancelSubscription: asks the provider to stop recurring billing. The subscription reads
/// CANCELLED when the provider confirms (Paymentwall type 12); until then `cancel_requested_at`
/// says it was asked. Asking again is harmless.
///
/// One ticket and one `subscription.cancel_requested` event whatever the concurrency: a caller
/// first claims the send (`cancel_ticket_started_at`, compare-and-set); the others wait for its
/// outcome (up to `lease_ms`, after which a claim counts as a dead worker's and may be taken).
/// A ticket that was not accepted clears the claim, so a later call tries again.
pub async fn cancel(
    db: &Db,
    channels: &crate::channels::Channels,
    providers: &super::Providers,
    caller: &crate::merchants::Caller,
    subscription_id: &str,
    reason: &str,
    lease_ms: i64,
) -> Result<Subscription, PaymentError> {
    use crate::{
        payments::repo::{self, Lookup},
        store::now_ms,
    };
    let give_up_at = now_ms() + lease_ms;
    let (initial, claim) = loop {
        let sub = get_in_scope(db, &caller.merchant_id, subscription_id).await?;
        if cancel_step(&sub) == CancelStep::Answer {
            return Ok(sub);
        }
        let initial = repo::get(db, &caller.merchant_id, Lookup::PaymentId(&sub.initial_payment_id)).await?;
        check_stoppable(&initial)?;
        let now = now_ms();
        if claim_cancel_ticket(db, subscription_id, now, now - lease_ms).await? {
            break (initial, now);
        }
        if now >= give_up_at {
            return Err(PaymentError::Concurrent);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let channel = channels.for_caller(caller, &initial.channel_key).await?;
    if let Err(e) = providers.for_channel(&channel).stop_recurring(&channel, &initial, reason).await {
        release_cancel_ticket(db, subscription_id, claim).await;
        return Err(e.into());
    }
    record_cancel_request(db, subscription_id, &initial.payment_id).await
}

/// The ticket is out: records it, and its event, once (retrying the compare-and-set on the payment
/// a pingback may race).
async fn record_cancel_request(
    db: &Db,
    subscription_id: &str,
    initial_payment_id: &str,
) -> Result<Subscription, PaymentError> {
    use crate::{payments::repo, store::now_ms};
    for _ in 0..16 {
        let mut tx = db.pool().begin().await?;
        let now = now_ms();
        let recorded = sqlx::query(
            "UPDATE subscriptions SET cancel_requested_at = $1, cancel_ticket_started_at = NULL, updated_at = $1 \
             WHERE subscription_id = $2 AND cancel_requested_at IS NULL",
        )
        .bind(now)
        .bind(subscription_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let requested = get(&mut tx, subscription_id).await?.ok_or(PaymentError::NotFound)?;
        if recorded {
            // Writing the payment row orders this event after (or before) any pingback on the payment.
            let payment = repo::get_in_tx(&mut tx, initial_payment_id).await?.ok_or(PaymentError::NotFound)?;
            let payment = payment.next_version(now);
            if !repo::update(&mut tx, &payment).await? {
                continue;
            }
            super::record(
                &mut tx,
                &payment,
                EventKind::SubscriptionCancelRequested,
                Some(&EventDetail::subscription(&requested)),
            )
            .await?;
        }
        tx.commit().await?;
        db.signal_commit();
        return Ok(requested);
    }
    Err(PaymentError::Concurrent)
}

/// Claims the stop-recurring send; a claim started before `stale_before` is a dead worker's.
async fn claim_cancel_ticket(
    db: &Db,
    subscription_id: &str,
    now: i64,
    stale_before: i64,
) -> Result<bool, PaymentError> {
    let done = sqlx::query(
        "UPDATE subscriptions SET cancel_ticket_started_at = $1 WHERE subscription_id = $2 \
         AND cancel_requested_at IS NULL AND status IN ('PENDING', 'ACTIVE') \
         AND (cancel_ticket_started_at IS NULL OR cancel_ticket_started_at < $3)",
    )
    .bind(now)
    .bind(subscription_id)
    .bind(stale_before)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The ticket was not accepted: the next call may try again (the claim also runs out on its own).
async fn release_cancel_ticket(db: &Db, subscription_id: &str, claim: i64) {
    let result = sqlx::query(
        "UPDATE subscriptions SET cancel_ticket_started_at = NULL WHERE subscription_id = $1 \
         AND cancel_ticket_started_at = $2",
    )
    .bind(subscription_id)
    .bind(claim)
    .execute(db.pool())
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, subscription_id, "could not release a cancel claim; it runs out on its own");
    }
}

#[cfg(test)]
mod tests {
    use super::{SubscriptionStatus as S, *};
    use crate::payments::{
        PaymentStatus,
        fixtures::{payment, subscription, unpaid},
    };

    #[test]
    fn the_first_payment_starts_only_a_waiting_subscription() {
        let started = activated(&subscription(S::Pending, 0), 7).expect("a pending subscription starts");
        assert_eq!((started.status, started.renewals, started.updated_at), (S::Active, 0, 7));
        for status in [S::Active, S::Cancelled, S::Expired, S::PaymentFailed] {
            assert_eq!(activated(&subscription(status, 0), 7), None, "{status:?}");
        }
    }

    #[test]
    fn a_renewal_counts_and_never_revives_an_ended_subscription() {
        let live = renewed(&subscription(S::Active, 2), 9);
        assert_eq!((live.status, live.renewals, live.updated_at), (S::Active, 3, 9));
        assert_eq!(renewed(&subscription(S::Pending, 0), 9).status, S::Active);
        let late = renewed(&subscription(S::Cancelled, 4), 9);
        assert_eq!((late.status, late.renewals), (S::Cancelled, 5), "counted, still cancelled");
    }

    #[test]
    fn an_end_happens_once() {
        let gone = ended(&subscription(S::Active, 1), SubscriptionEnd::Expired, 11).expect("a live one ends");
        assert_eq!((gone.status, gone.ended_at, gone.renewals), (S::Expired, Some(11), 1));
        for status in [S::Cancelled, S::Expired, S::PaymentFailed] {
            assert_eq!(ended(&subscription(status, 1), SubscriptionEnd::Cancelled, 11), None, "{status:?}");
        }
    }

    #[test]
    fn a_cancel_asks_the_provider_once_and_only_for_started_billing() {
        assert_eq!(cancel_step(&subscription(S::Active, 0)), CancelStep::Ask);
        assert_eq!(cancel_step(&subscription(S::Pending, 0)), CancelStep::Ask);
        assert_eq!(cancel_step(&subscription(S::Expired, 0)), CancelStep::Answer);
        let asked = Subscription { cancel_requested_at: Some(5), ..subscription(S::Active, 0) };
        assert_eq!(cancel_step(&asked), CancelStep::Answer, "asking again is harmless");
        assert!(check_stoppable(&payment(PaymentStatus::Paid, 100, 0, 0)).is_ok());
        assert!(matches!(check_stoppable(&unpaid(100)), Err(PaymentError::NotCancellable(_))));
    }
}
