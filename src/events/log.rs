//! Reading the event log in a gapless order.
//!
//! PostgreSQL: an event's position is (txid of its transaction, id). A reader takes only events of
//! transactions older than the oldest transaction still running (`pg_snapshot_xmin`): every
//! transaction below that horizon has ended, and every later one gets a larger txid, so nothing can
//! ever appear behind a position already read. Events above the horizon are held back (and the
//! caller reads again shortly). SQLite has one writer, so ids already follow commit order.

use sqlx::{Row, any::AnyRow};

use super::{Event, Position};
use crate::{
    payments::PaymentError,
    store::{Backend, Db, StoreError},
};

const COLUMNS: &str = "event_id, txid, kind, snapshot, detail, created_at";

/// Events after `after`, oldest first, at most `limit`. The flag is true when committed events
/// were held back behind a still-running transaction (read again soon).
pub async fn read_after(db: &Db, after: Position, limit: u32) -> Result<(Vec<Event>, bool), PaymentError> {
    let horizon = horizon(db);
    let sql = format!(
        "SELECT {COLUMNS}, {horizon} AS horizon FROM payment_events WHERE (txid, event_id) > ($1, $2) \
         ORDER BY txid, event_id LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(after.txid)
        .bind(after.id)
        .bind(i64::from(limit))
        .fetch_all(db.pool())
        .await
        .map_err(StoreError::from)?;
    below_horizon(&rows)
}

/// SQL for the horizon: the oldest transaction still running (everything older has ended).
fn horizon(db: &Db) -> &'static str {
    match db.backend() {
        Backend::Postgres => "pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
        Backend::Sqlite => "9223372036854775807",
    }
}

/// The rows in order up to the first one at or above the horizon; true if any were held back.
fn below_horizon(rows: &[AnyRow]) -> Result<(Vec<Event>, bool), PaymentError> {
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let horizon: i64 = row.try_get("horizon").map_err(StoreError::from)?;
        let event = from_row(row)?;
        if event.position.txid >= horizon {
            return Ok((events, true));
        }
        events.push(event);
    }
    Ok((events, false))
}

/// The position of the newest event a reader may take now: everything up to it is complete, and
/// anything that commits later sorts after it. One query.
pub async fn head(db: &Db) -> Result<Position, PaymentError> {
    let sql = format!(
        "SELECT txid, event_id FROM payment_events WHERE txid < {} ORDER BY txid DESC, event_id DESC LIMIT 1",
        horizon(db)
    );
    let row = sqlx::query(&sql).fetch_optional(db.pool()).await.map_err(StoreError::from)?;
    Ok(match row {
        Some(row) => Position {
            txid: row.try_get("txid").map_err(StoreError::from)?,
            id: row.try_get("event_id").map_err(StoreError::from)?,
        },
        None => Position::default(),
    })
}

/// A page of one merchant's (and its sub-merchants') events after `after`, optionally of one payment.
pub async fn list(
    db: &Db,
    merchant_id: &str,
    payment_id: Option<&str>,
    after: Position,
    limit: u32,
) -> Result<(Vec<Event>, bool), PaymentError> {
    let horizon = horizon(db);
    let payment_clause = if payment_id.is_some() { "AND payment_id = $5" } else { "" };
    let sql = format!(
        "SELECT {COLUMNS}, {horizon} AS horizon FROM payment_events WHERE (txid, event_id) > ($1, $2) \
         AND merchant_id IN (SELECT merchant_id FROM merchants WHERE merchant_id = $3 OR parent_id = $3) \
         {payment_clause} ORDER BY txid, event_id LIMIT $4"
    );
    let mut query = sqlx::query(&sql).bind(after.txid).bind(after.id).bind(merchant_id).bind(i64::from(limit));
    if let Some(payment_id) = payment_id {
        query = query.bind(payment_id);
    }
    let rows = query.fetch_all(db.pool()).await.map_err(StoreError::from)?;
    below_horizon(&rows)
}

fn from_row(row: &AnyRow) -> Result<Event, PaymentError> {
    let corrupt = |col: &str, e: &dyn std::fmt::Display| PaymentError::Corrupt(format!("payment_events.{col}: {e}"));
    let snapshot: String = row.try_get("snapshot").map_err(|e| corrupt("snapshot", &e))?;
    let detail: Option<String> = row.try_get("detail").map_err(|e| corrupt("detail", &e))?;
    Ok(Event {
        position: Position {
            txid: row.try_get("txid").map_err(|e| corrupt("txid", &e))?,
            id: row.try_get("event_id").map_err(|e| corrupt("event_id", &e))?,
        },
        kind: {
            let kind: String = row.try_get("kind").map_err(|e| corrupt("kind", &e))?;
            super::EventKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?
        },
        payment: serde_json::from_str(&snapshot).map_err(|e| corrupt("snapshot", &e))?,
        detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
        created_at: row.try_get("created_at").map_err(|e| corrupt("created_at", &e))?,
    })
}
