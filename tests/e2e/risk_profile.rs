//! Issue 31 item 4: the buyer's risk profile in CreateCheckoutSession. Its fields reach the widget
//! URL exactly as the official Paymentwall Python SDK (paymentwall-python, run by
//! tests/paymentwall_sdk_widget.py) builds and signs them; bad ones are refused by name and
//! nothing is stored; none of them is logged; EraseCustomer takes them with the URL.

use std::{collections::BTreeMap, io::Write, process::Stdio};

use paygate::proto::v1::{self as pb};
use prost_types::Timestamp;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::*;

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

/// A customer with every profile field, some of them with characters that URL encoding and
/// signing must keep apart (`&`, `#`, `+`, `'`, non-ASCII).
fn full_customer() -> pb::Customer {
    pb::Customer {
        uid: "user-40012".into(),
        email: "buyer@example.com".into(),
        birthday: at(631_152_000),
        sex: "female".into(),
        username: "jöns+d".into(),
        firstname: "Jöns".into(),
        lastname: "O'Brien".into(),
        city: "Seoul".into(),
        state: "Seoul-teukbyeolsi".into(),
        address: "Flat 4 & 5, 1 Main St #2".into(),
        country: "KR".into(),
        zip: "04524".into(),
        history: Some(pb::CustomerHistory {
            registration_date: at(1_600_000_000),
            membership: "gold".into(),
            membership_date: at(1_650_000_000),
            registration_country: "KR".into(),
            registration_ip: "203.0.113.7".into(),
            registration_email: "jons.reg@example.com".into(),
            registration_email_verified: Some(true),
            registration_name: "Jöns".into(),
            registration_lastname: "O'Brien".into(),
            registration_source: "web?utm=spring".into(),
        }),
    }
}

/// Values of the profile above that must never show in paygate's log.
const PERSONAL: &[&str] = &["jöns", "Jöns", "O'Brien", "Flat 4", "04524", "203.0.113.7", "jons.reg@", "Seoul-teuk"];

/// The profile as Paymentwall's User Profile parameters, written here from the request (not from
/// paygate's URL): dates as unix seconds, the flag as 1 or 0, only the fields given.
fn profile_params(c: &pb::Customer) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut put = |name: String, value: String| {
        if !value.is_empty() {
            out.insert(name, value);
        }
    };
    let seconds = |t: &Option<Timestamp>| t.as_ref().map(|t| t.seconds.to_string()).unwrap_or_default();
    put("customer[birthday]".into(), seconds(&c.birthday));
    for (name, value) in [
        ("sex", &c.sex),
        ("username", &c.username),
        ("firstname", &c.firstname),
        ("lastname", &c.lastname),
        ("city", &c.city),
        ("state", &c.state),
        ("address", &c.address),
        ("country", &c.country),
        ("zip", &c.zip),
    ] {
        put(format!("customer[{name}]"), value.clone());
    }
    let h = c.history.clone().unwrap_or_default();
    put("history[registration_date]".into(), seconds(&h.registration_date));
    put("history[membership_date]".into(), seconds(&h.membership_date));
    let verified = h.registration_email_verified.map(|v| if v { "1" } else { "0" }).unwrap_or_default();
    put("history[registration_email_verified]".into(), verified.into());
    for (name, value) in [
        ("membership", &h.membership),
        ("registration_country", &h.registration_country),
        ("registration_ip", &h.registration_ip),
        ("registration_email", &h.registration_email),
        ("registration_name", &h.registration_name),
        ("registration_lastname", &h.registration_lastname),
        ("registration_source", &h.registration_source),
    ] {
        put(format!("history[{name}]"), value.clone());
    }
    out
}

/// The widget URL the official SDK builds: tests/paymentwall_sdk_widget.py with `python3` from
/// PATH (scripts/test puts target/test-venv, which has the pinned SDK, first).
async fn sdk_url(input: serde_json::Value) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paymentwall_sdk_widget.py");
    let output = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 (scripts/test makes target/test-venv and puts it first on PATH)");
        child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the SDK helper failed (is paymentwall-python in target/test-venv? run scripts/test once): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the helper's JSON");
    assert_eq!(answer["sdk_version"], "1.0.9", "the SDK release scripts/test pins");
    answer["url"].as_str().expect("url").to_owned()
}

/// A URL's origin and path, and its parameters decoded, each name once.
fn parsed(url: &str) -> (String, BTreeMap<String, String>) {
    let url = url::Url::parse(url).expect("absolute URL");
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let params: BTreeMap<String, String> = pairs.iter().cloned().collect();
    assert_eq!(params.len(), pairs.len(), "a parameter sent twice in {url}");
    (format!("{}{}", url.origin().ascii_serialization(), url.path()), params)
}

