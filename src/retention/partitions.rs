//! PostgreSQL: a partition per table and month, created ahead by paygate, dropped whole once all
//! its rows have expired (detached CONCURRENTLY first, so reads and writes go on meanwhile).

use sqlx::AnyConnection;

use super::policy::{Month, Table, upper_bound};
use crate::store::StoreError;

/// The current month and the next two always exist: a write dated by any replica's clock finds its
/// partition, even if expiry stops running for two months.
pub const AHEAD: u32 = 3;

/// A partition and the range of times it holds: [lower, upper), `None` for MINVALUE / MAXVALUE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub upper: Option<i64>,
}

/// The partitions of `table`.
pub async fn list(conn: &mut AnyConnection, table: &Table) -> Result<Vec<Partition>, StoreError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1)",
    )
    .bind(table.name)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(name, bound)| Partition { upper: upper_bound(&bound), name }).collect())
}

/// Creates the months' partitions that are missing, except where an existing partition already
/// holds that time (the table as it was before partitioning holds up to its bound). Returns the
/// partitions created.
pub async fn create_missing(
    conn: &mut AnyConnection,
    table: &Table,
    months: &[Month],
) -> Result<Vec<String>, StoreError> {
    let covered_until = list(conn, table).await?.iter().filter_map(|p| p.upper).max().unwrap_or(i64::MIN);
    let mut created = Vec::new();
    for month in months.iter().filter(|m| m.from >= covered_until) {
        let name = format!("{}_{}", table.name, month.suffix);
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {} FOR VALUES FROM ({}) TO ({})",
            table.name, month.from, month.to
        );
        sqlx::query(&sql).execute(&mut *conn).await?;
        created.push(name);
    }
    Ok(created)
}

/// Detaches `partition` from `table` without blocking reads or writes, then drops it. A detach a
/// crash interrupted is finished first.
pub async fn drop_partition(conn: &mut AnyConnection, table: &Table, partition: &str) -> Result<(), StoreError> {
    let pending: Option<bool> =
        sqlx::query_scalar("SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = to_regclass($1)")
            .bind(partition)
            .fetch_optional(&mut *conn)
            .await?;
    let detach = match pending {
        Some(true) => format!("ALTER TABLE {} DETACH PARTITION {partition} FINALIZE", table.name),
        Some(false) => format!("ALTER TABLE {} DETACH PARTITION {partition} CONCURRENTLY", table.name),
        None => String::new(),
    };
    if !detach.is_empty() {
        sqlx::query(&detach).execute(&mut *conn).await?;
    }
    sqlx::query(&format!("DROP TABLE IF EXISTS {partition}")).execute(&mut *conn).await?;
    Ok(())
}
