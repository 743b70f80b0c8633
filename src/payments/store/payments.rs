//! Payment rows: the SQL for reading and writing payments.

use std::{collections::BTreeMap, sync::LazyLock};

use sqlx::{Any, AnyConnection, any::AnyRow, query::Query};

use crate::{
    merchants::IN_SCOPE,
    payments::{
        PaymentError,
        core::{Cancellation, Payment, PaymentStatus, money::MinorUnits},
    },
    personal::Email,
    store::{AnyQuery, Db, Flag, OnUniqueViolation, UnixMs},
};

/// The payment's columns, once, in the order `bind_all` binds them: the SELECT lists and the INSERT
/// both come from here.
macro_rules! payment_columns {
    () => {
        "payment_id, merchant_id, channel_key, merchant_uid, amount_minor, currency, order_name, customer_uid, \
         customer_email, payment_method, widget, success_url, failure_url, country_code, language, custom_params, \
         status, provider_ref, is_test, redirect_url, subscription_id, cancelled_amount, pending_cancel_amount, \
         version, created_at, updated_at, paid_at, failed_at, cancelled_at"
    };
}

/// Every column of a `payments` row, in the order the inserts bind them (`paygate dev seed` too).
pub const COLUMNS: &str = payment_columns!();

fn bind_all<'q>(
    query: Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    p: &'q Payment,
    custom: String,
) -> Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(&p.payment_id)
        .bind(&p.merchant_id)
        .bind(&p.channel_key)
        .bind(&p.merchant_uid)
        .bind(p.amount_minor.0)
        .bind(&p.currency)
        .bind(&p.order_name)
        .bind(&p.customer_uid)
        .bind(p.customer_email.expose())
        .bind(&p.payment_method)
        .bind(&p.widget)
        .bind(&p.success_url)
        .bind(&p.failure_url)
        .bind(&p.country_code)
        .bind(&p.language)
        .bind(custom)
        .bind(p.status.as_str())
        .bind(&p.provider_ref)
        .bind(Flag(p.test))
        .bind(&p.redirect_url)
        .bind(&p.subscription_id)
        .bind(p.cancelled_amount.0)
        .bind(p.pending_cancel_amount.0)
        .bind(p.version)
        .bind(UnixMs(p.created_at))
        .bind(UnixMs(p.updated_at))
        .bind(p.paid_at.map(UnixMs))
        .bind(p.failed_at.map(UnixMs))
        .bind(p.cancelled_at.map(UnixMs))
}

const INSERT: &str = concat!(
    "INSERT INTO payments (",
    payment_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, \
     $22, $23, $24, $25, $26, $27, $28, $29)"
);

/// The parameters of one row of `INSERT`.
const INSERT_PARAMS: usize = 29;

fn custom_json(p: &Payment) -> Result<String, PaymentError> {
    serde_json::to_string(&p.custom_params).map_err(|e| PaymentError::Corrupt(e.to_string()))
}

fn insert_result(result: Result<sqlx::any::AnyQueryResult, sqlx::Error>) -> Result<(), PaymentError> {
    // payment_id is a fresh ULID, so the only unique key that can clash is (merchant, merchant_uid).
    result.on_unique_violation(|| PaymentError::MerchantUidTaken).map(drop)
}

pub async fn insert(db: &Db, p: &Payment) -> Result<(), PaymentError> {
    insert_result(bind_all(sqlx::query(INSERT), p, custom_json(p)?).execute(db.pool()).await)
}

/// Inserts `payments` in one statement (all or none).
pub async fn insert_many(db: &Db, payments: &[&Payment]) -> Result<(), PaymentError> {
    let (head, _) = INSERT.split_once("VALUES").unwrap_or((INSERT, ""));
    let rows: Vec<String> = (0..payments.len())
        .map(|row| {
            let params: Vec<String> = (1..=INSERT_PARAMS).map(|n| format!("${}", row * INSERT_PARAMS + n)).collect();
            format!("({})", params.join(", "))
        })
        .collect();
    let sql = format!("{head}VALUES {}", rows.join(", "));
    let mut query = sqlx::query(&sql);
    for &p in payments {
        query = bind_all(query, p, custom_json(p)?);
    }
    insert_result(query.execute(db.pool()).await)
}

