//! Expiry row by row, in small batches, each its own short transaction: on SQLite for every table,
//! on PostgreSQL for raw pingbacks (the one growing table that is not partitioned). Between batches
//! the writer is free for others (SQLite has one).

use std::time::Duration;

use super::policy::{EVENTS, Table};
use crate::{
    payments::{core::Position, store::event_log},
    store::{Backend, Db, StoreError, now_ms},
};

/// Rows per batch: small enough that a batch holds SQLite's writer for milliseconds.
pub const BATCH: i64 = 1_000;

/// Deletes the rows of `table` dated before `cutoff`; returns how many. For the event log, the
/// newest position deleted is recorded first, in the same transaction.
pub async fn expire(db: &Db, table: &Table, cutoff: i64) -> Result<u64, StoreError> {
    let (key, order) = match db.backend() {
        // The oldest rows come first in rowid order, so a batch stops after them.
        Backend::Sqlite => ("rowid", "ORDER BY rowid"),
        Backend::Postgres => ("pingback_id", ""),
    };
    let batch = format!("SELECT {key} FROM {} WHERE {} < $1 {order} LIMIT {BATCH}", table.name, table.time_column);
    let mut deleted = 0;
    loop {
        let mut tx = db.pool().begin().await?;
        if *table == EVENTS {
            let newest = format!(
                "SELECT txid, event_id FROM payment_events WHERE {key} IN ({batch}) \
                 ORDER BY txid DESC, event_id DESC LIMIT 1"
            );
            let row: Option<(i64, i64)> = sqlx::query_as(&newest).bind(cutoff).fetch_optional(&mut *tx).await?;
            if let Some((txid, id)) = row {
                event_log::mark_expired_through(&mut tx, Position { txid, id }, now_ms()).await?;
            }
        }
        let delete = format!("DELETE FROM {} WHERE {key} IN ({batch})", table.name);
        let done = sqlx::query(&delete).bind(cutoff).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        deleted += done;
        if done < BATCH as u64 {
            return Ok(deleted);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
