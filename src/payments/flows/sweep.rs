//! The stuck-payment sweep: a lost pingback must not leave a payment stuck forever. Every interval
//! each replica claims a few payments long in CANCEL_PENDING (or READY past a configurable age),
//! asks the provider's payment status API about them, and applies what it learns through the same
//! path as a pingback. Claims are compare-and-set on the payment's `check_after`, so replicas never
//! ask about the same payment at once, and a checked payment is not asked about again before
//! `recheck`.
//!
//! It asks about live subscriptions too, an hour after each renewal is due and at least every
//! `subscription_recheck`: a renewal (the newest payment, with a ref paygate has not seen) and an
//! end (the subscription no longer active) whose notifications never came are applied the same way.
//!
//! It also takes over refund tickets nobody is working on (their worker died; last touched more
//! than `pending_after` ago, so it must exceed the provider call timeout): one never sent is sent
//! now; one whose send started is never sent again but becomes OUTCOME_UNKNOWN; one whose outcome
//! is unknown is settled when the provider's payment status says it was refunded (else it stays,
//! counted by the gauge `paygate_refunds_outcome_unknown`, for the next pass or an operator).

use std::time::Duration;

use super::{notification, refund, service::payment_and_channel};
use crate::{
    channels::{ChannelMode, Channels},
    payments::{
        PaymentError, Providers,
        core::{
            TicketState,
            sync::{learned, learned_for_subscription, next_subscription_check},
        },
        provider::{Notice, ProviderEvent},
        store::{cancellations, idempotency, payments as repo, subscriptions},
    },
    shutdown::Shutdown,
    store::{Db, now_ms},
};

#[derive(Debug, Clone)]
pub struct SweepSettings {
    pub interval: Duration,
    /// A READY payment older than this is asked about...
    pub ready_after: Duration,
    /// ...until it is this old: then its checkout is abandoned (`SyncPayment` still asks).
    pub ready_until: Duration,
    /// A payment in CANCEL_PENDING for longer than this is asked about.
    pub pending_after: Duration,
    /// A payment asked about is not asked about again before this.
    pub recheck: Duration,
    /// A live subscription is asked about an hour after each renewal is due, and at least this
    /// often.
    pub subscription_recheck: Duration,
}

const BATCH: u32 = 50;

pub fn spawn(db: Db, channels: Channels, providers: Providers, settings: SweepSettings, mut shutdown: Shutdown) {
    tokio::spawn(async move {
        // The gauge from the start rather than after the first interval (a minute): the alert on it
        // and the dashboard read every replica, a restarted one included.
        if let Err(e) = count_unknown_refunds(&db).await {
            tracing::warn!(error = %e, "could not count refunds whose outcome is unknown");
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(settings.interval) => {}
                _ = shutdown.signalled() => return,
            }
            match run_once(&db, &channels, &providers, &settings).await {
                Ok(0) => {}
                Ok(repaired) => tracing::info!(repaired, "sweep repaired stuck payments"),
                Err(e) => tracing::warn!(error = %e, "sweep failed; will try again"),
            }
            if let Err(e) = idempotency::purge_expired(&db).await {
                tracing::warn!(error = %e, "could not purge old idempotency keys");
            }
        }
    });
}