pub async fn insert_in_tx(conn: &mut AnyConnection, p: &Payment) -> Result<(), PaymentError> {
    insert_result(bind_all(sqlx::query(INSERT), p, custom_json(p)?).execute(conn).await)
}

/// How a caller names a payment.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    PaymentId(&'a str),
    MerchantUid(&'a str),
}

/// A payment of `merchant_id` or of one of its sub-merchants; anyone else's reads as not found.
/// By `merchant_uid`, the newest match wins (the same order id may exist under two sub-merchants).
pub async fn get(db: &Db, merchant_id: &str, lookup: Lookup<'_>) -> Result<Payment, PaymentError> {
    let mut conn = db.pool().acquire().await?;
    get_in_scope(&mut conn, merchant_id, lookup).await
}

/// `get` inside a transaction.
pub async fn get_in_scope(
    conn: &mut AnyConnection,
    merchant_id: &str,
    lookup: Lookup<'_>,
) -> Result<Payment, PaymentError> {
    let (column, value) = match lookup {
        Lookup::PaymentId(id) => ("payment_id", id),
        Lookup::MerchantUid(uid) => ("merchant_uid", uid),
    };
    let sql =
        format!("SELECT {COLUMNS} FROM payments WHERE {IN_SCOPE} AND {column} = $2 ORDER BY payment_id DESC LIMIT 1");
    let row = sqlx::query_as::<_, PaymentRow>(&sql).bind(merchant_id).bind(value).fetch_optional(conn).await?;
    row.map(Payment::try_from).transpose()?.ok_or(PaymentError::NotFound)
}

/// A payment (as `get` finds it) and its cancellations, oldest first, read from one snapshot: the
/// amounts and the cancellations that make them up always agree.
pub async fn get_with_cancellations(
    db: &Db,
    merchant_id: &str,
    lookup: Lookup<'_>,
) -> Result<PaymentDetail, PaymentError> {
    let (column, value) = match lookup {
        Lookup::PaymentId(id) => ("payment_id", id),
        Lookup::MerchantUid(uid) => ("merchant_uid", uid),
    };
    let mut tx = db.begin_snapshot().await?;
    let sql =
        format!("SELECT {COLUMNS} FROM payments WHERE {IN_SCOPE} AND {column} = $2 ORDER BY payment_id DESC LIMIT 1");
    let row = sqlx::query_as::<_, PaymentRow>(&sql).bind(merchant_id).bind(value).fetch_optional(&mut *tx).await?;
    let payment = row.map(Payment::try_from).transpose()?.ok_or(PaymentError::NotFound)?;
    let cancellations = super::cancellations::for_payment(&mut tx, &payment.payment_id).await?;
    let deliveries = super::deliveries::of_payment(&mut tx, &payment.payment_id).await?;
    tx.commit().await?;
    Ok(PaymentDetail { payment, cancellations, deliveries })
}

/// A payment with its cancellations and deliveries, oldest first, read from one snapshot.
pub struct PaymentDetail {
    pub payment: Payment,
    pub cancellations: Vec<Cancellation>,
    pub deliveries: Vec<crate::payments::core::delivery::Delivery>,
}

/// Any merchant's payment by id, inside a transaction or on the pool.
pub async fn get_in_tx(conn: &mut AnyConnection, payment_id: &str) -> Result<Option<Payment>, PaymentError> {
    let sql = format!("SELECT {COLUMNS} FROM payments WHERE payment_id = $1");
    let row = sqlx::query_as::<_, PaymentRow>(&sql).bind(payment_id).fetch_optional(conn).await?;
    row.map(Payment::try_from).transpose()
}

