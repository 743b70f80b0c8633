//! Where the two most frequent writes go: new checkout payments and verified notifications. The
//! flows write them plainly, each in a transaction of its own ([`Plain`]); the speed layer
//! (`payments::batch`, which `app.rs` switches on) implements the same ports with group commit
//! and copies of recent payments. Nothing here knows that layer.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::notification::{self, Committable};
use crate::{
    payments::{
        Payment, PaymentError,
        provider::{Notice, RawNotification},
        store::payments as rows,
    },
    store::Db,
};

/// New payments that need nothing else in their transaction (no subscription, no idempotency key).
pub trait PaymentInserts: Send + Sync {
    /// Stores `payment`; returns once that has committed (or failed).
    fn insert(&self, payment: Payment) -> BoxFuture<'_, Result<(), PaymentError>>;
    /// A new payment the flow wrote itself, in its own transaction.
    fn wrote(&self, payment: &Payment);
}

/// Verified provider notifications.
pub trait NotificationIngest: Send + Sync {
    /// Stores `raw` and applies `notice`; returns once that has committed (or failed).
    fn ingest(&self, raw: RawNotification, notice: Notice) -> BoxFuture<'_, Committable>;
}

/// Each write in a transaction of its own.
pub struct Plain(pub Db);

impl PaymentInserts for Plain {
    fn insert(&self, payment: Payment) -> BoxFuture<'_, Result<(), PaymentError>> {
        Box::pin(async move { rows::insert(&self.0, &payment).await })
    }

    fn wrote(&self, _: &Payment) {}
}

impl NotificationIngest for Plain {
    fn ingest(&self, raw: RawNotification, notice: Notice) -> BoxFuture<'_, Committable> {
        Box::pin(async move { notification::ingest(&self.0, &raw, &notice).await })
    }
}

/// The ports as the edges hold them; cheap to clone.
#[derive(Clone)]
pub struct Writers {
    pub payments: Arc<dyn PaymentInserts>,
    pub notifications: Arc<dyn NotificationIngest>,
}

impl Writers {
    /// The plain path, complete on its own.
    pub fn plain(db: Db) -> Self {
        let plain = Arc::new(Plain(db));
        Self { payments: plain.clone(), notifications: plain }
    }
}
