//! Writes that arrive together commit together. A short write's cost is mostly its transaction's
//! fixed part (BEGIN, COMMIT and its WAL flush, the round trips, the connection's trip back to
//! the pool), so a few workers each take every job of a kind waiting, write them at once, commit
//! once, and only then answer each sender. Nobody waits for a batch to fill: a worker takes what
//! is queued when it is free, so a lone job goes alone. Under load (its last batch had more than
//! one job) a worker first yields a few times, so that the senders already running can join.
//!
//! A batch is all or nothing: if anything in it must roll back (a concurrent change, a taken
//! key, a store error), the whole of it does, and each job is then written on its own, so one
//! bad job never fails the others. Two kinds use it: verified provider notifications
//! (`notifications::Notification`) and new checkout payments (`new_payments::NewPayment`).

use std::{cmp::Ordering, fmt::Display, sync::Arc};

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::store::Db;

/// The most jobs one batch holds: bounds how long its row locks are held.
const MAX_BATCH: usize = 32;
/// How many times a busy worker lets other tasks run before it closes its batch (see `work`).
const BUSY_YIELDS: usize = 4;
/// Jobs waiting for a worker; senders beyond it wait (backpressure, not loss).
const QUEUE: usize = 1_024;

/// A kind of write that may share a transaction with others of its kind.
pub trait Batched: Send + Sync + Sized + 'static {
    /// What the sender is told once the job is written (or failed).
    type Output: Send + 'static;
    /// Why a batch rolled back (logged; its jobs are then written one by one).
    type Error: Display + Send;
    /// Names the kind in log lines.
    const KIND: &'static str;
    /// What every job of the kind may read and update beside the store.
    type Shared: Clone + Send + Sync + 'static;

    /// Writes every job (two or more) at once and returns their outputs in order, one per job
    /// (checked before the commit: a missing one is an error that rolls back). An error means
    /// nothing of the batch was written: each job is then written alone.
    fn together(
        db: &Db,
        shared: &Self::Shared,
        jobs: &[&Self],
    ) -> impl Future<Output = Result<Vec<Self::Output>, Self::Error>> + Send;
    /// Writes one job on its own.
    fn alone(&self, db: &Db, shared: &Self::Shared) -> impl Future<Output = Self::Output> + Send;
    /// One lock order for every batch, so two batches never deadlock on the rows they touch.
    fn lock_order(&self, other: &Self) -> Ordering;
    /// The workers are gone (shutting down, or a batch panicked): unavailable, so the sender retries.
    fn stopped() -> Self::Output;
}

/// What a kind's `stopped` reports: the store is unavailable to this job, so its sender retries.
pub fn workers_gone() -> crate::store::StoreError {
    crate::store::StoreError::Unavailable(sqlx::Error::WorkerCrashed)
}

struct Entry<J: Batched> {
    job: J,
    answer: oneshot::Sender<J::Output>,
}

/// The entrance to the workers of one kind of job; cheap to clone.
pub struct GroupCommit<J: Batched> {
    queue: mpsc::Sender<Entry<J>>,
    shared: J::Shared,
}

impl<J: Batched> Clone for GroupCommit<J> {
    fn clone(&self) -> Self {
        Self { queue: self.queue.clone(), shared: self.shared.clone() }
    }
}

impl<J: Batched> GroupCommit<J> {
    /// Starts `workers` workers on `db`. They stop when the last `GroupCommit` is dropped.
    pub fn start(db: Db, shared: J::Shared, workers: usize) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..workers.max(1) {
            tokio::spawn(work(db.clone(), shared.clone(), waiting.clone()));
        }
        Self { queue, shared }
    }

    /// What the jobs share.
    pub fn shared(&self) -> &J::Shared {
        &self.shared
    }

    /// Writes `job`; returns once that has committed (or failed).
    pub async fn submit(&self, job: J) -> J::Output {
        let (answer, answered) = oneshot::channel();
        if self.queue.send(Entry { job, answer }).await.is_err() {
            return J::stopped();
        }
        answered.await.unwrap_or_else(|_| J::stopped())
    }
}

async fn work<J: Batched>(db: Db, shared: J::Shared, waiting: Arc<Mutex<mpsc::Receiver<Entry<J>>>>) {
    // Whether this worker's last batch had company: the jobs are arriving faster than one by one.
    let mut busy = false;
    loop {
        let batch = {
            let mut waiting = waiting.lock().await;
            let Some(first) = waiting.recv().await else { return };
            let mut batch = vec![first];
            take_waiting(&mut waiting, &mut batch);
            if busy {
                // Under load, the senders already running get a moment to queue theirs: each
                // yield costs microseconds, a statement fewer saves the database far more.
                for _ in 0..BUSY_YIELDS {
                    tokio::task::yield_now().await;
                    take_waiting(&mut waiting, &mut batch);
                }
            }
            busy = batch.len() > 1;
            batch
        };
        // Its own task, so that a panic in one batch fails only its senders, not the worker.
        let _ = tokio::spawn(run(db.clone(), shared.clone(), batch)).await;
    }
}

