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
    payments::{Payment, PaymentError},
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

/// An event as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub position: Position,
    pub kind: String,
    /// The payment after the change.
    pub payment: Payment,
    /// The cancellation or subscription the event is about, as JSON.
    pub detail: Option<serde_json::Value>,
    pub created_at: i64,
}

/// The JSON detail of an event: the cancellation or subscription it is about.
pub fn detail(value: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// Appends an event (and, in the same transaction, the webhook that announces it); returns its id.
pub async fn append(
    conn: &mut AnyConnection,
    payment: &Payment,
    kind: &str,
    detail: Option<&serde_json::Value>,
) -> Result<i64, PaymentError> {
    let snapshot = serde_json::to_string(payment).map_err(|e| PaymentError::Corrupt(e.to_string()))?;
    let row = sqlx::query(
        "INSERT INTO payment_events (payment_id, merchant_id, kind, status, snapshot, detail, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING event_id, txid",
    )
    .bind(&payment.payment_id)
    .bind(&payment.merchant_id)
    .bind(kind)
    .bind(payment.status.as_str())
    .bind(snapshot)
    .bind(detail.map(|d| d.to_string()))
    .bind(now_ms())
    .fetch_one(&mut *conn)
    .await
    .map_err(StoreError::from)?;
    let position = Position {
        txid: row.try_get("txid").map_err(StoreError::from)?,
        id: row.try_get("event_id").map_err(StoreError::from)?,
    };
    crate::webhooks::outbox::enqueue(conn, payment, kind, position, detail).await.map_err(|e| match e {
        crate::webhooks::WebhookError::Store(store) => PaymentError::Store(store),
        other => PaymentError::Corrupt(other.to_string()),
    })?;
    Ok(position.id)
}

#[cfg(test)]
mod tests {
    use super::*;

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
