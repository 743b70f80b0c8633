//! EraseCustomer: a buyer's personal data forgotten on the merchant's request (a data subject's
//! erasure), payment by payment, each in a transaction of its own with its `customer.erased`
//! event, after one audit entry for the call (no erasure without its entry; the entry never holds
//! the uid). What is forgotten and what stays is `core::erasure`'s decision.

use super::service::Payments;
use crate::{
    audit,
    merchants::Caller,
    payments::{
        PaymentError,
        core::{EventKind, erasure},
        store::{
            cas::{Attempt, cas},
            changes, erasure as copies,
            payments::{self as rows},
        },
    },
    store::now_ms,
};

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// Names it in the audit trail (`era_<ulid>`).
    pub erasure_id: String,
    /// The payments erased by this call, oldest first (none when all were erased before).
    pub payment_ids: Vec<String>,
}

impl Payments {
    /// Erases `customer_uid`'s personal data from every payment of the caller's merchant and its
    /// sub-merchants. Erasing again erases nothing, and says so.
    pub async fn erase_customer(&self, caller: &Caller, customer_uid: &str) -> Result<Erasure, PaymentError> {
        let db = &self.db;
        let erasure_id = format!("era_{}", ulid::Ulid::new());
        let actor = caller.actor();
        let entry = audit::Entry {
            actor: &actor,
            action: audit::Action::CustomerErased,
            merchant_id: Some(&caller.merchant_id),
            target: &erasure_id,
            changed_fields: &[],
        };
        audit::record_alone(db, &entry, now_ms()).await?;
        let mut erased = Vec::new();
        for payment_id in copies::payments_of_customer(db, &caller.merchant_id, customer_uid).await? {
            let id = payment_id.as_str();
            let changed = cas(db, |mut tx| async move {
                let Some(payment) = rows::get_in_tx(&mut tx, id).await? else {
                    return Ok(Attempt::Done(tx, false));
                };
                let Some(next) = erasure::erase(&payment, now_ms()) else {
                    return Ok(Attempt::Done(tx, false));
                };
                if changes::record_update(&mut tx, &next, EventKind::CustomerErased, None).await?.is_none() {
                    return Ok(Attempt::Conflict);
                }
                copies::erase_copies(&mut tx, id).await?;
                Ok(Attempt::Done(tx, true))
            })
            .await?;
            if changed {
                db.signal_commit();
                erased.push(payment_id);
            }
        }
        tracing::info!(erasure_id, merchant_id = %caller.merchant_id, payments = erased.len(), "customer erased");
        Ok(Erasure { erasure_id, payment_ids: erased })
    }
}
