//! SyncPayment: a merchant whose buyer says "I paid" asks the provider now instead of waiting for
//! its notification or the sweep. Read the payment (the caller's scope), ask the provider through
//! the port, decide with `core::sync::learned` (the sweep's decision), and apply it through the
//! notification path, so a sync can never do what a pingback could not.

use super::{
    notification::{self, Applied, NotificationError},
    service::Payments,
};
use crate::{
    channels::ChannelMode,
    merchants::Caller,
    payments::{
        PaymentError, ProviderError,
        core::{Payment, sync::learned},
        provider::{Notice, RemotePayment, RemoteState},
        store::payments::{self as rows, Lookup},
    },
};

/// A payment after a sync, and what the provider said.
#[derive(Debug, Clone)]
pub struct Synced {
    pub payment: Payment,
    pub changed: bool,
    /// In a line for people: "Paymentwall: paid, not refunded".
    pub provider_says: String,
}

/// How often a concurrent change (a pingback landing at the same moment) is read again.
const ATTEMPTS: usize = 3;

impl Payments {
    pub async fn sync(&self, caller: &Caller, lookup: Lookup<'_>) -> Result<Synced, PaymentError> {
        let payment = rows::get(&self.db, &caller.merchant_id, lookup).await?;
        if let Some(limit) = &self.sync_limit
            && let Err(retry_after) = limit.check(&payment.payment_id).await
        {
            return Err(PaymentError::SyncedRecently { retry_after });
        }
        let channel = self.channels.for_caller(caller, &payment.channel_key).await?;
        let provider = self.providers.for_channel(&channel);
        let name = provider.display_name();
        let remote = provider.payment_status(&channel, &payment).await.map_err(|e| named(name, e))?;
        let provider_says = says(name, remote.as_ref());
        let Some(remote) = remote else { return Ok(Synced { payment, changed: false, provider_says }) };
        let mut current = payment;
        for _ in 0..ATTEMPTS {
            let Some(event) = learned(current.status, &remote) else { break };
            let notice = Notice {
                payment_id: current.payment_id.clone(),
                provider_ref: remote.provider_ref.clone(),
                event,
                // The status API has no test flag: a TEST channel's payments are test payments.
                test: current.test || channel.mode == ChannelMode::Test,
            };
            match notification::apply_synced(&self.db, &current.channel_key, &notice).await {
                Ok(Applied::Changed { payment, .. }) => {
                    tracing::info!(payment_id = %payment.payment_id, status = %payment.status, "sync applied the provider's status");
                    return Ok(Synced { payment: *payment, changed: true, provider_says });
                }
                Ok(_) => break,
                Err(NotificationError::Concurrent) => {}
                Err(NotificationError::UnknownPayment(_)) => return Err(PaymentError::NotFound),
                Err(NotificationError::Payment(e)) => return Err(e),
            }
            current = rows::get(&self.db, &caller.merchant_id, Lookup::PaymentId(&current.payment_id)).await?;
        }
        // Nothing to apply, or someone (a pingback) applied it first: answer the payment as it is now.
        let payment = rows::get(&self.db, &caller.merchant_id, Lookup::PaymentId(&current.payment_id)).await?;
        Ok(Synced { payment, changed: false, provider_says })
    }
}

/// The provider's failure, with its name: the caller is told who could not be reached.
fn named(provider: &str, e: ProviderError) -> PaymentError {
    match e {
        ProviderError::Unreachable(detail) | ProviderError::BadAnswer(detail) => {
            PaymentError::ProviderUnavailable(format!("{provider}: {detail}"))
        }
        other => other.into(),
    }
}

fn says(provider: &str, remote: Option<&RemotePayment>) -> String {
    let Some(remote) = remote else { return format!("{provider} knows no payment for it yet") };
    let state = match remote.state {
        RemoteState::Paid => "paid",
        RemoteState::UnderReview => "under risk review",
        RemoteState::Declined => "declined",
    };
    let refunded = if remote.refunded { "refunded" } else { "not refunded" };
    format!("{provider}: {state}, {refunded}")
}
