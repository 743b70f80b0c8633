//! RefundPayment, and what a provider's reversal does to a payment.
//!
//! A refund is reserved before the provider is asked: the requested amount joins the payment's
//! `pending_cancel_amount` in a compare-and-set on the payment's version, so concurrent refunds of
//! one payment are serialized and can never together exceed what was paid. The reservation commits
//! with its ticket UNSENT; the ticket is marked SENDING (committed) before it leaves. So a crash at
//! any point leaves a state that says what is known, and a take-over (a retry with the same key
//! after its lease, or the sweep) acts on it: an UNSENT ticket is sent then; a SENDING one may have
//! reached the provider, so it is never sent again and becomes OUTCOME_UNKNOWN, which the sweep
//! (asking the provider) or an operator (`ResolveCancellation`) settles.
//!
//! A refund is reported accepted only when the provider accepted it: then the payment shows
//! CANCEL_PENDING until the provider confirms. Refused or unreachable: the reservation is released,
//! the cancellation is recorded as FAILED and the idempotency key is forgotten (nothing was done,
//! so a retry runs the refund again); the payment's status never moved.

use std::sync::Arc;

use super::{idempotent, service::Payments};
use crate::{
    channels::Channel,
    merchants::Caller,
    payments::{
        PaymentError, Provider, ProviderError,
        core::{
            Cancellation, EventDetail, EventKind, Payment, TicketState,
            refund::{
                RefundRequest, Release, Resolution, ResolveStep, TakeOver, after_acceptance, release_plan, reservation,
                resolve_step, take_over_action, unknown_confirmed, validate,
            },
        },
        store::{
            cancellations,
            cas::{Attempt, cas},
            changes,
            idempotency::{self, Claim, Key},
            payments::{self as rows, Lookup},
        },
    },
    store::{Db, now_ms},
};

/// The idempotency keys' operation name.
const OPERATION: &str = "RefundPayment";

/// A cancellation as answered, with its payment's currency (the amounts' unit).
#[derive(Debug, Clone)]
pub struct Refunded {
    pub cancellation: Cancellation,
    pub currency: String,
}

impl Payments {
    /// `RefundPayment`: validates, claims the idempotency key, then reserves and sends (or answers
    /// what a first attempt with the same key did).
    pub async fn refund(&self, caller: &Caller, req: RefundRequest) -> Result<Refunded, PaymentError> {
        validate(&req).check()?;
        let (req, key) = (&req, idempotent::key(caller, OPERATION, &req.idempotency_key));
        let key = key.as_ref();
        idempotent::claimed(&self.db, key, &req.request_hash, self.idempotency_lease_ms, |claim| async move {
            match claim {
                Claim::Done(cancellation_id) => answer(&self.db, caller, &cancellation_id).await,
                Claim::TakenOver(Some(cancellation_id)) => self.take_over(caller, &cancellation_id, key).await,
                Claim::New | Claim::TakenOver(None) => self.request(caller, req, key).await,
            }
        })
        .await
    }

    /// The first attempt: reserve (the one read of the payment), then send.
    async fn request(
        &self,
        caller: &Caller,
        req: &RefundRequest,
        key: Option<&Key<'_>>,
    ) -> Result<Refunded, PaymentError> {
        let (payment, channel, cancellation) = self.reserve(caller, req, key).await?;
        let provider = self.providers.for_channel(&channel);
        let ticket = Ticket { provider, channel: &channel, payment: &payment, cancellation: &cancellation };
        let cancellation = send(&self.db, ticket, key).await?;
        Ok(Refunded { cancellation, currency: payment.currency })
    }

