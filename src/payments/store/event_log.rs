//! The payment event log: every state change appends one immutable event in the same transaction
//! as the change (`append`, called by `payments::record`), and readers take it back in a gapless
//! order.
//!
//! PostgreSQL: an event's position is (txid of its transaction, id). A reader takes only events of
//! transactions below a horizon (`Backend::running_horizon_sql`): the oldest transaction its
//! snapshot counts as running that writes one of paygate's tables, so every transaction below it
//! that could append an event has ended, and every later one gets a larger txid; nothing can ever
//! appear behind a position already read. Other applications' transactions, in this database or
//! another, never hold it. Events above the horizon are held back (and the caller reads again
//! shortly). SQLite has one writer, so ids already follow commit order.

use sqlx::AnyConnection;

use crate::{
    payments::{
        PaymentError,
        core::{Event, EventDetail, EventKind, Payment, Position},
    },
    store::{AnyQuery, Db, StoreError, UnixMs},
};

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

/// Whose events: a merchant and its sub-merchants, named (`Caller::scope`) or looked up.
#[derive(Debug, Clone, Copy)]
pub struct Tenancy<'a> {
    pub merchant_id: &'a str,
    /// The merchant and its sub-merchants, as authentication found them.
    pub merchants: &'a [String],
}

/// Up to this many merchants are named in the query, so the planner reads their events by
/// `payment_events_by_merchant` (its statistics see which merchants they are); a larger tree is
/// looked up in the query.
const MAX_NAMED_MERCHANTS: usize = 1000;

/// Up to this many merchants, a page is read a merchant at a time and merged (`list_sql`).
const MAX_BRANCHES: usize = 64;

/// The SELECT of a page of `list` (`$1`, `$2`: the cursor, `$3`: the limit) and its text
/// parameters from `$4` on, in order.
fn list_sql<'a>(horizon: &str, tenancy: Tenancy<'a>, scope: &ListScope<'a>) -> (String, Vec<&'a str>) {
    let mut args: Vec<&'a str> = Vec::new();
    let mut params = |values: &mut dyn Iterator<Item = &'a str>| {
        let numbers: Vec<String> = values
            .map(|value| {
                args.push(value);
                format!("${}", args.len() + 3)
            })
            .collect();
        numbers.join(", ")
    };
    let narrow = !(scope.payment_ids.is_empty() && scope.subscription_ids.is_empty() && scope.merchant_uids.is_empty());
    // A few merchants' events come a merchant at a time, each newest-after-the-cursor first on
    // `payment_events_by_merchant`, merged in order: a page reads about a page of rows. (One `IN`
    // over several would read every event of theirs after the cursor, for every page.)
    if !narrow && (2..=MAX_BRANCHES).contains(&tenancy.merchants.len()) {
        let statuses = match scope.statuses.is_empty() {
            true => String::new(),
            false => format!(" AND status IN ({})", params(&mut scope.statuses.iter().copied())),
        };
        let branches: Vec<String> = tenancy
            .merchants
            .iter()
            .map(|m| {
                let m = params(&mut std::iter::once(m.as_str()));
                format!(
                    "SELECT * FROM (SELECT {COLUMNS} FROM payment_events WHERE (txid, event_id) > ($1, $2) \
                     AND merchant_id = {m}{statuses} ORDER BY txid, event_id LIMIT $3) AS b"
                )
            })
            .collect();
        let sql = format!(
            "SELECT {COLUMNS}, {horizon} AS horizon FROM ({}) AS page ORDER BY txid, event_id LIMIT $3",
            branches.join(" UNION ALL ")
        );
        return (sql, args);
    }
    let merchants = match tenancy.merchants.len() {
        1..=MAX_NAMED_MERCHANTS => params(&mut tenancy.merchants.iter().map(String::as_str)),
        _ => {
            let n = params(&mut std::iter::once(tenancy.merchant_id));
            format!("SELECT merchant_id FROM merchants WHERE merchant_id = {n} OR parent_id = {n}")
        }
    };
    // Of a few payments, the rows come by `payment_events_by_payment` and the tenancy only checks
    // them: written so that no planner takes the merchant's index for it (SQLite would, and read
    // all of the merchant's events).
    let tenant = if narrow { "merchant_id || ''" } else { "merchant_id" };
    let mut clauses = format!(" AND {tenant} IN ({merchants})");
    if !scope.payment_ids.is_empty() {
        let list = params(&mut scope.payment_ids.iter().map(String::as_str));
        clauses.push_str(&format!(" AND payment_id IN ({list})"));
    }
    if !scope.subscription_ids.is_empty() {
        let list = params(&mut scope.subscription_ids.iter().map(String::as_str));
        clauses.push_str(&format!(
            " AND payment_id IN (SELECT payment_id FROM payments WHERE subscription_id IN ({list}))"
        ));
    }
    if !scope.merchant_uids.is_empty() {
        let list = params(&mut scope.merchant_uids.iter().map(String::as_str));
        clauses.push_str(&format!(
            " AND payment_id IN (SELECT payment_id FROM payments WHERE merchant_id IN ({merchants}) \
             AND merchant_uid IN ({list}))"
        ));
    }
    if !scope.statuses.is_empty() {
        let list = params(&mut scope.statuses.iter().copied());
        clauses.push_str(&format!(" AND status IN ({list})"));
    }
    let sql = format!(
        "SELECT {COLUMNS}, {horizon} AS horizon FROM payment_events WHERE (txid, event_id) > ($1, $2){clauses} \
         ORDER BY txid, event_id LIMIT $3"
    );
    (sql, args)
}

