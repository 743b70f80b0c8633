//! The payment event log: every state change appends one immutable event in the same transaction
//! as the change (`append`, called by `payments::record`), and readers take it back in a gapless
//! order.
//!
//! PostgreSQL: an event's position is (txid of its transaction, id). A reader takes only events of
//! transactions older than the oldest transaction still running (`pg_snapshot_xmin`): every
//! transaction below that horizon has ended, and every later one gets a larger txid, so nothing can
//! ever appear behind a position already read. Events above the horizon are held back (and the
//! caller reads again shortly). SQLite has one writer, so ids already follow commit order.

use std::{fmt, str::FromStr};

use serde::Serialize;
use sqlx::AnyConnection;

use super::{Payment, PaymentError};
use crate::store::{AnyQuery, Db, StoreError, UnixMs};

/// Where an event sits in the log: ordered by the writing transaction, then by id. Shown to
/// clients as `"<txid>-<id>"`, the cursor they resume after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub txid: i64,
    pub id: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.txid, self.id)
    }
}

impl FromStr for Position {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (txid, id) = s.split_once('-').ok_or("is not an event id this server issued")?;
        let parse =
            |part: &str| part.parse::<i64>().ok().filter(|n| *n >= 0).ok_or("is not an event id this server issued");
        Ok(Self { txid: parse(txid)?, id: parse(id)? })
    }
}

/// What happened to a payment. The strings are the contract: stream `kind`, webhook `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    PaymentPaid,
    PaymentPendingReview,
    PaymentFailed,
    PaymentCancelPending,
    PaymentPartiallyCancelled,
    PaymentCancelled,
    SubscriptionCancelRequested,
    SubscriptionCancelled,
    SubscriptionExpired,
    SubscriptionPaymentFailed,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        Self::PaymentPaid,
        Self::PaymentPendingReview,
        Self::PaymentFailed,
        Self::PaymentCancelPending,
        Self::PaymentPartiallyCancelled,
        Self::PaymentCancelled,
        Self::SubscriptionCancelRequested,
        Self::SubscriptionCancelled,
        Self::SubscriptionExpired,
        Self::SubscriptionPaymentFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentPaid => "payment.paid",
            Self::PaymentPendingReview => "payment.pending_review",
            Self::PaymentFailed => "payment.failed",
            Self::PaymentCancelPending => "payment.cancel_pending",
            Self::PaymentPartiallyCancelled => "payment.partially_cancelled",
            Self::PaymentCancelled => "payment.cancelled",
            Self::SubscriptionCancelRequested => "subscription.cancel_requested",
            Self::SubscriptionCancelled => "subscription.cancelled",
            Self::SubscriptionExpired => "subscription.expired",
            Self::SubscriptionPaymentFailed => "subscription.payment_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an event is about besides the payment: a cancellation or a subscription (as JSON, the
/// form the stream and the webhook carry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventDetail {
    Cancellation(serde_json::Value),
    Subscription(serde_json::Value),
}

impl EventDetail {
    pub fn cancellation(value: &impl Serialize) -> Self {
        Self::Cancellation(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
    }

    pub fn subscription(value: &impl Serialize) -> Self {
        Self::Subscription(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
    }

    pub fn value(&self) -> &serde_json::Value {
        match self {
            Self::Cancellation(v) | Self::Subscription(v) => v,
        }
    }
}

/// An event as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub position: Position,
    pub kind: EventKind,
    /// The payment after the change.
    pub payment: Payment,
    /// The cancellation or subscription the event is about, as JSON.
    pub detail: Option<serde_json::Value>,
    pub created_at: i64,
}

/// Appends an event in the caller's transaction; returns its position. The log records and knows
/// no listeners: whoever records a change also queues what announces it (`payments::record`).
pub async fn append(
    conn: &mut AnyConnection,
    payment: &Payment,
    kind: EventKind,
    detail: Option<&EventDetail>,
) -> Result<Position, StoreError> {
    let sql = format!("INSERT INTO payment_events {} RETURNING event_id, txid", insert_values(1));
    let row = bind_event(sqlx::query(&sql), payment, kind, detail)?.fetch_one(&mut *conn).await?;
    position_of(&row)
}

/// The position a statement that appended an event returned (`RETURNING event_id, txid`).
pub fn position_of(row: &sqlx::any::AnyRow) -> Result<Position, StoreError> {
    use sqlx::FromRow;
    Ok(PositionRow::from_row(row)?.into())
}

/// The event row's columns and `VALUES` with parameters from `$first` to `$first + 6`, bound by
/// `bind_event`.
pub fn insert_values(first: usize) -> String {
    format!("{INSERT_COLUMNS} VALUES ({})", placeholders(first))
}

/// The columns an event insert names, in `bind_event`'s order.
pub const INSERT_COLUMNS: &str = "(payment_id, merchant_id, kind, status, snapshot, detail, created_at)";

fn placeholders(first: usize) -> String {
    (first..first + 7).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

/// Binds the event of `payment` becoming what it is, as `insert_values` numbers it.
pub fn bind_event<'q>(
    query: AnyQuery<'q>,
    payment: &Payment,
    kind: EventKind,
    detail: Option<&EventDetail>,
) -> Result<AnyQuery<'q>, StoreError> {
    let row = NewEvent::of(payment, detail)?;
    Ok(query
        .bind(payment.payment_id.clone())
        .bind(payment.merchant_id.clone())
        .bind(kind.as_str())
        .bind(payment.status.as_str())
        .bind(row.snapshot)
        .bind(row.detail)
        .bind(UnixMs(row.created_at)))
}

