//! Subscriptions as merchants read, list and follow them, through the real binaries on both
//! databases with the simulator billing: GetSubscription after each step of a subscription's life,
//! ListSubscriptions by status across merchants, one subscription's stream resumed after a
//! disconnect, and tenancy (another merchant's and a sibling sub-merchant's keys see nothing).

use std::time::{Duration, Instant};

use paygate::proto::v1::{self as pb, PaymentStatus, SubscriptionStatus, get_subscription_request::Lookup};
use tonic::{Code, Streaming};
use tonic_types::StatusExt;

use crate::support::*;

const ADMIN: &str = "test-admin-token-subscriptions";
const RENEWED_AFTER_END: &str = "paygate_subscription_renewals_after_end_total";

/// paygate and the simulator; merchant A with its own channel "main", A's sub-merchants S1 (channel
/// "s1", made by A and assigned to S1) and S2, and merchant B (channel "b"); a client for each key.
struct World {
    _db: TestDb,
    sim: Simulator,
    gate: Paygate,
    a: Payments,
    s1: Payments,
    s2: Payments,
    b: Payments,
}

impl World {
    async fn start(backend: Backend) -> Self {
        let db = TestDb::new(backend).await;
        let sim = Simulator::start();
        let (merchant_a, key_a) = create_merchant(&db, "Acme");
        let (_, key_b) = create_merchant(&db, "Bolt");
        let gate = Paygate::start(&db, &[("PAYGATE_ADMIN_TOKEN", ADMIN)]);
        let mut admin = gate.merchants(ADMIN).await;
        let mut subs = Vec::new();
        for name in ["S1", "S2"] {
            let request = pb::CreateSubMerchantRequest { parent_merchant_id: merchant_a.clone(), name: name.into() };
            subs.push(admin.create_sub_merchant(request).await.unwrap().into_inner());
        }
        let channels = [
            (&key_a, "main", PROJECT_KEY, String::new()),
            (&key_a, "s1", "c22f895840bf2391f67a40da64bfed01", subs[0].merchant_id.clone()),
            (&key_b, "b", "c22f895840bf2391f67a40da64bfed02", String::new()),
        ];
        for (key, channel_key, project, assigned) in channels {
            let mut request = channel_request(&sim, channel_key, pb::ChannelMode::Test);
            request.paymentwall.as_mut().unwrap().project_key = project.into();
            request.sub_merchant_id = assigned;
            let channel = gate.channels(key).await.create_channel(request).await.unwrap().into_inner();
            sim.add_project(project, SECRET_KEY, &gate.http_url(&channel.pingback_path), 3).await;
        }
        let (a, b) = (gate.payments(&key_a).await, gate.payments(&key_b).await);
        let (s1, s2) = (gate.payments(&subs[0].api_key).await, gate.payments(&subs[1].api_key).await);
        Self { _db: db, sim, gate, a, s1, s2, b }
    }

    /// A monthly subscription checkout on `channel_key` for buyer `customer`.
    async fn subscribe(client: &mut Payments, channel_key: &str, uid: &str, customer: &str) -> pb::CheckoutSession {
        let mut request = checkout_request(channel_key, uid);
        request.customer.as_mut().unwrap().uid = customer.into();
        request.subscription =
            Some(pb::SubscriptionTerms { period_length: 1, period_type: "month".into(), recurring: true });
        // Creation times a millisecond apart at least, so time-range filters can tell them apart.
        tokio::time::sleep(Duration::from_millis(5)).await;
        client.create_checkout_session(request).await.unwrap().into_inner()
    }

    /// The buyer pays on the simulator's page; returns the simulator's session.
    async fn pay(&self, session: &pb::CheckoutSession) -> String {
        let sim_session = self.sim.open(&session.redirect_url).await;
        self.sim.control(&format!("/sessions/{sim_session}/pay"), None).await;
        sim_session
    }

    /// Paymentwall bills the next period (`review`: held for review, a type 200); returns its ref.
    async fn renew(&self, sim_session: &str, review: bool) -> String {
        let body = review.then(|| serde_json::json!({ "review": true }));
        let renewal = self.sim.control(&format!("/sessions/{sim_session}/renew"), body).await;
        renewal["reference"].as_str().unwrap().to_owned()
    }

    async fn pingback(&self, sim_session: &str, body: serde_json::Value) {
        self.sim.control(&format!("/sessions/{sim_session}/pingback"), Some(body)).await;
    }
}

fn by(lookup: Lookup) -> pb::GetSubscriptionRequest {
    pb::GetSubscriptionRequest { lookup: Some(lookup) }
}

async fn get(client: &mut Payments, subscription_id: &str) -> pb::Subscription {
    client.get_subscription(by(Lookup::SubscriptionId(subscription_id.into()))).await.unwrap().into_inner()
}