/// True when `merchant_id` already has a payment with this `merchant_uid`.
pub async fn merchant_uid_taken(
    conn: &mut AnyConnection,
    merchant_id: &str,
    merchant_uid: &str,
) -> Result<bool, PaymentError> {
    let row = sqlx::query("SELECT 1 FROM payments WHERE merchant_id = $1 AND merchant_uid = $2")
        .bind(merchant_id)
        .bind(merchant_uid)
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

/// Payments by id, in scope of `merchant_id` (the subscription reads fill their payments in one query).
pub async fn get_many(db: &Db, merchant_id: &str, payment_ids: &[&str]) -> Result<Vec<Payment>, PaymentError> {
    by_ids(db, Some(merchant_id), payment_ids).await
}

/// Any merchant's payments by id (a verified notification names its payment; its channel is
/// checked by the caller), in no particular order.
pub async fn get_many_by_id(db: &Db, payment_ids: &[&str]) -> Result<Vec<Payment>, PaymentError> {
    by_ids(db, None, payment_ids).await
}

/// `payment_ids`, in scope of `merchant_id` when given.
async fn by_ids(db: &Db, merchant_id: Option<&str>, payment_ids: &[&str]) -> Result<Vec<Payment>, PaymentError> {
    if payment_ids.is_empty() {
        return Ok(Vec::new());
    }
    let first = 1 + usize::from(merchant_id.is_some());
    let placeholders: Vec<String> = (first..first + payment_ids.len()).map(|n| format!("${n}")).collect();
    let scope = if merchant_id.is_some() { format!("{IN_SCOPE} AND ") } else { String::new() };
    let sql = format!("SELECT {COLUMNS} FROM payments WHERE {scope}payment_id IN ({})", placeholders.join(", "));
    let mut query = sqlx::query_as::<_, PaymentRow>(&sql);
    if let Some(merchant_id) = merchant_id {
        query = query.bind(merchant_id);
    }
    for id in payment_ids {
        query = query.bind(*id);
    }
    let rows = query.fetch_all(db.pool()).await?;
    rows.into_iter().map(Payment::try_from).collect()
}

/// The payment of a subscription made by a renewal with this provider ref, if any.
pub async fn find_by_provider_ref(
    conn: &mut AnyConnection,
    channel_key: &str,
    provider_ref: &str,
) -> Result<Option<Payment>, PaymentError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM payments WHERE channel_key = $1 AND provider_ref = $2 \
         AND subscription_id IS NOT NULL LIMIT 1"
    );
    let row = sqlx::query_as::<_, PaymentRow>(&sql).bind(channel_key).bind(provider_ref).fetch_optional(conn).await?;
    row.map(Payment::try_from).transpose()
}

/// Writes `p` (already at its next version) only if the row is still at the version before: a
/// compare-and-set that works the same on both backends. False when someone else wrote first.
pub async fn update(conn: &mut AnyConnection, p: &Payment) -> Result<bool, PaymentError> {
    let done = bind_update(sqlx::query(&UPDATE), p).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// The columns a change of a payment moves, with their type in a JSON recordset, in the order
/// `bind_update` binds them: the compare-and-set here and the one-statement changes
/// (`changes::ChangeStatement`) both come from this list.
pub(super) const MOVING: [(&str, &str); 11] = [
    ("status", "text"),
    ("provider_ref", "text"),
    ("is_test", "bigint"),
    ("subscription_id", "text"),
    ("cancelled_amount", "bigint"),
    ("pending_cancel_amount", "bigint"),
    ("version", "bigint"),
    ("updated_at", "bigint"),
    ("paid_at", "bigint"),
    ("failed_at", "bigint"),
    ("cancelled_at", "bigint"),
];

/// The compare-and-set: the moving columns `$1` to `$11`, then `WHERE payment_id = $12 AND
/// version = $13` (the version before).
static UPDATE: LazyLock<String> = LazyLock::new(|| {
    let set: Vec<String> = MOVING.iter().enumerate().map(|(i, (column, _))| format!("{column} = ${}", i + 1)).collect();
    let n = MOVING.len();
    format!("UPDATE payments SET {} WHERE payment_id = ${} AND version = ${}", set.join(", "), n + 1, n + 2)
});

pub(super) fn bind_update<'q>(query: AnyQuery<'q>, p: &Payment) -> AnyQuery<'q> {
    query
        .bind(p.status.as_str())
        .bind(p.provider_ref.clone())
        .bind(Flag(p.test))
        .bind(p.subscription_id.clone())
        .bind(p.cancelled_amount.0)
        .bind(p.pending_cancel_amount.0)
        .bind(p.version)
        .bind(UnixMs(p.updated_at))
        .bind(p.paid_at.map(UnixMs))
        .bind(p.failed_at.map(UnixMs))
        .bind(p.cancelled_at.map(UnixMs))
        .bind(p.payment_id.clone())
        .bind(p.version - 1)
}

