//! Compare-and-set transactions: read, decide, write on the payment's version; when another
//! writer moved the row first, roll back and run the attempt again on a fresh read.

use sqlx::{Any, Transaction};

use crate::{payments::PaymentError, store::Db};

/// How many times an attempt runs before the row counts as too contended to change.
const ATTEMPTS: usize = 16;

/// A transaction of the pool's, handed to an attempt and back.
pub type Tx = Transaction<'static, Any>;

/// What one attempt came to.
pub enum Attempt<T> {
    /// Commit this transaction, and answer this.
    Done(Tx, T),
    /// Another writer got there first (a compare-and-set matched nothing): roll back, read again.
    Conflict,
}

/// Runs `attempt` in a transaction of its own until it is `Done` (then committed) or it lost
/// `ATTEMPTS` times (`Concurrent`: the caller may retry). An error rolls back and ends it.
pub async fn cas<T, Fut>(db: &Db, mut attempt: impl FnMut(Tx) -> Fut) -> Result<T, PaymentError>
where
    Fut: Future<Output = Result<Attempt<T>, PaymentError>>,
{
    for _ in 0..ATTEMPTS {
        match attempt(db.pool().begin().await?).await? {
            Attempt::Done(tx, value) => {
                tx.commit().await?;
                return Ok(value);
            }
            Attempt::Conflict => continue,
        }
    }
    Err(PaymentError::Concurrent)
}
