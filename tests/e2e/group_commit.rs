//! Pingbacks that arrive together commit together, and so do new checkout payments
//! (`payments::group_commit`); one that must roll back never takes the others with it.

use paygate::proto::v1::PaymentStatus;
use sqlx::{Connection, Row};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pingbacks_commits_together_and_a_failing_one_fails_alone_on_postgres() {
    a_burst_commits_together(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pingbacks_commits_together_and_a_failing_one_fails_alone_on_sqlite() {
    a_burst_commits_together(Backend::Sqlite).await;
}

/// The store refuses the raw record of any pingback whose ref starts with `poison`: a fault that
/// aborts the transaction the pingback is in, wherever it falls in a burst.
async fn poison(db: &TestDb, on: bool) {
    let pool = db.pool().await;
    let statements: &[&str] = match (db.backend, on) {
        (Backend::Postgres, true) => &[
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF NEW.ref LIKE 'poison%' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER poison BEFORE INSERT ON pingbacks FOR EACH ROW EXECUTE FUNCTION poison()",
        ],
        (Backend::Postgres, false) => &["DROP TRIGGER poison ON pingbacks"],
        (Backend::Sqlite, true) => &["CREATE TRIGGER poison BEFORE INSERT ON pingbacks \
             WHEN NEW.ref LIKE 'poison%' BEGIN SELECT RAISE(ABORT, 'poisoned'); END"],
        (Backend::Sqlite, false) => &["DROP TRIGGER poison"],
    };
    for sql in statements {
        sqlx::query(sql).execute(&pool).await.expect("trigger");
    }
    pool.close().await;
}

fn check_answers(answers: &[(usize, u16, String)], reference: impl Fn(usize) -> String) {
    assert_eq!(answers.len(), 54);
    for (n, status, body) in answers {
        match n {
            100 | 101 => assert_eq!(*status, 422, "unknown payment: {body}"),
            _ if reference(*n).starts_with("poison") => {
                assert_ne!(body, "OK", "a pingback whose writes failed is never acknowledged")
            }
            _ => assert_eq!((*status, body.as_str()), (200, "OK"), "pingback {n}"),
        }
    }
}

/// Paygate with a pool of 4, which runs one worker of each kind, so that a test can hold it in one
/// batch while a burst queues up behind it; a merchant with the test channel `main`.
async fn one_worker_each(db: &TestDb) -> (Paygate, Payments, Simulator) {
    let (_merchant_id, api_key) = create_merchant(db, "Acme");
    let gate = Paygate::start(db, &[("PAYGATE_DATABASE_MAX_CONNECTIONS", "4")]);
    let mut channels = gate.channels(&api_key).await;
    let sim = Simulator::start();
    channels.create_channel(channel_request(&sim, "main", paygate::proto::v1::ChannelMode::Test)).await.unwrap();
    let payments = gate.payments(&api_key).await;
    (gate, payments, sim)
}

/// Returns once some connection of `db` waits on a lock the test holds.
async fn someone_waits_on_a_lock(db: &TestDb) {
    let waiting =
        "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()";
    wait_until(|| async {
        let pool = db.pool().await;
        let n: i64 = sqlx::query(waiting).fetch_one(&pool).await.unwrap().get(0);
        pool.close().await;
        n > 0
    })
    .await;
}

async fn a_burst_commits_together(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (gate, mut payments, _sim) = one_worker_each(&db).await;

    // 48 payments: 47 paid (4 of them by the same pingback sent twice at once), 1 poisoned.
    let mut ids = Vec::new();
    for n in 0..48 {
        let session = payments.create_checkout_session(checkout_request("main", &format!("burst-{n}"))).await.unwrap();
        ids.push(session.into_inner().payment_id);
    }
    let reference = |n: usize| if n == 5 { format!("poison{n}") } else { format!("b{n}") };
    let url = |n: usize, payment_id: &str| {
        let query = Pingback::new(payment_id).uid("u").reference(&reference(n)).test().signed(SECRET_KEY);
        gate.http_url(&format!("/pingback/paymentwall/main?{query}"))
    };
    let mut sends: Vec<(usize, String)> = ids.iter().enumerate().map(|(n, id)| (n, url(n, id))).collect();
    let twice: Vec<usize> = (0..48).filter(|n| n % 12 == 7).collect();
    sends.extend(twice.iter().map(|&n| (n, url(n, &ids[n]))));
    // Two pingbacks for payments that do not exist: stored as unmatched, answered as an error.
    sends.push((100, url(100, "pay_01JNOSUCHPAYMENT0000000000")));
    sends.push((101, url(101, "pay_01JNOSUCHPAYMENT0000000001")));

    poison(&db, true).await;
    let http = http_client();
    let send = |n: usize, url: String| {
        let http = http.clone();
        async move {
            let response = http.get(url).send().await.unwrap();
            (n, response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // PostgreSQL: payment 0 is locked by the test, so the worker's first batch (its pingback)
    // waits while every other pingback queues; then they go in batches of up to 32.
    let (first, rest) = sends.split_first().unwrap();
    let mut held = None;
    if backend == Backend::Postgres {
        let mut lock = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
        sqlx::query("SELECT 1 FROM payments WHERE payment_id = $1 FOR UPDATE")
            .bind(&ids[0])
            .execute(&mut lock)
            .await
            .unwrap();
        held = Some(lock);
    }
    let first = tokio::spawn(send(first.0, first.1.clone()));
    if let Some(mut lock) = held {
        someone_waits_on_a_lock(&db).await;
        let burst = tokio::spawn(futures_util::future::join_all(rest.iter().map(|(n, url)| send(*n, url.clone()))));
        // Time for the burst to reach the queue; any that has not simply goes in a later batch.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
        let mut answers = burst.await.unwrap();
        answers.push(first.await.unwrap());
        check_answers(&answers, reference);
    } else {
        let mut answers = futures_util::future::join_all(rest.iter().map(|(n, url)| send(*n, url.clone()))).await;
        answers.push(first.await.unwrap());
        check_answers(&answers, reference);
    }
    if backend == Backend::Postgres {
        let logs = gate.process.logs();
        assert!(
            logs.iter().any(|l| l.contains("a batch rolled back; writing its jobs one by one")),
            "a poisoned pingback shared a batch, and the batch fell back to one by one"
        );
    }

    let pool = db.pool().await;
    for (n, payment_id) in ids.iter().enumerate() {
        let payment = get_payment(&mut payments, payment_id).await;
        let events: i64 = sqlx::query("SELECT COUNT(*) FROM payment_events WHERE payment_id = $1")
            .bind(payment_id)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        if reference(n).starts_with("poison") {
            assert_eq!((payment.status(), events), (PaymentStatus::Ready, 0), "payment {n}: nothing of it committed");
        } else {
            assert_eq!((payment.status(), events), (PaymentStatus::Paid, 1), "payment {n}: paid once");
        }
    }
    for &n in &twice {
        let deliveries: i64 = sqlx::query("SELECT deliveries FROM pingbacks WHERE ref = $1")
            .bind(reference(n))
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(deliveries, 2, "the duplicate of {n} is counted, not applied");
    }
    let unmatched: i64 = sqlx::query("SELECT COUNT(*) FROM pingbacks WHERE outcome = 'unmatched'")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(unmatched, 2, "the unknown payments' pingbacks are kept");
    if backend == Backend::Postgres {
        // The proof that they went together: events of one transaction share its txid.
        let (events, transactions): (i64, i64) =
            sqlx::query("SELECT COUNT(*), COUNT(DISTINCT txid) FROM payment_events WHERE kind = 'payment.paid'")
                .fetch_one(&pool)
                .await
                .map(|row| (row.get(0), row.get(1)))
                .unwrap();
        assert_eq!(events, 47);
        assert!(transactions < events, "{events} payments paid in {transactions} transactions");
    }
    pool.close().await;

    // With the fault gone, the provider's retry of a poisoned pingback is applied.
    poison(&db, false).await;
    let response = http.get(url(5, &ids[5])).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "OK");
    assert_eq!(get_payment(&mut payments, &ids[5]).await.status(), PaymentStatus::Paid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_that_arrive_together_share_an_insert_and_a_taken_merchant_uid_fails_alone_on_postgres() {
    checkouts_together(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_that_arrive_together_share_an_insert_and_a_taken_merchant_uid_fails_alone_on_sqlite() {
    checkouts_together(Backend::Sqlite).await;
}

/// Sends a checkout for each merchant_uid at once and returns each one's outcome, in order. On
/// PostgreSQL the test first locks `payments` against inserts, so the one insert worker waits on
/// its first checkout while the rest queue; they then go in one batch.
async fn burst_of_checkouts(db: &TestDb, payments: &Payments, uids: &[String]) -> Vec<Result<String, tonic::Status>> {
    let send = |uid: String| {
        let mut payments = payments.clone();
        async move {
            payments.create_checkout_session(checkout_request("main", &uid)).await.map(|r| r.into_inner().payment_id)
        }
    };
    if db.backend == Backend::Sqlite {
        return futures_util::future::join_all(uids.iter().cloned().map(send)).await;
    }
    let mut lock = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("LOCK TABLE payments IN SHARE MODE").execute(&mut lock).await.unwrap();
    let (first, rest) = uids.split_first().unwrap();
    let first = tokio::spawn(send(first.clone()));
    someone_waits_on_a_lock(db).await;
    let rest = tokio::spawn(futures_util::future::join_all(rest.iter().cloned().map(send)));
    // Time for the burst to reach the queue; any that has not simply goes in a later batch.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
    let mut answers = vec![first.await.unwrap()];
    answers.extend(rest.await.unwrap());
    answers
}

async fn checkouts_together(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (gate, mut payments, _sim) = one_worker_each(&db).await;
    // Warm: the key and the channel are cached, so a checkout's only query is its INSERT.
    payments.create_checkout_session(checkout_request("main", "warm")).await.unwrap();
    let pool = db.pool().await;

    // 30 distinct orders: every one is stored, once, and on PostgreSQL they share statements.
    let uids: Vec<String> = (0..30).map(|n| format!("order-{n}")).collect();
    let answers = burst_of_checkouts(&db, &payments, &uids).await;
    for (uid, answer) in uids.iter().zip(&answers) {
        let payment_id = answer.as_ref().unwrap_or_else(|e| panic!("{uid}: {e:?}"));
        let payment = get_payment(&mut payments, payment_id).await;
        assert_eq!((payment.merchant_uid.as_str(), payment.status()), (uid.as_str(), PaymentStatus::Ready));
    }
    let stored: i64 = sqlx::query("SELECT COUNT(*) FROM payments WHERE merchant_uid LIKE 'order-%'")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 30);
    if backend == Backend::Postgres {
        // Rows one statement inserted share its transaction id.
        let transactions: i64 =
            sqlx::query("SELECT COUNT(DISTINCT xmin::text) FROM payments WHERE merchant_uid LIKE 'order-%'")
                .fetch_one(&pool)
                .await
                .unwrap()
                .get(0);
        assert!(transactions < 10, "30 payments inserted in {transactions} transactions");
    }

    // A burst with merchant_uids taken twice in it, and one taken before it: each taken one is
    // refused alone, naming the field; every other order of the burst is stored.
    let mut uids: Vec<String> = (0..20).map(|n| format!("again-{n}")).collect();
    uids.extend(["again-3", "again-11", "again-11", "order-7"].map(String::from));
    let answers = burst_of_checkouts(&db, &payments, &uids).await;
    for uid in uids.iter().collect::<std::collections::BTreeSet<_>>() {
        let outcomes: Vec<_> = uids.iter().zip(&answers).filter(|(u, _)| *u == uid).map(|(_, a)| a).collect();
        let stored: i64 = sqlx::query("SELECT COUNT(*) FROM payments WHERE merchant_uid = $1")
            .bind(uid)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored, 1, "{uid} is stored once");
        let refused: Vec<_> = outcomes.iter().filter_map(|a| a.as_ref().err()).collect();
        let expected_refusals = if uid == "order-7" { 1 } else { outcomes.len() - 1 };
        assert_eq!(refused.len(), expected_refusals, "{uid}: {outcomes:?}");
        for status in refused {
            assert_eq!(status.code(), tonic::Code::AlreadyExists, "{uid}: {status:?}");
            assert!(status.message().starts_with("merchant_uid: "), "{}", status.message());
        }
    }
    if backend == Backend::Postgres {
        let logs = gate.process.logs();
        assert!(
            logs.iter().any(|l| l.contains("a batch rolled back") && l.contains("new payment")),
            "the batch with a taken merchant_uid fell back to one by one"
        );
    }
    pool.close().await;
}

/// With `PAYGATE_BATCH_WRITES=false` the flows write on their own (the plain path): checkouts and
/// pingbacks still do everything, and none is settled by the batch layer's one statement, which the
/// default uses for a payment its replica just made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_path_alone_checks_out_and_settles_and_batch_writes_are_the_default() {
    for (batch_writes, settled_in_one_statement) in [("false", false), ("true", true)] {
        let shop = Shop::open(Backend::Postgres, &[("PAYGATE_BATCH_WRITES", batch_writes)]).await;
        let mut payments = shop.gate.payments(&shop.api_key).await;
        for n in 0..3 {
            let payment_id = checkout_and_pay(&shop.gate, &mut payments, &format!("plain-{n}")).await;
            assert_eq!(get_payment(&mut payments, &payment_id).await.status, PaymentStatus::Paid as i32);
        }
        let one_statement = metric(&shop.gate, "paygate_pingbacks_settled_in_one_statement_total").await;
        assert_eq!(one_statement > 0.0, settled_in_one_statement, "batch writes {batch_writes}: {one_statement}");
    }
}
