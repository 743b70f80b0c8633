//! RefundPayment, and what a provider's reversal does to a payment.
//!
//! A refund is reserved before the provider is asked: the requested amount joins the payment's
//! `pending_cancel_amount` in a compare-and-set on the payment's version, so concurrent refunds of
//! one payment are serialized and can never together exceed what was paid. Then the ticket goes
//! out. Accepted: the payment shows CANCEL_PENDING until the provider confirms. Refused or
//! unreachable: the reservation is released and the cancellation is recorded as FAILED; the
//! payment's status never moved, so nothing a subscriber saw goes backwards.

use sqlx::AnyConnection;

use super::{
    Payment, PaymentError, PaymentStatus,
    cancellations::{self, Cancellation, CancellationStatus, Trigger, new_cancellation_id},
    idempotency::{self, Claim, Key},
    repo::{self, Lookup},
};
use crate::{
    channels::Channels,
    error::Violations,
    events,
    merchants::Caller,
    providers::{self, ProviderError},
    store::{Db, StoreError, now_ms},
};

pub const MAX_REASON: usize = 255;
const CAS_ATTEMPTS: usize = 16;

#[derive(Debug, Clone, Default)]
pub struct RefundRequest {
    pub payment_id: String,
    /// `None`: everything still refundable.
    pub amount_minor: Option<i64>,
    pub reason: String,
    /// Refuse unless exactly this much is refundable now (guards against acting on a stale read).
    pub expected_refundable_amount: Option<i64>,
    pub idempotency_key: String,
    /// Fingerprint of the request for the idempotency check.
    pub request_hash: String,
}

pub fn validate(req: &RefundRequest) -> Violations {
    let mut v = Violations::default();
    if req.payment_id.is_empty() {
        v.add("payment_id", "is required");
    }
    if req.reason.trim().is_empty() {
        v.add("reason", "is required");
    } else if req.reason.chars().count() > MAX_REASON || req.reason.chars().any(char::is_control) {
        v.add("reason", format!("must be at most {MAX_REASON} printable characters"));
    }
    if req.amount_minor.is_some_and(|a| a <= 0) {
        v.add("amount.amount_minor", "must be greater than zero");
    }
    if req.expected_refundable_amount.is_some_and(|a| a < 0) {
        v.add("expected_refundable_amount", "must not be negative");
    }
    if req.idempotency_key.len() > idempotency::MAX_KEY_LEN {
        v.add("idempotency_key", format!("must be at most {} characters", idempotency::MAX_KEY_LEN));
    }
    v
}

pub async fn refund(
    db: &Db,
    channels: &Channels,
    caller: &Caller,
    req: RefundRequest,
    lease_ms: i64,
) -> Result<Cancellation, PaymentError> {
    validate(&req).check()?;
    let key = (!req.idempotency_key.is_empty()).then(|| Key {
        merchant_id: &caller.merchant_id,
        operation: "RefundPayment",
        key: &req.idempotency_key,
    });
    let claim = match &key {
        Some(key) => idempotency::claim(db, key, &req.request_hash, lease_ms).await?,
        None => Claim::New,
    };
    let result = match claim {
        Claim::Done(cancellation_id) => read(db, caller, &cancellation_id).await,
        Claim::TakenOver(Some(cancellation_id)) => resume(db, caller, &cancellation_id, key.as_ref()).await,
        Claim::New | Claim::TakenOver(None) => request(db, channels, caller, &req, key.as_ref()).await,
    };
    if result.is_err()
        && let Some(key) = &key
    {
        idempotency::release(db, key).await;
    }
    result
}

/// A cancellation the caller may see.
async fn read(db: &Db, caller: &Caller, cancellation_id: &str) -> Result<Cancellation, PaymentError> {
    let mut conn = db.pool().acquire().await.map_err(StoreError::from)?;
    let c = cancellations::get(&mut conn, cancellation_id).await?.ok_or(PaymentError::NotFound)?;
    if caller.acts_for(&c.merchant_id) { Ok(c) } else { Err(PaymentError::NotFound) }
}

