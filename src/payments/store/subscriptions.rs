//! The `subscriptions` rows.

use sqlx::AnyConnection;

use crate::{
    merchants::{IN_SCOPE, MERCHANTS_IN_SCOPE},
    payments::{
        PaymentError,
        core::subscription::{PeriodType, ShownStatus, Subscription, SubscriptionStatus},
    },
    store::{Db, Flag, UnixMs},
};

const COLUMNS: &str = "subscription_id, merchant_id, channel_key, initial_payment_id, customer_uid, period_length, \
    period_type, recurring, status, renewals, renewals_after_end, last_renewal_payment_id, last_renewal_at, \
    started_at, cancel_requested_at, ended_at, created_at, updated_at";

pub async fn insert(conn: &mut AnyConnection, s: &Subscription) -> Result<(), PaymentError> {
    sqlx::query(&format!(
        "INSERT INTO subscriptions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
         $14, $15, $16, $17, $18)"
    ))
    .bind(&s.subscription_id)
    .bind(&s.merchant_id)
    .bind(&s.channel_key)
    .bind(&s.initial_payment_id)
    .bind(&s.customer_uid)
    .bind(s.period_length)
    .bind(s.period_type.as_str())
    .bind(Flag(s.recurring))
    .bind(s.status.as_str())
    .bind(s.renewals)
    .bind(s.renewals_after_end)
    .bind(&s.last_renewal_payment_id)
    .bind(s.last_renewal_at.map(UnixMs))
    .bind(s.started_at.map(UnixMs))
    .bind(s.cancel_requested_at.map(UnixMs))
    .bind(s.ended_at.map(UnixMs))
    .bind(UnixMs(s.created_at))
    .bind(UnixMs(s.updated_at))
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes the mutable fields if the row still has `previous`'s status, renewal count and cancel
/// request: the caller's event then tells what is stored (a cancel request that committed after
/// `previous` was read makes this `false`, so the caller reads again). A cancel request, once
/// recorded, stays.
pub async fn update(conn: &mut AnyConnection, previous: &Subscription, s: &Subscription) -> Result<bool, PaymentError> {
    let done = sqlx::query(
        "UPDATE subscriptions SET status = $1, renewals = $2, cancel_requested_at = COALESCE(cancel_requested_at, $3), \
         ended_at = $4, updated_at = $5, renewals_after_end = $6, last_renewal_payment_id = $7, last_renewal_at = $8, \
         started_at = $9 WHERE subscription_id = $10 AND status = $11 AND renewals = $12 \
         AND COALESCE(cancel_requested_at, -1) = $13",
    )
    .bind(s.status.as_str())
    .bind(s.renewals)
    .bind(s.cancel_requested_at)
    .bind(s.ended_at)
    .bind(s.updated_at)
    .bind(s.renewals_after_end)
    .bind(&s.last_renewal_payment_id)
    .bind(s.last_renewal_at)
    .bind(s.started_at)
    .bind(&s.subscription_id)
    .bind(previous.status.as_str())
    .bind(previous.renewals)
    .bind(previous.cancel_requested_at.unwrap_or(-1))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(conn: &mut AnyConnection, subscription_id: &str) -> Result<Option<Subscription>, PaymentError> {
    let sql = format!("SELECT {COLUMNS} FROM subscriptions WHERE subscription_id = $1");
    let row = sqlx::query_as::<_, SubscriptionRow>(&sql).bind(subscription_id).fetch_optional(conn).await?;
    row.map(Subscription::try_from).transpose()
}

/// How a caller names a subscription: by its id, or by a payment of it (the one that started it,
/// or a renewal).
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    SubscriptionId(&'a str),
    PaymentId(&'a str),
    MerchantUid(&'a str),
}

/// A subscription of `merchant_id` or one of its sub-merchants; anyone else's reads as not found.
pub async fn get_in_scope(db: &Db, merchant_id: &str, lookup: Lookup<'_>) -> Result<Subscription, PaymentError> {
    let (clause, value) = match lookup {
        Lookup::SubscriptionId(id) => ("subscription_id = $2".to_owned(), id),
        Lookup::PaymentId(id) => {
            ("subscription_id = (SELECT p.subscription_id FROM payments p WHERE p.payment_id = $2)".to_owned(), id)
        }
        // The same order id may exist under two sub-merchants: the newest subscription wins.
        Lookup::MerchantUid(uid) => (
            format!(
                "subscription_id IN (SELECT p.subscription_id FROM payments p WHERE p.merchant_uid = $2 \
                 AND p.merchant_id IN {MERCHANTS_IN_SCOPE})"
            ),
            uid,
        ),
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE {IN_SCOPE} AND {clause} ORDER BY subscription_id DESC LIMIT 1"
    );
    let row =
        sqlx::query_as::<_, SubscriptionRow>(&sql).bind(merchant_id).bind(value).fetch_optional(db.pool()).await?;
    row.map(Subscription::try_from).transpose()?.ok_or(PaymentError::SubscriptionNotFound)
}

/// ListSubscriptions' filters; empty means any.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub statuses: Vec<ShownStatus>,
    pub channel_key: Option<String>,
    pub customer_uid: Option<String>,
    /// Inclusive lower and exclusive upper bound on `created_at`.
    pub created_from: Option<i64>,
    pub created_to: Option<i64>,
    /// Keyset cursor: only subscriptions with a smaller id (ids sort by creation time).
    pub before_subscription_id: Option<String>,
    pub limit: u32,
}

/// A merchant's and its sub-merchants' subscriptions, newest first.
pub async fn list(db: &Db, merchant_id: &str, f: &ListFilter) -> Result<Vec<Subscription>, PaymentError> {
    let mut sql = format!("SELECT {COLUMNS} FROM subscriptions WHERE {IN_SCOPE}");
    if !f.statuses.is_empty() {
        let predicates: Vec<&str> = f.statuses.iter().map(|s| shown_predicate(*s)).collect();
        sql.push_str(&format!(" AND ({})", predicates.join(" OR ")));
    }
    let mut binds: Vec<Bound<'_>> = Vec::new();
    let optional = [
        ("channel_key =", f.channel_key.as_deref().map(Bound::Text)),
        ("customer_uid =", f.customer_uid.as_deref().map(Bound::Text)),
        ("created_at >=", f.created_from.map(Bound::Int)),
        ("created_at <", f.created_to.map(Bound::Int)),
        ("subscription_id <", f.before_subscription_id.as_deref().map(Bound::Text)),
    ];
    for (condition, value) in optional {
        if let Some(value) = value {
            binds.push(value);
            sql.push_str(&format!(" AND {condition} ${}", binds.len() + 1));
        }
    }
    sql.push_str(&format!(" ORDER BY subscription_id DESC LIMIT ${}", binds.len() + 2));
    let mut query = sqlx::query_as::<_, SubscriptionRow>(&sql).bind(merchant_id);
    for value in binds {
        query = match value {
            Bound::Text(text) => query.bind(text),
            Bound::Int(n) => query.bind(n),
        };
    }
    let rows = query.bind(i64::from(f.limit)).fetch_all(db.pool()).await?;
    rows.into_iter().map(Subscription::try_from).collect()
}

/// A value bound to a list query.
enum Bound<'a> {
    Text(&'a str),
    Int(i64),
}

/// A `subscriptions` row as stored.
#[derive(sqlx::FromRow)]
struct SubscriptionRow {
    subscription_id: String,
    merchant_id: String,
    channel_key: String,
    initial_payment_id: String,
    customer_uid: String,
    period_length: i64,
    period_type: String,
    recurring: Flag,
    status: String,
    renewals: i64,
    renewals_after_end: i64,
    last_renewal_payment_id: Option<String>,
    last_renewal_at: Option<UnixMs>,
    started_at: Option<UnixMs>,
    cancel_requested_at: Option<UnixMs>,
    ended_at: Option<UnixMs>,
    created_at: UnixMs,
    updated_at: UnixMs,
}

impl TryFrom<SubscriptionRow> for Subscription {
    type Error = PaymentError;

    fn try_from(row: SubscriptionRow) -> Result<Self, PaymentError> {
        let status = SubscriptionStatus::parse(&row.status)
            .ok_or_else(|| PaymentError::Corrupt(format!("subscriptions.status: unknown {:?}", row.status)))?;
        let period_type = PeriodType::parse(&row.period_type).ok_or_else(|| {
            PaymentError::Corrupt(format!("subscriptions.period_type: unknown {:?}", row.period_type))
        })?;
        Ok(Subscription {
            subscription_id: row.subscription_id,
            merchant_id: row.merchant_id,
            channel_key: row.channel_key,
            initial_payment_id: row.initial_payment_id,
            customer_uid: row.customer_uid,
            period_length: row.period_length,
            period_type,
            recurring: row.recurring.into(),
            status,
            renewals: row.renewals,
            renewals_after_end: row.renewals_after_end,
            last_renewal_payment_id: row.last_renewal_payment_id,
            last_renewal_at: row.last_renewal_at.map(i64::from),
            started_at: row.started_at.map(i64::from),
            cancel_requested_at: row.cancel_requested_at.map(i64::from),
            ended_at: row.ended_at.map(i64::from),
            created_at: row.created_at.into(),
            updated_at: row.updated_at.into(),
        })
    }
}

/// Records that the provider was asked to stop billing (and ends the send's claim); false when it
/// was recorded before or the subscription ended meanwhile.
pub async fn mark_cancel_requested(
    conn: &mut AnyConnection,
    subscription_id: &str,
    now: i64,
) -> Result<bool, PaymentError> {
    let done = sqlx::query(
        "UPDATE subscriptions SET cancel_requested_at = $1, cancel_ticket_started_at = NULL, updated_at = $1 \
         WHERE subscription_id = $2 AND cancel_requested_at IS NULL AND status IN ('PENDING', 'ACTIVE')",
    )
    .bind(now)
    .bind(subscription_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Claims the stop-recurring send; a claim started before `stale_before` is a dead worker's.
pub async fn claim_cancel_ticket(
    db: &Db,
    subscription_id: &str,
    now: i64,
    stale_before: i64,
) -> Result<bool, PaymentError> {
    let done = sqlx::query(
        "UPDATE subscriptions SET cancel_ticket_started_at = $1 WHERE subscription_id = $2 \
         AND cancel_requested_at IS NULL AND status IN ('PENDING', 'ACTIVE') \
         AND (cancel_ticket_started_at IS NULL OR cancel_ticket_started_at < $3)",
    )
    .bind(now)
    .bind(subscription_id)
    .bind(stale_before)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The ticket was not accepted: the next call may try again (the claim also runs out on its own).
pub async fn release_cancel_ticket(db: &Db, subscription_id: &str, claim: i64) {
    let result = sqlx::query(
        "UPDATE subscriptions SET cancel_ticket_started_at = NULL WHERE subscription_id = $1 \
         AND cancel_ticket_started_at = $2",
    )
    .bind(subscription_id)
    .bind(claim)
    .execute(db.pool())
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, subscription_id, "could not release a cancel claim; it runs out on its own");
    }
}

/// The rows a ListSubscriptions status filter selects (constant SQL over stored columns).
pub fn shown_predicate(shown: ShownStatus) -> &'static str {
    match shown {
        ShownStatus::Pending => "(status = 'PENDING' AND cancel_requested_at IS NULL)",
        ShownStatus::Active => "(status = 'ACTIVE' AND cancel_requested_at IS NULL)",
        ShownStatus::CancelRequested => "(status IN ('PENDING', 'ACTIVE') AND cancel_requested_at IS NOT NULL)",
        ShownStatus::Cancelled => "(status = 'CANCELLED')",
        ShownStatus::Expired => "(status = 'EXPIRED')",
        ShownStatus::PaymentFailed => "(status = 'PAYMENT_FAILED')",
    }
}

/// Live subscriptions due to be asked about (their `check_after` passed, or never set), soonest
/// first, at most `limit`; each claimed until `claim_until` by a compare-and-set, so replicas never
/// share one.
pub async fn claim_due(db: &Db, now: i64, claim_until: i64, limit: u32) -> Result<Vec<Subscription>, PaymentError> {
    // The condition repeats `subscriptions_due`'s own words: SQLite uses a partial index only then.
    let sql = format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE status = 'ACTIVE' AND COALESCE(check_after, 0) <= $1 \
         ORDER BY COALESCE(check_after, 0) LIMIT $2"
    );
    let rows = sqlx::query_as::<_, SubscriptionRow>(&sql).bind(now).bind(i64::from(limit)).fetch_all(db.pool()).await?;
    let mut claimed = Vec::new();
    for sub in rows.into_iter().map(Subscription::try_from) {
        let sub = sub?;
        let done = sqlx::query(
            "UPDATE subscriptions SET check_after = $1 WHERE subscription_id = $2 AND COALESCE(check_after, 0) <= $3",
        )
        .bind(claim_until)
        .bind(&sub.subscription_id)
        .bind(now)
        .execute(db.pool())
        .await?;
        if done.rows_affected() == 1 {
            claimed.push(sub);
        }
    }
    Ok(claimed)
}

/// When the sweep asks about this subscription next.
pub async fn check_next_at(db: &Db, subscription_id: &str, at: i64) -> Result<(), PaymentError> {
    sqlx::query("UPDATE subscriptions SET check_after = $1 WHERE subscription_id = $2")
        .bind(at)
        .bind(subscription_id)
        .execute(db.pool())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::{
        core::subscription::{SubscriptionStatus as S, shown_status},
        fixtures::subscription,
    };

    #[test]
    fn each_shown_status_selects_what_it_shows() {
        use ShownStatus as V;
        // The SQL predicates, read as the stored (status, cancel asked) pairs they admit.
        let admits = |shown: V, status: S, asked: bool| {
            let p = shown_predicate(shown);
            let status_ok = p.contains(&format!("'{}'", status.as_str()));
            let asked_ok = if p.contains("IS NULL") {
                !asked
            } else if p.contains("IS NOT NULL") {
                asked
            } else {
                true
            };
            status_ok && asked_ok
        };
        for status in [S::Pending, S::Active, S::Cancelled, S::Expired, S::PaymentFailed] {
            for asked in [false, true] {
                let sub = Subscription { cancel_requested_at: asked.then_some(1), ..subscription(status, 0) };
                let shown = shown_status(&sub);
                for candidate in [V::Pending, V::Active, V::CancelRequested, V::Cancelled, V::Expired, V::PaymentFailed]
                {
                    assert_eq!(
                        admits(candidate, status, asked),
                        candidate == shown,
                        "{candidate:?} {status:?} {asked}"
                    );
                }
            }
        }
    }
}
