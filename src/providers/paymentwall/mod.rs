//! Paymentwall (docs/paymentwall.md): signed widget URLs for hosted checkout, signed pingbacks back.

pub mod client;
pub mod config;
pub mod pingback;
pub mod signature;
pub mod widget;

pub use config::{DEFAULT_API_BASE_URL, PUBLISHED_PINGBACK_SOURCES, PaymentwallConfig, published_pingback_sources};
use secrecy::ExposeSecret;
pub use signature::SignVersion;

use super::{Delivery, PaymentMethod, Provider, ProviderError, ProviderHttp, RemotePayment};
use crate::{
    channels::{
        Channel, ChannelMode,
        config::{ConfigContext, ConfigField, ConfigRules, ProviderConfig},
    },
    payments::{
        provider::{Callback, CallbackError, CallbackNotice},
        provider::{MinorUnits, Notice, Payment, RawNotification, RiskProfile, Subscription, money},
    },
    store::now_ms,
    validation::Violations,
};

pub struct Paymentwall {
    http: ProviderHttp,
}

impl Paymentwall {
    pub fn new(http: ProviderHttp) -> Self {
        Self { http }
    }
}

/// A channel's credentials, read for one call (a stored config always reads).
fn credentials(channel: &Channel) -> Result<PaymentwallConfig, ProviderError> {
    PaymentwallConfig::decode(&channel.config)
}

impl ConfigRules for Paymentwall {
    fn name(&self) -> &'static str {
        config::NAME
    }

    fn display_name(&self) -> &'static str {
        "Paymentwall"
    }

    fn config_fields(&self) -> &'static [ConfigField] {
        &config::FIELDS
    }

    fn check_config(&self, given: ProviderConfig, ctx: &ConfigContext<'_>, v: &mut Violations) -> ProviderConfig {
        config::check(&given, ctx, v)
    }

    /// The URL Paymentwall projects were configured with before the generic route existed.
    fn callback_path(&self, channel_key: &str) -> String {
        format!("/pingback/paymentwall/{channel_key}")
    }
}

#[tonic::async_trait]
impl Provider for Paymentwall {
    /// Order of checks: source address -> parse -> signature -> v1 refused -> test on LIVE.
    fn read_callback(&self, channel: &Channel, callback: &Callback<'_>) -> Result<CallbackNotice, CallbackError> {
        let pw = credentials(channel)?;
        if !crate::net::in_blocks(&pw.pingback_allowlist, callback.source) {
            return Err(CallbackError::SourceNotAllowed(callback.source));
        }
        let malformed = |e: pingback::ParseError| CallbackError::Malformed(format!("malformed pingback: {e}"));
        let pingback = pingback::Pingback::parse(callback.query).map_err(malformed)?;
        let span = tracing::Span::current();
        span.record("pingback_type", pingback.kind);
        span.record("provider_ref", pingback.reference.as_str());
        if !pingback.verify(pw.secret_key.expose_secret()) {
            return Err(CallbackError::BadSignature);
        }
        // v1 signs neither `is_test` nor `reason`; channels are configured for v2 or v3 only.
        if pingback.sign_version == SignVersion::V1 {
            return Err(CallbackError::SignatureNotAccepted("signature version 1 is not accepted (use 2 or 3)".into()));
        }
        if pingback.is_test && channel.mode == ChannelMode::Live {
            return Err(CallbackError::TestOnLive("test pingback (is_test=1) on a LIVE channel".into()));
        }
        let payment_id = pingback.goodsid.clone().ok_or_else(|| malformed(pingback::ParseError::Missing("goodsid")))?;
        Ok(CallbackNotice {
            notice: Notice {
                payment_id,
                provider_ref: pingback.reference.clone(),
                event: pingback.event,
                test: pingback.is_test,
            },
            raw: RawNotification {
                channel_key: channel.channel_key.clone(),
                provider_ref: pingback.reference,
                kind: i64::from(pingback.kind),
                unique_ref: pingback.unique_ref,
                query: callback.query.to_owned(),
            },
        })
    }