/// A retry after the first attempt died mid-way: its ticket may have gone out, so none is sent
/// again; the cancellation stands as requested and the provider's answer settles it.
async fn resume(
    db: &Db,
    caller: &Caller,
    cancellation_id: &str,
    key: Option<&Key<'_>>,
) -> Result<Cancellation, PaymentError> {
    let c = read(db, caller, cancellation_id).await?;
    if c.status == CancellationStatus::Requested {
        mark_pending(db, &c, key).await?;
    } else if let Some(key) = key {
        let mut conn = db.pool().acquire().await.map_err(StoreError::from)?;
        idempotency::finish(&mut conn, key).await?;
    }
    read(db, caller, cancellation_id).await
}

async fn request(
    db: &Db,
    channels: &Channels,
    caller: &Caller,
    req: &RefundRequest,
    key: Option<&Key<'_>>,
) -> Result<Cancellation, PaymentError> {
    let payment = repo::get(db, &caller.merchant_id, Lookup::PaymentId(&req.payment_id)).await?;
    let channel = channels.for_caller(caller, &payment.channel_key).await?;
    let (payment, cancellation) = reserve(db, &payment.payment_id, req, key).await?;
    let amount = cancellation.amount_minor.unwrap_or_default();
    let provider = providers::for_channel(&channel);
    match provider.request_refund(&channel, &payment, amount, req.reason.trim()).await {
        Ok(()) => {
            mark_pending(db, &cancellation, key).await?;
            tracing::info!(payment_id = %payment.payment_id, cancellation_id = %cancellation.cancellation_id, amount, "refund requested");
            let mut conn = db.pool().acquire().await.map_err(StoreError::from)?;
            cancellations::get(&mut conn, &cancellation.cancellation_id).await?.ok_or(PaymentError::NotFound)
        }
        Err(ProviderError::BadAnswer(detail)) => {
            // The ticket may have been accepted: releasing the amount could refund it twice. It
            // stays requested; the provider's notification (or the sweep) settles it.
            tracing::warn!(payment_id = %payment.payment_id, %detail, "refund ticket outcome unknown; kept as requested");
            mark_pending(db, &cancellation, key).await?;
            let mut conn = db.pool().acquire().await.map_err(StoreError::from)?;
            cancellations::get(&mut conn, &cancellation.cancellation_id).await?.ok_or(PaymentError::NotFound)
        }
        Err(problem) => {
            tracing::warn!(payment_id = %payment.payment_id, %problem, "refund ticket not accepted");
            release(db, &cancellation, &problem.to_string()).await?;
            Err(problem.into())
        }
    }
}

