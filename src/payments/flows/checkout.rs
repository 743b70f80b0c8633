//! CreateCheckoutSession: validate, build the provider's signed hosted-page URL, store the payment
//! as READY. The URL is built before the insert so a payment is never stored without one.

use std::sync::Arc;

use super::writers::PaymentInserts;
use crate::{
    channels::{Channel, ChannelError, Channels},
    merchants::Caller,
    payments::{
        PaymentError, Providers,
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
    store::{Db, now_ms},
    validation::Violations,
};

#[derive(Debug, Clone)]
pub struct CheckoutSession {
    pub payment: Payment,
    pub redirect_url: String,
}

pub async fn create(
    db: &Db,
    new_payments: &dyn PaymentInserts,
    channels: &Channels,
    providers: &Providers,
    caller: &Caller,
    req: CheckoutRequest,
    lease_ms: i64,
) -> Result<CheckoutSession, PaymentError> {
    let key = (!req.idempotency_key.is_empty()).then(|| Key {
        merchant_id: &caller.merchant_id,
        operation: "CreateCheckoutSession",
        key: &req.idempotency_key,
    });
    // Validate before claiming the key, so a bad request does not hold it.
    validate(&req).check()?;
    let claim = match &key {
        Some(key) => idempotency::claim(db, key, &req.request_hash, lease_ms).await?,
        None => Claim::New,
    };
    let result = match claim {
        Claim::Done(payment_id) | Claim::TakenOver(Some(payment_id)) => {
            let payment = rows::get(db, &caller.merchant_id, Lookup::PaymentId(&payment_id)).await?;
            Ok(CheckoutSession { redirect_url: payment.redirect_url.clone(), payment })
        }
        Claim::New | Claim::TakenOver(None) => {
            create_new(db, new_payments, channels, providers, caller, &req, key.as_ref()).await
        }
    };
    if result.is_err()
        && let Some(key) = &key
    {
        idempotency::release(db, key).await;
    }
    result
}

async fn create_new(
    db: &Db,
    new_payments: &dyn PaymentInserts,
    channels: &Channels,
    providers: &Providers,
    caller: &Caller,
    req: &CheckoutRequest,
    key: Option<&Key<'_>>,
) -> Result<CheckoutSession, PaymentError> {
    let channel = usable_channel(channels, providers, caller, req).await?;
    let provider = providers.for_channel(&channel);
    let (mut payment, subscription) = new_payment(&channel, req.clone(), now_ms())?;
    payment.redirect_url = provider
        .checkout_url(&channel, &payment, subscription.as_ref())
        .map_err(|e| PaymentError::Provider(e.to_string()))?;
    write(db, new_payments, &payment, subscription.as_ref(), key).await?;
    Ok(CheckoutSession { redirect_url: payment.redirect_url.clone(), payment })
}

/// The channel a checkout names, if the caller may use it for new payments; the custom
/// parameters checked against those its provider sets itself.
async fn usable_channel(
    channels: &Channels,
    providers: &Providers,
    caller: &Caller,
    req: &CheckoutRequest,
) -> Result<Arc<Channel>, PaymentError> {
    let mut violations = Violations::default();
    let channel = match channels.for_caller(caller, &req.channel_key).await {
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
        let provider = providers.for_channel(channel);
        for key in req.custom_params.keys().filter(|key| provider.is_reserved_param(key)) {
            violations.add(format!("custom_params[{key}]"), "key is a parameter paygate sets itself");
        }
    }
    violations.check()?;
    channel.ok_or(PaymentError::Channel(ChannelError::NotFound))
}

/// Stores a new payment: in the common case one INSERT, shared with the checkouts that arrive
/// with it; with a subscription or an idempotency key, one transaction that also records those.
async fn write(
    db: &Db,
    new_payments: &dyn PaymentInserts,
    payment: &Payment,
    subscription: Option<&Subscription>,
    key: Option<&Key<'_>>,
) -> Result<(), PaymentError> {
    if subscription.is_none() && key.is_none() {
        return new_payments.insert(payment.clone()).await;
    }
    let mut tx = db.pool().begin().await?;
    rows::insert_in_tx(&mut tx, payment).await?;
    if let Some(subscription) = subscription {
        subscriptions::insert(&mut tx, subscription).await?;
    }
    if let Some(key) = key {
        idempotency::attach(&mut tx, key, &payment.payment_id).await?;
        idempotency::finish(&mut tx, key).await?;
    }
    tx.commit().await?;
    new_payments.wrote(payment);
    Ok(())
}
