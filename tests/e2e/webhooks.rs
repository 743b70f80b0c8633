//! Merchant webhooks end to end, checked by a receiver that verifies every signature with the
//! independent `standardwebhooks` Python package.

use std::time::Duration;

use paygate::proto::v1::{
    self as pb, PaymentStatus, WebhookDeliveryStatus, webhook_service_client::WebhookServiceClient,
};
use tonic::{Code, service::interceptor::InterceptedService, transport::Channel};

use crate::support::*;

type Webhooks = WebhookServiceClient<InterceptedService<Channel, Bearer>>;

const FAST_RETRIES: [(&str, &str); 4] = [
    ("PAYGATE_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true"),
    ("PAYGATE_WEBHOOK_RETRY_BASE_MS", "100"),
    ("PAYGATE_WEBHOOK_RETRY_MAX_MS", "400"),
    ("PAYGATE_WEBHOOK_POLL_INTERVAL_MS", "50"),
];

async fn webhooks(gate: &Paygate, api_key: &str) -> Webhooks {
    WebhookServiceClient::with_interceptor(gate.grpc().await, Bearer::new(api_key))
}

async fn set_endpoint(client: &mut Webhooks, receiver: &Receiver, types: &[&str]) -> String {
    let request = pb::SetWebhookEndpointRequest {
        url: receiver.url(),
        event_types: types.iter().map(|t| t.to_string()).collect(),
    };
    let endpoint = client.set_webhook_endpoint(request).await.unwrap().into_inner();
    assert!(endpoint.secret.starts_with("whsec_"));
    endpoint.secret
}

async fn deliveries(client: &mut Webhooks) -> Vec<pb::WebhookDelivery> {
    client.list_webhook_deliveries(pb::ListWebhookDeliveriesRequest::default()).await.unwrap().into_inner().deliveries
}

/// What the log must never show: a delivery and its attempts that disagree.
fn inconsistency(d: &pb::WebhookDelivery) -> Option<String> {
    let ok = |a: &pb::WebhookAttempt| (200..300).contains(&a.status_code);
    let last = d.attempts.last();
    let bad = match d.status {
        s if s == WebhookDeliveryStatus::Pending as i32 => d.attempts.iter().any(ok),
        s if s == WebhookDeliveryStatus::Succeeded as i32 => !last.is_some_and(ok),
        _ => false,
    };
    bad.then(|| format!("{} is {:?} with attempts {:?}", d.delivery_id, d.status, d.attempts))
}

