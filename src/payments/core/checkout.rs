//! A checkout, decided: what a valid request is, and the payment (and subscription) it makes on a
//! channel. Pure; `flows::checkout` claims the key, finds the channel, asks the provider for the
//! URL, and writes.

use std::collections::BTreeMap;

use super::{
    Payment, PaymentStatus,
    money::{self, MinorUnits},
    new_payment_id,
    risk_profile::{self, RiskProfile},
    subscription::{PeriodType, Subscription, SubscriptionStatus},
};
use crate::{
    channels::Channel,
    personal::Email,
    validation::{self, InvalidArgument, Rule, Violations},
};

pub const MAX_ORDER_NAME: usize = 256;

/// `payment_method`, `widget`: provider codes.
const CODE: Rule = Rule { charset: validation::Charset::Token, max: 64 };

/// `custom_params` keys (they become widget URL parameters).
const CUSTOM_KEY: Rule = Rule { charset: validation::Charset::Token, max: 64 };

pub const MAX_CUSTOM_PARAMS: usize = 20;

pub const MAX_CUSTOM_VALUE: usize = 256;

/// A checkout as the merchant asked for it; `None` amount means the field was absent.
#[derive(Debug, Clone, Default)]
pub struct CheckoutRequest {
    pub channel_key: String,
    pub merchant_uid: String,
    pub amount: Option<(i64, String)>,
    pub order_name: String,
    pub customer_uid: Option<String>,
    pub customer_email: Email,
    /// The rest of `customer`: the buyer's profile for the provider's risk scoring. Not part of
    /// the payment: `flows::checkout` hands it to the provider for the hosted page's URL only.
    pub customer_profile: RiskProfile,
    pub payment_method: String,
    pub widget: String,
    pub success_url: String,
    pub failure_url: String,
    pub country_code: String,
    pub language: String,
    pub custom_params: BTreeMap<String, String>,
    pub subscription: Option<SubscriptionTerms>,
    pub idempotency_key: String,
    /// Fingerprint of the request for the idempotency check.
    pub request_hash: String,
}

/// A recurring product: every `period_length` `period_type`s (`day`, `week`, `month`, `year`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionTerms {
    pub period_length: i64,
    pub period_type: String,
    pub recurring: bool,
}

pub const MAX_PERIOD_LENGTH: i64 = 365;

/// The payment (and subscription) a checkout request that passed `validate` makes on `channel`:
/// decided here, written by `flows::checkout`.
pub fn new_payment(
    channel: &Channel,
    mut req: CheckoutRequest,
    now: i64,
) -> Result<(Payment, Option<Subscription>), InvalidArgument> {
    let period_type = match &req.subscription {
        Some(terms) => Some(PeriodType::parse(&terms.period_type).ok_or_else(|| {
            InvalidArgument::single("subscription.period_type", "is not a billing period paygate knows")
        })?),
        None => None,
    };
    // Stored (and signed into the hosted-page URL) as the URL parser writes them.
    req.success_url = validation::normalised_url(&req.success_url);
    req.failure_url = validation::normalised_url(&req.failure_url);
    let (amount_minor, currency) = req.amount.clone().unwrap_or_default();
    let payment_id = new_payment_id();
    let subscription = req.subscription.as_ref().zip(period_type).map(|(terms, period_type)| Subscription {
        subscription_id: format!("sub_{}", ulid::Ulid::new()),
        merchant_id: channel.merchant_id.clone(),
        channel_key: channel.channel_key.clone(),
        initial_payment_id: payment_id.clone(),
        customer_uid: req.customer_uid.clone().unwrap_or_default(),
        period_length: terms.period_length,
        period_type,
        recurring: terms.recurring,
        status: SubscriptionStatus::Pending,
        renewals: 0,
        renewals_after_end: 0,
        last_renewal_payment_id: None,
        last_renewal_at: None,
        started_at: None,
        cancel_requested_at: None,
        ended_at: None,
        created_at: now,
        updated_at: now,
    });
    let payment = Payment {
        payment_id,
        // A sub-merchant's channel makes a payment of that sub-merchant.
        merchant_id: channel.merchant_id.clone(),
        channel_key: channel.channel_key.clone(),
        merchant_uid: req.merchant_uid,
        amount_minor: MinorUnits(amount_minor),
        currency,
        order_name: req.order_name,
        customer_uid: req.customer_uid.unwrap_or_default(),
        customer_email: req.customer_email,
        payment_method: if req.payment_method.is_empty() { "all".to_owned() } else { req.payment_method },
        // Empty: the channel's default, which its provider knows.
        widget: req.widget,
        success_url: req.success_url,
        failure_url: req.failure_url,
        country_code: req.country_code,
        language: req.language,
        custom_params: req.custom_params,
        status: PaymentStatus::Ready,
        provider_ref: None,
        test: false,
        redirect_url: String::new(),
        subscription_id: subscription.as_ref().map(|s| s.subscription_id.clone()),
        cancelled_amount: MinorUnits::ZERO,
        pending_cancel_amount: MinorUnits::ZERO,
        version: 1,
        created_at: now,
        updated_at: now,
        paid_at: None,
        failed_at: None,
        cancelled_at: None,
    };
    Ok((payment, subscription))
}

