//! What providers report, in paygate's terms: the words of the provider port (`payments::provider`
//! re-exports them, so providers import only the port), kept here because the decisions read them.

use super::{PaymentOutcome, subscription::SubscriptionEnd};

/// A verified notification as received, for the raw log.
#[derive(Debug, Clone)]
pub struct RawNotification {
    pub channel_key: String,
    pub provider_ref: String,
    pub kind: i64,
    /// Tells apart two notifications of one ref and type (e.g. two partial reversals); may be empty.
    pub unique_ref: String,
    /// The query string exactly as received (it carries no secret: the signature is a digest).
    pub query: String,
}

/// What the provider reported, in paygate's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderEvent {
    /// Completion, reviews (a completion of a paid subscription payment with a new ref is a renewal).
    Payment(PaymentOutcome),
    /// Money went back, as the provider classifies it.
    Reversal(ReversalNotice),
    /// The provider says the payment is refunded (payment status API): confirms pending refunds.
    RefundConfirmed,
    SubscriptionEnded(SubscriptionEnd),
}

/// Money the provider took back. The provider maps its own reason codes onto `kind`; the code and
/// its meaning are kept on the cancellation for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReversalNotice {
    pub kind: ReversalKind,
    /// The provider's own reason code, if it has codes.
    pub provider_reason: Option<i64>,
    /// What the reason means, in words.
    pub description: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReversalKind {
    /// The whole payment refunded: confirms every open refund request the provider may have seen.
    FullRefund,
    /// Part of it refunded: confirms the oldest open request (or records an unasked partial refund).
    PartialRefund,
    /// A chargeback: everything not yet reversed goes.
    Chargeback,
    /// Any other reversal (fraud, a bad conversion): everything not yet reversed goes.
    Other,
}

/// What the provider says about a payment when asked directly (its payment status API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePayment {
    pub provider_ref: String,
    pub state: RemoteState,
    /// Money went back (no amount: the provider's reversal notification carries that).
    pub refunded: bool,
    /// For a subscription's payment: whether the subscription still bills.
    pub subscription: Option<RemoteSubscription>,
}

/// A subscription as the provider's payment status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteSubscription {
    pub active: bool,
    /// Ended because its payments ran out (else, when not active, it was cancelled).
    pub expired: bool,
}

/// Where the payment stands at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteState {
    /// Completed and not held for review.
    Paid,
    UnderReview,
    /// Review declined, or the authorization voided.
    Declined,
}

#[derive(Debug, Clone)]
pub struct Notice {
    pub payment_id: String,
    pub provider_ref: String,
    pub event: ProviderEvent,
    pub test: bool,
}
