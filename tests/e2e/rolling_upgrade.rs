//! A rolling upgrade from the last release to this build, as Kubernetes runs one, under load: two
//! replicas of the last release serve checkouts, pingbacks, refunds, 20 streams and webhooks behind
//! a load balancer; a new replica starts (and migrates), joins, and an old one leaves the rotation,
//! gets SIGTERM and drains; then again, until only this build runs. Nothing may fail on the way.
//!
//! `scripts/test-upgrade` builds the last release named in CHANGELOG.md and runs this test with
//! `PAYGATE_UPGRADE_FROM` (that release's `paygate`) and, to plant a change, `PAYGATE_UPGRADE_TO`
//! (default: this build's).

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use paygate::proto::v1::{self as pb, PaymentStatus, payment_service_client::PaymentServiceClient};
use tonic::transport::Channel;

use crate::support::{balancer::Balancer, *};

const CHECKOUT_WORKERS: usize = 4;
const STREAMS: usize = 20;
/// Kubernetes' preStop pause: the replica is out of rotation before it is told to stop.
const PRE_STOP: Duration = Duration::from_secs(1);

/// Everything the load saw go wrong, and what it did.
#[derive(Default)]
struct Tally {
    failures: Vec<String>,
    /// Requests a draining replica refused unprocessed, sent again (see `refused_by_goaway`).
    resent: usize,
    checkouts: usize,
    refunds: usize,
    reads: usize,
    /// (payment id, simulator session)
    payments: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Tally>>;

fn payments_client(balancer: SocketAddr, api_key: &str) -> Payments {
    let channel = Channel::from_shared(format!("http://{balancer}")).unwrap().connect_lazy();
    PaymentServiceClient::with_interceptor(channel, Bearer::new(api_key))
}

/// A request that a draining replica's final GOAWAY refused: its stream id is above the last one
/// the replica processed, so no part of paygate saw it, and sending it again is safe whatever it
/// does. gRPC's own clients (grpc-go, grpc-java) resend these transparently; tonic reports them as
/// INTERNAL "h2 protocol error", and a tonic client must resend them itself (docs/upgrades.md).
///
/// Also a request the client had queued on a connection the draining replica closed before the
/// request was written (hyper's `is_canceled`: tonic reports CANCELLED "operation was canceled"):
/// it never left the client.
fn refused_by_goaway(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            return hyper.is_canceled();
        }
        source = error.source();
    }
    false
}

/// `call`, sent again while a draining replica refuses it unprocessed.
async fn resending_refused<T, F, Fut>(tally: &Shared, mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    loop {
        match call().await {
            Err(status) if refused_by_goaway(&status) => tally.lock().unwrap().resent += 1,
            answer => return answer,
        }
    }
}

fn failed(tally: &Shared, what: &str, status: &tonic::Status, started: Instant) {
    let at = started.elapsed().as_secs_f64();
    tally.lock().unwrap().failures.push(format!("{at:.2}s {what}: {:?} {}", status.code(), status.message()));
}

