//! The payment event log and its live fan-out. Every state change appends one immutable event in
//! the same transaction as the change (`append`). `log` reads it back in a gapless order; `hub`
//! delivers new events to the open streams of this replica; `bridge` tells other replicas (through
//! Redis) that there is something new to read.

pub mod bridge;
pub mod hub;
pub mod log;

use std::{fmt, str::FromStr};

use serde::Serialize;
use sqlx::{AnyConnection, Row};

pub use hub::{Filter, Hub};

use crate::{
    payments::Payment,
    store::{StoreError, now_ms},
};

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
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
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
}

impl EventDetail {
    pub fn cancellation(value: &impl Serialize) -> Self {
        Self::Cancellation(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
    }

    pub fn subscription(value: &impl Serialize) -> Self {
        Self::Subscription(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
    }

    pub fn value(&self) -> &serde_json::Value {
        match self {
            Self::Cancellation(v) | Self::Subscription(v) => v,
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

/// Appends an event in the caller's transaction; returns its position. The log records and knows
/// no listeners: whoever records a change also queues what announces it (`payments::record`).
pub async fn append(
    conn: &mut AnyConnection,
    payment: &Payment,
    kind: EventKind,
    detail: Option<&EventDetail>,
) -> Result<Position, StoreError> {
    let snapshot = serde_json::to_string(payment).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let row = sqlx::query(
        "INSERT INTO payment_events (payment_id, merchant_id, kind, status, snapshot, detail, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING event_id, txid",
    )
    .bind(&payment.payment_id)
    .bind(&payment.merchant_id)
    .bind(kind.as_str())
    .bind(payment.status.as_str())
    .bind(snapshot)
    .bind(detail.map(|d| d.value().to_string()))
    .bind(now_ms())
    .fetch_one(&mut *conn)
    .await?;
    Ok(Position { txid: row.try_get("txid")?, id: row.try_get("event_id")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("payment.snapshot"), None);
    }

    #[test]
    fn positions_order_by_transaction_then_id_and_round_trip() {
        let a = Position { txid: 7, id: 100 };
        let b = Position { txid: 8, id: 3 };
        assert!(a < b, "a later transaction sorts after, whatever its ids");
        assert_eq!("7-100".parse::<Position>(), Ok(a));
        assert_eq!(a.to_string().parse::<Position>(), Ok(a));
        for bad in ["", "7", "-1-2", "a-b", "7-", "1-2-3"] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }
}
