//! Payment rows: the SQL for reading and writing payments.

use std::collections::BTreeMap;

use sqlx::{Any, AnyConnection, Row, any::AnyRow, query::Query};

use super::{Payment, PaymentError, PaymentStatus};
use crate::store::{Db, StoreError};

const COLUMNS: &str = "payment_id, merchant_id, channel_key, merchant_uid, amount_minor, currency, \
    order_name, customer_uid, customer_email, payment_method, widget, success_url, failure_url, \
    country_code, language, custom_params, status, provider_ref, is_test, redirect_url, subscription_id, \
    cancelled_amount, pending_cancel_amount, version, created_at, updated_at, paid_at, failed_at, cancelled_at";

/// Merchants a caller acts for: itself and its sub-merchants.
const IN_SCOPE: &str = "merchant_id IN (SELECT merchant_id FROM merchants WHERE merchant_id = $1 OR parent_id = $1)";

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
        .bind(p.amount_minor)
        .bind(&p.currency)
        .bind(&p.order_name)
        .bind(&p.customer_uid)
        .bind(&p.customer_email)
        .bind(&p.payment_method)
        .bind(&p.widget)
        .bind(&p.success_url)
        .bind(&p.failure_url)
        .bind(&p.country_code)
        .bind(&p.language)
        .bind(custom)
        .bind(p.status.as_str())
        .bind(&p.provider_ref)
        .bind(i64::from(p.test))
        .bind(&p.redirect_url)
        .bind(&p.subscription_id)
        .bind(p.cancelled_amount)
        .bind(p.pending_cancel_amount)
        .bind(p.version)
        .bind(p.created_at)
        .bind(p.updated_at)
        .bind(p.paid_at)
        .bind(p.failed_at)
        .bind(p.cancelled_at)
}

const INSERT: &str = "INSERT INTO payments (payment_id, merchant_id, channel_key, merchant_uid, amount_minor, currency, \
    order_name, customer_uid, customer_email, payment_method, widget, success_url, failure_url, \
    country_code, language, custom_params, status, provider_ref, is_test, redirect_url, subscription_id, \
    cancelled_amount, pending_cancel_amount, version, created_at, updated_at, paid_at, failed_at, cancelled_at) VALUES \
    ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, \
    $25, $26, $27, $28, $29)";

fn custom_json(p: &Payment) -> Result<String, PaymentError> {
    serde_json::to_string(&p.custom_params).map_err(|e| PaymentError::Corrupt(e.to_string()))
}

fn insert_result(result: Result<sqlx::any::AnyQueryResult, sqlx::Error>) -> Result<(), PaymentError> {
    match result.map_err(StoreError::from) {
        Ok(_) => Ok(()),
        // payment_id is a fresh ULID, so the only unique key that can clash is (merchant, merchant_uid).
        Err(StoreError::UniqueViolation) => Err(PaymentError::MerchantUidTaken),
        Err(e) => Err(e.into()),
    }
}

pub async fn insert(db: &Db, p: &Payment) -> Result<(), PaymentError> {
    insert_result(bind_all(sqlx::query(INSERT), p, custom_json(p)?).execute(db.pool()).await)
}

pub async fn insert_in_tx(conn: &mut AnyConnection, p: &Payment) -> Result<(), PaymentError> {
    insert_result(bind_all(sqlx::query(INSERT), p, custom_json(p)?).execute(conn).await)
}

/// How a caller names a payment.
pub enum Lookup<'a> {
    PaymentId(&'a str),
    MerchantUid(&'a str),
}

/// A payment of `merchant_id` or of one of its sub-merchants; anyone else's reads as not found.
/// By `merchant_uid`, the newest match wins (the same order id may exist under two sub-merchants).
pub async fn get(db: &Db, merchant_id: &str, lookup: Lookup<'_>) -> Result<Payment, PaymentError> {
    let (column, value) = match lookup {
        Lookup::PaymentId(id) => ("payment_id", id),
        Lookup::MerchantUid(uid) => ("merchant_uid", uid),
    };
    let sql =
        format!("SELECT {COLUMNS} FROM payments WHERE {IN_SCOPE} AND {column} = $2 ORDER BY payment_id DESC LIMIT 1");
    let row =
        sqlx::query(&sql).bind(merchant_id).bind(value).fetch_optional(db.pool()).await.map_err(StoreError::from)?;
    row.as_ref().map(from_row).transpose()?.ok_or(PaymentError::NotFound)
}

/// A payment (as `get` finds it) and its cancellations, oldest first, read from one snapshot: the
/// amounts and the cancellations that make them up always agree.
pub async fn get_with_cancellations(
    db: &Db,
    merchant_id: &str,
    lookup: Lookup<'_>,
) -> Result<(Payment, Vec<super::cancellations::Cancellation>), PaymentError> {
    let (column, value) = match lookup {
        Lookup::PaymentId(id) => ("payment_id", id),
        Lookup::MerchantUid(uid) => ("merchant_uid", uid),
    };
    let mut tx = db.pool().begin().await.map_err(StoreError::from)?;
    // PostgreSQL's default gives each statement its own snapshot; SQLite's read transaction is one already.
    if db.backend() == crate::store::Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    }
    let sql =
        format!("SELECT {COLUMNS} FROM payments WHERE {IN_SCOPE} AND {column} = $2 ORDER BY payment_id DESC LIMIT 1");
    let row =
        sqlx::query(&sql).bind(merchant_id).bind(value).fetch_optional(&mut *tx).await.map_err(StoreError::from)?;
    let payment = row.as_ref().map(from_row).transpose()?.ok_or(PaymentError::NotFound)?;
    let cancellations = super::cancellations::for_payment(&mut tx, &payment.payment_id).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok((payment, cancellations))
}

