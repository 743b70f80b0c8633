//! Recording a change: the payment row (by compare-and-set), its event in the log and the webhook
//! that announces it, in the caller's transaction, so none commits without the others; on
//! PostgreSQL all of a batch's changes in one statement.

use super::{event_log, payments};
use crate::payments::{
    Payment, PaymentError,
    core::{EventDetail, EventKind},
};

/// Records a change in the caller's transaction: its event in the log and the webhook that
/// announces it, so neither commits without the other. Returns the event's id.
pub async fn record(
    conn: &mut sqlx::AnyConnection,
    payment: &Payment,
    kind: EventKind,
    detail: Option<&EventDetail>,
) -> Result<i64, PaymentError> {
    let ids = record_all(conn, &[Change { moves: false, payment, kind, detail }]).await?;
    ids.into_iter().next().flatten().ok_or_else(|| PaymentError::Corrupt("an event insert returned no row".into()))
}

/// Moves the payment to `next` (a compare-and-set on the version before) and records the change
/// as `record` does. `None` when someone else moved it first: then nothing was written.
pub async fn record_update(
    conn: &mut sqlx::AnyConnection,
    next: &Payment,
    kind: EventKind,
    detail: Option<&EventDetail>,
) -> Result<Option<i64>, PaymentError> {
    let ids = record_all(conn, &[Change { moves: true, payment: next, kind, detail }]).await?;
    Ok(ids.into_iter().next().flatten())
}

/// A change to record: `payment` as it now is and its event; if it `moves`, the payment row too,
/// by a compare-and-set from the version before.
pub struct Change<'a> {
    pub moves: bool,
    pub payment: &'a Payment,
    pub kind: EventKind,
    pub detail: Option<&'a EventDetail>,
}

