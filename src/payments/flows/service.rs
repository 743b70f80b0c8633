//! The payments service the edges hold: what the flows read and write through, in one place, so a
//! flow's functions take the caller and the request, not the plumbing. Each flow adds its own
//! methods in its own file (`impl Payments` in checkout.rs, refund.rs, ...).

use std::sync::Arc;

use super::writers::PaymentInserts;
use crate::{channels::Channels, payments::Providers, ratelimit::Limiter, store::Db};

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
