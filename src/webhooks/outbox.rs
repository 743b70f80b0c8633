//! The webhook outbox: a delivery row written in the same transaction as the event it announces,
//! then claimed, sent and settled by the dispatcher. Claims are leases: a replica that dies
//! mid-delivery leaves the row to be claimed again when its lease runs out (at-least-once; the
//! receiver dedupes on `webhook-id`).

use serde::Serialize;
use sqlx::AnyConnection;

use super::{WebhookError, endpoints};
use crate::store::{AnyQuery, Db, UnixMs, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Succeeded, Self::Failed].into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub delivery_id: String,
    /// The lease this replica holds while sending (0 when not claimed).
    pub claimed_until: i64,
    pub merchant_id: String,
    pub payment_id: Option<String>,
    pub event_type: String,
    pub payload: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub attempt: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub latency_ms: i64,
    pub at: i64,
}

fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// Queues the webhook announcing an event of `merchant_id`'s payment, if the merchant has an
/// endpoint that wants `event_type`. Runs inside the event's transaction. The outbox does not know
/// payments: `data` is the webhook's `data` object as the caller built it.
pub async fn enqueue(
    conn: &mut AnyConnection,
    merchant_id: &str,
    payment_id: &str,
    event_type: &str,
    data: &impl serde::Serialize,
) -> Result<(), WebhookError> {
    let now = now_ms();
    let payload = payload(event_type, data, now)?;
    let sql = queue_sql(1, "$8", "");
    let queued = Queued { merchant_id, payment_id, event_type, now };
    bind_queued(sqlx::query(&sql), &queued).bind(payload).execute(conn).await?;
    Ok(())
}

/// A webhook's body.
#[derive(serde::Serialize)]
struct Body<'a, D> {
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: String,
    data: &'a D,
}

/// A webhook's body, `{type, timestamp, data}`, as sent.
fn payload(event_type: &str, data: &impl serde::Serialize, now: i64) -> Result<String, WebhookError> {
    let body = Body { event_type, timestamp: rfc3339(now), data };
    serde_json::to_string(&body).map_err(|e| WebhookError::Corrupt(e.to_string()))
}

/// What `data.event_id` holds when passed to `payload_around_event_and_payment`: where the id
/// goes. The body's first occurrence of it is the id's, as the body writes `type`, `timestamp` and
/// then `data.event_id` before any merchant text.
pub const EVENT_ID_HOLE: &str = "\u{1}event_id\u{1}";

/// What `data.payment` holds when passed to `payload_around_event_and_payment`: where the
/// payment's JSON goes. It follows `event_id`, and merchant text comes only after it.
pub const PAYMENT_HOLE: &str = "\u{1}payment\u{1}";

/// The body of a webhook cut where its event id and its payment go, for the statement that
/// assigns the id and holds the payment's JSON already (the event's snapshot): the body is
/// `head`, the id, `between`, the payment, `tail`. So the statement's parameters carry the
/// payment once, not twice.
#[derive(Debug)]
pub struct BodyAround {
    pub head: String,
    pub between: String,
    pub tail: String,
}

/// `data` is as for `enqueue`, with [`EVENT_ID_HOLE`] as its `event_id` and [`PAYMENT_HOLE`] as
/// its `payment`, both serialized before any merchant text.
pub fn payload_around_event_and_payment(
    event_type: &str,
    data: &impl serde::Serialize,
    now: i64,
) -> Result<BodyAround, WebhookError> {
    let text = payload(event_type, data, now)?;
    let hole = |marker: &str, from: usize| {
        let marker = serde_json::to_string(marker).unwrap_or_default();
        text[from..]
            .find(&marker)
            .map(|at| (from + at, from + at + marker.len()))
            .ok_or_else(|| WebhookError::Corrupt("a webhook body without its event id or payment".into()))
    };
    let (id_at, id_end) = hole(EVENT_ID_HOLE, 0)?;
    let (payment_at, payment_end) = hole(PAYMENT_HOLE, id_end)?;
    // The id goes inside the quotes of the marker's string; the payment replaces its whole string.
    Ok(BodyAround {
        head: text[..=id_at].to_owned(),
        between: format!("\"{}", &text[id_end..payment_at]),
        tail: text[payment_end..].to_owned(),
    })
}

