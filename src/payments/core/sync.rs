//! What paygate does with the provider's answer when it asks about a payment (`SyncPayment` and the
//! stuck-payment sweep): the notice it amounts to, applied like a pingback. Only what the answer
//! proves moves a payment; the status machine (`notification::decide`) keeps every move monotonic,
//! so an answer older than a pingback already applied changes nothing.

use super::{
    PaymentOutcome, PaymentStatus,
    notice::{ProviderEvent, RemotePayment, RemoteState},
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

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(state: RemoteState, refunded: bool) -> RemotePayment {
        RemotePayment { provider_ref: "t1".into(), state, refunded }
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