/// A page of one merchant's (and its sub-merchants') events after `after`, as `scope` narrows
/// them. The flag is true when committed events were held back behind a still-running
/// transaction.
pub async fn list(
    db: &Db,
    tenancy: Tenancy<'_>,
    scope: ListScope<'_>,
    after: Position,
    limit: u32,
) -> Result<(Vec<Event>, bool), PaymentError> {
    let (sql, args) = list_sql(horizon(db), tenancy, &scope);
    let mut query = sqlx::query_as::<_, HeldEventRow>(&sql).bind(after.txid).bind(after.id).bind(i64::from(limit));
    for arg in args {
        query = query.bind(arg);
    }
    let rows = query.fetch_all(db.pool()).await?;
    below_horizon(rows)
}

/// The newest position retention expired (`Position::default()` when none was): events up to it
/// are gone, so a cursor before it would skip them.
pub async fn expired_through(db: &Db) -> Result<Position, PaymentError> {
    let row = sqlx::query_as::<_, PositionRow>(
        "SELECT expired_txid AS txid, expired_event_id AS event_id FROM retention_marks \
         WHERE table_name = 'payment_events'",
    )
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(Position::from).unwrap_or_default())
}

/// Refuses a cursor to resume after (`CursorExpired`, naming the oldest one still available) when
/// events after it were expired: resuming would skip them. From the start of the log (the default
/// position) is always fine: it reads what is kept.
pub async fn check_cursor(db: &Db, after: Position) -> Result<(), PaymentError> {
    if after == Position::default() {
        return Ok(());
    }
    let oldest = expired_through(db).await?;
    if after < oldest { Err(PaymentError::CursorExpired(oldest)) } else { Ok(()) }
}

