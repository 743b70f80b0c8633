//! New checkout payments that arrive together share one multi-row INSERT, and each is kept as a
//! copy for the pingback that settles it.

use futures_util::future::BoxFuture;

use super::{
    group_commit::{Batched, GroupCommit, workers_gone},
    recent::RecentPayments,
};
use crate::{
    payments::{Payment, PaymentError, flows::writers::PaymentInserts, store::payments as rows},
    store::Db,
};

/// A new payment to insert. Checkouts that arrive together share one multi-row INSERT, which
/// commits as one: a unique `merchant_uid` taken twice, or any other failure, rolls it back and
/// each payment is then inserted on its own, so only the one at fault is refused.
pub struct NewPayment(pub Payment);

/// The workers that insert new payments.
pub type NewPayments = GroupCommit<NewPayment>;

impl Batched for NewPayment {
    type Output = Result<(), PaymentError>;
    type Error = PaymentError;
    const KIND: &'static str = "new payment";
    type Shared = RecentPayments;

    async fn together(db: &Db, recent: &RecentPayments, jobs: &[&Self]) -> Result<Vec<Self::Output>, PaymentError> {
        let payments: Vec<&Payment> = jobs.iter().map(|job| &job.0).collect();
        rows::insert_many(db, &payments).await?;
        for payment in payments {
            recent.wrote(payment);
        }
        Ok(jobs.iter().map(|_| Ok(())).collect())
    }

    async fn alone(&self, db: &Db, recent: &RecentPayments) -> Self::Output {
        rows::insert(db, &self.0).await?;
        recent.wrote(&self.0);
        Ok(())
    }

    /// By the unique key a batch can clash on, so two batches never wait on each other's.
    fn lock_order(&self, other: &Self) -> std::cmp::Ordering {
        (&self.0.merchant_id, &self.0.merchant_uid).cmp(&(&other.0.merchant_id, &other.0.merchant_uid))
    }

    fn stopped() -> Self::Output {
        Err(workers_gone().into())
    }
}

impl PaymentInserts for NewPayments {
    fn insert(&self, payment: Payment) -> BoxFuture<'_, Result<(), PaymentError>> {
        Box::pin(self.submit(NewPayment(payment)))
    }

    fn wrote(&self, payment: &Payment) {
        self.shared().wrote(payment);
    }
}
