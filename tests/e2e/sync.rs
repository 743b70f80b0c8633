//! SyncPayment (issue 31 item 1): asking the provider now, through the real binaries and the
//! simulator's Payment Status API, on both databases.

use std::time::Duration;

use paygate::proto::v1::{self as pb, PaymentStatus};
use tonic::Code;

use crate::support::*;

fn by_uid(merchant_uid: &str) -> pb::SyncPaymentRequest {
    pb::SyncPaymentRequest { lookup: Some(pb::sync_payment_request::Lookup::MerchantUid(merchant_uid.into())) }
}

fn by_id(payment_id: &str) -> pb::SyncPaymentRequest {
    pb::SyncPaymentRequest { lookup: Some(pb::sync_payment_request::Lookup::PaymentId(payment_id.into())) }
}

async fn kinds(client: &mut Payments, payment_id: &str) -> Vec<String> {
    let request = pb::ListPaymentEventsRequest { payment_id: payment_id.into(), page_size: 100, ..Default::default() };
    client.list_payment_events(request).await.unwrap().into_inner().events.into_iter().map(|e| e.kind).collect()
}

async fn status_calls(sim: &Simulator) -> u64 {
    let stats: serde_json::Value =
        sim.http.get(format!("{}/control/stats", sim.base_url())).send().await.unwrap().json().await.unwrap();
    stats["payment_status"].as_u64().unwrap()
}

/// Retries while the per-payment limit says to wait (it says how long).
async fn sync_when_allowed(client: &mut Payments, request: pb::SyncPaymentRequest) -> pb::SyncPaymentResponse {
    for _ in 0..20 {
        match client.sync_payment(request.clone()).await {
            Ok(answer) => return answer.into_inner(),
            Err(status) if status.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(status) => panic!("SyncPayment: {status:?}"),
        }
    }
    panic!("SyncPayment stayed rate-limited");
}

