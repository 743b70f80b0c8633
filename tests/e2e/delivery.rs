//! Delivery confirmation (issue 31 item 3): ConfirmDelivery through the real binaries to the
//! simulator's Delivery Confirmation API, on both databases: validation before anything is sent,
//! the provider's refusal, and the durable outbox across an outage and a kill -9.

use std::time::Duration;

use paygate::proto::v1::{self as pb, DeliveryState, DeliveryStatus, DeliveryType, PaymentStatus};
use tonic::Code;

use crate::support::{proxy::TcpProxy, *};

fn shipped(payment_id: &str) -> pb::ConfirmDeliveryRequest {
    pb::ConfirmDeliveryRequest {
        payment_id: payment_id.into(),
        r#type: DeliveryType::Physical as i32,
        status: DeliveryStatus::OrderShipped as i32,
        tracking_id: "1Z999AA10123456784".into(),
        carrier: "UPS".into(),
        estimated_delivery_at: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 }),
        refundable: Some(true),
        details: "Shipped by UPS ground".into(),
        attachments: vec!["https://shop.example/proofs/label.pdf".into()],
        ..Default::default()
    }
}

async fn deliveries(payments: &mut Payments, payment_id: &str) -> Vec<pb::Delivery> {
    get_payment(payments, payment_id).await.deliveries
}

async fn sim_deliveries(sim: &Simulator, sim_session: &str) -> Vec<serde_json::Value> {
    sim.session(sim_session).await["deliveries"].as_array().unwrap().clone()
}

async fn behave(sim: &Simulator, behaviour: serde_json::Value) {
    let url = format!("{}/control/behaviour", sim.base_url());
    assert_eq!(sim.http.post(url).json(&behaviour).send().await.unwrap().status(), 204);
}