/// Every problem of the request, named by its proto field path. `now_ms` is paygate's clock (the
/// profile's dates may not lie after it).
pub fn validate(req: &CheckoutRequest, now_ms: i64) -> Violations {
    let mut v = Violations::default();
    validation::identifier(&mut v, "channel_key", &req.channel_key, validation::CHANNEL_KEY);
    if req.merchant_uid.trim().is_empty() {
        v.add("merchant_uid", "is required");
    } else {
        validation::identifier(&mut v, "merchant_uid", &req.merchant_uid, validation::MERCHANT_UID);
    }
    if req.merchant_uid.starts_with(super::notification::GENERATED_UID_PREFIX) {
        v.add(
            "merchant_uid",
            format!(
                "must not start with '{}' (reserved for renewals and repeat payments paygate records)",
                super::notification::GENERATED_UID_PREFIX
            ),
        );
    }
    match &req.amount {
        None => v.add("amount", "is required"),
        Some((minor, currency)) => {
            if *minor <= 0 {
                v.add("amount.amount_minor", "must be greater than zero");
            }
            if currency.is_empty() {
                v.add("amount.currency", "is required");
            } else if money::parse_currency(currency).is_none() {
                v.add("amount.currency", "is not an ISO 4217 currency code with minor units (e.g. USD, KRW)");
            }
        }
    }
    validation::required_text(&mut v, "order_name", &req.order_name, MAX_ORDER_NAME);
    match &req.customer_uid {
        None => v.add("customer", "is required"),
        Some(uid) if uid.trim().is_empty() => v.add("customer.uid", "is required"),
        Some(uid) => {
            validation::identifier(&mut v, "customer.uid", uid, validation::CUSTOMER_UID);
        }
    }
    if !req.customer_email.is_empty()
        && validation::text(&mut v, "customer.email", req.customer_email.expose(), validation::MAX_EMAIL)
        && !validation::looks_like_email(req.customer_email.expose())
    {
        v.add("customer.email", "is not an e-mail address");
    }
    risk_profile::validate(&mut v, &req.customer_profile, now_ms);
    validation::optional_identifier(&mut v, "payment_method", &req.payment_method, CODE);
    validation::optional_identifier(&mut v, "widget", &req.widget, CODE);
    validation::optional_url(&mut v, "success_url", &req.success_url);
    validation::optional_url(&mut v, "failure_url", &req.failure_url);
    if !req.country_code.is_empty() && !validation::is_country_code(&req.country_code) {
        v.add("country_code", "must be two upper-case letters (ISO 3166-1 alpha-2)");
    }
    if !req.language.is_empty() && !is_language(&req.language) {
        v.add("language", "must be a language code such as en or pt-BR");
    }
    validation::count(&mut v, "custom_params", req.custom_params.len(), MAX_CUSTOM_PARAMS);
    if let Some(terms) = &req.subscription {
        if !(1..=MAX_PERIOD_LENGTH).contains(&terms.period_length) {
            v.add("subscription.period_length", format!("must be 1 to {MAX_PERIOD_LENGTH}"));
        }
        if PeriodType::parse(&terms.period_type).is_none() {
            let words: Vec<&str> = PeriodType::ALL.iter().map(|t| t.as_str()).collect();
            v.add("subscription.period_type", format!("must be one of {}", words.join(", ")));
        }
    }
    validation::optional_identifier(&mut v, "idempotency_key", &req.idempotency_key, validation::IDEMPOTENCY_KEY);
    // Entries are looked at only when their number is acceptable, and a bad key is named by
    // position, never quoted.
    if req.custom_params.len() <= MAX_CUSTOM_PARAMS {
        for (i, (key, value)) in req.custom_params.iter().enumerate() {
            let field = match validation::problem(key, CUSTOM_KEY) {
                Some(problem) => {
                    v.add(format!("custom_params[#{i}]"), format!("key {problem}"));
                    continue;
                }
                None => format!("custom_params[{key}]"),
            };
            validation::text(&mut v, &field, value, MAX_CUSTOM_VALUE);
        }
    }
    v
}

