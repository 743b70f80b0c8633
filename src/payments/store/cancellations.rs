//! The `cancellations` rows: a request's or a reversal's steps, each a compare-and-set on its
//! status or ticket state (the rules are in `core::cancellation`).

use sqlx::AnyConnection;

use crate::{
    payments::{
        PaymentError,
        core::{Cancellation, CancellationStatus, TicketState, Trigger, money::MinorUnits},
    },
    store::{Db, UnixMs},
};

const COLUMNS: &str = "cancellation_id, payment_id, merchant_id, amount_minor, reason, trigger, status, \
    provider_reason, failure, created_at, updated_at, completed_at, ticket_state, ticket_accepted_at";

pub async fn insert(conn: &mut AnyConnection, c: &Cancellation) -> Result<(), PaymentError> {
    sqlx::query(&format!(
        "INSERT INTO cancellations ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ))
    .bind(&c.cancellation_id)
    .bind(&c.payment_id)
    .bind(&c.merchant_id)
    .bind(c.amount_minor.map(i64::from))
    .bind(&c.reason)
    .bind(c.trigger.as_str())
    .bind(c.status.as_str())
    .bind(c.provider_reason)
    .bind(&c.failure)
    .bind(UnixMs(c.created_at))
    .bind(UnixMs(c.updated_at))
    .bind(c.completed_at.map(UnixMs))
    .bind(c.ticket.map(TicketState::as_str))
    .bind(c.ticket_accepted_at.map(UnixMs))
    .execute(conn)
    .await?;
    Ok(())
}

/// Finishes a REQUESTED cancellation; false if it was finished meanwhile.
pub async fn finish(conn: &mut AnyConnection, c: &Cancellation) -> Result<bool, PaymentError> {
    let done = sqlx::query(
        "UPDATE cancellations SET status = $1, provider_reason = $2, failure = $3, updated_at = $4, completed_at = $5 \
         WHERE cancellation_id = $6 AND status = 'REQUESTED'",
    )
    .bind(c.status.as_str())
    .bind(c.provider_reason)
    .bind(&c.failure)
    .bind(c.updated_at)
    .bind(c.completed_at)
    .bind(&c.cancellation_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(conn: &mut AnyConnection, cancellation_id: &str) -> Result<Option<Cancellation>, PaymentError> {
    let row = sqlx::query_as::<_, CancellationRow>(&format!(
        "SELECT {COLUMNS} FROM cancellations WHERE cancellation_id = $1"
    ))
    .bind(cancellation_id)
    .fetch_optional(conn)
    .await?;
    row.map(Cancellation::try_from).transpose()
}

/// Moves an open request's ticket from one of `from` to `to` (compare-and-set); false when it
/// was not there (another worker moved it, or the request ended meanwhile).
pub async fn move_ticket(
    conn: &mut AnyConnection,
    cancellation_id: &str,
    from: &[TicketState],
    to: TicketState,
    at: i64,
) -> Result<bool, PaymentError> {
    let from: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
    // `from` holds only the enum's constant names, never input.
    let (sent_at, accepted_at) = match to {
        TicketState::Sending => ("$1", "ticket_accepted_at"),
        // A repeated acceptance (a take-over finishing it) keeps the first time.
        TicketState::Accepted => ("ticket_sent_at", "COALESCE(ticket_accepted_at, $1)"),
        _ => ("ticket_sent_at", "ticket_accepted_at"),
    };
    let done = sqlx::query(&format!(
        "UPDATE cancellations SET ticket_state = $2, ticket_sent_at = {sent_at}, ticket_accepted_at = {accepted_at}, \
         updated_at = $1 WHERE cancellation_id = $3 AND status = 'REQUESTED' AND ticket_state IN ({})",
        from.join(", ")
    ))
    .bind(at)
    .bind(to.as_str())
    .bind(cancellation_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Open requests whose ticket needs the sweep: never sent, or sent with no answer, last touched
/// before `stale_before` and not checked recently. Each is claimed (its `check_after` moved to
/// `claim_until`) by a compare-and-set, so replicas never share one.
pub async fn claim_stale_tickets(
    db: &Db,
    stale_before: i64,
    now: i64,
    claim_until: i64,
    limit: u32,
) -> Result<Vec<Cancellation>, PaymentError> {
    let rows = sqlx::query_as::<_, CancellationRow>(&format!(
        "SELECT {COLUMNS} FROM cancellations WHERE status = 'REQUESTED' \
         AND ticket_state IN ('UNSENT', 'SENDING', 'UNKNOWN') AND updated_at <= $1 \
         AND (check_after IS NULL OR check_after <= $2) ORDER BY updated_at LIMIT $3"
    ))
    .bind(stale_before)
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(db.pool())
    .await?;
    let mut claimed = Vec::new();
    for c in rows.into_iter().map(Cancellation::try_from) {
        let c = c?;
        let done = sqlx::query(
            "UPDATE cancellations SET check_after = $1 WHERE cancellation_id = $2 \
             AND (check_after IS NULL OR check_after <= $3)",
        )
        .bind(claim_until)
        .bind(&c.cancellation_id)
        .bind(now)
        .execute(db.pool())
        .await?;
        if done.rows_affected() == 1 {
            claimed.push(c);
        }
    }
    Ok(claimed)
}

/// Open requests whose outcome at the provider is unknown (the metric's source).
pub async fn count_unknown(db: &Db) -> Result<i64, PaymentError> {
    let sql = "SELECT COUNT(*) FROM cancellations WHERE status = 'REQUESTED' AND ticket_state = 'UNKNOWN'";
    Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(db.pool()).await?)
}

/// Requested cancellations of a payment, those whose ticket the provider accepted first, then by age.
pub async fn requested(conn: &mut AnyConnection, payment_id: &str) -> Result<Vec<Cancellation>, PaymentError> {
    let rows = sqlx::query_as::<_, CancellationRow>(&format!(
        "SELECT {COLUMNS} FROM cancellations WHERE payment_id = $1 AND status = 'REQUESTED' \
         ORDER BY CASE WHEN ticket_accepted_at IS NULL THEN 1 ELSE 0 END, created_at, cancellation_id"
    ))
    .bind(payment_id)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Cancellation::try_from).collect()
}

/// A payment's cancellations, oldest first.
pub async fn for_payment(conn: &mut AnyConnection, payment_id: &str) -> Result<Vec<Cancellation>, PaymentError> {
    let rows = sqlx::query_as::<_, CancellationRow>(&format!(
        "SELECT {COLUMNS} FROM cancellations WHERE payment_id = $1 ORDER BY created_at, cancellation_id"
    ))
    .bind(payment_id)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Cancellation::try_from).collect()
}

/// A `cancellations` row as stored.
#[derive(sqlx::FromRow)]
struct CancellationRow {
    cancellation_id: String,
    payment_id: String,
    merchant_id: String,
    amount_minor: Option<i64>,
    reason: String,
    trigger: String,
    status: String,
    provider_reason: Option<i64>,
    failure: Option<String>,
    created_at: UnixMs,
    updated_at: UnixMs,
    completed_at: Option<UnixMs>,
    ticket_state: Option<String>,
    ticket_accepted_at: Option<UnixMs>,
}

impl TryFrom<CancellationRow> for Cancellation {
    type Error = PaymentError;

    fn try_from(row: CancellationRow) -> Result<Self, PaymentError> {
        let unknown = |col: &str, value: &str| PaymentError::Corrupt(format!("cancellations.{col}: unknown {value:?}"));
        let ticket = match row.ticket_state {
            Some(s) => Some(TicketState::parse(&s).ok_or_else(|| unknown("ticket_state", &s))?),
            None => None,
        };
        Ok(Cancellation {
            trigger: Trigger::parse(&row.trigger).ok_or_else(|| unknown("trigger", &row.trigger))?,
            status: CancellationStatus::parse(&row.status).ok_or_else(|| unknown("status", &row.status))?,
            cancellation_id: row.cancellation_id,
            payment_id: row.payment_id,
            merchant_id: row.merchant_id,
            amount_minor: row.amount_minor.map(MinorUnits),
            reason: row.reason,
            provider_reason: row.provider_reason,
            failure: row.failure,
            ticket,
            ticket_accepted_at: row.ticket_accepted_at.map(i64::from),
            created_at: row.created_at.into(),
            updated_at: row.updated_at.into(),
            completed_at: row.completed_at.map(i64::from),
        })
    }
}