/// Polls GetSubscription until `ready` holds (10 s at most).
async fn wait_for(
    client: &mut Payments,
    subscription_id: &str,
    ready: impl Fn(&pb::Subscription) -> bool,
) -> pb::Subscription {
    for _ in 0..500 {
        let sub = get(client, subscription_id).await;
        if ready(&sub) {
            return sub;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("subscription {subscription_id} never got there: {:?}", get(client, subscription_id).await);
}

fn ms(ts: &Option<prost_types::Timestamp>) -> i64 {
    let ts = ts.as_ref().expect("a time");
    ts.seconds * 1000 + i64::from(ts.nanos / 1_000_000)
}

fn status_of(payment: &Option<pb::Payment>) -> i32 {
    payment.as_ref().expect("a payment").status
}

fn ref_of(payment: &Option<pb::Payment>) -> &str {
    &payment.as_ref().expect("a payment").provider_ref
}

/// A month from `from` (either calendar length), as the estimate should say.
fn about_a_month_after(estimate: i64, from: i64) -> bool {
    const DAY: i64 = 86_400_000;
    (28 * DAY..=31 * DAY).contains(&(estimate - from))
}

async fn a_subscription_read_after_each_step_of_its_life(backend: Backend) {
    let mut w = World::start(backend).await;
    // The stop ticket's type 12 comes when the test sends it, so CANCEL_REQUESTED can be read.
    let behaviour = serde_json::json!({ "ticket_pingbacks": false });
    let url = format!("{}/control/behaviour", w.sim.base_url());
    assert_eq!(w.sim.http.post(url).json(&behaviour).send().await.unwrap().status(), 204);
    let one_time = w.a.create_checkout_session(checkout_request("main", "order-once")).await.unwrap().into_inner();
    w.pay(&one_time).await;

    // Checkout: PENDING, its first payment READY, nothing estimated.
    let session = World::subscribe(&mut w.a, "main", "gold", "buyer-7").await;
    let id = session.subscription_id.clone();
    let sub = get(&mut w.a, &id).await;
    assert_eq!(
        (sub.status, sub.renewals, sub.customer_uid.as_str()),
        (SubscriptionStatus::Pending as i32, 0, "buyer-7")
    );
    assert_eq!((sub.initial_payment_id.as_str(), sub.channel_key.as_str()), (session.payment_id.as_str(), "main"));
    assert_eq!(status_of(&sub.initial_payment), PaymentStatus::Ready as i32);
    assert_eq!(
        sub.terms,
        Some(pb::SubscriptionTerms { period_length: 1, period_type: "month".into(), recurring: true })
    );
    assert!(sub.started_at.is_none() && sub.next_renewal_estimate.is_none() && sub.last_renewal_payment.is_none());
    for lookup in [Lookup::PaymentId(session.payment_id.clone()), Lookup::MerchantUid("gold".into())] {
        let found = w.a.get_subscription(by(lookup)).await.unwrap().into_inner();
        assert_eq!(found, sub, "the same subscription by its first payment");
    }
    let status = w.a.get_subscription(by(Lookup::PaymentId(one_time.payment_id.clone()))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "a one-time payment has no subscription");

    // Paid: ACTIVE since the payment, the next renewal estimated a month on.
    let sim_session = w.pay(&session).await;
    let sub = wait_for(&mut w.a, &id, |s| s.status == SubscriptionStatus::Active as i32).await;
    assert_eq!(status_of(&sub.initial_payment), PaymentStatus::Paid as i32);
    let started = ms(&sub.started_at);
    let first_estimate = ms(&sub.next_renewal_estimate);
    assert!(about_a_month_after(first_estimate, started), "{sub:?}");

    // A renewal: counted, the last renewal payment PAID, the estimate a period further on.
    let first = w.renew(&sim_session, false).await;
    let sub = wait_for(&mut w.a, &id, |s| s.renewals == 1).await;
    assert_eq!(
        (ref_of(&sub.last_renewal_payment), status_of(&sub.last_renewal_payment)),
        (first.as_str(), PaymentStatus::Paid as i32)
    );
    assert_eq!(sub.last_renewal_payment.as_ref().unwrap().merchant_uid, "~gold/renewal/1");
    assert_eq!(sub.last_renewal_payment_id, sub.last_renewal_payment.as_ref().unwrap().payment_id);
    assert!(about_a_month_after(ms(&sub.next_renewal_estimate), first_estimate), "{sub:?}");

    // A renewal held for review (200) shows at once as PENDING_REVIEW, then PAID at its 201.
    let second = w.renew(&sim_session, true).await;
    let sub = wait_for(&mut w.a, &id, |s| s.renewals == 2).await;
    assert_eq!(
        (ref_of(&sub.last_renewal_payment), status_of(&sub.last_renewal_payment)),
        (second.as_str(), PaymentStatus::PendingReview as i32)
    );
    w.pingback(&sim_session, serde_json::json!({ "type": 201, "reference": second })).await;
    let paid = |s: &pb::Subscription| status_of(&s.last_renewal_payment) == PaymentStatus::Paid as i32;
    let sub = wait_for(&mut w.a, &id, paid).await;
    assert_eq!((sub.renewals, sub.status), (2, SubscriptionStatus::Active as i32));

    // Cancel requested: the stop ticket is out and Paymentwall has not confirmed.
    let cancel = pb::CancelSubscriptionRequest { subscription_id: id.clone(), reason: "downgrade".into() };
    let answered = w.a.cancel_subscription(cancel).await.unwrap().into_inner();
    assert_eq!(answered.status, SubscriptionStatus::CancelRequested as i32);
    assert!(answered.cancel_requested_at.is_some() && answered.next_renewal_estimate.is_none());
    assert_eq!(get(&mut w.a, &id).await, answered);

    // Billing until the provider stops it: a renewal now is recorded and counted like any other.
    let third = w.renew(&sim_session, false).await;
    let sub = wait_for(&mut w.a, &id, |s| s.renewals == 3).await;
    assert_eq!((sub.status, sub.renewals_after_end), (SubscriptionStatus::CancelRequested as i32, 0));
    assert_eq!(ref_of(&sub.last_renewal_payment), third);

    // Type 12: CANCELLED, ended.
    w.pingback(&sim_session, serde_json::json!({ "type": 12 })).await;
    let sub = wait_for(&mut w.a, &id, |s| s.status == SubscriptionStatus::Cancelled as i32).await;
    assert!(ms(&sub.ended_at) >= ms(&sub.cancel_requested_at) && sub.next_renewal_estimate.is_none());
    assert_eq!((sub.renewals, sub.renewals_after_end), (3, 0));
    let text = http_client().get(w.gate.http_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(&format!("{RENEWED_AFTER_END}{{status=\"CANCELLED\"}} 0")), "shown at 0 from the start");

    // Money after CANCELLED: recorded as a renewal of a cancelled subscription, and counted.
    let late = w.renew(&sim_session, false).await;
    let sub = wait_for(&mut w.a, &id, |s| s.renewals == 4).await;
    assert_eq!((sub.status, sub.renewals_after_end), (SubscriptionStatus::Cancelled as i32, 1));
    assert_eq!(
        (ref_of(&sub.last_renewal_payment), status_of(&sub.last_renewal_payment)),
        (late.as_str(), PaymentStatus::Paid as i32)
    );
    let gate = &w.gate;
    wait_until(|| async move { metric_series(gate, RENEWED_AFTER_END, &[("status", "CANCELLED")]).await == 1.0 }).await;

    // Its payments through ListPayments: the first and four renewals, newest first; nothing else.
    let request = pb::ListPaymentsRequest { subscription_id: id.clone(), ..Default::default() };
    let listed = w.a.list_payments(request.clone()).await.unwrap().into_inner().payments;
    let refs: Vec<&str> = listed.iter().map(|p| p.provider_ref.as_str()).collect();
    assert_eq!(refs[..4], [late.as_str(), third.as_str(), second.as_str(), first.as_str()]);
    assert_eq!((listed.len(), listed[4].payment_id.as_str()), (5, session.payment_id.as_str()));
    assert!(listed.iter().all(|p| p.subscription_id == id));
    let status = w.a.list_payments(pb::ListPaymentsRequest { subscription_id: "sub\n".into(), ..request }).await;
    assert_names(&status.unwrap_err(), "subscription_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_read_after_each_step_of_its_life_postgres() {
    a_subscription_read_after_each_step_of_its_life(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_read_after_each_step_of_its_life_sqlite() {
    a_subscription_read_after_each_step_of_its_life(Backend::Sqlite).await;
}

fn assert_names(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    let violations = status.get_details_bad_request().map(|b| b.field_violations).unwrap_or_default();
    assert!(violations.iter().any(|v| v.field == field), "{field} named in {status:?}");
}

fn listing(statuses: &[SubscriptionStatus]) -> pb::ListSubscriptionsRequest {
    pb::ListSubscriptionsRequest { statuses: statuses.iter().map(|s| *s as i32).collect(), ..Default::default() }
}

async fn ids(client: &mut Payments, request: pb::ListSubscriptionsRequest) -> Vec<String> {
    let listed = client.list_subscriptions(request).await.unwrap().into_inner();
    listed.subscriptions.into_iter().map(|s| s.subscription_id).collect()
}

/// A's three subscriptions: ACTIVE (A's channel), PENDING (A's channel), CANCEL_REQUESTED (S1's);
/// B's one ACTIVE. Returns (active, pending, cancel requested, foreign) checkouts and S1's
/// simulator session.
async fn three_and_a_foreign_one(
    w: &mut World,
) -> (pb::CheckoutSession, pb::CheckoutSession, pb::CheckoutSession, pb::CheckoutSession, String) {
    let behaviour = serde_json::json!({ "ticket_pingbacks": false });
    let url = format!("{}/control/behaviour", w.sim.base_url());
    assert_eq!(w.sim.http.post(url).json(&behaviour).send().await.unwrap().status(), 204);
    let active = World::subscribe(&mut w.a, "main", "x-active", "buyer-1").await;
    let pending = World::subscribe(&mut w.a, "main", "y-pending", "buyer-2").await;
    let asked = World::subscribe(&mut w.s1, "s1", "z-asked", "buyer-1").await;
    let foreign = World::subscribe(&mut w.b, "b", "w-foreign", "buyer-1").await;
    w.pay(&active).await;
    let z_session = w.pay(&asked).await;
    w.pay(&foreign).await;
    for (client, session) in [(&mut w.a, &active), (&mut w.s1, &asked), (&mut w.b, &foreign)] {
        wait_for(client, &session.subscription_id, |s| s.status == SubscriptionStatus::Active as i32).await;
    }
    let cancel =
        pb::CancelSubscriptionRequest { subscription_id: asked.subscription_id.clone(), reason: String::new() };
    w.a.cancel_subscription(cancel).await.unwrap();
    (active, pending, asked, foreign, z_session)
}

async fn list_subscriptions_by_status_across_merchants(backend: Backend) {
    let mut w = World::start(backend).await;
    let (x, y, z, foreign, _) = three_and_a_foreign_one(&mut w).await;
    let (x, y, z) = (x.subscription_id.as_str(), y.subscription_id.as_str(), z.subscription_id.as_str());
    let foreign = foreign.subscription_id.as_str();
    use SubscriptionStatus as S;
    // Newest first, the parent's key seeing its sub-merchant's too; B's never.
    assert_eq!(ids(&mut w.a, listing(&[])).await, [z, y, x]);
    assert_eq!(ids(&mut w.a, listing(&[S::Active])).await, [x]);
    assert_eq!(ids(&mut w.a, listing(&[S::Pending])).await, [y]);
    assert_eq!(ids(&mut w.a, listing(&[S::CancelRequested])).await, [z]);
    assert_eq!(ids(&mut w.a, listing(&[S::Active, S::CancelRequested])).await, [z, x]);
    assert!(ids(&mut w.a, listing(&[S::Cancelled, S::Expired, S::PaymentFailed])).await.is_empty());
    assert_eq!(ids(&mut w.b, listing(&[S::Active])).await, [foreign]);
    assert_eq!(ids(&mut w.b, listing(&[])).await, [foreign]);

    // The other filters.
    let filtered = |f: fn(&mut pb::ListSubscriptionsRequest)| {
        let mut request = listing(&[]);
        f(&mut request);
        request
    };
    assert_eq!(ids(&mut w.a, filtered(|r| r.channel_key = "s1".into())).await, [z]);
    assert_eq!(ids(&mut w.a, filtered(|r| r.customer_uid = "buyer-1".into())).await, [z, x]);
    let y_created = get(&mut w.a, y).await.created_at;
    let mut from_y = listing(&[]);
    from_y.created_from = y_created;
    assert_eq!(ids(&mut w.a, from_y).await, [z, y]);
    let mut before_y = listing(&[]);
    before_y.created_to = y_created;
    assert_eq!(ids(&mut w.a, before_y).await, [x]);

    // Pages: two, then the last one with the payments filled in.
    let first = w.a.list_subscriptions(pb::ListSubscriptionsRequest { page_size: 2, ..listing(&[]) }).await;
    let first = first.unwrap().into_inner();
    assert_eq!(first.subscriptions.len(), 2);
    let next = pb::ListSubscriptionsRequest { page_size: 2, page_token: first.next_page_token, ..listing(&[]) };
    let last = w.a.list_subscriptions(next).await.unwrap().into_inner();
    assert_eq!((last.subscriptions.len(), last.next_page_token.as_str()), (1, ""));
    assert_eq!(last.subscriptions[0].subscription_id, x);
    assert_eq!(status_of(&last.subscriptions[0].initial_payment), PaymentStatus::Paid as i32);

    // Bad input names its field.
    assert_names(
        &w.a.list_subscriptions(pb::ListSubscriptionsRequest { statuses: vec![99], ..listing(&[]) }).await.unwrap_err(),
        "statuses[0]",
    );
    let bad_token = pb::ListSubscriptionsRequest { page_token: "not-a-token!".into(), ..listing(&[]) };
    assert_names(&w.a.list_subscriptions(bad_token).await.unwrap_err(), "page_token");
    let long_uid = pb::ListSubscriptionsRequest { customer_uid: "u".repeat(65), ..listing(&[]) };
    assert_names(&w.a.list_subscriptions(long_uid).await.unwrap_err(), "customer_uid");
    assert_names(&w.a.get_subscription(pb::GetSubscriptionRequest { lookup: None }).await.unwrap_err(), "lookup");
    let bad_id = by(Lookup::SubscriptionId("sub\0".into()));
    assert_names(&w.a.get_subscription(bad_id).await.unwrap_err(), "subscription_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_subscriptions_by_status_across_merchants_postgres() {
    list_subscriptions_by_status_across_merchants(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_subscriptions_by_status_across_merchants_sqlite() {
    list_subscriptions_by_status_across_merchants(Backend::Sqlite).await;
}

async fn next(stream: &mut Streaming<pb::PaymentEvent>, within: Duration) -> Option<pb::PaymentEvent> {
    match tokio::time::timeout(within, stream.message()).await {
        Ok(Ok(event)) => event,
        Ok(Err(status)) => panic!("the stream failed: {status:?}"),
        Err(_) => None,
    }
}

/// The next `count` events (10 s at most).
async fn collect(stream: &mut Streaming<pb::PaymentEvent>, count: usize) -> Vec<pb::PaymentEvent> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut events = Vec::new();
    while events.len() < count {
        match next(stream, deadline.saturating_duration_since(Instant::now())).await {
            Some(event) => events.push(event),
            None => panic!("after {} of {count} events: {events:?}", events.len()),
        }
    }
    events
}

fn watch(subscription_id: &str, resume_after: &str) -> pb::WatchPaymentsRequest {
    pb::WatchPaymentsRequest {
        subscription_ids: vec![subscription_id.into()],
        resume_after: resume_after.into(),
        ..Default::default()
    }
}

/// (kind, payment_id) of each event.
fn kinds(events: &[pb::PaymentEvent]) -> Vec<(String, String)> {
    events.iter().map(|e| (e.kind.clone(), e.payment.as_ref().unwrap().payment_id.clone())).collect()
}

async fn payment_by_ref(client: &mut Payments, subscription_id: &str, provider_ref: &str) -> pb::Payment {
    for _ in 0..500 {
        let request = pb::ListPaymentsRequest { subscription_id: subscription_id.into(), ..Default::default() };
        let listed = client.list_payments(request).await.unwrap().into_inner().payments;
        if let Some(p) = listed.into_iter().find(|p| p.provider_ref == provider_ref) {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no payment with ref {provider_ref}");
}

async fn one_subscriptions_stream_resumes_without_a_gap(backend: Backend) {
    let mut w = World::start(backend).await;
    let p = World::subscribe(&mut w.a, "main", "p", "buyer-1").await;
    let q = World::subscribe(&mut w.a, "main", "q", "buyer-1").await;
    let id = p.subscription_id.clone();

    // No cursor: the subscription's current state first.
    let mut stream = w.a.watch_payments(watch(&id, "")).await.unwrap().into_inner();
    let snapshot = collect(&mut stream, 1).await.remove(0);
    assert_eq!((snapshot.kind.as_str(), snapshot.snapshot), ("subscription.snapshot", true));
    assert_eq!(snapshot.payment.as_ref().unwrap().payment_id, p.payment_id);
    assert_eq!(snapshot.subscription.as_ref().unwrap().status, SubscriptionStatus::Pending as i32);

    // Its payment and first renewal arrive; the other subscription's and a one-time payment's do not.
    let p_session = w.pay(&p).await;
    let q_session = w.pay(&q).await;
    checkout_and_pay(&w.gate, &mut w.a, "one-time").await;
    // A renewal's pingback must find its first payment paid (Paymentwall bills a period later).
    for sub in [&q, &p] {
        wait_for(&mut w.a, &sub.subscription_id, |s| s.status == SubscriptionStatus::Active as i32).await;
    }
    w.renew(&q_session, false).await;
    let first = w.renew(&p_session, false).await;
    let live = collect(&mut stream, 2).await;
    let renewal_1 = payment_by_ref(&mut w.a, &id, &first).await;
    assert_eq!(
        kinds(&live),
        [("payment.paid".into(), p.payment_id.clone()), ("payment.paid".into(), renewal_1.payment_id.clone())]
    );
    let started = live[0].subscription.as_ref().expect("the event carries the subscription");
    assert_eq!(started.status, SubscriptionStatus::Active as i32);
    assert_eq!(live[1].subscription.as_ref().unwrap().renewals, 1);
    let cursor = live[1].event_id.clone();
    drop(stream);

    // While disconnected: a second renewal, a refund of the first, the cancel and its type 12.
    let second = w.renew(&p_session, false).await;
    let renewal_2 = payment_by_ref(&mut w.a, &id, &second).await;
    let refund = pb::RefundPaymentRequest {
        payment_id: renewal_1.payment_id.clone(),
        reason: "asked".into(),
        ..Default::default()
    };
    w.a.refund_payment(refund).await.unwrap();
    wait_for_status(&mut w.a, &renewal_1.payment_id, PaymentStatus::Cancelled).await;
    let cancel = pb::CancelSubscriptionRequest { subscription_id: id.clone(), reason: String::new() };
    w.a.cancel_subscription(cancel).await.unwrap();
    wait_for(&mut w.a, &id, |s| s.status == SubscriptionStatus::Cancelled as i32).await;

    // Resumed: exactly what it missed, in order, then live again (a renewal after the end).
    let mut stream = w.a.watch_payments(watch(&id, &cursor)).await.unwrap().into_inner();
    let missed = collect(&mut stream, 5).await;
    let expected: Vec<(String, String)> = [
        ("payment.paid", &renewal_2.payment_id),
        ("payment.cancel_pending", &renewal_1.payment_id),
        ("payment.cancelled", &renewal_1.payment_id),
        ("subscription.cancel_requested", &p.payment_id),
        ("subscription.cancelled", &p.payment_id),
    ]
    .into_iter()
    .map(|(k, p)| (k.to_owned(), p.clone()))
    .collect();
    assert_eq!(kinds(&missed), expected);
    assert!(missed.iter().all(|e| !e.snapshot));
    let ended = missed[4].subscription.as_ref().unwrap();
    assert_eq!((ended.status, ended.renewals), (SubscriptionStatus::Cancelled as i32, 2));
    w.renew(&q_session, false).await;
    let late = w.renew(&p_session, false).await;
    let after_end = collect(&mut stream, 1).await.remove(0);
    assert_eq!(after_end.payment.as_ref().unwrap().provider_ref, late);
    assert_eq!(after_end.subscription.as_ref().unwrap().renewals_after_end, 1);
    assert!(next(&mut stream, Duration::from_millis(500)).await.is_none(), "nothing else");

    // The same log, paged, with the same filter: every event of the subscription, the same order.
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let request = pb::ListPaymentEventsRequest {
            subscription_ids: vec![id.clone()],
            after: after.clone(),
            page_size: 3,
            ..Default::default()
        };
        let page = w.a.list_payment_events(request).await.unwrap().into_inner();
        if page.events.is_empty() {
            break;
        }
        after = page.next_cursor;
        all.extend(page.events);
    }
    let streamed: Vec<_> = live.iter().chain(&missed).chain([&after_end]).cloned().collect();
    assert_eq!(kinds(&all), kinds(&streamed));
    let ids: Vec<&str> = all.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, streamed.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscriptions_stream_resumes_without_a_gap_postgres() {
    one_subscriptions_stream_resumes_without_a_gap(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscriptions_stream_resumes_without_a_gap_sqlite() {
    one_subscriptions_stream_resumes_without_a_gap(Backend::Sqlite).await;
}

/// Every new RPC and filter, called with B's key (another merchant) and S2's (a sibling of the
/// owner S1): NOT_FOUND, and lists and streams with nothing in them. S1 and its parent A see it.
async fn other_merchants_and_siblings_see_nothing(backend: Backend) {
    let mut w = World::start(backend).await;
    let (x, _, z, foreign, z_session) = three_and_a_foreign_one(&mut w).await;
    let id = z.subscription_id.clone();
    let lookups = [
        Lookup::SubscriptionId(id.clone()),
        Lookup::PaymentId(z.payment_id.clone()),
        Lookup::MerchantUid("z-asked".into()),
    ];
    for lookup in &lookups {
        for client in [&mut w.a, &mut w.s1] {
            assert_eq!(client.get_subscription(by(lookup.clone())).await.unwrap().into_inner().subscription_id, id);
        }
    }
    let events = |after: &str| pb::ListPaymentEventsRequest {
        subscription_ids: vec![id.clone()],
        after: after.into(),
        ..Default::default()
    };
    let payments = pb::ListPaymentsRequest { subscription_id: id.clone(), ..Default::default() };
    // Its two events so far (paid, cancel requested), once no older transaction holds them back.
    let (a, request) = (&w.a, events(""));
    wait_until(|| {
        let (mut a, request) = (a.clone(), request.clone());
        async move { a.list_payment_events(request).await.unwrap().into_inner().events.len() == 2 }
    })
    .await;
    assert_eq!(w.a.list_payments(payments.clone()).await.unwrap().into_inner().payments.len(), 1);

    let mut outsiders = Vec::new();
    for (who, client) in [("another merchant", w.b.clone()), ("a sibling sub-merchant", w.s2.clone())] {
        let mut client = client;
        for lookup in &lookups {
            let status = client.get_subscription(by(lookup.clone())).await.unwrap_err();
            assert_eq!(status.code(), Code::NotFound, "{who}: {lookup:?}");
        }
        let cancel = pb::CancelSubscriptionRequest { subscription_id: id.clone(), reason: String::new() };
        assert_eq!(client.cancel_subscription(cancel).await.unwrap_err().code(), Code::NotFound, "{who}");
        // B lists its own one only; the sibling S2 has none.
        let own = if who == "another merchant" { vec![foreign.subscription_id.clone()] } else { vec![] };
        assert_eq!(ids(&mut client, listing(&[])).await, own, "{who}");
        assert!(client.list_payments(payments.clone()).await.unwrap().into_inner().payments.is_empty(), "{who}");
        assert!(client.list_payment_events(events("")).await.unwrap().into_inner().events.is_empty(), "{who}");
        // A stream of it: no snapshot, no replay (from the start of the log), nothing live.
        let fresh = client.watch_payments(watch(&id, "")).await.unwrap().into_inner();
        let replayed = client.watch_payments(watch(&id, "0-0")).await.unwrap().into_inner();
        outsiders.push((who, fresh, replayed));
    }
    let mut owner = w.s1.watch_payments(watch(&id, "")).await.unwrap().into_inner();
    assert!(collect(&mut owner, 1).await[0].snapshot);
    let renewal = w.renew(&z_session, false).await;
    let event = collect(&mut owner, 1).await.remove(0);
    assert_eq!(event.payment.unwrap().provider_ref, renewal, "the owner's stream has it");
    for (who, mut fresh, mut replayed) in outsiders {
        assert!(next(&mut fresh, Duration::from_millis(300)).await.is_none(), "{who}");
        assert!(next(&mut replayed, Duration::from_millis(300)).await.is_none(), "{who}");
    }
    // The renewal names its subscription too, by its payment id and by its ~uid/renewal/n order id
    // (the proto's and docs/payments.md's promise), for the owner and its parent only.
    let renewal = payment_by_ref(&mut w.s1, &id, &renewal).await;
    assert_eq!(renewal.merchant_uid, "~z-asked/renewal/1");
    let by_renewal = [Lookup::PaymentId(renewal.payment_id.clone()), Lookup::MerchantUid(renewal.merchant_uid.clone())];
    for lookup in &by_renewal {
        for client in [&mut w.a, &mut w.s1] {
            assert_eq!(client.get_subscription(by(lookup.clone())).await.unwrap().into_inner().subscription_id, id);
        }
        for (who, client) in [("another merchant", &mut w.b), ("a sibling sub-merchant", &mut w.s2)] {
            let status = client.get_subscription(by(lookup.clone())).await.unwrap_err();
            assert_eq!(status.code(), Code::NotFound, "{who}: {lookup:?}");
        }
    }
    // A sub-merchant does not see its parent's subscriptions.
    let parents = [
        Lookup::SubscriptionId(x.subscription_id.clone()),
        Lookup::PaymentId(x.payment_id.clone()),
        Lookup::MerchantUid("x-active".into()),
    ];
    for lookup in parents {
        let status = w.s1.get_subscription(by(lookup.clone())).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "the parent's, by {lookup:?}");
    }
    assert_eq!(ids(&mut w.s1, listing(&[])).await, [id.as_str()], "only its own");
    let parents_payments = pb::ListPaymentsRequest { subscription_id: x.subscription_id.clone(), ..Default::default() };
    assert!(w.s1.list_payments(parents_payments).await.unwrap().into_inner().payments.is_empty());

    // A payment client token reads and watches its payment, never subscriptions.
    let request = pb::CreatePaymentClientTokenRequest { payment_id: z.payment_id.clone(), ttl_seconds: 60 };
    let token = w.s1.create_payment_client_token(request).await.unwrap().into_inner().token;
    let mut browser = w.gate.payments(&token).await;
    let status = browser.get_subscription(by(Lookup::SubscriptionId(id.clone()))).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(browser.list_subscriptions(listing(&[])).await.unwrap_err().code(), Code::PermissionDenied);
    let mut filtered = watch(&id, "");
    filtered.payment_ids = vec![z.payment_id.clone()];
    assert_eq!(browser.watch_payments(filtered).await.unwrap_err().code(), Code::PermissionDenied);
    // Nor is the admin token an API key.
    let mut admin = w.gate.payments(ADMIN).await;
    assert_eq!(
        admin.get_subscription(by(Lookup::SubscriptionId(id))).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // A bad filter names itself.
    let bad = pb::WatchPaymentsRequest { subscription_ids: vec!["sub\0".into()], ..Default::default() };
    assert_names(&w.a.watch_payments(bad).await.unwrap_err(), "subscription_ids[0]");
    let bad = pb::ListPaymentEventsRequest { subscription_ids: vec!["x".repeat(65)], ..Default::default() };
    assert_names(&w.a.list_payment_events(bad).await.unwrap_err(), "subscription_ids[0]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_merchants_and_siblings_see_nothing_postgres() {
    other_merchants_and_siblings_see_nothing(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_merchants_and_siblings_see_nothing_sqlite() {
    other_merchants_and_siblings_see_nothing(Backend::Sqlite).await;
}

/// A renewal that read the subscription just before CancelSubscription committed must not write
/// (its event would say ACTIVE after `subscription.cancel_requested`): the compare-and-set sees the
/// cancel request, so the renewal is retried on what is stored.
async fn a_write_from_before_a_cancel_request_is_refused(backend: Backend) {
    use paygate::payments::{core::subscription::renewed, store::subscriptions};
    let mut w = World::start(backend).await;
    let session = World::subscribe(&mut w.a, "main", "race", "buyer-1").await;
    w.pay(&session).await;
    let id = session.subscription_id.clone();
    wait_for(&mut w.a, &id, |s| s.status == SubscriptionStatus::Active as i32).await;

    let pool = w._db.pool().await;
    let mut conn = pool.acquire().await.unwrap();
    let before = subscriptions::get(&mut conn, &id).await.unwrap().expect("stored");
    assert_eq!(before.cancel_requested_at, None);
    // CancelSubscription commits in between (status and renewals unchanged).
    sqlx::query("UPDATE subscriptions SET cancel_requested_at = 1234 WHERE subscription_id = $1")
        .bind(&id)
        .execute(&mut *conn)
        .await
        .unwrap();
    let renewal = renewed(&before, "pay_renewal", 2000);
    assert!(!subscriptions::update(&mut conn, &before, &renewal).await.unwrap(), "a stale copy does not write");
    let stored = subscriptions::get(&mut conn, &id).await.unwrap().unwrap();
    assert_eq!((stored.renewals, stored.cancel_requested_at), (0, Some(1234)));
    // Read again, the same renewal writes, and what it carries is what is stored.
    let renewal = renewed(&stored, "pay_renewal", 2000);
    assert!(subscriptions::update(&mut conn, &stored, &renewal).await.unwrap());
    assert_eq!(subscriptions::get(&mut conn, &id).await.unwrap().unwrap(), renewal);
    drop(conn);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_before_a_cancel_request_is_refused_postgres() {
    a_write_from_before_a_cancel_request_is_refused(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_before_a_cancel_request_is_refused_sqlite() {
    a_write_from_before_a_cancel_request_is_refused(Backend::Sqlite).await;
}

/// The type 12 lands while the stop ticket's answer is still on its way: the subscription stays
/// CANCELLED, and the log has no `subscription.cancel_requested` after `subscription.cancelled`.
async fn a_type_12_before_the_tickets_answer_leaves_it_cancelled(backend: Backend) {
    let mut w = World::start(backend).await;
    let behaviour = serde_json::json!({ "ticket_pingbacks": false, "ticket_delay_ms": 1500 });
    let url = format!("{}/control/behaviour", w.sim.base_url());
    assert_eq!(w.sim.http.post(url).json(&behaviour).send().await.unwrap().status(), 204);
    let session = World::subscribe(&mut w.a, "main", "early-end", "buyer-1").await;
    let sim_session = w.pay(&session).await;
    let id = session.subscription_id.clone();
    wait_for(&mut w.a, &id, |s| s.status == SubscriptionStatus::Active as i32).await;

    let mut client = w.a.clone();
    let cancel = pb::CancelSubscriptionRequest { subscription_id: id.clone(), reason: "stop".into() };
    let cancelling = tokio::spawn(async move { client.cancel_subscription(cancel).await });
    // The ticket is at Paymentwall (the simulator holds its answer); the type 12 comes first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.pingback(&sim_session, serde_json::json!({ "type": 12 })).await;
    wait_for(&mut w.a, &id, |s| s.status == SubscriptionStatus::Cancelled as i32).await;
    let answered = cancelling.await.unwrap().expect("the ticket was accepted").into_inner();
    assert_eq!(answered.status, SubscriptionStatus::Cancelled as i32, "{answered:?}");

    let sub = get(&mut w.a, &id).await;
    assert_eq!((sub.status, sub.cancel_requested_at), (SubscriptionStatus::Cancelled as i32, None));
    let request = pb::ListPaymentEventsRequest { subscription_ids: vec![id.clone()], ..Default::default() };
    let (a, expected) = (&w.a, ["payment.paid", "subscription.cancelled"]);
    wait_until(|| {
        let (mut a, request) = (a.clone(), request.clone());
        async move {
            let events = a.list_payment_events(request).await.unwrap().into_inner().events;
            let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
            assert!(!kinds.contains(&"subscription.cancel_requested"), "{kinds:?}");
            kinds == expected
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_12_before_the_tickets_answer_leaves_it_cancelled_postgres() {
    a_type_12_before_the_tickets_answer_leaves_it_cancelled(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_12_before_the_tickets_answer_leaves_it_cancelled_sqlite() {
    a_type_12_before_the_tickets_answer_leaves_it_cancelled(Backend::Sqlite).await;
}

/// Time ranges and page tokens of ListPayments and ListSubscriptions: an empty or reversed range, a
/// timestamp whose nanos are out of range, and one list's token given to the other are refused,
/// naming the field; ListPayments still takes the untagged tokens it issued before.
async fn list_ranges_and_page_tokens_are_checked(backend: Backend) {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let mut w = World::start(backend).await;
    let first = World::subscribe(&mut w.a, "main", "r1", "buyer-1").await;
    World::subscribe(&mut w.a, "main", "r2", "buyer-1").await;
    let ts = |seconds: i64, nanos: i32| Some(prost_types::Timestamp { seconds, nanos });
    let ranges = [
        ("created_to", ts(100, 0), ts(100, 0)),
        ("created_to", ts(200, 0), ts(100, 0)),
        ("created_from.nanos", ts(100, 1_000_000_000), None),
        ("created_to.nanos", None, ts(100, -1)),
    ];
    for (field, created_from, created_to) in ranges {
        let request = pb::ListSubscriptionsRequest { created_from, created_to, ..listing(&[]) };
        assert_names(&w.a.list_subscriptions(request).await.unwrap_err(), field);
        let request = pb::ListPaymentsRequest { created_from, created_to, ..Default::default() };
        assert_names(&w.a.list_payments(request).await.unwrap_err(), field);
    }
    // A range that holds something still lists it.
    let wide =
        pb::ListSubscriptionsRequest { created_from: ts(0, 0), created_to: ts(4_000_000_000, 0), ..listing(&[]) };
    assert_eq!(ids(&mut w.a, wide).await.len(), 2);

    let sub_token = w.a.list_subscriptions(pb::ListSubscriptionsRequest { page_size: 1, ..listing(&[]) }).await;
    let sub_token = sub_token.unwrap().into_inner().next_page_token;
    let pay_request = pb::ListPaymentsRequest { page_size: 1, ..Default::default() };
    let pay_token = w.a.list_payments(pay_request).await.unwrap().into_inner().next_page_token;
    assert!(!sub_token.is_empty() && !pay_token.is_empty());
    let swapped = pb::ListSubscriptionsRequest { page_token: pay_token.clone(), ..listing(&[]) };
    assert_names(&w.a.list_subscriptions(swapped).await.unwrap_err(), "page_token");
    let swapped = pb::ListPaymentsRequest { page_token: sub_token.clone(), ..Default::default() };
    assert_names(&w.a.list_payments(swapped).await.unwrap_err(), "page_token");
    // Untagged tokens (a bare id, as issued before): ListPayments' still page; none other does.
    let legacy = URL_SAFE_NO_PAD.encode(
        &w.a.list_payments(pb::ListPaymentsRequest::default()).await.unwrap().into_inner().payments[0].payment_id,
    );
    let old = pb::ListPaymentsRequest { page_token: legacy.clone(), ..Default::default() };
    let rest = w.a.list_payments(old).await.unwrap().into_inner().payments;
    assert_eq!(rest.iter().map(|p| p.payment_id.as_str()).collect::<Vec<_>>(), [first.payment_id.as_str()]);
    let old = pb::ListSubscriptionsRequest { page_token: legacy, ..listing(&[]) };
    assert_names(&w.a.list_subscriptions(old).await.unwrap_err(), "page_token");
    let old =
        pb::ListPaymentsRequest { page_token: URL_SAFE_NO_PAD.encode(&first.subscription_id), ..Default::default() };
    assert_names(&w.a.list_payments(old).await.unwrap_err(), "page_token");
    // And each list's own token goes on.
    let next = pb::ListSubscriptionsRequest { page_token: sub_token, ..listing(&[]) };
    assert_eq!(ids(&mut w.a, next).await, [first.subscription_id.as_str()]);
    let next = pb::ListPaymentsRequest { page_token: pay_token, ..Default::default() };
    assert_eq!(w.a.list_payments(next).await.unwrap().into_inner().payments[0].payment_id, first.payment_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_ranges_and_page_tokens_are_checked_postgres() {
    list_ranges_and_page_tokens_are_checked(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_ranges_and_page_tokens_are_checked_sqlite() {
    list_ranges_and_page_tokens_are_checked(Backend::Sqlite).await;
}

/// A renewal held for review (200) that the review then declines (202): the renewal payment is
/// FAILED and stays counted as the subscription's last renewal; the subscription stays ACTIVE.
async fn a_declined_review_of_a_renewal_stays_counted(backend: Backend) {
    let mut w = World::start(backend).await;
    let session = World::subscribe(&mut w.a, "main", "reviewed", "buyer-1").await;
    let sim_session = w.pay(&session).await;
    let id = session.subscription_id.clone();
    wait_for(&mut w.a, &id, |s| s.status == SubscriptionStatus::Active as i32).await;

    let held = w.renew(&sim_session, true).await;
    let sub = wait_for(&mut w.a, &id, |s| s.renewals == 1).await;
    assert_eq!(status_of(&sub.last_renewal_payment), PaymentStatus::PendingReview as i32);
    w.pingback(&sim_session, serde_json::json!({ "type": 202, "reference": held })).await;
    let failed = |s: &pb::Subscription| status_of(&s.last_renewal_payment) == PaymentStatus::Failed as i32;
    let sub = wait_for(&mut w.a, &id, failed).await;
    assert_eq!(
        (sub.status, sub.renewals, ref_of(&sub.last_renewal_payment)),
        (SubscriptionStatus::Active as i32, 1, held.as_str())
    );
    let renewal = payment_by_ref(&mut w.a, &id, &held).await;
    assert_eq!((renewal.status, renewal.merchant_uid.as_str()), (PaymentStatus::Failed as i32, "~reviewed/renewal/1"));
    let by_renewal = w.a.get_subscription(by(Lookup::PaymentId(renewal.payment_id))).await.unwrap().into_inner();
    assert_eq!(by_renewal, sub);

    // The next renewal is the second.
    let next = w.renew(&sim_session, false).await;
    let sub = wait_for(&mut w.a, &id, |s| s.renewals == 2).await;
    assert_eq!(
        (ref_of(&sub.last_renewal_payment), status_of(&sub.last_renewal_payment)),
        (next.as_str(), PaymentStatus::Paid as i32)
    );
    assert_eq!(sub.last_renewal_payment.unwrap().merchant_uid, "~reviewed/renewal/2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_review_of_a_renewal_stays_counted_postgres() {
    a_declined_review_of_a_renewal_stays_counted(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_review_of_a_renewal_stays_counted_sqlite() {
    a_declined_review_of_a_renewal_stays_counted(Backend::Sqlite).await;
}

/// WatchPayments with subscription_ids and statuses filters every event, the snapshot included,
/// on the payment it carries: the snapshot on the first payment, a renewal's event on the renewal.
async fn a_subscription_stream_filters_on_the_payment_each_event_carries(backend: Backend) {
    let mut w = World::start(backend).await;
    let session = World::subscribe(&mut w.a, "main", "filtered", "buyer-1").await;
    let id = session.subscription_id.clone();
    let watching = |statuses: &[PaymentStatus]| pb::WatchPaymentsRequest {
        statuses: statuses.iter().map(|s| *s as i32).collect(),
        ..watch(&id, "")
    };
    // The first payment is READY: a snapshot for READY, none for PAID.
    let mut ready = w.a.watch_payments(watching(&[PaymentStatus::Ready])).await.unwrap().into_inner();
    let snapshot = collect(&mut ready, 1).await.remove(0);
    assert_eq!(
        (snapshot.kind.as_str(), snapshot.payment.unwrap().payment_id),
        ("subscription.snapshot", session.payment_id.clone())
    );
    let mut paid = w.a.watch_payments(watching(&[PaymentStatus::Paid])).await.unwrap().into_inner();
    assert!(next(&mut paid, Duration::from_millis(500)).await.is_none(), "no snapshot: the first payment is not PAID");

    // Live: the PAID stream gets the payment and a paid renewal; the READY one neither.
    let sim_session = w.pay(&session).await;
    wait_for(&mut w.a, &id, |s| s.status == SubscriptionStatus::Active as i32).await;
    let renewal = w.renew(&sim_session, false).await;
    let live = collect(&mut paid, 2).await;
    assert_eq!(live[0].payment.as_ref().unwrap().payment_id, session.payment_id);
    assert_eq!(live[1].payment.as_ref().unwrap().provider_ref, renewal);
    assert!(next(&mut ready, Duration::from_millis(500)).await.is_none());

    // Now the first payment is PAID: a new PAID stream starts with the snapshot, a READY one without.
    let mut again = w.a.watch_payments(watching(&[PaymentStatus::Paid])).await.unwrap().into_inner();
    assert!(collect(&mut again, 1).await[0].snapshot);
    let mut none = w.a.watch_payments(watching(&[PaymentStatus::Ready])).await.unwrap().into_inner();
    assert!(next(&mut none, Duration::from_millis(500)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_stream_filters_on_the_payment_each_event_carries_postgres() {
    a_subscription_stream_filters_on_the_payment_each_event_carries(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_stream_filters_on_the_payment_each_event_carries_sqlite() {
    a_subscription_stream_filters_on_the_payment_each_event_carries(Backend::Sqlite).await;
}