/// What an event row stores besides the payment's ids, kind and status.
pub struct NewEvent {
    /// The payment after the change, as JSON.
    pub snapshot: String,
    pub detail: Option<String>,
    pub created_at: i64,
}

impl NewEvent {
    pub fn of(payment: &Payment, detail: Option<&EventDetail>) -> Result<Self, StoreError> {
        let snapshot = serde_json::to_string(payment).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        Ok(Self { snapshot, detail: detail.map(|d| d.value().to_string()), created_at: crate::store::now_ms() })
    }
}

const COLUMNS: &str = "event_id, txid, kind, snapshot, detail, created_at";

/// Events after `after`, oldest first, at most `limit`. The flag is true when committed events
/// were held back behind a still-running transaction (read again soon).
pub async fn read_after(db: &Db, after: Position, limit: u32) -> Result<(Vec<Event>, bool), PaymentError> {
    let horizon = horizon(db);
    let sql = format!(
        "SELECT {COLUMNS}, {horizon} AS horizon FROM payment_events WHERE (txid, event_id) > ($1, $2) \
         ORDER BY txid, event_id LIMIT $3"
    );
    let rows = sqlx::query_as::<_, HeldEventRow>(&sql)
        .bind(after.txid)
        .bind(after.id)
        .bind(i64::from(limit))
        .fetch_all(db.pool())
        .await?;
    below_horizon(rows)
}

/// SQL for the horizon: the oldest transaction still running (everything older has ended).
fn horizon(db: &Db) -> &'static str {
    db.backend().running_horizon_sql()
}

/// The rows in order up to the first one at or above the horizon; true if any were held back.
fn below_horizon(rows: Vec<HeldEventRow>) -> Result<(Vec<Event>, bool), PaymentError> {
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        if row.event.txid >= row.horizon {
            return Ok((events, true));
        }
        events.push(row.event.try_into()?);
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
    let row = sqlx::query_as::<_, PositionRow>(&sql).fetch_optional(db.pool()).await?;
    Ok(row.map(Position::from).unwrap_or_default())
}

/// Which of a merchant's events a read takes: all, or only those of these payments, of these
/// subscriptions' payments, of these merchant uids, in these statuses (each filter applies when
/// not empty). Each is a condition in SQL on an index, so a read never walks other merchants' or
/// other payments' events (`payment_events_by_payment`, `payment_events_by_merchant`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ListScope<'a> {
    pub payment_ids: &'a [String],
    pub subscription_ids: &'a [String],
    pub merchant_uids: &'a [String],
    pub statuses: &'a [&'static str],
}