/// Records that retention expired the events up to `through` (it only moves forward).
pub async fn mark_expired_through(conn: &mut AnyConnection, through: Position, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE retention_marks SET expired_txid = $1, expired_event_id = $2, updated_at = $3 \
         WHERE table_name = 'payment_events' AND (expired_txid, expired_event_id) < ($1, $2)",
    )
    .bind(through.txid)
    .bind(through.id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
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

    /// What the scans of `payment_events` in a text `EXPLAIN ANALYZE` took from the table: the
    /// rows they returned and the rows their filters threw away, times their loops.
    fn event_rows_read(plan: &[String]) -> i64 {
        let number_after = |line: &str, key: &str| -> i64 {
            line.split(key)
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                .unwrap_or(0)
        };
        let (mut total, mut loops, mut in_scan) = (0, 1, false);
        for line in plan {
            if line.contains("->") || !line.starts_with(' ') {
                in_scan = line.contains(" on payment_events  (");
                if in_scan {
                    loops = number_after(line, " loops=");
                    total += number_after(line.rsplit("actual").next().unwrap_or(""), " rows=") * loops;
                }
            } else if in_scan && line.contains("Rows Removed by") {
                total += number_after(line, ": ") * loops;
            }
        }
        total
    }

    /// On PostgreSQL, with 20,000 of another merchant's events in the log, a page of one payment's
    /// events, or of one merchant's, reads that payment's or merchant's rows and no others (a
    /// stream's replay before reads every event after its cursor).
    #[tokio::test]
    async fn a_page_reads_its_own_events_not_the_log() {
        use sqlx::{Connection, Row};

        let admin_url = std::env::var("PAYGATE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        sqlx::any::install_default_drivers();
        let mut admin = AnyConnection::connect(&admin_url).await.expect("connect to PostgreSQL");
        let name = format!("paygate_events_{}", ulid::Ulid::new().to_string().to_lowercase());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create database");
        let base = admin_url.split('?').next().unwrap_or(&admin_url);
        let url = format!("{}/{name}", base.rsplit_once('/').map_or(base, |(b, _)| b));
        let settings =
            crate::store::PoolSettings { max_connections: 2, acquire_timeout: std::time::Duration::from_secs(10) };
        let db = Db::connect(&url, &settings).await.expect("connect");
        db.migrate().await.expect("migrations apply");
        // Events alone, without their payments: the reads under test never look at a payment row.
        for sql in [
            // The table as it was before partitioning (0016) holds these rows, and the key.
            "ALTER TABLE payment_events_legacy DROP CONSTRAINT payment_events_payment_id_fkey",
            "INSERT INTO merchants (merchant_id, name, created_at) VALUES ('mer_busy', 'Busy', 0), ('mer_mine', 'Mine', 0)",
            "INSERT INTO payment_events (payment_id, merchant_id, kind, status, snapshot, created_at) \
             SELECT 'pay_busy_' || (i % 5000), 'mer_busy', 'payment.paid', 'PAID', '{}', 0 FROM generate_series(1, 20000) i",
            "INSERT INTO payment_events (payment_id, merchant_id, kind, status, snapshot, created_at) \
             VALUES ('pay_mine', 'mer_mine', 'payment.paid', 'PAID', '{}', 0), \
             ('pay_other', 'mer_mine', 'payment.paid', 'PAID', '{}', 0), \
             ('pay_mine', 'mer_mine', 'payment.cancelled', 'CANCELLED', '{}', 0)",
            "ANALYZE",
        ] {
            sqlx::query(sql).execute(db.pool()).await.expect(sql);
        }
        let (mine, merchants) = (["pay_mine".to_owned()], ["mer_mine".to_owned()]);
        let named = Tenancy { merchant_id: "mer_mine", merchants: &merchants };
        // Both merchants (a parent and its sub-merchant, say): a page of 10 reads about 10 rows
        // of each, not the busy one's 20,000.
        let both = ["mer_mine".to_owned(), "mer_busy".to_owned()];
        let both = Tenancy { merchant_id: "mer_mine", merchants: &both };
        for (tenancy, scope, limit, returned, most) in [
            (named, ListScope { payment_ids: &mine, ..Default::default() }, 500, 2, 10),
            (named, ListScope::default(), 500, 3, 10),
            (both, ListScope::default(), 10, 10, 30),
        ] {
            let (sql, args) = list_sql(horizon(&db), tenancy, &scope);
            let run = |sql: String| {
                let (db, args) = (db.clone(), args.clone());
                async move {
                    let mut query = sqlx::query(&sql).bind(0_i64).bind(0_i64).bind(limit);
                    for arg in args {
                        query = query.bind(arg);
                    }
                    query.fetch_all(db.pool()).await.expect("query")
                }
            };
            assert_eq!(run(sql.clone()).await.len(), returned);
            let plan: Vec<String> =
                run(format!("EXPLAIN ANALYZE {sql}")).await.iter().map(|r| r.get::<String, _>(0)).collect();
            let read = event_rows_read(&plan);
            assert!(read <= most, "{scope:?} read {read} event rows for {returned}:\n{}", plan.join("\n"));
        }
        db.close().await;
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await.expect("drop database");
    }

    /// SQLite plans the same reads on the same indexes (it keeps no statistics unless told to).
    #[tokio::test]
    async fn sqlite_plans_a_page_on_the_payment_or_merchant_index() {
        use sqlx::Row;

        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("events.db").display());
        let settings =
            crate::store::PoolSettings { max_connections: 1, acquire_timeout: std::time::Duration::from_secs(10) };
        let db = Db::connect(&url, &settings).await.expect("connect");
        db.migrate().await.expect("migrations apply");
        let (mine, merchants) = (["pay_mine".to_owned()], ["mer_mine".to_owned(), "mer_sub".to_owned()]);
        let tenancy = Tenancy { merchant_id: "mer_mine", merchants: &merchants };
        let paid = ["PAID"];
        for (scope, index) in [
            (ListScope { payment_ids: &mine, ..Default::default() }, "payment_events_by_payment"),
            (ListScope { subscription_ids: &mine, ..Default::default() }, "payment_events_by_payment"),
            (ListScope::default(), "payment_events_by_merchant"),
            (ListScope { statuses: &paid, ..Default::default() }, "payment_events_by_merchant"),
        ] {
            let (sql, args) = list_sql(horizon(&db), tenancy, &scope);
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut query = sqlx::query(&explain).bind(0_i64).bind(0_i64).bind(500_i64);
            for arg in args {
                query = query.bind(arg);
            }
            let rows = query.fetch_all(db.pool()).await.expect("explain");
            let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>(3)).collect();
            let events: Vec<&String> = plan.iter().filter(|l| l.contains("payment_events ")).collect();
            // Several merchants: a scan of each (`list_sql`'s branches), all on the index.
            assert!(
                !events.is_empty() && events.iter().all(|e| e.contains(index)),
                "{scope:?} should read by {index}:\n{}",
                plan.join("\n")
            );
        }
        db.close().await;
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