fn is_language(s: &str) -> bool {
    s.len() <= 8 && s.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel_of(merchant_id: &str) -> Channel {
        Channel {
            channel_key: "ch_1".into(),
            merchant_id: merchant_id.into(),
            owner_id: "mer_parent".into(),
            name: String::new(),
            provider: "paymentwall".into(),
            mode: crate::channels::ChannelMode::Test,
            config: Default::default(),
            version: 1,
            created_at: 0,
            updated_at: 0,
            disabled_at: None,
        }
    }

    #[test]
    fn a_checkout_makes_a_ready_payment_of_the_channels_merchant() {
        let mut req = valid();
        req.success_url = "HTTPS://Shop.Example/thanks".into();
        let (payment, subscription) = new_payment(&channel_of("mer_sub"), req, 7).unwrap();
        assert_eq!(payment.status, PaymentStatus::Ready);
        assert_eq!(payment.merchant_id, "mer_sub", "a sub-merchant's channel makes that sub-merchant's payment");
        assert_eq!((payment.amount_minor.0, payment.currency.as_str()), (999, "USD"));
        assert_eq!((payment.cancelled_amount.0, payment.pending_cancel_amount.0, payment.version), (0, 0, 1));
        assert_eq!(payment.payment_method, "all");
        assert_eq!(payment.success_url, "https://shop.example/thanks", "stored as the URL parser writes it");
        assert_eq!((payment.created_at, payment.paid_at), (7, None));
        assert!(subscription.is_none() && payment.subscription_id.is_none());
    }

    #[test]
    fn a_subscription_checkout_makes_a_pending_subscription_of_its_first_payment() {
        let mut req = valid();
        req.subscription = Some(SubscriptionTerms { period_length: 1, period_type: "month".into(), recurring: true });
        let (payment, subscription) = new_payment(&channel_of("mer_1"), req, 7).unwrap();
        let subscription = subscription.expect("a subscription");
        assert_eq!(subscription.status, SubscriptionStatus::Pending);
        assert_eq!(subscription.initial_payment_id, payment.payment_id);
        assert_eq!(payment.subscription_id.as_deref(), Some(subscription.subscription_id.as_str()));
        assert_eq!((subscription.renewals, subscription.period_length), (0, 1));
    }

    fn valid() -> CheckoutRequest {
        CheckoutRequest {
            channel_key: "ch_1".into(),
            merchant_uid: "order-1".into(),
            amount: Some((999, "USD".into())),
            order_name: "Gold".into(),
            customer_uid: Some("user-1".into()),
            ..Default::default()
        }
    }

    const NOW_MS: i64 = 1_700_000_000_000;

    fn fields(req: &CheckoutRequest) -> Vec<String> {
        validate(req, NOW_MS).iter().map(|v| v.field.clone()).collect()
    }

    #[test]
    fn a_valid_request_has_no_violations() {
        assert!(validate(&valid(), NOW_MS).is_empty());
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut CheckoutRequest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("customer", Box::new(|r| r.customer_uid = None)),
            ("customer.uid", Box::new(|r| r.customer_uid = Some(String::new()))),
            ("customer.uid", Box::new(|r| r.customer_uid = Some("u".repeat(65)))),
            ("amount", Box::new(|r| r.amount = None)),
            ("amount.amount_minor", Box::new(|r| r.amount = Some((0, "USD".into())))),
            ("amount.amount_minor", Box::new(|r| r.amount = Some((-5, "USD".into())))),
            ("amount.currency", Box::new(|r| r.amount = Some((100, "ABC".into())))),
            ("order_name", Box::new(|r| r.order_name = "x".repeat(257))),
            ("merchant_uid", Box::new(|r| r.merchant_uid = String::new())),
            ("merchant_uid", Box::new(|r| r.merchant_uid = "~order-1/renewal/1".into())),
            ("customer.email", Box::new(|r| r.customer_email = Email::new("nope"))),
            ("success_url", Box::new(|r| r.success_url = "javascript:alert(1)".into())),
            ("country_code", Box::new(|r| r.country_code = "kor".into())),
            ("customer.history.registration_ip", Box::new(|r| r.customer_profile.history.registration_ip = "x".into())),
            ("customer.zip", Box::new(|r| r.customer_profile.zip = "1\t2".into())),
        ];
        for (field, mutate) in cases {
            let mut req = valid();
            mutate(&mut req);
            assert_eq!(fields(&req), vec![field.to_owned()], "expected only {field}");
        }
    }

    #[test]
    fn all_problems_are_reported_together() {
        let req = CheckoutRequest { amount: Some((0, "ZZZ".into())), ..Default::default() };
        let f = fields(&req);
        for expected in
            ["channel_key", "merchant_uid", "amount.amount_minor", "amount.currency", "order_name", "customer"]
        {
            assert!(f.contains(&expected.to_owned()), "{expected} missing from {f:?}");
        }
    }

    proptest::proptest! {
        /// Any text in any field: no panic, every violation names a field, and a field holding a
        /// control character is always refused by name.
        #[test]
        fn any_text_in_any_field_is_refused_by_name(field in 0..13usize, value in "\\PC{0,3}[\\x00-\\x1f\\x7f]?\\PC{0,3}|.{0,300}") {
            let mut req = valid();
            let name = match field {
                0 => { req.channel_key = value.clone(); "channel_key" }
                1 => { req.merchant_uid = value.clone(); "merchant_uid" }
                2 => { req.order_name = value.clone(); "order_name" }
                3 => { req.customer_uid = Some(value.clone()); "customer.uid" }
                4 => { req.customer_email = Email::new(value.clone()); "customer.email" }
                5 => { req.success_url = value.clone(); "success_url" }
                6 => { req.failure_url = value.clone(); "failure_url" }
                7 => { req.idempotency_key = value.clone(); "idempotency_key" }
                8 => { req.payment_method = value.clone(); "payment_method" }
                9 => { req.widget = value.clone(); "widget" }
                10 => { req.language = value.clone(); "language" }
                11 => { req.customer_profile.city = value.clone(); "customer.city" }
                _ => { req.customer_profile.history.registration_source = value.clone(); "customer.history.registration_source" }
            };
            let v = validate(&req, NOW_MS);
            proptest::prop_assert!(v.iter().all(|x| !x.field.is_empty() && !x.description.is_empty()));
            if value.chars().any(char::is_control) {
                proptest::prop_assert!(v.iter().any(|x| x.field == name), "{name} with a control character: {v:?}");
            }
        }
    }
}
