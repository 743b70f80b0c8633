//! Conversions between proto messages and domain types.

use prost_types::Timestamp;

use crate::{
    channels::{Channel, ChannelMode},
    payments::{
        Payment, PaymentStatus,
        core::{
            Cancellation, CancellationStatus, TicketState, Trigger,
            checkout::{CheckoutRequest, SubscriptionTerms},
            delivery::{Delivery, DeliveryRequest, DeliveryState, DeliveryStatus, DeliveryType},
            money::MinorUnits,
            refund::RefundRequest,
            risk_profile::{CustomerHistory, ProfileTime, RiskProfile},
            subscription::{ShownStatus, Subscription, SubscriptionView},
        },
    },
    personal::Email,
    proto::v1 as pb,
    providers::paymentwall::config as paymentwall,
    validation::Violations,
};

pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

fn millis(ts: &Timestamp) -> i64 {
    ts.seconds.saturating_mul(1000).saturating_add(i64::from(ts.nanos / 1_000_000))
}

/// google.protobuf.Timestamp's range, 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z, in seconds:
/// past it no JSON client can read the value back.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A Timestamp a request carries, in milliseconds, or `None` when absent. The one way requests
/// read timestamps: one outside Timestamp's range, or whose nanos are not within a second, is
/// named in `v` (and read as absent, so check `v` before acting).
pub fn request_millis(v: &mut Violations, field: &str, ts: Option<&Timestamp>) -> Option<i64> {
    let ts = ts?;
    if !TIMESTAMP_SECONDS.contains(&ts.seconds) {
        v.add(field, "must be from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z");
        return None;
    }
    if !(0..1_000_000_000).contains(&ts.nanos) {
        v.add(format!("{field}.nanos"), "must be from 0 to 999,999,999");
        return None;
    }
    Some(millis(ts))
}

pub fn status_to_proto(status: PaymentStatus) -> pb::PaymentStatus {
    match status {
        PaymentStatus::Ready => pb::PaymentStatus::Ready,
        PaymentStatus::PendingReview => pb::PaymentStatus::PendingReview,
        PaymentStatus::Paid => pb::PaymentStatus::Paid,
        PaymentStatus::CancelPending => pb::PaymentStatus::CancelPending,
        PaymentStatus::PartialCancelled => pb::PaymentStatus::PartialCancelled,
        PaymentStatus::Cancelled => pb::PaymentStatus::Cancelled,
        PaymentStatus::Failed => pb::PaymentStatus::Failed,
    }
}

/// `None` for UNSPECIFIED and for numbers this server does not know.
pub fn status_from_proto(value: i32) -> Option<PaymentStatus> {
    match pb::PaymentStatus::try_from(value).ok()? {
        pb::PaymentStatus::Unspecified => None,
        pb::PaymentStatus::Ready => Some(PaymentStatus::Ready),
        pb::PaymentStatus::PendingReview => Some(PaymentStatus::PendingReview),
        pb::PaymentStatus::Paid => Some(PaymentStatus::Paid),
        pb::PaymentStatus::CancelPending => Some(PaymentStatus::CancelPending),
        pb::PaymentStatus::PartialCancelled => Some(PaymentStatus::PartialCancelled),
        pb::PaymentStatus::Cancelled => Some(PaymentStatus::Cancelled),
        pb::PaymentStatus::Failed => Some(PaymentStatus::Failed),
    }
}

