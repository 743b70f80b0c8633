//! Channels: the admin API and merchant scoping, secrets encrypted at rest with a rotatable master
//! key, and configs cached through Redis for every replica.

use std::time::{Duration, Instant};

use paygate::proto::v1::{self as pb, PaymentStatus, merchant_service_client::MerchantServiceClient};
use prost_types::FieldMask;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::*;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const NEW_SECRET: &str = "rotated-secret-5f1c0d2e9a";

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

fn update(key: &str, channel: pb::ChannelUpdate, paths: &[&str]) -> pb::UpdateChannelRequest {
    pb::UpdateChannelRequest { channel_key: key.into(), channel: Some(channel), update_mask: mask(paths) }
}

fn secret_update(secret: &str) -> pb::ChannelUpdate {
    pb::ChannelUpdate {
        paymentwall: Some(pb::PaymentwallCredentials { secret_key: secret.into(), ..Default::default() }),
        ..Default::default()
    }
}

fn field_names(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Merchant A (Acme) and merchant B (Other Co) on one paygate with an admin token, and A's
/// sub-merchant, made through the admin service; the channel clients of all three, A's payments.
struct TwoMerchants {
    db: TestDb,
    sim: Simulator,
    gate: Paygate,
    sub: pb::CreateMerchantResponse,
    a: Channels,
    b: Channels,
    s: Channels,
    payments_a: Payments,
}

impl TwoMerchants {
    async fn open() -> Self {
        let db = TestDb::new(Backend::Postgres).await;
        let sim = Simulator::start();
        let (merchant_a, key_a) = create_merchant(&db, "Acme");
        let (_, key_b) = create_merchant(&db, "Other Co");
        let gate = Paygate::start(&db, &[("PAYGATE_ADMIN_TOKEN", ADMIN_TOKEN)]);
        let a = gate.channels(&key_a).await;
        let b = gate.channels(&key_b).await;
        let payments_a = gate.payments(&key_a).await;

        // A sub-merchant, through the admin service; a merchant key is not an admin token.
        let mut admin = MerchantServiceClient::with_interceptor(gate.grpc().await, Bearer::new(ADMIN_TOKEN));
        let sub = admin
            .create_sub_merchant(pb::CreateSubMerchantRequest {
                parent_merchant_id: merchant_a.clone(),
                name: "Acme KR".into(),
            })
            .await
            .expect("CreateSubMerchant")
            .into_inner();
        let mut not_admin = MerchantServiceClient::with_interceptor(gate.grpc().await, Bearer::new(&key_a));
        let status = not_admin.create_merchant(pb::CreateMerchantRequest { name: "x".into() }).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        let s = gate.channels(&sub.api_key).await;
        Self { db, sim, gate, sub, a, b, s, payments_a }
    }

    async fn with_three_channels() -> Self {
        let Self { db, sim, gate, sub, mut a, b, s, payments_a } = Self::open().await;
        // TEST and LIVE side by side, and one assigned to the sub-merchant.
        a.create_channel(channel_request(&sim, "test-1", pb::ChannelMode::Test)).await.unwrap();
        a.create_channel(channel_request(&sim, "live-1", pb::ChannelMode::Live)).await.unwrap();
        let mut assigned = channel_request(&sim, "sub-1", pb::ChannelMode::Test);
        assigned.sub_merchant_id = sub.merchant_id.clone();
        let assigned = a.create_channel(assigned).await.unwrap().into_inner();
        assert_eq!(assigned.merchant_id, sub.merchant_id);
        Self { db, sim, gate, sub, a, b, s, payments_a }
    }
}

/// No secret ever reached a log line.
fn assert_no_secret_logged(gate: &Paygate) {
    let logs = gate.process.logs().join("\n");
    assert!(!logs.contains(SECRET_KEY) && !logs.contains(NEW_SECRET));
}

fn keys(r: pb::ListChannelsResponse) -> Vec<String> {
    r.channels.into_iter().map(|c| c.channel_key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_channel_input_names_the_field_and_stores_nothing() {
    let TwoMerchants { db, sim, gate, mut a, .. } = TwoMerchants::open().await;

    // Bad input names the field, and stores nothing.
    let channels_stored = "SELECT COUNT(*) FROM channels WHERE merchant_id <> $1";
    type Mutation = Box<dyn Fn(&mut pb::CreateChannelRequest)>;
    let bad: Vec<(&str, Mutation)> = vec![
        ("provider", Box::new(|r| r.provider = 99)),
        ("paymentwall.sign_version", Box::new(|r| r.paymentwall.as_mut().unwrap().sign_version = 1)),
        (
            "paymentwall.pingback_allowlist[0]",
            Box::new(|r| r.paymentwall.as_mut().unwrap().pingback_allowlist = vec!["10.1.2.0/40".into()]),
        ),
        ("paymentwall.secret_key", Box::new(|r| r.paymentwall.as_mut().unwrap().secret_key.clear())),
        (
            "paymentwall.api_base_url",
            Box::new(|r| r.paymentwall.as_mut().unwrap().api_base_url = "ftp://files.example".into()),
        ),
        ("sub_merchant_id", Box::new(|r| r.sub_merchant_id = "mer_not_mine".into())),
    ];
    for (field, mutate) in bad {
        let mut request = channel_request(&sim, "", pb::ChannelMode::Test);
        mutate(&mut request);
        let status = a.create_channel(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert_eq!(field_names(&status), [field]);
    }
    assert_eq!(db.count(channels_stored, "").await, 0);
    assert_no_secret_logged(&gate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_listed_by_mode_by_sub_merchant_and_by_page() {
    let TwoMerchants { db: _db, sim: _sim, gate, sub, mut a, mut s, .. } = TwoMerchants::with_three_channels().await;

    let all = a.list_channels(pb::ListChannelsRequest::default()).await.unwrap().into_inner();
    assert_eq!(keys(all), ["live-1", "sub-1", "test-1"]);
    let live = pb::ListChannelsRequest { mode: pb::ChannelMode::Live as i32, ..Default::default() };
    assert_eq!(keys(a.list_channels(live).await.unwrap().into_inner()), ["live-1"]);
    let of_sub = pb::ListChannelsRequest { sub_merchant_id: sub.merchant_id.clone(), ..Default::default() };
    assert_eq!(keys(a.list_channels(of_sub).await.unwrap().into_inner()), ["sub-1"]);
    let first =
        a.list_channels(pb::ListChannelsRequest { page_size: 2, ..Default::default() }).await.unwrap().into_inner();
    let rest =
        pb::ListChannelsRequest { page_size: 2, page_token: first.next_page_token.clone(), ..Default::default() };
    assert_eq!(keys(a.list_channels(rest).await.unwrap().into_inner()), ["test-1"]);
    // The sub-merchant's own key sees its channel only.
    assert_eq!(keys(s.list_channels(pb::ListChannelsRequest::default()).await.unwrap().into_inner()), ["sub-1"]);
    let status = s.get_channel(pb::GetChannelRequest { channel_key: "test-1".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_no_secret_logged(&gate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_merchant_can_neither_see_change_nor_delete_a_channel() {
    let TwoMerchants { db: _db, sim: _sim, gate, mut b, .. } = TwoMerchants::with_three_channels().await;

    // Another merchant can neither see, change nor delete A's channels.
    assert!(b.list_channels(pb::ListChannelsRequest::default()).await.unwrap().into_inner().channels.is_empty());
    let status = b.get_channel(pb::GetChannelRequest { channel_key: "test-1".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status =
        b.update_channel(update("test-1", secret_update("stolen"), &["paymentwall.secret_key"])).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = b.delete_channel(pb::DeleteChannelRequest { channel_key: "test-1".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_no_secret_logged(&gate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_changes_by_its_mask_rotates_its_secret_and_once_used_is_disabled_not_erased() {
    let TwoMerchants { db: _db, sim: _sim, gate, mut a, mut payments_a, .. } =
        TwoMerchants::with_three_channels().await;

    // Update: only the masked fields change; the version moves.
    let before = a.get_channel(pb::GetChannelRequest { channel_key: "test-1".into() }).await.unwrap().into_inner();
    let changed = pb::ChannelUpdate {
        name: "renamed".into(),
        paymentwall: Some(pb::PaymentwallCredentials {
            widget: "p2_1".into(),
            project_key: "ignored".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let after =
        a.update_channel(update("test-1", changed, &["name", "paymentwall.widget"])).await.unwrap().into_inner();
    assert_eq!((after.name.as_str(), after.version), ("renamed", before.version + 1));
    let (pw_before, pw_after) = (before.paymentwall.unwrap(), after.paymentwall.clone().unwrap());
    assert_eq!(pw_after.widget, "p2_1");
    assert_eq!(pw_after.project_key, pw_before.project_key, "not in the mask, not changed");
    // Bad updates change nothing.
    let status = a.update_channel(update("test-1", pb::ChannelUpdate::default(), &["provider"])).await.unwrap_err();
    assert_eq!((status.code(), field_names(&status)), (Code::InvalidArgument, vec!["update_mask.paths[0]".to_owned()]));
    let status = a.update_channel(update("test-1", pb::ChannelUpdate::default(), &[])).await.unwrap_err();
    assert_eq!(field_names(&status), ["update_mask"]);
    let bad_version = pb::ChannelUpdate {
        paymentwall: Some(pb::PaymentwallCredentials { sign_version: 7, ..Default::default() }),
        ..Default::default()
    };
    let status = a.update_channel(update("test-1", bad_version, &["paymentwall.sign_version"])).await.unwrap_err();
    assert_eq!(field_names(&status), ["paymentwall.sign_version"]);
    let unchanged = a.get_channel(pb::GetChannelRequest { channel_key: "test-1".into() }).await.unwrap().into_inner();
    assert_eq!(unchanged.version, after.version);

    // Rotating the secret is an update; the next checkout is signed with the new secret.
    let checkout =
        payments_a.create_checkout_session(checkout_request("test-1", "order-old")).await.unwrap().into_inner();
    assert!(signed_with(&checkout.redirect_url, SECRET_KEY));
    a.update_channel(update("test-1", secret_update(NEW_SECRET), &["paymentwall.secret_key"])).await.unwrap();
    let checkout =
        payments_a.create_checkout_session(checkout_request("test-1", "order-new")).await.unwrap().into_inner();
    assert!(signed_with(&checkout.redirect_url, NEW_SECRET), "{}", checkout.redirect_url);
    assert_eq!(query_param(&checkout.redirect_url, "widget").as_deref(), Some("p2_1"));

    // Delete: unused -> erased; with payments -> disabled, still verifying its pingbacks.
    let erased =
        a.delete_channel(pb::DeleteChannelRequest { channel_key: "live-1".into() }).await.unwrap().into_inner();
    assert!(erased.erased);
    let status = a.get_channel(pb::GetChannelRequest { channel_key: "live-1".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let kept = a.delete_channel(pb::DeleteChannelRequest { channel_key: "test-1".into() }).await.unwrap().into_inner();
    assert!(!kept.erased);
    let disabled = a.get_channel(pb::GetChannelRequest { channel_key: "test-1".into() }).await.unwrap().into_inner();
    assert!(disabled.disabled_at.is_some());
    assert_eq!(keys(a.list_channels(pb::ListChannelsRequest::default()).await.unwrap().into_inner()), ["sub-1"]);
    let with_disabled = pb::ListChannelsRequest { include_disabled: true, ..Default::default() };
    assert_eq!(keys(a.list_channels(with_disabled).await.unwrap().into_inner()), ["sub-1", "test-1"]);
    let status = payments_a.create_checkout_session(checkout_request("test-1", "order-late")).await.unwrap_err();
    assert_eq!((status.code(), field_names(&status)), (Code::InvalidArgument, vec!["channel_key".to_owned()]));
    let query =
        Pingback::new(&checkout.payment_id).uid("user-40012").one_time().reference("b31").test().signed(NEW_SECRET);
    let response =
        http_client().get(format!("{}?{query}", gate.http_url("/pingback/paymentwall/test-1"))).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "OK");
    wait_for_status(&mut payments_a, &checkout.payment_id, PaymentStatus::Paid).await;
    assert_no_secret_logged(&gate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_and_the_master_key_rotates() {
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let old_key = db.master_key.clone().unwrap();
    let new_key = paygate::secrets::MasterKeys::generate();

    let gate = Paygate::start(&db, &[]);
    gate.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    drop(gate);

    // The raw row holds no clear secret.
    let pool = db.pool().await;
    let stored: String =
        sqlx::query_scalar("SELECT secrets::json->>'secret_key' FROM channels WHERE channel_key = 'main'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(stored.starts_with("pgenc:v1:"), "{stored}");
    let whole_row: String = sqlx::query_scalar(
        "SELECT CONCAT(channel_key, name, settings, secrets) FROM channels WHERE channel_key = 'main'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!whole_row.contains(SECRET_KEY));

    // Rotate: the new key current, the old one still readable while rewriting.
    let workdir = tempfile::tempdir().unwrap();
    let out = paygate_command(&db, workdir.path())
        .args(["admin", "rotate-master-key"])
        .env("PAYGATE_MASTER_KEY", &new_key)
        .env("PAYGATE_PREVIOUS_MASTER_KEYS", &old_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["rotated"].as_u64(), report["channels"].as_u64()), (Some(1), Some(1)));
    let rotated: String =
        sqlx::query_scalar("SELECT secrets::json->>'secret_key' FROM channels WHERE channel_key = 'main'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_ne!(rotated, stored);
    assert!(rotated.starts_with(&format!("pgenc:v1:{}:", report["key_id"].as_str().unwrap())));
    // Audited in the same transaction, deployment-wide, by the CLI.
    let audited: (String, String, Option<String>, String) = sqlx::query_as(
        "SELECT actor, target, merchant_id, changed_fields FROM audit_events WHERE action = 'master_key.rotated'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, ("cli".into(), "main".into(), None, r#"["paymentwall.secret_key"]"#.into()));
    pool.close().await;

    // The new key alone opens everything: checkouts are signed with the original secret.
    let gate = Paygate::start(&db, &[("PAYGATE_MASTER_KEY", &new_key)]);
    let checkout = gate
        .payments(&api_key)
        .await
        .create_checkout_session(checkout_request("main", "order-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(signed_with(&checkout.redirect_url, SECRET_KEY));
    drop(gate);

    // The old key, or any other, now fails at start-up with a clear message.
    for wrong in [old_key, paygate::secrets::MasterKeys::generate()] {
        let out = paygate_command(&db, workdir.path())
            .arg("serve")
            .env("PAYGATE_MASTER_KEY", &wrong)
            .env("PAYGATE_GRPC_ADDR", "127.0.0.1:0")
            .env("PAYGATE_HTTP_ADDR", "127.0.0.1:0")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("1 of 1 channel secrets cannot be decrypted with the configured master key"),
            "{stderr}"
        );
        assert!(!stderr.contains(&wrong));
    }

    // PostgreSQL without any master key refuses to start, saying what to set.
    let out = paygate_command(&db, workdir.path()).arg("serve").env_remove("PAYGATE_MASTER_KEY").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PAYGATE_MASTER_KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_keeps_its_master_key_beside_the_database() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[]);
    gate.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    drop(gate);
    let db_file = db.url.trim_start_matches("sqlite://").split('?').next().unwrap().to_owned();
    let key_file = format!("{db_file}.key");
    assert!(std::path::Path::new(&key_file).exists(), "generated {key_file}");
    let raw = std::fs::read(&db_file).unwrap();
    assert!(!raw.windows(SECRET_KEY.len()).any(|w| w == SECRET_KEY.as_bytes()), "clear secret in the SQLite file");

    // Restarted on the same file: the kept key opens the channel, without a second warning. Twenty
    // checkouts racing on the cold cache load the channel once.
    let gate = Paygate::start(&db, &[]);
    let payments = gate.payments(&api_key).await;
    let racing = (0..20).map(|i| {
        let mut client = payments.clone();
        tokio::spawn(
            async move { client.create_checkout_session(checkout_request("main", &format!("race-{i}"))).await },
        )
    });
    for checkout in futures_util::future::join_all(racing).await {
        let checkout = checkout.unwrap().expect("checkout").into_inner();
        assert!(signed_with(&checkout.redirect_url, SECRET_KEY));
    }
    assert_eq!(metric(&gate, "paygate_channel_cache_load_seconds_count").await, 1.0);
    assert_eq!(metric(&gate, "paygate_channel_cache_requests_total").await, 20.0);
    assert!(!gate.process.logs().iter().any(|l| l.contains("generated a master key")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_channel_configs_through_redis_and_survive_its_outage() {
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let mut redis = RedisServer::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let prefix = format!("t{}:", ulid::Ulid::new());
    let redis_url = redis.url();
    // A long in-process TTL: only pub/sub can explain a replica seeing a change quickly.
    let env = [
        ("PAYGATE_REDIS_URL", redis_url.as_str()),
        ("PAYGATE_REDIS_KEY_PREFIX", prefix.as_str()),
        ("PAYGATE_CHANNEL_CACHE_TTL_MS", "600000"),
    ];
    let gate_a = Paygate::start(&db, &env);
    let gate_b = Paygate::start(&db, &env);
    let mut channels_a = gate_a.channels(&api_key).await;
    let mut payments_a = gate_a.payments(&api_key).await;
    let mut payments_b = gate_b.payments(&api_key).await;
    for gate in [&gate_a, &gate_b] {
        wait_until(|| async { metric(gate, "paygate_channel_cache_subscribed").await == 1.0 }).await;
    }

    channels_a.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let checkout = |client: &mut Payments, uid: String| {
        let mut client = client.clone();
        async move { client.create_checkout_session(checkout_request("main", &uid)).await.unwrap().into_inner() }
    };
    let first = checkout(&mut payments_b, "b-1".into()).await; // B caches the channel
    assert!(signed_with(&first.redirect_url, SECRET_KEY));
    let cached: serde_json::Value =
        serde_json::from_str(&redis.get(&format!("{prefix}channel:main")).await.expect("cached in redis")).unwrap();
    assert_eq!(cached["version"], 1);
    assert!(!cached.to_string().contains(SECRET_KEY), "redis holds only the encrypted secret");

    // An update on A is used by B within the stated bound (pub/sub delivery; we allow 2 s).
    channels_a.update_channel(update("main", secret_update(NEW_SECRET), &["paymentwall.secret_key"])).await.unwrap();
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let c = checkout(&mut payments_b, format!("b-rot-{n}")).await;
        if signed_with(&c.redirect_url, NEW_SECRET) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "B still signs with the old secret after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metric(&gate_b, "paygate_channel_cache_invalidations_total").await >= 1.0);

    // Redis stops: checkouts and pingbacks keep working on both replicas; writes still succeed.
    redis.stop();
    let during = checkout(&mut payments_a, "a-outage".into()).await;
    let on_b = checkout(&mut payments_b, "b-outage".into()).await;
    assert!(signed_with(&during.redirect_url, NEW_SECRET) && signed_with(&on_b.redirect_url, NEW_SECRET));
    let query =
        Pingback::new(&during.payment_id).uid("user-40012").one_time().reference("b-out").test().signed(NEW_SECRET);
    let response =
        http_client().get(format!("{}?{query}", gate_b.http_url("/pingback/paymentwall/main"))).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "OK");
    wait_for_status(&mut payments_a, &during.payment_id, PaymentStatus::Paid).await;
    let widget = pb::ChannelUpdate {
        paymentwall: Some(pb::PaymentwallCredentials { widget: "p_outage".into(), ..Default::default() }),
        ..Default::default()
    };
    channels_a
        .update_channel(update("main", widget, &["paymentwall.widget"]))
        .await
        .expect("writes work without redis");

    // Redis returns: both replicas resubscribe, B picks up the change made during the outage,
    // and caching and invalidation resume.
    redis.restart();
    for gate in [&gate_a, &gate_b] {
        wait_until(|| async { metric(gate, "paygate_channel_cache_subscribed").await == 1.0 }).await;
    }
    wait_until(|| async {
        let c = checkout(&mut payments_b.clone(), format!("b-back-{}", ulid::Ulid::new())).await;
        query_param(&c.redirect_url, "widget").as_deref() == Some("p_outage")
    })
    .await;
    wait_until(|| async { redis.get(&format!("{prefix}channel:main")).await.is_some() }).await;
    let after = pb::ChannelUpdate {
        paymentwall: Some(pb::PaymentwallCredentials { widget: "p_after".into(), ..Default::default() }),
        ..Default::default()
    };
    channels_a.update_channel(update("main", after, &["paymentwall.widget"])).await.unwrap();
    let started = Instant::now();
    loop {
        let c = checkout(&mut payments_b, format!("b-after-{}", ulid::Ulid::new())).await;
        if query_param(&c.redirect_url, "widget").as_deref() == Some("p_after") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "invalidation did not resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
