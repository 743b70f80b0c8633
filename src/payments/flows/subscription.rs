//! CancelSubscription: asking the provider to stop a subscription's recurring billing, once.

use super::service::Payments;
use crate::{
    merchants::Caller,
    payments::{
        PaymentError,
        core::{
            EventDetail, EventKind,
            subscription::{CancelStep, Subscription, cancel_step, check_stoppable},
        },
        store::{
            cas::{Attempt, cas},
            changes,
            payments::{self as rows, Lookup as PaymentLookup},
            subscriptions::{self, Lookup},
        },
    },
    store::{Db, now_ms},
};

impl Payments {
    /// CancelSubscription: asks the provider to stop recurring billing. The subscription reads
    /// CANCELLED when the provider confirms (Paymentwall type 12); until then `cancel_requested_at`
    /// says it was asked. Asking again is harmless.
    ///
    /// One ticket and one `subscription.cancel_requested` event whatever the concurrency: a caller
    /// first claims the send (`cancel_ticket_started_at`, compare-and-set); the others wait for its
    /// outcome (up to `lease_ms`, after which a claim counts as a dead worker's and may be taken).
    /// A ticket that was not accepted clears the claim, so a later call tries again.
    pub async fn cancel_subscription(
        &self,
        caller: &Caller,
        subscription_id: &str,
        reason: &str,
    ) -> Result<Subscription, PaymentError> {
        let (db, lease_ms) = (&self.db, self.idempotency_lease_ms);
        let give_up_at = now_ms() + lease_ms;
        let (initial, claim) = loop {
            let sub =
                subscriptions::get_in_scope(db, &caller.merchant_id, Lookup::SubscriptionId(subscription_id)).await?;
            if cancel_step(&sub) == CancelStep::Answer {
                return Ok(sub);
            }
            let initial = rows::get(db, &caller.merchant_id, PaymentLookup::PaymentId(&sub.initial_payment_id)).await?;
            check_stoppable(&initial)?;
            let now = now_ms();
            if subscriptions::claim_cancel_ticket(db, subscription_id, now, now - lease_ms).await? {
                break (initial, now);
            }
            if now >= give_up_at {
                return Err(PaymentError::Concurrent);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let channel = self.channels.for_caller(caller, &initial.channel_key).await?;
        if let Err(e) = self.providers.for_channel(&channel).stop_recurring(&channel, &initial, reason).await {
            subscriptions::release_cancel_ticket(db, subscription_id, claim).await;
            return Err(e.into());
        }
        record_cancel_request(db, subscription_id, &initial.payment_id).await
    }
}

/// The ticket is out: records it, and its event, once (retrying the compare-and-set on the payment
/// a pingback may race). A subscription that ended meanwhile (its type 12 came before the ticket's
/// answer) is left as it is, with no event: the log never says "asked to stop" after "cancelled".
async fn record_cancel_request(
    db: &Db,
    subscription_id: &str,
    initial_payment_id: &str,
) -> Result<Subscription, PaymentError> {
    let requested = cas(db, |mut tx| async move {
        let now = now_ms();
        let recorded = subscriptions::mark_cancel_requested(&mut tx, subscription_id, now).await?;
        let requested =
            subscriptions::get(&mut tx, subscription_id).await?.ok_or(PaymentError::SubscriptionNotFound)?;
        if recorded {
            // Writing the payment row orders this event after (or before) any pingback on the payment.
            let payment = rows::get_in_tx(&mut tx, initial_payment_id).await?.ok_or(PaymentError::NotFound)?;
            let payment = payment.next_version(now);
            if !rows::update(&mut tx, &payment).await? {
                return Ok(Attempt::Conflict);
            }
            let detail = EventDetail::subscription(&requested);
            changes::record(&mut tx, &payment, EventKind::SubscriptionCancelRequested, Some(&detail)).await?;
        }
        Ok(Attempt::Done(tx, requested))
    })
    .await?;
    db.signal_commit();
    Ok(requested)
}