pub fn payment(p: Payment) -> pb::Payment {
    let refundable = p.refundable();
    pb::Payment {
        cancelled_at: p.cancelled_at.map(timestamp),
        subscription_id: p.subscription_id.clone().unwrap_or_default(),
        cancelled_amount: Some(pb::Money { amount_minor: p.cancelled_amount.into(), currency: p.currency.clone() }),
        refundable_amount: Some(pb::Money {
            amount_minor: if matches!(
                p.status,
                PaymentStatus::Paid | PaymentStatus::PartialCancelled | PaymentStatus::CancelPending
            ) {
                refundable.into()
            } else {
                0
            },
            currency: p.currency.clone(),
        }),
        cancellations: Vec::new(),
        deliveries: Vec::new(),
        payment_id: p.payment_id,
        merchant_uid: p.merchant_uid,
        channel_key: p.channel_key,
        status: status_to_proto(p.status) as i32,
        amount: Some(pb::Money { amount_minor: p.amount_minor.into(), currency: p.currency }),
        order_name: p.order_name,
        // The risk profile is not kept as fields (only inside the signed URL): uid and e-mail.
        customer: Some(pb::Customer {
            uid: p.customer_uid,
            email: p.customer_email.into_exposed(),
            ..Default::default()
        }),
        payment_method: p.payment_method,
        provider_ref: p.provider_ref.unwrap_or_default(),
        test: p.test,
        custom_params: p.custom_params.into_iter().collect(),
        created_at: Some(timestamp(p.created_at)),
        updated_at: Some(timestamp(p.updated_at)),
        paid_at: p.paid_at.map(timestamp),
        failed_at: p.failed_at.map(timestamp),
    }
}

/// What a payment client token (a buyer's browser) sees of its payment: its id, status, amount,
/// order name and timestamps. Nothing about the buyer (e-mail, uid), nor the merchant's own
/// fields (merchant_uid, channel_key, custom_params, provider ref, refunds, subscription).
pub fn browser_payment(p: Payment) -> pb::Payment {
    pb::Payment {
        payment_id: p.payment_id,
        status: status_to_proto(p.status) as i32,
        amount: Some(pb::Money { amount_minor: p.amount_minor.into(), currency: p.currency }),
        order_name: p.order_name,
        created_at: Some(timestamp(p.created_at)),
        updated_at: Some(timestamp(p.updated_at)),
        paid_at: p.paid_at.map(timestamp),
        failed_at: p.failed_at.map(timestamp),
        cancelled_at: p.cancelled_at.map(timestamp),
        ..Default::default()
    }
}

/// A `ConfirmDeliveryRequest` in the domain's words; bad timestamps are named in `v`, an
/// unspecified type or status is left for `core::delivery::validate` to name.
pub fn delivery_request(r: pb::ConfirmDeliveryRequest, v: &mut Violations) -> DeliveryRequest {
    let kind = match pb::DeliveryType::try_from(r.r#type) {
        Ok(pb::DeliveryType::Digital) => Some(DeliveryType::Digital),
        Ok(pb::DeliveryType::Physical) => Some(DeliveryType::Physical),
        _ => None,
    };
    let status = match pb::DeliveryStatus::try_from(r.status) {
        Ok(pb::DeliveryStatus::OrderPlaced) => Some(DeliveryStatus::OrderPlaced),
        Ok(pb::DeliveryStatus::OrderShipped) => Some(DeliveryStatus::OrderShipped),
        Ok(pb::DeliveryStatus::Delivering) => Some(DeliveryStatus::Delivering),
        Ok(pb::DeliveryStatus::Delivered) => Some(DeliveryStatus::Delivered),
        _ => None,
    };
    DeliveryRequest {
        estimated_delivery_at: request_millis(v, "estimated_delivery_at", r.estimated_delivery_at.as_ref()),
        estimated_update_at: request_millis(v, "estimated_update_at", r.estimated_update_at.as_ref()),
        payment_id: r.payment_id,
        kind,
        status,
        tracking_id: r.tracking_id,
        carrier: r.carrier,
        refundable: r.refundable,
        details: r.details,
        reason: r.reason,
        attachments: r.attachments,
    }
}