/// What a queued delivery row needs besides its payload.
pub struct Queued<'a> {
    pub merchant_id: &'a str,
    pub payment_id: &'a str,
    pub event_type: &'a str,
    pub now: i64,
}

/// `INSERT ... SELECT` of the delivery row over the merchant's endpoint, which writes nothing when
/// the merchant has no endpoint that wants the type. One statement either way: most merchants have
/// none, and this runs inside every pingback's transaction. Its own parameters are `$first` to
/// `$first + 6` (bound by `bind_queued`); `payload` is an SQL expression for the body text, and
/// `from` adds tables it reads (", event"). The type filter matches how `endpoints::upsert` stores
/// `event_types` (a compact JSON array of known types and `payment.*` / `subscription.*`);
/// `Endpoint::wants` is the same rule in Rust.
pub fn queue_sql(first: usize, payload: &str, from: &str) -> String {
    queue_select(|n| format!("${}", first + n), payload, from)
}

/// `queue_sql` with each of its seven values an SQL expression `value(n)` (a parameter, or a
/// column of a row the statement reads), in `bind_queued`'s order.
pub fn queue_select(value: impl Fn(usize) -> String, payload: &str, from: &str) -> String {
    let p = value;
    format!(
        "INSERT INTO webhook_deliveries (delivery_id, merchant_id, payment_id, event_type, payload, status, \
         next_attempt_at, created_at) \
         SELECT {}, webhook_endpoints.merchant_id, {}, {}, {payload}, 'PENDING', {}, {} FROM webhook_endpoints{from} \
         WHERE webhook_endpoints.merchant_id = {} AND disabled_at IS NULL \
         AND (event_types = '[]' OR event_types LIKE {} OR event_types LIKE {})",
        p(0),
        p(1),
        p(2),
        p(3),
        p(3),
        p(4),
        p(5),
        p(6)
    )
}

pub fn bind_queued<'q>(query: AnyQuery<'q>, q: &Queued<'_>) -> AnyQuery<'q> {
    let v = q.values();
    query
        .bind(v.delivery_id)
        .bind(q.payment_id.to_owned())
        .bind(q.event_type.to_owned())
        .bind(q.now)
        .bind(q.merchant_id.to_owned())
        .bind(v.type_pattern)
        .bind(v.family_pattern)
}

/// The values of a queued row that `Queued` does not hold as they are.
pub struct QueuedValues {
    pub delivery_id: String,
    /// `LIKE` patterns matching the event type, and its family (`payment.*`), in `event_types`.
    pub type_pattern: String,
    pub family_pattern: String,
}

impl Queued<'_> {
    pub fn values(&self) -> QueuedValues {
        let family = self.event_type.split_once('.').map_or(String::new(), |(family, _)| format!("{family}.*"));
        QueuedValues {
            delivery_id: format!("msg_{}", ulid::Ulid::new()),
            type_pattern: format!("%\"{}\"%", self.event_type),
            family_pattern: format!("%\"{family}\"%"),
        }
    }
}

async fn insert(
    conn: &mut AnyConnection,
    merchant_id: &str,
    payment_id: Option<&str>,
    event_type: &str,
    payload: &str,
    now: i64,
) -> Result<(), WebhookError> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (delivery_id, merchant_id, payment_id, event_type, payload, status, \
         next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, 'PENDING', $6, $6)",
    )
    .bind(format!("msg_{}", ulid::Ulid::new()))
    .bind(merchant_id)
    .bind(payment_id)
    .bind(event_type)
    .bind(payload)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// A `webhook.test` delivery to the merchant's endpoint.
