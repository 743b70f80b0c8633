//! What happened to a payment: the event kinds (the contract's words), what an event is about
//! besides the payment, and where it sits in the log.

use std::{fmt, str::FromStr};

use serde::Serialize;

use super::Payment;

/// Where an event sits in the log: ordered by the writing transaction, then by id. Shown to
/// clients as `"<txid>-<id>"`, the cursor they resume after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub txid: i64,
    pub id: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.txid, self.id)
    }
}

impl FromStr for Position {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (txid, id) = s.split_once('-').ok_or("is not an event id this server issued")?;
        let parse =
            |part: &str| part.parse::<i64>().ok().filter(|n| *n >= 0).ok_or("is not an event id this server issued");
        Ok(Self { txid: parse(txid)?, id: parse(id)? })
    }
}

/// What happened to a payment. The strings are the contract: stream `kind`, webhook `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    PaymentPaid,
    PaymentPendingReview,
    PaymentFailed,
    PaymentCancelPending,
    PaymentPartiallyCancelled,
    PaymentCancelled,
    SubscriptionCancelRequested,
    SubscriptionCancelled,
    SubscriptionExpired,
    SubscriptionPaymentFailed,
    /// The buyer's personal data was erased from the payment (EraseCustomer); the snapshot shows
    /// what stays.
    CustomerErased,
    /// `SyncPayment` asked the provider and what it learned changed the payment; follows the
    /// event of the change itself (e.g. `payment.paid`), in the same transaction.
    PaymentSynced,
    /// A delivery confirmation was recorded (`ConfirmDelivery`, or a channel's automatic one).
    PaymentDeliveryUpdated,
}

impl EventKind {
    pub const ALL: [EventKind; 13] = [
        Self::PaymentPaid,
        Self::PaymentPendingReview,
        Self::PaymentFailed,
        Self::PaymentCancelPending,
        Self::PaymentPartiallyCancelled,
        Self::PaymentCancelled,
        Self::SubscriptionCancelRequested,
        Self::SubscriptionCancelled,
        Self::SubscriptionExpired,
        Self::SubscriptionPaymentFailed,
        Self::CustomerErased,
        Self::PaymentSynced,
        Self::PaymentDeliveryUpdated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentPaid => "payment.paid",
            Self::PaymentPendingReview => "payment.pending_review",
            Self::PaymentFailed => "payment.failed",
            Self::PaymentCancelPending => "payment.cancel_pending",
            Self::PaymentPartiallyCancelled => "payment.partially_cancelled",
            Self::PaymentCancelled => "payment.cancelled",
            Self::SubscriptionCancelRequested => "subscription.cancel_requested",
            Self::SubscriptionCancelled => "subscription.cancelled",
            Self::SubscriptionExpired => "subscription.expired",
            Self::SubscriptionPaymentFailed => "subscription.payment_failed",
            Self::CustomerErased => "customer.erased",
            Self::PaymentSynced => "payment.synced",
            Self::PaymentDeliveryUpdated => "payment.delivery_updated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an event is about besides the payment: a cancellation or a subscription (as JSON, the
/// form the stream and the webhook carry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventDetail {
    Cancellation(serde_json::Value),
    Subscription(serde_json::Value),
    Delivery(serde_json::Value),
}

impl EventDetail {
    pub fn cancellation(value: &impl Serialize) -> Self {
        Self::Cancellation(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
    }

    pub fn subscription(value: &impl Serialize) -> Self {
        Self::Subscription(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
    }

    pub fn delivery(value: &impl Serialize) -> Self {
        Self::Delivery(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
    }

    pub fn value(&self) -> &serde_json::Value {
        match self {
            Self::Cancellation(v) | Self::Subscription(v) | Self::Delivery(v) => v,
        }
    }
}

/// An event as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub position: Position,
    pub kind: EventKind,
    /// The payment after the change.
    pub payment: Payment,
    /// The cancellation or subscription the event is about, as JSON.
    pub detail: Option<serde_json::Value>,
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A merchant can subscribe its webhook endpoint to every kind of event paygate writes.
    #[test]
    fn every_event_kind_is_a_webhook_event_type() {
        for kind in EventKind::ALL {
            assert!(
                crate::webhooks::endpoints::EVENT_TYPES.contains(&kind.as_str()),
                "{kind} is not a webhook event type"
            );
        }
    }
}