/// With `redis`, the per-payment limit is Redis's (shared by replicas); without, the process's.
async fn sync_applies_what_the_provider_knows(backend: Backend, redis: Option<RedisServer>) {
    let db = TestDb::new(backend).await;
    let sim = Simulator::start();
    let (_, key) = create_merchant(&db, "Acme");
    let (_, other_key) = create_merchant(&db, "Other");
    // Sweep off (a day), so only SyncPayment can learn anything here.
    let mut env =
        vec![("PAYGATE_SWEEP_INTERVAL_MS", "86400000".to_owned()), ("PAYGATE_SYNC_MIN_INTERVAL_MS", "1000".into())];
    if let Some(redis) = &redis {
        env.push(("PAYGATE_REDIS_URL", redis.url()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gate = Paygate::start(&db, &env);
    let channel =
        gate.channels(&key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    sim.add_project(PROJECT_KEY, SECRET_KEY, &gate.http_url(&channel.get_ref().pingback_path), 3).await;
    let mut payments = gate.payments(&key).await;

    // Paid at Paymentwall; its pingback never came.
    let session = payments.create_checkout_session(checkout_request("main", "order-sync")).await.unwrap().into_inner();
    let sim_session = sim.open(&session.redirect_url).await;
    // Before the buyer pays: the provider knows nothing, nothing changes.
    let before = payments.sync_payment(by_uid("order-sync")).await.unwrap().into_inner();
    assert!(!before.changed);
    assert_eq!(before.payment.unwrap().status, PaymentStatus::Ready as i32);
    assert!(before.provider_says.contains("Paymentwall knows no payment"), "{}", before.provider_says);
    // Asked again at once: the per-payment limit answers, without asking the provider.
    let calls = status_calls(&sim).await;
    let limited = payments.sync_payment(by_id(&session.payment_id)).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{}", limited.message());
    assert!(limited.message().contains("retry in"), "{}", limited.message());
    assert_eq!(status_calls(&sim).await, calls, "a limited sync never reaches the provider");

    let paid = sim.control(&format!("/sessions/{sim_session}/pay-silently"), None).await;
    let synced = sync_when_allowed(&mut payments, by_uid("order-sync")).await;
    assert!(synced.changed, "{synced:?}");
    let payment = synced.payment.unwrap();
    assert_eq!(payment.status, PaymentStatus::Paid as i32);
    assert_eq!(payment.provider_ref, paid["reference"].as_str().unwrap());
    assert!(payment.test, "a TEST channel's payment learned by asking is a test payment");
    assert!(synced.provider_says.starts_with("Paymentwall: paid"), "{}", synced.provider_says);
    assert_eq!(kinds(&mut payments, &session.payment_id).await, ["payment.paid", "payment.synced"]);

    // Nothing new at the provider: no change, no event.
    let again = sync_when_allowed(&mut payments, by_id(&session.payment_id)).await;
    assert!(!again.changed);
    assert_eq!(kinds(&mut payments, &session.payment_id).await, ["payment.paid", "payment.synced"]);

    // Refunded at Paymentwall, its type 2 never sent: the sync confirms the pending refund.
    let behaviour = serde_json::json!({ "ticket_pingbacks": false });
    let url = format!("{}/control/behaviour", sim.base_url());
    assert_eq!(sim.http.post(url).json(&behaviour).send().await.unwrap().status(), 204);
    let refund = pb::RefundPaymentRequest {
        payment_id: session.payment_id.clone(),
        reason: "customer asked".into(),
        ..Default::default()
    };
    payments.refund_payment(refund).await.unwrap();
    assert_eq!(get_payment(&mut payments, &session.payment_id).await.status, PaymentStatus::CancelPending as i32);
    let refunded = sync_when_allowed(&mut payments, by_id(&session.payment_id)).await;
    assert!(refunded.changed);
    assert_eq!(refunded.payment.unwrap().status, PaymentStatus::Cancelled as i32);
    assert_eq!(
        kinds(&mut payments, &session.payment_id).await,
        ["payment.paid", "payment.synced", "payment.cancel_pending", "payment.cancelled", "payment.synced"]
    );

    // Another merchant's key cannot reach it; a bad lookup names its field.
    let mut others = gate.payments(&other_key).await;
    assert_eq!(others.sync_payment(by_id(&session.payment_id)).await.unwrap_err().code(), Code::NotFound);
    let bad = payments.sync_payment(pb::SyncPaymentRequest { lookup: None }).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("lookup"), "{}", bad.message());

    // A channel whose secret Paymentwall does not know: its refusal, in its words (never "no payment").
    let mut wrong = channel_request(&sim, "wrong-secret", pb::ChannelMode::Test);
    wrong.paymentwall.as_mut().unwrap().secret_key = "0000000000000000".into();
    gate.channels(&key).await.create_channel(wrong).await.unwrap();
    let unsigned = payments.create_checkout_session(checkout_request("wrong-secret", "order-ws")).await.unwrap();
    let refused = payments.sync_payment(by_id(&unsigned.get_ref().payment_id)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{}", refused.message());
    assert!(refused.message().contains("Wrong signature"), "{}", refused.message());

    // A channel whose provider cannot be reached: UNAVAILABLE naming it, the payment untouched.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut unreachable = channel_request(&sim, "dead", pb::ChannelMode::Test);
    unreachable.paymentwall.as_mut().unwrap().api_base_url = format!("http://{dead}");
    gate.channels(&key).await.create_channel(unreachable).await.unwrap();
    let stranded = payments.create_checkout_session(checkout_request("dead", "order-dead")).await.unwrap().into_inner();
    let status = payments.sync_payment(by_id(&stranded.payment_id)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(status.message().contains("Paymentwall"), "{}", status.message());
    assert_eq!(get_payment(&mut payments, &stranded.payment_id).await.status, PaymentStatus::Ready as i32);
    assert!(kinds(&mut payments, &stranded.payment_id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_applies_what_the_provider_knows_postgres() {
    sync_applies_what_the_provider_knows(Backend::Postgres, Some(RedisServer::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_applies_what_the_provider_knows_sqlite() {
    sync_applies_what_the_provider_knows(Backend::Sqlite, None).await;
}

/// The sweep stops asking about a checkout nobody paid for `PAYGATE_SWEEP_READY_UNTIL_MS` (its
/// claims go to payments that may still be stuck); SyncPayment still asks about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_checkout_is_left_to_sync_payment() {
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let (_, key) = create_merchant(&db, "Acme");
    let env = [
        ("PAYGATE_SWEEP_INTERVAL_MS", "100"),
        ("PAYGATE_SWEEP_READY_AFTER_MS", "1"),
        ("PAYGATE_SWEEP_READY_UNTIL_MS", "1500"),
        ("PAYGATE_SWEEP_RECHECK_MS", "100"),
    ];
    let gate = Paygate::start(&db, &env);
    let channel =
        gate.channels(&key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    sim.add_project(PROJECT_KEY, SECRET_KEY, &gate.http_url(&channel.get_ref().pingback_path), 3).await;
    let mut payments = gate.payments(&key).await;
    let fresh = payments.create_checkout_session(checkout_request("main", "order-fresh")).await.unwrap().into_inner();
    let old = payments.create_checkout_session(checkout_request("main", "order-old")).await.unwrap().into_inner();
    let (fresh_session, old_session) = (sim.open(&fresh.redirect_url).await, sim.open(&old.redirect_url).await);
    // Past the age limit, the buyer pays both at last; neither pingback arrives.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let fresh_again =
        payments.create_checkout_session(checkout_request("main", "order-fresh-2")).await.unwrap().into_inner();
    let fresh_again_session = sim.open(&fresh_again.redirect_url).await;
    for session in [&fresh_session, &old_session, &fresh_again_session] {
        sim.control(&format!("/sessions/{session}/pay-silently"), None).await;
    }
    // The young checkout is repaired by the sweep; the two abandoned ones are left alone.
    wait_for_status(&mut payments, &fresh_again.payment_id, PaymentStatus::Paid).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in [&fresh.payment_id, &old.payment_id] {
        assert_eq!(get_payment(&mut payments, id).await.status, PaymentStatus::Ready as i32, "{id}");
    }
    // Asked on demand, the provider's truth still applies.
    let synced = payments.sync_payment(by_id(&old.payment_id)).await.unwrap().into_inner();
    assert_eq!(synced.payment.unwrap().status, PaymentStatus::Paid as i32);
}