    /// Only the types Paymentwall defines, else "other".
    fn callback_label(&self, callback: &Callback<'_>) -> &'static str {
        const TYPES: [&str; 10] = ["0", "1", "2", "12", "13", "14", "200", "201", "202", "203"];
        let raw =
            form_urlencoded::parse(callback.query.as_bytes()).find(|(k, _)| k == "type").map(|(_, v)| v.into_owned());
        raw.and_then(|t| TYPES.iter().find(|known| **known == t).copied()).unwrap_or("other")
    }

    fn is_reserved_param(&self, name: &str) -> bool {
        widget::is_reserved_param(name)
    }

    fn checkout_url(
        &self,
        channel: &Channel,
        payment: &Payment,
        subscription: Option<&Subscription>,
        profile: &RiskProfile,
    ) -> Result<String, ProviderError> {
        widget::checkout_url(&credentials(channel)?, payment, subscription, profile, now_ms() / 1000)
    }

    async fn request_refund(
        &self,
        channel: &Channel,
        payment: &Payment,
        amount: MinorUnits,
        reason: &str,
    ) -> Result<(), ProviderError> {
        let provider_ref =
            payment.provider_ref.as_deref().ok_or_else(|| ProviderError::Unsupported("no ref".into()))?;
        let message = refund_message(payment, amount, reason)?;
        let ticket = client::Ticket {
            kind: client::TicketType::Refund,
            provider_ref,
            uid: &payment.customer_uid,
            message: &message,
            test: payment.test,
        };
        client::send_ticket(&self.http, &credentials(channel)?, &ticket).await
    }

    async fn stop_recurring(&self, channel: &Channel, initial: &Payment, reason: &str) -> Result<(), ProviderError> {
        let provider_ref =
            initial.provider_ref.as_deref().ok_or_else(|| ProviderError::Unsupported("no ref".into()))?;
        let message = format!("Stop recurring billing. Reason: {reason}");
        let ticket = client::Ticket {
            kind: client::TicketType::StopRecurring,
            provider_ref,
            uid: &initial.customer_uid,
            message: &message,
            test: initial.test,
        };
        client::send_ticket(&self.http, &credentials(channel)?, &ticket).await
    }

    async fn payment_methods(
        &self,
        channel: &Channel,
        country_code: &str,
    ) -> Result<Vec<PaymentMethod>, ProviderError> {
        client::payment_systems(&self.http, &credentials(channel)?, country_code).await
    }

    async fn payment_status(
        &self,
        channel: &Channel,
        payment: &Payment,
    ) -> Result<Option<RemotePayment>, ProviderError> {
        client::payment_status(
            &self.http,
            &credentials(channel)?,
            payment.provider_ref.as_deref(),
            &payment.customer_uid,
            &payment.payment_id,
        )
        .await
    }

    fn confirms_digital_delivery(&self, channel: &Channel) -> bool {
        credentials(channel).is_ok_and(|c| c.confirm_digital_delivery)
    }

    async fn confirm_delivery(
        &self,
        channel: &Channel,
        payment: &Payment,
        delivery: &Delivery,
    ) -> Result<(), ProviderError> {
        let Some(provider_ref) = payment.provider_ref.as_deref() else {
            return Err(ProviderError::Refused("the payment has no Paymentwall ref yet".into()));
        };
        let report = client::DeliveryReport {
            provider_ref,
            merchant_reference_id: &payment.payment_id,
            test: payment.test,
            delivery,
        };
        client::confirm_delivery(&self.http, &credentials(channel)?, &report).await
    }

    async fn subscription_status(
        &self,
        channel: &Channel,
        initial: &Payment,
    ) -> Result<Option<RemotePayment>, ProviderError> {
        // By buyer and product, not by ref: Paymentwall answers the newest payment of it.
        let uid = &initial.customer_uid;
        client::payment_status(&self.http, &credentials(channel)?, None, uid, &initial.payment_id).await
    }
}

/// The Cancellation API has no amount field: a partial refund is asked for in the message, and
/// Paymentwall confirms it with a type 2 pingback with reason 10.
fn refund_message(payment: &Payment, refunded: MinorUnits, reason: &str) -> Result<String, ProviderError> {
    let currency = money::parse_currency(&payment.currency)
        .ok_or_else(|| ProviderError::Unsupported(format!("currency {}", payment.currency)))?;
    let amount = money::to_decimal_string(refunded, currency);
    let total = money::to_decimal_string(payment.amount_minor, currency);
    let code = &payment.currency;
    Ok(if refunded == payment.amount_minor {
        format!("Refund of {amount} {code} (full). Reason: {reason}")
    } else {
        format!("Partial refund of {amount} {code} of {total} {code}. Reason: {reason}")
    })
}
