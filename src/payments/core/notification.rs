//! What a provider's notice does to a payment, decided from what was read (pure): the status
//! machine's move, a renewal, a subscription's end, or a reversal. `flows::notification` reads,
//! calls `decide`, and writes the `Decision`.

use super::{
    Cancellation, EventKind, Payment, PaymentOutcome, PaymentStatus, new_payment_id, next_status,
    refund::{self, ReversalEffect},
    subscription::{self, Subscription},
};
use super::{
    money::MinorUnits,
    notice::{Notice, ProviderEvent},
};
use crate::payments::PaymentError;

/// What a notice does, decided from what was read; `write` carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Valid, and changes nothing (late, replayed, or superseded by a later state).
    Unchanged,
    /// The payment moves; a subscription waiting for its first payment starts.
    Settle { next: Payment, kind: EventKind, subscription: Option<SubscriptionChange> },
    /// Money under a new ref for a payment already settled: a new payment linked to the first,
    /// counted by its subscription.
    Renew { payment: Payment, kind: EventKind, subscription: Option<SubscriptionChange> },
    /// The subscription ends; the payment stays as it is (the event shows it).
    EndSubscription { payment: Payment, kind: EventKind, subscription: SubscriptionChange },
    /// Money went back (or the provider confirmed refunds).
    Reverse(ReversalEffect),
}

/// A subscription as read, and as it is to be written (a compare-and-set on the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionChange {
    pub before: Subscription,
    pub after: Subscription,
}

/// What `notice` does to `current` (the payment it concerns), its `subscription` (if it has one)
/// and its `open` refund requests, at `now`.
pub fn decide(
    current: &Payment,
    subscription: Option<&Subscription>,
    open: &[Cancellation],
    notice: &Notice,
    now: i64,
) -> Result<Decision, PaymentError> {
    match notice.event {
        ProviderEvent::Payment(outcome) => {
            // Money taken under a new ref for a payment already settled: a subscription renewal (or,
            // for a one-time payment, the buyer paying twice). Recorded as a new payment, never dropped.
            let another_payment = outcome != PaymentOutcome::Declined
                && !matches!(current.status, PaymentStatus::Ready | PaymentStatus::PendingReview)
                && current.provider_ref.as_deref().is_some_and(|r| r != notice.provider_ref);
            if another_payment {
                renewal(current, subscription, outcome, notice, now)
            } else {
                Ok(settlement(current, subscription, outcome, notice, now))
            }
        }
        ProviderEvent::Reversal(reversal) => {
            // A reversal that overtook its payment's completion still names the transaction.
            let mut current = current.clone();
            if current.provider_ref.is_none() {
                current.provider_ref = Some(notice.provider_ref.clone());
                current.test = notice.test;
            }
            let plan = refund::plan_reversal(&current, reversal.kind, open);
            Ok(refund::reversal_effect(&current, plan, open, Some(&reversal), now)
                .map_or(Decision::Unchanged, Decision::Reverse))
        }
        ProviderEvent::RefundConfirmed => {
            let plan = refund::plan_confirmation(current, open);
            Ok(refund::reversal_effect(current, plan, open, None, now).map_or(Decision::Unchanged, Decision::Reverse))
        }
        ProviderEvent::SubscriptionEnded(end) => Ok(match subscription {
            Some(sub) => match subscription::ended(sub, end, now) {
                Some(after) => Decision::EndSubscription {
                    payment: current.clone(),
                    kind: end.event_kind(),
                    subscription: SubscriptionChange { before: sub.clone(), after },
                },
                None => Decision::Unchanged,
            },
            None => Decision::Unchanged,
        }),
    }
}

