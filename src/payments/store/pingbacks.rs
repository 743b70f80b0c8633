//! The raw `pingbacks` records: every delivery of a provider's notification is stored (or counted,
//! when it repeats) in the transaction that applies it, together with the payment it names.

use sqlx::{AnyConnection, Row};

use crate::{
    payments::{
        Payment, PaymentError,
        provider::{Notice, RawNotification},
        store::payments as rows,
    },
    store::{Backend, now_ms},
};

pub const OUTCOME_APPLIED: &str = "applied";

pub const OUTCOME_UNMATCHED: &str = "unmatched";

/// Sets the outcome of a stored notification (unmatched: kept for the record and the provider's
/// retries; applied: a retry matched after all).
pub async fn mark(conn: &mut AnyConnection, raw: &RawNotification, outcome: &str) -> Result<(), PaymentError> {
    sqlx::query(
        "UPDATE pingbacks SET outcome = $1 WHERE channel_key = $2 AND ref = $3 AND type = $4 AND unique_ref = $5",
    )
    .bind(outcome)
    .bind(&raw.channel_key)
    .bind(&raw.provider_ref)
    .bind(raw.kind)
    .bind(&raw.unique_ref)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether a notification's raw record is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    /// Delivered before but not applied (it matched no payment then).
    Again,
    Applied,
}

/// Inserts the raw row (or counts a repeat delivery) and reads the payment it names: one
/// statement on PostgreSQL, two on SQLite.
pub async fn record_delivery(
    conn: &mut AnyConnection,
    raw: &RawNotification,
    payment_id: &str,
) -> Result<(Seen, Option<Payment>), PaymentError> {
    let pingback_id = format!("pb_{}", ulid::Ulid::new());
    // Written as applied: if applying fails, the transaction rolls back (or marks it unmatched).
    let upsert = "INSERT INTO pingbacks (pingback_id, channel_key, ref, type, unique_ref, query, outcome, payment_id, \
         received_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, 'applied', $7, $8, $8) \
         ON CONFLICT (channel_key, ref, type, unique_ref) \
         DO UPDATE SET deliveries = pingbacks.deliveries + 1, last_seen_at = excluded.last_seen_at \
         RETURNING pingback_id, outcome";
    let joined = Backend::of(conn).writes_in_ctes();
    let sql = match joined {
        true => format!(
            "WITH seen AS ({upsert}) SELECT seen.pingback_id, seen.outcome, {} \
             FROM seen LEFT JOIN payments ON payments.payment_id = $7",
            rows::COLUMNS
        ),
        false => upsert.to_owned(),
    };
    let row = sqlx::query(&sql)
        .bind(&pingback_id)
        .bind(&raw.channel_key)
        .bind(&raw.provider_ref)
        .bind(raw.kind)
        .bind(&raw.unique_ref)
        .bind(&raw.query)
        .bind(payment_id)
        .bind(now_ms())
        .fetch_one(&mut *conn)
        .await?;
    let (stored_id, outcome): (String, String) = (row.try_get("pingback_id")?, row.try_get("outcome")?);
    let seen = seen_as(stored_id == pingback_id, &outcome);
    let payment = match joined {
        true => rows::joined_payment(&row)?,
        false => rows::get_in_tx(conn, payment_id).await?,
    };
    Ok((seen, payment))
}

/// `RawRecordRow`'s columns, as `json_to_recordset` reads them.
pub const RAW_RECORD_COLUMNS: &str =
    "n int, pb_id text, pb_channel text, pb_ref text, pb_type bigint, pb_unique text, pb_query text, pb_payment text";

/// A raw record as a row of a statement's JSON parameter, numbered `n` within the statement.
#[derive(serde::Serialize)]
pub struct RawRecordRow<'a> {
    n: usize,
    pb_id: &'a str,
    pb_channel: &'a str,
    pb_ref: &'a str,
    pb_type: i64,
    pb_unique: &'a str,
    pb_query: &'a str,
    pb_payment: &'a str,
}