/// The payment of a row that read `COLUMNS` through an outer join: none when the join found no row.
pub(super) fn joined_payment(row: &AnyRow) -> Result<Option<Payment>, PaymentError> {
    use sqlx::{FromRow, Row};
    if row.try_get::<Option<String>, _>("payment_id")?.is_none() {
        return Ok(None);
    }
    Payment::try_from(PaymentRow::from_row(row)?).map(Some)
}

#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub statuses: Vec<PaymentStatus>,
    pub channel_key: Option<String>,
    pub created_from: Option<i64>,
    pub created_to: Option<i64>,
    /// Only this subscription's payments.
    pub subscription_id: Option<String>,
    /// Keyset cursor: only payments with a smaller id (ids sort by creation time).
    pub before_payment_id: Option<String>,
    pub limit: u32,
}

/// Up to this many merchants of a scope get a branch of their own in `list` (a parent with more
/// sub-merchants is read through the scope's subquery instead).
const MAX_BRANCHES: usize = 64;

/// How far a payment's id (a ULID, stamped when it was made) may be from its `created_at`: a
/// time range is read as a range of ids, widened by this, then filtered exactly.
const ID_CLOCK_MARGIN_MS: i64 = 60_000;

/// The smallest payment id made at `ms` or later.
fn first_id_at(ms: i64) -> String {
    format!("pay_{}", ulid::Ulid::from_parts(ms.max(0) as u64, 0))
}

/// Newest first: a page of the payments of `merchants` (the caller's scope, as authentication
/// found it; `merchant_id` when it is not known). Each merchant's payments are read newest first
/// on `payments_by_merchant` (or, for one channel, on `payments_by_channel`), a branch per
/// merchant merged in order, so a page reads about a page of rows however many payments the scope
/// holds; a time range is read as the range of payment ids (ULIDs) made in it.
pub async fn list(
    db: &Db,
    merchant_id: &str,
    merchants: &[String],
    f: &ListFilter,
) -> Result<Vec<Payment>, PaymentError> {
    let mut args: Vec<String> = Vec::new();
    let mut param = |value: String| {
        args.push(value);
        format!("${}", args.len())
    };
    let mut filters = String::new();
    if !f.statuses.is_empty() {
        let placeholders: Vec<String> = f.statuses.iter().map(|s| param(s.as_str().to_owned())).collect();
        filters.push_str(&format!(" AND status IN ({})", placeholders.join(", ")));
    }
    if let Some(channel_key) = &f.channel_key {
        filters.push_str(&format!(" AND channel_key = {}", param(channel_key.clone())));
    }
    if let Some(from) = f.created_from {
        let (lo, at) = (param(first_id_at(from - ID_CLOCK_MARGIN_MS)), param(from.to_string()));
        filters.push_str(&format!(" AND payment_id >= {lo} AND created_at >= CAST({at} AS BIGINT)"));
    }
    if let Some(to) = f.created_to {
        let (hi, at) = (param(first_id_at(to + ID_CLOCK_MARGIN_MS)), param(to.to_string()));
        filters.push_str(&format!(" AND payment_id < {hi} AND created_at < CAST({at} AS BIGINT)"));
    }
    if let Some(subscription_id) = &f.subscription_id {
        filters.push_str(&format!(" AND subscription_id = {}", param(subscription_id.clone())));
    }
    if let Some(before) = &f.before_payment_id {
        filters.push_str(&format!(" AND payment_id < {}", param(before.clone())));
    }
    let limit = param(f.limit.to_string());
    // One channel's payments come by `payments_by_channel` (the tenancy only checks them); the
    // narrow filters by their own indexes. Otherwise a branch per merchant.
    let narrow = f.channel_key.is_some() || f.subscription_id.is_some();
    let sql = if narrow || merchants.is_empty() || merchants.len() > MAX_BRANCHES {
        let scope = param(merchant_id.to_owned());
        let in_scope = IN_SCOPE.replace("$1", &scope);
        format!(
            "SELECT {COLUMNS} FROM payments WHERE {in_scope}{filters} ORDER BY payment_id DESC \
             LIMIT CAST({limit} AS BIGINT)"
        )
    } else {
        let branches: Vec<String> = merchants
            .iter()
            .map(|m| {
                let m = param(m.clone());
                format!(
                    "SELECT * FROM (SELECT {COLUMNS} FROM payments WHERE merchant_id = {m}{filters} \
                     ORDER BY payment_id DESC LIMIT CAST({limit} AS BIGINT)) AS b"
                )
            })
            .collect();
        format!(
            "SELECT * FROM ({}) AS page ORDER BY payment_id DESC LIMIT CAST({limit} AS BIGINT)",
            branches.join(" UNION ALL ")
        )
    };
    let mut query = sqlx::query_as::<_, PaymentRow>(&sql);
    for arg in args {
        query = query.bind(arg);
    }
    let rows = query.fetch_all(db.pool()).await?;
    rows.into_iter().map(Payment::try_from).collect()
}