    /// Adds the refund to the payment's pending amount and records the cancellation (ticket UNSENT),
    /// atomically. The payment is the caller's; its channel is looked up before anything is written,
    /// so a refund that cannot be sent changes nothing.
    async fn reserve(
        &self,
        caller: &Caller,
        req: &RefundRequest,
        key: Option<&Key<'_>>,
    ) -> Result<(Payment, Arc<Channel>, Cancellation), PaymentError> {
        // The channel first, outside the transaction: loading it (a cache miss) needs a connection
        // of its own, and SQLite's pool has one, held by the transaction. A payment's channel never
        // changes, so the read before is as good as the one inside.
        let lookup = Lookup::PaymentId(&req.payment_id);
        let channel_key = rows::get(&self.db, &caller.merchant_id, lookup).await?.channel_key;
        let channel = &self.channels.for_caller(caller, &channel_key).await?;
        cas(&self.db, |mut tx| async move {
            let current = rows::get_in_scope(&mut tx, &caller.merchant_id, lookup).await?;
            let (next, cancellation) = reservation(&current, req, now_ms())?;
            let channel = Arc::clone(channel);
            if !rows::update(&mut tx, &next).await? {
                return Ok(Attempt::Conflict); // another refund or notification got there first
            }
            cancellations::insert(&mut tx, &cancellation).await?;
            if let Some(key) = key {
                idempotency::attach(&mut tx, key, &cancellation.cancellation_id).await?;
            }
            Ok(Attempt::Done(tx, (next, channel, cancellation)))
        })
        .await
    }

    /// A retry with the same key after the first attempt stopped mid-way.
    async fn take_over(
        &self,
        caller: &Caller,
        cancellation_id: &str,
        key: Option<&Key<'_>>,
    ) -> Result<Refunded, PaymentError> {
        let db = &self.db;
        let c = read(db, caller, cancellation_id).await?;
        match take_over_action(&c, now_ms(), self.idempotency_lease_ms) {
            TakeOver::Send => {
                let payment = rows::get(db, &caller.merchant_id, Lookup::PaymentId(&c.payment_id)).await?;
                let channel = self.channels.for_caller(caller, &payment.channel_key).await?;
                let provider = self.providers.for_channel(&channel);
                let ticket = Ticket { provider, channel: &channel, payment: &payment, cancellation: &c };
                let cancellation = send(db, ticket, key).await?;
                return Ok(Refunded { cancellation, currency: payment.currency });
            }
            TakeOver::MarkUnknown => mark_unknown(db, &c, key).await?,
            TakeOver::FinishAccepted => accept(db, &c, key, None).await?,
            TakeOver::InFlight => return Err(PaymentError::IdempotencyInFlight),
            TakeOver::Answer => {
                if let Some(key) = key {
                    let mut conn = db.pool().acquire().await?;
                    idempotency::finish(&mut conn, key).await?;
                }
            }
        }
        answer(db, caller, cancellation_id).await
    }
}

/// A reserved request's ticket, and where it goes.
pub struct Ticket<'a> {
    pub provider: &'a dyn Provider,
    pub channel: &'a Channel,
    /// The payment as the reservation left it.
    pub payment: &'a Payment,
    pub cancellation: &'a Cancellation,
}

/// Sends the ticket of a reserved request (ticket UNSENT) and records what came of it. Used by
/// the first attempt, by a take-over and by the sweep; the UNSENT -> SENDING compare-and-set
/// makes sure only one of them sends it.
pub async fn send(db: &Db, ticket: Ticket<'_>, key: Option<&Key<'_>>) -> Result<Cancellation, PaymentError> {
    let Ticket { provider, channel, payment, cancellation } = ticket;
    let id = &cancellation.cancellation_id;
    {
        let mut conn = db.pool().acquire().await?;
        let started =
            cancellations::move_ticket(&mut conn, id, &[TicketState::Unsent], TicketState::Sending, now_ms()).await?;
        if !started {
            // Someone else sends it, or the request ended meanwhile: report what is there.
            return get(db, id).await;
        }
    }
    let amount = cancellation.amount_minor.unwrap_or_default();
    match provider.request_refund(channel, payment, amount, &cancellation.reason).await {
        Ok(()) => {
            accept(db, cancellation, key, Some(payment.clone())).await?;
            metrics::counter!("paygate_refund_tickets_total", "outcome" => "accepted").increment(1);
            tracing::info!(payment_id = %payment.payment_id, cancellation_id = %id, amount = amount.0, "refund requested");
        }
        Err(ProviderError::BadAnswer(detail)) => {
            // The ticket may have been accepted: releasing the amount could refund it twice, and
            // sending it again could too. Its outcome is unknown until the provider or an operator says.
            tracing::warn!(payment_id = %payment.payment_id, cancellation_id = %id, %detail, "refund ticket outcome unknown");
            mark_unknown(db, cancellation, key).await?;
        }
        Err(problem) => {
            tracing::warn!(payment_id = %payment.payment_id, cancellation_id = %id, %problem, "refund ticket not accepted");
            let outcome = if matches!(problem, ProviderError::Refused(_)) { "refused" } else { "unreachable" };
            metrics::counter!("paygate_refund_tickets_total", "outcome" => outcome).increment(1);
            release(db, cancellation, &problem.to_string(), None).await?;
            return Err(problem.into());
        }
    }
    get(db, id).await
}

