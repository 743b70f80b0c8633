//! Notifications that arrive together commit together. A pingback's cost is mostly its
//! transaction's fixed part (BEGIN, COMMIT and its WAL flush, the connection's trip back to the
//! pool), so a few workers each take every notification waiting, apply them one after another in
//! one transaction, commit once, and only then answer each sender. Nobody waits for a batch to
//! fill: a worker takes what is queued when it is free, so a lone pingback goes alone.
//!
//! A batch is all or nothing: if any notification in it must roll back (a concurrent change, a
//! store error), the whole transaction does, and each notification is then applied in a
//! transaction of its own, so one bad notification never fails the others.

use std::{collections::HashSet, sync::Arc};

use tokio::sync::{Mutex, mpsc, oneshot};

use super::notifications::{self, Committable, Notice, NotificationError, RawNotification};
use crate::store::{Backend, Db};

/// The most notifications one transaction applies: bounds how long its row locks are held.
const MAX_BATCH: usize = 32;
/// Notifications waiting for a worker; senders beyond it wait (backpressure, not loss).
const QUEUE: usize = 1_024;

struct Job {
    raw: RawNotification,
    notice: Notice,
    answer: oneshot::Sender<Committable>,
}

/// The entrance to the workers; cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts `workers` workers on `db`. They stop when the last `GroupCommit` is dropped.
    pub fn start(db: Db, workers: usize) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..workers.max(1) {
            tokio::spawn(work(db.clone(), waiting.clone()));
        }
        Self { queue }
    }

    /// Stores `raw` and applies `notice`; returns once that has committed (or failed).
    pub async fn ingest(&self, raw: RawNotification, notice: Notice) -> Committable {
        let (answer, answered) = oneshot::channel();
        self.queue.send(Job { raw, notice, answer }).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// The workers are gone (shutting down, or a batch panicked): unavailable, so the sender retries.
fn stopped() -> NotificationError {
    crate::store::StoreError::Unavailable(sqlx::Error::WorkerCrashed).into()
}

async fn work(db: Db, waiting: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let batch = {
            let mut waiting = waiting.lock().await;
            let Some(first) = waiting.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match waiting.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        // Its own task, so that a panic in one batch fails only its senders, not the worker.
        let _ = tokio::spawn(run(db.clone(), batch)).await;
    }
}

async fn run(db: Db, mut batch: Vec<Job>) {
    // A sender that gave up (timed out) was not answered OK, so its notification is not owed.
    batch.retain(|job| !job.answer.is_closed());
    // One lock order for every batch (payment rows first of all), so two batches never deadlock.
    batch.sort_by(|a, b| a.notice.payment_id.cmp(&b.notice.payment_id));
    if batch.len() > 1 {
        match together(&db, &batch).await {
            Ok(results) => {
                notifications::committed(&db, &results);
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.answer.send(result);
                }
                return;
            }
            Err(error) => {
                tracing::warn!(%error, notifications = batch.len(), "a batch rolled back; applying its notifications one by one")
            }
        }
    }
    for job in batch {
        let result = notifications::ingest(&db, &job.raw, &job.notice).await;
        let _ = job.answer.send(result);
    }
}

/// Applies every job in one transaction. On PostgreSQL each payment's first job goes in one batch
/// (`notifications::ingest_all_in`: a statement for all their raw records, one for all their plain
/// settlements); a later job for the same payment (or a repeat of the same notification) is
/// applied afterwards on its own, with the writes before it in sight.
async fn together(db: &Db, batch: &[Job]) -> Result<Vec<Committable>, NotificationError> {
    let mut tx = db.pool().begin().await?;
    let mut results: Vec<Option<Committable>> = batch.iter().map(|_| None).collect();
    let (firsts, later) = firsts_per_payment(batch);
    if Backend::of(&tx).writes_in_ctes() {
        let pairs: Vec<_> = firsts.iter().map(|&i| (&batch[i].raw, &batch[i].notice)).collect();
        for (&i, result) in firsts.iter().zip(notifications::ingest_all_in(&mut tx, &pairs).await?) {
            results[i] = Some(result);
        }
    } else {
        for &i in &firsts {
            results[i] = Some(notifications::ingest_in(&mut tx, &batch[i].raw, &batch[i].notice).await?);
        }
    }
    for &i in &later {
        results[i] = Some(notifications::ingest_in(&mut tx, &batch[i].raw, &batch[i].notice).await?);
    }
    // Every index is in `firsts` or `later`; if one were not, the batch would fall back, not panic.
    let results = results.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| {
        NotificationError::Payment(super::PaymentError::Corrupt("a notification of a batch got no result".into()))
    })?;
    tx.commit().await?;
    Ok(results)
}

/// Indexes of the first job for each payment (each also the first of its notification), and of
/// the rest, each list in batch order.
fn firsts_per_payment(batch: &[Job]) -> (Vec<usize>, Vec<usize>) {
    let (mut payments, mut notifications) = (HashSet::new(), HashSet::new());
    (0..batch.len()).partition(|&i| {
        let (raw, notice) = (&batch[i].raw, &batch[i].notice);
        let key = (&raw.channel_key, &raw.provider_ref, raw.kind, &raw.unique_ref);
        // Both inserted, so a later job is never counted as seen for a key it did not add.
        let new_payment = payments.insert(&notice.payment_id);
        notifications.insert(key) && new_payment
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::{PaymentOutcome, notifications::ProviderEvent};

    fn job(payment_id: &str, provider_ref: &str, kind: i64) -> Job {
        let raw = RawNotification {
            channel_key: "ch_1".into(),
            provider_ref: provider_ref.into(),
            kind,
            unique_ref: String::new(),
            query: String::new(),
        };
        let event = ProviderEvent::Payment(PaymentOutcome::Completed);
        let notice = Notice { payment_id: payment_id.into(), provider_ref: provider_ref.into(), event, test: false };
        Job { raw, notice, answer: oneshot::channel().0 }
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
        let (firsts, later) = firsts_per_payment(&batch);
        assert_eq!(firsts, [0, 1, 6]);
        assert_eq!(later, [2, 3, 4, 5]);
    }
}
