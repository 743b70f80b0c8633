//! Idempotency keys: the same key with the same request gets the first result (the resource it
//! made, read back); with a different request it is refused. A key whose request is still running
//! is refused too, until its lease runs out: then a retry takes over (the first worker crashed).

use crate::payments::PaymentError;
use crate::store::{Db, UnixMs, now_ms};

/// What to do with a request carrying an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use: do the work.
    New,
    /// Done before: answer with this resource.
    Done(String),
    /// A previous attempt died mid-way; it may have made this resource.
    TakenOver(Option<String>),
}

/// Names one key of one merchant for one operation.
#[derive(Debug, Clone)]
pub struct Key<'a> {
    pub merchant_id: &'a str,
    pub operation: &'static str,
    pub key: &'a str,
}

/// An `idempotency_keys` row, as a claim reads it.
#[derive(sqlx::FromRow)]
struct KeyRow {
    request_hash: String,
    resource_id: Option<String>,
    /// `in_progress` or `done`.
    state: String,
    lease_until: UnixMs,
}

pub async fn claim(db: &Db, key: &Key<'_>, request_hash: &str, lease_ms: i64) -> Result<Claim, PaymentError> {
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (merchant_id, operation, idempotency_key, request_hash, state, lease_until, created_at) \
         VALUES ($1, $2, $3, $4, 'in_progress', $5, $6) ON CONFLICT (merchant_id, operation, idempotency_key) DO NOTHING",
    )
    .bind(key.merchant_id)
    .bind(key.operation)
    .bind(key.key)
    .bind(request_hash)
    .bind(now + lease_ms)
    .bind(now)
    .execute(db.pool())
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::New);
    }
    let row = sqlx::query_as::<_, KeyRow>(
        "SELECT request_hash, resource_id, state, lease_until FROM idempotency_keys \
         WHERE merchant_id = $1 AND operation = $2 AND idempotency_key = $3",
    )
    .bind(key.merchant_id)
    .bind(key.operation)
    .bind(key.key)
    .fetch_optional(db.pool())
    .await?;
    // Released between our insert and this read: try once more from the start.
    let Some(row) = row else { return Box::pin(claim(db, key, request_hash, lease_ms)).await };
    if row.request_hash != request_hash {
        return Err(PaymentError::IdempotencyMismatch);
    }
    let resource = row.resource_id;
    if row.state == "done" {
        return Ok(Claim::Done(resource.unwrap_or_default()));
    }
    let lease_until = row.lease_until;
    if lease_until > UnixMs(now) {
        return Err(PaymentError::IdempotencyInFlight);
    }
    // The previous worker's lease ran out: take over with a fresh lease (one taker wins).
    let taken = sqlx::query(
        "UPDATE idempotency_keys SET lease_until = $1 WHERE merchant_id = $2 AND operation = $3 \
         AND idempotency_key = $4 AND state = 'in_progress' AND lease_until = $5",
    )
    .bind(now + lease_ms)
    .bind(key.merchant_id)
    .bind(key.operation)
    .bind(key.key)
    .bind(lease_until)
    .execute(db.pool())
    .await?;
    if taken.rows_affected() == 1 { Ok(Claim::TakenOver(resource)) } else { Err(PaymentError::IdempotencyInFlight) }
}

/// Records the resource the work made (in the caller's transaction, with the resource itself).
pub async fn attach(conn: &mut sqlx::AnyConnection, key: &Key<'_>, resource_id: &str) -> Result<(), PaymentError> {
    sqlx::query(
        "UPDATE idempotency_keys SET resource_id = $1 WHERE merchant_id = $2 AND operation = $3 AND idempotency_key = $4",
    )
    .bind(resource_id)
    .bind(key.merchant_id)
    .bind(key.operation)
    .bind(key.key)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn finish(conn: &mut sqlx::AnyConnection, key: &Key<'_>) -> Result<(), PaymentError> {
    sqlx::query(
        "UPDATE idempotency_keys SET state = 'done' WHERE merchant_id = $1 AND operation = $2 AND idempotency_key = $3",
    )
    .bind(key.merchant_id)
    .bind(key.operation)
    .bind(key.key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets the in-progress key (if any) whose request made `resource_id`, when that came to
/// nothing (a refund the provider refused or never received), in the transaction that records
/// so: a retry runs the request again, as if it were new. Whoever settled it (the first worker,
/// a take-over, the sweep) need not know the key.
pub async fn forget_resource(
    conn: &mut sqlx::AnyConnection,
    operation: &str,
    resource_id: &str,
) -> Result<(), PaymentError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE operation = $1 AND resource_id = $2 AND state = 'in_progress'")
        .bind(operation)
        .bind(resource_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets a key whose request failed before it made anything, so a retry runs it again. A key
/// that already made a resource stays: a retry takes it over and finishes that resource.
pub async fn release(db: &Db, key: &Key<'_>) {
    let result = sqlx::query(
        "DELETE FROM idempotency_keys WHERE merchant_id = $1 AND operation = $2 AND idempotency_key = $3 \
         AND state = 'in_progress' AND resource_id IS NULL",
    )
    .bind(key.merchant_id)
    .bind(key.operation)
    .bind(key.key)
    .execute(db.pool())
    .await;
    if let Err(e) = result {
        // The lease still runs out, so a retry can take over later.
        tracing::warn!(error = %e, "could not release an idempotency key");
    }
}

/// Keys older than this are forgotten (the promise is at least 24 hours).
pub const RETENTION_MS: i64 = 48 * 3600 * 1000;

pub async fn purge_expired(db: &Db) -> Result<u64, PaymentError> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1 AND state = 'done'")
        .bind(now_ms() - RETENTION_MS)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}