/// Any merchant's payment by id, inside a transaction or on the pool.
pub async fn get_in_tx(conn: &mut AnyConnection, payment_id: &str) -> Result<Option<Payment>, PaymentError> {
    let sql = format!("SELECT {COLUMNS} FROM payments WHERE payment_id = $1");
    let row = sqlx::query(&sql).bind(payment_id).fetch_optional(conn).await.map_err(StoreError::from)?;
    row.as_ref().map(from_row).transpose()
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
        .await
        .map_err(StoreError::from)?;
    Ok(row.is_some())
}

/// The payment of a subscription made by a renewal with this provider ref, if any.
pub async fn find_by_provider_ref(
    conn: &mut AnyConnection,
    channel_key: &str,
    provider_ref: &str,
) -> Result<Option<Payment>, PaymentError> {
    let sql = format!("SELECT {COLUMNS} FROM payments WHERE channel_key = $1 AND provider_ref = $2 LIMIT 1");
    let row =
        sqlx::query(&sql).bind(channel_key).bind(provider_ref).fetch_optional(conn).await.map_err(StoreError::from)?;
    row.as_ref().map(from_row).transpose()
}

/// Writes `p` (already at its next version) only if the row is still at the version before: a
/// compare-and-set that works the same on both backends. False when someone else wrote first.
pub async fn update(conn: &mut AnyConnection, p: &Payment) -> Result<bool, PaymentError> {
    let done = sqlx::query(
        "UPDATE payments SET status = $1, provider_ref = $2, is_test = $3, subscription_id = $4, cancelled_amount = $5, \
         pending_cancel_amount = $6, version = $7, updated_at = $8, paid_at = $9, failed_at = $10, cancelled_at = $11 \
         WHERE payment_id = $12 AND version = $13",
    )
    .bind(p.status.as_str())
    .bind(&p.provider_ref)
    .bind(i64::from(p.test))
    .bind(&p.subscription_id)
    .bind(p.cancelled_amount)
    .bind(p.pending_cancel_amount)
    .bind(p.version)
    .bind(p.updated_at)
    .bind(p.paid_at)
    .bind(p.failed_at)
    .bind(p.cancelled_at)
    .bind(&p.payment_id)
    .bind(p.version - 1)
    .execute(conn)
    .await
    .map_err(StoreError::from)?;
    Ok(done.rows_affected() == 1)
}

#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub statuses: Vec<PaymentStatus>,
    pub channel_key: Option<String>,
    pub created_from: Option<i64>,
    pub created_to: Option<i64>,
    /// Keyset cursor: only payments with a smaller id (ids sort by creation time).
    pub before_payment_id: Option<String>,
    pub limit: u32,
}

/// Newest first.
pub async fn list(db: &Db, merchant_id: &str, f: &ListFilter) -> Result<Vec<Payment>, PaymentError> {
    let mut sql = format!("SELECT {COLUMNS} FROM payments WHERE {IN_SCOPE}");
    let mut n = 1;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    if !f.statuses.is_empty() {
        let placeholders: Vec<String> = f.statuses.iter().map(|_| next()).collect();
        sql.push_str(&format!(" AND status IN ({})", placeholders.join(", ")));
    }
    if f.channel_key.is_some() {
        sql.push_str(&format!(" AND channel_key = {}", next()));
    }
    if f.created_from.is_some() {
        sql.push_str(&format!(" AND created_at >= {}", next()));
    }
    if f.created_to.is_some() {
        sql.push_str(&format!(" AND created_at < {}", next()));
    }
    if f.before_payment_id.is_some() {
        sql.push_str(&format!(" AND payment_id < {}", next()));
    }
    sql.push_str(&format!(" ORDER BY payment_id DESC LIMIT {}", next()));

    let mut query: Query<'_, Any, _> = sqlx::query(&sql).bind(merchant_id);
    for status in &f.statuses {
        query = query.bind(status.as_str());
    }
    if let Some(channel_key) = &f.channel_key {
        query = query.bind(channel_key);
    }
    if let Some(from) = f.created_from {
        query = query.bind(from);
    }
    if let Some(to) = f.created_to {
        query = query.bind(to);
    }
    if let Some(before) = &f.before_payment_id {
        query = query.bind(before);
    }
    let rows = query.bind(i64::from(f.limit)).fetch_all(db.pool()).await.map_err(StoreError::from)?;
    rows.iter().map(from_row).collect()
}

