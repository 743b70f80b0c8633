//! The payment event log: one immutable row per state change, written in the same transaction as
//! the change, carrying a snapshot of the payment after it (and, for refunds and subscriptions,
//! the record the event is about).

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use crate::{
    payments::{Payment, PaymentError},
    store::{StoreError, now_ms},
};

/// The JSON detail of an event: the cancellation or subscription it is about.
pub fn detail(value: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// Appends an event and returns its id.
pub async fn append(
    conn: &mut AnyConnection,
    payment: &Payment,
    kind: &str,
    detail: Option<&serde_json::Value>,
) -> Result<i64, PaymentError> {
    let snapshot = serde_json::to_string(payment).map_err(|e| PaymentError::Corrupt(e.to_string()))?;
    let row = sqlx::query(
        "INSERT INTO payment_events (payment_id, merchant_id, kind, status, snapshot, detail, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING event_id",
    )
    .bind(&payment.payment_id)
    .bind(&payment.merchant_id)
    .bind(kind)
    .bind(payment.status.as_str())
    .bind(snapshot)
    .bind(detail.map(|d| d.to_string()))
    .bind(now_ms())
    .fetch_one(conn)
    .await
    .map_err(StoreError::from)?;
    Ok(row.try_get::<i64, _>("event_id").map_err(StoreError::from)?)
}