/// One caller's loop: a checkout, opened on the provider's page; three in four paid there (the
/// simulator then sends the pingback, through the balancer); every third paid one refunded.
async fn checkout_loop(worker: usize, payments: Payments, sim: Arc<Simulator>, tally: Shared, stop: Arc<AtomicBool>) {
    let started = Instant::now();
    let mut n = 0;
    'load: while !stop.load(Ordering::Relaxed) {
        n += 1;
        let uid = format!("order-{worker}-{n}");
        let mut request = checkout_request("main", &uid);
        request.idempotency_key = format!("checkout-{uid}");
        let checkout = || {
            let (mut payments, request) = (payments.clone(), request.clone());
            async move { payments.create_checkout_session(request).await }
        };
        let session = match resending_refused(&tally, checkout).await {
            Ok(session) => session.into_inner(),
            Err(status) => {
                failed(&tally, "CreateCheckoutSession", &status, started);
                continue;
            }
        };
        tally.lock().unwrap().checkouts += 1;
        let sim_session = sim.open(&session.redirect_url).await;
        let refund = n % 4 != 0 && n % 3 == 0;
        tally.lock().unwrap().payments.push((session.payment_id.clone(), sim_session.clone()));
        if n % 4 == 0 {
            continue;
        }
        sim.control(&format!("/sessions/{sim_session}/pay"), None).await;
        if !refund {
            continue;
        }
        // The pingback is on its way: refund once the payment is paid.
        for wait in 0.. {
            if wait == 500 {
                tally.lock().unwrap().failures.push(format!("{uid} was never paid"));
                continue 'load;
            }
            let read = || {
                let (mut payments, id) = (payments.clone(), session.payment_id.clone());
                let lookup = pb::get_payment_request::Lookup::PaymentId(id);
                async move { payments.get_payment(pb::GetPaymentRequest { lookup: Some(lookup) }).await }
            };
            match resending_refused(&tally, read).await {
                Ok(payment) => {
                    tally.lock().unwrap().reads += 1;
                    if payment.get_ref().status == PaymentStatus::Paid as i32 {
                        break;
                    }
                }
                Err(status) => failed(&tally, "GetPayment", &status, started),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let request = pb::RefundPaymentRequest {
            payment_id: session.payment_id.clone(),
            reason: "customer asked".into(),
            idempotency_key: format!("refund-{uid}"),
            ..Default::default()
        };
        let refund = || {
            let (mut payments, request) = (payments.clone(), request.clone());
            async move { payments.refund_payment(request).await }
        };
        match resending_refused(&tally, refund).await {
            Ok(_) => tally.lock().unwrap().refunds += 1,
            Err(status) => failed(&tally, "RefundPayment", &status, started),
        }
    }
}

/// What one stream received, across its reconnects.
#[derive(Default)]
struct Watched {
    event_ids: Vec<String>,
    resumes: usize,
}

/// When the streams may stop: once they reach the last event, or when the test gives up waiting.
#[derive(Default)]
struct StreamsEnd {
    last_event: Mutex<Option<String>>,
    give_up: AtomicBool,
}

impl StreamsEnd {
    fn reached(&self, cursor: &str) -> bool {
        self.give_up.load(Ordering::Relaxed) || self.last_event.lock().unwrap().as_deref() == Some(cursor)
    }
}

/// A stream of every event after `after`, resuming by its cursor whenever it ends (a draining
/// replica ends it with UNAVAILABLE), until `end`. Its own connection, so the streams spread.
async fn stream_loop(
    balancer: SocketAddr,
    api_key: String,
    after: String,
    tally: Shared,
    end: Arc<StreamsEnd>,
) -> Watched {
    let started = Instant::now();
    let mut watched = Watched::default();
    let mut cursor = after;
    while !end.reached(&cursor) {
        let mut payments = payments_client(balancer, &api_key);
        let request = pb::WatchPaymentsRequest { resume_after: cursor.clone(), ..Default::default() };
        let mut stream = match payments.watch_payments(request).await {
            Ok(stream) => stream.into_inner(),
            Err(status) if refused_by_goaway(&status) => {
                tally.lock().unwrap().resent += 1;
                continue;
            }
            Err(status) => {
                failed(&tally, "WatchPayments", &status, started);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if end.reached(&cursor) { return watched } else { continue }
                }
            };
            match message {
                Ok(Some(event)) => {
                    cursor = event.event_id.clone();
                    watched.event_ids.push(event.event_id);
                }
                // Ended by a draining replica: resume where it stopped.
                Ok(None) => break,
                Err(status) if status.code() == tonic::Code::Unavailable => break,
                Err(status) => {
                    failed(&tally, "WatchPayments stream", &status, started);
                    break;
                }
            }
        }
        watched.resumes += 1;
    }
    watched
}

/// The replicas of one release, started together (they take turns at the migrations).
async fn start_replicas(binary: &str, db: &Arc<TestDb>, env: &[(String, String)], count: usize) -> Vec<Paygate> {
    let mut starting = Vec::new();
    for _ in 0..count {
        let (binary, db, env) = (binary.to_owned(), db.clone(), env.to_vec());
        starting.push(tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Paygate::start_binary(&binary, &db, &env)
        }));
    }
    let mut replicas = Vec::new();
    for replica in starting {
        replicas.push(replica.await.expect("replica started"));
    }
    replicas
}

