//! Convergence (issue 31 item 2): with Paymentwall's pingbacks lost (all of them, or 30% with the
//! rest duplicated and reordered), every payment, refund and subscription still reaches the
//! simulator's truth through the sweep alone, and nothing is applied twice. Prints the time each
//! phase took to converge.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use paygate::proto::v1 as pb;
use sqlx::Row;

use crate::support::*;

const PAYMENTS: usize = 1_000;
const REFUNDS: usize = 200;
const SUBSCRIPTIONS: usize = 50;
const RENEWAL_ROUNDS: usize = 2;
const STOPPED: usize = 10;
/// Calls in flight at once while the test sets the scene.
const PARALLEL: usize = 16;

/// The sweep's settings here, and the bound they give (docs: README "What is confirmed when").
const SWEEP: [(&str, &str); 5] = [
    ("PAYGATE_SWEEP_INTERVAL_MS", "100"),
    ("PAYGATE_SWEEP_READY_AFTER_MS", "500"),
    // Above the provider call's time, so the sweep never takes over a ticket being sent.
    ("PAYGATE_SWEEP_PENDING_AFTER_MS", "2000"),
    ("PAYGATE_SWEEP_RECHECK_MS", "500"),
    ("PAYGATE_SWEEP_SUBSCRIPTION_RECHECK_MS", "500"),
];

/// No phase may take longer than this; the measured times are printed (and are far below).
const DEADLINE: Duration = Duration::from_secs(180);

struct World {
    db: TestDb,
    sim: Simulator,
    payments: Payments,
    _gate: Paygate,
}

impl World {
    async fn count(&self, sql: &str) -> i64 {
        let pool = self.db.pool().await;
        let n: i64 = sqlx::query(sql).fetch_one(&pool).await.unwrap().get(0);
        pool.close().await;
        n
    }

