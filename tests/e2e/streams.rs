//! WatchPayments through the real binaries: across replicas, resumed after disconnects, through a
//! Redis outage, with snapshots, slow readers, limits, and shutdown.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use paygate::proto::v1::{self as pb, PaymentStatus, payment_service_client::PaymentServiceClient};
use tonic::{Code, Streaming, transport::Endpoint};

use crate::support::*;

fn watch_all(resume_after: &str) -> pb::WatchPaymentsRequest {
    pb::WatchPaymentsRequest { resume_after: resume_after.into(), ..Default::default() }
}

async fn next(
    stream: &mut Streaming<pb::PaymentEvent>,
    within: Duration,
) -> Option<Result<pb::PaymentEvent, tonic::Status>> {
    match tokio::time::timeout(within, stream.message()).await {
        Ok(Ok(Some(event))) => Some(Ok(event)),
        Ok(Ok(None)) => None,
        Ok(Err(status)) => Some(Err(status)),
        Err(_) => None,
    }
}

/// Reads events until `count` have arrived (panics after `within`).
async fn collect(stream: &mut Streaming<pb::PaymentEvent>, count: usize, within: Duration) -> Vec<pb::PaymentEvent> {
    let deadline = Instant::now() + within;
    let mut events = Vec::new();
    while events.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(stream, left).await {
            Some(Ok(event)) => events.push(event),
            other => panic!("after {} of {count} events: {other:?}", events.len()),
        }
    }
    events
}

fn payment_ids(events: &[pb::PaymentEvent]) -> Vec<String> {
    events.iter().map(|e| e.payment.as_ref().unwrap().payment_id.clone()).collect()
}

async fn setup_channel(gate: &Paygate, sim: &Simulator, api_key: &str) {
    gate.channels(api_key).await.create_channel(channel_request(sim, "main", pb::ChannelMode::Test)).await.unwrap();
}