/// Moves what is queued now into `batch`, up to `MAX_BATCH`.
fn take_waiting<J: Batched>(waiting: &mut mpsc::Receiver<Entry<J>>, batch: &mut Vec<Entry<J>>) {
    while batch.len() < MAX_BATCH {
        match waiting.try_recv() {
            Ok(entry) => batch.push(entry),
            Err(_) => break,
        }
    }
}

async fn run<J: Batched>(db: Db, shared: J::Shared, mut batch: Vec<Entry<J>>) {
    // A sender that gave up (timed out) was not answered, so its write is not owed.
    batch.retain(|entry| !entry.answer.is_closed());
    batch.sort_by(|a, b| a.job.lock_order(&b.job));
    if batch.len() > 1 {
        let jobs: Vec<&J> = batch.iter().map(|entry| &entry.job).collect();
        match J::together(&db, &shared, &jobs).await {
            // `together` checks before its commit that every job has its output; a sender left
            // without one would read it as unavailable.
            Ok(outputs) => {
                for (entry, output) in batch.into_iter().zip(outputs) {
                    let _ = entry.answer.send(output);
                }
                return;
            }
            Err(error) => {
                tracing::warn!(%error, jobs = batch.len(), kind = J::KIND, "a batch rolled back; writing its jobs one by one")
            }
        }
    }
    for entry in batch {
        let output = entry.job.alone(&db, &shared).await;
        let _ = entry.answer.send(output);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;

    /// A kind of job that writes nothing: it records how it was applied. Together, a batch
    /// holding 13 fails; alone, 13 fails and 99 panics.
    struct Probe {
        n: u32,
        applied: Arc<StdMutex<Vec<String>>>,
    }

    impl Batched for Probe {
        type Output = Result<u32, String>;
        type Error = String;
        const KIND: &'static str = "probe";
        type Shared = ();

        async fn together(_: &Db, _: &(), jobs: &[&Self]) -> Result<Vec<Self::Output>, String> {
            let ns: Vec<u32> = jobs.iter().map(|job| job.n).collect();
            if ns.contains(&13) {
                return Err("13 in the batch".into());
            }
            jobs[0].applied.lock().unwrap().push(format!("together {ns:?}"));
            Ok(ns.into_iter().map(Ok).collect())
        }

        async fn alone(&self, _: &Db, _: &()) -> Self::Output {
            assert_ne!(self.n, 99, "a job that panics");
            self.applied.lock().unwrap().push(format!("alone {}", self.n));
            if self.n == 13 { Err("13 refused".into()) } else { Ok(self.n) }
        }

        fn lock_order(&self, other: &Self) -> Ordering {
            self.n.cmp(&other.n)
        }

        fn stopped() -> Self::Output {
            Err("stopped".into())
        }
    }

    async fn sqlite_db(dir: &tempfile::TempDir) -> Db {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("probe.db").display());
        let settings =
            crate::store::PoolSettings { max_connections: 1, acquire_timeout: std::time::Duration::from_secs(5) };
        Db::connect(&url, &settings).await.expect("connect")
    }

    /// Runs one batch of `ns` (with a sender that already gave up for each `gone`) and returns
    /// each answer, in the order given, and how the batch was applied.
    async fn run_batch(ns: &[u32], gone: &[u32]) -> (Vec<Result<u32, String>>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_db(&dir).await;
        let applied = Arc::new(StdMutex::new(Vec::new()));
        let mut answers = Vec::new();
        let mut batch = Vec::new();
        for &n in ns.iter().chain(gone) {
            let (answer, answered) = oneshot::channel();
            batch.push(Entry { job: Probe { n, applied: applied.clone() }, answer });
            answers.push(answered);
        }
        let waited = answers.split_off(ns.len());
        drop(waited);
        run(db, (), batch).await;
        let mut outputs = Vec::new();
        for answered in answers {
            outputs.push(answered.await.expect("answered"));
        }
        let applied = applied.lock().unwrap().clone();
        (outputs, applied)
    }

    #[tokio::test]
    async fn a_batch_is_written_together_in_lock_order_without_the_senders_that_gave_up() {
        let (outputs, applied) = run_batch(&[3, 1, 2], &[4]).await;
        assert_eq!(outputs, [Ok(3), Ok(1), Ok(2)]);
        assert_eq!(applied, ["together [1, 2, 3]"]);
    }

    #[tokio::test]
    async fn a_batch_that_fails_is_written_job_by_job_and_only_the_bad_one_fails() {
        let (outputs, applied) = run_batch(&[3, 13, 1], &[]).await;
        assert_eq!(outputs, [Ok(3), Err("13 refused".into()), Ok(1)]);
        assert_eq!(applied, ["alone 1", "alone 3", "alone 13"]);
    }

    #[tokio::test]
    async fn a_job_whose_batch_panics_is_answered_unavailable_and_the_worker_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let workers = GroupCommit::start(sqlite_db(&dir).await, (), 1);
        let applied = Arc::new(StdMutex::new(Vec::new()));
        let probe = |n| Probe { n, applied: applied.clone() };
        assert_eq!(workers.submit(probe(99)).await, Err("stopped".into()));
        assert_eq!(workers.submit(probe(7)).await, Ok(7));
        assert_eq!(*applied.lock().unwrap(), ["alone 7"]);
    }
}