pub fn delivery(d: Delivery) -> pb::Delivery {
    let kind = match d.kind {
        DeliveryType::Digital => pb::DeliveryType::Digital,
        DeliveryType::Physical => pb::DeliveryType::Physical,
    };
    let status = match d.status {
        DeliveryStatus::OrderPlaced => pb::DeliveryStatus::OrderPlaced,
        DeliveryStatus::OrderShipped => pb::DeliveryStatus::OrderShipped,
        DeliveryStatus::Delivering => pb::DeliveryStatus::Delivering,
        DeliveryStatus::Delivered => pb::DeliveryStatus::Delivered,
    };
    let state = match d.state {
        DeliveryState::Pending => pb::DeliveryState::Pending,
        DeliveryState::Sent => pb::DeliveryState::Sent,
        DeliveryState::Refused => pb::DeliveryState::Refused,
    };
    pb::Delivery {
        delivery_id: d.delivery_id,
        payment_id: d.payment_id,
        r#type: kind as i32,
        status: status as i32,
        tracking_id: d.tracking_id,
        carrier: d.carrier,
        estimated_delivery_at: d.estimated_delivery_at.map(timestamp),
        estimated_update_at: d.estimated_update_at.map(timestamp),
        refundable: d.refundable,
        details: d.details,
        reason: d.reason,
        attachments: d.attachments,
        state: state as i32,
        attempts: u32::try_from(d.attempts).unwrap_or(u32::MAX),
        last_error: d.last_error,
        created_at: Some(timestamp(d.created_at)),
        sent_at: d.sent_at.map(timestamp),
    }
}

pub fn cancellation(c: Cancellation, currency: &str) -> pb::Cancellation {
    let trigger = match c.trigger {
        Trigger::MerchantRequest => pb::CancellationTrigger::MerchantRequest,
        Trigger::Chargeback => pb::CancellationTrigger::Chargeback,
        Trigger::Provider => pb::CancellationTrigger::Provider,
    };
    let status = match c.status {
        // Open, but not "requested" as far as anyone can tell: the caller must see it.
        CancellationStatus::Requested if c.ticket == Some(TicketState::Unknown) => {
            pb::CancellationStatus::OutcomeUnknown
        }
        CancellationStatus::Requested => pb::CancellationStatus::Requested,
        CancellationStatus::Succeeded => pb::CancellationStatus::Succeeded,
        CancellationStatus::Failed => pb::CancellationStatus::Failed,
    };
    pb::Cancellation {
        cancellation_id: c.cancellation_id,
        payment_id: c.payment_id,
        amount: c.amount_minor.map(|amount| pb::Money { amount_minor: amount.into(), currency: currency.to_owned() }),
        reason: c.reason,
        trigger: trigger as i32,
        status: status as i32,
        provider_reason: c.provider_reason.unwrap_or_default() as i32,
        failure: c.failure.unwrap_or_default(),
        created_at: Some(timestamp(c.created_at)),
        completed_at: c.completed_at.map(timestamp),
        ticket_state: match c.ticket {
            None => pb::TicketState::Unspecified,
            Some(TicketState::Unsent) => pb::TicketState::NotSent,
            Some(TicketState::Sending) => pb::TicketState::Sending,
            Some(TicketState::Accepted) => pb::TicketState::Accepted,
            Some(TicketState::Unknown) => pb::TicketState::OutcomeUnknown,
        } as i32,
        ticket_accepted_at: c.ticket_accepted_at.map(timestamp),
    }
}

pub fn subscription_status_to_proto(status: ShownStatus) -> pb::SubscriptionStatus {
    match status {
        ShownStatus::Pending => pb::SubscriptionStatus::Pending,
        ShownStatus::Active => pb::SubscriptionStatus::Active,
        ShownStatus::CancelRequested => pb::SubscriptionStatus::CancelRequested,
        ShownStatus::Cancelled => pb::SubscriptionStatus::Cancelled,
        ShownStatus::Expired => pb::SubscriptionStatus::Expired,
        ShownStatus::PaymentFailed => pb::SubscriptionStatus::PaymentFailed,
    }
}

/// `None` for UNSPECIFIED and for numbers this server does not know.
pub fn subscription_status_from_proto(value: i32) -> Option<ShownStatus> {
    match pb::SubscriptionStatus::try_from(value).ok()? {
        pb::SubscriptionStatus::Unspecified => None,
        pb::SubscriptionStatus::Pending => Some(ShownStatus::Pending),
        pb::SubscriptionStatus::Active => Some(ShownStatus::Active),
        pb::SubscriptionStatus::CancelRequested => Some(ShownStatus::CancelRequested),
        pb::SubscriptionStatus::Cancelled => Some(ShownStatus::Cancelled),
        pb::SubscriptionStatus::Expired => Some(ShownStatus::Expired),
        pb::SubscriptionStatus::PaymentFailed => Some(ShownStatus::PaymentFailed),
    }
}

