//! What paygate does with the provider's answer when it asks about a payment (`SyncPayment` and the
//! stuck-payment sweep): the notice it amounts to, applied like a pingback. Only what the answer
//! proves moves a payment; the status machine (`notification::decide`) keeps every move monotonic,
//! so an answer older than a pingback already applied changes nothing.

use super::{
    PaymentOutcome, PaymentStatus,
    notice::{ProviderEvent, RemotePayment, RemoteState},
    subscription::{Subscription, SubscriptionEnd, next_renewal_estimate},
};

/// The event the provider's answer reports for a payment now in `status`, if it reports one.
/// A refund is only ever confirmed, never inferred: the status API says "refunded" without an
/// amount, so it settles refunds paygate asked for (CANCEL_PENDING) and nothing else.
pub fn learned(status: PaymentStatus, remote: &RemotePayment) -> Option<ProviderEvent> {
    use PaymentStatus as S;
    use RemoteState as R;
    let outcome = match (status, remote.state) {
        (S::CancelPending, _) if remote.refunded => return Some(ProviderEvent::RefundConfirmed),
        (S::Ready, R::Paid) => PaymentOutcome::Completed,
        (S::PendingReview, R::Paid) => PaymentOutcome::ReviewAccepted,
        (S::Ready, R::UnderReview) => PaymentOutcome::ReviewStarted,
        (S::Ready | S::PendingReview, R::Declined) => PaymentOutcome::Declined,
        _ => return None,
    };
    Some(ProviderEvent::Payment(outcome))
}

/// What the provider's answer about a live subscription (its newest payment, and the
/// subscription's state) reports, in the order to apply: a paid payment first (a renewal when its
/// ref is new; the notification path recognises one it has and changes nothing), then the end.
pub fn learned_for_subscription(sub: &Subscription, remote: &RemotePayment) -> Vec<ProviderEvent> {
    let mut events = Vec::new();
    if remote.state == RemoteState::Paid {
        events.push(ProviderEvent::Payment(PaymentOutcome::Completed));
    }
    if let Some(state) = remote.subscription
        && !state.active
        && !sub.status.is_final()
    {
        let end = if state.expired { SubscriptionEnd::Expired } else { SubscriptionEnd::Cancelled };
        events.push(ProviderEvent::SubscriptionEnded(end));
    }
    events
}

/// After a renewal is due, how long paygate waits for the provider's own notification before it
/// asks.
pub const RENEWAL_GRACE_MS: i64 = 3_600_000;

/// When to ask about a live subscription next: an hour after its next renewal is due, and at least
/// every `at_most_ms` (a renewal the terms do not predict, a stop asked for, an overdue renewal).
pub fn next_subscription_check(sub: &Subscription, now: i64, at_most_ms: i64) -> i64 {
    let latest = now.saturating_add(at_most_ms);
    match next_renewal_estimate(sub).map(|due| due.saturating_add(RENEWAL_GRACE_MS)) {
        Some(due) if due > now => due.min(latest),
        _ => latest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::core::notice::RemoteSubscription;

    fn remote(state: RemoteState, refunded: bool) -> RemotePayment {
        RemotePayment { provider_ref: "t1".into(), state, refunded, subscription: None }
    }

    fn live_monthly(started_at: i64) -> Subscription {
        let sub = crate::payments::fixtures::subscription(crate::payments::core::SubscriptionStatus::Active, 0);
        Subscription { started_at: Some(started_at), ..sub }
    }

    #[test]
    fn a_live_subscription_learns_its_newest_payment_then_its_end() {
        let sub = live_monthly(0);
        let mut answer = remote(RemoteState::Paid, false);
        assert_eq!(learned_for_subscription(&sub, &answer), [ProviderEvent::Payment(PaymentOutcome::Completed)]);
        answer.subscription = Some(RemoteSubscription { active: false, expired: false });
        assert_eq!(
            learned_for_subscription(&sub, &answer),
            [
                ProviderEvent::Payment(PaymentOutcome::Completed),
                ProviderEvent::SubscriptionEnded(SubscriptionEnd::Cancelled)
            ]
        );
        answer.state = RemoteState::UnderReview;
        answer.subscription = Some(RemoteSubscription { active: false, expired: true });
        assert_eq!(
            learned_for_subscription(&sub, &answer),
            [ProviderEvent::SubscriptionEnded(SubscriptionEnd::Expired)]
        );
        // Still billing: only the payment.
        answer.subscription = Some(RemoteSubscription { active: true, expired: false });
        assert!(learned_for_subscription(&sub, &answer).is_empty());
    }

    #[test]
    fn a_subscription_is_asked_about_after_its_renewal_is_due_and_at_least_every_so_often() {
        const DAY: i64 = 86_400_000;
        let sub = live_monthly(0); // started 1970-01-01: next renewal 1970-02-01
        let feb_1 = 31 * DAY;
        // Early in the period: the daily cap comes first.
        assert_eq!(next_subscription_check(&sub, 0, DAY), DAY);
        // The day before it is due: an hour after it is due.
        assert_eq!(next_subscription_check(&sub, feb_1 - DAY / 2, DAY), feb_1 + RENEWAL_GRACE_MS);
        // Overdue (no renewal seen): again after the cap.
        assert_eq!(
            next_subscription_check(&sub, feb_1 + 2 * RENEWAL_GRACE_MS, DAY),
            feb_1 + 2 * RENEWAL_GRACE_MS + DAY
        );
    }

    #[test]
    fn an_unpaid_payment_takes_what_the_provider_says_happened() {
        use PaymentOutcome as O;
        let cases = [
            (PaymentStatus::Ready, RemoteState::Paid, Some(O::Completed)),
            (PaymentStatus::Ready, RemoteState::UnderReview, Some(O::ReviewStarted)),
            (PaymentStatus::Ready, RemoteState::Declined, Some(O::Declined)),
            (PaymentStatus::PendingReview, RemoteState::Paid, Some(O::ReviewAccepted)),
            (PaymentStatus::PendingReview, RemoteState::Declined, Some(O::Declined)),
            (PaymentStatus::PendingReview, RemoteState::UnderReview, None),
        ];
        for (status, state, outcome) in cases {
            assert_eq!(
                learned(status, &remote(state, false)),
                outcome.map(ProviderEvent::Payment),
                "{status:?} {state:?}"
            );
        }
    }

    #[test]
    fn a_refund_is_confirmed_only_when_one_was_asked_for() {
        assert_eq!(
            learned(PaymentStatus::CancelPending, &remote(RemoteState::Paid, true)),
            Some(ProviderEvent::RefundConfirmed)
        );
        // Still pending there: nothing yet.
        assert_eq!(learned(PaymentStatus::CancelPending, &remote(RemoteState::Paid, false)), None);
        // "Refunded" with no amount on a payment nobody asked to refund: not invented here (the
        // provider's type 2 pingback says how much and why).
        assert_eq!(learned(PaymentStatus::Paid, &remote(RemoteState::Paid, true)), None);
    }

    #[test]
    fn settled_payments_do_not_move_back() {
        for status in
            [PaymentStatus::Paid, PaymentStatus::Cancelled, PaymentStatus::Failed, PaymentStatus::PartialCancelled]
        {
            for state in [RemoteState::Paid, RemoteState::UnderReview, RemoteState::Declined] {
                assert_eq!(learned(status, &remote(state, false)), None, "{status:?} {state:?}");
            }
        }
    }
}