    /// Waits until `sql` counts `want`; returns how long that took from `since`.
    async fn converged(&self, what: &str, sql: &str, want: i64, since: Instant) -> Duration {
        loop {
            let n = self.count(sql).await;
            if n == want {
                return since.elapsed();
            }
            assert!(since.elapsed() < DEADLINE, "{what}: {n} of {want} after {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// (payment id, sim session) of a checkout the buyer paid at Paymentwall.
async fn paid_checkout(w: &World, merchant_uid: String, subscription: bool) -> (String, String) {
    let mut request = checkout_request("main", &merchant_uid);
    if subscription {
        request.subscription =
            Some(pb::SubscriptionTerms { period_length: 1, period_type: "month".into(), recurring: true });
    }
    let session = w.payments.clone().create_checkout_session(request).await.unwrap().into_inner();
    let sim_session = w.sim.open(&session.redirect_url).await;
    w.sim.control(&format!("/sessions/{sim_session}/pay"), None).await;
    (session.payment_id, sim_session)
}

async fn converges(backend: Backend, lossy: serde_json::Value) {
    let db = TestDb::new(backend).await;
    let sim = Simulator::start();
    let (_, key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &SWEEP);
    let channel = gate.channels(&key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await;
    sim.add_project(PROJECT_KEY, SECRET_KEY, &gate.http_url(&channel.unwrap().get_ref().pingback_path), 3).await;
    let url = format!("{}/control/behaviour", sim.base_url());
    assert_eq!(sim.http.post(url).json(&lossy).send().await.unwrap().status(), 204);
    let payments = gate.payments(&key).await;
    let w = World { db, sim, payments, _gate: gate };

    // 1. Payments: one-time and subscriptions, paid at Paymentwall.
    let orders = (0..PAYMENTS).map(|i| (format!("order-{i}"), false));
    let subs = (0..SUBSCRIPTIONS).map(|i| (format!("sub-{i}"), true));
    let made: Vec<(String, String)> = stream::iter(orders.chain(subs))
        .map(|(uid, sub)| paid_checkout(&w, uid, sub))
        .buffered(PARALLEL)
        .collect()
        .await;
    let paid_at = Instant::now();
    let all = (PAYMENTS + SUBSCRIPTIONS) as i64;
    let paid = w.converged("paid", "SELECT COUNT(*) FROM payments WHERE status = 'PAID'", all, paid_at).await;

    // 2. Refunds of 200 one-time payments: Paymentwall refunds them; their type 2 may be lost.
    let refunded: Vec<&String> = made[..REFUNDS].iter().map(|(id, _)| id).collect();
    stream::iter(&refunded)
        .map(|id| {
            let request = pb::RefundPaymentRequest {
                payment_id: (*id).clone(),
                reason: "customer asked".into(),
                ..Default::default()
            };
            let mut client = w.payments.clone();
            async move { client.refund_payment(request).await.unwrap() }
        })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<_>>()
        .await;
    let refunds_at = Instant::now();
    let sql = "SELECT COUNT(*) FROM payments WHERE status = 'CANCELLED'";
    let cancelled = w.converged("refunded", sql, REFUNDS as i64, refunds_at).await;

    // 3. Renewals: Paymentwall bills each subscription again, round after round (a period apart
    // in life; here as soon as the last round converged).
    let sub_sessions: Vec<&String> = made[PAYMENTS..].iter().map(|(_, s)| s).collect();
    let mut renewed = Vec::new();
    for round in 1..=RENEWAL_ROUNDS {
        for session in &sub_sessions {
            w.sim.control(&format!("/sessions/{session}/renew"), None).await;
        }
        let at = Instant::now();
        let want = (SUBSCRIPTIONS * round) as i64;
        let sql = "SELECT CAST(COALESCE(SUM(renewals), 0) AS BIGINT) FROM subscriptions";
        renewed.push(w.converged("renewed", sql, want, at).await);
    }

    // 4. Ten subscriptions stopped (CancelSubscription): Paymentwall's type 12 may be lost.
    let ids: Vec<String> = {
        let pool = w.db.pool().await;
        let rows =
            sqlx::query("SELECT subscription_id FROM subscriptions ORDER BY subscription_id").fetch_all(&pool).await;
        pool.close().await;
        rows.unwrap().iter().take(STOPPED).map(|r| r.get(0)).collect()
    };
    for id in &ids {
        let request = pb::CancelSubscriptionRequest { subscription_id: id.clone(), reason: "downgrade".into() };
        w.payments.clone().cancel_subscription(request).await.unwrap();
    }
    let stop_at = Instant::now();
    let sql = "SELECT COUNT(*) FROM subscriptions WHERE status = 'CANCELLED'";
    let stopped = w.converged("stopped", sql, STOPPED as i64, stop_at).await;

    // The truth, payment by payment: the simulator's refs and refunds are paygate's.
    let pool = w.db.pool().await;
    let rows =
        sqlx::query("SELECT payment_id, status, provider_ref, subscription_id FROM payments").fetch_all(&pool).await;
    let stored: HashMap<String, (String, Option<String>, Option<String>)> =
        rows.unwrap().iter().map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3)))).collect();
    assert_eq!(stored.len(), PAYMENTS + SUBSCRIPTIONS * (1 + RENEWAL_ROUNDS), "one payment per charge, no more");
    let refunded: HashSet<&str> = refunded.iter().map(|s| s.as_str()).collect();
    let mut renewal_refs = HashSet::new();
    for (payment_id, sim_session) in &made {
        let truth = w.sim.session(sim_session).await;
        let (status, provider_ref, _) = &stored[payment_id];
        assert_eq!(provider_ref.as_deref(), truth["reference"].as_str(), "{payment_id}");
        let want = if truth["refunded"] == true { "CANCELLED" } else { "PAID" };
        assert_eq!(status, want, "{payment_id}");
        assert_eq!(refunded.contains(payment_id.as_str()), truth["refunded"] == true, "{payment_id}");
        for r in truth["renewal_refs"].as_array().unwrap() {
            renewal_refs.insert(r.as_str().unwrap().to_owned());
        }
    }
    let stored_renewals: HashSet<String> = stored
        .iter()
        .filter(|(id, (_, _, sub))| sub.is_some() && !made.iter().any(|(m, _)| m == *id))
        .filter_map(|(_, (status, r, _))| (status == "PAID").then(|| r.clone()).flatten())
        .collect();
    if stored_renewals != renewal_refs {
        let odd: Vec<_> = stored
            .iter()
            .filter(|(_, (status, r, _))| {
                r.as_ref().is_some_and(|r| renewal_refs.contains(r) && !stored_renewals.contains(r))
                    || status != "PAID" && status != "CANCELLED"
            })
            .collect();
        panic!("renewals stored {} of {}; rows that differ: {odd:?}", stored_renewals.len(), renewal_refs.len());
    }

    // Nothing doubled: no event twice for one payment, one succeeded refund each, of its amount.
    let doubled =
        sqlx::query("SELECT payment_id, kind FROM payment_events GROUP BY payment_id, kind HAVING COUNT(*) > 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(doubled.is_empty(), "{} events applied twice", doubled.len());
    let twice = sqlx::query(
        "SELECT provider_ref FROM payments WHERE provider_ref IS NOT NULL GROUP BY provider_ref HAVING COUNT(*) > 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(twice.is_empty(), "{} provider refs recorded as two payments", twice.len());
    let refunds = sqlx::query(
        "SELECT COUNT(*), CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM cancellations WHERE status = 'SUCCEEDED'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((refunds.get::<i64, _>(0), refunds.get::<i64, _>(1)), (REFUNDS as i64, REFUNDS as i64 * 999));
    let live = sqlx::query("SELECT COUNT(*) FROM payments WHERE is_test = 0").fetch_one(&pool).await.unwrap();
    assert_eq!(live.get::<i64, _>(0), 0, "every payment of the TEST channel is a test payment");
    let others = sqlx::query("SELECT COUNT(*) FROM cancellations WHERE status <> 'SUCCEEDED'").fetch_one(&pool).await;
    assert_eq!(others.unwrap().get::<i64, _>(0), 0);
    pool.close().await;

    let stats: serde_json::Value =
        w.sim.http.get(format!("{}/control/stats", w.sim.base_url())).send().await.unwrap().json().await.unwrap();
    println!(
        "convergence {backend:?} {lossy}: {all} payments paid in {paid:?}, {REFUNDS} refunds in {cancelled:?}, \
         {SUBSCRIPTIONS} renewals per round in {renewed:?}, {STOPPED} stops in {stopped:?}; \
         pingbacks dropped {}, duplicated {}, status API calls {}",
        stats["pingbacks_dropped"], stats["pingbacks_duplicated"], stats["payment_status"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pingback_lost_postgres() {
    converges(Backend::Postgres, serde_json::json!({ "drop_pingbacks": 1.0 })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pingback_lost_sqlite() {
    converges(Backend::Sqlite, serde_json::json!({ "drop_pingbacks": 1.0 })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_lost_the_rest_doubled_and_reordered_postgres() {
    let lossy = serde_json::json!({ "drop_pingbacks": 0.3, "duplicate_pingbacks": true, "reorder_ms": 300 });
    converges(Backend::Postgres, lossy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_lost_the_rest_doubled_and_reordered_sqlite() {
    let lossy = serde_json::json!({ "drop_pingbacks": 0.3, "duplicate_pingbacks": true, "reorder_ms": 300 });
    converges(Backend::Sqlite, lossy).await;
}
