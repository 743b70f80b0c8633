//! The payments this replica wrote last, as it wrote them: so that a pingback for a payment it
//! created (or last moved) can be decided without reading the row first. A copy is only ever a
//! guess: the write it leads to is a compare-and-set on the copy's version, and when someone else
//! moved the payment since, nothing is written and the pingback takes the reading path. So a copy
//! needs no expiry, only a bound on how many are kept.

use std::sync::Arc;

use quick_cache::{OptionsBuilder, sync::Cache};

use crate::payments::Payment;

/// About 1 KiB each. At 10 checkouts a second, the last half hour's; a pingback that comes later
/// than that for its copy takes the reading path.
const CAPACITY: usize = 20_000;
/// The share of the map kept for copies read since they were written. quick_cache's default
/// (97%) suits a workload that reads the same keys again and again; here each copy is read about
/// once, by the pingback that follows its checkout, so the default would keep the first copies
/// written forever and evict a new one after about 600 newer writes, long before its pingback.
/// With a small share, the map evicts the oldest copies nobody read: it keeps the latest writes.
const READ_AGAIN_SHARE: f64 = 0.05;

/// Copies of recently written payments by id; cheap to clone (one shared cache). A plain bounded
/// map: every checkout and every settled pingback writes to it, so a write must cost little.
#[derive(Clone)]
pub struct RecentPayments {
    copies: Arc<Cache<String, Arc<Payment>>>,
}

impl Default for RecentPayments {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl RecentPayments {
    fn with_capacity(capacity: usize) -> Self {
        let options = OptionsBuilder::new()
            .estimated_items_capacity(capacity)
            .weight_capacity(capacity as u64)
            .hot_allocation(READ_AGAIN_SHARE)
            .build()
            .expect("a valid capacity and share");
        Self {
            copies: Arc::new(Cache::with_options(options, Default::default(), Default::default(), Default::default())),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::{PaymentStatus, fixtures};

    fn written(recent: &RecentPayments, n: usize) -> Payment {
        let mut payment = fixtures::payment(PaymentStatus::Ready, 100, 0, 0);
        payment.payment_id = format!("pay_{n}");
        recent.wrote(&payment);
        payment
    }

    /// Checkouts keep coming after the map is full, and each pingback reads the copy its checkout
    /// left: the latest writes must be there, however many came before them.
    #[test]
    fn the_latest_copies_are_kept_after_the_map_filled() {
        let capacity = 2_000;
        let recent = RecentPayments::with_capacity(capacity);
        for n in 0..3 * capacity {
            written(&recent, n);
        }
        let latest = (2 * capacity..3 * capacity).rev().take(capacity / 2);
        let missing: Vec<usize> = latest.filter(|n| recent.get(&format!("pay_{n}")).is_none()).collect();
        assert!(missing.is_empty(), "{} of the latest {} copies are gone: {missing:?}", missing.len(), capacity / 2);
    }

    /// A copy read and written again (a pingback settling its payment) is the newer one.
    #[test]
    fn a_copy_written_again_replaces_the_earlier_one() {
        let recent = RecentPayments::with_capacity(100);
        let mut payment = written(&recent, 1);
        assert_eq!(recent.get("pay_1").map(|p| p.status), Some(PaymentStatus::Ready));
        payment.status = PaymentStatus::Paid;
        recent.wrote(&payment);
        assert_eq!(recent.get("pay_1").map(|p| p.status), Some(PaymentStatus::Paid));
        recent.forget("pay_1");
        assert!(recent.get("pay_1").is_none());
    }
}
