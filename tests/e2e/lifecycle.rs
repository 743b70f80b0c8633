//! The whole payment lifecycle through the real binaries: refunds (full, partial, concurrent,
//! refused, unreachable), reversals nobody asked for, reviews, out-of-order notifications,
//! subscriptions, idempotency (including a crash mid-refund), payment methods, and the sweep.

use std::time::Duration;

use paygate::proto::v1::{self as pb, CancellationStatus, CancellationTrigger, PaymentStatus, SubscriptionStatus};
use tonic::Code;

use crate::support::*;

/// A paygate, a simulator, a merchant with a TEST channel "main" registered with the simulator.
struct World {
    db: TestDb,
    sim: Simulator,
    gate: Paygate,
    api_key: String,
    payments: Payments,
}

impl World {
    async fn start(backend: Backend, env: &[(&str, &str)]) -> Self {
        let db = TestDb::new(backend).await;
        let sim = Simulator::start();
        Self::start_with(db, sim, env, None).await
    }

    /// On `db`, with the channel's provider calls going to `api_base_url` (default: the simulator).
    async fn start_with(db: TestDb, sim: Simulator, env: &[(&str, &str)], api_base_url: Option<String>) -> Self {
        let (_, api_key) = create_merchant(&db, "Acme");
        let gate = Paygate::start(&db, env);
        let mut channels = gate.channels(&api_key).await;
        let mut request = channel_request(&sim, "main", pb::ChannelMode::Test);
        if let Some(url) = api_base_url {
            request.paymentwall.as_mut().unwrap().api_base_url = url;
        }
        let channel = channels.create_channel(request).await.unwrap().into_inner();
        sim.add_project(PROJECT_KEY, SECRET_KEY, &gate.http_url(&channel.pingback_path), 3).await;
        let payments = gate.payments(&api_key).await;
        Self { db, sim, gate, api_key, payments }
    }

    /// paygate killed -9 and started again on the same database with `env`.
    async fn restart(&mut self, env: &[(&str, &str)]) {
        self.gate.process.kill9();
        self.gate = Paygate::start(&self.db, env);
        self.sim.add_project(PROJECT_KEY, SECRET_KEY, &self.gate.http_url("/pingback/paymentwall/main"), 3).await;
        self.payments = self.gate.payments(&self.api_key).await;
    }

    /// The one cancellation's (status, ticket_state) as stored.
    async fn stored_ticket(&self, payment_id: &str) -> (String, String) {
        let pool = self.db.pool().await;
        let row = sqlx::query("SELECT status, ticket_state FROM cancellations WHERE payment_id = $1")
            .bind(payment_id)
            .fetch_one(&pool)
            .await
            .expect("one cancellation");
        pool.close().await;
        use sqlx::Row;
        (row.get::<String, _>(0), row.get::<Option<String>, _>(1).unwrap_or_default())
    }

    /// A checkout for `amount_minor` USD, opened on the simulator; returns (payment id, sim session).
    async fn checkout(&mut self, uid: &str, amount_minor: i64) -> (String, String) {
        let mut request = checkout_request("main", uid);
        request.amount = Some(pb::Money { amount_minor, currency: "USD".into() });
        let session = self.payments.create_checkout_session(request).await.unwrap().into_inner();
        let sim_session = self.sim.open(&session.redirect_url).await;
        (session.payment_id, sim_session)
    }

    /// A paid payment; returns (payment id, sim session).
    async fn paid(&mut self, uid: &str, amount_minor: i64) -> (String, String) {
        let (payment_id, sim_session) = self.checkout(uid, amount_minor).await;
        self.sim.control(&format!("/sessions/{sim_session}/pay"), None).await;
        wait_for_status(&mut self.payments, &payment_id, PaymentStatus::Paid).await;
        (payment_id, sim_session)
    }

    async fn pingback(&self, sim_session: &str, pingback_type: u32, reason: Option<u32>) {
        let body = serde_json::json!({ "type": pingback_type, "reason": reason });
        self.sim.control(&format!("/sessions/{sim_session}/pingback"), Some(body)).await;
    }

    async fn tickets(&self) -> u64 {
        let url = format!("{}/control/stats", self.sim.base_url());
        let stats: serde_json::Value = self.sim.http.get(url).send().await.unwrap().json().await.unwrap();
        stats["tickets"].as_u64().unwrap()
    }

    async fn behave(&self, behaviour: serde_json::Value) {
        let url = format!("{}/control/behaviour", self.sim.base_url());
        assert_eq!(self.sim.http.post(url).json(&behaviour).send().await.unwrap().status(), 204);
    }
}

fn refund(payment_id: &str, amount: Option<i64>, key: &str) -> pb::RefundPaymentRequest {
    pb::RefundPaymentRequest {
        payment_id: payment_id.into(),
        amount: amount.map(|amount_minor| pb::Money { amount_minor, currency: "USD".into() }),
        reason: "customer asked".into(),
        expected_refundable_amount: None,
        idempotency_key: key.into(),
    }
}

