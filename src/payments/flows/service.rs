//! The payments service the edges hold: what the flows read and write through, in one place, so a
//! flow's functions take the caller and the request, not the plumbing. Each flow adds its own
//! methods in its own file (`impl Payments` in checkout.rs, refund.rs, ...).

use std::sync::Arc;

use super::writers::PaymentInserts;
use crate::{
    channels::{Channel, Channels},
    payments::{Payment, PaymentError, Providers, store::payments as rows},
    ratelimit::Limiter,
    store::Db,
};

#[derive(Clone)]
pub struct Payments {
    pub db: Db,
    pub channels: Channels,
    pub providers: Providers,
    /// Where checkouts insert their new payments: the plain path, or the batch layer's.
    pub new_payments: Arc<dyn PaymentInserts>,
    /// How long an idempotency key's in-flight request holds it before a retry may take it over.
    pub idempotency_lease_ms: i64,
    /// One `SyncPayment` per payment per interval, across replicas; `None` when off.
    pub sync_limit: Option<Limiter>,
}

/// A payment and its channel, for work no caller waits on (the sweep, the delivery outbox): `None`,
/// logged for `who`, when either cannot be read now (the next pass tries again).
pub async fn payment_and_channel(
    db: &Db,
    channels: &Channels,
    payment_id: &str,
    who: &str,
) -> Result<Option<(Payment, Arc<Channel>)>, PaymentError> {
    let payment = {
        let mut conn = db.pool().acquire().await?;
        rows::get_in_tx(&mut conn, payment_id).await?
    };
    let Some(payment) = payment else { return Ok(None) };
    match channels.unscoped(&payment.channel_key).await {
        Ok(channel) => Ok(Some((payment, channel))),
        Err(e) => {
            tracing::warn!(%payment_id, error = %e, "{who}: channel unavailable");
            Ok(None)
        }
    }
}
