//! Requests with an idempotency key, handled one way for every flow: the key is claimed after the
//! request is validated (a bad request never holds it), the flow runs with the claim (new, done
//! before, or a dead first attempt's to take over), and a failure forgets the key, so a retry runs
//! the request again. A flow that succeeded marked the key done in its own transaction.

use crate::{
    merchants::Caller,
    payments::{
        PaymentError,
        store::idempotency::{self, Claim, Key},
    },
    store::Db,
};

/// The caller's key for `operation`, if the request carries one.
pub fn key<'a>(caller: &'a Caller, operation: &'static str, idempotency_key: &'a str) -> Option<Key<'a>> {
    (!idempotency_key.is_empty()).then(|| Key { merchant_id: &caller.merchant_id, operation, key: idempotency_key })
}

/// Claims `key` (a request without one is always new), runs `flow` with the claim, and releases
/// the key when the flow fails.
pub async fn claimed<T, Fut>(
    db: &Db,
    key: Option<&Key<'_>>,
    request_hash: &str,
    lease_ms: i64,
    flow: impl FnOnce(Claim) -> Fut,
) -> Result<T, PaymentError>
where
    Fut: Future<Output = Result<T, PaymentError>>,
{
    let claim = match key {
        Some(key) => idempotency::claim(db, key, request_hash, lease_ms).await?,
        None => Claim::New,
    };
    let result = flow(claim).await;
    if result.is_err()
        && let Some(key) = key
    {
        idempotency::release(db, key).await;
    }
    result
}