/// The SELECT of a page of `list`, with `$1`-`$4` (after, merchant, limit) then one parameter per
/// id, uid and status in `scope`'s order.
fn list_sql(horizon: &str, scope: &ListScope<'_>) -> String {
    let mut n = 4;
    let mut params = |count: usize| {
        let list: Vec<String> = (0..count)
            .map(|_| {
                n += 1;
                format!("${n}")
            })
            .collect();
        list.join(", ")
    };
    let mut clauses = String::new();
    if !scope.payment_ids.is_empty() {
        clauses.push_str(&format!(" AND payment_id IN ({})", params(scope.payment_ids.len())));
    }
    if !scope.subscription_ids.is_empty() {
        clauses.push_str(&format!(
            " AND payment_id IN (SELECT payment_id FROM payments WHERE subscription_id IN ({}))",
            params(scope.subscription_ids.len())
        ));
    }
    if !scope.merchant_uids.is_empty() {
        clauses.push_str(&format!(
            " AND payment_id IN (SELECT payment_id FROM payments WHERE merchant_id IN ({IN_SCOPE}) \
             AND merchant_uid IN ({}))",
            params(scope.merchant_uids.len())
        ));
    }
    if !scope.statuses.is_empty() {
        clauses.push_str(&format!(" AND status IN ({})", params(scope.statuses.len())));
    }
    format!(
        "SELECT {COLUMNS}, {horizon} AS horizon FROM payment_events WHERE (txid, event_id) > ($1, $2) \
         AND merchant_id IN ({IN_SCOPE}){clauses} ORDER BY txid, event_id LIMIT $4"
    )
}

/// The merchant `$3` and its sub-merchants.
const IN_SCOPE: &str = "SELECT merchant_id FROM merchants WHERE merchant_id = $3 OR parent_id = $3";

/// A page of one merchant's (and its sub-merchants') events after `after`, as `scope` narrows
/// them. The flag is true when committed events were held back behind a still-running
/// transaction.
pub async fn list(
    db: &Db,
    merchant_id: &str,
    scope: ListScope<'_>,
    after: Position,
    limit: u32,
) -> Result<(Vec<Event>, bool), PaymentError> {
    let sql = list_sql(horizon(db), &scope);
    let mut query = sqlx::query_as::<_, HeldEventRow>(&sql)
        .bind(after.txid)
        .bind(after.id)
        .bind(merchant_id)
        .bind(i64::from(limit));
    for value in scope.payment_ids.iter().chain(scope.subscription_ids).chain(scope.merchant_uids) {
        query = query.bind(value.as_str());
    }
    for status in scope.statuses {
        query = query.bind(*status);
    }
    let rows = query.fetch_all(db.pool()).await?;
    below_horizon(rows)
}

/// Where a `payment_events` row sits.
#[derive(sqlx::FromRow)]
struct PositionRow {
    txid: i64,
    event_id: i64,
}

impl From<PositionRow> for Position {
    fn from(row: PositionRow) -> Self {
        Self { txid: row.txid, id: row.event_id }
    }
}

/// A `payment_events` row as readers take it.
#[derive(sqlx::FromRow)]
struct EventRow {
    event_id: i64,
    txid: i64,
    kind: String,
    /// JSON of the payment after the change.
    snapshot: String,
    /// JSON of the cancellation or subscription the event is about.
    detail: Option<String>,
    created_at: UnixMs,
}

/// An event row read with the horizon at the time of reading (`horizon`).
#[derive(sqlx::FromRow)]
struct HeldEventRow {
    #[sqlx(flatten)]
    event: EventRow,
    horizon: i64,
}

impl TryFrom<EventRow> for Event {
    type Error = PaymentError;

    fn try_from(row: EventRow) -> Result<Self, PaymentError> {
        let corrupt =
            |col: &str, e: &dyn std::fmt::Display| PaymentError::Corrupt(format!("payment_events.{col}: {e}"));
        Ok(Event {
            position: Position { txid: row.txid, id: row.event_id },
            kind: EventKind::parse(&row.kind).ok_or_else(|| corrupt("kind", &row.kind))?,
            payment: serde_json::from_str(&row.snapshot).map_err(|e| corrupt("snapshot", &e))?,
            detail: row.detail.and_then(|d| serde_json::from_str(&d).ok()),
            created_at: row.created_at.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("payment.snapshot"), None);
    }

    #[test]
    fn positions_order_by_transaction_then_id_and_round_trip() {
        let a = Position { txid: 7, id: 100 };
        let b = Position { txid: 8, id: 3 };
        assert!(a < b, "a later transaction sorts after, whatever its ids");
        assert_eq!("7-100".parse::<Position>(), Ok(a));
        assert_eq!(a.to_string().parse::<Position>(), Ok(a));
        for bad in ["", "7", "-1-2", "a-b", "7-", "1-2-3"] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }
}
