//! The payment status machine. Transitions are monotonic: a late or replayed
//! provider notification never moves a payment backwards; it is recorded and changes nothing.

use std::{fmt, str::FromStr};

use super::EventKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    Ready,
    PendingReview,
    Paid,
    CancelPending,
    PartialCancelled,
    Cancelled,
    Failed,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 7] = [
        Self::Ready,
        Self::PendingReview,
        Self::Paid,
        Self::CancelPending,
        Self::PartialCancelled,
        Self::Cancelled,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "READY",
            Self::PendingReview => "PENDING_REVIEW",
            Self::Paid => "PAID",
            Self::CancelPending => "CANCEL_PENDING",
            Self::PartialCancelled => "PARTIAL_CANCELLED",
            Self::Cancelled => "CANCELLED",
            Self::Failed => "FAILED",
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PaymentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|status| status.as_str() == s).ok_or_else(|| format!("unknown payment status {s:?}"))
    }
}

/// What a provider told us about a payment, in provider-neutral terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// Money received (Paymentwall type 0, or type 1 goodwill credit).
    Completed,
    /// Held for risk review (type 200).
    ReviewStarted,
    /// Review passed (type 201).
    ReviewAccepted,
    /// Review declined or authorization voided (types 202, 203).
    Declined,
}

impl PaymentOutcome {
    /// The event kind recorded when this outcome changes a payment.
    pub fn event_kind(self) -> EventKind {
        match self {
            Self::Completed | Self::ReviewAccepted => EventKind::PaymentPaid,
            Self::ReviewStarted => EventKind::PaymentPendingReview,
            Self::Declined => EventKind::PaymentFailed,
        }
    }
}

/// The status after `outcome`, or `None` when the outcome changes nothing (late, replayed, or
/// already superseded by a later state).
pub fn next_status(current: PaymentStatus, outcome: PaymentOutcome) -> Option<PaymentStatus> {
    use PaymentOutcome as O;
    use PaymentStatus as S;
    match (current, outcome) {
        (S::Ready | S::PendingReview, O::Completed | O::ReviewAccepted) => Some(S::Paid),
        (S::Ready, O::ReviewStarted) => Some(S::PendingReview),
        (S::Ready | S::PendingReview, O::Declined) => Some(S::Failed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{PaymentOutcome as O, PaymentStatus as S, *};

    #[test]
    fn the_drawn_transitions_happen() {
        assert_eq!(next_status(S::Ready, O::Completed), Some(S::Paid));
        assert_eq!(next_status(S::Ready, O::ReviewStarted), Some(S::PendingReview));
        assert_eq!(next_status(S::PendingReview, O::ReviewAccepted), Some(S::Paid));
        assert_eq!(next_status(S::PendingReview, O::Declined), Some(S::Failed));
        assert_eq!(next_status(S::Ready, O::Declined), Some(S::Failed));
    }

    #[test]
    fn nothing_moves_backwards() {
        // A replayed or late notification after the payment moved on changes nothing.
        for status in [S::Paid, S::CancelPending, S::PartialCancelled, S::Cancelled, S::Failed] {
            for outcome in [O::Completed, O::ReviewStarted, O::ReviewAccepted, O::Declined] {
                assert_eq!(next_status(status, outcome), None, "{status} + {outcome:?}");
            }
        }
        assert_eq!(next_status(S::PendingReview, O::ReviewStarted), None);
    }

    #[test]
    fn status_names_round_trip() {
        for status in PaymentStatus::ALL {
            assert_eq!(status.as_str().parse::<PaymentStatus>(), Ok(status));
        }
        assert!("paid".parse::<PaymentStatus>().is_err());
    }
}
