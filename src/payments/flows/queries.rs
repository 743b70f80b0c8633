//! What the edges read: a payment, its cancellations, lists, subscriptions, each within the
//! caller's scope (its own merchant and its sub-merchants); anyone else's reads as not found.

pub use crate::payments::store::{
    payments::{ListFilter, Lookup, PaymentDetail},
    subscriptions::{ListFilter as SubscriptionFilter, Lookup as SubscriptionLookup},
};

use super::service::Payments;
use crate::{
    merchants::Caller,
    payments::{
        PaymentError,
        core::{Payment, Subscription},
        store::{payments as rows, subscriptions},
    },
};

impl Payments {
    pub async fn payment(&self, caller: &Caller, lookup: Lookup<'_>) -> Result<Payment, PaymentError> {
        rows::get(&self.db, &caller.merchant_id, lookup).await
    }

    /// A payment with its cancellations and deliveries, oldest first, read from one snapshot.
    pub async fn payment_with_cancellations(
        &self,
        caller: &Caller,
        lookup: Lookup<'_>,
    ) -> Result<PaymentDetail, PaymentError> {
        rows::get_with_cancellations(&self.db, &caller.merchant_id, lookup).await
    }

    pub async fn payments(&self, caller: &Caller, filter: &ListFilter) -> Result<Vec<Payment>, PaymentError> {
        rows::list(&self.db, &caller.merchant_id, &caller.scope, filter).await
    }

    /// These payments, those the caller may see, in no particular order.
    pub async fn payments_by_id(&self, caller: &Caller, payment_ids: &[&str]) -> Result<Vec<Payment>, PaymentError> {
        rows::get_many(&self.db, &caller.merchant_id, payment_ids).await
    }

    pub async fn subscription(
        &self,
        caller: &Caller,
        lookup: SubscriptionLookup<'_>,
    ) -> Result<Subscription, PaymentError> {
        subscriptions::get_in_scope(&self.db, &caller.merchant_id, lookup).await
    }

    pub async fn subscriptions(
        &self,
        caller: &Caller,
        filter: &SubscriptionFilter,
    ) -> Result<Vec<Subscription>, PaymentError> {
        subscriptions::list(&self.db, &caller.merchant_id, filter).await
    }
}
