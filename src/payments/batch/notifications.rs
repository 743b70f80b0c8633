//! Verified provider notifications that arrive together share a transaction; on PostgreSQL the
//! plain settlements of payments this replica wrote last go first, from their copies.

use std::{cmp::Ordering, collections::HashSet};

use futures_util::future::BoxFuture;

use super::{
    group_commit::{Batched, GroupCommit, workers_gone},
    recent::RecentPayments,
    settlements,
};
use crate::{
    payments::{
        PaymentError,
        flows::{
            notification::{self, Committable, NotificationError},
            writers::NotificationIngest,
        },
        provider::{Notice, RawNotification},
    },
    store::{Backend, Db},
};

/// A verified provider notification: its raw record to store and the notice to apply.
pub struct Notification {
    pub raw: RawNotification,
    pub notice: Notice,
}

impl Batched for Notification {
    type Output = Committable;
    type Error = NotificationError;
    const KIND: &'static str = "notification";
    type Shared = RecentPayments;

    /// On PostgreSQL the plain settlements of payments this replica wrote last go first, in one
    /// statement of their own (`settlements::settle_from_copies`); the rest then share a
    /// transaction. Once some have committed, a failure of the rest can no longer roll them back,
    /// so the rest fall back to one by one here.
    async fn together(db: &Db, recent: &RecentPayments, jobs: &[&Self]) -> Result<Vec<Committable>, NotificationError> {
        let (firsts, _) = firsts_per_payment(jobs);
        let pairs: Vec<_> = firsts.iter().map(|&i| (&jobs[i].raw, &jobs[i].notice)).collect();
        let mut results: Vec<Option<Committable>> = jobs.iter().map(|_| None).collect();
        for (&i, settled) in firsts.iter().zip(settlements::settle_from_copies(db, recent, &pairs).await) {
            results[i] = settled.map(Ok);
        }
        let rest: Vec<usize> = (0..jobs.len()).filter(|&i| results[i].is_none()).collect();
        if rest.len() == jobs.len() {
            let results = together(db, jobs).await?;
            settlements::remember(recent, &results);
            return Ok(results);
        }
        let rest_jobs: Vec<&Notification> = rest.iter().map(|&i| jobs[i]).collect();
        let rest_results = match rest_jobs.as_slice() {
            [] => Vec::new(),
            _ => match together(db, &rest_jobs).await {
                Ok(rest_results) => {
                    settlements::remember(recent, &rest_results);
                    rest_results
                }
                Err(error) => {
                    tracing::warn!(%error, jobs = rest_jobs.len(), kind = Self::KIND, "a batch rolled back; writing its jobs one by one");
                    let mut one_by_one = Vec::with_capacity(rest_jobs.len());
                    for job in rest_jobs {
                        one_by_one.push(job.alone(db, recent).await);
                    }
                    one_by_one
                }
            },
        };
        for (i, result) in rest.into_iter().zip(rest_results) {
            results[i] = Some(result);
        }
        Ok(results.into_iter().map(|result| result.unwrap_or_else(Self::stopped)).collect())
    }

    async fn alone(&self, db: &Db, recent: &RecentPayments) -> Committable {
        settlements::ingest(db, recent, &self.raw, &self.notice).await
    }

    /// Payment rows first of all.
    fn lock_order(&self, other: &Self) -> Ordering {
        self.notice.payment_id.cmp(&other.notice.payment_id)
    }

    fn stopped() -> Committable {
        Err(workers_gone().into())
    }
}

/// Applies every job in one transaction. On PostgreSQL each payment's first job goes in one batch
/// (`settlements::ingest_all_in`: a statement for all their raw records, one for all their plain
/// settlements); a later job for the same payment (or a repeat of the same notification) is
/// applied afterwards on its own, with the writes before it in sight.
async fn together(db: &Db, batch: &[&Notification]) -> Result<Vec<Committable>, NotificationError> {
    let mut tx = db.pool().begin().await?;
    let mut results: Vec<Option<Committable>> = batch.iter().map(|_| None).collect();
    let (firsts, later) = firsts_per_payment(batch);
    if Backend::of(&tx).writes_in_ctes() {
        let pairs: Vec<_> = firsts.iter().map(|&i| (&batch[i].raw, &batch[i].notice)).collect();
        for (&i, result) in firsts.iter().zip(settlements::ingest_all_in(&mut tx, &pairs).await?) {
            results[i] = Some(result);
        }
    } else {
        for &i in &firsts {
            results[i] = Some(notification::ingest_in(&mut tx, &batch[i].raw, &batch[i].notice).await?);
        }
    }
    for &i in &later {
        results[i] = Some(notification::ingest_in(&mut tx, &batch[i].raw, &batch[i].notice).await?);
    }
    // Every index is in `firsts` or `later`; if one were not, the batch would fall back, not panic.
    let results = results.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| {
        NotificationError::Payment(PaymentError::Corrupt("a notification of a batch got no result".into()))
    })?;
    tx.commit().await?;
    notification::committed(db, &results);
    Ok(results)
}

/// Indexes of the first job for each payment (each also the first of its notification), and of
/// the rest, each list in batch order.
fn firsts_per_payment(batch: &[&Notification]) -> (Vec<usize>, Vec<usize>) {
    let (mut payments, mut notifications) = (HashSet::new(), HashSet::new());
    (0..batch.len()).partition(|&i| {
        let (raw, notice) = (&batch[i].raw, &batch[i].notice);
        let key = (&raw.channel_key, &raw.provider_ref, raw.kind, &raw.unique_ref);
        // Both inserted, so a later job is never counted as seen for a key it did not add.
        let new_payment = payments.insert(&notice.payment_id);
        notifications.insert(key) && new_payment
    })
}

/// The port the edges hold.
impl NotificationIngest for GroupCommit<Notification> {
    fn ingest(&self, raw: RawNotification, notice: Notice) -> BoxFuture<'_, Committable> {
        Box::pin(self.submit(Notification { raw, notice }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::{PaymentOutcome, provider::ProviderEvent};

    fn job(payment_id: &str, provider_ref: &str, kind: i64) -> Notification {
        let raw = RawNotification {
            channel_key: "ch_1".into(),
            provider_ref: provider_ref.into(),
            kind,
            unique_ref: String::new(),
            query: String::new(),
        };
        let event = ProviderEvent::Payment(PaymentOutcome::Completed);
        let notice = Notice { payment_id: payment_id.into(), provider_ref: provider_ref.into(), event, test: false };
        Notification { raw, notice }
    }

    #[test]
    fn a_batch_statement_gets_each_payment_and_each_notification_once() {
        let batch = [
            job("pay_1", "b1", 0),
            job("pay_2", "b2", 0),
            // The same payment again (a refund after its completion): after the first is applied.
            job("pay_1", "b1", 2),
            // The same notification again (a retry racing the first delivery): counted, not applied.
            job("pay_2", "b2", 0),
            // A new payment, but its notification repeats one already in the batch; and then a
            // payment that job already brought in.
            job("pay_3", "b2", 0),
            job("pay_3", "b3", 0),
            job("pay_4", "b4", 0),
        ];
        let (firsts, later) = firsts_per_payment(&batch.iter().collect::<Vec<_>>());
        assert_eq!(firsts, [0, 1, 6]);
        assert_eq!(later, [2, 3, 4, 5]);
    }
}
