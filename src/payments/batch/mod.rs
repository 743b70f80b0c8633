//! The speed layer: group commit of new payments and of notifications, and settling pingbacks
//! from this replica's copies of the payments it wrote last. It implements the flows' write ports
//! (`flows::writers`); only `app.rs` turns it on. Without it the flows are complete and correct.

mod group_commit;
mod new_payments;
mod notifications;
mod recent;
mod settlements;

pub use group_commit::{Batched, GroupCommit};
pub use new_payments::{NewPayment, NewPayments};
pub use notifications::Notification;
pub use recent::RecentPayments;

use std::sync::Arc;

use super::flows::writers::Writers;
use crate::store::Db;

/// The write ports with group commit, sharing the copies: `workers` workers for new payments, half
/// as many for notifications. A notification batch's one statement costs PostgreSQL far more than
/// an INSERT, and a worker free to take a batch takes whatever is queued, so fewer workers make
/// larger batches: with pingbacks spread over two replicas (each seeing half the load), 2 workers
/// instead of 4 took the spread from 0.48-0.51 of the floor to 0.54 (BENCHMARKS.md).
pub fn writers(db: &Db, workers: usize) -> Writers {
    // Checkouts leave their payments here for the pingbacks that settle them.
    let recent = RecentPayments::default();
    Writers {
        payments: Arc::new(NewPayments::start(db.clone(), recent.clone(), workers)),
        notifications: Arc::new(GroupCommit::<Notification>::start(db.clone(), recent, (workers / 2).max(1))),
    }
}