/// The payment moves as the status machine says; paid, it starts a subscription waiting for it.
fn settlement(
    current: &Payment,
    subscription: Option<&Subscription>,
    outcome: PaymentOutcome,
    notice: &Notice,
    now: i64,
) -> Decision {
    let Some(status) = next_status(current.status, outcome) else {
        return Decision::Unchanged;
    };
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
    let subscription = subscription
        .filter(|_| status == PaymentStatus::Paid)
        .and_then(|sub| Some(SubscriptionChange { before: sub.clone(), after: subscription::activated(sub, now)? }));
    Decision::Settle { next, kind: outcome.event_kind(), subscription }
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
fn renewal(
    initial: &Payment,
    subscription: Option<&Subscription>,
    outcome: PaymentOutcome,
    notice: &Notice,
    now: i64,
) -> Result<Decision, PaymentError> {
    if initial.subscription_id.is_some() && subscription.is_none() {
        let problem = format!("payment {} names a missing subscription", initial.payment_id);
        return Err(PaymentError::Corrupt(problem));
    }
    let merchant_uid = match subscription {
        Some(sub) => generated_merchant_uid(&initial.merchant_uid, Generated::Renewal(sub.renewals + 1)),
        None => generated_merchant_uid(&initial.merchant_uid, Generated::Repeat(&notice.provider_ref)),
    };
    let reviewing = outcome == PaymentOutcome::ReviewStarted;
    let payment = Payment {
        payment_id: new_payment_id(),
        merchant_uid,
        status: if reviewing { PaymentStatus::PendingReview } else { PaymentStatus::Paid },
        provider_ref: Some(notice.provider_ref.clone()),
        test: notice.test,
        redirect_url: String::new(),
        cancelled_amount: MinorUnits::ZERO,
        pending_cancel_amount: MinorUnits::ZERO,
        version: 1,
        created_at: now,
        updated_at: now,
        paid_at: if reviewing { None } else { Some(now) },
        failed_at: None,
        cancelled_at: None,
        ..initial.clone()
    };
    let subscription = subscription.map(|sub| SubscriptionChange {
        before: sub.clone(),
        after: subscription::renewed(sub, &payment.payment_id, now),
    });
    Ok(Decision::Renew { payment, kind: outcome.event_kind(), subscription })
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::{
        core::{
            TicketState, Trigger,
            notice::{ReversalKind, ReversalNotice},
            subscription::{SubscriptionEnd, SubscriptionStatus},
        },
        fixtures::{payment, subscription, unpaid},
    };

    fn notice(provider_ref: &str, event: ProviderEvent) -> Notice {
        Notice { payment_id: "pay_1".into(), provider_ref: provider_ref.into(), event, test: false }
    }

    fn paid(outcome: PaymentOutcome, provider_ref: &str) -> Notice {
        notice(provider_ref, ProviderEvent::Payment(outcome))
    }

    fn subscribed(status: PaymentStatus) -> Payment {
        Payment { subscription_id: Some("sub_1".into()), merchant_uid: "gold".into(), ..payment(status, 999, 0, 0) }
    }

    fn decided(current: &Payment, sub: Option<&Subscription>, n: &Notice) -> Decision {
        decide(current, sub, &[], n, 50).expect("decides")
    }

    #[test]
    fn a_completion_settles_a_ready_payment() {
        let Decision::Settle { next, kind, subscription } =
            decided(&unpaid(999), None, &paid(PaymentOutcome::Completed, "b7"))
        else {
            panic!("settles")
        };
        assert_eq!(
            (next.status, next.provider_ref.as_deref(), next.paid_at),
            (PaymentStatus::Paid, Some("b7"), Some(50))
        );
        assert_eq!((next.version, next.updated_at, next.test, kind), (2, 50, false, EventKind::PaymentPaid));
        assert_eq!((next.amount_minor.0, next.cancelled_amount.0, next.pending_cancel_amount.0), (999, 0, 0));
        assert_eq!(subscription, None);
    }

    #[test]
    fn a_decline_fails_and_a_review_holds() {
        let Decision::Settle { next, kind, .. } = decided(&unpaid(999), None, &paid(PaymentOutcome::Declined, "b7"))
        else {
            panic!("settles")
        };
        assert_eq!(
            (next.status, next.failed_at, next.paid_at, kind),
            (PaymentStatus::Failed, Some(50), None, EventKind::PaymentFailed)
        );
        let Decision::Settle { next, .. } = decided(&unpaid(999), None, &paid(PaymentOutcome::ReviewStarted, "b7"))
        else {
            panic!("settles")
        };
        assert_eq!(
            (next.status, next.provider_ref.as_deref(), next.paid_at),
            (PaymentStatus::PendingReview, Some("b7"), None)
        );
    }

    #[test]
    fn a_late_or_replayed_notice_changes_nothing() {
        let done = payment(PaymentStatus::Paid, 999, 0, 0);
        assert_eq!(decided(&done, None, &paid(PaymentOutcome::Completed, "b1")), Decision::Unchanged, "same ref again");
        assert_eq!(decided(&done, None, &paid(PaymentOutcome::Declined, "b9")), Decision::Unchanged, "never backwards");
        let failed = Payment { status: PaymentStatus::Failed, ..unpaid(999) };
        assert_eq!(decided(&failed, None, &paid(PaymentOutcome::Completed, "b1")), Decision::Unchanged);
    }

    #[test]
    fn the_first_payment_starts_its_subscription() {
        let ready = Payment { provider_ref: None, paid_at: None, ..subscribed(PaymentStatus::Ready) };
        let sub = subscription(SubscriptionStatus::Pending, 0);
        let Decision::Settle { subscription: Some(change), .. } =
            decided(&ready, Some(&sub), &paid(PaymentOutcome::Completed, "b1"))
        else {
            panic!("settles and starts the subscription")
        };
        assert_eq!(
            (change.before.status, change.after.status),
            (SubscriptionStatus::Pending, SubscriptionStatus::Active)
        );
        // A review does not start it.
        let Decision::Settle { subscription, .. } =
            decided(&ready, Some(&sub), &paid(PaymentOutcome::ReviewStarted, "b1"))
        else {
            panic!("settles")
        };
        assert_eq!(subscription, None);
    }

    #[test]
    fn a_new_ref_on_a_paid_subscription_payment_is_a_renewal() {
        let sub = subscription(SubscriptionStatus::Active, 2);
        let initial = subscribed(PaymentStatus::Paid);
        let Decision::Renew { payment, kind, subscription: Some(change) } =
            decided(&initial, Some(&sub), &paid(PaymentOutcome::Completed, "b2"))
        else {
            panic!("renews")
        };
        assert_eq!(payment.merchant_uid, "~gold/renewal/3");
        assert_ne!(payment.payment_id, initial.payment_id);
        assert_eq!(
            (payment.status, payment.provider_ref.as_deref(), payment.paid_at),
            (PaymentStatus::Paid, Some("b2"), Some(50))
        );
        assert_eq!(
            (payment.amount_minor.0, payment.cancelled_amount.0, payment.pending_cancel_amount.0, payment.version),
            (999, 0, 0, 1)
        );
        assert_eq!((payment.subscription_id.as_deref(), kind), (Some("sub_1"), EventKind::PaymentPaid));
        assert_eq!((change.after.renewals, change.after.status), (3, SubscriptionStatus::Active));
        assert_eq!(change.after.last_renewal_payment_id.as_deref(), Some(payment.payment_id.as_str()));
        // A renewal under review waits for its 201.
        let Decision::Renew { payment, .. } = decided(&initial, Some(&sub), &paid(PaymentOutcome::ReviewStarted, "b2"))
        else {
            panic!("renews")
        };
        assert_eq!((payment.status, payment.paid_at), (PaymentStatus::PendingReview, None));
        // Its subscription row missing is a corrupt store, not a dropped payment.
        assert!(decide(&initial, None, &[], &paid(PaymentOutcome::Completed, "b2"), 50).is_err());
    }

    #[test]
    fn money_after_the_end_is_a_renewal_of_an_ended_subscription() {
        let ended = subscription(SubscriptionStatus::Cancelled, 2);
        let Decision::Renew { payment, subscription: Some(change), .. } =
            decided(&subscribed(PaymentStatus::Paid), Some(&ended), &paid(PaymentOutcome::Completed, "b9"))
        else {
            panic!("recorded, not dropped")
        };
        assert_eq!((payment.status, payment.merchant_uid.as_str()), (PaymentStatus::Paid, "~gold/renewal/3"));
        assert_eq!((change.after.status, change.after.renewals_after_end), (SubscriptionStatus::Cancelled, 1));
        assert_eq!(subscription::renewal_after_end(&change.before), Some(SubscriptionStatus::Cancelled));
    }

    #[test]
    fn a_new_ref_on_a_paid_one_time_payment_is_a_repeat() {
        let once = payment(PaymentStatus::PartialCancelled, 999, 100, 0);
        let Decision::Renew { payment, subscription, .. } =
            decided(&once, None, &paid(PaymentOutcome::Completed, "b77"))
        else {
            panic!("records the second payment")
        };
        assert_eq!((payment.merchant_uid.as_str(), payment.cancelled_amount.0), ("~order-1/repeat/b77", 0));
        assert_eq!(subscription, None);
    }

    #[test]
    fn a_subscription_ends_once() {
        let current = subscribed(PaymentStatus::Paid);
        let end = notice("b1", ProviderEvent::SubscriptionEnded(SubscriptionEnd::Cancelled));
        let live = subscription(SubscriptionStatus::Active, 1);
        let Decision::EndSubscription { payment: same, kind, subscription: change } =
            decided(&current, Some(&live), &end)
        else {
            panic!("ends")
        };
        assert_eq!((same, kind), (current.clone(), EventKind::SubscriptionCancelled), "the payment stays as it is");
        assert_eq!((change.after.status, change.after.ended_at), (SubscriptionStatus::Cancelled, Some(50)));
        let over = subscription(SubscriptionStatus::Expired, 1);
        assert_eq!(decided(&current, Some(&over), &end), Decision::Unchanged);
        let once = payment(PaymentStatus::Paid, 999, 0, 0);
        assert_eq!(decided(&once, None, &end), Decision::Unchanged, "no subscription to end");
    }

    #[test]
    fn a_reversal_that_overtook_its_completion_names_the_transaction() {
        let reversal =
            ReversalNotice { kind: ReversalKind::Chargeback, provider_reason: Some(2), description: "chargeback" };
        let n = Notice { test: true, ..notice("b5", ProviderEvent::Reversal(reversal)) };
        let Decision::Reverse(effect) = decided(&unpaid(999), None, &n) else { panic!("reverses") };
        assert_eq!((effect.next.provider_ref.as_deref(), effect.next.test), (Some("b5"), true));
        assert_eq!((effect.next.status, effect.next.cancelled_amount.0), (PaymentStatus::Cancelled, 999));
        assert_eq!(
            (effect.completed.trigger, effect.completed.amount_minor.map(i64::from)),
            (Trigger::Chargeback, Some(999))
        );
        let gone = effect.next;
        assert_eq!(decided(&gone, None, &n), Decision::Unchanged, "reversed once");
    }

    #[test]
    fn a_refund_confirmation_settles_only_sent_requests() {
        let p = payment(PaymentStatus::CancelPending, 999, 0, 400);
        let open = |ticket| crate::payments::fixtures::refund_request(400, ticket, 0);
        let confirmed = notice("b1", ProviderEvent::RefundConfirmed);
        let Decision::Reverse(effect) = decide(&p, None, &[open(TicketState::Accepted)], &confirmed, 50).unwrap()
        else {
            panic!("confirms")
        };
        assert_eq!((effect.next.cancelled_amount.0, effect.next.pending_cancel_amount.0), (400, 0));
        assert_eq!((effect.next.status, effect.finish.len()), (PaymentStatus::PartialCancelled, 1));
        let unsent = decide(&p, None, &[open(TicketState::Unsent)], &confirmed, 50).unwrap();
        assert_eq!(unsent, Decision::Unchanged);
    }

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