/// The log once `count` deliveries are listed and none is pending, each checked for consistency.
async fn settled(client: &mut Webhooks, count: usize) -> Vec<pb::WebhookDelivery> {
    for _ in 0..400 {
        let log = deliveries(client).await;
        if let Some(problem) = log.iter().find_map(inconsistency) {
            panic!("inconsistent delivery log: {problem}");
        }
        if log.len() >= count && log.iter().all(|d| d.status != WebhookDeliveryStatus::Pending as i32) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the delivery log never settled: {:?}", deliveries(client).await);
}

fn types(received: &[serde_json::Value]) -> Vec<String> {
    received.iter().map(|r| r["type"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_then_refunded_payment_sends_signed_webhooks_in_order() {
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let receiver = Receiver::start(0);
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &FAST_RETRIES);
    let mut hooks = webhooks(&gate, &api_key).await;
    let secret = set_endpoint(&mut hooks, &receiver, &[]).await;
    receiver.trust(&[&secret]).await;
    let endpoint = hooks.get_webhook_endpoint(pb::GetWebhookEndpointRequest {}).await.unwrap().into_inner();
    assert!(endpoint.secret.is_empty(), "the secret is shown once");

    let channel = gate
        .channels(&api_key)
        .await
        .create_channel(channel_request(&sim, "main", pb::ChannelMode::Test))
        .await
        .unwrap();
    sim.add_project(PROJECT_KEY, SECRET_KEY, &gate.http_url(&channel.into_inner().pingback_path), 3).await;
    let mut payments = gate.payments(&api_key).await;
    let payment_id = checkout_and_pay(&gate, &mut payments, "order-1").await;
    // Refund through the simulator (its type 2 pingback confirms it).
    let session = payments.create_checkout_session(checkout_request("main", "order-2")).await.unwrap().into_inner();
    let sim_session = sim.open(&session.redirect_url).await;
    sim.control(&format!("/sessions/{sim_session}/pay"), None).await;
    wait_for_status(&mut payments, &session.payment_id, PaymentStatus::Paid).await;
    payments
        .refund_payment(pb::RefundPaymentRequest {
            payment_id: session.payment_id.clone(),
            reason: "customer asked".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_for_status(&mut payments, &session.payment_id, PaymentStatus::Cancelled).await;

    let received = receiver.wait_for(4).await;
    let of = |id: &str| {
        received
            .iter()
            .filter(|r| r["payment_id"] == id)
            .map(|r| r["type"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(of(&payment_id), ["payment.paid"]);
    assert_eq!(of(&session.payment_id), ["payment.paid", "payment.cancel_pending", "payment.cancelled"], "in order");
    assert_eq!(receiver.received().await["invalid"], 0, "every signature verified");
    // Each webhook names its event as the log does (the id is assigned in the statement that queues it).
    // The log shows an event once every transaction older than it has ended (those of the shared
    // server's other tests too), so it is read until it has all three.
    let mut logged = Vec::new();
    for _ in 0..200 {
        let request = pb::ListPaymentEventsRequest { payment_id: session.payment_id.clone(), ..Default::default() };
        let page = payments.list_payment_events(request).await.unwrap().into_inner();
        logged = page.events.iter().map(|e| e.event_id.clone()).collect::<Vec<String>>();
        if logged.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let announced: Vec<String> = received
        .iter()
        .filter(|r| r["payment_id"] == session.payment_id.as_str())
        .map(|r| r["event_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(announced, logged, "the webhooks' event ids are the log's");

    // A test send, and a secret rotation: a receiver still on the old secret keeps verifying.
    let test = hooks.send_test_webhook(pb::SendTestWebhookRequest {}).await.unwrap().into_inner();
    assert_eq!(test.event_type, "webhook.test");
    let new_secret = set_endpoint(&mut hooks, &receiver, &["payment.*"]).await;
    assert_ne!(new_secret, secret);
    let endpoint = hooks.get_webhook_endpoint(pb::GetWebhookEndpointRequest {}).await.unwrap().into_inner();
    assert_eq!(endpoint.active_secrets, 2);
    let after_rotation = checkout_and_pay(&gate, &mut payments, "order-3").await;
    let received = receiver.wait_for(6).await;
    assert!(types(&received).contains(&"webhook.test".to_owned()));
    assert!(received.iter().any(|r| r["payment_id"] == after_rotation.as_str()), "verified with the old secret");
    receiver.trust(&[&new_secret]).await;
    let with_new = checkout_and_pay(&gate, &mut payments, "order-4").await;
    let received = receiver.wait_for(7).await;
    assert!(received.iter().any(|r| r["payment_id"] == with_new.as_str()), "verified with the new secret");
    assert_eq!(receiver.received().await["invalid"], 0);

    // The delivery log: every delivery succeeded on its first attempt with 200. The receiver may
    // have the last one before paygate recorded the answer: wait until it did.
    let log = settled(&mut hooks, 7).await;
    assert_eq!(log.len(), 7);
    for d in &log {
        assert_eq!(d.status, WebhookDeliveryStatus::Succeeded as i32, "{d:?}");
        assert_eq!(d.attempts.iter().map(|a| a.status_code).collect::<Vec<_>>(), [200]);
    }
}

/// A Shop on SQLite with fast retries, and its webhook endpoint: a receiver that trusts its secret.
async fn shop_with_receiver() -> (Shop, Receiver, Webhooks) {
    let shop = Shop::open(Backend::Sqlite, &FAST_RETRIES).await;
    let receiver = Receiver::start(0);
    let mut hooks = webhooks(&shop.gate, &shop.api_key).await;
    let secret = set_endpoint(&mut hooks, &receiver, &[]).await;
    receiver.trust(&[&secret]).await;
    (shop, receiver, hooks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_the_receiver_recovers_and_a_redelivery_sends_the_same_webhook_id() {
    let (Shop { db: _db, sim: _sim, api_key, gate, .. }, receiver, mut hooks) = shop_with_receiver().await;
    let mut payments = gate.payments(&api_key).await;

    // 500 three times, then 200: delivered on the fourth attempt.
    receiver.fail_next(3, 500).await;
    let payment_id = checkout_and_pay(&gate, &mut payments, "order-1").await;
    let received = receiver.wait_for(1).await;
    assert_eq!(received[0]["payment_id"], payment_id.as_str());
    let log = deliveries(&mut hooks).await;
    assert_eq!(log[0].status, WebhookDeliveryStatus::Succeeded as i32);
    assert_eq!(log[0].attempts.iter().map(|a| a.status_code).collect::<Vec<_>>(), [500, 500, 500, 200]);
    let at = |a: &pb::WebhookAttempt| a.at.as_ref().map(|t| (t.seconds, t.nanos)).unwrap_or_default();
    assert!(log[0].attempts.windows(2).all(|w| at(&w[0]) <= at(&w[1])), "attempts in time order");

    // A manual redeliver sends the same webhook-id again.
    let again =
        hooks.redeliver_webhook(pb::RedeliverWebhookRequest { delivery_id: log[0].delivery_id.clone() }).await.unwrap();
    assert_eq!(again.into_inner().status, WebhookDeliveryStatus::Pending as i32);
    let received = receiver.wait_for(2).await;
    assert_eq!(received[1]["webhook_id"], received[0]["webhook_id"]);
    let status =
        hooks.redeliver_webhook(pb::RedeliverWebhookRequest { delivery_id: "msg_nope".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_answer_disables_the_endpoint() {
    let (Shop { db: _db, sim: _sim, api_key, gate, .. }, receiver, mut hooks) = shop_with_receiver().await;
    let mut payments = gate.payments(&api_key).await;

    // 410 Gone disables the endpoint.
    receiver.fail_next(1, 410).await;
    checkout_and_pay(&gate, &mut payments, "order-2").await;
    for _ in 0..200 {
        let endpoint = hooks.get_webhook_endpoint(pb::GetWebhookEndpointRequest {}).await.unwrap().into_inner();
        if endpoint.disabled_at.is_some() {
            assert!(endpoint.disabled_reason.contains("410"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("410 did not disable the endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_survive_a_receiver_outage_across_a_paygate_restart() {
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let receiver = Receiver::start(0);
    let port = receiver.port;
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &FAST_RETRIES);
    let mut hooks = webhooks(&gate, &api_key).await;
    let secret = set_endpoint(&mut hooks, &receiver, &[]).await;
    drop(receiver); // down
    gate.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let mut payments = gate.payments(&api_key).await;
    let payment_id = checkout_and_pay(&gate, &mut payments, "order-1").await;
    for _ in 0..200 {
        if deliveries(&mut hooks).await[0].attempts.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let failing = deliveries(&mut hooks).await.remove(0);
    assert_eq!(failing.status, WebhookDeliveryStatus::Pending as i32);
    assert!(failing.attempts.iter().all(|a| a.status_code == 0 && !a.error.is_empty()), "{failing:?}");
    assert!(failing.next_attempt_at.is_some());
    drop(gate); // paygate goes down too

    let receiver = Receiver::start(port);
    receiver.trust(&[&secret]).await;
    let gate = Paygate::start(&db, &FAST_RETRIES);
    let received = receiver.wait_for(1).await;
    assert_eq!(
        (received[0]["payment_id"].as_str(), received[0]["type"].as_str()),
        (Some(payment_id.as_str()), Some("payment.paid"))
    );
    drop(gate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_event_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let receiver = Receiver::start(0);
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate_a = Paygate::start(&db, &FAST_RETRIES);
    let gate_b = Paygate::start(&db, &FAST_RETRIES);
    let mut hooks = webhooks(&gate_a, &api_key).await;
    let secret = set_endpoint(&mut hooks, &receiver, &["payment.paid"]).await;
    receiver.trust(&[&secret]).await;
    gate_a.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let mut on_a = gate_a.payments(&api_key).await;
    let mut on_b = gate_b.payments(&api_key).await;
    let mut paid = Vec::new();
    for n in 0..20 {
        let (gate, client) = if n % 2 == 0 { (&gate_a, &mut on_a) } else { (&gate_b, &mut on_b) };
        paid.push(checkout_and_pay(gate, client, &format!("order-{n}")).await);
    }
    receiver.wait_for(20).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // room for any duplicate to show up
    let received = receiver.received().await["received"].as_array().cloned().unwrap();
    let mut ids: Vec<&str> = received.iter().map(|r| r["webhook_id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((received.len(), ids.len()), (20, 20), "each event delivered once");
    let mut got: Vec<&str> = received.iter().map(|r| r["payment_id"].as_str().unwrap()).collect();
    got.sort();
    let mut want: Vec<&str> = paid.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_targets_are_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[("PAYGATE_PROVIDER_ALLOW_PRIVATE_TARGETS", "false")]);
    // A channel's provider URL is merchant input too: internal addresses are refused.
    let sim = Simulator::start();
    let status = gate
        .channels(&api_key)
        .await
        .create_channel(channel_request(&sim, "main", pb::ChannelMode::Test))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("paymentwall.api_base_url"), "{}", status.message());
    let mut hooks = webhooks(&gate, &api_key).await;
    for url in
        ["http://127.0.0.1:9/hook", "http://10.0.0.7/hook", "http://169.254.169.254/latest", "http://localhost/x"]
    {
        let status = hooks
            .set_webhook_endpoint(pb::SetWebhookEndpointRequest { url: url.into(), event_types: vec![] })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{url}");
        assert!(status.message().contains("url"), "{}", status.message());
    }
    let status = hooks
        .set_webhook_endpoint(pb::SetWebhookEndpointRequest {
            url: "https://hooks.example.com/x".into(),
            event_types: vec!["payment.teleported".into()],
        })
        .await
        .unwrap_err();
    assert!(status.message().contains("event_types[0]"));
    let status = hooks.get_webhook_endpoint(pb::GetWebhookEndpointRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "nothing was stored");
}

/// Issue 11 item 6: the delivery log, read while deliveries are being made, always shows each
/// delivery with the attempts of the same moment (never "pending" next to a 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_never_shows_a_delivery_apart_from_its_attempts() {
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let receiver = Receiver::start(0);
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &FAST_RETRIES);
    let mut hooks = webhooks(&gate, &api_key).await;
    let secret = set_endpoint(&mut hooks, &receiver, &[]).await;
    receiver.trust(&[&secret]).await;
    gate.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let mut payments = gate.payments(&api_key).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Two readers list as fast as they can while the deliveries settle.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut hooks = hooks.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for d in deliveries(&mut hooks).await {
                        if let Some(problem) = inconsistency(&d) {
                            return Err(problem);
                        }
                    }
                    reads += 1;
                }
                Ok(reads)
            })
        })
        .collect();
    const PAYMENTS: usize = 30;
    for n in 0..PAYMENTS {
        checkout_and_pay(&gate, &mut payments, &format!("order-{n}")).await;
    }
    receiver.wait_for(PAYMENTS).await;
    let log = settled(&mut hooks, PAYMENTS).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        let reads = reader.await.unwrap().unwrap_or_else(|problem| panic!("inconsistent delivery log: {problem}"));
        assert!(reads > 0);
    }
    assert!(log.iter().all(|d| d.attempts.iter().map(|a| a.status_code).collect::<Vec<_>>() == [200]));
}

/// Only the types an endpoint asked for are queued: exact types and `family.*`, nothing for an
/// endpoint that wants another family.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_event_types_an_endpoint_wants_are_queued() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let receiver = Receiver::start(0);
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &FAST_RETRIES);
    let mut hooks = webhooks(&gate, &api_key).await;
    gate.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let mut payments = gate.payments(&api_key).await;
    let queued = || db.count("SELECT COUNT(*) FROM webhook_deliveries WHERE event_type = $1", "payment.paid");
    for (n, (types, queued_after)) in [
        (&["subscription.*"][..], 0),
        (&["payment.failed"][..], 0),
        (&["payment.*"][..], 1),
        (&["payment.paid"][..], 2),
    ]
    .into_iter()
    .enumerate()
    {
        set_endpoint(&mut hooks, &receiver, types).await;
        checkout_and_pay(&gate, &mut payments, &format!("order-{n}")).await;
        assert_eq!(queued().await, queued_after, "after an endpoint for {types:?}");
    }
}

/// A delivery confirmation reaches the merchant's endpoint as `payment.delivery_updated`, carrying
/// the confirmation, signed (the receiver verifies with the official Standard Webhooks library).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_confirmation_is_a_webhook_with_the_delivery() {
    let (Shop { db: _db, sim, api_key, gate, .. }, receiver, _hooks) = shop_with_receiver().await;
    sim.add_project(PROJECT_KEY, SECRET_KEY, &gate.http_url("/pingback/paymentwall/main"), 3).await;
    let mut payments = gate.payments(&api_key).await;
    let session = payments.create_checkout_session(checkout_request("main", "order-dl")).await.unwrap().into_inner();
    let sim_session = sim.open(&session.redirect_url).await;
    sim.control(&format!("/sessions/{sim_session}/pay"), None).await;
    wait_for_status(&mut payments, &session.payment_id, pb::PaymentStatus::Paid).await;
    let delivery = payments
        .confirm_delivery(pb::ConfirmDeliveryRequest {
            payment_id: session.payment_id.clone(),
            r#type: pb::DeliveryType::Digital as i32,
            status: pb::DeliveryStatus::Delivered as i32,
            estimated_delivery_at: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 }),
            details: "Licence key sent by e-mail".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let received = receiver.wait_for(2).await;
    let hook = received.iter().find(|r| r["type"] == "payment.delivery_updated").expect("the delivery webhook");
    assert_eq!(hook["delivery_id"], delivery.delivery_id.as_str());
    assert_eq!(hook["payment_id"], session.payment_id.as_str());
}

/// Issue 32 item 2: a rotation keeps the old secret signing beside the new one for the grace the
/// caller chose, so a receiver holding only the old one and a receiver holding only the new one
/// both verify (the official Standard Webhooks library); after the grace, only the new one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_old_one_for_its_grace() {
    let Shop { db, api_key, gate, .. } = Shop::open(Backend::Postgres, &FAST_RETRIES).await;
    let receiver = Receiver::start(0);
    let mut hooks = webhooks(&gate, &api_key).await;
    let original_secret = set_endpoint(&mut hooks, &receiver, &[]).await;
    receiver.trust(&[&original_secret]).await;
    let old = hooks.get_webhook_endpoint(pb::GetWebhookEndpointRequest {}).await.unwrap().into_inner();
    assert_eq!(old.active_secrets, 1);
    let mut payments = gate.payments(&api_key).await;
    checkout_and_pay(&gate, &mut payments, "order-before").await;
    receiver.wait_for(1).await;

    let rotated = hooks.rotate_webhook_secret(pb::RotateWebhookSecretRequest { grace_seconds: 3600 }).await;
    let rotated = rotated.unwrap().into_inner();
    assert!(rotated.secret.starts_with("whsec_") && rotated.secret != original_secret);
    assert_eq!(rotated.active_secrets, 2);
    let expires = rotated.previous_secret_expires_at.unwrap().seconds - rotated.updated_at.unwrap().seconds;
    assert!((3599..=3601).contains(&expires), "{expires}");
    assert_eq!(rotated.url, old.url, "the URL stays");

    // Only the old secret, then only the new one: both verify.
    receiver.trust(&[&original_secret]).await;
    checkout_and_pay(&gate, &mut payments, "order-old-only").await;
    receiver.wait_for(2).await;
    receiver.trust(&[&rotated.secret]).await;
    checkout_and_pay(&gate, &mut payments, "order-new-only").await;
    receiver.wait_for(3).await;
    assert_eq!(receiver.received().await["invalid"], 0, "no delivery failed verification");

    // A 1 s grace: once it is over, the previous secret no longer signs.
    let next = hooks.rotate_webhook_secret(pb::RotateWebhookSecretRequest { grace_seconds: 1 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    receiver.trust(&[&rotated.secret]).await;
    checkout_and_pay(&gate, &mut payments, "order-after-grace").await;
    wait_until(|| async { receiver.received().await["invalid"].as_u64().unwrap_or(0) > 0 }).await;
    receiver.trust(&[&next.get_ref().secret]).await;
    receiver.wait_for(4).await;
    let endpoint = hooks.get_webhook_endpoint(pb::GetWebhookEndpointRequest {}).await.unwrap().into_inner();
    assert_eq!((endpoint.active_secrets, endpoint.previous_secret_expires_at), (1, None));

    let too_long = hooks.rotate_webhook_secret(pb::RotateWebhookSecretRequest { grace_seconds: 700_000 }).await;
    let status = too_long.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("grace_seconds"), "{}", status.message());
    let audited = db.count("SELECT COUNT(*) FROM audit_events WHERE action = $1", "webhook_endpoint.secret_rotated");
    assert_eq!(audited.await, 2);
}

/// Issue 32 item 4: after a receiver outage, everything that failed since T is queued again, once
/// each; dry_run only counts; what succeeded, or failed before T, stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_that_failed_since_a_moment_are_recovered_once_each() {
    // Deliveries give up after 300 ms of failing.
    let mut env = FAST_RETRIES.to_vec();
    env.push(("PAYGATE_WEBHOOK_RETRY_WINDOW_MS", "300"));
    let Shop { api_key, gate, .. } = Shop::open(Backend::Sqlite, &env).await;
    let receiver = Receiver::start(0);
    let mut hooks = webhooks(&gate, &api_key).await;
    let secret = set_endpoint(&mut hooks, &receiver, &[]).await;
    receiver.trust(&[&secret]).await;
    let mut payments = gate.payments(&api_key).await;
    let failed_count = |hooks: Webhooks| async move {
        let mut hooks = hooks;
        let all = deliveries(&mut hooks).await;
        all.iter().filter(|d| d.status == WebhookDeliveryStatus::Failed as i32).count()
    };

    // One delivered, then an outage: one given up before T, three after.
    checkout_and_pay(&gate, &mut payments, "order-ok").await;
    receiver.wait_for(1).await;
    receiver.fail_next(1_000, 503).await;
    checkout_and_pay(&gate, &mut payments, "order-before-t").await;
    wait_until(|| async { failed_count(hooks.clone()).await == 1 }).await;
    let t = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for n in 0..3 {
        checkout_and_pay(&gate, &mut payments, &format!("order-after-{n}")).await;
    }
    wait_until(|| async { failed_count(hooks.clone()).await == 4 }).await;

    let since = Some(prost_types::Timestamp::from(t));
    let dry = hooks.recover_webhook_deliveries(pb::RecoverWebhookDeliveriesRequest { since, dry_run: true }).await;
    assert_eq!(dry.unwrap().into_inner().deliveries, 3);
    assert_eq!(failed_count(hooks.clone()).await, 4, "a dry run changes nothing");

    // The receiver is back: the three come, the one before T and the delivered one do not.
    receiver.fail_next(0, 503).await;
    let done = hooks.recover_webhook_deliveries(pb::RecoverWebhookDeliveriesRequest { since, dry_run: false }).await;
    assert_eq!(done.unwrap().into_inner().deliveries, 3);
    let received = receiver.wait_for(4).await;
    let orders: Vec<&str> = received.iter().filter_map(|r| r["payment_id"].as_str()).collect();
    assert_eq!(orders.len(), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().await["received"].as_array().unwrap().len(), 4, "each once");
    assert_eq!(failed_count(hooks.clone()).await, 1, "the one before T stays failed");
    let again = hooks.recover_webhook_deliveries(pb::RecoverWebhookDeliveriesRequest { since, dry_run: false }).await;
    assert_eq!(again.unwrap().into_inner().deliveries, 0, "nothing failed since: nothing requeued");

    let missing = hooks.recover_webhook_deliveries(pb::RecoverWebhookDeliveriesRequest::default()).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().contains("since"), "{}", missing.message());
}