/// A subscription without its payments (the caller fills `initial_payment`, `last_renewal_payment`).
pub fn subscription(s: Subscription) -> pb::Subscription {
    subscription_view(SubscriptionView::from(s))
}

pub fn subscription_view(s: SubscriptionView) -> pb::Subscription {
    pb::Subscription {
        subscription_id: s.subscription_id,
        initial_payment_id: s.initial_payment_id,
        channel_key: s.channel_key,
        status: subscription_status_to_proto(s.status) as i32,
        terms: Some(pb::SubscriptionTerms {
            period_length: s.period_length as i32,
            period_type: s.period_type,
            recurring: s.recurring,
        }),
        renewals: s.renewals,
        cancel_requested_at: s.cancel_requested_at.map(timestamp),
        ended_at: s.ended_at.map(timestamp),
        created_at: Some(timestamp(s.created_at)),
        customer_uid: s.customer_uid,
        started_at: s.started_at.map(timestamp),
        last_renewal_payment_id: s.last_renewal_payment_id.unwrap_or_default(),
        last_renewal_at: s.last_renewal_at.map(timestamp),
        renewals_after_end: s.renewals_after_end,
        next_renewal_estimate: s.next_renewal_estimate_at.map(timestamp),
        updated_at: Some(timestamp(s.updated_at)),
        initial_payment: None,
        last_renewal_payment: None,
    }
}

/// The provider name an enum value stands for; `None` for unspecified or unknown values.
pub fn provider_from_proto(value: i32) -> Option<&'static str> {
    match pb::Provider::try_from(value).ok()? {
        pb::Provider::Paymentwall => Some(paymentwall::NAME),
        pb::Provider::Unspecified => None,
    }
}

pub fn mode_from_proto(value: i32) -> Option<ChannelMode> {
    match pb::ChannelMode::try_from(value).ok()? {
        pb::ChannelMode::Test => Some(ChannelMode::Test),
        pb::ChannelMode::Live => Some(ChannelMode::Live),
        pb::ChannelMode::Unspecified => None,
    }
}

/// The channel as callers see it (never a secret), with the path its provider must call back.
pub fn channel(c: &Channel, callback_path: String) -> pb::Channel {
    let (provider, paymentwall) = if c.provider == paymentwall::NAME {
        let pw = paymentwall::Settings::of(&c.config);
        let settings = pb::PaymentwallSettings {
            project_key: pw.project_key,
            widget: pw.widget,
            sign_version: pw.sign_version,
            pingback_allowlist: pw.pingback_allowlist,
            api_base_url: pw.api_base_url,
            confirm_digital_delivery: pw.confirm_digital_delivery,
        };
        (pb::Provider::Paymentwall, Some(settings))
    } else {
        (pb::Provider::Unspecified, None)
    };
    let mode = match c.mode {
        ChannelMode::Test => pb::ChannelMode::Test,
        ChannelMode::Live => pb::ChannelMode::Live,
    };
    pb::Channel {
        channel_key: c.channel_key.clone(),
        name: c.name.clone(),
        provider: provider as i32,
        mode: mode as i32,
        paymentwall,
        created_at: Some(timestamp(c.created_at)),
        updated_at: Some(timestamp(c.updated_at)),
        pingback_path: callback_path,
        merchant_id: c.merchant_id.clone(),
        owner_merchant_id: c.owner_id.clone(),
        version: c.version,
        disabled_at: c.disabled_at.map(timestamp),
        provider_name: c.provider.clone(),
        settings_json: c.config.settings.to_string(),
    }
}

/// Opaque page tokens: the last key of the previous page, base64url so callers do not parse it.
pub mod page_token {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

    use crate::validation::{self, InvalidArgument, Rule};

    pub fn encode(last_key: &str) -> String {
        URL_SAFE_NO_PAD.encode(last_key)
    }

    /// The key a token of `list` carries (`<list>:<key>`), so that a token given to another list
    /// is refused rather than read as a position in it.
    pub fn tagged(list: &str, key: &str) -> String {
        format!("{list}:{key}")
    }

