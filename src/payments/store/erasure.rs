//! Erasure's SQL: the payments of a buyer, and every copy of a payment's personal data blanked in
//! the caller's transaction (the payment row, its subscription, its event snapshots, webhook
//! bodies and raw pingbacks; its idempotency keys, whose fingerprints were taken over it, go).
//! Cancellations hold no buyer data (a refund's reason is the merchant's words), nor do webhook
//! attempts (status, error, latency) or the audit trail.

use sqlx::AnyConnection;

use crate::{
    merchants::IN_SCOPE,
    payments::{PaymentError, core::erasure},
    store::Db,
};

/// The payments of `merchant_id` and its sub-merchants whose buyer is `customer_uid`, oldest first.
pub async fn payments_of_customer(db: &Db, merchant_id: &str, customer_uid: &str) -> Result<Vec<String>, PaymentError> {
    let sql = format!("SELECT payment_id FROM payments WHERE {IN_SCOPE} AND customer_uid = $2 ORDER BY payment_id");
    Ok(sqlx::query_scalar(&sql).bind(merchant_id).bind(customer_uid).fetch_all(db.pool()).await?)
}

/// Blanks the buyer's fields of the payment row (the changes' compare-and-set moved its version
/// already) and of every copy of it.
pub async fn erase_copies(conn: &mut AnyConnection, payment_id: &str) -> Result<(), PaymentError> {
    sqlx::query(
        "UPDATE payments SET customer_uid = '', customer_email = '', custom_params = '{}', redirect_url = '', \
         success_url = '', failure_url = '' WHERE payment_id = $1",
    )
    .bind(payment_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE subscriptions SET customer_uid = '' WHERE subscription_id = \
         (SELECT subscription_id FROM payments WHERE payment_id = $1) AND customer_uid <> ''",
    )
    .bind(payment_id)
    .execute(&mut *conn)
    .await?;
    rewrite(conn, ("payment_events", "event_id", "BIGINT"), "snapshot", payment_id, json_erased).await?;
    // A subscription's events carry it (with its buyer) as their detail.
    rewrite(conn, ("payment_events", "event_id", "BIGINT"), "detail", payment_id, json_erased).await?;
    rewrite(conn, ("webhook_deliveries", "seq", "BIGINT"), "payload", payment_id, json_erased).await?;
    rewrite(conn, ("pingbacks", "pingback_id", "TEXT"), "query", payment_id, |q| {
        let erased = erasure::erase_in_pingback_query(q);
        (erased != q).then_some(erased)
    })
    .await?;
    sqlx::query("DELETE FROM idempotency_keys WHERE resource_id = $1").bind(payment_id).execute(&mut *conn).await?;
    Ok(())
}

/// A JSON text with every payment in it erased; `None` when it held nothing to erase (or is not
/// JSON, which paygate never writes there).
fn json_erased(text: &str) -> Option<String> {
    let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
    erasure::erase_in_json(&mut value).then(|| value.to_string())
}

/// Rewrites `column` of `table`'s rows of the payment with `erase`, where it changes something;
/// rows are named by their key (a column of `key_type`, read as text).
async fn rewrite(
    conn: &mut AnyConnection,
    (table, key, key_type): (&str, &str, &str),
    column: &str,
    payment_id: &str,
    erase: impl Fn(&str) -> Option<String>,
) -> Result<(), PaymentError> {
    let select =
        format!("SELECT CAST({key} AS TEXT), {column} FROM {table} WHERE payment_id = $1 AND {column} IS NOT NULL");
    let rows: Vec<(String, String)> = sqlx::query_as(&select).bind(payment_id).fetch_all(&mut *conn).await?;
    // By the payment too: an index of every partition leads with it.
    let update = format!("UPDATE {table} SET {column} = $1 WHERE payment_id = $2 AND {key} = CAST($3 AS {key_type})");
    for (id, text) in rows {
        if let Some(erased) = erase(&text) {
            sqlx::query(&update).bind(erased).bind(payment_id).bind(id).execute(&mut *conn).await?;
        }
    }
    Ok(())
}
