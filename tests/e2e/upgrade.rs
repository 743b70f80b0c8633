//! Databases written by earlier releases upgrade in place: a channel stored before credentials became
//! provider-owned config (migrations up to 0003) keeps its settings, its secret and its pingback URL;
//! a subscription stored before 0005 reads complete.

use paygate::{proto::v1 as pb, secrets::MasterKeys};
use secrecy::SecretString;
use sqlx::{Executor, migrate::Migrator};

use crate::support::{
    self, Backend, PROJECT_KEY, Paygate, Pingback, SECRET_KEY, Simulator, TestDb, checkout_request, get_payment,
    http_client, paygate_command,
};

/// Applies the migrations before 0004, as the previous release left the database.
async fn migrate_to_0003(db: &TestDb) {
    migrate_before(db, 4).await;
}

async fn upgrades_in_place(backend: Backend) {
    let mut db = TestDb::new(backend).await;
    let master_key = db.master_key.clone().unwrap_or_else(MasterKeys::generate);
    db.master_key = Some(master_key.clone());
    let sim = Simulator::start();
    migrate_to_0003(&db).await;

    // The channel as the previous release stored it, its secret encrypted under the master key.
    let key = SecretString::from(master_key);
    let sources = paygate::secrets::KeySources {
        master_key: Some(&key),
        master_key_file: None,
        previous: None,
        embedded_database: None,
    };
    let keys = MasterKeys::load(&sources).unwrap();
    let ciphertext = keys.encrypt("old-ch", &SecretString::from(SECRET_KEY));
    let pool = db.pool().await;
    pool.execute("INSERT INTO merchants (merchant_id, name, created_at) VALUES ('mer_old', 'old', 0)").await.unwrap();
    sqlx::query(
        "INSERT INTO channels (channel_key, merchant_id, owner_id, name, provider, mode, project_key, \
         secret_ciphertext, widget, sign_version, pingback_allowlist, api_base_url, version, created_at, updated_at) \
         VALUES ('old-ch', 'mer_old', 'mer_old', 'from 0003', 'PAYMENTWALL', 'TEST', $1, $2, 'p1_1', 3, \
         '[\"127.0.0.1/32\"]', $3, 4, 0, 0)",
    )
    .bind(PROJECT_KEY)
    .bind(&ciphertext)
    .bind(sim.base_url())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    // The new release migrates on start.
    let gate = Paygate::start(&db, &[]);
    let workdir = tempfile::tempdir().unwrap();
    let out = paygate_command(&db, workdir.path())
        .args(["admin", "create-api-key", "--merchant", "mer_old"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let api_key =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["api_key"].as_str().unwrap().to_owned();

    let channel = gate
        .channels(&api_key)
        .await
        .get_channel(pb::GetChannelRequest { channel_key: "old-ch".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(channel.provider(), pb::Provider::Paymentwall);
    assert_eq!(channel.provider_name, "paymentwall");
    assert_eq!(channel.pingback_path, "/pingback/paymentwall/old-ch");
    assert_eq!(channel.version, 4);
    assert_eq!(
        channel.paymentwall,
        Some(pb::PaymentwallSettings {
            project_key: PROJECT_KEY.into(),
            widget: "p1_1".into(),
            sign_version: 3,
            pingback_allowlist: vec!["127.0.0.1/32".into()],
            api_base_url: sim.base_url(),
            confirm_digital_delivery: false,
        })
    );

    // The secret still signs checkouts and verifies pingbacks, at the old URL and the generic one.
    let mut payments = gate.payments(&api_key).await;
    for path in ["/pingback/paymentwall/old-ch", "/callbacks/paymentwall/old-ch"] {
        let session = payments
            .create_checkout_session(checkout_request("old-ch", &format!("o{path}")))
            .await
            .unwrap()
            .into_inner();
        assert!(support::signed_with(&session.redirect_url, SECRET_KEY), "{}", session.redirect_url);
        let reference = format!("b{}", ulid::Ulid::new());
        let query =
            Pingback::new(&session.payment_id).uid("user-40012").reference(&reference).test().signed(SECRET_KEY);
        let answer = http_client().get(format!("{}?{query}", gate.http_url(path))).send().await.unwrap();
        assert_eq!(answer.text().await.unwrap(), "OK", "{path}");
        assert_eq!(get_payment(&mut payments, &session.payment_id).await.status(), pb::PaymentStatus::Paid);
    }
    // Signed with anything else, refused as before.
    let forged = Pingback::new("pay_x").reference("b1").signed("another secret");
    let answer = http_client().get(format!("{}?{forged}", gate.http_url("/pingback/paymentwall/old-ch"))).send().await;
    assert_eq!(answer.unwrap().status().as_u16(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_stored_before_provider_owned_configs_keeps_working_on_postgres() {
    upgrades_in_place(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_stored_before_provider_owned_configs_keeps_working_on_sqlite() {
    upgrades_in_place(Backend::Sqlite).await;
}

/// Applies the migrations before `version`, as an earlier release left the database.
async fn migrate_before(db: &TestDb, version: i64) {
    let dir = match db.backend {
        Backend::Postgres => "migrations/postgres",
        Backend::Sqlite => "migrations/sqlite",
    };
    let mut migrator = Migrator::new(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).await.unwrap();
    migrator.migrations =
        migrator.migrations.iter().filter(|m| m.version < version).cloned().collect::<Vec<_>>().into();
    let pool = db.pool().await;
    migrator.run(&pool).await.expect("the earlier migrations");
    pool.close().await;
}

/// A subscription stored before 0005 (cancelled, with a renewal before its end and one after) reads
/// with its buyer, start, last renewal and renewals after the end filled in from its payments.
async fn subscriptions_stored_before_0005_read_complete(backend: Backend) {
    let db = TestDb::new(backend).await;
    migrate_before(&db, 5).await;
    let pool = db.pool().await;
    pool.execute("INSERT INTO merchants (merchant_id, name, created_at) VALUES ('mer_old', 'old', 0)").await.unwrap();
    pool.execute(
        "INSERT INTO channels (channel_key, merchant_id, owner_id, name, provider, mode, version, created_at, \
         updated_at) VALUES ('old-ch', 'mer_old', 'mer_old', 'from 0004', 'paymentwall', 'TEST', 1, 0, 0)",
    )
    .await
    .unwrap();
    // The first payment paid at 2000, a renewal at 3000, the end at 4000, money again at 5000.
    let payments = [
        ("pay_1", "gold", 1000, Some(2000)),
        ("pay_2", "~gold/renewal/1", 3000, Some(3000)),
        ("pay_3", "~gold/renewal/2", 5000, Some(5000)),
    ];
    for (payment_id, merchant_uid, created_at, paid_at) in payments {
        sqlx::query(
            "INSERT INTO payments (payment_id, merchant_id, channel_key, merchant_uid, amount_minor, currency, \
             order_name, customer_uid, customer_email, payment_method, widget, success_url, failure_url, \
             country_code, language, custom_params, status, provider_ref, is_test, redirect_url, subscription_id, \
             created_at, updated_at, paid_at) VALUES ($1, 'mer_old', 'old-ch', $2, 999, 'USD', 'Gold', 'buyer-9', \
             '', 'all', 'p1_1', '', '', '', '', '{}', 'PAID', $3, 1, '', 'sub_old', $4, $4, $5)",
        )
        .bind(payment_id)
        .bind(merchant_uid)
        .bind(format!("b{payment_id}"))
        .bind(created_at)
        .bind(paid_at)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.execute(
        "INSERT INTO subscriptions (subscription_id, merchant_id, channel_key, initial_payment_id, period_length, \
         period_type, recurring, status, renewals, ended_at, created_at, updated_at) VALUES ('sub_old', 'mer_old', \
         'old-ch', 'pay_1', 1, 'month', 1, 'CANCELLED', 2, 4000, 1000, 5000)",
    )
    .await
    .unwrap();
    pool.close().await;

    let gate = Paygate::start(&db, &[]);
    let workdir = tempfile::tempdir().unwrap();
    let out = paygate_command(&db, workdir.path())
        .args(["admin", "create-api-key", "--merchant", "mer_old"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let api_key =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["api_key"].as_str().unwrap().to_owned();
    let lookup = Some(pb::get_subscription_request::Lookup::SubscriptionId("sub_old".into()));
    let request = pb::GetSubscriptionRequest { lookup };
    let sub = gate.payments(&api_key).await.get_subscription(request).await.unwrap().into_inner();
    let ms = |ts: Option<prost_types::Timestamp>| ts.map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000));
    assert_eq!(sub.status, pb::SubscriptionStatus::Cancelled as i32);
    assert_eq!((sub.customer_uid.as_str(), ms(sub.started_at)), ("buyer-9", Some(2000)));
    assert_eq!((sub.last_renewal_payment_id.as_str(), ms(sub.last_renewal_at)), ("pay_3", Some(5000)));
    assert_eq!((sub.renewals, sub.renewals_after_end), (2, 1));
    assert_eq!(sub.last_renewal_payment.map(|p| p.merchant_uid).as_deref(), Some("~gold/renewal/2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_stored_before_0005_read_complete_postgres() {
    subscriptions_stored_before_0005_read_complete(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_stored_before_0005_read_complete_sqlite() {
    subscriptions_stored_before_0005_read_complete(Backend::Sqlite).await;
}

/// 0005's fills look up each subscription's payments by `subscription_id`: the index on it must exist
/// before them, or an upgrade scans every payment once per subscription.
#[test]
fn the_0005_fills_run_after_the_index_they_use() {
    for dir in ["migrations/postgres", "migrations/sqlite"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join("0005_subscription_reads.sql");
        let sql = std::fs::read_to_string(&path).unwrap();
        let index = sql.find("CREATE INDEX payments_by_subscription").expect("the index");
        let first_fill = sql.find("UPDATE subscriptions").expect("the fills");
        assert!(index < first_fill, "{}: the index is created after the fills", path.display());
    }
}