/// Which payments count as stuck, and for how long a pass claims them.
#[derive(Debug, Clone, Copy)]
pub struct Stuck {
    /// In CANCEL_PENDING since before this.
    pub pending_before: i64,
    /// READY since before this...
    pub ready_before: i64,
    /// ...and since after this: a checkout nobody paid for this long is abandoned, not stuck.
    pub ready_since: i64,
    pub now: i64,
    /// A claimed payment is not checked again before this.
    pub claim_until: i64,
}

/// Payments the sweep should ask the provider about (`Stuck`), not checked recently, at most
/// `limit`. Each returned payment is claimed (its `check_after` moved to `claim_until`) by a
/// compare-and-set, so replicas never share one.
pub async fn claim_stuck(db: &Db, stuck: &Stuck, limit: u32) -> Result<Vec<Payment>, PaymentError> {
    let Stuck { pending_before, ready_before, ready_since, now, claim_until } = *stuck;
    // Pending refunds first, oldest first (`payments_stuck_by_age`); then unpaid checkouts, newest
    // first (`payments_ready_by_age`): a lost pingback is likelier among young checkouts than among
    // old ones nobody paid, and the range never walks the abandoned ones. Each condition repeats
    // its partial index's own words: SQLite uses a partial index only for a query that says so.
    let pending = format!(
        "SELECT {COLUMNS} FROM payments WHERE status IN ('READY', 'CANCEL_PENDING') AND status = 'CANCEL_PENDING' \
         AND updated_at <= $1 AND (check_after IS NULL OR check_after <= $2) ORDER BY updated_at LIMIT $3"
    );
    let mut rows = sqlx::query_as::<_, PaymentRow>(&pending)
        .bind(pending_before)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(db.pool())
        .await?;
    let left = i64::from(limit) - rows.len() as i64;
    if left > 0 {
        let ready = format!(
            "SELECT {COLUMNS} FROM payments WHERE status = 'READY' AND created_at <= $1 AND created_at > $2 \
             AND (check_after IS NULL OR check_after <= $3) ORDER BY created_at DESC LIMIT $4"
        );
        let more = sqlx::query_as::<_, PaymentRow>(&ready)
            .bind(ready_before)
            .bind(ready_since)
            .bind(now)
            .bind(left)
            .fetch_all(db.pool())
            .await?;
        rows.extend(more);
    }
    let mut claimed = Vec::new();
    for payment in rows.into_iter().map(Payment::try_from) {
        let payment = payment?;
        let done = sqlx::query(
            "UPDATE payments SET check_after = $1 WHERE payment_id = $2 AND (check_after IS NULL OR check_after <= $3)",
        )
        .bind(claim_until)
        .bind(&payment.payment_id)
        .bind(now)
        .execute(db.pool())
        .await?;
        if done.rows_affected() == 1 {
            claimed.push(payment);
        }
    }
    Ok(claimed)
}

