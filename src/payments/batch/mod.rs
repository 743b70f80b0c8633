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

/// The write ports with group commit: `workers` workers for each kind, sharing the copies.
pub fn writers(db: &Db, workers: usize) -> Writers {
    // Checkouts leave their payments here for the pingbacks that settle them.
    let recent = RecentPayments::default();
    Writers {
        payments: Arc::new(NewPayments::start(db.clone(), recent.clone(), workers)),
        notifications: Arc::new(GroupCommit::<Notification>::start(db.clone(), recent, workers)),
    }
}
