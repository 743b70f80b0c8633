//! Paymentwall (paymentwall.md): signed widget URLs for hosted checkout, signed pingbacks back.

pub mod client;
pub mod pingback;
pub mod signature;
pub mod widget;

pub use signature::SignVersion;

use super::{PaymentMethod, Provider, ProviderError, RemotePayment};
use crate::{
    channels::Channel,
    payments::{Payment, money, subscriptions::Subscription},
    store::now_ms,
};

pub use crate::channels::model::{DEFAULT_API_BASE_URL, PUBLISHED_PINGBACK_SOURCES, published_pingback_sources};

pub struct Paymentwall;

#[tonic::async_trait]
impl Provider for Paymentwall {
    fn is_reserved_param(&self, name: &str) -> bool {
        widget::is_reserved_param(name)
    }

    fn checkout_url(
        &self,
        channel: &Channel,
        payment: &Payment,
        subscription: Option<&Subscription>,
    ) -> Result<String, ProviderError> {
        widget::checkout_url(&channel.paymentwall, payment, subscription, now_ms() / 1000)
    }

    async fn request_refund(
        &self,
        channel: &Channel,
        payment: &Payment,
        amount_minor: i64,
        reason: &str,
    ) -> Result<(), ProviderError> {
        let provider_ref =
            payment.provider_ref.as_deref().ok_or_else(|| ProviderError::Unsupported("no ref".into()))?;
        let message = refund_message(payment, amount_minor, reason)?;
        client::send_ticket(
            &channel.paymentwall,
            provider_ref,
            &payment.customer_uid,
            client::TicketType::Refund,
            &message,
            payment.test,
        )
        .await
    }

    async fn stop_recurring(&self, channel: &Channel, initial: &Payment, reason: &str) -> Result<(), ProviderError> {
        let provider_ref =
            initial.provider_ref.as_deref().ok_or_else(|| ProviderError::Unsupported("no ref".into()))?;
        let message = format!("Stop recurring billing. Reason: {reason}");
        client::send_ticket(
            &channel.paymentwall,
            provider_ref,
            &initial.customer_uid,
            client::TicketType::StopRecurring,
            &message,
            initial.test,
        )
        .await
    }

    async fn payment_methods(
        &self,
        channel: &Channel,
        country_code: &str,
    ) -> Result<Vec<PaymentMethod>, ProviderError> {
        client::payment_systems(&channel.paymentwall, country_code).await
    }

    async fn payment_status(
        &self,
        channel: &Channel,
        payment: &Payment,
    ) -> Result<Option<RemotePayment>, ProviderError> {
        client::payment_status(
            &channel.paymentwall,
            payment.provider_ref.as_deref(),
            &payment.customer_uid,
            &payment.payment_id,
        )
        .await
    }
}

/// The Cancellation API has no amount field: a partial refund is asked for in the message, and
/// Paymentwall confirms it with a type 2 pingback with reason 10.
fn refund_message(payment: &Payment, amount_minor: i64, reason: &str) -> Result<String, ProviderError> {
    let currency = money::parse_currency(&payment.currency)
        .ok_or_else(|| ProviderError::Unsupported(format!("currency {}", payment.currency)))?;
    let amount = money::to_decimal_string(amount_minor, currency);
    let total = money::to_decimal_string(payment.amount_minor, currency);
    let code = &payment.currency;
    Ok(if amount_minor == payment.amount_minor {
        format!("Refund of {amount} {code} (full). Reason: {reason}")
    } else {
        format!("Partial refund of {amount} {code} of {total} {code}. Reason: {reason}")
    })
}
