//! Retention with time moved forward: events, audit entries and raw pingbacks dated over four
//! months, then expiry run as of a later day with a one-day retention. On PostgreSQL whole month
//! partitions are dropped (the table as it was before partitioning among them) and the next
//! months' are created; on SQLite rows go in batches. Counts before and after; what is kept still
//! reads in order from the log, the API and a stream; a cursor into what expired is refused with
//! OUT_OF_RANGE naming the oldest cursor still available.

use std::time::Duration;

use paygate::{
    payments::{Payment, core::Position, store::event_log},
    proto::v1 as pb,
    retention::{self, Policy},
    store::{Db, PoolSettings},
};
use sqlx::Row;
use tokio_stream::StreamExt;

use crate::support::*;

const DAY: i64 = 86_400_000;

fn payment(merchant_id: &str, n: usize) -> Payment {
    stored_payment(merchant_id, "retention_", n)
}

async fn count(db: &Db, table: &str) -> i64 {
    sqlx::query(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(db.pool()).await.unwrap().get(0)
}

async fn partitions(db: &Db, table: &str) -> Vec<String> {
    let mut names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = to_regclass($1)",
    )
    .bind(table)
    .fetch_all(db.pool())
    .await
    .unwrap();
    names.sort();
    names
}

/// The event at `at`, in a transaction of its own (so positions follow the order of the calls).
async fn event_at(db: &Db, p: &Payment, at: i64) -> Position {
    let mut tx = db.pool().begin().await.unwrap();
    let sql = format!("INSERT INTO payment_events {} RETURNING event_id, txid", event_log::insert_values(1));
    let query =
        event_log::bind_event(sqlx::query(&sql), p, paygate::payments::core::EventKind::PaymentPaid, None).unwrap();
    let row = query.fetch_one(&mut *tx).await.unwrap();
    let position = event_log::position_of(&row).unwrap();
    sqlx::query("UPDATE payment_events SET created_at = $1 WHERE event_id = $2")
        .bind(at)
        .bind(position.id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    position
}

async fn expiry_with_time_moved_forward(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let (merchant_id, api_key) = create_merchant(&test_db, "Acme");
    let settings = PoolSettings { max_connections: 4, acquire_timeout: Duration::from_secs(30) };
    let db = Db::connect(&test_db.url, &settings).await.unwrap();
    db.migrate().await.unwrap();
    sqlx::query(
        "INSERT INTO channels (channel_key, merchant_id, name, provider, mode, settings, secrets, version, created_at, \
         updated_at) VALUES ('main', $1, '', 'paymentwall', 'TEST', '{}', '{}', 1, 0, 0)",
    )
    .bind(&merchant_id)
    .execute(db.pool())
    .await
    .unwrap();
    let p = payment(&merchant_id, 1);
    paygate::payments::store::payments::insert(&db, &p).await.unwrap();

    // The month boundary after which the partitions of migration 0016 begin (SQLite: any).
    let bound: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(legacy_until), 0) FROM retention_marks WHERE table_name = 'payment_events'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    let bound = match bound {
        0 => retention::policy::months_from(paygate::store::now_ms() + 40 * DAY, 1)[0].from,
        bound => bound,
    };
    let months = retention::policy::months_from(bound, 4);
    assert_eq!(months[0].from, bound, "partitions start on a month's first day");
    // Time passes: a day into the first month, paygate creates the next months' partitions.
    let keep_all = Policy {
        events_days: 0,
        pingbacks_days: 0,
        webhook_deliveries_days: 0,
        webhook_attempts_days: 0,
        audit_days: 0,
    };
    retention::run_once(&db, &keep_all, months[0].from + DAY).await.unwrap();
    // Two events in each of: today (before the bound), and three months after it.
    let times =
        [paygate::store::now_ms(), months[0].from + 5 * DAY, months[1].from + 5 * DAY, months[2].from + 5 * DAY];
    let mut positions = Vec::new();
    for at in times {
        for _ in 0..2 {
            positions.push(event_at(&db, &p, at).await);
        }
    }
    for (n, at) in [times[0], times[2]].into_iter().enumerate() {
        sqlx::query(
            "INSERT INTO audit_events (audit_id, merchant_id, actor, action, target, changed_fields, address, \
             created_at) VALUES ($1, $2, 'cli', 'merchant.created', $2, '[]', '', $3)",
        )
        .bind(format!("aud_retention_{n}"))
        .bind(&merchant_id)
        .bind(at)
        .execute(db.pool())
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO pingbacks (pingback_id, channel_key, ref, type, query, outcome, received_at, last_seen_at) \
             VALUES ($1, 'main', $1, 0, '', 'applied', $2, $2)",
        )
        .bind(format!("pb_retention_{n}"))
        .bind(at)
        .execute(db.pool())
        .await
        .unwrap();
    }
    let (events_before, audit_before, pingbacks_before) =
        (count(&db, "payment_events").await, count(&db, "audit_events").await, count(&db, "pingbacks").await);
    assert_eq!(events_before, 8);

    // A day into the second month after the bound, with everything kept one day.
    let now = months[1].from + 2 * DAY;
    let policy = Policy {
        events_days: 1,
        pingbacks_days: 1,
        webhook_deliveries_days: 1,
        webhook_attempts_days: 1,
        audit_days: 1,
    };
    let before_partitions =
        if backend == Backend::Postgres { partitions(&db, "payment_events").await } else { Vec::new() };
    let report = retention::run_once(&db, &policy, now).await.unwrap();

    let (events_after, audit_after, pingbacks_after) =
        (count(&db, "payment_events").await, count(&db, "audit_events").await, count(&db, "pingbacks").await);
    println!(
        "{backend:?}: events {events_before} -> {events_after}, audit {audit_before} -> {audit_after}, \
         pingbacks {pingbacks_before} -> {pingbacks_after}; {report:?}"
    );
    assert_eq!(events_after, 4, "the events of today and of the first month after the bound expired");
    // Only what is dated in the second month after the bound is kept (the merchant's own audit
    // entries are dated today).
    assert_eq!((audit_before, pingbacks_before), (4, 2));
    assert_eq!((audit_after, pingbacks_after), (1, 1));
    match backend {
        Backend::Postgres => {
            let first = format!("payment_events_{}", months[0].suffix);
            assert_eq!(before_partitions.len(), 4, "the table as it was, and three months: {before_partitions:?}");
            assert!(
                report.partitions_dropped.contains(&"payment_events_legacy".to_owned())
                    && report.partitions_dropped.contains(&first),
                "{report:?}"
            );
            let after = partitions(&db, "payment_events").await;
            assert!(!after.contains(&first) && !after.contains(&"payment_events_legacy".to_owned()), "{after:?}");
            // The month of `now` and the next two exist (the third month after the bound is new).
            let third = format!("payment_events_{}", months[3].suffix);
            assert!(after.contains(&third) && report.partitions_created.contains(&third), "{after:?}");
            assert!(report.rows_deleted.iter().any(|(t, n)| *t == "pingbacks" && *n == 1), "{report:?}");
        }
        Backend::Sqlite => {
            assert!(report.partitions_dropped.is_empty());
            assert!(report.rows_deleted.contains(&("payment_events", 4)), "{report:?}");
        }
    }

    // The log: what is kept reads in order, from the start and from the oldest cursor available.
    let oldest = event_log::expired_through(&db).await.unwrap();
    assert_eq!(oldest, positions[3], "the newest expired event");
    let kept: Vec<Position> =
        event_log::read_after(&db, Position::default(), 100).await.unwrap().0.iter().map(|e| e.position).collect();
    assert_eq!(kept, positions[4..]);
    let resumed: Vec<Position> =
        event_log::read_after(&db, oldest, 100).await.unwrap().0.iter().map(|e| e.position).collect();
    assert_eq!(resumed, positions[4..]);
    assert!(event_log::check_cursor(&db, positions[0]).await.is_err());
    assert!(event_log::check_cursor(&db, oldest).await.is_ok());
    // Running again finds nothing more to do.
    let again = retention::run_once(&db, &policy, now).await.unwrap();
    assert!(again.partitions_dropped.is_empty() && again.rows_deleted.is_empty(), "{again:?}");

    // Through the API: a cursor into what expired is refused, naming the oldest one available.
    let gate = Paygate::start(&test_db, &[]);
    let mut client = gate.payments(&api_key).await;
    let list = |after: Position| pb::ListPaymentEventsRequest { after: after.to_string(), ..Default::default() };
    let refused = client.list_payment_events(list(positions[1])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange);
    assert!(refused.message().contains(&format!("oldest cursor still available is {oldest}")), "{}", refused.message());
    assert!(refused.message().starts_with("after:"), "{}", refused.message());
    let page = client.list_payment_events(list(oldest)).await.unwrap().into_inner();
    let listed: Vec<String> = page.events.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(listed, positions[4..].iter().map(Position::to_string).collect::<Vec<_>>());
    let watch = |after: Position| pb::WatchPaymentsRequest { resume_after: after.to_string(), ..Default::default() };
    let refused = client.watch_payments(watch(positions[0])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange);
    assert!(refused.message().starts_with("resume_after:"), "{}", refused.message());
    let mut stream = client.watch_payments(watch(oldest)).await.unwrap().into_inner();
    let mut replayed = Vec::new();
    while replayed.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
        replayed.push(event.event_id);
    }
    assert_eq!(replayed, listed, "a stream resumed at the oldest cursor replays what is kept, in order");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_with_time_moved_forward_postgres() {
    expiry_with_time_moved_forward(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_with_time_moved_forward_sqlite() {
    expiry_with_time_moved_forward(Backend::Sqlite).await;
}