/// Records every change (each as `record` or `record_update` does) and returns their event ids,
/// `None` for a move someone else made first (nothing of that change was written). On PostgreSQL
/// one statement writes them all, when they concern distinct payments: a pingback's cost is
/// mostly round trips. SQLite has no writes in `WITH`; there each write is its own statement.
pub async fn record_all(
    conn: &mut sqlx::AnyConnection,
    changes: &[Change<'_>],
) -> Result<Vec<Option<i64>>, PaymentError> {
    let distinct = changes.iter().map(|c| &c.payment.payment_id).collect::<std::collections::HashSet<_>>().len();
    if crate::store::Backend::of(conn).writes_in_ctes() && distinct == changes.len() {
        return write_in_one_statement(conn, changes).await;
    }
    let mut ids = Vec::with_capacity(changes.len());
    for change in changes {
        ids.push(write_separately(conn, change).await?);
    }
    Ok(ids)
}

async fn write_separately(conn: &mut sqlx::AnyConnection, change: &Change<'_>) -> Result<Option<i64>, PaymentError> {
    let Change { moves, payment, kind, detail } = *change;
    if moves && !payments::update(conn, payment).await? {
        return Ok(None);
    }
    let position = event_log::append(conn, payment, kind, detail).await?;
    let data = WebhookData::of(position.to_string(), payment, detail);
    crate::webhooks::outbox::enqueue(conn, &payment.merchant_id, &payment.payment_id, kind.as_str(), &data).await?;
    Ok(Some(position.id))
}

/// `WITH input AS (the changes, one JSON parameter), moved AS (UPDATE ... FROM input), event AS
/// (INSERT ... SELECT ...), queued AS (INSERT ... SELECT ...)`: a change's event is appended only
/// if it does not move the payment or its compare-and-set did, and its webhook body gets the
/// event's id in SQL. The payments must be distinct (events are matched to changes by payment).
async fn write_in_one_statement(
    conn: &mut sqlx::AnyConnection,
    changes: &[Change<'_>],
) -> Result<Vec<Option<i64>>, PaymentError> {
    let statement = ChangeStatement::new(changes, "")?;
    let found = statement.query().fetch_all(&mut *conn).await?;
    statement.event_ids(&found)
}

/// PostgreSQL: the statement `write_in_one_statement` runs, built once per call, with room for
/// more writes: `also` holds CTEs that run in the same statement (so they commit with it or not
/// at all), may read `moved` (the `n` of each change whose compare-and-set held), and take their
/// parameters from `$2`.
pub struct ChangeStatement {
    sql: String,
    rows: String,
    len: usize,
}

impl ChangeStatement {
    pub fn new(changes: &[Change<'_>], also: &str) -> Result<Self, PaymentError> {
        use crate::webhooks::outbox;
        let mut rows = Vec::with_capacity(changes.len());
        for (n, Change { moves, payment: p, kind, detail }) in changes.iter().enumerate() {
            let event = event_log::NewEvent::of(p, *detail)?;
            let queued = outbox::Queued {
                merchant_id: &p.merchant_id,
                payment_id: &p.payment_id,
                event_type: kind.as_str(),
                now: event.created_at,
            };
            let q = queued.values();
            let data = WebhookData::of(outbox::EVENT_ID_HOLE.to_owned(), outbox::PAYMENT_HOLE, *detail);
            let body = outbox::payload_around_event_and_payment(kind.as_str(), &data, queued.now)?;
            rows.push(ChangeRow {
                n,
                moves: *moves,
                payment_id: &p.payment_id,
                version_before: p.version - 1,
                status: p.status.as_str(),
                provider_ref: p.provider_ref.as_deref(),
                is_test: i64::from(p.test),
                subscription_id: p.subscription_id.as_deref(),
                cancelled_amount: p.cancelled_amount.into(),
                pending_cancel_amount: p.pending_cancel_amount.into(),
                version: p.version,
                updated_at: p.updated_at,
                paid_at: p.paid_at,
                failed_at: p.failed_at,
                cancelled_at: p.cancelled_at,
                merchant_id: &p.merchant_id,
                kind: kind.as_str(),
                snapshot: event.snapshot,
                detail: event.detail,
                event_at: event.created_at,
                delivery_id: q.delivery_id,
                type_pattern: q.type_pattern,
                family_pattern: q.family_pattern,
                head: body.head,
                between: body.between,
                tail: body.tail,
            });
        }
        let rows = serde_json::to_string(&rows).map_err(|e| PaymentError::Corrupt(e.to_string()))?;
        let queue_value = |n: usize| {
            [
                "i.delivery_id",
                "i.payment_id",
                "i.kind",
                "i.event_at",
                "i.merchant_id",
                "i.type_pattern",
                "i.family_pattern",
            ][n]
                .to_owned()
        };
        // The body around the id the event gets here and the payment its snapshot holds.
        let payload = "i.head || event.txid || '-' || event.event_id || i.between || i.snapshot || i.tail";
        let also = if also.is_empty() { String::new() } else { format!(", {also}") };
        let moving_types: Vec<String> =
            payments::MOVING.iter().map(|(column, kind)| format!("{column} {kind}")).collect();
        let moving_set: Vec<String> =
            payments::MOVING.iter().map(|(column, _)| format!("{column} = i.{column}")).collect();
        let (moving_types, moving_set) = (moving_types.join(", "), moving_set.join(", "));
        let sql = format!(
            "WITH input AS (SELECT * FROM json_to_recordset($1::json) AS i(n int, moves boolean, payment_id text, \
               version_before bigint, {moving_types}, merchant_id text, kind text, snapshot text, detail text, \
               event_at bigint, delivery_id text, type_pattern text, family_pattern text, head text, between text, tail text)), \
             moved AS (UPDATE payments SET {moving_set} \
               FROM input i WHERE i.moves AND payments.payment_id = i.payment_id AND payments.version = i.version_before \
               RETURNING i.n), \
             event AS (INSERT INTO payment_events {} \
               SELECT payment_id, merchant_id, kind, status, snapshot, detail, event_at FROM input \
               WHERE NOT moves OR n IN (SELECT n FROM moved) ORDER BY n \
               RETURNING event_id, txid, payment_id AS event_payment), \
             queued AS ({}){also} \
             SELECT i.n, event.event_id, event.txid FROM input i JOIN event ON event.event_payment = i.payment_id",
            event_log::INSERT_COLUMNS,
            outbox::queue_select(queue_value, payload, ", input i JOIN event ON event.event_payment = i.payment_id")
        );
        Ok(Self { sql, rows, len: changes.len() })
    }

    /// The statement with its first parameter bound; the caller binds those of `also`.
    pub fn query(&self) -> crate::store::AnyQuery<'_> {
        sqlx::query(&self.sql).bind(self.rows.as_str())
    }

    /// Each change's event id from what the statement returned, `None` for a move someone else
    /// made first.
    pub fn event_ids(&self, found: &[sqlx::any::AnyRow]) -> Result<Vec<Option<i64>>, PaymentError> {
        use sqlx::Row;
        let mut ids = vec![None; self.len];
        for row in found {
            let n = usize::try_from(row.try_get::<i32, _>("n")?).unwrap_or(usize::MAX);
            if let Some(slot) = ids.get_mut(n) {
                *slot = Some(event_log::position_of(row)?.id);
            }
        }
        Ok(ids)
    }
}

/// One change as `write_in_one_statement` passes it: a row of its JSON parameter.
#[derive(serde::Serialize)]
struct ChangeRow<'a> {
    n: usize,
    moves: bool,
    payment_id: &'a str,
    version_before: i64,
    status: &'a str,
    provider_ref: Option<&'a str>,
    is_test: i64,
    subscription_id: Option<&'a str>,
    cancelled_amount: i64,
    pending_cancel_amount: i64,
    version: i64,
    updated_at: i64,
    paid_at: Option<i64>,
    failed_at: Option<i64>,
    cancelled_at: Option<i64>,
    merchant_id: &'a str,
    kind: &'a str,
    snapshot: String,
    detail: Option<String>,
    event_at: i64,
    delivery_id: String,
    type_pattern: String,
    family_pattern: String,
    head: String,
    between: String,
    tail: String,
}

/// The webhook's `data` object for a change: its event's id first, the payment as it now is (or
/// where it goes), and the cancellation or subscription the event is about.
#[derive(serde::Serialize)]
struct WebhookData<'a, P: serde::Serialize> {
    event_id: String,
    payment: P,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancellation: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery: Option<&'a serde_json::Value>,
}

impl<'a, P: serde::Serialize> WebhookData<'a, P> {
    fn of(event_id: String, payment: P, detail: Option<&'a EventDetail>) -> Self {
        let (mut cancellation, mut subscription, mut delivery) = (None, None, None);
        match detail {
            Some(EventDetail::Cancellation(value)) => cancellation = Some(value),
            Some(EventDetail::Subscription(value)) => subscription = Some(value),
            Some(EventDetail::Delivery(value)) => delivery = Some(value),
            None => {}
        }
        Self { event_id, payment, cancellation, subscription, delivery }
    }
}