/// One pass; returns how many payments changed.
pub async fn run_once(
    db: &Db,
    channels: &Channels,
    providers: &Providers,
    s: &SweepSettings,
) -> Result<usize, PaymentError> {
    let now = now_ms();
    let ms = |d: Duration| d.as_millis() as i64;
    let stuck = repo::Stuck {
        pending_before: now - ms(s.pending_after),
        ready_before: now - ms(s.ready_after),
        ready_since: now - ms(s.ready_until),
        now,
        claim_until: now + ms(s.recheck),
    };
    let claimed = repo::claim_stuck(db, &stuck, BATCH).await?;
    let mut repaired = 0;
    for payment in claimed {
        let channel = match channels.unscoped(&payment.channel_key).await {
            Ok(channel) => channel,
            Err(e) => {
                tracing::warn!(payment_id = %payment.payment_id, error = %e, "sweep: channel unavailable");
                continue;
            }
        };
        let remote = match providers.for_channel(&channel).payment_status(&channel, &payment).await {
            Ok(Some(remote)) => remote,
            Ok(None) => continue, // the provider knows nothing (yet): ask again after `recheck`
            Err(e) => {
                tracing::warn!(payment_id = %payment.payment_id, error = %e, "sweep: payment status unavailable");
                continue;
            }
        };
        let Some(event) = learned(payment.status, &remote) else { continue };
        let notice = Notice {
            payment_id: payment.payment_id.clone(),
            provider_ref: remote.provider_ref,
            event,
            test: payment.test || channel.mode == ChannelMode::Test,
        };
        match notification::apply_learned(db, &payment.channel_key, &notice).await {
            Ok(notification::Applied::Changed { payment: p, .. }) => {
                tracing::info!(payment_id = %p.payment_id, status = %p.status, "sweep applied the provider's status");
                repaired += 1;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(payment_id = %payment.payment_id, error = %e, "sweep: could not apply"),
        }
    }
    repaired += sweep_tickets(db, channels, providers, s).await?;
    repaired += sweep_subscriptions(db, channels, providers, s).await?;
    count_unknown_refunds(db).await?;
    Ok(repaired)
}

/// Sets `paygate_refunds_outcome_unknown`: refunds whose ticket's outcome is unknown, open now.
async fn count_unknown_refunds(db: &Db) -> Result<(), PaymentError> {
    let unknown = cancellations::count_unknown(db).await?;
    metrics::gauge!("paygate_refunds_outcome_unknown").set(unknown as f64);
    Ok(())
}

/// Refund tickets whose worker is gone; returns how many requests moved on.
async fn sweep_tickets(
    db: &Db,
    channels: &Channels,
    providers: &Providers,
    s: &SweepSettings,
) -> Result<usize, PaymentError> {
    let now = now_ms();
    let ms = |d: Duration| d.as_millis() as i64;
    let stale =
        cancellations::claim_stale_tickets(db, now - ms(s.pending_after), now, now + ms(s.recheck), BATCH).await?;
    let mut repaired = 0;
    for c in stale {
        let Some((payment, channel)) = payment_and_channel(db, channels, &c.payment_id, "sweep").await? else {
            continue;
        };
        match c.ticket {
            Some(TicketState::Unsent) => {
                // Reserved and never sent (its worker died before the send): send it now.
                let ticket = refund::Ticket {
                    provider: providers.for_channel(&channel),
                    channel: &channel,
                    payment: &payment,
                    cancellation: &c,
                };
                match refund::send(db, ticket, None).await {
                    Ok(sent) => {
                        tracing::info!(cancellation_id = %c.cancellation_id, ticket = sent.ticket.map_or("none", |t| t.as_str()), "sweep sent a refund ticket nobody sent");
                        repaired += 1;
                    }
                    Err(e) => {
                        tracing::warn!(cancellation_id = %c.cancellation_id, error = %e, "sweep: refund ticket not accepted")
                    }
                }
                continue;
            }
            Some(TicketState::Sending) => refund::mark_unknown(db, &c, None).await?,
            Some(TicketState::Unknown) => {}
            _ => continue,
        }
        let remote = match providers.for_channel(&channel).payment_status(&channel, &payment).await {
            Ok(Some(remote)) => remote,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(cancellation_id = %c.cancellation_id, error = %e, "sweep: payment status unavailable");
                continue;
            }
        };
        if !remote.refunded {
            continue; // not (yet) refunded there: ask again after `recheck`, or an operator decides
        }
        let notice = Notice {
            payment_id: payment.payment_id.clone(),
            provider_ref: remote.provider_ref,
            event: ProviderEvent::RefundConfirmed,
            test: payment.test || channel.mode == ChannelMode::Test,
        };
        match notification::apply_learned(db, &payment.channel_key, &notice).await {
            Ok(notification::Applied::Changed { .. }) => {
                tracing::info!(cancellation_id = %c.cancellation_id, "sweep settled a refund whose outcome was unknown");
                repaired += 1;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(cancellation_id = %c.cancellation_id, error = %e, "sweep: could not apply"),
        }
    }
    Ok(repaired)
}

/// Live subscriptions due to be asked about; returns how many learned something.
async fn sweep_subscriptions(
    db: &Db,
    channels: &Channels,
    providers: &Providers,
    s: &SweepSettings,
) -> Result<usize, PaymentError> {
    let now = now_ms();
    let ms = |d: Duration| d.as_millis() as i64;
    let due = subscriptions::claim_due(db, now, now + ms(s.recheck), BATCH).await?;
    let mut repaired = 0;
    for sub in due {
        let Some((initial, channel)) = payment_and_channel(db, channels, &sub.initial_payment_id, "sweep").await?
        else {
            continue;
        };
        let remote = match providers.for_channel(&channel).subscription_status(&channel, &initial).await {
            Ok(remote) => remote,
            Err(e) => {
                tracing::warn!(subscription_id = %sub.subscription_id, error = %e, "sweep: subscription status unavailable");
                continue; // asked again once the claim runs out (`recheck`)
            }
        };
        let mut changed = false;
        for event in remote.as_ref().map(|r| learned_for_subscription(&sub, r)).unwrap_or_default() {
            let notice = Notice {
                payment_id: initial.payment_id.clone(),
                provider_ref: remote.as_ref().map(|r| r.provider_ref.clone()).unwrap_or_default(),
                event,
                test: initial.test || channel.mode == ChannelMode::Test,
            };
            match notification::apply_learned(db, &sub.channel_key, &notice).await {
                Ok(notification::Applied::Changed { payment, .. }) => {
                    tracing::info!(subscription_id = %sub.subscription_id, payment_id = %payment.payment_id, ?event, "sweep applied the provider's subscription status");
                    changed = true;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(subscription_id = %sub.subscription_id, error = %e, "sweep: could not apply"),
            }
        }
        repaired += usize::from(changed);
        // The next check from the subscription as it now is (a renewal moves the next due date).
        let now_sub = {
            let mut conn = db.pool().acquire().await?;
            subscriptions::get(&mut conn, &sub.subscription_id).await?
        };
        if let Some(current) = now_sub.filter(|c| !c.status.is_final()) {
            let next = next_subscription_check(&current, now_ms(), ms(s.subscription_recheck));
            subscriptions::check_next_at(db, &sub.subscription_id, next).await?;
        }
    }
    Ok(repaired)
}
