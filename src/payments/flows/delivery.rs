//! ConfirmDelivery, and the outbox that sends delivery confirmations the provider could not take.
//! A confirmation is recorded first (with its `payment.delivery_updated` event, in one
//! transaction), then sent; the record is held by its sender for `SEND_LEASE_MS`, after which the
//! outbox, on any replica, may take it over. So a crash after the commit loses nothing: the outbox
//! sends it. Read, decide (`core::delivery`), write.

use std::time::Duration;

use super::{
    idempotent,
    service::{Payments, payment_and_channel},
};
use crate::{
    channels::{Channel, Channels},
    merchants::Caller,
    payments::{
        Payment, PaymentError, ProviderError, Providers,
        core::{
            EventDetail, EventKind, Position,
            delivery::{
                Delivery, DeliveryRequest, DeliveryState, TryOutcome, after_try, automatic_digital, check_deliverable,
                new_delivery_id, recorded, validate,
            },
        },
        store::{
            cas::{Attempt, cas},
            changes, deliveries, event_log,
            idempotency::{self, Claim, Key},
            payments::{self as rows, Lookup},
        },
    },
    shutdown::Shutdown,
    store::{Db, now_ms},
};

const OPERATION: &str = "ConfirmDelivery";

/// How long a new record belongs to the request that made it (above the provider call's timeout),
/// and how long the outbox holds one it claimed.
pub const SEND_LEASE_MS: i64 = 30_000;

impl Payments {
    /// `ConfirmDelivery`: validates, claims the idempotency key, records, sends.
    pub async fn confirm_delivery(
        &self,
        caller: &Caller,
        req: DeliveryRequest,
        idempotency_key: &str,
        request_hash: &str,
    ) -> Result<Delivery, PaymentError> {
        validate(&req).check()?;
        let (req, key) = (&req, idempotent::key(caller, OPERATION, idempotency_key));
        let key = key.as_ref();
        idempotent::claimed(&self.db, key, request_hash, self.idempotency_lease_ms, |claim| async move {
            match claim {
                // Recorded before: as it stands now (the outbox sends one its first request left).
                Claim::Done(id) | Claim::TakenOver(Some(id)) => {
                    deliveries::get(&self.db, &id).await?.ok_or(PaymentError::NotFound)
                }
                Claim::New | Claim::TakenOver(None) => self.record_and_send(caller, req, key).await,
            }
        })
        .await
    }

    async fn record_and_send(
        &self,
        caller: &Caller,
        req: &DeliveryRequest,
        key: Option<&Key<'_>>,
    ) -> Result<Delivery, PaymentError> {
        // The channel first, outside the transaction (loading it needs a connection of its own;
        // SQLite's pool has one): a confirmation that cannot be sent is not recorded.
        let lookup = Lookup::PaymentId(&req.payment_id);
        let channel_key = rows::get(&self.db, &caller.merchant_id, lookup).await?.channel_key;
        let channel = &self.channels.for_caller(caller, &channel_key).await?;
        let (payment, channel, delivery) = cas(&self.db, |mut tx| async move {
            let payment = rows::get_in_scope(&mut tx, &caller.merchant_id, lookup).await?;
            check_deliverable(&payment)?;
            let channel = std::sync::Arc::clone(channel);
            let now = now_ms();
            let delivery = recorded(req, &payment, new_delivery_id(), now);
            deliveries::insert(&mut tx, &delivery, now + SEND_LEASE_MS).await?;
            let detail = EventDetail::delivery(&delivery);
            changes::record(&mut tx, &payment, EventKind::PaymentDeliveryUpdated, Some(&detail)).await?;
            if let Some(key) = key {
                idempotency::attach(&mut tx, key, &delivery.delivery_id).await?;
                idempotency::finish(&mut tx, key).await?;
            }
            Ok(Attempt::Done(tx, (payment, channel, delivery)))
        })
        .await?;
        self.db.signal_commit();
        let sent = send(&self.db, &self.providers, &channel, &payment, &delivery).await?;
        match sent.state {
            DeliveryState::Refused => Err(PaymentError::ProviderRefused(sent.last_error)),
            _ => Ok(sent),
        }
    }
}