/// A `payments` row as stored; `Payment` is what it says.
#[derive(sqlx::FromRow)]
struct PaymentRow {
    payment_id: String,
    merchant_id: String,
    channel_key: String,
    merchant_uid: String,
    amount_minor: i64,
    currency: String,
    order_name: String,
    customer_uid: String,
    customer_email: String,
    payment_method: String,
    widget: String,
    success_url: String,
    failure_url: String,
    country_code: String,
    language: String,
    /// A JSON object.
    custom_params: String,
    status: String,
    provider_ref: Option<String>,
    is_test: Flag,
    redirect_url: String,
    subscription_id: Option<String>,
    cancelled_amount: i64,
    pending_cancel_amount: i64,
    version: i64,
    created_at: UnixMs,
    updated_at: UnixMs,
    paid_at: Option<UnixMs>,
    failed_at: Option<UnixMs>,
    cancelled_at: Option<UnixMs>,
}

impl TryFrom<PaymentRow> for Payment {
    type Error = PaymentError;

    fn try_from(row: PaymentRow) -> Result<Self, PaymentError> {
        let custom_params: BTreeMap<String, String> = serde_json::from_str(&row.custom_params)
            .map_err(|e| PaymentError::Corrupt(format!("custom_params: {e}")))?;
        Ok(Payment {
            payment_id: row.payment_id,
            merchant_id: row.merchant_id,
            channel_key: row.channel_key,
            merchant_uid: row.merchant_uid,
            amount_minor: MinorUnits(row.amount_minor),
            currency: row.currency,
            order_name: row.order_name,
            customer_uid: row.customer_uid,
            customer_email: Email::new(row.customer_email),
            payment_method: row.payment_method,
            widget: row.widget,
            success_url: row.success_url,
            failure_url: row.failure_url,
            country_code: row.country_code,
            language: row.language,
            custom_params,
            status: row.status.parse().map_err(PaymentError::Corrupt)?,
            provider_ref: row.provider_ref,
            test: row.is_test.into(),
            redirect_url: row.redirect_url,
            subscription_id: row.subscription_id,
            cancelled_amount: MinorUnits(row.cancelled_amount),
            pending_cancel_amount: MinorUnits(row.pending_cancel_amount),
            version: row.version,
            created_at: row.created_at.into(),
            updated_at: row.updated_at.into(),
            paid_at: row.paid_at.map(i64::from),
            failed_at: row.failed_at.map(i64::from),
            cancelled_at: row.cancelled_at.map(i64::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_column_list_names_every_parameter_the_insert_binds() {
        assert_eq!(COLUMNS.split(',').count(), INSERT_PARAMS);
        assert!(INSERT.starts_with(&format!("INSERT INTO payments ({COLUMNS}) VALUES ($1, ")));
        assert!(INSERT.ends_with(&format!("${INSERT_PARAMS})")), "{INSERT}");
    }

    #[test]
    fn the_compare_and_set_moves_the_moving_columns_on_the_version_before() {
        assert_eq!(
            *UPDATE,
            "UPDATE payments SET status = $1, provider_ref = $2, is_test = $3, subscription_id = $4, \
             cancelled_amount = $5, pending_cancel_amount = $6, version = $7, updated_at = $8, paid_at = $9, \
             failed_at = $10, cancelled_at = $11 WHERE payment_id = $12 AND version = $13"
        );
    }
}