/// Compares paygate's widget URL for `request` with the SDK's for the same input, parameter by
/// parameter (order in the URL differs and does not matter: the signature sorts).
async fn same_as_sdk(sim: &Simulator, request: &pb::CreateCheckoutSessionRequest, session: &pb::CheckoutSession) {
    let (place, ours) = parsed(&session.redirect_url);
    let customer = request.customer.as_ref().unwrap();
    let amount = request.amount.as_ref().unwrap();
    let mut product = json!({
        "id": session.payment_id,
        "amount": amount.amount_minor as f64 / 100.0,
        "currency": amount.currency,
        "name": request.order_name,
    });
    if let Some(terms) = &request.subscription {
        product["type"] = json!("subscription");
        product["period_length"] = json!(terms.period_length);
        product["period_type"] = json!(terms.period_type);
        product["recurring"] = json!(terms.recurring);
    }
    // What paygate sends besides the product, from the request; only the timestamp (paygate's
    // clock) is taken from its URL.
    let mut extra: BTreeMap<String, String> = profile_params(customer);
    extra.insert("email".into(), customer.email.clone());
    extra.insert("timestamp".into(), ours["timestamp"].clone());
    let ps = if request.payment_method.is_empty() { "all" } else { request.payment_method.as_str() };
    extra.insert("ps".into(), ps.into());
    extra.insert("sign_version".into(), "3".into());
    for (name, value) in [
        ("success_url", &request.success_url),
        ("failure_url", &request.failure_url),
        ("country_code", &request.country_code),
        ("lang", &request.language),
    ] {
        if !value.is_empty() {
            extra.insert(name.into(), value.clone());
        }
    }
    extra.extend(request.custom_params.clone());
    let widget = if request.widget.is_empty() { "p1_1" } else { request.widget.as_str() };
    let sdk = sdk_url(json!({
        "base_url": sim.base_url(),
        "app_key": PROJECT_KEY,
        "secret_key": SECRET_KEY,
        "uid": customer.uid,
        "widget": widget,
        "product": product,
        "extra_params": extra,
    }))
    .await;
    let (sdk_place, theirs) = parsed(&sdk);
    assert_eq!(place, sdk_place, "the same endpoint");
    for (name, value) in &theirs {
        assert_eq!(ours.get(name), Some(value), "parameter {name}");
    }
    let extra_of_ours: Vec<&String> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(extra_of_ours.is_empty(), "paygate sends what the SDK does not: {extra_of_ours:?}");
    assert_eq!(ours["sign"], theirs["sign"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_risk_profile_is_signed_as_the_official_sdk_signs_it_on_postgres() {
    risk_profile_as_the_sdk(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_risk_profile_is_signed_as_the_official_sdk_signs_it_on_sqlite() {
    risk_profile_as_the_sdk(Backend::Sqlite).await;
}

async fn risk_profile_as_the_sdk(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[]);
    let channel = gate
        .channels(&api_key)
        .await
        .create_channel(channel_request(&sim, "main", pb::ChannelMode::Test))
        .await
        .unwrap()
        .into_inner();
    sim.add_project(PROJECT_KEY, SECRET_KEY, &gate.http_url(&channel.pingback_path), 3).await;
    let mut payments = gate.payments(&api_key).await;

    // A one-time checkout with the whole profile and every optional parameter paygate sends.
    let mut one_time = checkout_request("main", "order-risk-1");
    one_time.customer = Some(full_customer());
    one_time.failure_url = "https://shop.example/sorry".into();
    one_time.country_code = "KR".into();
    one_time.language = "ko".into();
    one_time.custom_params.insert("campaign".into(), "spring sale".into());
    let session = payments.create_checkout_session(one_time.clone()).await.expect("checkout").into_inner();
    let (_, params) = parsed(&session.redirect_url);
    assert_eq!(params.get("customer[firstname]").map(String::as_str), Some("Jöns"));
    assert_eq!(params.get("history[registration_date]").map(String::as_str), Some("1600000000"));
    same_as_sdk(&sim, &one_time, &session).await;
    // The simulator's own signer (written apart from paygate's) accepts it too, and it pays.
    let sim_session = sim.open(&session.redirect_url).await;
    sim.control(&format!("/sessions/{sim_session}/pay"), None).await;
    wait_for_status(&mut payments, &session.payment_id, pb::PaymentStatus::Paid).await;

    // A subscription with part of a profile: the fields left out are not sent, false is 0.
    let mut subscription = checkout_request("main", "order-risk-2");
    subscription.widget = "pw".into();
    subscription.subscription =
        Some(pb::SubscriptionTerms { period_length: 1, period_type: "month".into(), recurring: true });
    subscription.customer.as_mut().unwrap().history = Some(pb::CustomerHistory {
        registration_date: at(1_600_000_000),
        membership: "gold".into(),
        registration_email_verified: Some(false),
        ..Default::default()
    });
    let session = payments.create_checkout_session(subscription.clone()).await.expect("checkout").into_inner();
    let (_, params) = parsed(&session.redirect_url);
    let nested: Vec<&str> = params.keys().map(String::as_str).filter(|k| k.contains('[')).collect();
    assert_eq!(nested, ["history[membership]", "history[registration_date]", "history[registration_email_verified]"]);
    assert_eq!(params["history[registration_email_verified]"], "0");
    same_as_sdk(&sim, &subscription, &session).await;

    // Personal data: not in paygate's log; the stored URL is its only copy, and EraseCustomer
    // takes it.
    let logs = gate.process.logs().join("\n");
    for value in PERSONAL {
        assert!(!logs.contains(value), "{value} in paygate's log");
    }
    let with_profile = "SELECT COUNT(*) FROM payments WHERE redirect_url LIKE $1";
    assert_eq!(db.count(with_profile, "%history%5B%").await, 2);
    payments.erase_customer(pb::EraseCustomerRequest { customer_uid: "user-40012".into() }).await.expect("erase");
    assert_eq!(db.count(with_profile, "%history%5B%").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_profile_fields_are_named_and_nothing_is_stored_on_postgres() {
    bad_profile_fields(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_profile_fields_are_named_and_nothing_is_stored_on_sqlite() {
    bad_profile_fields(Backend::Sqlite).await;
}

async fn bad_profile_fields(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[]);
    gate.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let mut payments = gate.payments(&api_key).await;
    let future = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + 86_400;

    type Mutation = Box<dyn Fn(&mut pb::Customer)>;
    let cases: Vec<(&str, &str, Mutation)> = vec![
        (
            "customer.history.registration_ip",
            "is not an IP address",
            Box::new(|c| c.history.as_mut().unwrap().registration_ip = "203.0.113".into()),
        ),
        ("customer.country", "ISO 3166-1 alpha-2", Box::new(|c| c.country = "Korea".into())),
        (
            "customer.history.registration_country",
            "ISO 3166-1 alpha-2",
            Box::new(|c| c.history.as_mut().unwrap().registration_country = "kr".into()),
        ),
        ("customer.city", "at most 255 characters", Box::new(|c| c.city = "c".repeat(256))),
        ("customer.firstname", "control characters", Box::new(|c| c.firstname = "Jö\u{7}ns".into())),
        (
            "customer.history.registration_email",
            "is not an e-mail address",
            Box::new(|c| c.history.as_mut().unwrap().registration_email = "jons".into()),
        ),
        ("customer.birthday", "must not be in the future", Box::new(move |c| c.birthday = at(future))),
        ("customer.birthday", "before 1900", Box::new(|c| c.birthday = at(-2_208_988_801))),
        (
            "customer.history.registration_date",
            "must not be in the future",
            Box::new(move |c| c.history.as_mut().unwrap().registration_date = at(future)),
        ),
        (
            "customer.history.membership_date.nanos",
            "999,999,999",
            Box::new(|c| {
                c.history.as_mut().unwrap().membership_date = Some(Timestamp { seconds: 1, nanos: 1_000_000_000 })
            }),
        ),
    ];
    for (field, problem, mutate) in cases {
        let mut request = checkout_request("main", "order-risk-bad");
        let mut customer = full_customer();
        mutate(&mut customer);
        request.customer = Some(customer);
        let status = payments.create_checkout_session(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(&format!("{field}: ")), "message names {field}: {}", status.message());
        assert!(status.message().contains(problem), "{field}: {}", status.message());
        let violations = status.get_details_bad_request().expect("BadRequest details").field_violations;
        assert_eq!(violations.len(), 1, "{field} alone: {violations:?}");
        assert_eq!(violations[0].field, field);
        for value in PERSONAL {
            assert!(!status.message().contains(value), "{field}: the answer quotes {value}");
        }
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM payments WHERE merchant_uid = $1", "order-risk-bad").await, 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM payments WHERE merchant_uid <> $1", "").await, 0, "nothing stored");

    // The same request with the profile as given is accepted.
    let mut good = checkout_request("main", "order-risk-bad");
    good.customer = Some(full_customer());
    payments.create_checkout_session(good).await.expect("the valid profile");
    assert_eq!(db.count("SELECT COUNT(*) FROM payments WHERE merchant_uid = $1", "order-risk-bad").await, 1);
}
