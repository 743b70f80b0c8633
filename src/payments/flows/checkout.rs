//! CreateCheckoutSession: validate, build the provider's signed hosted-page URL, store the payment
//! as READY. The URL is built before the insert so a payment is never stored without one.

use std::sync::Arc;

use super::{idempotent, service::Payments};
use crate::{
    channels::{Channel, ChannelError},
    merchants::Caller,
    payments::{
        PaymentError,
        core::{
            Payment, Subscription,
            checkout::{CheckoutRequest, new_payment, validate},
        },
        store::{
            idempotency::{self, Claim, Key},
            payments::{self as rows, Lookup},
            subscriptions,
        },
    },
    store::now_ms,
    validation::Violations,
};

#[derive(Debug, Clone)]
pub struct CheckoutSession {
    pub payment: Payment,
    pub redirect_url: String,
}

/// The idempotency keys' operation name.
const OPERATION: &str = "CreateCheckoutSession";

impl Payments {
    /// `CreateCheckoutSession`: validate, then (once per idempotency key) make the payment.
    pub async fn checkout(&self, caller: &Caller, req: CheckoutRequest) -> Result<CheckoutSession, PaymentError> {
        validate(&req, now_ms()).check()?;
        let (req, key) = (&req, idempotent::key(caller, OPERATION, &req.idempotency_key));
        let key = key.as_ref();
        idempotent::claimed(&self.db, key, &req.request_hash, self.idempotency_lease_ms, |claim| async move {
            match claim {
                Claim::Done(payment_id) | Claim::TakenOver(Some(payment_id)) => {
                    let payment = rows::get(&self.db, &caller.merchant_id, Lookup::PaymentId(&payment_id)).await?;
                    Ok(CheckoutSession { redirect_url: payment.redirect_url.clone(), payment })
                }
                Claim::New | Claim::TakenOver(None) => self.create_new(caller, req, key).await,
            }
        })
        .await
    }

    async fn create_new(
        &self,
        caller: &Caller,
        req: &CheckoutRequest,
        key: Option<&Key<'_>>,
    ) -> Result<CheckoutSession, PaymentError> {
        let channel = self.usable_channel(caller, req).await?;
        let provider = self.providers.for_channel(&channel);
        let (mut payment, subscription) = new_payment(&channel, req.clone(), now_ms())?;
        payment.redirect_url = provider
            .checkout_url(&channel, &payment, subscription.as_ref(), &req.customer_profile)
            .map_err(|e| PaymentError::Provider(e.to_string()))?;
        self.write(&payment, subscription.as_ref(), key).await?;
        Ok(CheckoutSession { redirect_url: payment.redirect_url.clone(), payment })
    }

    /// The channel a checkout names, if the caller may use it for new payments; the custom
    /// parameters checked against those its provider sets itself.
    async fn usable_channel(&self, caller: &Caller, req: &CheckoutRequest) -> Result<Arc<Channel>, PaymentError> {
        let mut violations = Violations::default();
        let channel = match self.channels.for_caller(caller, &req.channel_key).await {
            Ok(channel) if channel.disabled_at.is_some() => {
                violations.add("channel_key", "the channel is disabled (deleted while it had payments)");
                None
            }
            Ok(channel) => Some(channel),
            Err(ChannelError::NotFound) => {
                violations.add("channel_key", "no channel with this key");
                None
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(channel) = &channel {
            let provider = self.providers.for_channel(channel);
            for key in req.custom_params.keys().filter(|key| provider.is_reserved_param(key)) {
                violations.add(format!("custom_params[{key}]"), "key is a parameter paygate sets itself");
            }
        }
        violations.check()?;
        channel.ok_or(PaymentError::Channel(ChannelError::NotFound))
    }

    /// Stores a new payment: in the common case through the new-payment port; with a subscription
    /// or an idempotency key, one transaction that also records those.
    async fn write(
        &self,
        payment: &Payment,
        subscription: Option<&Subscription>,
        key: Option<&Key<'_>>,
    ) -> Result<(), PaymentError> {
        if subscription.is_none() && key.is_none() {
            return self.new_payments.insert(payment.clone()).await;
        }
        let mut tx = self.db.pool().begin().await?;
        rows::insert_in_tx(&mut tx, payment).await?;
        if let Some(subscription) = subscription {
            subscriptions::insert(&mut tx, subscription).await?;
        }
        if let Some(key) = key {
            idempotency::attach(&mut tx, key, &payment.payment_id).await?;
            idempotency::finish(&mut tx, key).await?;
        }
        tx.commit().await?;
        self.new_payments.wrote(payment);
        Ok(())
    }
}
