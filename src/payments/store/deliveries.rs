//! The `deliveries` rows: a payment's delivery confirmations (its history) and the outbox that
//! sends them (PENDING rows, claimed by a compare-and-set on `next_attempt_at`). The rules are in
//! `core::delivery`.

use sqlx::AnyConnection;

use crate::{
    payments::{
        PaymentError,
        core::delivery::{Delivery, DeliveryState, DeliveryStatus, DeliveryType},
    },
    store::{Db, Flag, UnixMs},
};

const COLUMNS: &str = "delivery_id, payment_id, merchant_id, kind, status, tracking_id, carrier, \
    estimated_delivery_at, estimated_update_at, refundable, details, reason, attachments, state, attempts, \
    last_error, created_at, sent_at";

/// Records `d`, held by its sender until `lease_until` (then the outbox may take it); false when a
/// delivery with its id exists already (nothing written).
pub async fn insert(conn: &mut AnyConnection, d: &Delivery, lease_until: i64) -> Result<bool, PaymentError> {
    let attachments = serde_json::to_string(&d.attachments).unwrap_or_else(|_| "[]".into());
    let done = sqlx::query(&format!(
        "INSERT INTO deliveries ({COLUMNS}, next_attempt_at, updated_at) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
         ON CONFLICT (delivery_id) DO NOTHING"
    ))
    .bind(&d.delivery_id)
    .bind(&d.payment_id)
    .bind(&d.merchant_id)
    .bind(d.kind.as_str())
    .bind(d.status.as_str())
    .bind(&d.tracking_id)
    .bind(&d.carrier)
    .bind(d.estimated_delivery_at)
    .bind(d.estimated_update_at)
    .bind(d.refundable.map(Flag))
    .bind(&d.details)
    .bind(&d.reason)
    .bind(attachments)
    .bind(d.state.as_str())
    .bind(d.attempts)
    .bind(&d.last_error)
    .bind(UnixMs(d.created_at))
    .bind(d.sent_at.map(UnixMs))
    .bind(lease_until)
    .bind(UnixMs(d.created_at))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The event-log position the worker `worker` has read through; set to `start` when it has none.
pub async fn cursor(db: &Db, worker: &str, start: &str, now: i64) -> Result<String, PaymentError> {
    sqlx::query(
        "INSERT INTO worker_cursors (worker, position, updated_at) VALUES ($1, $2, $3) ON CONFLICT (worker) DO NOTHING",
    )
    .bind(worker)
    .bind(start)
    .bind(now)
    .execute(db.pool())
    .await?;
    let position: String = sqlx::query_scalar("SELECT position FROM worker_cursors WHERE worker = $1")
        .bind(worker)
        .fetch_one(db.pool())
        .await?;
    Ok(position)
}

/// Moves the worker's cursor from `from` to `to`; false if another replica moved it first.
pub async fn advance_cursor(db: &Db, worker: &str, from: &str, to: &str, now: i64) -> Result<bool, PaymentError> {
    let done =
        sqlx::query("UPDATE worker_cursors SET position = $1, updated_at = $2 WHERE worker = $3 AND position = $4")
            .bind(to)
            .bind(now)
            .bind(worker)
            .bind(from)
            .execute(db.pool())
            .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(db: &Db, delivery_id: &str) -> Result<Option<Delivery>, PaymentError> {
    let sql = format!("SELECT {COLUMNS} FROM deliveries WHERE delivery_id = $1");
    let row = sqlx::query_as::<_, DeliveryRow>(&sql).bind(delivery_id).fetch_optional(db.pool()).await?;
    row.map(Delivery::try_from).transpose()
}

/// A payment's deliveries, oldest first.
pub async fn of_payment(conn: &mut AnyConnection, payment_id: &str) -> Result<Vec<Delivery>, PaymentError> {
    let sql = format!("SELECT {COLUMNS} FROM deliveries WHERE payment_id = $1 ORDER BY created_at, delivery_id");
    let rows = sqlx::query_as::<_, DeliveryRow>(&sql).bind(payment_id).fetch_all(conn).await?;
    rows.into_iter().map(Delivery::try_from).collect()
}

/// PENDING deliveries whose next try is due, soonest first, at most `limit`; each claimed until
/// `claim_until`, so replicas never send one at once.
pub async fn claim_due(db: &Db, now: i64, claim_until: i64, limit: u32) -> Result<Vec<Delivery>, PaymentError> {
    // The condition repeats `deliveries_due`'s own words: SQLite uses a partial index only then.
    let sql = format!(
        "SELECT {COLUMNS} FROM deliveries WHERE state = 'PENDING' AND next_attempt_at <= $1 \
         ORDER BY next_attempt_at LIMIT $2"
    );
    let rows = sqlx::query_as::<_, DeliveryRow>(&sql).bind(now).bind(i64::from(limit)).fetch_all(db.pool()).await?;
    let mut claimed = Vec::new();
    for d in rows.into_iter().map(Delivery::try_from) {
        let d = d?;
        let done = sqlx::query(
            "UPDATE deliveries SET next_attempt_at = $1 WHERE delivery_id = $2 AND state = 'PENDING' \
             AND next_attempt_at <= $3",
        )
        .bind(claim_until)
        .bind(&d.delivery_id)
        .bind(now)
        .execute(db.pool())
        .await?;
        if done.rows_affected() == 1 {
            claimed.push(d);
        }
    }
    Ok(claimed)
}

/// Where a try left a PENDING delivery: `state` with `last_error`, tried again at `next_attempt_at`
/// while still PENDING. False if it was not PENDING any more.
pub async fn record_try(db: &Db, d: &Delivery, next_attempt_at: Option<i64>, now: i64) -> Result<bool, PaymentError> {
    let done = sqlx::query(
        "UPDATE deliveries SET state = $1, attempts = $2, last_error = $3, sent_at = $4, next_attempt_at = $5, \
         updated_at = $6 WHERE delivery_id = $7 AND state = 'PENDING'",
    )
    .bind(d.state.as_str())
    .bind(d.attempts)
    .bind(&d.last_error)
    .bind(d.sent_at.map(UnixMs))
    .bind(next_attempt_at)
    .bind(now)
    .bind(&d.delivery_id)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    delivery_id: String,
    payment_id: String,
    merchant_id: String,
    kind: String,
    status: String,
    tracking_id: String,
    carrier: String,
    estimated_delivery_at: Option<i64>,
    estimated_update_at: Option<i64>,
    refundable: Option<Flag>,
    details: String,
    reason: String,
    attachments: String,
    state: String,
    attempts: i64,
    last_error: String,
    created_at: UnixMs,
    sent_at: Option<UnixMs>,
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = PaymentError;

    fn try_from(row: DeliveryRow) -> Result<Self, PaymentError> {
        let unknown = |col: &str, value: &str| PaymentError::Corrupt(format!("deliveries.{col}: unknown {value:?}"));
        Ok(Delivery {
            kind: DeliveryType::parse(&row.kind).ok_or_else(|| unknown("kind", &row.kind))?,
            status: DeliveryStatus::parse(&row.status).ok_or_else(|| unknown("status", &row.status))?,
            state: DeliveryState::parse(&row.state).ok_or_else(|| unknown("state", &row.state))?,
            attachments: serde_json::from_str(&row.attachments)
                .map_err(|_| PaymentError::Corrupt("deliveries.attachments: not a JSON list".into()))?,
            delivery_id: row.delivery_id,
            payment_id: row.payment_id,
            merchant_id: row.merchant_id,
            tracking_id: row.tracking_id,
            carrier: row.carrier,
            estimated_delivery_at: row.estimated_delivery_at,
            estimated_update_at: row.estimated_update_at,
            refundable: row.refundable.map(bool::from),
            details: row.details,
            reason: row.reason,
            attempts: row.attempts,
            last_error: row.last_error,
            created_at: row.created_at.into(),
            sent_at: row.sent_at.map(i64::from),
        })
    }
}