/// Adds the refund to the payment's pending amount and records the cancellation, atomically.
async fn reserve(
    db: &Db,
    payment_id: &str,
    req: &RefundRequest,
    key: Option<&Key<'_>>,
) -> Result<(Payment, Cancellation), PaymentError> {
    for _ in 0..CAS_ATTEMPTS {
        let mut tx = db.pool().begin().await.map_err(StoreError::from)?;
        let current = repo::get_in_tx(&mut tx, payment_id).await?.ok_or(PaymentError::NotFound)?;
        if !matches!(
            current.status,
            PaymentStatus::Paid | PaymentStatus::PartialCancelled | PaymentStatus::CancelPending
        ) {
            return Err(PaymentError::NotRefundable(format!(
                "the payment is {}; only a paid payment can be refunded",
                current.status
            )));
        }
        if current.provider_ref.is_none() {
            return Err(PaymentError::NotRefundable("the provider has not reported this payment's reference".into()));
        }
        let refundable = current.refundable();
        if let Some(expected) = req.expected_refundable_amount
            && expected != refundable
        {
            return Err(PaymentError::NotRefundable(format!(
                "expected_refundable_amount is {expected} but {refundable} is refundable"
            )));
        }
        if refundable <= 0 {
            return Err(PaymentError::NotRefundable("nothing is left to refund".into()));
        }
        let amount = req.amount_minor.unwrap_or(refundable);
        if amount > refundable {
            return Err(PaymentError::NotRefundable(format!(
                "amount {amount} exceeds the refundable amount {refundable}"
            )));
        }
        let now = now_ms();
        let mut next = current.next_version(now);
        next.pending_cancel_amount += amount;
        if !repo::update(&mut tx, &next).await? {
            continue; // another refund or notification got there first: read again
        }
        let cancellation = Cancellation {
            cancellation_id: new_cancellation_id(),
            payment_id: current.payment_id.clone(),
            merchant_id: current.merchant_id.clone(),
            amount_minor: Some(amount),
            reason: req.reason.trim().to_owned(),
            trigger: Trigger::MerchantRequest,
            status: CancellationStatus::Requested,
            provider_reason: None,
            failure: None,
            created_at: now,
            updated_at: now,
            completed_at: None,
        };
        cancellations::insert(&mut tx, &cancellation).await?;
        if let Some(key) = key {
            idempotency::attach(&mut tx, key, &cancellation.cancellation_id).await?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        return Ok((next, cancellation));
    }
    Err(PaymentError::Concurrent)
}

/// The provider accepted the ticket: the payment shows CANCEL_PENDING (unless the provider's
/// confirmation already arrived).
async fn mark_pending(db: &Db, cancellation: &Cancellation, key: Option<&Key<'_>>) -> Result<(), PaymentError> {
    for _ in 0..CAS_ATTEMPTS {
        let mut tx = db.pool().begin().await.map_err(StoreError::from)?;
        let current = repo::get_in_tx(&mut tx, &cancellation.payment_id).await?.ok_or(PaymentError::NotFound)?;
        let still_requested = cancellations::get(&mut tx, &cancellation.cancellation_id)
            .await?
            .is_some_and(|c| c.status == CancellationStatus::Requested);
        if still_requested {
            cancellations::accepted(&mut tx, &cancellation.cancellation_id, now_ms()).await?;
        }
        if still_requested && current.status != PaymentStatus::CancelPending {
            let mut next = current.next_version(now_ms());
            next.status = PaymentStatus::CancelPending;
            if !repo::update(&mut tx, &next).await? {
                continue;
            }
            events::append(&mut tx, &next, "payment.cancel_pending", Some(&events::detail(cancellation))).await?;
        }
        if let Some(key) = key {
            idempotency::finish(&mut tx, key).await?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        db.signal_commit();
        return Ok(());
    }
    Err(PaymentError::Concurrent)
}

/// The ticket was not accepted: the cancellation fails and its amount is refundable again.
async fn release(db: &Db, cancellation: &Cancellation, failure: &str) -> Result<(), PaymentError> {
    for _ in 0..CAS_ATTEMPTS {
        let mut tx = db.pool().begin().await.map_err(StoreError::from)?;
        let current = repo::get_in_tx(&mut tx, &cancellation.payment_id).await?.ok_or(PaymentError::NotFound)?;
        let now = now_ms();
        let failed = Cancellation {
            status: CancellationStatus::Failed,
            failure: Some(failure.to_owned()),
            updated_at: now,
            completed_at: Some(now),
            ..cancellation.clone()
        };
        if !cancellations::finish(&mut tx, &failed).await? {
            return Ok(()); // settled meanwhile by the provider's own notification
        }
        let mut next = current.next_version(now);
        next.pending_cancel_amount -= cancellation.amount_minor.unwrap_or_default();
        // Waiting for nothing any more: a payment partly refunded meanwhile shows it.
        let settled =
            next.pending_cancel_amount == 0 && next.status == PaymentStatus::CancelPending && next.cancelled_amount > 0;
        if settled {
            next.status = PaymentStatus::PartialCancelled;
        }
        if !repo::update(&mut tx, &next).await? {
            continue;
        }
        if settled {
            events::append(&mut tx, &next, "payment.partially_cancelled", Some(&events::detail(&failed))).await?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        if settled {
            db.signal_commit();
        }
        return Ok(());
    }
    Err(PaymentError::Concurrent)
}

/// Paymentwall's reason codes on a negative (type 2) pingback.
fn trigger_for(reason: u32) -> Trigger {
    match reason {
        1 => Trigger::Chargeback,
        _ => Trigger::Provider,
    }
}

/// What a reversal did: the payment after it, the event kind, and the cancellation it recorded
/// or completed. `None`: nothing to do (the payment is already fully reversed, or never paid).
pub type Reversal = Option<(Payment, &'static str, Cancellation)>;

/// Applies a provider reversal (Paymentwall type 2) inside the caller's transaction.
///
/// With a refund requested by the merchant pending, a refund reason (9 full, 10 partial) confirms
/// the oldest request with its amount. Anything else (a chargeback, fraud, or a refund nobody asked
/// paygate for) reverses everything not yet reversed; pending requests are then moot and fail.
/// A partial reversal nobody asked for has no amount (the pingback carries none).
pub async fn apply_reversal(
    conn: &mut AnyConnection,
    current: &Payment,
    reason: u32,
) -> Result<Reversal, PaymentError> {
    use PaymentStatus as S;
    if matches!(current.status, S::Cancelled | S::Failed) {
        return Ok(None);
    }
    let now = now_ms();
    let pending = cancellations::requested(conn, &current.payment_id).await?;
    let pending: Vec<&Cancellation> = pending.iter().collect();
    let mut next = current.next_version(now);
    let completed;
    if matches!(reason, 9 | 10) && !pending.is_empty() {
        // Reason 10 confirms one request (accepted tickets first); reason 9 says everything
        // requested was refunded.
        let confirmed = if reason == 9 { &pending[..] } else { &pending[..1] };
        let mut last = None;
        for request in confirmed {
            let amount = request.amount_minor.unwrap_or_default();
            let done = Cancellation {
                status: CancellationStatus::Succeeded,
                provider_reason: Some(i64::from(reason)),
                updated_at: now,
                completed_at: Some(now),
                ..(*request).clone()
            };
            cancellations::finish(conn, &done).await?;
            next.pending_cancel_amount -= amount;
            next.cancelled_amount += amount;
            last = Some(done);
        }
        completed = last.expect("at least one request confirmed");
    } else if reason == 10 && matches!(current.status, S::Paid | S::PartialCancelled | S::CancelPending) {
        completed = new_reversal(current, None, reason, now);
        cancellations::insert(conn, &completed).await?;
    } else {
        // A whole reversal: everything not yet reversed goes, including what was never marked paid
        // (a reversal that overtook its payment's completion).
        for request in &pending {
            let moot = Cancellation {
                status: CancellationStatus::Failed,
                failure: Some("superseded by a reversal from the provider".into()),
                updated_at: now,
                completed_at: Some(now),
                ..(*request).clone()
            };
            cancellations::finish(conn, &moot).await?;
        }
        let remaining = current.amount_minor - current.cancelled_amount;
        completed = new_reversal(current, Some(remaining), reason, now);
        cancellations::insert(conn, &completed).await?;
        next.pending_cancel_amount = 0;
        next.cancelled_amount = current.amount_minor;
    }
    next.status = if next.cancelled_amount >= next.amount_minor {
        S::Cancelled
    } else if next.pending_cancel_amount > 0 {
        S::CancelPending
    } else {
        S::PartialCancelled
    };
    if next.status == S::Cancelled {
        next.cancelled_at = Some(now);
    }
    let kind = match next.status {
        S::Cancelled => "payment.cancelled",
        S::CancelPending => "payment.partially_cancelled",
        _ => "payment.partially_cancelled",
    };
    if !repo::update(conn, &next).await? {
        return Err(PaymentError::Concurrent);
    }
    Ok(Some((next, kind, completed)))
}

fn new_reversal(current: &Payment, amount: Option<i64>, reason: u32, now: i64) -> Cancellation {
    Cancellation {
        cancellation_id: new_cancellation_id(),
        payment_id: current.payment_id.clone(),
        merchant_id: current.merchant_id.clone(),
        amount_minor: amount,
        reason: reason_text(reason).to_owned(),
        trigger: trigger_for(reason),
        status: CancellationStatus::Succeeded,
        provider_reason: Some(i64::from(reason)),
        failure: None,
        created_at: now,
        updated_at: now,
        completed_at: Some(now),
    }
}

fn reason_text(reason: u32) -> &'static str {
    match reason {
        1 => "chargeback",
        2 => "credit card fraud",
        3 => "other fraud",
        4 => "bad data entry",
        5 => "fake / proxy user",
        6 => "rejected by advertiser",
        7 => "duplicate conversion",
        8 => "goodwill credit taken back",
        9 => "cancelled order (refund)",
        10 => "partially reversed transaction",
        _ => "reversed by the provider",
    }
}
