//! The hosted checkout ("widget") URL: `GET {api_base_url}/api/subscription?...&sign=...`, or
//! `/api/cart` for the widgets Paymentwall serves there.

use secrecy::ExposeSecret;

use super::{
    config::PaymentwallConfig,
    signature::{SignVersion, sign_request},
};
use crate::{
    payments::provider::{Payment, Subscription, money},
    providers::ProviderError,
};

/// Parameters paygate sets itself; a merchant's custom parameter may not override them.
const RESERVED: &[&str] = &[
    "key",
    "uid",
    "widget",
    "amount",
    "currencyCode",
    "ag_name",
    "ag_external_id",
    "ag_type",
    "ag_period_length",
    "ag_period_type",
    "ag_recurring",
    "ps",
    "email",
    "timestamp",
    "success_url",
    "failure_url",
    "country_code",
    "lang",
    "sign",
    "sign_version",
    "sig",
    "customer",
    "history",
];

pub fn is_reserved_param(name: &str) -> bool {
    RESERVED.contains(&name)
}

/// The path that serves a Digital Goods widget, by the official SDKs' rule
/// (`Widget.build_controller`): codes starting with `w`, `s` or `mw` are served by `/api/cart`,
/// every other code by `/api/subscription`.
pub fn widget_path(widget: &str) -> &'static str {
    if ["w", "s", "mw"].iter().any(|prefix| widget.starts_with(prefix)) { "/api/cart" } else { "/api/subscription" }
}