/// One try: sends `delivery` and records how it went (a later try is the outbox's).
async fn send(
    db: &Db,
    providers: &Providers,
    channel: &Channel,
    payment: &Payment,
    delivery: &Delivery,
) -> Result<Delivery, PaymentError> {
    let outcome = match providers.for_channel(channel).confirm_delivery(channel, payment, delivery).await {
        Ok(()) => TryOutcome::Accepted,
        Err(ProviderError::Refused(words)) => TryOutcome::Refused(words),
        Err(other) => TryOutcome::Failed(other.to_string()),
    };
    let now = now_ms();
    let (next, retry_at) = after_try(delivery, outcome, now);
    match next.state {
        DeliveryState::Sent => {
            tracing::info!(delivery_id = %next.delivery_id, payment_id = %next.payment_id, "delivery confirmed to the provider")
        }
        DeliveryState::Refused => {
            tracing::warn!(delivery_id = %next.delivery_id, error = %next.last_error, "delivery refused by the provider")
        }
        DeliveryState::Pending => {
            tracing::warn!(delivery_id = %next.delivery_id, error = %next.last_error, attempts = next.attempts, "delivery not sent; will retry")
        }
    }
    deliveries::record_try(db, &next, retry_at, now).await?;
    Ok(next)
}

/// The worker that confirms digital deliveries by itself, by its cursor's name.
const AUTOMATIC: &str = "automatic_deliveries";

/// Events read per pass of the automatic confirmations.
const EVENTS_PER_PASS: u32 = 2_000;

/// Follows the event log from its cursor: each payment paid (renewals too) on a channel that
/// confirms digital delivery by itself gets one automatic confirmation (its id comes from the
/// payment's, so replicas reading the same events never make two), which the outbox then sends.
/// Nothing on the pingback's path: the log is the durable record of what was paid. Returns how
/// many were made.
pub async fn automatic_pass(db: &Db, channels: &Channels, providers: &Providers) -> Result<usize, PaymentError> {
    let now = now_ms();
    let start = event_log::head(db).await?.to_string();
    let from = deliveries::cursor(db, AUTOMATIC, &start, now).await?;
    let after: Position = from.parse().map_err(|e| PaymentError::Corrupt(format!("worker cursor {from:?}: {e}")))?;
    if !channels.any_confirming_digital_delivery().await? {
        // Nothing to confirm: the cursor jumps to the head instead of reading the log.
        if start != from {
            deliveries::advance_cursor(db, AUTOMATIC, &from, &start, now).await?;
        }
        return Ok(0);
    }
    let (events, _) = event_log::read_after(db, after, EVENTS_PER_PASS).await?;
    let Some(last) = events.last().map(|e| e.position) else { return Ok(0) };
    let mut made = 0;
    for event in events.iter().filter(|e| e.kind == EventKind::PaymentPaid) {
        let channel = match channels.unscoped(&event.payment.channel_key).await {
            Ok(channel) => channel,
            // Read again next pass: the cursor stays where it was.
            Err(e) => return Err(e.into()),
        };
        if !providers.for_channel(&channel).confirms_digital_delivery(&channel) {
            continue;
        }
        let delivery = automatic_digital(&event.payment, format!("dlv_auto_{}", event.payment.payment_id), now);
        let mut tx = db.pool().begin().await?;
        // The event carries the payment as it is now (it may have moved on since it was paid).
        let current = rows::get_in_tx(&mut tx, &event.payment.payment_id).await?;
        if let Some(payment) = current
            && deliveries::insert(&mut tx, &delivery, now).await?
        {
            let detail = EventDetail::delivery(&delivery);
            changes::record(&mut tx, &payment, EventKind::PaymentDeliveryUpdated, Some(&detail)).await?;
            made += 1;
        }
        tx.commit().await?;
    }
    if made > 0 {
        db.signal_commit();
    }
    deliveries::advance_cursor(db, AUTOMATIC, &from, &last.to_string(), now_ms()).await?;
    Ok(made)
}

/// Confirmations taken per outbox pass.
const BATCH: u32 = 50;

/// The outbox: every `interval`, sends what is due.
pub fn spawn(db: Db, channels: Channels, providers: Providers, interval: Duration, mut shutdown: Shutdown) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.signalled() => return,
            }
            if let Err(e) = automatic_pass(&db, &channels, &providers).await {
                tracing::warn!(error = %e, "automatic delivery confirmations failed; will try again");
            }
            if let Err(e) = run_once(&db, &channels, &providers).await {
                tracing::warn!(error = %e, "delivery outbox failed; will try again");
            }
        }
    });
}

/// One pass; returns how many confirmations the provider took.
pub async fn run_once(db: &Db, channels: &Channels, providers: &Providers) -> Result<usize, PaymentError> {
    let now = now_ms();
    let due = deliveries::claim_due(db, now, now + SEND_LEASE_MS, BATCH).await?;
    let mut sent = 0;
    for delivery in due {
        let Some((payment, channel)) =
            payment_and_channel(db, channels, &delivery.payment_id, "delivery outbox").await?
        else {
            continue;
        };
        if send(db, providers, &channel, &payment, &delivery).await?.state == DeliveryState::Sent {
            sent += 1;
        }
    }
    Ok(sent)
}