    /// The key inside a token that `tagged(list, ...)` made; it must follow `rule`.
    pub fn decode_for(token: &str, list: &str, rule: Rule) -> Result<Option<String>, InvalidArgument> {
        let refused =
            || InvalidArgument::single("page_token", format!("is not a page token of {list} from this server"));
        let inner = Rule { charset: validation::Charset::VisibleAscii, max: validation::PAGE_TOKEN.max };
        let Some(tagged) = decode_as(token, inner).map_err(|_| refused())? else { return Ok(None) };
        let key = tagged.strip_prefix(list).and_then(|rest| rest.strip_prefix(':')).ok_or_else(refused)?;
        match validation::problem(key, rule) {
            None => Ok(Some(key.to_owned())),
            Some(_) => Err(refused()),
        }
    }

    /// The key inside a token, with no control characters.
    pub fn decode(token: &str) -> Result<Option<String>, InvalidArgument> {
        decode_as(token, Rule { charset: validation::Charset::Printable, max: validation::PAGE_TOKEN.max })
    }

    /// The key inside a token; it must follow `rule` (the rule of the keys this list pages by),
    /// since a token is only base64 and anyone can write one.
    pub fn decode_as(token: &str, rule: Rule) -> Result<Option<String>, InvalidArgument> {
        if token.is_empty() {
            return Ok(None);
        }
        Some(token)
            .filter(|t| validation::problem(t, validation::PAGE_TOKEN).is_none())
            .and_then(|t| URL_SAFE_NO_PAD.decode(t).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|key| validation::problem(key, rule).is_none())
            .map(Some)
            .ok_or_else(|| InvalidArgument::single("page_token", "is not a token this server issued"))
    }
}

/// A request's `statuses` filter: at most `MAX_STATUSES` values, each read by `parse`; a bad one is
/// named by its index as not being a `what` status.
pub fn statuses<T>(
    v: &mut crate::validation::Violations,
    values: &[i32],
    parse: impl Fn(i32) -> Option<T>,
    what: &str,
) -> Vec<T> {
    let mut statuses = Vec::new();
    if crate::validation::count(v, "statuses", values.len(), crate::validation::MAX_STATUSES) {
        for (i, value) in values.iter().enumerate() {
            match parse(*value) {
                Some(status) => statuses.push(status),
                None => v.add(format!("statuses[{i}]"), format!("is not a {what} status")),
            }
        }
    }
    statuses
}

/// The risk profile part of a checkout's `customer` (everything but uid and e-mail).
fn risk_profile(c: pb::Customer) -> RiskProfile {
    let time = |t: Option<Timestamp>| t.map(|t| ProfileTime { seconds: t.seconds, nanos: t.nanos });
    let h = c.history.unwrap_or_default();
    RiskProfile {
        birthday: time(c.birthday),
        sex: c.sex,
        username: c.username,
        firstname: c.firstname,
        lastname: c.lastname,
        city: c.city,
        state: c.state,
        address: c.address,
        country: c.country,
        zip: c.zip,
        history: CustomerHistory {
            registration_date: time(h.registration_date),
            membership: h.membership,
            membership_date: time(h.membership_date),
            registration_country: h.registration_country,
            registration_ip: h.registration_ip,
            registration_email: h.registration_email,
            registration_email_verified: h.registration_email_verified,
            registration_name: h.registration_name,
            registration_lastname: h.registration_lastname,
            registration_source: h.registration_source,
        },
    }
}

