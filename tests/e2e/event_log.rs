//! The event log's cursor is gapless: many writers commit concurrently (out of id order, held open
//! for random times) while readers poll from their last cursor; every reader sees every committed
//! event exactly once, in one order, and a reader starting from any cursor it saw gets exactly
//! the rest.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use paygate::{
    payments::{
        Payment,
        core::{EventKind, Position},
        store::event_log,
    },
    store::{Db, PoolSettings},
};
use rand::Rng;

use crate::support::*;

const WRITERS: usize = 16;
const EVENTS_PER_WRITER: usize = 25;
const READERS: usize = 4;

fn payment(merchant_id: &str, n: usize) -> Payment {
    stored_payment(merchant_id, "", n)
}

/// A migrated database with one merchant, one channel and `payments` payments (events need a
/// payment row).
async fn log_with_payments(test_db: &TestDb, payments: usize) -> Db {
    let settings = PoolSettings { max_connections: 24, acquire_timeout: Duration::from_secs(30) };
    let db = Db::connect(&test_db.url, &settings).await.expect("connect");
    db.migrate().await.expect("migrate");
    let pool = db.pool();
    sqlx::query("INSERT INTO merchants (merchant_id, name, created_at) VALUES ('m', 'm', 0)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO channels (channel_key, merchant_id, name, provider, mode, settings, secrets, version, created_at, \
         updated_at) VALUES ('main', 'm', '', 'paymentwall', 'TEST', '{}', '{}', 1, 0, 0)",
    )
    .execute(pool)
    .await
    .unwrap();
    for n in 0..payments {
        paygate::payments::store::payments::insert(&db, &payment("m", n)).await.unwrap();
    }
    db
}

async fn prove_gapless(backend: Backend) {
    let test_db = TestDb::new(backend).await;
    let db = log_with_payments(&test_db, WRITERS).await;

    let done = Arc::new(tokio::sync::Notify::new());
    let writers: Vec<_> = (0..WRITERS)
        .map(|n| {
            let db = db.clone();
            tokio::spawn(async move {
                let p = payment("m", n);
                for _ in 0..EVENTS_PER_WRITER {
                    let mut tx = db.pool().begin().await.unwrap();
                    event_log::append(&mut tx, &p, EventKind::PaymentPaid, None).await.unwrap();
                    // Hold the transaction open a random while: later ids commit first.
                    let hold = rand::rng().random_range(0..4);
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let db = db.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut seen: Vec<Position> = Vec::new();
                let mut cursor = Position::default();
                let mut finished = false;
                loop {
                    let (events, held_back) = event_log::read_after(&db, cursor, 37).await.unwrap();
                    for e in &events {
                        assert!(e.position > cursor, "positions only grow");
                        cursor = e.position;
                        seen.push(e.position);
                    }
                    if finished && events.is_empty() && !held_back {
                        return seen;
                    }
                    if !finished {
                        finished = tokio::time::timeout(Duration::from_millis(1), done.notified()).await.is_ok();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    done.notify_waiters();
    // Wake readers that were not waiting at that instant.
    let notifier = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                done.notify_waiters();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut all_runs = Vec::new();
    for r in readers {
        all_runs.push(r.await.unwrap());
    }
    notifier.abort();

    let (truth, _) = event_log::read_after(&db, Position::default(), 100_000).await.unwrap();
    let truth: Vec<Position> = truth.iter().map(|e| e.position).collect();
    assert_eq!(truth.len(), WRITERS * EVENTS_PER_WRITER);
    for seen in &all_runs {
        assert_eq!(seen.len(), truth.len(), "a reader missed or repeated events");
        assert_eq!(seen, &truth, "every reader sees the same order");
    }
    assert_eq!(truth.iter().collect::<BTreeSet<_>>().len(), truth.len(), "no position twice");
    // Resuming after any cursor gives exactly the rest.
    for (i, cursor) in truth.iter().enumerate().step_by(23) {
        let (rest, _) = event_log::read_after(&db, *cursor, 100_000).await.unwrap();
        let rest: Vec<Position> = rest.iter().map(|e| e.position).collect();
        assert_eq!(rest, truth[i + 1..]);
    }
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_slip_an_event_behind_a_cursor_postgres() {
    prove_gapless(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_slip_an_event_behind_a_cursor_sqlite() {
    prove_gapless(Backend::Sqlite).await;
}

/// Appends one event for payment `n` in a transaction of its own; returns its position.
async fn append_one(db: &Db, n: usize) -> Position {
    let mut tx = db.pool().begin().await.unwrap();
    let position = event_log::append(&mut tx, &payment("m", n), EventKind::PaymentPaid, None).await.unwrap();
    tx.commit().await.unwrap();
    position
}

/// The horizon waits for paygate's own writers only. A write transaction of another application
/// held open, in another database of the cluster or in paygate's own (on a table of its own),
/// holds back nothing: an event committed meanwhile is read at once. A transaction writing one of
/// paygate's tables does hold back what commits after it, until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_paygate_writers_hold_back_readers_postgres() {
    let test_db = TestDb::new(Backend::Postgres).await;
    let other_db = TestDb::new(Backend::Postgres).await;
    let db = log_with_payments(&test_db, 2).await;
    let (mine, other) = (test_db.pool().await, other_db.pool().await);
    sqlx::query("CREATE TABLE analyst_scratch (n BIGINT)").execute(&mine).await.unwrap();
    sqlx::query("CREATE TABLE nightly_batch (n BIGINT)").execute(&other).await.unwrap();

    let mut cursor = event_log::head(&db).await.unwrap();
    for (pool, table) in [(&other, "nightly_batch"), (&mine, "analyst_scratch")] {
        let mut unrelated = pool.begin().await.unwrap();
        sqlx::query(&format!("INSERT INTO {table} VALUES (1)")).execute(&mut *unrelated).await.unwrap();
        let position = append_one(&db, 0).await;
        let (events, held_back) = event_log::read_after(&db, cursor, 10).await.unwrap();
        let read: Vec<Position> = events.iter().map(|e| e.position).collect();
        assert_eq!(read, [position], "an event committed beside an open write on {table} is read at once");
        assert!(!held_back, "nothing is held back by an open write on {table}");
        assert_eq!(event_log::head(&db).await.unwrap(), position, "the head moves past {table}'s writer");
        cursor = position;
        unrelated.rollback().await.unwrap();
    }

    // One of paygate's own: it may still append an event, so what commits after it waits.
    let mut paygate_writer = mine.begin().await.unwrap();
    sqlx::query("UPDATE payments SET updated_at = 1 WHERE payment_id = 'pay_000001'")
        .execute(&mut *paygate_writer)
        .await
        .unwrap();
    let after = append_one(&db, 0).await;
    let (events, held_back) = event_log::read_after(&db, cursor, 10).await.unwrap();
    assert!(events.is_empty() && held_back, "an event behind an open paygate writer is held back");
    let late = event_log::append(&mut paygate_writer, &payment("m", 1), EventKind::PaymentPaid, None).await.unwrap();
    paygate_writer.commit().await.unwrap();
    let (events, held_back) = event_log::read_after(&db, cursor, 10).await.unwrap();
    let read: Vec<Position> = events.iter().map(|e| e.position).collect();
    assert_eq!(read, [late, after], "the writer's own event comes first: it began first");
    assert!(!held_back);

    db.close().await;
    mine.close().await;
    other.close().await;
}