/// The provider accepted the ticket (now, or a late answer after it was marked unknown): the
/// payment shows CANCEL_PENDING (unless the provider's confirmation already arrived). `known` is
/// the payment as this worker last wrote it: the first attempt decides on it without reading it
/// again; its compare-and-set fails if anything moved it since.
async fn accept(
    db: &Db,
    cancellation: &Cancellation,
    key: Option<&Key<'_>>,
    mut known: Option<Payment>,
) -> Result<(), PaymentError> {
    cas(db, |mut tx| {
        let known = known.take();
        async move {
            let current = match known {
                Some(payment) => payment,
                None => rows::get_in_tx(&mut tx, &cancellation.payment_id).await?.ok_or(PaymentError::NotFound)?,
            };
            let id = &cancellation.cancellation_id;
            let from = [TicketState::Sending, TicketState::Unknown, TicketState::Accepted];
            let still_requested =
                cancellations::move_ticket(&mut tx, id, &from, TicketState::Accepted, now_ms()).await?;
            if still_requested && let Some(next) = after_acceptance(&current, now_ms()) {
                if !rows::update(&mut tx, &next).await? {
                    return Ok(Attempt::Conflict);
                }
                let detail = EventDetail::cancellation(cancellation);
                changes::record(&mut tx, &next, EventKind::PaymentCancelPending, Some(&detail)).await?;
            }
            if let Some(key) = key {
                idempotency::finish(&mut tx, key).await?;
            }
            Ok(Attempt::Done(tx, ()))
        }
    })
    .await?;
    db.signal_commit();
    Ok(())
}

/// The ticket went out and no clear answer came back (or its sender died): OUTCOME_UNKNOWN. The
/// amount stays reserved and the key is done: a retry answers with this state, never a resend.
pub async fn mark_unknown(db: &Db, cancellation: &Cancellation, key: Option<&Key<'_>>) -> Result<(), PaymentError> {
    let mut tx = db.pool().begin().await?;
    let id = &cancellation.cancellation_id;
    let marked =
        cancellations::move_ticket(&mut tx, id, &[TicketState::Sending], TicketState::Unknown, now_ms()).await?;
    if let Some(key) = key {
        idempotency::finish(&mut tx, key).await?;
    }
    tx.commit().await?;
    if marked {
        metrics::counter!("paygate_refund_tickets_total", "outcome" => "unknown").increment(1);
        tracing::warn!(cancellation_id = %id, payment_id = %cancellation.payment_id, "refund outcome unknown; the sweep asks the provider, or an operator resolves it");
    }
    Ok(())
}

/// The ticket was not accepted (or an operator says the provider never acted on it): the
/// cancellation fails and its amount is refundable again. Nothing was done, so an idempotency
/// key still in progress on it is forgotten in the same transaction: a retry runs the refund
/// again. (An operator's decision comes after the key was done: a retry answers with it.) With
/// `only_if`, the ticket must still be in that state.
async fn release(
    db: &Db,
    cancellation: &Cancellation,
    failure: &str,
    only_if: Option<TicketState>,
) -> Result<bool, PaymentError> {
    let settled = cas(db, |mut tx| async move {
        let current = rows::get_in_tx(&mut tx, &cancellation.payment_id).await?.ok_or(PaymentError::NotFound)?;
        let stored = cancellations::get(&mut tx, &cancellation.cancellation_id).await?.ok_or(PaymentError::NotFound)?;
        let Some(Release { failed, next, settled }) = release_plan(&current, stored, failure, only_if, now_ms()) else {
            return Ok(Attempt::Done(tx, None));
        };
        if !cancellations::finish(&mut tx, &failed).await? {
            return Ok(Attempt::Done(tx, None)); // settled meanwhile by the provider's own notification
        }
        if !rows::update(&mut tx, &next).await? {
            return Ok(Attempt::Conflict);
        }
        if settled {
            let detail = EventDetail::cancellation(&failed);
            changes::record(&mut tx, &next, EventKind::PaymentPartiallyCancelled, Some(&detail)).await?;
        }
        idempotency::forget_resource(&mut tx, OPERATION, &cancellation.cancellation_id).await?;
        Ok(Attempt::Done(tx, Some(settled)))
    })
    .await?;
    if settled == Some(true) {
        db.signal_commit();
    }
    Ok(settled.is_some())
}

