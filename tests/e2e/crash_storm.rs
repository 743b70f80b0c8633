//! A crash storm on PostgreSQL: payments completing (pingbacks retried by the simulator until
//! `OK`) and refunds retried by their callers with idempotency keys, while paygate is killed -9
//! at random moments, again and again. Afterwards the books must match what the provider side
//! recorded: no payment lost, no refund ticket doubled, no refund reported accepted without a
//! ticket, and every refunded amount counted once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use paygate::proto::v1::{self as pb, CancellationStatus, CancellationTrigger, PaymentStatus};
use rand::Rng;
use tonic::Code;

use crate::support::*;

const PAYMENTS: usize = 12;
const ROUNDS: usize = 12;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Full refunds for even payments, 300 of 999 for odd ones.
fn refund_amount(i: usize) -> Option<i64> {
    (i % 2 == 1).then_some(300)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_storm_loses_doubles_and_invents_nothing() {
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    // Fixed ports, so the simulator's retries and the callers find paygate again after a restart.
    let grpc = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let env = [
        ("PAYGATE_GRPC_ADDR", grpc.as_str()),
        ("PAYGATE_HTTP_ADDR", http.as_str()),
        ("PAYGATE_IDEMPOTENCY_LEASE_MS", "500"),
        ("PAYGATE_PROVIDER_TIMEOUT_MS", "800"),
        ("PAYGATE_SWEEP_INTERVAL_MS", "200"),
        ("PAYGATE_SWEEP_PENDING_AFTER_MS", "1500"),
        ("PAYGATE_SWEEP_RECHECK_MS", "300"),
    ];
    let mut gate = Paygate::start(&db, &env);
    let channel = gate
        .channels(&api_key)
        .await
        .create_channel(channel_request(&sim, "main", pb::ChannelMode::Test))
        .await
        .unwrap()
        .into_inner();
    sim.add_project(PROJECT_KEY, SECRET_KEY, &gate.http_url(&channel.pingback_path), 3).await;
    // The provider answers tickets a little slowly, so kills land during sends too.
    let behaviour = serde_json::json!({ "ticket_delay_ms": 400 });
    let url = format!("{}/control/behaviour", sim.base_url());
    assert_eq!(sim.http.post(&url).json(&behaviour).send().await.unwrap().status(), 204);

    let mut payments = gate.payments(&api_key).await;
    let mut orders = Vec::new(); // (payment id, sim session)
    for i in 0..PAYMENTS {
        let session = payments.create_checkout_session(checkout_request("main", &format!("storm-{i}"))).await;
        let session = session.unwrap().into_inner();
        orders.push((session.payment_id, sim.open(&session.redirect_url).await));
    }

    // Every refund's caller retries with its key until it gets an answer; answers are kept.
    let answers: Arc<Mutex<HashMap<usize, pb::Cancellation>>> = Arc::default();
    let callers: Vec<_> = orders
        .iter()
        .enumerate()
        .map(|(i, (payment_id, _))| {
            let (grpc, api_key, payment_id, answers) =
                (grpc.clone(), api_key.clone(), payment_id.clone(), answers.clone());
            tokio::spawn(async move {
                let request = pb::RefundPaymentRequest {
                    payment_id,
                    amount: refund_amount(i).map(|amount_minor| pb::Money { amount_minor, currency: "USD".into() }),
                    reason: "storm".into(),
                    expected_refundable_amount: None,
                    idempotency_key: format!("storm-refund-{i}"),
                };
                let deadline = Instant::now() + Duration::from_secs(90);
                while Instant::now() < deadline {
                    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}")).unwrap();
                    if let Ok(channel) = channel.connect_timeout(Duration::from_millis(300)).connect().await {
                        let mut client = pb::payment_service_client::PaymentServiceClient::with_interceptor(
                            channel,
                            Bearer::new(&api_key),
                        );
                        match client.refund_payment(request.clone()).await {
                            Ok(c) => {
                                answers.lock().unwrap().insert(i, c.into_inner());
                                return;
                            }
                            // Not paid yet, in flight elsewhere, paygate gone mid-call: try again.
                            Err(s) if s.code() == Code::FailedPrecondition => {
                                assert!(s.message().contains("only a paid payment"), "{i}: {s:?}");
                            }
                            Err(_) => {}
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("refund {i} never got an answer");
            })
        })
        .collect();

    let per_round = PAYMENTS.div_ceil(ROUNDS);
    for round in 0..ROUNDS {
        for (_, session) in orders.iter().skip(round * per_round).take(per_round) {
            sim.control(&format!("/sessions/{session}/pay"), None).await;
        }
        let up_for = rand::rng().random_range(50..600);
        tokio::time::sleep(Duration::from_millis(up_for)).await;
        gate.process.kill9();
        gate = Paygate::start(&db, &env);
    }

    // Calm: every caller gets its answer, every refund settles (an unknown outcome by the sweep).
    for caller in callers {
        caller.await.unwrap();
    }
    let mut payments = gate.payments(&api_key).await;
    let open = "SELECT COUNT(*) FROM cancellations WHERE status = 'REQUESTED' AND payment_id LIKE $1";
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.count(open, "pay_%").await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What is still open can only be a ticket that never reached the provider (killed after the
    // send was recorded, before the request left): an operator, seeing none there, fails it.
    for (i, (payment_id, session)) in orders.iter().enumerate() {
        let p = get_payment(&mut payments, payment_id).await;
        for c in p.cancellations.iter().filter(|c| c.status != CancellationStatus::Succeeded as i32) {
            if c.status == CancellationStatus::OutcomeUnknown as i32 {
                let tickets = sim.session(session).await["tickets"].as_array().unwrap().len();
                assert_eq!(tickets, 0, "{i}: unknown although the provider has its ticket: {p:?}");
                let resolve = pb::ResolveCancellationRequest {
                    cancellation_id: c.cancellation_id.clone(),
                    resolution: pb::Resolution::Failed as i32,
                    note: "no such refund at Paymentwall".into(),
                };
                payments.resolve_cancellation(resolve).await.unwrap();
            } else {
                assert_eq!(c.status, CancellationStatus::Failed as i32, "{i}: still open: {p:?}");
            }
        }
    }

    let answers = answers.lock().unwrap().clone();
    let mut refunded = 0;
    for (i, (payment_id, session)) in orders.iter().enumerate() {
        let p = get_payment(&mut payments, payment_id).await;
        let remote = sim.session(session).await;
        let tickets = remote["tickets"].as_array().unwrap().len();
        assert!(p.status != PaymentStatus::Ready as i32, "{i}: paid at the provider, lost at paygate: {p:?}");
        assert!(tickets <= 1, "{i}: a refund ticket was sent twice: {remote}");
        let requests: Vec<&pb::Cancellation> =
            p.cancellations.iter().filter(|c| c.trigger == CancellationTrigger::MerchantRequest as i32).collect();
        let succeeded: Vec<&&pb::Cancellation> =
            requests.iter().filter(|c| c.status == CancellationStatus::Succeeded as i32).collect();
        assert_eq!(succeeded.len(), tickets, "{i}: refunds recorded vs tickets the provider got: {p:?} / {remote}");
        assert!(p.cancellations.iter().all(|c| c.trigger == CancellationTrigger::MerchantRequest as i32), "{i}: {p:?}");
        let expected = if tickets == 1 { refund_amount(i).unwrap_or(999) } else { 0 };
        let cancelled = p.cancelled_amount.as_ref().unwrap().amount_minor;
        assert_eq!(cancelled, expected, "{i}: refunded amount counted once: {p:?}");
        assert_eq!(p.refundable_amount.as_ref().unwrap().amount_minor, 999 - cancelled, "{i}: nothing stays reserved");
        let answer = answers.get(&i).expect("every caller got an answer");
        if answer.ticket_state == pb::TicketState::Accepted as i32
            || answer.status == CancellationStatus::Succeeded as i32
        {
            assert_eq!(tickets, 1, "{i}: reported accepted without a ticket: {answer:?}");
        }
        refunded += tickets;
    }
    let unknown = answers.values().filter(|c| c.status == CancellationStatus::OutcomeUnknown as i32).count();
    let opened =
        db.count("SELECT COUNT(*) FROM cancellations WHERE status = 'FAILED' AND payment_id LIKE $1", "pay_%").await;
    eprintln!(
        "crash storm: {ROUNDS} kills, {PAYMENTS} payments, {refunded} refunds reached the provider, \
         {unknown} answered OUTCOME_UNKNOWN, {opened} resolved FAILED"
    );
    assert!(refunded > 0);
}
