//! The payments this replica wrote last, as it wrote them: so that a pingback for a payment it
//! created (or last moved) can be decided without reading the row first. A copy is only ever a
//! guess: the write it leads to is a compare-and-set on the copy's version, and when someone else
//! moved the payment since, nothing is written and the pingback takes the reading path.

use std::{sync::Arc, time::Duration};

use moka::future::Cache;

use super::Payment;

/// Enough for the checkouts of several minutes at full speed; about 1 KiB each.
const CAPACITY: u64 = 20_000;
/// Most hosted checkouts are paid (or abandoned) within this.
const KEPT_FOR: Duration = Duration::from_secs(15 * 60);

/// Copies of recently written payments by id; cheap to clone (one shared cache).
#[derive(Clone)]
pub struct RecentPayments {
    copies: Cache<String, Arc<Payment>>,
}

impl Default for RecentPayments {
    fn default() -> Self {
        Self { copies: Cache::builder().max_capacity(CAPACITY).time_to_live(KEPT_FOR).build() }
    }
}

impl RecentPayments {
    /// `payment` as it was just committed.
    pub async fn wrote(&self, payment: &Payment) {
        self.copies.insert(payment.payment_id.clone(), Arc::new(payment.clone())).await;
    }

    /// The copy of `payment_id` this replica wrote last, if it still has one.
    pub async fn get(&self, payment_id: &str) -> Option<Arc<Payment>> {
        self.copies.get(payment_id).await
    }

    /// The copy turned out stale.
    pub async fn forget(&self, payment_id: &str) {
        self.copies.invalidate(payment_id).await;
    }
}
