//! CreateCheckoutSession: validate, build the provider's signed hosted-page URL, store the payment
//! as READY. The URL is built before the insert so a payment is never stored without one.

use std::collections::BTreeMap;

use super::{Payment, PaymentError, PaymentStatus, model::new_payment_id, money, repo};
use crate::{
    channels::{ChannelError, Channels},
    error::Violations,
    merchants::Caller,
    providers,
    store::{Db, now_ms},
};

pub const MAX_MERCHANT_UID: usize = 128;
pub const MAX_ORDER_NAME: usize = 256;
pub const MAX_CUSTOMER_UID: usize = 64;
pub const MAX_EMAIL: usize = 254;
pub const MAX_URL: usize = 2048;
pub const MAX_CODE: usize = 64;
pub const MAX_CUSTOM_PARAMS: usize = 20;
pub const MAX_CUSTOM_KEY: usize = 64;
pub const MAX_CUSTOM_VALUE: usize = 256;

/// A checkout as the merchant asked for it; `None` amount means the field was absent.
#[derive(Debug, Clone, Default)]
pub struct CheckoutRequest {
    pub channel_key: String,
    pub merchant_uid: String,
    pub amount: Option<(i64, String)>,
    pub order_name: String,
    pub customer_uid: Option<String>,
    pub customer_email: String,
    pub payment_method: String,
    pub widget: String,
    pub success_url: String,
    pub failure_url: String,
    pub country_code: String,
    pub language: String,
    pub custom_params: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct CheckoutSession {
    pub payment: Payment,
    pub redirect_url: String,
}

pub async fn create(
    db: &Db,
    channels: &Channels,
    caller: &Caller,
    req: CheckoutRequest,
) -> Result<CheckoutSession, PaymentError> {
    let mut violations = validate(&req);
    let channel = if req.channel_key.is_empty() {
        None
    } else {
        match channels.for_caller(caller, &req.channel_key).await {
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
        }
    };
    violations.check()?;
    let channel = channel.ok_or(PaymentError::Channel(ChannelError::NotFound))?;
    let (amount_minor, currency) = req.amount.clone().unwrap_or_default();

    let now = now_ms();
    let payment = Payment {
        payment_id: new_payment_id(),
        // A sub-merchant's channel makes a payment of that sub-merchant.
        merchant_id: channel.merchant_id.clone(),
        channel_key: channel.channel_key.clone(),
        merchant_uid: req.merchant_uid,
        amount_minor,
        currency,
        order_name: req.order_name,
        customer_uid: req.customer_uid.unwrap_or_default(),
        customer_email: req.customer_email,
        payment_method: if req.payment_method.is_empty() { "all".to_owned() } else { req.payment_method },
        widget: if req.widget.is_empty() { channel.paymentwall.widget.clone() } else { req.widget },
        success_url: req.success_url,
        failure_url: req.failure_url,
        country_code: req.country_code,
        language: req.language,
        custom_params: req.custom_params,
        status: PaymentStatus::Ready,
        provider_ref: None,
        test: false,
        created_at: now,
        updated_at: now,
        paid_at: None,
        failed_at: None,
    };
    let redirect_url = providers::for_channel(&channel)
        .checkout_url(&channel, &payment)
        .map_err(|e| PaymentError::Provider(e.to_string()))?;
    repo::insert(db, &payment).await?;
    Ok(CheckoutSession { payment, redirect_url })
}

/// Every problem of the request, named by its proto field path.
pub fn validate(req: &CheckoutRequest) -> Violations {
    let mut v = Violations::default();
    if req.channel_key.is_empty() {
        v.add("channel_key", "is required");
    }
    required_text(&mut v, "merchant_uid", &req.merchant_uid, MAX_MERCHANT_UID);
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
    required_text(&mut v, "order_name", &req.order_name, MAX_ORDER_NAME);
    match &req.customer_uid {
        None => v.add("customer", "is required"),
        Some(uid) => required_text(&mut v, "customer.uid", uid, MAX_CUSTOMER_UID),
    }
    if !req.customer_email.is_empty() {
        optional_text(&mut v, "customer.email", &req.customer_email, MAX_EMAIL);
        if !looks_like_email(&req.customer_email) {
            v.add("customer.email", "is not an e-mail address");
        }
    }
    code(&mut v, "payment_method", &req.payment_method);
    code(&mut v, "widget", &req.widget);
    url(&mut v, "success_url", &req.success_url);
    url(&mut v, "failure_url", &req.failure_url);
    if !req.country_code.is_empty() && !is_country_code(&req.country_code) {
        v.add("country_code", "must be two upper-case letters (ISO 3166-1 alpha-2)");
    }
    if !req.language.is_empty() && !is_language(&req.language) {
        v.add("language", "must be a language code such as en or pt-BR");
    }
    if req.custom_params.len() > MAX_CUSTOM_PARAMS {
        v.add("custom_params", format!("at most {MAX_CUSTOM_PARAMS} entries"));
    }
    for (key, value) in &req.custom_params {
        let field = format!("custom_params[{key}]");
        if key.is_empty() || key.len() > MAX_CUSTOM_KEY || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            v.add(&field, format!("key must be 1 to {MAX_CUSTOM_KEY} letters, digits or underscores"));
        } else if providers::paymentwall::widget::is_reserved_param(key) {
            v.add(&field, "key is a parameter paygate sets itself");
        }
        optional_text(&mut v, &field, value, MAX_CUSTOM_VALUE);
    }
    v
}

fn required_text(v: &mut Violations, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        v.add(field, "is required");
    } else {
        optional_text(v, field, value, max);
    }
}

fn optional_text(v: &mut Violations, field: &str, value: &str, max: usize) {
    let chars = value.chars().count();
    if chars > max {
        v.add(field, format!("must be at most {max} characters (got {chars})"));
    }
    if value.chars().any(char::is_control) {
        v.add(field, "must not contain control characters");
    }
}

fn code(v: &mut Violations, field: &str, value: &str) {
    if !value.is_empty()
        && (value.len() > MAX_CODE || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        v.add(field, format!("must be at most {MAX_CODE} letters, digits, '_' or '-'"));
    }
}

fn url(v: &mut Violations, field: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    if value.len() > MAX_URL {
        v.add(field, format!("must be at most {MAX_URL} characters"));
        return;
    }
    match url::Url::parse(value) {
        Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
        _ => v.add(field, "must be an absolute http(s) URL"),
    }
}

fn is_country_code(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())
}

fn is_language(s: &str) -> bool {
    s.len() <= 8 && s.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-')
}

fn looks_like_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => !local.is_empty() && domain.contains('.') && !s.contains(char::is_whitespace),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn fields(req: &CheckoutRequest) -> Vec<String> {
        validate(req).iter().map(|v| v.field.clone()).collect()
    }

    #[test]
    fn a_valid_request_has_no_violations() {
        assert!(validate(&valid()).is_empty());
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
            ("customer.email", Box::new(|r| r.customer_email = "nope".into())),
            ("success_url", Box::new(|r| r.success_url = "javascript:alert(1)".into())),
            ("country_code", Box::new(|r| r.country_code = "kor".into())),
            (
                "custom_params[uid]",
                Box::new(|r| {
                    r.custom_params.insert("uid".into(), "x".into());
                }),
            ),
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
}
