//! A database written before channel credentials became provider-owned config (migrations up to
//! 0003) upgrades in place: its channel keeps its settings, its secret and its pingback URL.

use paygate::{proto::v1 as pb, secrets::MasterKeys};
use secrecy::SecretString;
use sqlx::{Executor, migrate::Migrator};

use crate::support::{
    self, Backend, PROJECT_KEY, Paygate, SECRET_KEY, Simulator, TestDb, checkout_request, get_payment, http_client,
    paygate_command, signed_pingback_query,
};

/// Applies the migrations before 0004, as the previous release left the database.
async fn migrate_to_0003(db: &TestDb) {
    let dir = match db.backend {
        Backend::Postgres => "migrations/postgres",
        Backend::Sqlite => "migrations/sqlite",
    };
    let mut migrator = Migrator::new(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).await.unwrap();
    migrator.migrations = migrator.migrations.iter().filter(|m| m.version <= 3).cloned().collect::<Vec<_>>().into();
    let pool = db.pool().await;
    migrator.run(&pool).await.expect("migrations 0001-0003");
    pool.close().await;
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
        let query = signed_pingback_query(
            &[
                ("uid", "user-40012"),
                ("goodsid", &session.payment_id),
                ("type", "0"),
                ("ref", &reference),
                ("is_test", "1"),
            ],
            SECRET_KEY,
            3,
        );
        let answer = http_client().get(format!("{}?{query}", gate.http_url(path))).send().await.unwrap();
        assert_eq!(answer.text().await.unwrap(), "OK", "{path}");
        assert_eq!(get_payment(&mut payments, &session.payment_id).await.status(), pb::PaymentStatus::Paid);
    }
    // Signed with anything else, refused as before.
    let forged = signed_pingback_query(&[("goodsid", "pay_x"), ("type", "0"), ("ref", "b1")], "another secret", 3);
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
