//! Bad input gets INVALID_ARGUMENT naming the field, and nothing is stored.

use paygate::proto::v1::{self as pb};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_checkouts_name_the_field_and_store_nothing_postgres() {
    bad_checkouts(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_checkouts_name_the_field_and_store_nothing_sqlite() {
    bad_checkouts(Backend::Sqlite).await;
}

async fn bad_checkouts(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[]);
    let mut channels = gate.channels(&api_key).await;
    let mut payments = gate.payments(&api_key).await;
    channels.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.expect("channel");

    type Mutation = Box<dyn Fn(&mut pb::CreateCheckoutSessionRequest)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("customer.uid", Box::new(|r| r.customer.as_mut().unwrap().uid.clear())),
        ("customer", Box::new(|r| r.customer = None)),
        ("amount.amount_minor", Box::new(|r| r.amount.as_mut().unwrap().amount_minor = 0)),
        ("amount.amount_minor", Box::new(|r| r.amount.as_mut().unwrap().amount_minor = -100)),
        ("amount.currency", Box::new(|r| r.amount.as_mut().unwrap().currency = "XYZ".into())),
        ("amount", Box::new(|r| r.amount = None)),
        ("channel_key", Box::new(|r| r.channel_key = "no-such-channel".into())),
        ("order_name", Box::new(|r| r.order_name = "n".repeat(257))),
        ("customer.uid", Box::new(|r| r.customer.as_mut().unwrap().uid = "u".repeat(65))),
        ("merchant_uid", Box::new(|r| r.merchant_uid = "m".repeat(129))),
        ("customer.email", Box::new(|r| r.customer.as_mut().unwrap().email = "e".repeat(250) + "@x.example")),
        ("success_url", Box::new(|r| r.success_url = "not a url".into())),
        (
            "custom_params[amount]",
            Box::new(|r| {
                r.custom_params.insert("amount".into(), "0.01".into());
            }),
        ),
    ];
    for (field, mutate) in cases {
        let mut request = checkout_request("main", "order-1");
        mutate(&mut request);
        let status = payments.create_checkout_session(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "message names {field}: {}", status.message());
        let violations = status.get_details_bad_request().expect("BadRequest details").field_violations;
        assert!(violations.iter().any(|v| v.field == field), "{field} in {violations:?}");
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM payments WHERE merchant_uid = $1", "order-1").await, 0);

    // The good request is accepted once; the same merchant_uid again is ALREADY_EXISTS.
    payments.create_checkout_session(checkout_request("main", "order-1")).await.expect("valid checkout");
    let status = payments.create_checkout_session(checkout_request("main", "order-1")).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(db.count("SELECT COUNT(*) FROM payments WHERE merchant_uid = $1", "order-1").await, 1);

    // Bad channels are refused the same way.
    let mut bad = channel_request(&sim, "", pb::ChannelMode::Test);
    bad.paymentwall.as_mut().unwrap().pingback_allowlist = vec!["10.0.0.0/33".into()];
    bad.paymentwall.as_mut().unwrap().sign_version = 1;
    let status = channels.create_channel(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> =
        status.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| v.field).collect();
    assert_eq!(fields, ["paymentwall.sign_version", "paymentwall.pingback_allowlist[0]"]);
    let status = channels.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(db.count("SELECT COUNT(*) FROM channels WHERE merchant_id <> $1", "").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_payments_pages_and_filters() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[]);
    let mut channels = gate.channels(&api_key).await;
    let mut payments = gate.payments(&api_key).await;
    channels.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.expect("channel");
    let mut created = Vec::new();
    for i in 0..5 {
        let session = payments.create_checkout_session(checkout_request("main", &format!("order-{i}"))).await.unwrap();
        created.push(session.into_inner().payment_id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = payments
            .list_payments(pb::ListPaymentsRequest { page_size: 2, page_token: token.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.payments.len() <= 2);
        seen.extend(page.payments.into_iter().map(|p| p.payment_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    created.reverse();
    assert_eq!(seen, created, "every payment once, newest first");

    let paid_only = payments
        .list_payments(pb::ListPaymentsRequest { statuses: vec![pb::PaymentStatus::Paid as i32], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(paid_only.payments.is_empty());
    let status = payments
        .list_payments(pb::ListPaymentsRequest { statuses: vec![42], page_token: "%%%".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("statuses[0]") && status.message().contains("page_token"),
        "{}",
        status.message()
    );
}