/// Payments the sweep should ask the provider about: in CANCEL_PENDING since before `pending_before`,
/// or READY since before `ready_before`, not checked recently. Each returned payment is claimed
/// (its `check_after` moved to `claim_until`) by a compare-and-set, so replicas never share one.
pub async fn claim_stuck(
    db: &Db,
    pending_before: i64,
    ready_before: i64,
    now: i64,
    claim_until: i64,
    limit: u32,
) -> Result<Vec<Payment>, PaymentError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM payments WHERE (check_after IS NULL OR check_after <= $1) AND \
         ((status = 'CANCEL_PENDING' AND updated_at <= $2) OR (status = 'READY' AND created_at <= $3)) \
         ORDER BY updated_at LIMIT $4"
    );
    let rows = sqlx::query(&sql)
        .bind(now)
        .bind(pending_before)
        .bind(ready_before)
        .bind(i64::from(limit))
        .fetch_all(db.pool())
        .await
        .map_err(StoreError::from)?;
    let mut claimed = Vec::new();
    for payment in rows.iter().map(from_row) {
        let payment = payment?;
        let done = sqlx::query(
            "UPDATE payments SET check_after = $1 WHERE payment_id = $2 AND (check_after IS NULL OR check_after <= $3)",
        )
        .bind(claim_until)
        .bind(&payment.payment_id)
        .bind(now)
        .execute(db.pool())
        .await
        .map_err(StoreError::from)?;
        if done.rows_affected() == 1 {
            claimed.push(payment);
        }
    }
    Ok(claimed)
}

fn from_row(row: &AnyRow) -> Result<Payment, PaymentError> {
    let corrupt = |col: &str, e: &dyn std::fmt::Display| PaymentError::Corrupt(format!("{col}: {e}"));
    let get_str = |col: &str| row.try_get::<String, _>(col).map_err(|e| corrupt(col, &e));
    let get_opt_str = |col: &str| row.try_get::<Option<String>, _>(col).map_err(|e| corrupt(col, &e));
    let get_i64 = |col: &str| row.try_get::<i64, _>(col).map_err(|e| corrupt(col, &e));
    let get_opt_i64 = |col: &str| row.try_get::<Option<i64>, _>(col).map_err(|e| corrupt(col, &e));
    let custom_params: BTreeMap<String, String> =
        serde_json::from_str(&get_str("custom_params")?).map_err(|e| corrupt("custom_params", &e))?;
    Ok(Payment {
        payment_id: get_str("payment_id")?,
        merchant_id: get_str("merchant_id")?,
        channel_key: get_str("channel_key")?,
        merchant_uid: get_str("merchant_uid")?,
        amount_minor: get_i64("amount_minor")?,
        currency: get_str("currency")?,
        order_name: get_str("order_name")?,
        customer_uid: get_str("customer_uid")?,
        customer_email: get_str("customer_email")?,
        payment_method: get_str("payment_method")?,
        widget: get_str("widget")?,
        success_url: get_str("success_url")?,
        failure_url: get_str("failure_url")?,
        country_code: get_str("country_code")?,
        language: get_str("language")?,
        custom_params,
        status: get_str("status")?.parse().map_err(PaymentError::Corrupt)?,
        provider_ref: get_opt_str("provider_ref")?,
        test: get_i64("is_test")? != 0,
        redirect_url: get_str("redirect_url")?,
        subscription_id: get_opt_str("subscription_id")?,
        cancelled_amount: get_i64("cancelled_amount")?,
        pending_cancel_amount: get_i64("pending_cancel_amount")?,
        version: get_i64("version")?,
        created_at: get_i64("created_at")?,
        updated_at: get_i64("updated_at")?,
        paid_at: get_opt_i64("paid_at")?,
        failed_at: get_opt_i64("failed_at")?,
        cancelled_at: get_opt_i64("cancelled_at")?,
    })
}