/// Acme's shop, and a second merchant with a channel of its own whose events fill the log.
async fn shop_beside_a_busy_merchant(backend: Backend) -> (Shop, String) {
    let shop = Shop::open(backend, &[]).await;
    let (_, busy_key) = create_merchant(&shop.db, "Busy Co");
    let busy_channel = channel_request(&shop.sim, "busy", pb::ChannelMode::Test);
    shop.gate.channels(&busy_key).await.create_channel(busy_channel).await.unwrap();
    (shop, busy_key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cross_replicas_resume_and_survive_a_redis_outage() {
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let mut redis = RedisServer::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let prefix = format!("t{}:", ulid::Ulid::new());
    let redis_url = redis.url();
    // Polling is slow here, so only the Redis bridge can explain fast cross-replica delivery.
    let env = [
        ("PAYGATE_REDIS_URL", redis_url.as_str()),
        ("PAYGATE_REDIS_KEY_PREFIX", prefix.as_str()),
        ("PAYGATE_EVENT_POLL_INTERVAL_MS", "3000"),
    ];
    let gate_a = Paygate::start(&db, &env);
    let mut gate_b = Paygate::start(&db, &env);
    setup_channel(&gate_a, &sim, &api_key).await;
    let mut on_a = gate_a.payments(&api_key).await;
    let mut on_b = gate_b.payments(&api_key).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // both bridges subscribed

    // Paid through a pingback on A, seen by a subscriber on B.
    let mut following = on_b.watch_payments(watch_all("")).await.unwrap().into_inner();
    let started = Instant::now();
    let first = checkout_and_pay(&gate_a, &mut on_a, "order-1").await;
    let event = collect(&mut following, 1, Duration::from_secs(10)).await.remove(0);
    let crossed = started.elapsed();
    assert_eq!(
        (event.kind.as_str(), event.payment.as_ref().unwrap().payment_id.as_str()),
        ("payment.paid", first.as_str())
    );
    assert_eq!(event.payment.as_ref().unwrap().status, PaymentStatus::Paid as i32);
    assert!(crossed < Duration::from_millis(2500), "came through redis, not the 3 s poll: {crossed:?}");

    // Disconnect after one event; three more happen; resuming gets exactly those, in order.
    let mut short = on_b.watch_payments(watch_all("")).await.unwrap().into_inner();
    let second = checkout_and_pay(&gate_a, &mut on_a, "order-2").await;
    let seen = collect(&mut short, 1, Duration::from_secs(10)).await.remove(0);
    assert_eq!(seen.payment.unwrap().payment_id, second);
    drop(short);
    let mut missed = Vec::new();
    for n in 3..=5 {
        missed.push(checkout_and_pay(&gate_a, &mut on_a, &format!("order-{n}")).await);
    }
    let mut resumed = on_b.watch_payments(watch_all(&seen.event_id)).await.unwrap().into_inner();
    let replayed = collect(&mut resumed, 3, Duration::from_secs(10)).await;
    assert_eq!(payment_ids(&replayed), missed);
    assert!(next(&mut resumed, Duration::from_millis(500)).await.is_none(), "nothing twice");
    let ids: Vec<&str> = replayed.iter().map(|e| e.event_id.as_str()).collect();
    assert!(ids.windows(2).all(|w| w[0] != w[1]));

    // Redis dies during a burst of pingbacks on A: B's subscribers still get every event.
    collect(&mut following, 4, Duration::from_secs(10)).await; // order-2..5
    redis.stop();
    let mut burst = Vec::new();
    for n in 0..20 {
        burst.push(checkout_and_pay(&gate_a, &mut on_a, &format!("burst-{n}")).await);
    }
    let delivered = collect(&mut following, 20, Duration::from_secs(20)).await;
    assert_eq!(payment_ids(&delivered), burst, "every event, in order, despite the outage");
    let resumed_ids = payment_ids(&collect(&mut resumed, 20, Duration::from_secs(20)).await);
    assert_eq!(resumed_ids, burst);
    redis.restart();

    // SIGTERM on B: its streams end with UNAVAILABLE naming the cursor; B exits 0.
    let last = delivered.last().unwrap().event_id.clone();
    let status = gate_b.process.terminate(Duration::from_secs(15)).expect("B exits within the grace period");
    assert!(status.success(), "{status:?}");
    match next(&mut following, Duration::from_secs(5)).await {
        Some(Err(end)) => {
            assert_eq!(end.code(), Code::Unavailable, "{end:?}");
            assert!(end.message().contains(&format!("resume_after={last}")), "{}", end.message());
        }
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    // ...and a client resumes on A with that cursor.
    let after = checkout_and_pay(&gate_a, &mut on_a, "after-shutdown").await;
    let mut elsewhere = on_a.watch_payments(watch_all(&last)).await.unwrap().into_inner();
    assert_eq!(payment_ids(&collect(&mut elsewhere, 1, Duration::from_secs(10)).await), [after]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_streams_snapshots_filters_and_pages() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[]);
    setup_channel(&gate, &sim, &api_key).await;
    let mut payments = gate.payments(&api_key).await;

    // Subscribing after the payment completed yields its current state at once.
    let done = checkout_and_pay(&gate, &mut payments, "order-done").await;
    let request = pb::WatchPaymentsRequest { payment_ids: vec![done.clone()], ..Default::default() };
    let mut stream = payments.watch_payments(request).await.unwrap().into_inner();
    let snapshot = collect(&mut stream, 1, Duration::from_secs(2)).await.remove(0);
    assert!(snapshot.snapshot);
    assert_eq!(snapshot.payment.as_ref().unwrap().status, PaymentStatus::Paid as i32);

    // Filters: a status filter sees only matching events.
    let refunded_only = pb::WatchPaymentsRequest { statuses: vec![PaymentStatus::Failed as i32], ..Default::default() };
    let mut failed_stream = payments.watch_payments(refunded_only).await.unwrap().into_inner();
    let mut all = payments.watch_payments(watch_all("")).await.unwrap().into_inner();
    let other = checkout_and_pay(&gate, &mut payments, "order-other").await;
    assert_eq!(payment_ids(&collect(&mut all, 1, Duration::from_secs(5)).await), std::slice::from_ref(&other));
    assert!(next(&mut failed_stream, Duration::from_millis(300)).await.is_none());

    // The same log in pages, and resuming from any page cursor.
    let page = payments
        .list_payment_events(pb::ListPaymentEventsRequest { page_size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(payment_ids(&page.events), std::slice::from_ref(&done));
    let rest = payments
        .list_payment_events(pb::ListPaymentEventsRequest { after: page.next_cursor.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(payment_ids(&rest.events), std::slice::from_ref(&other));
    let mut resumed = payments.watch_payments(watch_all(&page.next_cursor)).await.unwrap().into_inner();
    assert_eq!(payment_ids(&collect(&mut resumed, 1, Duration::from_secs(5)).await), [other]);

    // Another merchant's stream sees none of it; bad cursors are refused.
    let (_, other_key) = create_merchant(&db, "Other Co");
    let mut foreign = gate.payments(&other_key).await.watch_payments(watch_all("0-0")).await.unwrap().into_inner();
    assert!(next(&mut foreign, Duration::from_millis(500)).await.is_none());
    let status = payments.watch_payments(watch_all("yesterday")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("resume_after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_cut_off_while_a_hundred_others_get_everything() {
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[("PAYGATE_STREAM_BUFFER", "16"), ("PAYGATE_MAX_STREAMS_PER_MERCHANT", "101")]);
    setup_channel(&gate, &sim, &api_key).await;
    let mut payments = gate.payments(&api_key).await;

    // The slow reader's connection has tiny HTTP/2 windows, and it never reads.
    let tiny = Endpoint::from_shared(format!("http://{}", gate.grpc_addr))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut slow_client = PaymentServiceClient::with_interceptor(tiny, Bearer::new(&api_key));
    let mut slow = slow_client.watch_payments(watch_all("")).await.unwrap().into_inner();
    let mut readers = Vec::new();
    for _ in 0..100 {
        readers.push(payments.watch_payments(watch_all("")).await.unwrap().into_inner());
    }
    let status = payments.watch_payments(watch_all("")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "the per-merchant stream limit: {status:?}");

    // Each reader counts what it got; the payments go no faster than the slowest reader reads
    // (at most 8 events ahead of it, half its buffer), so a reader of this test process that the
    // scheduler leaves waiting on a loaded machine is never mistaken for one that does not read.
    let received: Vec<Arc<AtomicUsize>> = (0..readers.len()).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let collectors: Vec<_> = readers
        .into_iter()
        .zip(received.clone())
        .map(|(mut stream, received)| {
            tokio::spawn(async move {
                let mut events = Vec::new();
                while events.len() < 150 {
                    events.extend(collect(&mut stream, 1, Duration::from_secs(60)).await);
                    received.fetch_add(1, Ordering::Relaxed);
                }
                payment_ids(&events)
            })
        })
        .collect();
    let mut paid = Vec::new();
    for n in 0..150 {
        paid.push(checkout_and_pay(&gate, &mut payments, &format!("order-{n}")).await);
        let deadline = Instant::now() + Duration::from_secs(60);
        while received.iter().any(|r| r.load(Ordering::Relaxed) + 8 <= n) {
            assert!(Instant::now() < deadline, "a reader stopped reading at event {n}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for collector in collectors {
        assert_eq!(collector.await.unwrap(), paid, "every reader got every event, in order");
    }

    // The slow reader was cut off: what was buffered, then RESOURCE_EXHAUSTED with its cursor.
    let mut got = 0;
    loop {
        match next(&mut slow, Duration::from_secs(10)).await {
            Some(Ok(_)) => got += 1,
            Some(Err(end)) => {
                assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
                assert!(end.message().contains("resume_after="), "{}", end.message());
                break;
            }
            None => panic!("the slow stream neither delivered nor ended"),
        }
    }
    assert!(got < 150, "it was cut off before the end ({got} events)");
    assert!(metric(&gate, "paygate_streams_lagged_total").await >= 1.0);
}

/// Pays `payment_id` with a pingback on `channel_key`.
async fn pay(gate: &Paygate, channel_key: &str, payment_id: &str) {
    let reference = format!("b{}", ulid::Ulid::new());
    let pingback = Pingback::new(payment_id).uid("user-40012").reference(&reference).test();
    assert_eq!(pingback.send(gate, channel_key).await, "OK");
}

/// Copies `payment_id`'s events `count` times, straight in SQL: a busy merchant's log in a moment.
pub async fn copy_events(db: &TestDb, payment_id: &str, count: i64) {
    let pool = db.pool().await;
    sqlx::query(
        "INSERT INTO payment_events (payment_id, merchant_id, kind, status, snapshot, detail, created_at) \
         SELECT e.payment_id, e.merchant_id, e.kind, e.status, e.snapshot, e.detail, e.created_at \
         FROM payment_events e, \
              (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) SELECT i FROM n) copies \
         WHERE e.payment_id = $1",
    )
    .bind(payment_id)
    .bind(count)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

/// A resume reads the caller's own events after its cursor, in order, whatever else is in the
/// log; a client token's stream shows cursors sealed to its payment, resumes from them, and
/// starts at its payment's first event from any earlier position.
async fn a_resume_reads_its_own_events(backend: Backend) {
    let (Shop { db, sim: _sim, api_key: key, gate, .. }, busy_key) = shop_beside_a_busy_merchant(backend).await;
    let mut payments = gate.payments(&key).await;
    let first = checkout_and_pay(&gate, &mut payments, "order-1").await;
    let watched = payments.create_checkout_session(checkout_request("main", "order-2")).await.unwrap().into_inner();
    let watched = watched.payment_id;
    let token = payments
        .create_payment_client_token(pb::CreatePaymentClientTokenRequest {
            payment_id: watched.clone(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut browser = gate.payments(&token).await;
    let watch_it = |resume_after: &str| pb::WatchPaymentsRequest {
        payment_ids: vec![watched.clone()],
        resume_after: resume_after.into(),
        ..Default::default()
    };
    let mut live = browser.watch_payments(watch_it("")).await.unwrap().into_inner();
    let snapshot = collect(&mut live, 1, Duration::from_secs(5)).await.remove(0);
    assert!(snapshot.snapshot);

    // Another merchant's busy log, then the watched payment's first event.
    let busy = gate.payments(&busy_key).await.create_checkout_session(checkout_request("busy", "order-b")).await;
    let busy = busy.unwrap().into_inner().payment_id;
    pay(&gate, "busy", &busy).await;
    wait_for_status(&mut gate.payments(&busy_key).await, &busy, PaymentStatus::Paid).await;
    copy_events(&db, &busy, 2_000).await;
    pay(&gate, "main", &watched).await;
    let paid = collect(&mut live, 1, Duration::from_secs(10)).await.remove(0);
    assert_eq!((paid.kind.as_str(), paid.payment.as_ref().unwrap().status()), ("payment.paid", PaymentStatus::Paid));

    // The merchant's key: its events in log order, by payment and in all.
    let listed = payments
        .list_payment_events(pb::ListPaymentEventsRequest { payment_id: watched.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(listed.len(), 1);
    let mut by_payment = payments.watch_payments(watch_it("0-0")).await.unwrap().into_inner();
    let replayed = collect(&mut by_payment, 1, Duration::from_secs(10)).await;
    assert_eq!(replayed.iter().map(|e| &e.event_id).collect::<Vec<_>>(), [&listed[0].event_id]);
    assert!(!replayed[0].snapshot);
    let mut everything = payments.watch_payments(watch_all("0-0")).await.unwrap().into_inner();
    let mine = collect(&mut everything, 2, Duration::from_secs(10)).await;
    assert_eq!(payment_ids(&mine), [first.clone(), watched.clone()]);

    // The token's cursors: sealed, none the log position.
    let position = &listed[0].event_id;
    for cursor in [&snapshot.event_id, &paid.event_id] {
        assert!(cursor.starts_with("pcc_") && !cursor.contains(position.as_str()), "{cursor} shows the log");
    }
    // From before the payment's first event (its snapshot, or any earlier position): that event.
    for from in [snapshot.event_id.as_str(), "0-0"] {
        let mut resumed = browser.watch_payments(watch_it(from)).await.unwrap().into_inner();
        let event = collect(&mut resumed, 1, Duration::from_secs(10)).await.remove(0);
        assert_eq!((event.kind.as_str(), event.payment.unwrap().payment_id), ("payment.paid", watched.clone()));
        assert!(event.event_id.starts_with("pcc_"), "{}", event.event_id);
    }
    // A cursor is its payment's alone.
    let other_token = payments
        .create_payment_client_token(pb::CreatePaymentClientTokenRequest { payment_id: first.clone(), ttl_seconds: 0 })
        .await
        .unwrap()
        .into_inner()
        .token;
    let elsewhere = pb::WatchPaymentsRequest {
        payment_ids: vec![first.clone()],
        resume_after: paid.event_id.clone(),
        ..Default::default()
    };
    let status = gate.payments(&other_token).await.watch_payments(elsewhere).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("resume_after") && !status.message().contains(&paid.event_id), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_reads_its_own_events_postgres() {
    a_resume_reads_its_own_events(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_reads_its_own_events_sqlite() {
    a_resume_reads_its_own_events(Backend::Sqlite).await;
}

/// User and system CPU the process has used, in seconds (`/proc/<pid>/stat`, clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Not a check (no timings are asserted): what a client token's resume from "0-0" costs the
/// server with 300,000 of another merchant's events in the PostgreSQL log, the figure of issue 27.
/// `cargo test --test e2e -- --ignored --nocapture resume_cost`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn resume_cost_with_300k_foreign_events_postgres() {
    let (Shop { db, sim: _sim, api_key: key, gate, .. }, busy_key) =
        shop_beside_a_busy_merchant(Backend::Postgres).await;
    let mut payments = gate.payments(&key).await;
    let watched = payments.create_checkout_session(checkout_request("main", "order-1")).await.unwrap().into_inner();
    let watched = watched.payment_id;
    let request = pb::CreatePaymentClientTokenRequest { payment_id: watched.clone(), ttl_seconds: 0 };
    let token = payments.create_payment_client_token(request).await.unwrap().into_inner().token;
    let busy = gate.payments(&busy_key).await.create_checkout_session(checkout_request("busy", "order-b")).await;
    let busy = busy.unwrap().into_inner().payment_id;
    pay(&gate, "busy", &busy).await;
    wait_for_status(&mut gate.payments(&busy_key).await, &busy, PaymentStatus::Paid).await;
    copy_events(&db, &busy, 300_000).await;
    // The watched payment's event comes after them; once a live stream has it, the hub has read
    // past the copies, and the server is idle again.
    let watch_it = |resume_after: &str| pb::WatchPaymentsRequest {
        payment_ids: vec![watched.clone()],
        resume_after: resume_after.into(),
        ..Default::default()
    };
    let mut live = payments.watch_payments(watch_it("")).await.unwrap().into_inner();
    collect(&mut live, 1, Duration::from_secs(10)).await;
    pay(&gate, "main", &watched).await;
    collect(&mut live, 1, Duration::from_secs(600)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The token's stream of its payment, then the merchant key's stream of all its events.
    let pid = gate.process.pid();
    let streams = [
        (token.as_str(), watch_it("0-0"), "a client token's resume of its payment"),
        (key.as_str(), watch_all("0-0"), "a merchant key's resume of all its events"),
    ];
    for (credential, request, what) in streams {
        let mut client = gate.payments(credential).await;
        let (cpu, started) = (cpu_seconds(pid), Instant::now());
        let mut resumed = client.watch_payments(request).await.unwrap().into_inner();
        let event = collect(&mut resumed, 1, Duration::from_secs(600)).await.remove(0);
        let (wall, used) = (started.elapsed(), cpu_seconds(pid) - cpu);
        assert_eq!(event.payment.unwrap().payment_id, watched);
        println!("{what}, 300,000 foreign events in the log: server CPU {used:.2} s, its event after {wall:?}");
    }
}