pub async fn enqueue_test(db: &Db, merchant_id: &str) -> Result<Delivery, WebhookError> {
    let mut conn = db.pool().acquire().await?;
    if endpoints::get(&mut conn, merchant_id).await?.is_none() {
        return Err(WebhookError::NotFound);
    }
    let now = now_ms();
    let payload = serde_json::json!({
        "type": "webhook.test", "timestamp": rfc3339(now), "data": { "message": "a test webhook from paygate" }
    });
    insert(&mut conn, merchant_id, None, "webhook.test", &payload.to_string(), now).await?;
    let row = sqlx::query_as::<_, DeliveryRow>(&format!(
        "SELECT {COLUMNS} FROM webhook_deliveries WHERE merchant_id = $1 ORDER BY seq DESC LIMIT 1"
    ))
    .bind(merchant_id)
    .fetch_one(&mut *conn)
    .await?;
    row.try_into()
}

const COLUMNS: &str = "delivery_id, claimed_until, merchant_id, payment_id, event_type, payload, status, attempts, \
    next_attempt_at, last_status_code, last_error, created_at, finished_at";

/// Claims up to `limit` due deliveries until `lease_until`. A delivery waits while an earlier one
/// for the same payment is still pending, so a payment's webhooks keep their order.
pub async fn claim(db: &Db, now: i64, lease_until: i64, limit: u32) -> Result<Vec<Delivery>, WebhookError> {
    let lock = db.backend().skip_locked_sql();
    let sql = format!(
        "UPDATE webhook_deliveries SET claimed_until = $1 WHERE seq IN (\
           SELECT d.seq FROM webhook_deliveries d WHERE d.status = 'PENDING' AND d.next_attempt_at <= $2 \
           AND (d.claimed_until IS NULL OR d.claimed_until < $2) \
           AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.payment_id = d.payment_id \
             AND e.merchant_id = d.merchant_id AND e.seq < d.seq AND e.status = 'PENDING') \
           ORDER BY d.seq LIMIT $3 {lock}) \
         RETURNING {COLUMNS}"
    );
    let rows = sqlx::query_as::<_, DeliveryRow>(&sql)
        .bind(lease_until)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(db.pool())
        .await?;
    let mut claimed: Vec<Delivery> = rows.into_iter().map(Delivery::try_from).collect::<Result<_, _>>()?;
    claimed.sort_by(|a, b| a.delivery_id.cmp(&b.delivery_id));
    Ok(claimed)
}

/// What became of one attempt.
pub enum Settle {
    Succeeded,
    /// Try again at this time.
    Retry(i64),
    /// Give up.
    Failed,
}