async fn confirmed_delivery(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sim = Simulator::start();
    // Paymentwall's API reached through a proxy the test can cut.
    let sim_addr = url::Url::parse(&sim.base_url()).unwrap();
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", sim_addr.port().unwrap()).parse().unwrap()).await;
    let (_, key) = create_merchant(&db, "Acme");
    // No channel cache: each call loads the channel, which on SQLite (one connection) must happen
    // outside the call's transaction.
    let env = [("PAYGATE_DELIVERY_OUTBOX_INTERVAL_MS", "100"), ("PAYGATE_CHANNEL_CACHE_TTL_MS", "0")];
    let mut gate = Paygate::start(&db, &env);
    let mut request = channel_request(&sim, "main", pb::ChannelMode::Test);
    request.paymentwall.as_mut().unwrap().api_base_url = format!("http://{}", proxy.addr);
    let channel = gate.channels(&key).await.create_channel(request).await.unwrap().into_inner();
    sim.add_project(PROJECT_KEY, SECRET_KEY, &gate.http_url(&channel.pingback_path), 3).await;
    let mut payments = gate.payments(&key).await;

    let session = payments.create_checkout_session(checkout_request("main", "order-ship")).await.unwrap().into_inner();
    let sim_session = sim.open(&session.redirect_url).await;
    // Not paid yet: nothing to deliver.
    let early = payments.confirm_delivery(shipped(&session.payment_id)).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{}", early.message());
    sim.control(&format!("/sessions/{sim_session}/pay"), None).await;
    let paid = wait_for_status(&mut payments, &session.payment_id, PaymentStatus::Paid).await;

    // Shipped physical goods without their tracking: named, nothing recorded or sent.
    let mut untracked = shipped(&session.payment_id);
    untracked.tracking_id.clear();
    untracked.carrier.clear();
    let bad = payments.confirm_delivery(untracked).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("tracking_id") && bad.message().contains("carrier"), "{}", bad.message());
    assert!(deliveries(&mut payments, &session.payment_id).await.is_empty());
    assert!(sim_deliveries(&sim, &sim_session).await.is_empty());

    // Sent, as the simulator checks it: the ref, the key header, the fields.
    let sent = payments.confirm_delivery(shipped(&session.payment_id)).await.unwrap().into_inner();
    assert_eq!((sent.state, sent.attempts), (DeliveryState::Sent as i32, 1), "{sent:?}");
    let received = sim_deliveries(&sim, &sim_session).await;
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r["payment_id"], paid.provider_ref.as_str());
    assert_eq!((r["type"].as_str(), r["status"].as_str()), (Some("physical"), Some("order_shipped")));
    assert_eq!(
        (r["carrier_tracking_id"].as_str(), r["carrier_type"].as_str()),
        (Some("1Z999AA10123456784"), Some("UPS"))
    );
    assert_eq!(r["estimated_delivery_datetime"], "2027/01/15 08:00:00 +0000");
    assert_eq!((r["refundable"].as_str(), r["is_test"].as_str()), (Some("true"), Some("1")));
    assert_eq!(r["attachments[0]"], "https://shop.example/proofs/label.pdf");
    let history = deliveries(&mut payments, &session.payment_id).await;
    assert_eq!(history, std::slice::from_ref(&sent));
    let events = payments
        .list_payment_events(pb::ListPaymentEventsRequest {
            payment_id: session.payment_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let updated = events.iter().find(|e| e.kind == "payment.delivery_updated").expect("a delivery event");
    assert_eq!(updated.delivery.as_ref().unwrap().delivery_id, sent.delivery_id);

    // The same idempotency key and request: the first delivery, nothing sent again.
    let keyed = pb::ConfirmDeliveryRequest { idempotency_key: "ship-1".into(), ..shipped(&session.payment_id) };
    let first = payments.confirm_delivery(keyed.clone()).await.unwrap().into_inner();
    let again = payments.confirm_delivery(keyed).await.unwrap().into_inner();
    assert_eq!(first.delivery_id, again.delivery_id);
    assert_eq!(sim_deliveries(&sim, &sim_session).await.len(), 2);

    // Paymentwall refuses: FAILED_PRECONDITION in its words; the record stays, REFUSED.
    behave(&sim, serde_json::json!({ "refuse_deliveries": "Delivery already confirmed" })).await;
    let refused = payments.confirm_delivery(shipped(&session.payment_id)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("Delivery already confirmed"), "{}", refused.message());
    let history = deliveries(&mut payments, &session.payment_id).await;
    assert_eq!(history.last().unwrap().state, DeliveryState::Refused as i32);
    behave(&sim, serde_json::json!({})).await;

    // Paymentwall unreachable: recorded PENDING, and paygate killed -9 before it could retry; the
    // next paygate's outbox sends it once Paymentwall is back.
    proxy.cut();
    let delivered = pb::ConfirmDeliveryRequest {
        status: DeliveryStatus::Delivered as i32,
        details: "Signed for at the door".into(),
        ..shipped(&session.payment_id)
    };
    let pending = payments.confirm_delivery(delivered).await.unwrap().into_inner();
    assert_eq!(pending.state, DeliveryState::Pending as i32, "{pending:?}");
    assert!(!pending.last_error.is_empty());
    gate.process.kill9();
    proxy.restore();
    gate = Paygate::start(&db, &env);
    let mut payments = gate.payments(&key).await;
    let mut last = None;
    for _ in 0..300 {
        let now = deliveries(&mut payments, &session.payment_id).await;
        let d = now.into_iter().find(|d| d.delivery_id == pending.delivery_id).unwrap();
        if d.state == DeliveryState::Sent as i32 {
            last = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent_later = last.expect("the outbox sent the delivery within 30 s");
    assert!(sent_later.attempts >= 2, "{sent_later:?}");
    let received = sim_deliveries(&sim, &sim_session).await;
    assert_eq!(received.iter().filter(|r| r["status"] == "delivered").count(), 1, "sent once");
    // A refund loads the channel the same way.
    let refund = pb::RefundPaymentRequest {
        payment_id: session.payment_id.clone(),
        reason: "returned".into(),
        ..Default::default()
    };
    payments.refund_payment(refund).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_delivery_postgres() {
    confirmed_delivery(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_delivery_sqlite() {
    confirmed_delivery(Backend::Sqlite).await;
}

/// A channel of digital goods confirms every payment paid by itself, once, with two replicas
/// following the same log; another channel's payments are left alone.
async fn digital_goods_confirm_themselves(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sim = Simulator::start();
    let (_, key) = create_merchant(&db, "Acme");
    let env = [("PAYGATE_DELIVERY_OUTBOX_INTERVAL_MS", "100")];
    let (one, two) = (Paygate::start(&db, &env), Paygate::start(&db, &env));
    let mut digital = channel_request(&sim, "digital", pb::ChannelMode::Test);
    digital.paymentwall.as_mut().unwrap().confirm_digital_delivery = true;
    let mut channels = one.channels(&key).await;
    let digital = channels.create_channel(digital).await.unwrap().into_inner();
    assert!(digital.paymentwall.as_ref().unwrap().confirm_digital_delivery, "read back");
    channels.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    sim.add_project(PROJECT_KEY, SECRET_KEY, &one.http_url("/pingback/paymentwall/digital"), 3).await;
    let mut payments = one.payments(&key).await;
    // The worker starts following the log where it stood when it first ran (payments paid before
    // are not confirmed after the fact): let it start before anything is paid.
    wait_until(|| async { db.count("SELECT COUNT(*) FROM worker_cursors WHERE worker <> $1", "").await == 1 }).await;

    let mut paid = Vec::new();
    for (channel, uid) in [("digital", "order-d1"), ("digital", "order-d2"), ("main", "order-m1")] {
        if channel == "main" {
            sim.add_project(PROJECT_KEY, SECRET_KEY, &one.http_url("/pingback/paymentwall/main"), 3).await;
        }
        let session = payments.create_checkout_session(checkout_request(channel, uid)).await.unwrap().into_inner();
        let sim_session = sim.open(&session.redirect_url).await;
        sim.control(&format!("/sessions/{sim_session}/pay"), None).await;
        wait_for_status(&mut payments, &session.payment_id, PaymentStatus::Paid).await;
        paid.push((session.payment_id, sim_session));
    }
    for (payment_id, sim_session) in &paid[..2] {
        let mut sent = None;
        for _ in 0..200 {
            let now = deliveries(&mut payments, payment_id).await;
            if now.iter().any(|d| d.state == DeliveryState::Sent as i32) {
                sent = Some(now);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let history = sent.expect("the automatic confirmation was sent within 20 s");
        assert_eq!(history.len(), 1, "one confirmation, though two replicas read the log: {history:?}");
        let d = &history[0];
        assert_eq!((d.r#type, d.status), (DeliveryType::Digital as i32, DeliveryStatus::Delivered as i32));
        let paid_at = get_payment(&mut payments, payment_id).await.paid_at;
        assert_eq!(d.estimated_delivery_at, paid_at, "delivered when it was paid");
        let received = sim_deliveries(&sim, sim_session).await;
        assert_eq!(received.len(), 1);
        assert_eq!(
            (received[0]["type"].as_str(), received[0]["status"].as_str()),
            (Some("digital"), Some("delivered"))
        );
    }
    // Long enough for both replicas' passes to have read the third payment's event.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(deliveries(&mut payments, &paid[2].0).await.is_empty(), "a channel without the setting confirms nothing");
    drop(two);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digital_goods_confirm_themselves_postgres() {
    digital_goods_confirm_themselves(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digital_goods_confirm_themselves_sqlite() {
    digital_goods_confirm_themselves(Backend::Sqlite).await;
}

/// The simulator's Delivery Confirmation API refuses what Paymentwall would: a wrong key, fields a
/// type and status need, malformed dates, an unknown payment (its checks are its own, not paygate's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_delivery_api_refuses_what_paymentwall_would() {
    let sim = Simulator::start();
    sim.add_project(PROJECT_KEY, SECRET_KEY, "http://127.0.0.1:9/pingback", 3).await;
    let post = |key: &str, form: &[(&str, &str)]| {
        let request = sim.http.post(format!("{}/api/delivery", sim.base_url())).header("X-ApiKey", key).form(form);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let complete = [
        ("payment_id", "b-unknown"),
        ("type", "physical"),
        ("status", "order_shipped"),
        ("estimated_delivery_datetime", "2027/01/15 08:00:00 +0000"),
        ("details", "Shipped"),
        ("carrier_tracking_id", "1Z999"),
        ("carrier_type", "UPS"),
    ];
    let (status, answer) = post("not-the-key", &complete).await;
    assert_eq!((status, answer["error"].as_str()), (401, Some("Wrong API key")));
    let (status, answer) = post(SECRET_KEY, &complete[..5]).await;
    assert_eq!(status, 400);
    let notices = answer["notices"].to_string();
    assert!(notices.contains("carrier_tracking_id") && notices.contains("carrier_type"), "{notices}");
    let mut bad_date = complete;
    bad_date[3].1 = "2027-01-15T08:00:00Z";
    let (status, answer) = post(SECRET_KEY, &bad_date).await;
    assert_eq!(status, 400);
    assert!(answer["notices"].to_string().contains("estimated_delivery_datetime"), "{answer}");
    let (status, answer) = post(SECRET_KEY, &complete).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("Payment not found")));
}
