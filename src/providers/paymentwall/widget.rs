//! The hosted checkout ("widget") URL: `GET {api_base_url}/api/subscription?...&sign=...`, or
//! `/api/cart` for the widgets Paymentwall serves there.

use secrecy::ExposeSecret;

use super::{
    config::PaymentwallConfig,
    signature::{SignVersion, sign_request},
};
use crate::{
    payments::provider::{Payment, ProfileTime, RiskProfile, Subscription, money},
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

/// The buyer's profile as Paymentwall's User Profile parameters (docs/paymentwall.md section 8),
/// only those given: `customer[...]` and `history[...]`, dates as unix seconds, the flag as 1 or 0.
/// Signed as every nested parameter is: at the parent's position, sub-keys sorted.
fn profile_params(profile: &RiskProfile) -> Vec<(&'static str, String)> {
    let seconds = |t: Option<ProfileTime>| t.map(|t| t.seconds.to_string()).unwrap_or_default();
    let h = &profile.history;
    let verified = h.registration_email_verified.map(|v| if v { "1" } else { "0" });
    let params = [
        ("customer[birthday]", seconds(profile.birthday)),
        ("customer[sex]", profile.sex.clone()),
        ("customer[username]", profile.username.clone()),
        ("customer[firstname]", profile.firstname.clone()),
        ("customer[lastname]", profile.lastname.clone()),
        ("customer[city]", profile.city.clone()),
        ("customer[state]", profile.state.clone()),
        ("customer[address]", profile.address.clone()),
        ("customer[country]", profile.country.clone()),
        ("customer[zip]", profile.zip.clone()),
        ("history[registration_date]", seconds(h.registration_date)),
        ("history[membership]", h.membership.clone()),
        ("history[membership_date]", seconds(h.membership_date)),
        ("history[registration_country]", h.registration_country.clone()),
        ("history[registration_ip]", h.registration_ip.clone()),
        ("history[registration_email]", h.registration_email.clone()),
        ("history[registration_email_verified]", verified.unwrap_or_default().to_owned()),
        ("history[registration_name]", h.registration_name.clone()),
        ("history[registration_lastname]", h.registration_lastname.clone()),
        ("history[registration_source]", h.registration_source.clone()),
    ];
    params.into_iter().filter(|(_, v)| !v.is_empty()).collect()
}

/// Builds and signs the widget URL. `ag_external_id` is the payment id, which Paymentwall sends
/// back as `goodsid` so the pingback finds the payment.
pub fn checkout_url(
    config: &PaymentwallConfig,
    payment: &Payment,
    subscription: Option<&Subscription>,
    profile: &RiskProfile,
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
    let profile = profile_params(profile);

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
    params.extend(profile.iter().map(|(k, v)| (*k, v.as_str())));
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
            confirm_digital_delivery: false,
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
        let url =
            checkout_url(&config(SignVersion::V3), &cart, None, &RiskProfile::default(), 1_700_000_000).expect("url");
        assert_eq!(url::Url::parse(&url).unwrap().path(), "/api/cart");
    }

    /// paymentwall.md's W2 (a subscription checkout with `history[registration_date]` and
    /// `history[membership]`), as a payment and a profile.
    fn w2() -> (Payment, Subscription, RiskProfile) {
        let mut payment = payment();
        payment.payment_id = "gold_monthly".into();
        payment.customer_uid = "user40012".into();
        payment.widget = "pw".into();
        payment.amount_minor = MinorUnits(1000);
        payment.order_name = "Gold Membership".into();
        payment.success_url = "https://example.com/thanks?ref=$ref".into();
        payment.custom_params.clear();
        let subscription = Subscription {
            subscription_id: "sub_1".into(),
            merchant_id: "mer_1".into(),
            channel_key: "ch_1".into(),
            initial_payment_id: "gold_monthly".into(),
            customer_uid: "user40012".into(),
            period_length: 1,
            period_type: crate::payments::core::subscription::PeriodType::Month,
            recurring: true,
            status: crate::payments::core::SubscriptionStatus::Pending,
            renewals: 0,
            renewals_after_end: 0,
            last_renewal_payment_id: None,
            last_renewal_at: None,
            started_at: None,
            cancel_requested_at: None,
            ended_at: None,
            created_at: 0,
            updated_at: 0,
        };
        let mut profile = RiskProfile::default();
        profile.history.registration_date = Some(ProfileTime { seconds: 1_600_000_000, nanos: 0 });
        profile.history.membership = "gold".into();
        (payment, subscription, profile)
    }

    fn sign_of(url: &str) -> String {
        url::Url::parse(url).unwrap().query_pairs().find(|(k, _)| k == "sign").unwrap().1.into_owned()
    }

    #[test]
    fn the_risk_profile_is_signed_as_nested_parameters() {
        let (payment, subscription, mut profile) = w2();
        // W2 itself: paymentwall.md's vectors.
        for (version, expected) in [
            (SignVersion::V3, "b7390ebf61a6d160a563b54a8de8b2f4aabd75331105530004f67590f9764e4a"),
            (SignVersion::V2, "3ed3e7d6dde91b9c58f0776ceef0d36d"),
        ] {
            let url = checkout_url(&config(version), &payment, Some(&subscription), &profile, 1_700_000_000).unwrap();
            assert_eq!(sign_of(&url), expected, "W2 v{}", version.number());
        }
        // W2 with the whole profile. The expected signatures were computed once, outside paygate,
        // by a short Python script (hashlib) grouping `customer[...]` and `history[...]` at their
        // parent's position with sorted sub-keys, as paymentwall.md section 2 says.
        let at = |seconds| Some(ProfileTime { seconds, nanos: 0 });
        profile.birthday = at(631_152_000);
        profile.sex = "female".into();
        profile.username = "jane_d".into();
        profile.firstname = "Jane".into();
        profile.lastname = "Doe".into();
        profile.city = "Seoul".into();
        profile.state = "Seoul".into();
        profile.address = "1 Main St".into();
        profile.country = "KR".into();
        profile.zip = "04524".into();
        let h = &mut profile.history;
        h.membership_date = at(1_650_000_000);
        h.registration_country = "KR".into();
        h.registration_ip = "203.0.113.7".into();
        h.registration_email = "jane@example.com".into();
        h.registration_email_verified = Some(true);
        h.registration_name = "Jane".into();
        h.registration_lastname = "Doe".into();
        h.registration_source = "web".into();
        for (version, expected) in [
            (SignVersion::V3, "48309ea6454aae1668e56ff77ac4f3e33c1863a1e12be586caaf71e31251c60e"),
            (SignVersion::V2, "aef87d223d99f50ad4e1125294d2ef45"),
        ] {
            let url = checkout_url(&config(version), &payment, Some(&subscription), &profile, 1_700_000_000).unwrap();
            assert_eq!(sign_of(&url), expected, "W2 with the profile, v{}", version.number());
            let pairs: Vec<(String, String)> = url::Url::parse(&url).unwrap().query_pairs().into_owned().collect();
            let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
            assert_eq!(get("customer[birthday]"), Some("631152000"));
            assert_eq!(get("customer[address]"), Some("1 Main St"));
            assert_eq!(get("history[registration_email_verified]"), Some("1"));
        }
    }

    #[test]
    fn only_the_profile_fields_given_are_sent() {
        let (payment, subscription, mut profile) = w2();
        profile.history.registration_email_verified = Some(false);
        let url =
            checkout_url(&config(SignVersion::V3), &payment, Some(&subscription), &profile, 1_700_000_000).unwrap();
        let names: Vec<String> = url::Url::parse(&url).unwrap().query_pairs().map(|(k, _)| k.into_owned()).collect();
        let nested: Vec<&str> = names.iter().map(String::as_str).filter(|n| n.contains('[')).collect();
        assert_eq!(
            nested,
            ["history[registration_date]", "history[membership]", "history[registration_email_verified]"]
        );
        assert!(url.contains("history%5Bregistration_email_verified%5D=0"), "false is sent as 0: {url}");
        let none = checkout_url(&config(SignVersion::V3), &payment, None, &RiskProfile::default(), 1).unwrap();
        assert!(!none.contains("customer%5B") && !none.contains("history%5B"), "{none}");
    }

    #[test]
    fn the_url_carries_what_it_signs() {
        for version in [SignVersion::V2, SignVersion::V3] {
            let url =
                checkout_url(&config(version), &payment(), None, &RiskProfile::default(), 1_700_000_000).expect("url");
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