/// Builds and signs the widget URL. `ag_external_id` is the payment id, which Paymentwall sends
/// back as `goodsid` so the pingback finds the payment.
pub fn checkout_url(
    config: &PaymentwallConfig,
    payment: &Payment,
    subscription: Option<&Subscription>,
    unix_seconds: i64,
) -> Result<String, ProviderError> {
    let currency = money::parse_currency(&payment.currency)
        .ok_or_else(|| ProviderError::Unsupported(format!("currency {}", payment.currency)))?;
    // Golden rule: format once, sign and send the very same strings.
    let amount = money::to_decimal_string(payment.amount_minor, currency);
    let timestamp = unix_seconds.to_string();
    let version = config.sign_version.number().to_string();
    let widget = if payment.widget.is_empty() { &config.widget } else { &payment.widget };
    let (period_length, recurring) = match subscription {
        Some(s) => (s.period_length.to_string(), if s.recurring { "1" } else { "0" }),
        None => (String::new(), "0"),
    };

    let mut params: Vec<(&str, &str)> = vec![
        ("key", &config.project_key),
        ("uid", &payment.customer_uid),
        ("widget", widget),
        ("amount", &amount),
        ("currencyCode", &payment.currency),
        ("ag_name", &payment.order_name),
        ("ag_external_id", &payment.payment_id),
        ("ag_type", if subscription.is_some() { "subscription" } else { "fixed" }),
        ("ps", &payment.payment_method),
        ("timestamp", &timestamp),
    ];
    let optional = [
        ("email", payment.customer_email.expose()),
        ("success_url", payment.success_url.as_str()),
        ("failure_url", payment.failure_url.as_str()),
        ("country_code", payment.country_code.as_str()),
        ("lang", payment.language.as_str()),
    ];
    params.extend(optional.into_iter().filter(|(_, v)| !v.is_empty()));
    if let Some(s) = subscription {
        params.push(("ag_period_length", &period_length));
        params.push(("ag_period_type", s.period_type.as_str()));
        params.push(("ag_recurring", recurring));
    }
    params.extend(payment.custom_params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if config.sign_version != SignVersion::V1 {
        params.push(("sign_version", &version));
    }
    let sign = sign_request(config.sign_version, params.iter().copied(), config.secret_key.expose_secret());

    let mut query = form_urlencoded::Serializer::new(String::new());
    query.extend_pairs(params.iter().copied());
    query.append_pair("sign", &sign);
    Ok(format!("{}{}?{}", config.api_base_url, widget_path(widget), query.finish()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use secrecy::SecretString;

    use super::*;
    use crate::{payments::provider::MinorUnits, personal::Email};

    #[test]
    fn the_parameters_the_widget_sets_are_reserved_through_the_port() {
        use crate::payments::Provider;
        let second = std::time::Duration::from_secs(1);
        let provider = super::super::Paymentwall::new(crate::providers::ProviderHttp::new(second, second, false));
        for name in ["uid", "key", "sign", "amount", "widget"] {
            assert!(provider.is_reserved_param(name), "{name}");
        }
        assert!(!provider.is_reserved_param("order_ref"));
    }
    use crate::payments::PaymentStatus;

    fn config(version: SignVersion) -> PaymentwallConfig {
        PaymentwallConfig {
            project_key: "c22f895840bf2391f67a40da64bfed26".into(),
            secret_key: SecretString::from("a7408723eaf4bfa2e3ac49b3cb695046"),
            widget: "p10".into(),
            sign_version: version,
            pingback_allowlist: vec![],
            api_base_url: "https://api.paymentwall.com".into(),
        }
    }

    fn payment() -> Payment {
        Payment {
            payment_id: "pay_1".into(),
            merchant_id: "mer_1".into(),
            channel_key: "ch_1".into(),
            merchant_uid: "order-1".into(),
            amount_minor: MinorUnits(999),
            currency: "USD".into(),
            order_name: "Automatic Test Product Name".into(),
            customer_uid: "test_user".into(),
            customer_email: Email::new("user@hostname.com"),
            payment_method: "all".into(),
            widget: "p10".into(),
            success_url: "https://shop.example/thanks?ref=$ref".into(),
            failure_url: String::new(),
            country_code: String::new(),
            language: String::new(),
            custom_params: BTreeMap::from([("campaign".into(), "spring sale".into())]),
            status: PaymentStatus::Ready,
            provider_ref: None,
            test: false,
            redirect_url: String::new(),
            subscription_id: None,
            cancelled_amount: MinorUnits(0),
            pending_cancel_amount: MinorUnits(0),
            version: 1,
            created_at: 0,
            updated_at: 0,
            paid_at: None,
            failed_at: None,
            cancelled_at: None,
        }
    }

    #[test]
    fn the_widget_code_picks_the_path_as_the_sdks_do() {
        for code in ["w1", "w", "s1_1", "s3", "mw1", "mw"] {
            assert_eq!(widget_path(code), "/api/cart", "{code}");
        }
        for code in ["p1_1", "p10", "pw", "t3_1", "m2", "fp1", "", "ps1"] {
            assert_eq!(widget_path(code), "/api/subscription", "{code}");
        }
        let mut cart = payment();
        cart.widget = "s1".into();
        let url = checkout_url(&config(SignVersion::V3), &cart, None, 1_700_000_000).expect("url");
        assert_eq!(url::Url::parse(&url).unwrap().path(), "/api/cart");
    }

    #[test]
    fn the_url_carries_what_it_signs() {
        for version in [SignVersion::V2, SignVersion::V3] {
            let url = checkout_url(&config(version), &payment(), None, 1_700_000_000).expect("url");
            let parsed = url::Url::parse(&url).expect("absolute URL");
            assert_eq!(parsed.path(), "/api/subscription");
            let mut pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
            let sign = pairs.iter().position(|(k, _)| k == "sign").map(|i| pairs.remove(i).1).expect("sign");
            let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            assert_eq!(get("amount").as_deref(), Some("9.99"));
            assert_eq!(get("ag_external_id").as_deref(), Some("pay_1"));
            assert_eq!(get("campaign").as_deref(), Some("spring sale"));
            assert_eq!(get("success_url").as_deref(), Some("https://shop.example/thanks?ref=$ref"));
            assert_eq!(get("sign_version"), Some(version.number().to_string()));
            assert_eq!(get("failure_url"), None, "empty optional parameters are not sent");
            let expected = sign_request(
                version,
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                "a7408723eaf4bfa2e3ac49b3cb695046",
            );
            assert_eq!(sign, expected);
        }
    }
}
