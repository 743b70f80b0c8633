//! Writing a reversal: the requests it finishes, the reversal it records, the payment after it.

use sqlx::AnyConnection;

use super::{cancellations, payments};
use crate::payments::{PaymentError, core::refund::ReversalEffect};

/// Writes a reversal in the caller's transaction. A request finished meanwhile was finished by a
/// transaction that also moved the payment, so the payment's compare-and-set would fail as well:
/// either way the change is concurrent and rolls back.
pub async fn write_reversal(conn: &mut AnyConnection, effect: &ReversalEffect) -> Result<(), PaymentError> {
    for request in &effect.finish {
        if !cancellations::finish(conn, request).await? {
            return Err(PaymentError::Concurrent);
        }
    }
    if let Some(record) = &effect.record {
        cancellations::insert(conn, record).await?;
    }
    if !payments::update(conn, &effect.next).await? {
        return Err(PaymentError::Concurrent);
    }
    Ok(())
}