pub async fn record(db: &Db, delivery: &Delivery, attempt: &Attempt, settle: Settle) -> Result<(), WebhookError> {
    let mut tx = db.pool().begin().await?;
    // Only under our own lease: if it ran out and another replica took the delivery, that replica settles it.
    let still_ours = sqlx::query("SELECT 1 FROM webhook_deliveries WHERE delivery_id = $1 AND claimed_until = $2")
        .bind(&delivery.delivery_id)
        .bind(delivery.claimed_until)
        .fetch_optional(&mut *tx)
        .await?;
    if still_ours.is_none() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error, latency_ms, at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&delivery.delivery_id)
    .bind(attempt.attempt)
    .bind(attempt.status_code)
    .bind(&attempt.error)
    .bind(attempt.latency_ms)
    .bind(attempt.at)
    .execute(&mut *tx)
    .await?;
    let (status, next, finished) = match settle {
        Settle::Succeeded => (DeliveryStatus::Succeeded, delivery.next_attempt_at, Some(attempt.at)),
        Settle::Retry(at) => (DeliveryStatus::Pending, at, None),
        Settle::Failed => (DeliveryStatus::Failed, delivery.next_attempt_at, Some(attempt.at)),
    };
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_at = $3, claimed_until = NULL, \
         last_status_code = $4, last_error = $5, finished_at = $6 WHERE delivery_id = $7",
    )
    .bind(status.as_str())
    .bind(attempt.attempt)
    .bind(next)
    .bind(attempt.status_code)
    .bind(&attempt.error)
    .bind(finished)
    .bind(&delivery.delivery_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Gives up on a delivery without an attempt (its endpoint is gone or refuses everything).
pub async fn fail_unsent(db: &Db, delivery_id: &str, reason: &str) -> Result<(), WebhookError> {
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'FAILED', claimed_until = NULL, last_error = $1, finished_at = $2 \
         WHERE delivery_id = $3",
    )
    .bind(reason)
    .bind(now_ms())
    .bind(delivery_id)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// A merchant's deliveries, newest first, before `before_seq` (the page cursor), each with its
/// attempts. One statement reads both, so they come from one snapshot: a delivery never shows
/// as pending next to the attempt that settled it (or settled without it).
pub async fn list(
    db: &Db,
    merchant_id: &str,
    before_seq: Option<i64>,
    limit: u32,
) -> Result<Vec<(i64, Delivery, Vec<Attempt>)>, WebhookError> {
    let sql = format!(
        "SELECT d.*, a.attempt AS a_attempt, a.status_code AS a_status_code, a.error AS a_error, \
         a.latency_ms AS a_latency_ms, a.at AS a_at FROM \
         (SELECT seq, {COLUMNS} FROM webhook_deliveries WHERE merchant_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3) d \
         LEFT JOIN webhook_attempts a ON a.delivery_id = d.delivery_id ORDER BY d.seq DESC, a.attempt"
    );
    let rows = sqlx::query_as::<_, DeliveryAttemptRow>(&sql)
        .bind(merchant_id)
        .bind(before_seq.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(db.pool())
        .await?;
    with_attempts(rows)
}

/// One delivery of a merchant with its attempts, read as one snapshot (see `list`).
pub async fn get(db: &Db, merchant_id: &str, delivery_id: &str) -> Result<(Delivery, Vec<Attempt>), WebhookError> {
    let sql = format!(
        "SELECT d.*, a.attempt AS a_attempt, a.status_code AS a_status_code, a.error AS a_error, \
         a.latency_ms AS a_latency_ms, a.at AS a_at FROM \
         (SELECT seq, {COLUMNS} FROM webhook_deliveries WHERE merchant_id = $1 AND delivery_id = $2) d \
         LEFT JOIN webhook_attempts a ON a.delivery_id = d.delivery_id ORDER BY a.attempt"
    );
    let rows =
        sqlx::query_as::<_, DeliveryAttemptRow>(&sql).bind(merchant_id).bind(delivery_id).fetch_all(db.pool()).await?;
    let (_, delivery, attempts) = with_attempts(rows)?.into_iter().next().ok_or(WebhookError::NotFound)?;
    Ok((delivery, attempts))
}

/// Folds joined rows (a delivery repeated once per attempt, or once with no attempt) into deliveries.
fn with_attempts(rows: Vec<DeliveryAttemptRow>) -> Result<Vec<(i64, Delivery, Vec<Attempt>)>, WebhookError> {
    let mut out: Vec<(i64, Delivery, Vec<Attempt>)> = Vec::new();
    for row in rows {
        if out.last().is_none_or(|(last, _, _)| *last != row.seq) {
            out.push((row.seq, row.delivery.try_into()?, Vec::new()));
        }
        if let (Some(attempt), Some((_, _, attempts))) = (row.a_attempt, out.last_mut()) {
            let missing = |col: &str| WebhookError::Corrupt(format!("webhook_attempts.{col}: missing"));
            attempts.push(Attempt {
                attempt,
                status_code: row.a_status_code,
                error: row.a_error,
                latency_ms: row.a_latency_ms.ok_or_else(|| missing("latency_ms"))?,
                at: row.a_at.ok_or_else(|| missing("at"))?.into(),
            });
        }
    }
    Ok(out)
}

/// Sends a delivery again (same `webhook-id`), now.
pub async fn redeliver(db: &Db, merchant_id: &str, delivery_id: &str) -> Result<Delivery, WebhookError> {
    let now = now_ms();
    let row = sqlx::query_as::<_, DeliveryRow>(&format!(
        "UPDATE webhook_deliveries SET status = 'PENDING', next_attempt_at = $1, claimed_until = NULL, finished_at = NULL \
         WHERE delivery_id = $2 AND merchant_id = $3 AND (claimed_until IS NULL OR claimed_until < $1) RETURNING {COLUMNS}"
    ))
    .bind(now)
    .bind(delivery_id)
    .bind(merchant_id)
    .fetch_optional(db.pool())
    .await?
    .ok_or(WebhookError::NotFound)?;
    row.try_into()
}

/// Queues again every FAILED delivery of the merchant created at or after `since` (or, with
/// `dry_run`, counts them); returns how many.
pub async fn recover(db: &Db, merchant_id: &str, since: i64, dry_run: bool) -> Result<u64, WebhookError> {
    const FAILED_SINCE: &str = "merchant_id = $1 AND status = 'FAILED' AND created_at >= $2";
    if dry_run {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM webhook_deliveries WHERE {FAILED_SINCE}"))
            .bind(merchant_id)
            .bind(since)
            .fetch_one(db.pool())
            .await?;
        return Ok(n.max(0) as u64);
    }
    let done = sqlx::query(&format!(
        "UPDATE webhook_deliveries SET status = 'PENDING', next_attempt_at = $3, claimed_until = NULL, \
         finished_at = NULL WHERE {FAILED_SINCE}"
    ))
    .bind(merchant_id)
    .bind(since)
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected())
}

/// A `webhook_deliveries` row as stored.
#[derive(sqlx::FromRow)]
struct DeliveryRow {
    delivery_id: String,
    claimed_until: Option<UnixMs>,
    merchant_id: String,
    payment_id: Option<String>,
    event_type: String,
    payload: String,
    status: String,
    attempts: i64,
    next_attempt_at: UnixMs,
    last_status_code: Option<i64>,
    last_error: Option<String>,
    created_at: UnixMs,
    finished_at: Option<UnixMs>,
}

/// A delivery joined with one of its attempts (none: the `a_` columns are NULL).
#[derive(sqlx::FromRow)]
struct DeliveryAttemptRow {
    seq: i64,
    #[sqlx(flatten)]
    delivery: DeliveryRow,
    a_attempt: Option<i64>,
    a_status_code: Option<i64>,
    a_error: Option<String>,
    a_latency_ms: Option<i64>,
    a_at: Option<UnixMs>,
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = WebhookError;

    fn try_from(row: DeliveryRow) -> Result<Self, WebhookError> {
        let status = DeliveryStatus::parse(&row.status)
            .ok_or_else(|| WebhookError::Corrupt(format!("webhook_deliveries.status: unknown {:?}", row.status)))?;
        Ok(Delivery {
            delivery_id: row.delivery_id,
            claimed_until: row.claimed_until.unwrap_or_default().into(),
            merchant_id: row.merchant_id,
            payment_id: row.payment_id,
            event_type: row.event_type,
            payload: row.payload,
            status,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at.into(),
            last_status_code: row.last_status_code,
            last_error: row.last_error,
            created_at: row.created_at.into(),
            finished_at: row.finished_at.map(i64::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_and_the_payment_go_where_their_holes_are_and_nowhere_else() {
        // Merchant text that looks like the holes, in the payment and after it.
        let payment = serde_json::json!({ "order_name": EVENT_ID_HOLE, "custom": PAYMENT_HOLE, "payment_id": "pay_1" });
        let data = |event_id: &str, payment: serde_json::Value| {
            serde_json::json!({
                "event_id": event_id,
                "payment": payment,
                "subscription": { "reason": format!("\"event_id\":\"x\" {PAYMENT_HOLE}") },
            })
        };
        let around =
            payload_around_event_and_payment("payment.paid", &data(EVENT_ID_HOLE, PAYMENT_HOLE.into()), 0).unwrap();
        let snapshot = serde_json::to_string(&payment).unwrap();
        let body = format!("{}17-42{}{snapshot}{}", around.head, around.between, around.tail);
        // Byte for byte what the body of the whole data is: receivers verify signatures over it.
        assert_eq!(body, payload("payment.paid", &data("17-42", payment), 0).unwrap());
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body["data"]["payment"]["order_name"], EVENT_ID_HOLE);
        assert_eq!(body["data"]["event_id"], "17-42");
    }

    #[test]
    fn a_body_without_its_holes_is_refused() {
        let data = serde_json::json!({ "event_id": EVENT_ID_HOLE, "payment": {} });
        assert!(payload_around_event_and_payment("payment.paid", &data, 0).is_err());
    }
}
