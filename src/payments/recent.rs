//! The payments this replica wrote last, as it wrote them: so that a pingback for a payment it
//! created (or last moved) can be decided without reading the row first. A copy is only ever a
//! guess: the write it leads to is a compare-and-set on the copy's version, and when someone else
//! moved the payment since, nothing is written and the pingback takes the reading path. So a copy
//! needs no expiry, only a bound on how many are kept.

use std::sync::Arc;

use quick_cache::sync::Cache;

use super::Payment;

/// Enough for the checkouts of several minutes at full speed; about 1 KiB each.
const CAPACITY: usize = 20_000;

/// Copies of recently written payments by id; cheap to clone (one shared cache). A plain bounded
/// map: every checkout and every settled pingback writes to it, so a write must cost little.
#[derive(Clone)]
pub struct RecentPayments {
    copies: Arc<Cache<String, Arc<Payment>>>,
}

impl Default for RecentPayments {
    fn default() -> Self {
        Self { copies: Arc::new(Cache::new(CAPACITY)) }
    }
}

impl RecentPayments {
    /// `payment` as it was just committed.
    pub fn wrote(&self, payment: &Payment) {
        self.copies.insert(payment.payment_id.clone(), Arc::new(payment.clone()));
    }

    /// The copy of `payment_id` this replica wrote last, if it still has one.
    pub fn get(&self, payment_id: &str) -> Option<Arc<Payment>> {
        self.copies.get(payment_id)
    }

    /// The copy turned out stale.
    pub fn forget(&self, payment_id: &str) {
        self.copies.remove(payment_id);
    }
}