fn version_of(binary: &str) -> String {
    let out = std::process::Command::new(binary).arg("--version").output().expect("paygate --version");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every event of the caller, in log order.
async fn all_events(payments: &mut Payments) -> Vec<String> {
    let (mut events, mut after) = (Vec::new(), String::new());
    loop {
        let request = pb::ListPaymentEventsRequest { after: after.clone(), page_size: 500, ..Default::default() };
        let page = payments.list_payment_events(request).await.expect("events").into_inner();
        if page.events.is_empty() {
            return events;
        }
        events.extend(page.events.into_iter().map(|e| e.event_id));
        after = page.next_cursor;
    }
}

/// The payment's status as paygate answers it now.
async fn status_of(payments: &mut Payments, payment_id: &str) -> Result<PaymentStatus, tonic::Status> {
    let lookup = pb::get_payment_request::Lookup::PaymentId(payment_id.into());
    let payment = payments.get_payment(pb::GetPaymentRequest { lookup: Some(lookup) }).await?.into_inner();
    Ok(payment.status())
}

/// What the provider says a payment is now: its session's status, and whether it was refunded.
fn expected_status(session: &serde_json::Value) -> PaymentStatus {
    match (session["status"].as_str(), session["refunded"].as_bool()) {
        (Some("paid"), Some(true)) => PaymentStatus::Cancelled,
        (Some("paid"), _) => PaymentStatus::Paid,
        _ => PaymentStatus::Ready,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "scripts/test-upgrade runs it, with the last release it builds"]
async fn a_rolling_upgrade_from_the_last_release_fails_no_request() {
    let from = std::env::var("PAYGATE_UPGRADE_FROM").expect("PAYGATE_UPGRADE_FROM: the last release's paygate");
    let to = std::env::var("PAYGATE_UPGRADE_TO").unwrap_or_else(|_| PAYGATE.to_owned());
    println!("upgrade: {} -> {}", version_of(&from), version_of(&to));

    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let redis = RedisServer::start();
    let sim = Arc::new(Simulator::start());
    let receiver = Receiver::start(0);
    let env: Vec<(String, String)> = [
        ("PAYGATE_REDIS_URL", redis.url().as_str()),
        ("PAYGATE_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true"),
        ("PAYGATE_WEBHOOK_RETRY_BASE_MS", "100"),
        ("PAYGATE_WEBHOOK_RETRY_MAX_MS", "400"),
        ("PAYGATE_WEBHOOK_POLL_INTERVAL_MS", "50"),
        ("PAYGATE_SHUTDOWN_GRACE_MS", "10000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();

    // The last release, two replicas behind the balancers (gRPC, and HTTP for the pingbacks).
    let (_, api_key) = create_merchant_with(&from, &db, "Acme");
    let mut old = start_replicas(&from, &db, &env, 2).await;
    let grpc = Balancer::start(&old.iter().map(|r| r.grpc_addr).collect::<Vec<_>>()).await;
    let http = Balancer::start(&old.iter().map(|r| r.http_addr).collect::<Vec<_>>()).await;
    let channel = old[0]
        .channels(&api_key)
        .await
        .create_channel(channel_request(&sim, "main", pb::ChannelMode::Test))
        .await
        .expect("channel")
        .into_inner();
    let pingback_url = format!("http://{}{}", http.addr, channel.pingback_path);
    sim.add_project(PROJECT_KEY, SECRET_KEY, &pingback_url, 3).await;
    let mut hooks =
        pb::webhook_service_client::WebhookServiceClient::with_interceptor(old[0].grpc().await, Bearer::new(&api_key));
    let endpoint = pb::SetWebhookEndpointRequest { url: receiver.url(), event_types: vec![] };
    let secret = hooks.set_webhook_endpoint(endpoint).await.expect("webhook endpoint").into_inner().secret;
    receiver.trust(&[&secret]).await;

    // A first event, so that every stream starts from the same cursor and must see all the rest.
    let mut reader = payments_client(grpc.addr, &api_key);
    checkout_and_pay(&old[0], &mut reader, "order-first").await;
    // Listed once the log's horizon has passed it (right after its commit, it may not have).
    let mut start = None;
    for _ in 0..250 {
        start = all_events(&mut reader).await.last().cloned();
        if start.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = start.expect("the first payment's event");

    let (tally, stop, streams_end) =
        (Shared::default(), Arc::new(AtomicBool::new(false)), Arc::new(StreamsEnd::default()));
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let (tally, end, api_key, start) = (tally.clone(), streams_end.clone(), api_key.clone(), start.clone());
        streams.push(tokio::spawn(stream_loop(grpc.addr, api_key, start, tally, end)));
    }
    let mut workers = Vec::new();
    for worker in 0..CHECKOUT_WORKERS {
        let payments = payments_client(grpc.addr, &api_key);
        workers.push(tokio::spawn(checkout_loop(worker, payments, sim.clone(), tally.clone(), stop.clone())));
    }

    // The rollout: maxSurge 1, maxUnavailable 0.
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut new = Vec::new();
    let mut drains = Vec::new();
    while let Some(mut leaving) = old.pop() {
        let joining = start_replicas(&to, &db, &env, 1).await.pop().unwrap();
        grpc.add(joining.grpc_addr);
        http.add(joining.http_addr);
        println!("{:.2}s: a replica of the new release is ready and in rotation", began.elapsed().as_secs_f64());
        new.push(joining);
        tokio::time::sleep(Duration::from_secs(2)).await;
        grpc.remove(leaving.grpc_addr);
        http.remove(leaving.http_addr);
        tokio::time::sleep(PRE_STOP).await;
        let asked = Instant::now();
        let exit = tokio::task::spawn_blocking(move || {
            let exit = leaving.process.terminate(Duration::from_secs(30));
            (exit, leaving)
        })
        .await
        .unwrap();
        let drained = asked.elapsed();
        println!("{:.2}s: an old replica drained in {drained:.2?}, exit {:?}", began.elapsed().as_secs_f64(), exit.0);
        drains.push((drained, exit.0.map(|s| s.success())));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    println!("{:.2}s: load stopped; only the new release runs", began.elapsed().as_secs_f64());

    // Settle: every pingback the simulator owes delivered, every refund's type 2 too, every webhook.
    let payments_made = tally.lock().unwrap().payments.clone();
    let mut pingbacks = (0, 0, 0); // (sent, answered OK, needed a retry)
    let mut paid_at_provider = 0;
    let mut retried_with = BTreeMap::new();
    let mut wrong_state = Vec::new();
    let mut reader = payments_client(grpc.addr, &api_key);
    // Long enough for the simulator's retries (every 200 ms); a broken upgrade must not wait it out per payment.
    let settle_by = Instant::now() + Duration::from_secs(30);
    for (payment_id, sim_session) in &payments_made {
        let mut session = sim.session(sim_session).await;
        while Instant::now() < settle_by {
            let settled = session["pingbacks"].as_array().is_some_and(|list| {
                list.iter().all(|p| p["delivered"] == true || p["attempts"].as_array().is_some_and(|a| a.len() >= 50))
            });
            let have = status_of(&mut reader, payment_id).await;
            if settled && have.as_ref().is_ok_and(|have| *have == expected_status(&session)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            session = sim.session(sim_session).await;
        }
        for pingback in session["pingbacks"].as_array().into_iter().flatten() {
            pingbacks.0 += 1;
            pingbacks.1 += usize::from(pingback["delivered"] == true);
            let attempts = pingback["attempts"].as_array().cloned().unwrap_or_default();
            if attempts.len() > 1 {
                pingbacks.2 += 1;
                for attempt in &attempts[..attempts.len() - 1] {
                    *retried_with.entry(attempt["status"].to_string()).or_insert(0) += 1;
                }
            }
        }
        paid_at_provider += usize::from(session["status"] == "paid");
        let (want, have) = (expected_status(&session), status_of(&mut reader, payment_id).await);
        if have.as_ref().ok() != Some(&want) {
            wrong_state.push(format!("{payment_id}: the provider says {want:?}, paygate {have:?}"));
        }
    }
    let events = all_events(&mut reader).await;
    let after_start: Vec<String> = events.iter().skip_while(|e| **e != start).skip(1).cloned().collect();
    let received = || async { receiver.received().await["received"].as_array().cloned().unwrap_or_default() };
    let webhooks_by = Instant::now() + Duration::from_secs(15);
    while received().await.len() < events.len() && Instant::now() < webhooks_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything still on its way would be a duplicate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let webhooks = received().await;
    // Each stream stops once it has the last event; a stream still short of it after 15 s is wrong.
    *streams_end.last_event.lock().unwrap() = events.last().cloned();
    let give_up = streams_end.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(15)).await;
        give_up.give_up.store(true, Ordering::Relaxed);
    });
    let mut watched = Vec::new();
    for stream in streams {
        watched.push(stream.await.unwrap());
    }

    // Figures.
    let tally = tally.lock().unwrap();
    println!(
        "load: {} checkouts, {} refunds, {} payments ({} paid at the provider), {} reads; {} failed RPCs",
        tally.checkouts,
        tally.refunds,
        payments_made.len(),
        paid_at_provider,
        tally.reads,
        tally.failures.len()
    );
    for failure in tally.failures.iter().take(10) {
        println!("  failed: {failure}");
    }
    println!("requests a draining replica refused unprocessed (its final GOAWAY), sent again: {}", tally.resent);
    println!(
        "pingbacks: {} sent, {} answered OK, {} needed a retry (earlier answers: {retried_with:?})",
        pingbacks.0, pingbacks.1, pingbacks.2
    );
    for (drained, success) in &drains {
        println!("drain: {drained:.2?}, exited cleanly: {success:?}");
    }
    let mut stream_problems = Vec::new();
    let resumes: usize = watched.iter().map(|w| w.resumes).sum();
    for (n, w) in watched.iter().enumerate() {
        if w.event_ids != after_start {
            let (got, want): (HashSet<_>, HashSet<_>) = (w.event_ids.iter().collect(), after_start.iter().collect());
            stream_problems.push(format!(
                "stream {n}: {} events for {} in the log ({} missing, {} duplicated or out of order)",
                w.event_ids.len(),
                after_start.len(),
                want.difference(&got).count(),
                w.event_ids.len() - got.len()
            ));
        }
    }
    println!(
        "streams: {STREAMS} streams, {} events each expected, {resumes} resumes by cursor; {} streams wrong",
        after_start.len(),
        stream_problems.len()
    );
    let webhook_events: Vec<&str> = webhooks.iter().filter_map(|w| w["event_id"].as_str()).collect();
    let distinct: HashSet<&str> = webhook_events.iter().copied().collect();
    let missing_webhooks = events.iter().filter(|e| !distinct.contains(e.as_str())).count();
    println!(
        "webhooks: {} events, {} deliveries accepted, {} missing, {} duplicates",
        events.len(),
        webhook_events.len(),
        missing_webhooks,
        webhook_events.len() - distinct.len()
    );
    println!(
        "payments in the provider's state: {} of {}",
        payments_made.len() - wrong_state.len(),
        payments_made.len()
    );

    assert!(tally.failures.is_empty(), "{} RPCs failed during the upgrade (the first above)", tally.failures.len());
    assert_eq!(pingbacks.0, pingbacks.1, "every pingback answered OK");
    assert!(stream_problems.is_empty(), "{}", stream_problems.join("\n"));
    assert_eq!((missing_webhooks, webhook_events.len() - distinct.len()), (0, 0), "every webhook once");
    assert!(wrong_state.is_empty(), "{}", wrong_state.join("\n"));
    assert!(drains.iter().all(|(_, success)| *success == Some(true)), "old replicas exit cleanly");
    assert!(tally.checkouts > 20 && tally.refunds > 2, "the load ran");
}