/// A checkout as the flow takes it; `request_hash` fingerprints the request for its idempotency key.
pub fn checkout_request(r: pb::CreateCheckoutSessionRequest, request_hash: String) -> CheckoutRequest {
    CheckoutRequest {
        channel_key: r.channel_key,
        merchant_uid: r.merchant_uid,
        amount: r.amount.map(|m| (m.amount_minor, m.currency)),
        order_name: r.order_name,
        customer_uid: r.customer.as_ref().map(|c| c.uid.clone()),
        customer_email: Email::new(r.customer.as_ref().map(|c| c.email.clone()).unwrap_or_default()),
        customer_profile: r.customer.map(risk_profile).unwrap_or_default(),
        payment_method: r.payment_method,
        widget: r.widget,
        success_url: r.success_url,
        failure_url: r.failure_url,
        country_code: r.country_code,
        language: r.language,
        custom_params: r.custom_params,
        subscription: r.subscription.map(|s| SubscriptionTerms {
            period_length: i64::from(s.period_length),
            period_type: s.period_type,
            recurring: s.recurring,
        }),
        idempotency_key: r.idempotency_key,
        request_hash,
    }
}

/// A refund as the flow takes it; `request_hash` fingerprints the request for its idempotency key.
pub fn refund_request(r: pb::RefundPaymentRequest, request_hash: String) -> RefundRequest {
    RefundRequest {
        payment_id: r.payment_id,
        currency: r.amount.as_ref().map(|m| m.currency.clone()),
        amount_minor: r.amount.map(|m| MinorUnits(m.amount_minor)),
        reason: r.reason,
        expected_refundable_amount: r.expected_refundable_amount.map(MinorUnits),
        idempotency_key: r.idempotency_key,
        request_hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_including_before_1970() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(millis(&timestamp(ms)), ms);
        }
        assert_eq!(timestamp(-1).nanos, 999_000_000);
    }

    #[test]
    fn request_timestamps_stay_within_timestamps_range() {
        let at = |seconds, nanos| Timestamp { seconds, nanos };
        let read = |ts: Timestamp| {
            let mut v = Violations::default();
            let ms = request_millis(&mut v, "expires_at", Some(&ts));
            (ms, v.iter().map(|x| x.field.clone()).collect::<Vec<_>>())
        };
        assert_eq!(read(at(253_402_300_799, 999_999_999)), (Some(253_402_300_799_999), vec![]));
        assert_eq!(read(at(-62_135_596_800, 0)), (Some(-62_135_596_800_000), vec![]));
        for seconds in [i64::MAX, i64::MIN, 253_402_300_800, -62_135_596_801] {
            assert_eq!(read(at(seconds, 0)), (None, vec!["expires_at".to_owned()]), "{seconds}");
        }
        assert_eq!(read(at(0, -1)), (None, vec!["expires_at.nanos".to_owned()]));
        assert_eq!(read(at(0, 1_000_000_000)), (None, vec!["expires_at.nanos".to_owned()]));
        assert_eq!(request_millis(&mut Violations::default(), "x", None), None);
    }

    #[test]
    fn a_page_token_reads_only_in_the_list_that_issued_it() {
        use crate::validation::ID;
        let token = page_token::encode(&page_token::tagged("subscriptions", "sub_1"));
        assert_eq!(page_token::decode_for(&token, "subscriptions", ID), Ok(Some("sub_1".into())));
        assert!(page_token::decode_for(&token, "payments", ID).is_err());
        assert!(page_token::decode_for(&token, "subscription", ID).is_err(), "the whole name");
        assert!(page_token::decode_for(&page_token::encode("sub_1"), "subscriptions", ID).is_err(), "untagged");
        let bad_key = page_token::encode(&page_token::tagged("subscriptions", "sub 1"));
        assert!(page_token::decode_for(&bad_key, "subscriptions", ID).is_err());
        assert_eq!(page_token::decode_for("", "subscriptions", ID), Ok(None));
    }

    #[test]
    fn every_status_survives_the_proto_round_trip() {
        for status in PaymentStatus::ALL {
            assert_eq!(status_from_proto(status_to_proto(status) as i32), Some(status));
        }
        assert_eq!(status_from_proto(0), None);
        assert_eq!(status_from_proto(99), None);
        use ShownStatus as S;
        for status in [S::Pending, S::Active, S::CancelRequested, S::Cancelled, S::Expired, S::PaymentFailed] {
            assert_eq!(subscription_status_from_proto(subscription_status_to_proto(status) as i32), Some(status));
        }
        assert_eq!(subscription_status_from_proto(0), None);
        assert_eq!(subscription_status_from_proto(99), None);
    }
}