impl<'a> RawRecordRow<'a> {
    pub fn of(n: usize, id: &'a str, raw: &'a RawNotification, payment_id: &'a str) -> Self {
        Self {
            n,
            pb_id: id,
            pb_channel: &raw.channel_key,
            pb_ref: &raw.provider_ref,
            pb_type: raw.kind,
            pb_unique: &raw.unique_ref,
            pb_query: &raw.query,
            pb_payment: payment_id,
        }
    }
}

/// PostgreSQL: `record_delivery` for a whole batch in one statement, the rows passed as one JSON
/// parameter. The notifications must be distinct and name distinct payments: one statement cannot
/// upsert a row twice, and each decision reads its payment as the statement found it.
pub async fn record_deliveries(
    conn: &mut AnyConnection,
    batch: &[(&RawNotification, &Notice)],
) -> Result<Vec<(Seen, Option<Payment>)>, PaymentError> {
    let ids: Vec<String> = batch.iter().map(|_| format!("pb_{}", ulid::Ulid::new())).collect();
    let rows: Vec<RawRecordRow> = batch
        .iter()
        .zip(&ids)
        .enumerate()
        .map(|(n, ((raw, notice), id))| RawRecordRow::of(n, id, raw, &notice.payment_id))
        .collect();
    let rows = serde_json::to_string(&rows).map_err(|e| PaymentError::Corrupt(e.to_string()))?;
    let sql = format!(
        "WITH input AS (SELECT * FROM json_to_recordset($1::json) AS i({RAW_RECORD_COLUMNS})), \
         seen AS (INSERT INTO pingbacks (pingback_id, channel_key, ref, type, unique_ref, query, outcome, payment_id, \
           received_at, last_seen_at) \
           SELECT pb_id, pb_channel, pb_ref, pb_type, pb_unique, pb_query, 'applied', pb_payment, $2, $2 \
           FROM input ORDER BY n \
           ON CONFLICT (channel_key, ref, type, unique_ref) \
           DO UPDATE SET deliveries = pingbacks.deliveries + 1, last_seen_at = excluded.last_seen_at \
           RETURNING pingback_id AS seen_id, outcome AS seen_outcome, channel_key AS seen_channel, ref AS seen_ref, \
             type AS seen_type, unique_ref AS seen_unique) \
         SELECT input.n, seen.seen_id, seen.seen_outcome, {} FROM input \
         JOIN seen ON seen_channel = pb_channel AND seen_ref = pb_ref AND seen_type = pb_type AND seen_unique = pb_unique \
         LEFT JOIN payments ON payments.payment_id = input.pb_payment",
        rows::COLUMNS
    );
    let found = sqlx::query(&sql).bind(rows).bind(now_ms()).fetch_all(&mut *conn).await?;
    let mut recorded: Vec<Option<(Seen, Option<Payment>)>> = vec![None; batch.len()];
    for row in &found {
        let n = usize::try_from(row.try_get::<i32, _>("n")?).unwrap_or(usize::MAX);
        let (stored_id, outcome): (String, String) = (row.try_get("seen_id")?, row.try_get("seen_outcome")?);
        let seen = seen_as(ids.get(n).is_some_and(|id| *id == stored_id), &outcome);
        if let Some(slot) = recorded.get_mut(n) {
            *slot = Some((seen, rows::joined_payment(row)?));
        }
    }
    recorded
        .into_iter()
        .map(|r| r.ok_or_else(|| PaymentError::Corrupt("a stored notification came back without its row".into())))
        .collect()
}

fn seen_as(inserted_now: bool, outcome: &str) -> Seen {
    match () {
        _ if inserted_now => Seen::New,
        _ if outcome == OUTCOME_APPLIED => Seen::Applied,
        _ => Seen::Again,
    }
}
