//! Retention: the data that grows without end expires by kind, each after its own time (`policy`,
//! from settings). On PostgreSQL a month's partition goes whole (`partitions`, which also creates
//! the coming months'); raw pingbacks, and everything on SQLite, go in small batches (`batches`).
//! Payments, cancellations and subscriptions are the ledger and never expire. Every replica runs
//! it every interval; on PostgreSQL they take turns (a session advisory lock), on SQLite there is
//! one. A cursor into expired events is refused (`event_log::check_cursor`).

pub mod batches;
pub mod partitions;
pub mod policy;

use std::time::Duration;

pub use policy::Policy;
use policy::{EVENTS, TABLES, Table};

use crate::{
    payments::{core::Position, store::event_log},
    shutdown::Shutdown,
    store::{Backend, Db, StoreError, now_ms},
};

/// The advisory lock replicas take turns with (an arbitrary constant: "paygate retention").
const TURN_LOCK: i64 = 0x7061_7967_7265_7401;

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Another replica held the turn: this one did nothing.
    pub skipped: bool,
    pub partitions_created: Vec<String>,
    pub partitions_dropped: Vec<String>,
    /// Rows deleted in batches, by table.
    pub rows_deleted: Vec<(&'static str, u64)>,
}

/// Expires what `policy` says has expired at `now`, and (PostgreSQL) creates the partitions of the
/// month of `now` and the next ones.
pub async fn run_once(db: &Db, policy: &Policy, now: i64) -> Result<Report, StoreError> {
    let mut report = Report::default();
    match db.backend() {
        Backend::Sqlite => {
            for table in &TABLES {
                if let Some(cutoff) = policy.cutoff(table, now) {
                    expire_in_batches(db, table, cutoff, &mut report).await?;
                }
            }
        }
        Backend::Postgres => {
            let mut turn = db.pool().acquire().await?;
            let mine: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(TURN_LOCK).fetch_one(&mut *turn).await?;
            if !mine {
                return Ok(Report { skipped: true, ..report });
            }
            let result = partitioned(db, &mut turn, policy, now, &mut report).await;
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(TURN_LOCK).execute(&mut *turn).await;
            result?;
        }
    }
    Ok(report)
}

async fn partitioned(
    db: &Db,
    conn: &mut sqlx::AnyConnection,
    policy: &Policy,
    now: i64,
    report: &mut Report,
) -> Result<(), StoreError> {
    let months = policy::months_from(now, partitions::AHEAD);
    for table in TABLES.iter().filter(|t| t.partitioned) {
        report.partitions_created.extend(partitions::create_missing(conn, table, &months).await?);
        let Some(cutoff) = policy.cutoff(table, now) else { continue };
        for partition in partitions::list(conn, table).await? {
            if !policy::expired(partition.upper, cutoff) {
                continue;
            }
            if *table == EVENTS {
                // First the mark (a cursor before it is refused), then the rows.
                let newest =
                    format!("SELECT txid, event_id FROM {} ORDER BY txid DESC, event_id DESC LIMIT 1", partition.name);
                if let Some((txid, id)) = sqlx::query_as::<_, (i64, i64)>(&newest).fetch_optional(&mut *conn).await? {
                    event_log::mark_expired_through(conn, Position { txid, id }, now_ms()).await?;
                }
            }
            partitions::drop_partition(conn, table, &partition.name).await?;
            mark_expired_before(conn, table, partition.upper.unwrap_or(cutoff)).await?;
            report.partitions_dropped.push(partition.name);
        }
    }
    for table in TABLES.iter().filter(|t| !t.partitioned) {
        if let Some(cutoff) = policy.cutoff(table, now) {
            expire_in_batches(db, table, cutoff, report).await?;
        }
    }
    Ok(())
}

async fn expire_in_batches(db: &Db, table: &Table, cutoff: i64, report: &mut Report) -> Result<(), StoreError> {
    let deleted = batches::expire(db, table, cutoff).await?;
    if deleted > 0 {
        let mut conn = db.pool().acquire().await?;
        mark_expired_before(&mut conn, table, cutoff).await?;
        report.rows_deleted.push((table.name, deleted));
    }
    Ok(())
}

/// Records that `table`'s rows dated before `before` are gone (it only moves forward).
async fn mark_expired_before(conn: &mut sqlx::AnyConnection, table: &Table, before: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE retention_marks SET expired_before = $2, updated_at = $3 \
         WHERE table_name = $1 AND expired_before < $2",
    )
    .bind(table.name)
    .bind(before)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs `run_once` now and every `interval` until shutdown. A failed run is logged and tried
/// again next time (nothing is half-done: each step is its own transaction, marks first).
pub fn spawn(db: Db, policy: Policy, interval: Duration, mut shutdown: Shutdown) {
    tokio::spawn(async move {
        loop {
            match run_once(&db, &policy, now_ms()).await {
                Ok(report) => log(&report),
                Err(e) => tracing::warn!(error = %e, "retention run failed; trying again next interval"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.signalled() => return,
            }
        }
    });
}

fn log(report: &Report) {
    for (table, rows) in &report.rows_deleted {
        metrics::counter!("paygate_retention_rows_expired_total", "table" => *table).increment(*rows);
    }
    for partition in &report.partitions_dropped {
        let table = TABLES.iter().find(|t| partition.starts_with(t.name)).map_or("unknown", |t| t.name);
        metrics::counter!("paygate_retention_partitions_dropped_total", "table" => table).increment(1);
    }
    if !(report.partitions_created.is_empty() && report.partitions_dropped.is_empty() && report.rows_deleted.is_empty())
    {
        tracing::info!(
            created = ?report.partitions_created,
            dropped = ?report.partitions_dropped,
            deleted = ?report.rows_deleted,
            "retention run"
        );
    }
}