fn money(m: &Option<pb::Money>) -> i64 {
    m.as_ref().map(|m| m.amount_minor).unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refund_is_requested_then_confirmed_by_its_type_2() {
    let mut w = World::start(Backend::Postgres, &[]).await;

    // Full refund: REQUESTED, then CANCEL_PENDING, then the type 2 (reason 9) makes it CANCELLED.
    let (full, _) = w.paid("order-full", 999).await;
    let c = w.payments.refund_payment(refund(&full, None, "")).await.unwrap().into_inner();
    assert_eq!((c.status, money(&c.amount)), (CancellationStatus::Requested as i32, 999));
    assert_eq!(c.trigger, CancellationTrigger::MerchantRequest as i32);
    let p = get_payment(&mut w.payments, &full).await;
    assert!(p.status == PaymentStatus::CancelPending as i32 || p.status == PaymentStatus::Cancelled as i32);
    let p = wait_for_status(&mut w.payments, &full, PaymentStatus::Cancelled).await;
    assert_eq!((money(&p.cancelled_amount), money(&p.refundable_amount)), (999, 0));
    assert_eq!(p.cancellations.len(), 1);
    assert_eq!(
        (p.cancellations[0].status, p.cancellations[0].provider_reason),
        (CancellationStatus::Succeeded as i32, 9)
    );
    let status = w.payments.refund_payment(refund(&full, Some(1), "")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "nothing left: {}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_refunds_add_up_and_never_exceed_what_is_left() {
    let mut w = World::start(Backend::Postgres, &[]).await;

    // Two partial refunds, then more than what is left.
    let (part, _) = w.paid("order-part", 1000).await;
    w.payments.refund_payment(refund(&part, Some(300), "")).await.unwrap();
    let p = wait_for_status(&mut w.payments, &part, PaymentStatus::PartialCancelled).await;
    assert_eq!((money(&p.cancelled_amount), money(&p.refundable_amount)), (300, 700));
    let mut guarded = refund(&part, Some(200), "");
    guarded.expected_refundable_amount = Some(650);
    let status = w.payments.refund_payment(guarded.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("700 is refundable"), "{}", status.message());
    guarded.expected_refundable_amount = Some(700);
    w.payments.refund_payment(guarded).await.unwrap();
    wait_until(|| {
        let mut payments = w.payments.clone();
        let part = part.clone();
        async move { money(&get_payment(&mut payments, &part).await.cancelled_amount) == 500 }
    })
    .await;
    let p = get_payment(&mut w.payments, &part).await;
    assert_eq!(p.status, PaymentStatus::PartialCancelled as i32);
    assert_eq!(p.cancellations.iter().map(|c| c.provider_reason).collect::<Vec<_>>(), [10, 10]);
    let before = w.tickets().await;
    let status = w.payments.refund_payment(refund(&part, Some(501), "")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("exceeds the refundable amount 500"), "{}", status.message());
    assert_eq!(w.tickets().await, before, "nothing was sent");
    // Bad refund requests name the field.
    let mut no_reason = refund(&part, Some(1), "");
    no_reason.reason.clear();
    let status = w.payments.refund_payment(no_reason).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("reason"));
    let mut wrong_currency = refund(&part, Some(1), "");
    wrong_currency.amount.as_mut().unwrap().currency = "KRW".into();
    let status = w.payments.refund_payment(wrong_currency).await.unwrap_err();
    assert!(status.message().contains("amount.currency"), "{}", status.message());
    // A payment that was never paid cannot be refunded.
    let (unpaid, _) = w.checkout("order-unpaid", 500).await;
    let status = w.payments.refund_payment(refund(&unpaid, None, "")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_the_provider_refuses_leaves_the_amount_refundable() {
    let mut w = World::start(Backend::Postgres, &[]).await;

    // The provider refuses: FAILED_PRECONDITION with its words; the amount is refundable again.
    let (refused, _) = w.paid("order-refused", 800).await;
    w.behave(serde_json::json!({ "refuse_tickets": "Refund window has passed" })).await;
    let status = w.payments.refund_payment(refund(&refused, None, "")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("Refund window has passed"), "{}", status.message());
    let p = get_payment(&mut w.payments, &refused).await;
    assert_eq!((p.status, money(&p.refundable_amount)), (PaymentStatus::Paid as i32, 800));
    assert_eq!(p.cancellations[0].status, CancellationStatus::Failed as i32);
    w.behave(serde_json::json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_to_an_unreachable_provider_is_unavailable_and_leaves_nothing_requested() {
    let mut w = World::start(Backend::Postgres, &[]).await;

    // The provider cannot be reached: UNAVAILABLE, nothing requested stays behind.
    let mut channels = w.gate.channels(&w.api_key).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut unreachable = channel_request(&w.sim, "dead", pb::ChannelMode::Test);
    unreachable.paymentwall.as_mut().unwrap().api_base_url = format!("http://{dead}");
    let dead_channel = channels.create_channel(unreachable).await.unwrap().into_inner();
    let mut request = checkout_request("dead", "order-dead");
    request.amount = Some(pb::Money { amount_minor: 700, currency: "USD".into() });
    let session = w.payments.create_checkout_session(request).await.unwrap().into_inner();
    let query =
        Pingback::new(&session.payment_id).uid("user-40012").one_time().reference("b700").test().signed(SECRET_KEY);
    let url = format!("{}?{query}", w.gate.http_url(&dead_channel.pingback_path));
    assert_eq!(http_client().get(url).send().await.unwrap().text().await.unwrap(), "OK");
    let status = w.payments.refund_payment(refund(&session.payment_id, None, "")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    let p = get_payment(&mut w.payments, &session.payment_id).await;
    assert_eq!((p.status, money(&p.refundable_amount)), (PaymentStatus::Paid as i32, 700));
    assert!(p.cancellations.iter().all(|c| c.status != CancellationStatus::Requested as i32));
    let _ = &w.db;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_refunds_never_exceed_what_was_paid() {
    let mut w = World::start(Backend::Postgres, &[]).await;
    let (payment_id, _) = w.paid("order-race", 999).await;
    let racing = (0..20).map(|_| {
        let mut client = w.payments.clone();
        let request = refund(&payment_id, Some(100), "");
        tokio::spawn(async move { client.refund_payment(request).await })
    });
    let results = futures_util::future::join_all(racing).await;
    let accepted: Vec<i64> =
        results.iter().filter_map(|r| r.as_ref().unwrap().as_ref().ok()).map(|c| money(&c.get_ref().amount)).collect();
    for rejected in results.iter().filter_map(|r| r.as_ref().unwrap().as_ref().err()) {
        assert!(
            matches!(rejected.code(), Code::FailedPrecondition | Code::Aborted),
            "a refused refund is a clear refusal: {rejected:?}"
        );
    }
    let total: i64 = accepted.iter().sum();
    assert!(total <= 999, "refunded {total} of 999");
    assert_eq!(accepted.len(), 9, "exactly as many 100s as fit in 999");
    assert_eq!(w.tickets().await, accepted.len() as u64, "one ticket per accepted refund, none for the others");
    // Every reversal the provider reports is applied, and the books add up.
    wait_until(|| {
        let mut payments = w.payments.clone();
        let payment_id = payment_id.clone();
        async move { money(&get_payment(&mut payments, &payment_id).await.cancelled_amount) == total }
    })
    .await;
    let p = get_payment(&mut w.payments, &payment_id).await;
    assert_eq!((p.status, money(&p.refundable_amount)), (PaymentStatus::PartialCancelled as i32, 999 - total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chargeback_nobody_asked_for_reverses_the_whole_payment() {
    let mut w = World::start(Backend::Sqlite, &[]).await;

    // A chargeback nobody asked for reverses the whole payment.
    let (charged_back, session) = w.paid("order-cb", 1500).await;
    w.pingback(&session, 2, Some(1)).await;
    let p = wait_for_status(&mut w.payments, &charged_back, PaymentStatus::Cancelled).await;
    assert_eq!(money(&p.cancelled_amount), 1500);
    let c = &p.cancellations[0];
    assert_eq!(
        (c.trigger, c.status, money(&c.amount)),
        (CancellationTrigger::Chargeback as i32, CancellationStatus::Succeeded as i32, 1500)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fraud_reversal_is_a_provider_reversal() {
    let mut w = World::start(Backend::Sqlite, &[]).await;

    // Fraud (reason 2) is a provider reversal.
    let (fraud, session) = w.paid("order-fraud", 400).await;
    w.pingback(&session, 2, Some(2)).await;
    let p = wait_for_status(&mut w.payments, &fraud, PaymentStatus::Cancelled).await;
    assert_eq!(p.cancellations[0].trigger, CancellationTrigger::Provider as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_accepted_pays_and_a_review_declined_fails() {
    let mut w = World::start(Backend::Sqlite, &[]).await;

    // Review accepted: READY -> PENDING_REVIEW -> PAID. Declined: -> FAILED.
    let (accepted, session) = w.checkout("order-review-ok", 600).await;
    w.pingback(&session, 200, None).await;
    wait_for_status(&mut w.payments, &accepted, PaymentStatus::PendingReview).await;
    w.pingback(&session, 201, None).await;
    let p = wait_for_status(&mut w.payments, &accepted, PaymentStatus::Paid).await;
    assert!(!p.provider_ref.is_empty());
    let (declined, session) = w.checkout("order-review-no", 600).await;
    w.pingback(&session, 200, None).await;
    wait_for_status(&mut w.payments, &declined, PaymentStatus::PendingReview).await;
    w.pingback(&session, 202, None).await;
    let p = wait_for_status(&mut w.payments, &declined, PaymentStatus::Failed).await;
    assert!(p.failed_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_before_its_completion_leaves_the_payment_cancelled() {
    let mut w = World::start(Backend::Sqlite, &[]).await;

    // Out of order: the reversal (type 2) arrives before the completion (type 0). The payment ends
    // CANCELLED, and the late completion is acknowledged without moving it back.
    let (late, session) = w.checkout("order-late", 900).await;
    w.pingback(&session, 2, Some(9)).await;
    let p = wait_for_status(&mut w.payments, &late, PaymentStatus::Cancelled).await;
    assert_eq!(money(&p.cancelled_amount), 900);
    let events = "SELECT COUNT(*) FROM payment_events WHERE payment_id = $1";
    let before = w.db.count(events, &late).await;
    w.pingback(&session, 0, None).await;
    w.sim.wait_delivered(&session, 1).await;
    assert_eq!(get_payment(&mut w.payments, &late).await.status, PaymentStatus::Cancelled as i32);
    assert_eq!(w.db.count(events, &late).await, before, "the late completion changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_renews_twice_and_is_cancelled() {
    let mut w = World::start(Backend::Postgres, &[]).await;
    let mut request = checkout_request("main", "gold-monthly");
    request.subscription =
        Some(pb::SubscriptionTerms { period_length: 1, period_type: "month".into(), recurring: true });
    let session = w.payments.create_checkout_session(request).await.unwrap().into_inner();
    assert!(session.subscription_id.starts_with("sub_"));
    assert_eq!(query_param(&session.redirect_url, "ag_type").as_deref(), Some("subscription"));
    assert_eq!(query_param(&session.redirect_url, "ag_period_type").as_deref(), Some("month"));
    let sim_session = w.sim.open(&session.redirect_url).await;
    w.sim.control(&format!("/sessions/{sim_session}/pay"), None).await;
    let first = wait_for_status(&mut w.payments, &session.payment_id, PaymentStatus::Paid).await;
    assert_eq!(first.subscription_id, session.subscription_id);

    // Bad terms name the field.
    let mut bad = checkout_request("main", "bad-terms");
    bad.subscription =
        Some(pb::SubscriptionTerms { period_length: 0, period_type: "fortnight".into(), recurring: true });
    let status = w.payments.create_checkout_session(bad).await.unwrap_err();
    assert!(
        status.message().contains("subscription.period_length")
            && status.message().contains("subscription.period_type")
    );

    // Two renewals: new payments, linked to the subscription, each with its own ref.
    for n in 1..=2 {
        let renewal = w.sim.control(&format!("/sessions/{sim_session}/renew"), None).await;
        let reference = renewal["reference"].as_str().unwrap().to_owned();
        let uid = format!("~gold-monthly/renewal/{n}");
        wait_until(|| {
            let mut payments = w.payments.clone();
            let uid = uid.clone();
            async move {
                let lookup = Some(pb::get_payment_request::Lookup::MerchantUid(uid));
                payments.get_payment(pb::GetPaymentRequest { lookup }).await.is_ok()
            }
        })
        .await;
        let lookup = Some(pb::get_payment_request::Lookup::MerchantUid(uid));
        let renewed = w.payments.get_payment(pb::GetPaymentRequest { lookup }).await.unwrap().into_inner();
        assert_eq!((renewed.status, renewed.provider_ref.as_str()), (PaymentStatus::Paid as i32, reference.as_str()));
        assert_eq!(renewed.subscription_id, session.subscription_id);
        assert_eq!(money(&renewed.amount), 999);
    }
    let all = w.payments.list_payments(pb::ListPaymentsRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.payments.len(), 3);

    // Refunding a renewal reverses that renewal, not the subscription's first payment (the type 2
    // names the first payment as goodsid and the renewal by its ref).
    let lookup = Some(pb::get_payment_request::Lookup::MerchantUid("~gold-monthly/renewal/2".into()));
    let second = w.payments.get_payment(pb::GetPaymentRequest { lookup }).await.unwrap().into_inner();
    w.payments.refund_payment(refund(&second.payment_id, None, "")).await.unwrap();
    wait_for_status(&mut w.payments, &second.payment_id, PaymentStatus::Cancelled).await;
    assert_eq!(get_payment(&mut w.payments, &session.payment_id).await.status, PaymentStatus::Paid as i32);

    // Cancel: the ticket asks Paymentwall to stop billing; its type 12 ends the subscription.
    let cancel =
        pb::CancelSubscriptionRequest { subscription_id: session.subscription_id.clone(), reason: "downgrade".into() };
    let requested = w.payments.cancel_subscription(cancel.clone()).await.unwrap().into_inner();
    assert!(requested.cancel_requested_at.is_some());
    assert_eq!(requested.renewals, 2);
    wait_until(|| {
        let mut payments = w.payments.clone();
        let cancel = cancel.clone();
        async move {
            payments.cancel_subscription(cancel).await.unwrap().into_inner().status
                == SubscriptionStatus::Cancelled as i32
        }
    })
    .await;
    assert_eq!(w.tickets().await, 2, "one refund ticket, one stop-billing ticket; asking again sends nothing");
    let status = w
        .payments
        .cancel_subscription(pb::CancelSubscriptionRequest {
            subscription_id: "sub_nope".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_idempotency_key_replays_its_answer_and_refuses_another_request() {
    let lease = [("PAYGATE_IDEMPOTENCY_LEASE_MS", "1000")];
    let mut w = World::start(Backend::Postgres, &lease).await;

    // Checkout: the same key and request give the first answer; another request is ABORTED.
    let mut request = checkout_request("main", "order-idem");
    request.idempotency_key = "checkout-1".into();
    let first = w.payments.create_checkout_session(request.clone()).await.unwrap().into_inner();
    let again = w.payments.create_checkout_session(request.clone()).await.unwrap().into_inner();
    assert_eq!(first, again);
    request.order_name = "something else".into();
    let status = w.payments.create_checkout_session(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert!(status.message().contains("different request"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_idempotency_keys_replay_refuse_and_survive_a_crash() {
    let lease = [("PAYGATE_IDEMPOTENCY_LEASE_MS", "1000")];
    let mut w = World::start(Backend::Postgres, &lease).await;

    // Refund: the same key and request -> the same cancellation, and one ticket.
    let (payment_id, _) = w.paid("order-idem-refund", 1000).await;
    let a = w.payments.refund_payment(refund(&payment_id, Some(100), "refund-1")).await.unwrap().into_inner();
    let b = w.payments.refund_payment(refund(&payment_id, Some(100), "refund-1")).await.unwrap().into_inner();
    assert_eq!(a.cancellation_id, b.cancellation_id);
    assert_eq!(w.tickets().await, 1);
    let status = w.payments.refund_payment(refund(&payment_id, Some(200), "refund-1")).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(w.tickets().await, 1);

    // A crash while the ticket is in flight: the retry after restart sends no second ticket.
    let (crashed, _) = w.paid("order-crash", 1000).await;
    w.behave(serde_json::json!({ "ticket_delay_ms": 1500 })).await;
    let in_flight = tokio::spawn({
        let mut client = w.payments.clone();
        let request = refund(&crashed, Some(250), "refund-crash");
        async move { client.refund_payment(request).await }
    });
    wait_until(|| async { w.tickets().await == 2 }).await;
    let World { db, sim, gate, api_key, .. } = w;
    drop(gate); // SIGKILL, mid-request
    let _ = in_flight.await;
    let gate = Paygate::start(&db, &lease);
    sim.add_project(PROJECT_KEY, SECRET_KEY, &gate.http_url("/pingback/paymentwall/main"), 3).await;
    let mut payments = gate.payments(&api_key).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // the dead request's lease runs out
    let retried = payments.refund_payment(refund(&crashed, Some(250), "refund-crash")).await.unwrap().into_inner();
    assert_eq!(money(&retried.amount), 250);
    // Its ticket may have arrived: never reported accepted, unless the provider's answer settled it.
    assert!(
        [CancellationStatus::OutcomeUnknown as i32, CancellationStatus::Succeeded as i32].contains(&retried.status),
        "{retried:?}"
    );
    let w = World { db, sim, gate, api_key, payments: payments.clone() };
    tokio::time::sleep(Duration::from_millis(1600)).await; // the first ticket's answer has come and gone
    assert_eq!(w.tickets().await, 2, "no duplicate ticket");
    let p = wait_for_status(&mut payments, &crashed, PaymentStatus::PartialCancelled).await;
    assert_eq!(money(&p.cancelled_amount), 250);
    assert_eq!(p.cancellations.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_repairs_payments_whose_pingbacks_were_lost() {
    let env = [
        ("PAYGATE_SWEEP_INTERVAL_MS", "200"),
        ("PAYGATE_SWEEP_READY_AFTER_MS", "300"),
        ("PAYGATE_SWEEP_PENDING_AFTER_MS", "300"),
        ("PAYGATE_SWEEP_RECHECK_MS", "300"),
    ];
    let mut w = World::start(Backend::Postgres, &env).await;
    // Paid at Paymentwall, but the pingback never arrived.
    let (lost, session) = w.checkout("order-lost", 1200).await;
    let paid = w.sim.control(&format!("/sessions/{session}/pay-silently"), None).await;
    let p = wait_for_status(&mut w.payments, &lost, PaymentStatus::Paid).await;
    assert_eq!(p.provider_ref, paid["reference"].as_str().unwrap());
    // Refunded at Paymentwall, but the type 2 never arrived.
    w.behave(serde_json::json!({ "ticket_pingbacks": false })).await;
    w.payments.refund_payment(refund(&lost, None, "")).await.unwrap();
    let p = wait_for_status(&mut w.payments, &lost, PaymentStatus::Cancelled).await;
    assert_eq!(money(&p.cancelled_amount), 1200);
    // A checkout nobody paid stays READY.
    let (unpaid, _) = w.checkout("order-never", 100).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(get_payment(&mut w.payments, &unpaid).await.status, PaymentStatus::Ready as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_methods_are_signed_and_cached() {
    let mut w = World::start(Backend::Sqlite, &[]).await;
    let list =
        |country: &str| pb::ListPaymentMethodsRequest { channel_key: "main".into(), country_code: country.into() };
    let first = w.payments.list_payment_methods(list("KR")).await.unwrap().into_inner();
    let ids: Vec<&str> = first.methods.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["cc", "kakaopay", "naverpay"]);
    let second = w.payments.list_payment_methods(list("KR")).await.unwrap().into_inner();
    assert_eq!(first, second);
    w.payments.list_payment_methods(list("US")).await.unwrap();
    let url = format!("{}/control/stats", w.sim.base_url());
    let stats: serde_json::Value = w.sim.http.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["payment_systems"], 2, "one call per country; the repeat came from the cache");
    let status = w.payments.list_payment_methods(list("korea")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let _ = w.payments.clone();
    let mut payments = w.payments.clone();
    let status = payments
        .list_payment_methods(pb::ListPaymentMethodsRequest { channel_key: "nope".into(), country_code: "KR".into() })
        .await
        .unwrap_err();
    assert!(status.message().contains("channel_key"));
}

/// A signed one-time pingback of `pingback_type` for `payment_id` under `reference`, sent to
/// `gate`'s channel "main"; its answer.
async fn send(gate: &Paygate, payment_id: &str, pingback_type: &str, reference: &str) -> String {
    Pingback::new(payment_id)
        .uid("user-40012")
        .one_time()
        .kind(pingback_type)
        .reference(reference)
        .test()
        .send(gate, "main")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_payment_paid_again_under_another_ref_is_a_second_payment() {
    let mut w = World::start(Backend::Sqlite, &[]).await;
    // A one-time payment paid, then paid again under another ref: a second payment, not silence.
    let (once, _) = w.paid("order-once", 500).await;
    assert_eq!(send(&w.gate, &once, "0", "b-second").await, "OK");
    let lookup = Some(pb::get_payment_request::Lookup::MerchantUid("~order-once/repeat/b-second".into()));
    let repeat = w.payments.get_payment(pb::GetPaymentRequest { lookup }).await.unwrap().into_inner();
    assert_eq!((repeat.status, repeat.provider_ref.as_str()), (PaymentStatus::Paid as i32, "b-second"));
    assert_eq!(send(&w.gate, &once, "0", "b-second").await, "OK", "the replay is a duplicate");
    let all = w.payments.list_payments(pb::ListPaymentsRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.payments.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_held_for_review_is_pending_review_then_paid_by_its_201() {
    let mut w = World::start(Backend::Sqlite, &[]).await;
    // A subscription renewal that goes through review: PENDING_REVIEW, then PAID by its 201.
    let mut request = checkout_request("main", "sub-1");
    request.subscription =
        Some(pb::SubscriptionTerms { period_length: 1, period_type: "week".into(), recurring: true });
    let session = w.payments.create_checkout_session(request).await.unwrap().into_inner();
    assert_eq!(send(&w.gate, &session.payment_id, "0", "b-first").await, "OK");
    assert_eq!(send(&w.gate, &session.payment_id, "200", "b-renew").await, "OK");
    let lookup = || Some(pb::get_payment_request::Lookup::MerchantUid("~sub-1/renewal/1".into()));
    let renewal = w.payments.get_payment(pb::GetPaymentRequest { lookup: lookup() }).await.unwrap().into_inner();
    assert_eq!(renewal.status, PaymentStatus::PendingReview as i32);
    assert_eq!(send(&w.gate, &session.payment_id, "201", "b-renew").await, "OK");
    let renewal = w.payments.get_payment(pb::GetPaymentRequest { lookup: lookup() }).await.unwrap().into_inner();
    assert_eq!(
        (renewal.status, renewal.subscription_id.as_str()),
        (PaymentStatus::Paid as i32, session.subscription_id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_pingback_for_an_unknown_payment_is_refused() {
    let w = World::start(Backend::Sqlite, &[]).await;
    // A valid pingback for a payment paygate does not know is refused (Paymentwall retries it).
    let answer = send(&w.gate, "pay_unknown", "0", "b-unknown").await;
    assert!(answer.contains("no such payment"), "{answer}");
    let _ = &w.db;
}

/// A signed type 0 pingback for `payment_id` under `reference`, sent to `gate`; its answer.
async fn completion(gate: &Paygate, payment_id: &str, reference: &str) -> String {
    Pingback::new(payment_id).uid("user-40012").reference(reference).test().send(gate, "main").await
}

/// (event kinds of `payment_id`, (outcome, deliveries) of each of its stored pingbacks by ref).
async fn stored_history(db: &TestDb, payment_id: &str) -> (Vec<String>, Vec<(String, String, i64)>) {
    use sqlx::Row;
    let pool = db.pool().await;
    let events = sqlx::query("SELECT kind FROM payment_events WHERE payment_id = $1 ORDER BY event_id")
        .bind(payment_id)
        .fetch_all(&pool)
        .await
        .unwrap();
    let pingbacks =
        sqlx::query("SELECT ref, outcome, deliveries FROM pingbacks WHERE payment_id = $1 AND type = 0 ORDER BY ref")
            .bind(payment_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    (
        events.iter().map(|row| row.get(0)).collect(),
        pingbacks.iter().map(|row| (row.get(0), row.get(1), row.get::<i64, _>(2))).collect(),
    )
}

/// A replica settles a pingback for a payment it created from the copy it kept, in one statement
/// that compares and sets the copy's version. Here the copy is stale (another replica settled
/// the payment under another ref): the statement changes nothing, and the pingback is decided
/// again from the row, as money under a new ref.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pingback_decided_from_a_stale_copy_is_decided_again_from_the_row() {
    let mut w = World::start(Backend::Postgres, &[]).await;
    let b = Paygate::start(&w.db, &[]);
    let session = w.payments.create_checkout_session(checkout_request("main", "order-stale")).await.unwrap();
    let payment_id = session.into_inner().payment_id;
    assert_eq!(completion(&b, &payment_id, "b-first").await, "OK");
    // On the replica that created it, whose copy still says READY.
    assert_eq!(completion(&w.gate, &payment_id, "b-second").await, "OK");
    let lookup =
        |uid: &str| pb::GetPaymentRequest { lookup: Some(pb::get_payment_request::Lookup::MerchantUid(uid.into())) };
    let first = w.payments.get_payment(lookup("order-stale")).await.unwrap().into_inner();
    assert_eq!((first.status, first.provider_ref.as_str()), (PaymentStatus::Paid as i32, "b-first"));
    let repeat = w.payments.get_payment(lookup("~order-stale/repeat/b-second")).await.unwrap().into_inner();
    assert_eq!((repeat.status, repeat.provider_ref.as_str()), (PaymentStatus::Paid as i32, "b-second"));
    // The first delivery again, on the replica whose copy was stale: a duplicate, nothing written.
    assert_eq!(completion(&w.gate, &payment_id, "b-first").await, "OK");
    let (events, pingbacks) = stored_history(&w.db, &payment_id).await;
    assert_eq!(events, ["payment.paid"], "one settlement, one event");
    assert_eq!(
        pingbacks,
        [("b-first".into(), "applied".into(), 2), ("b-second".into(), "applied".into(), 1)],
        "each delivery counted once, on its own record"
    );
}

/// A pingback stored earlier without a payment to apply it to takes its key: the one-statement
/// settlement fails whole on it (the payment does not move), and the reading path applies the
/// stored record, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_from_a_copy_never_moves_a_payment_whose_pingback_is_already_stored() {
    let mut w = World::start(Backend::Postgres, &[]).await;
    let session = w.payments.create_checkout_session(checkout_request("main", "order-early")).await.unwrap();
    let payment_id = session.into_inner().payment_id;
    let pool = w.db.pool().await;
    sqlx::query(
        "INSERT INTO pingbacks (pingback_id, channel_key, ref, type, unique_ref, query, outcome, payment_id, \
         received_at, last_seen_at) VALUES ('pb_early', 'main', 'b-early', 0, '', '', 'unmatched', $1, 0, 0)",
    )
    .bind(&payment_id)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(completion(&w.gate, &payment_id, "b-early").await, "OK");
    let lookup = Some(pb::get_payment_request::Lookup::PaymentId(payment_id.clone()));
    let paid = w.payments.get_payment(pb::GetPaymentRequest { lookup }).await.unwrap().into_inner();
    assert_eq!((paid.status, paid.provider_ref.as_str()), (PaymentStatus::Paid as i32, "b-early"));
    let (events, pingbacks) = stored_history(&w.db, &payment_id).await;
    assert_eq!(events, ["payment.paid"]);
    assert_eq!(pingbacks, [("b-early".into(), "applied".into(), 2)], "the stored record, now applied, counted again");
}

const LEASE: [(&str, &str); 1] = [("PAYGATE_IDEMPOTENCY_LEASE_MS", "1000")];

/// A World whose paygate reaches PostgreSQL through a proxy the test controls.
async fn behind_a_database_proxy(env: &[(&str, &str)]) -> (World, crate::support::proxy::TcpProxy) {
    let db = TestDb::new(Backend::Postgres).await;
    let target = url::Url::parse(&db.url).unwrap();
    let target = format!("{}:{}", target.host_str().unwrap(), target.port().unwrap_or(5432));
    let proxy = crate::support::proxy::TcpProxy::start(target.parse().unwrap()).await;
    // In clear text, so the proxy can see the statements go by.
    let proxied_url = format!("{}?sslmode=disable", db.url.replacen(&target, &proxy.addr.to_string(), 1));
    let mut env = env.to_vec();
    env.push(("PAYGATE_DATABASE_URL", proxied_url.as_str()));
    (World::start_with(db, Simulator::start(), &env, None).await, proxy)
}

/// Sends `request` and kills paygate -9 the moment its reservation commits; checks that the
/// reservation is stored and no ticket left.
async fn killed_at_the_reservation_commit(
    w: &mut World,
    proxy: &crate::support::proxy::TcpProxy,
    request: pb::RefundPaymentRequest,
) {
    let committed = proxy.trap_commit_after("INSERT INTO cancellations");
    let payment_id = request.payment_id.clone();
    let in_flight = tokio::spawn({
        let mut client = w.payments.clone();
        async move { client.refund_payment(request).await }
    });
    if tokio::time::timeout(Duration::from_secs(10), committed).await.is_err() {
        panic!("no commit seen; the call: {:?}", in_flight.await);
    }
    w.gate.process.kill9();
    assert!(in_flight.await.unwrap().is_err(), "the caller got no answer");
    assert_eq!(w.tickets().await, 0, "killed before the ticket left");
    // The COMMIT reached PostgreSQL before the kill; on a loaded machine it may still be finishing.
    let committed = "SELECT COUNT(*) FROM cancellations WHERE payment_id = $1";
    let db = &w.db;
    wait_until(|| async { db.count(committed, &payment_id).await == 1 }).await;
    assert_eq!(w.stored_ticket(&payment_id).await, ("REQUESTED".into(), "UNSENT".into()), "the reservation is there");
}

/// Issue 11 items 1 and 2: a reservation whose worker died is sent by the sweep; the provider
/// refuses it, which changed nothing, so the caller's retry with the same key runs the refund
/// again (and is refused again) instead of answering OK with a FAILED cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_the_sweep_sent_and_the_provider_refused_runs_again_on_retry() {
    let (mut w, proxy) = behind_a_database_proxy(&LEASE).await;
    let (payment_id, _) = w.paid("order-sweep-refused", 700).await;
    let request = refund(&payment_id, None, "refund-sweep-refused");
    killed_at_the_reservation_commit(&mut w, &proxy, request.clone()).await;
    w.behave(serde_json::json!({ "refuse_tickets": "Refund window has passed" })).await;
    let sweep = [
        LEASE[0],
        ("PAYGATE_SWEEP_INTERVAL_MS", "200"),
        ("PAYGATE_SWEEP_PENDING_AFTER_MS", "300"),
        ("PAYGATE_SWEEP_RECHECK_MS", "300"),
    ];
    w.restart(&sweep).await;
    let p =
        wait_for_cancellation(&mut w.payments, &payment_id, CancellationStatus::Failed, Duration::from_secs(10)).await;
    assert_eq!(w.tickets().await, 1, "the sweep sent the ticket the crash never sent");
    assert_eq!((p.status, money(&p.refundable_amount)), (PaymentStatus::Paid as i32, 700));
    let status = w.payments.refund_payment(request.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());
    assert!(status.message().contains("Refund window has passed"), "{}", status.message());
    assert_eq!(w.tickets().await, 2, "the retry ran the refund again");
    w.behave(serde_json::json!({})).await;
    let c = w.payments.refund_payment(request).await.unwrap().into_inner();
    assert_eq!(c.ticket_state, pb::TicketState::Accepted as i32);
    wait_for_status(&mut w.payments, &payment_id, PaymentStatus::Cancelled).await;
}

async fn wait_for_cancellation(
    payments: &mut Payments,
    payment_id: &str,
    status: CancellationStatus,
    within: Duration,
) -> pb::Payment {
    let deadline = std::time::Instant::now() + within;
    loop {
        let p = get_payment(payments, payment_id).await;
        if p.cancellations.first().is_some_and(|c| c.status == status as i32) {
            return p;
        }
        assert!(std::time::Instant::now() < deadline, "cancellation never reached {status:?}: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 11 item 1: paygate killed -9 the moment the refund's reservation commits. No ticket left;
/// the retry with the same key sends it (once) and only then answers accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_killed_as_its_reservation_commits_is_sent_by_the_retry() {
    let (mut w, proxy) = behind_a_database_proxy(&LEASE).await;
    let (payment_id, _) = w.paid("order-commit-kill", 1000).await;
    killed_at_the_reservation_commit(&mut w, &proxy, refund(&payment_id, Some(400), "refund-commit-kill")).await;

    w.restart(&LEASE).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // the dead request's lease runs out
    let c = w.payments.refund_payment(refund(&payment_id, Some(400), "refund-commit-kill")).await.unwrap().into_inner();
    assert_eq!(w.tickets().await, 1, "the retry sent the ticket the crash never sent");
    assert_eq!((c.status, c.ticket_state), (CancellationStatus::Requested as i32, pb::TicketState::Accepted as i32));
    assert!(c.ticket_accepted_at.is_some());
    assert_eq!(money(&c.amount), 400);
    let again = w.payments.refund_payment(refund(&payment_id, Some(400), "refund-commit-kill")).await.unwrap();
    assert_eq!(again.into_inner().cancellation_id, c.cancellation_id);
    let p = wait_for_status(&mut w.payments, &payment_id, PaymentStatus::PartialCancelled).await;
    assert_eq!((money(&p.cancelled_amount), money(&p.refundable_amount)), (400, 600));
    assert_eq!(p.cancellations.len(), 1);
    assert_eq!(w.tickets().await, 1, "one ticket in all");
}

/// Issue 11 item 1: paygate killed -9 while the ticket is at the provider, which hangs on it. The
/// retry never resends it and answers OUTCOME_UNKNOWN; GetPayment and the metrics show it; the
/// sweep settles it once the provider's payment status says refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_killed_during_its_send_is_outcome_unknown_until_the_sweep_settles_it() {
    let mut w = World::start(Backend::Postgres, &LEASE).await;
    let (payment_id, _) = w.paid("order-send-kill", 1000).await;
    // The provider takes 10 s over the ticket, then refunds (and sends no pingback).
    w.behave(serde_json::json!({ "ticket_delay_ms": 10000, "ticket_pingbacks": false })).await;
    let in_flight = tokio::spawn({
        let mut client = w.payments.clone();
        let request = refund(&payment_id, None, "refund-send-kill");
        async move { client.refund_payment(request).await }
    });
    wait_until(|| async { w.tickets().await == 1 }).await;
    w.restart(&LEASE).await;
    assert!(in_flight.await.unwrap().is_err());
    assert_eq!(w.stored_ticket(&payment_id).await, ("REQUESTED".into(), "SENDING".into()));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let c = w.payments.refund_payment(refund(&payment_id, None, "refund-send-kill")).await.unwrap().into_inner();
    assert_eq!(
        (c.status, c.ticket_state),
        (CancellationStatus::OutcomeUnknown as i32, pb::TicketState::OutcomeUnknown as i32),
        "not reported accepted: {c:?}"
    );
    assert!(c.ticket_accepted_at.is_none());
    assert_eq!(money(&c.amount), 1000);
    assert_eq!(w.tickets().await, 1, "a ticket that may have arrived is never sent again");
    let again = w.payments.refund_payment(refund(&payment_id, None, "refund-send-kill")).await.unwrap().into_inner();
    assert_eq!((again.cancellation_id, again.status), (c.cancellation_id.clone(), c.status));
    let p = get_payment(&mut w.payments, &payment_id).await;
    assert_eq!((p.status, money(&p.refundable_amount)), (PaymentStatus::Paid as i32, 0), "the amount stays reserved");
    assert_eq!(p.cancellations[0].status, CancellationStatus::OutcomeUnknown as i32);
    assert_eq!(metric_series(&w.gate, "paygate_refund_tickets_total", &[("outcome", "unknown")]).await, 1.0);
    assert_eq!(w.tickets().await, 1);

    // A sweeping replica: it sees the unknown outcome and settles it when the provider refunded.
    let sweep = [
        LEASE[0],
        ("PAYGATE_SWEEP_INTERVAL_MS", "200"),
        ("PAYGATE_SWEEP_PENDING_AFTER_MS", "300"),
        ("PAYGATE_SWEEP_RECHECK_MS", "300"),
    ];
    w.restart(&sweep).await;
    let gate = &w.gate;
    wait_until(|| async { metric(gate, "paygate_refunds_outcome_unknown").await == 1.0 }).await;
    let p = wait_for_cancellation(&mut w.payments, &payment_id, CancellationStatus::Succeeded, Duration::from_secs(30))
        .await;
    assert_eq!((p.status, money(&p.cancelled_amount)), (PaymentStatus::Cancelled as i32, 1000));
    let gate = &w.gate;
    wait_until(|| async { metric(gate, "paygate_refunds_outcome_unknown").await == 0.0 }).await;
    assert_eq!(w.tickets().await, 1, "one ticket in all");
}

/// Issue 11 item 1: no clear answer on the first call (the provider's answer times out): the
/// caller gets OUTCOME_UNKNOWN, not "accepted"; an operator resolves it either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unclear_ticket_answer_is_outcome_unknown_and_an_operator_resolves_it() {
    let env = [("PAYGATE_PROVIDER_TIMEOUT_MS", "500")];
    let mut w = World::start(Backend::Sqlite, &env).await;
    let (refused, _) = w.paid("order-unclear-1", 800).await;
    let (refunded, _) = w.paid("order-unclear-2", 600).await;
    // Paymentwall answers too late, and in the end says no.
    w.behave(serde_json::json!({ "ticket_delay_ms": 1500, "refuse_tickets": "Transaction is disputed" })).await;
    let c = w.payments.refund_payment(refund(&refused, None, "")).await.unwrap().into_inner();
    assert_eq!(c.status, CancellationStatus::OutcomeUnknown as i32, "{c:?}");
    let p = get_payment(&mut w.payments, &refused).await;
    assert_eq!((p.status, money(&p.refundable_amount)), (PaymentStatus::Paid as i32, 0));

    let resolve = |id: &str, resolution: pb::Resolution| pb::ResolveCancellationRequest {
        cancellation_id: id.into(),
        resolution: resolution as i32,
        note: "checked in the Paymentwall merchant area".into(),
    };
    let status = w.payments.resolve_cancellation(resolve(&c.cancellation_id, pb::Resolution::Unspecified)).await;
    let status = status.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("resolution"), "{}", status.message());
    let status = w.payments.resolve_cancellation(resolve("can_nope", pb::Resolution::Failed)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let failed = w
        .payments
        .resolve_cancellation(resolve(&c.cancellation_id, pb::Resolution::Failed))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.status, CancellationStatus::Failed as i32);
    assert!(failed.failure.contains("merchant area"), "{}", failed.failure);
    let p = get_payment(&mut w.payments, &refused).await;
    assert_eq!((p.status, money(&p.refundable_amount)), (PaymentStatus::Paid as i32, 800), "refundable again");
    let same = w.payments.resolve_cancellation(resolve(&c.cancellation_id, pb::Resolution::Failed)).await.unwrap();
    assert_eq!(same.into_inner().status, CancellationStatus::Failed as i32, "resolving again answers the same");
    let status =
        w.payments.resolve_cancellation(resolve(&c.cancellation_id, pb::Resolution::Succeeded)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());

    // The other: Paymentwall did refund it (its pingback never came); the operator says so.
    w.behave(serde_json::json!({ "ticket_delay_ms": 1500, "ticket_pingbacks": false })).await;
    let c = w.payments.refund_payment(refund(&refunded, Some(200), "")).await.unwrap().into_inner();
    assert_eq!(c.status, CancellationStatus::OutcomeUnknown as i32);
    let done = w
        .payments
        .resolve_cancellation(resolve(&c.cancellation_id, pb::Resolution::Succeeded))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.status, CancellationStatus::Succeeded as i32);
    let p = get_payment(&mut w.payments, &refunded).await;
    assert_eq!(
        (p.status, money(&p.cancelled_amount), money(&p.refundable_amount)),
        (PaymentStatus::PartialCancelled as i32, 200, 400)
    );
}

/// Issue 11 item 2: the provider cannot be reached, then can. The retry with the same key runs
/// the refund again (no ABORTED "in progress", no FAILED answer, the ticket goes out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_retried_after_a_provider_outage_runs_again() {
    let sim = Simulator::start();
    let front = crate::support::proxy::TcpProxy::start(sim.addr).await;
    let front_addr = front.addr;
    let db = TestDb::new(Backend::Postgres).await;
    let mut w = World::start_with(db, sim, &LEASE, Some(format!("http://{front_addr}"))).await;
    let (payment_id, _) = w.paid("order-outage", 900).await;
    drop(front); // Paymentwall unreachable: connections refused
    tokio::time::sleep(Duration::from_millis(100)).await;

    let status = w.payments.refund_payment(refund(&payment_id, None, "refund-outage")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(status.message().contains("nothing was changed"), "{}", status.message());
    let p = get_payment(&mut w.payments, &payment_id).await;
    assert_eq!((p.status, money(&p.refundable_amount)), (PaymentStatus::Paid as i32, 900));

    let _back = crate::support::proxy::TcpProxy::start_on(front_addr, w.sim.addr).await;
    let c = w.payments.refund_payment(refund(&payment_id, None, "refund-outage")).await.unwrap().into_inner();
    assert_eq!((c.status, c.ticket_state), (CancellationStatus::Requested as i32, pb::TicketState::Accepted as i32));
    assert_eq!(w.tickets().await, 1);
    let p = wait_for_status(&mut w.payments, &payment_id, PaymentStatus::Cancelled).await;
    assert_eq!(money(&p.cancelled_amount), 900);
    let again = w.payments.refund_payment(refund(&payment_id, None, "refund-outage")).await.unwrap();
    assert_eq!(again.into_inner().cancellation_id, c.cancellation_id, "the key now names the refund that ran");
}

/// Issue 11 item 3: eight concurrent CancelSubscription calls send one stop-recurring ticket and
/// record one `subscription.cancel_requested` event, on both databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_subscription_cancels_send_one_ticket_and_one_event() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let mut w = World::start(backend, &[]).await;
        let mut request = checkout_request("main", "gold-weekly");
        request.subscription =
            Some(pb::SubscriptionTerms { period_length: 1, period_type: "week".into(), recurring: true });
        let session = w.payments.create_checkout_session(request).await.unwrap().into_inner();
        let sim_session = w.sim.open(&session.redirect_url).await;
        w.sim.control(&format!("/sessions/{sim_session}/pay"), None).await;
        wait_for_status(&mut w.payments, &session.payment_id, PaymentStatus::Paid).await;
        // A slow ticket answer keeps every caller inside the window.
        w.behave(serde_json::json!({ "ticket_delay_ms": 300 })).await;
        let cancel =
            pb::CancelSubscriptionRequest { subscription_id: session.subscription_id.clone(), reason: "moving".into() };
        let racing = (0..8).map(|_| {
            let mut client = w.payments.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { client.cancel_subscription(cancel).await })
        });
        for result in futures_util::future::join_all(racing).await {
            let sub = result.unwrap().unwrap_or_else(|s| panic!("{backend:?}: {s:?}")).into_inner();
            assert!(sub.cancel_requested_at.is_some(), "{backend:?}: every caller sees the request: {sub:?}");
        }
        assert_eq!(w.tickets().await, 1, "{backend:?}: one stop-recurring ticket");
        let events =
            "SELECT COUNT(*) FROM payment_events WHERE payment_id = $1 AND kind = 'subscription.cancel_requested'";
        assert_eq!(w.db.count(events, &session.payment_id).await, 1, "{backend:?}: one event");
        let session = w.sim.session(&sim_session).await;
        assert_eq!(session["tickets"].as_array().unwrap().len(), 1, "{backend:?}");
    }
}

/// Issue 11 item 5: a merchant's own `merchant_uid` that looks like a generated one does not stop
/// the later repeat or renewal payment from being recorded: generated ones live under `~`, which
/// merchants may not use; one stored before that rule is stepped around, never failed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_payments_never_collide_with_merchant_uids() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let mut w = World::start(backend, &[]).await;
        let pingback_url = w.gate.http_url("/pingback/paymentwall/main");
        let send = |payment_id: &str, reference: &str| {
            let query =
                Pingback::new(payment_id).uid("user-40012").one_time().reference(reference).test().signed(SECRET_KEY);
            let url = format!("{pingback_url}?{query}");
            async move { http_client().get(url).send().await.unwrap().text().await.unwrap() }
        };
        let by_uid = |uid: &str| pb::GetPaymentRequest {
            lookup: Some(pb::get_payment_request::Lookup::MerchantUid(uid.into())),
        };
        let status =
            w.payments.create_checkout_session(checkout_request("main", "~order-x/repeat/b-2")).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("merchant_uid"), "{}", status.message());

        // The merchant's own ids, shaped like the generated ones of before.
        let squatter = w.payments.create_checkout_session(checkout_request("main", "order-x/repeat/b-2")).await;
        let squatter = squatter.unwrap().into_inner();
        let renewal_squatter = w.payments.create_checkout_session(checkout_request("main", "sub-x/renewal/1")).await;
        let renewal_squatter = renewal_squatter.unwrap().into_inner();

        let once = w.payments.create_checkout_session(checkout_request("main", "order-x")).await.unwrap().into_inner();
        assert_eq!(send(&once.payment_id, "b-1").await, "OK");
        assert_eq!(send(&once.payment_id, "b-2").await, "OK", "{backend:?}: the repeat is recorded");
        let repeat = w.payments.get_payment(by_uid("~order-x/repeat/b-2")).await.unwrap().into_inner();
        assert_eq!((repeat.status, repeat.provider_ref.as_str()), (PaymentStatus::Paid as i32, "b-2"));
        assert_eq!(get_payment(&mut w.payments, &squatter.payment_id).await.status, PaymentStatus::Ready as i32);

        let mut request = checkout_request("main", "sub-x");
        request.subscription =
            Some(pb::SubscriptionTerms { period_length: 1, period_type: "month".into(), recurring: true });
        let sub = w.payments.create_checkout_session(request).await.unwrap().into_inner();
        assert_eq!(send(&sub.payment_id, "s-1").await, "OK");
        assert_eq!(send(&sub.payment_id, "s-2").await, "OK", "{backend:?}: the renewal is recorded");
        let renewal = w.payments.get_payment(by_uid("~sub-x/renewal/1")).await.unwrap().into_inner();
        assert_eq!(
            (renewal.provider_ref.as_str(), renewal.subscription_id.as_str()),
            ("s-2", sub.subscription_id.as_str())
        );
        assert_eq!(
            get_payment(&mut w.payments, &renewal_squatter.payment_id).await.status,
            PaymentStatus::Ready as i32
        );

        // A payment stored before the rule holding the next generated id: stepped around.
        let pool = w.db.pool().await;
        sqlx::query("UPDATE payments SET merchant_uid = '~sub-x/renewal/2' WHERE payment_id = $1")
            .bind(&renewal_squatter.payment_id)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        assert_eq!(send(&sub.payment_id, "s-3").await, "OK", "{backend:?}: never fails over an old id");
        let all = w.payments.list_payments(pb::ListPaymentsRequest::default()).await.unwrap().into_inner();
        let second = all.payments.iter().find(|p| p.provider_ref == "s-3").expect("the second renewal");
        assert!(second.merchant_uid.starts_with("~sub-x/renewal/2/pay_"), "{}", second.merchant_uid);
        assert_eq!(second.subscription_id, sub.subscription_id);
    }
}

/// GetPayment reads the payment and its cancellations from one snapshot: while refunds are
/// reserved, confirmed and released, every read adds up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_payment_always_adds_up_while_refunds_move() {
    let mut w = World::start(Backend::Postgres, &[]).await;
    let (payment_id, _) = w.paid("order-books", 999).await;
    w.behave(serde_json::json!({ "ticket_pingback_delay_ms": 0 })).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (mut client, payment_id, stop) = (w.payments.clone(), payment_id.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let p = get_payment(&mut client, &payment_id).await;
                    let sum = |status: CancellationStatus| -> i64 {
                        p.cancellations.iter().filter(|c| c.status == status as i32).map(|c| money(&c.amount)).sum()
                    };
                    let (cancelled, open) = (sum(CancellationStatus::Succeeded), sum(CancellationStatus::Requested));
                    if money(&p.cancelled_amount) != cancelled || money(&p.refundable_amount) != 999 - cancelled - open
                    {
                        return Err(format!("the books do not add up: {p:?}"));
                    }
                    reads += 1;
                }
                Ok(reads)
            })
        })
        .collect();
    for _ in 0..15 {
        w.payments.refund_payment(refund(&payment_id, Some(10), "")).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while money(&get_payment(&mut w.payments, &payment_id).await.cancelled_amount) < 150 {
        assert!(std::time::Instant::now() < deadline, "the refunds were never confirmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.unwrap().unwrap_or_else(|problem| panic!("{problem}")) > 0);
    }
}