/// A cancellation the caller may see, with its payment's currency.
async fn answer(db: &Db, caller: &Caller, cancellation_id: &str) -> Result<Refunded, PaymentError> {
    with_currency(db, caller, read(db, caller, cancellation_id).await?).await
}

async fn with_currency(db: &Db, caller: &Caller, cancellation: Cancellation) -> Result<Refunded, PaymentError> {
    let payment = rows::get(db, &caller.merchant_id, Lookup::PaymentId(&cancellation.payment_id)).await?;
    Ok(Refunded { cancellation, currency: payment.currency })
}

/// A cancellation the caller may see.
async fn read(db: &Db, caller: &Caller, cancellation_id: &str) -> Result<Cancellation, PaymentError> {
    let c = get(db, cancellation_id).await?;
    if caller.acts_for(&c.merchant_id) { Ok(c) } else { Err(PaymentError::NotFound) }
}

async fn get(db: &Db, cancellation_id: &str) -> Result<Cancellation, PaymentError> {
    let mut conn = db.pool().acquire().await?;
    cancellations::get(&mut conn, cancellation_id).await?.ok_or(PaymentError::NotFound)
}

impl Payments {
    /// `ResolveCancellation`: only a cancellation in OUTCOME_UNKNOWN can be resolved; resolving it
    /// again the same way answers the same (idempotent), another way is refused.
    pub async fn resolve(
        &self,
        caller: &Caller,
        cancellation_id: &str,
        resolution: Resolution,
        note: &str,
    ) -> Result<Refunded, PaymentError> {
        let db = &self.db;
        let c = read(db, caller, cancellation_id).await?;
        if resolve_step(&c, resolution)? == ResolveStep::Answer {
            return with_currency(db, caller, c).await;
        }
        let note = note.trim();
        let applied = match resolution {
            Resolution::Failed => {
                let failure = format!("resolved by an operator: the provider did not refund it. {note}");
                release(db, &c, failure.trim(), Some(TicketState::Unknown)).await?
            }
            Resolution::Succeeded => confirm_unknown(db, &c).await?,
        };
        let resolution_name = if resolution == Resolution::Succeeded { "succeeded" } else { "failed" };
        tracing::info!(cancellation_id, resolution = resolution_name, applied, "cancellation resolved by an operator");
        let c = read(db, caller, cancellation_id).await?;
        if !applied && c.status != resolution.status() {
            return Err(PaymentError::NotResolvable(format!(
                "the cancellation changed meanwhile; it is now {}",
                c.status.as_str()
            )));
        }
        with_currency(db, caller, c).await
    }
}

/// An operator says the provider refunded a request whose outcome was unknown.
async fn confirm_unknown(db: &Db, c: &Cancellation) -> Result<bool, PaymentError> {
    let confirmed = cas(db, |mut tx| async move {
        let current = rows::get_in_tx(&mut tx, &c.payment_id).await?.ok_or(PaymentError::NotFound)?;
        let stored = cancellations::get(&mut tx, &c.cancellation_id).await?.ok_or(PaymentError::NotFound)?;
        let Some((done, next, kind)) = unknown_confirmed(&current, stored, now_ms()) else {
            return Ok(Attempt::Done(tx, false));
        };
        if !cancellations::finish(&mut tx, &done).await? {
            return Ok(Attempt::Done(tx, false));
        }
        if !rows::update(&mut tx, &next).await? {
            return Ok(Attempt::Conflict);
        }
        changes::record(&mut tx, &next, kind, Some(&EventDetail::cancellation(&done))).await?;
        Ok(Attempt::Done(tx, true))
    })
    .await?;
    if confirmed {
        db.signal_commit();
    }
    Ok(confirmed)
}
