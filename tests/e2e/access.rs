//! Access control, tried as an operator and a security team would: API keys created, listed,
//! revoked and expired (on every replica within a second), CIDR allowlists on the caller address,
//! channels their sub-merchants may use but not change, rate limits shared by replicas, and an
//! audit trail without secrets.

use std::time::{Duration, Instant};

use paygate::proto::v1::{
    self as pb, merchant_service_client::MerchantServiceClient, payment_service_client::PaymentServiceClient,
};
use prost_types::{FieldMask, Timestamp};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::*;

const ADMIN: &str = "test-admin-token-0123456789";

fn field_names(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

fn in_ms(ms: i64) -> Option<Timestamp> {
    let at = paygate::store::now_ms() + ms;
    Some(Timestamp { seconds: at.div_euclid(1000), nanos: (at.rem_euclid(1000) * 1_000_000) as i32 })
}

fn new_key(name: &str) -> pb::CreateApiKeyRequest {
    pb::CreateApiKeyRequest { name: name.into(), ..Default::default() }
}

/// A cheap authenticated RPC that touches no payment.
async fn list_payments(client: &mut Payments) -> Result<(), tonic::Status> {
    client.list_payments(pb::ListPaymentsRequest::default()).await.map(|_| ())
}

/// `paygate admin ...` on `db` with `env`, parsed as JSON lines.
fn cli(db: &TestDb, env: &[(&str, &str)], args: &[&str]) -> Vec<serde_json::Value> {
    let workdir = tempfile::tempdir().unwrap();
    let mut cmd = paygate_command(db, workdir.path());
    cmd.arg("admin").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Polls until `client` is refused with UNAUTHENTICATED mentioning `word`; returns how long it took.
async fn refused_within(client: &mut Payments, word: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match list_payments(client).await {
            Err(status) if status.code() == Code::Unauthenticated => {
                assert!(status.message().contains(word), "{status:?}");
                return started.elapsed();
            }
            Err(status) => panic!("unexpected {status:?}"),
            Ok(()) => assert!(started.elapsed() < limit, "the key was still accepted after {limit:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn key_lifecycle(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (merchant, key) = create_merchant(&db, "Acme");
    let (_, other_key) = create_merchant(&db, "Other Co");
    let gate = Paygate::start(&db, &[("PAYGATE_ADMIN_TOKEN", ADMIN)]);
    let mut admin = gate.merchants(ADMIN).await;
    let mut own = gate.merchants(&key).await;
    let mut other = gate.merchants(&other_key).await;

    // A key is not the admin token, and the admin token is not a key.
    let status = own.create_merchant(pb::CreateMerchantRequest { name: "x".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = list_payments(&mut gate.payments(ADMIN).await).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("MerchantService"), "{status:?}");

    let sub = admin
        .create_sub_merchant(pb::CreateSubMerchantRequest {
            parent_merchant_id: merchant.clone(),
            name: "Acme KR".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(sub.key_id.starts_with("key_"));

    // A merchant makes keys for itself and its sub-merchants, never for anyone else.
    let created = own.create_api_key(new_key("checkout-service")).await.unwrap().into_inner();
    let shown = created.key.clone().unwrap();
    assert_eq!(shown.merchant_id, merchant);
    assert_eq!(shown.key_prefix.len(), 10);
    assert!(created.api_key.starts_with(&shown.key_prefix));
    let for_sub = pb::CreateApiKeyRequest { merchant_id: sub.merchant_id.clone(), ..new_key("sub ci") };
    assert_eq!(own.create_api_key(for_sub).await.unwrap().into_inner().key.unwrap().merchant_id, sub.merchant_id);
    let mut of_sub = gate.merchants(&sub.api_key).await;
    let parents = pb::ListApiKeysRequest { merchant_id: merchant.clone(), ..Default::default() };
    assert_eq!(of_sub.list_api_keys(parents.clone()).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(other.list_api_keys(parents).await.unwrap_err().code(), Code::NotFound);
    let revoke = pb::RevokeApiKeyRequest { key_id: shown.key_id.clone() };
    assert_eq!(other.revoke_api_key(revoke.clone()).await.unwrap_err().code(), Code::NotFound);
    let foreign = pb::CreateApiKeyRequest { merchant_id: merchant.clone(), ..new_key("x") };
    assert_eq!(other.create_api_key(foreign).await.unwrap_err().code(), Code::NotFound);

    // Bad input names the field.
    let past = pb::CreateApiKeyRequest { expires_at: in_ms(-1_000), ..new_key("old") };
    assert_eq!(field_names(&own.create_api_key(past).await.unwrap_err()), ["expires_at"]);
    assert_eq!(field_names(&admin.create_api_key(new_key("no merchant")).await.unwrap_err()), ["merchant_id"]);
    let bad_id = pb::RevokeApiKeyRequest { key_id: "key_\0".into() };
    assert_eq!(field_names(&own.revoke_api_key(bad_id).await.unwrap_err()), ["key_id"]);

    // Listed with names and prefixes, never a key.
    let listed = own.list_api_keys(pb::ListApiKeysRequest::default()).await.unwrap().into_inner();
    let names: Vec<_> = listed.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["initial", "checkout-service"]);
    let printed = format!("{listed:?}");
    assert!(!printed.contains(&key) && !printed.contains(&created.api_key));

    // The new key works until it is revoked, then fails at once on this replica.
    let mut with_new = gate.payments(&created.api_key).await;
    list_payments(&mut with_new).await.unwrap();
    let revoked = own.revoke_api_key(revoke.clone()).await.unwrap().into_inner();
    assert!(revoked.revoked && revoked.revoked_at.is_some());
    let status = list_payments(&mut with_new).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("revoked"), "{status:?}");
    // Revoking again changes nothing; revoked keys are listed only when asked for.
    assert_eq!(own.revoke_api_key(revoke).await.unwrap().into_inner().revoked_at, revoked.revoked_at);
    let active = own.list_api_keys(pb::ListApiKeysRequest::default()).await.unwrap().into_inner();
    assert_eq!(active.keys.len(), 1);
    let all = pb::ListApiKeysRequest { include_revoked: true, ..Default::default() };
    assert_eq!(own.list_api_keys(all).await.unwrap().into_inner().keys.len(), 2);

    // An expiring key works until it expires.
    let expiring =
        pb::CreateApiKeyRequest { merchant_id: merchant.clone(), expires_at: in_ms(1_500), ..new_key("temp") };
    let expiring = admin.create_api_key(expiring).await.unwrap().into_inner();
    let mut with_expiring = gate.payments(&expiring.api_key).await;
    list_payments(&mut with_expiring).await.unwrap();
    refused_within(&mut with_expiring, "expired", Duration::from_secs(3)).await;

    // The key used here records when it was last used.
    wait_until(|| {
        let mut own = own.clone();
        async move {
            let keys = own.list_api_keys(pb::ListApiKeysRequest::default()).await.unwrap().into_inner().keys;
            keys.iter().any(|k| k.name == "initial" && k.last_used_at.is_some())
        }
    })
    .await;

    // The same lifecycle from the command line.
    let made = cli(&db, &[], &["create-api-key", "--merchant", &merchant, "--name", "batch", "--expires-in", "1h"]);
    let cli_key = made[0]["api_key"].as_str().unwrap().to_owned();
    assert!(made[0]["expires_at_ms"].as_i64().is_some());
    list_payments(&mut gate.payments(&cli_key).await).await.unwrap();
    let keys = cli(&db, &[], &["list-api-keys", "--merchant", &merchant]);
    assert_eq!(keys.iter().map(|k| k["name"].as_str().unwrap()).collect::<Vec<_>>(), ["initial", "temp", "batch"]);
    assert!(keys.iter().all(|k| k.get("api_key").is_none()));
    let key_id = made[0]["key_id"].as_str().unwrap();
    assert!(cli(&db, &[], &["revoke-api-key", "--key-id", key_id])[0]["revoked_at_ms"].is_i64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_created_listed_revoked_and_expire_postgres() {
    key_lifecycle(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_created_listed_revoked_and_expire_sqlite() {
    key_lifecycle(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_fails_on_every_replica_within_a_second_and_within_the_ttl_without_redis() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut redis = RedisServer::start();
    let (merchant, key) = create_merchant(&db, "Acme");
    let prefix = format!("t{}:", ulid::Ulid::new());
    let redis_url = redis.url();
    let env = [
        ("PAYGATE_REDIS_URL", redis_url.as_str()),
        ("PAYGATE_REDIS_KEY_PREFIX", prefix.as_str()),
        ("PAYGATE_ADMIN_TOKEN", ADMIN),
        // Without invalidation a cached key would live this long: longer than the 1 s promise.
        ("PAYGATE_AUTH_CACHE_TTL_MS", "2500"),
    ];
    let a = Paygate::start(&db, &env);
    let b = Paygate::start(&db, &env);
    let mut on_a = a.merchants(&key).await;
    // Both replicas follow invalidations before the measurement starts.
    wait_until(|| async { metric_series(&b, "paygate_auth_cache_invalidations_total", &[]).await >= 0.0 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Revoked through replica A's API.
    let made = on_a.create_api_key(new_key("k1")).await.unwrap().into_inner();
    let mut on_b = b.payments(&made.api_key).await;
    list_payments(&mut on_b).await.unwrap();
    list_payments(&mut on_b).await.unwrap();
    let hits = metric_series(&b, "paygate_auth_cache_requests_total", &[("result", "hit")]).await;
    assert!(hits >= 1.0, "replica B serves the key from its cache");
    on_a.revoke_api_key(pb::RevokeApiKeyRequest { key_id: made.key.unwrap().key_id }).await.unwrap();
    let delay = refused_within(&mut on_b, "revoked", Duration::from_secs(1)).await;
    println!("revocation on A refused on B after {delay:?}");

    // Revoked with the CLI (which announces through the same Redis).
    let env_cli = [("PAYGATE_REDIS_URL", redis_url.as_str()), ("PAYGATE_REDIS_KEY_PREFIX", prefix.as_str())];
    let made = cli(&db, &env_cli, &["create-api-key", "--merchant", &merchant, "--name", "k2"]);
    let mut on_b = b.payments(made[0]["api_key"].as_str().unwrap()).await;
    list_payments(&mut on_b).await.unwrap();
    cli(&db, &env_cli, &["revoke-api-key", "--key-id", made[0]["key_id"].as_str().unwrap()]);
    let delay = refused_within(&mut on_b, "revoked", Duration::from_secs(1)).await;
    println!("CLI revocation refused on B after {delay:?}");

    // Redis down: the bound is the cache TTL.
    redis.stop();
    let made = on_a.create_api_key(new_key("k3")).await.unwrap().into_inner();
    let mut on_b = b.payments(&made.api_key).await;
    list_payments(&mut on_b).await.unwrap();
    on_a.revoke_api_key(pb::RevokeApiKeyRequest { key_id: made.key.unwrap().key_id }).await.unwrap();
    let delay = refused_within(&mut on_b, "revoked", Duration::from_millis(2500 + 500)).await;
    println!("with Redis down, revocation refused on B after {delay:?} (bound: 2.5 s)");
    // Replica A, where it was revoked, refuses it at once.
    let mut on_a_payments = a.payments(&made.api_key).await;
    assert_eq!(list_payments(&mut on_a_payments).await.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_allowlist_admits_callers_by_address_and_trusts_forwarded_for_from_proxies_only() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (merchant, key) = create_merchant(&db, "Acme");
    // PROXY is the trusted proxy (set by the harness); 127.0.0.2 and .3 are hosts of their own.
    let gate = Paygate::start(&db, &[("PAYGATE_ADMIN_TOKEN", ADMIN)]);
    let mut admin = gate.merchants(ADMIN).await;
    let sub = admin
        .create_sub_merchant(pb::CreateSubMerchantRequest { parent_merchant_id: merchant.clone(), name: "Sub".into() })
        .await
        .unwrap()
        .into_inner();
    let from = |ip: &'static str, bearer: Bearer| {
        let gate = &gate;
        async move { PaymentServiceClient::with_interceptor(gate.grpc_from(ip).await, bearer) }
    };

    // A bare address is refused with the CIDR form to write; nothing is stored.
    let set = |blocks: &[&str]| pb::SetApiAllowlistRequest {
        merchant_id: merchant.clone(),
        cidr_blocks: blocks.iter().map(|b| b.to_string()).collect(),
    };
    let status = admin.set_api_allowlist(set(&["127.0.0.2"])).await.unwrap_err();
    assert_eq!(field_names(&status), ["cidr_blocks[0]"]);
    assert!(status.message().contains("127.0.0.2/32"), "{status:?}");
    let status = admin.set_api_allowlist(set(&["10.1.2.3/8"])).await.unwrap_err();
    assert!(status.message().contains("10.0.0.0/8"), "{status:?}");
    let stored = admin
        .get_api_allowlist(pb::GetApiAllowlistRequest { merchant_id: merchant.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(stored.cidr_blocks.is_empty());

    // Without a list, any address.
    list_payments(&mut from("127.0.0.3", Bearer::new(&key)).await).await.unwrap();

    let list = admin.set_api_allowlist(set(&["127.0.0.2/32", "2001:db8::/32"])).await.unwrap().into_inner();
    assert_eq!(list.effective_cidr_blocks, ["127.0.0.2/32", "2001:db8::/32"]);
    list_payments(&mut from("127.0.0.2", Bearer::new(&key)).await).await.unwrap();
    let status = list_payments(&mut from("127.0.0.3", Bearer::new(&key)).await).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("127.0.0.3"), "{status:?}");
    assert!(!status.message().contains("127.0.0.2"), "the answer tells nothing about the list: {status:?}");

    // Through the trusted proxy, the forwarded address counts; from anyone else the header is ignored.
    list_payments(&mut from(PROXY, Bearer::forwarded_for(&key, "127.0.0.2")).await).await.unwrap();
    let status = list_payments(&mut from(PROXY, Bearer::forwarded_for(&key, "127.0.0.9")).await).await.unwrap_err();
    assert!(status.message().contains("127.0.0.9"), "{status:?}");
    let spoofed = Bearer::forwarded_for(&key, "127.0.0.2");
    let status = list_payments(&mut from("127.0.0.3", spoofed).await).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("127.0.0.3"), "{status:?}");

    // A sub-merchant without a list of its own uses its parent's.
    let status = list_payments(&mut from("127.0.0.3", Bearer::new(&sub.api_key)).await).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    list_payments(&mut from("127.0.0.2", Bearer::new(&sub.api_key)).await).await.unwrap();
    let of_sub = admin
        .get_api_allowlist(pb::GetApiAllowlistRequest { merchant_id: sub.merchant_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((of_sub.cidr_blocks.len(), of_sub.inherited_from_merchant_id.as_str()), (0, merchant.as_str()));
    // A wider list of its own does not take a sub-merchant past its parent's.
    let mut sub_from_2 =
        MerchantServiceClient::with_interceptor(gate.grpc_from("127.0.0.2").await, Bearer::new(&sub.api_key));
    let everywhere = pb::SetApiAllowlistRequest { merchant_id: String::new(), cidr_blocks: vec!["0.0.0.0/0".into()] };
    sub_from_2.set_api_allowlist(everywhere).await.unwrap();
    let status = list_payments(&mut from("127.0.0.3", Bearer::new(&sub.api_key)).await).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "the parent's list still applies: {status:?}");

    // The list cannot lock out the admin token, and a key cannot lock out its own merchant.
    let mut admin_from_outside =
        MerchantServiceClient::with_interceptor(gate.grpc_from("127.0.0.3").await, Bearer::new(ADMIN));
    admin_from_outside
        .list_api_keys(pb::ListApiKeysRequest { merchant_id: merchant.clone(), ..Default::default() })
        .await
        .unwrap();
    let mut own_from_2 = MerchantServiceClient::with_interceptor(gate.grpc_from("127.0.0.2").await, Bearer::new(&key));
    let status = own_from_2.set_api_allowlist(set(&["127.0.0.5/32"])).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // An empty list admits any address again.
    own_from_2.set_api_allowlist(set(&[])).await.unwrap();
    list_payments(&mut from("127.0.0.3", Bearer::new(&key)).await).await.unwrap();
}

fn update(key: &str, channel: pb::ChannelUpdate, path: &str) -> pb::UpdateChannelRequest {
    pb::UpdateChannelRequest {
        channel_key: key.into(),
        channel: Some(channel),
        update_mask: Some(FieldMask { paths: vec![path.to_owned()] }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_merchant_uses_its_parents_channel_but_cannot_change_it() {
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let (merchant, key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[("PAYGATE_ADMIN_TOKEN", ADMIN)]);
    let sub = gate
        .merchants(ADMIN)
        .await
        .create_sub_merchant(pb::CreateSubMerchantRequest { parent_merchant_id: merchant.clone(), name: "Sub".into() })
        .await
        .unwrap()
        .into_inner();
    let mut parent = gate.channels(&key).await;
    let mut child = gate.channels(&sub.api_key).await;
    let mut assigned = channel_request(&sim, "main", pb::ChannelMode::Live);
    assigned.sub_merchant_id = sub.merchant_id.clone();
    let created = parent.create_channel(assigned).await.unwrap().into_inner();
    assert_eq!(
        (created.merchant_id.as_str(), created.owner_merchant_id.as_str()),
        (sub.merchant_id.as_str(), merchant.as_str())
    );

    let row = "SELECT merchant_id || name || mode || settings || secrets || version || coalesce(disabled_at, 0) \
               FROM channels WHERE channel_key = $1";
    let pool = db.pool().await;
    let stored = || {
        let pool = pool.clone();
        async move {
            let row: (String,) = sqlx::query_as(row).bind("main").fetch_one(&pool).await.unwrap();
            row.0
        }
    };
    let before = stored().await;
    let pw = |f: fn(&mut pb::PaymentwallCredentials)| {
        let mut credentials = pb::PaymentwallCredentials::default();
        f(&mut credentials);
        pb::ChannelUpdate { paymentwall: Some(credentials), ..Default::default() }
    };
    let attempts: Vec<(&str, pb::ChannelUpdate)> = vec![
        ("paymentwall.secret_key", pw(|c| c.secret_key = "minted-by-the-sub".into())),
        ("paymentwall.project_key", pw(|c| c.project_key = "other".into())),
        ("mode", pb::ChannelUpdate { mode: pb::ChannelMode::Test as i32, ..Default::default() }),
        ("paymentwall.pingback_allowlist", pw(|c| c.pingback_allowlist = vec!["0.0.0.0/0".into()])),
        ("paymentwall.sign_version", pw(|c| c.sign_version = 2)),
        ("paymentwall.api_base_url", pw(|c| c.api_base_url = "https://evil.example".into())),
        ("paymentwall.widget", pw(|c| c.widget = "p2_1".into())),
        ("name", pb::ChannelUpdate { name: "mine now".into(), ..Default::default() }),
        ("sub_merchant_id", pb::ChannelUpdate { sub_merchant_id: sub.merchant_id.clone(), ..Default::default() }),
    ];
    for (path, change) in attempts {
        let status = child.update_channel(update("main", change, path)).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{path}: {status:?}");
    }
    let status = child.delete_channel(pb::DeleteChannelRequest { channel_key: "main".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(stored().await, before, "the stored channel (and its encrypted secret) is unchanged");

    // It may still read the channel and check out on it.
    child.get_channel(pb::GetChannelRequest { channel_key: "main".into() }).await.unwrap();
    let mut sub_payments = gate.payments(&sub.api_key).await;
    sub_payments.create_checkout_session(checkout_request("main", "order-1")).await.unwrap();

    // The owner still changes it.
    let renamed = pb::ChannelUpdate { name: "renamed".into(), ..Default::default() };
    assert_eq!(parent.update_channel(update("main", renamed, "name")).await.unwrap().into_inner().name, "renamed");
    assert_ne!(stored().await, before);

    // A channel the sub-merchant made itself is its own to change.
    child.create_channel(channel_request(&sim, "own", pb::ChannelMode::Test)).await.unwrap();
    let renamed = pb::ChannelUpdate { name: "mine".into(), ..Default::default() };
    child.update_channel(update("own", renamed, "name")).await.unwrap();
}

/// `N` replicas on one database and one Redis, limiting a key to 1 call a second (burst 10) and
/// an address to 1 refused pingback a second (burst 5); and Acme's key.
async fn limited_replicas<const N: usize>() -> (TestDb, RedisServer, String, [Paygate; N]) {
    let db = TestDb::new(Backend::Postgres).await;
    let redis = RedisServer::start();
    let (_, key) = create_merchant(&db, "Acme");
    let prefix = format!("t{}:", ulid::Ulid::new());
    let redis_url = redis.url();
    let env = [
        ("PAYGATE_REDIS_URL", redis_url.as_str()),
        ("PAYGATE_REDIS_KEY_PREFIX", prefix.as_str()),
        ("PAYGATE_API_RATE_LIMIT_PER_SECOND", "1"),
        ("PAYGATE_API_RATE_LIMIT_BURST", "10"),
        ("PAYGATE_PINGBACK_REFUSAL_RATE_PER_SECOND", "1"),
        ("PAYGATE_PINGBACK_REFUSAL_BURST", "5"),
    ];
    let replicas = std::array::from_fn(|_| Paygate::start(&db, &env));
    (db, redis, key, replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_key_limit_is_refused_on_both_replicas_together() {
    let (_db, _redis, key, [a, b]) = limited_replicas().await;
    let (mut on_a, mut on_b) = (a.payments(&key).await, b.payments(&key).await);

    // 40 calls, alternating replicas, as fast as they go: together they get the one bucket.
    let started = Instant::now();
    let (mut ok, mut limited) = (0, 0);
    for i in 0..40 {
        let client = if i % 2 == 0 { &mut on_a } else { &mut on_b };
        match list_payments(client).await {
            Ok(()) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                let retry = status.get_details_retry_info().expect("RetryInfo detail");
                let delay = retry.retry_delay.expect("a retry delay");
                assert!(delay > Duration::ZERO && delay <= Duration::from_secs(1), "{delay:?}");
                limited += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Burst 10 plus what 1/s refills meanwhile; two separate buckets would allow 20 and more.
    let allowed = 10.0 + elapsed + 1.0;
    println!("{ok} allowed, {limited} limited in {elapsed:.2} s (shared bucket allows {allowed:.1})");
    assert!(f64::from(ok) <= allowed && ok < 20, "{ok} calls passed; the replicas do not share the limit");
    assert!(metric_series(&a, "paygate_rate_limited_total", &[("scope", "api_key")]).await >= 1.0);
    assert!(metric_series(&b, "paygate_rate_limited_total", &[("scope", "api_key")]).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_pingbacks_from_one_address_get_429_and_valid_ones_from_it_never_do() {
    let (_db, _redis, key, [a]) = limited_replicas().await;

    // Forged pingbacks from one address are limited; valid ones from it are never.
    let sim = Simulator::start();
    let mut channels = a.channels(&key).await;
    channels.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let http = http_client();
    let (mut forbidden, mut too_many, mut valid_ok) = (0, 0, 0);
    let flood_started = Instant::now();
    for i in 0..30 {
        let forged = Pingback::new("pay_x").uid("u").reference(&format!("f{i}")).test().signed("not-the-secret");
        let response = http.get(format!("{}?{forged}", a.http_url("/pingback/paymentwall/main"))).send().await.unwrap();
        match response.status().as_u16() {
            403 => forbidden += 1,
            429 => {
                let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=2).contains(&retry_after), "{retry_after}");
                too_many += 1;
            }
            other => panic!("forged pingback answered {other}"),
        }
        if i % 5 == 4 {
            tokio::time::sleep(Duration::from_millis(3)).await;
            let mut payments = a.payments(&key).await;
            // The key may be limited too: wait out its bucket rather than mix the two limits.
            let payment_id = loop {
                match payments.create_checkout_session(checkout_request("main", &format!("o{i}"))).await {
                    Ok(session) => break session.into_inner().payment_id,
                    Err(status) if status.code() == Code::ResourceExhausted => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Err(status) => panic!("{status:?}"),
                }
            };
            let valid =
                Pingback::new(&payment_id).uid("user-40012").reference(&format!("v{i}")).test().signed(SECRET_KEY);
            let response =
                http.get(format!("{}?{valid}", a.http_url("/pingback/paymentwall/main"))).send().await.unwrap();
            assert_eq!(response.text().await.unwrap(), "OK");
            valid_ok += 1;
        }
    }
    println!("forged: {forbidden} answered 403, {too_many} answered 429; valid: {valid_ok} OK");
    // The burst of 5, plus one a second refilled while the flood ran (a slow machine runs it longer).
    let refilled = flood_started.elapsed().as_secs() as usize + 1;
    assert!(forbidden >= 5 && forbidden <= 5 + refilled, "{forbidden} refusals in {:?}", flood_started.elapsed());
    assert!(too_many >= 15, "{too_many}");
    assert_eq!(valid_ok, 6);
    assert!(metric_series(&a, "paygate_rate_limited_total", &[("scope", "pingback_refusals")]).await >= 15.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_and_credential_action_is_audited_with_actor_and_address_and_no_secret() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let receiver = Receiver::start(0);
    let (merchant, key) = create_merchant(&db, "Acme");
    let (other, other_key) = create_merchant(&db, "Other Co");
    let gate =
        Paygate::start(&db, &[("PAYGATE_ADMIN_TOKEN", ADMIN), ("PAYGATE_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")]);
    let mut admin = MerchantServiceClient::with_interceptor(gate.grpc_from("127.0.0.4").await, Bearer::new(ADMIN));
    let mut own = MerchantServiceClient::with_interceptor(gate.grpc_from("127.0.0.2").await, Bearer::new(&key));
    let own_key_id =
        own.list_api_keys(pb::ListApiKeysRequest::default()).await.unwrap().into_inner().keys[0].key_id.clone();

    let sub = admin
        .create_sub_merchant(pb::CreateSubMerchantRequest { parent_merchant_id: merchant.clone(), name: "Sub".into() })
        .await
        .unwrap()
        .into_inner();
    let made = own.create_api_key(new_key("ci")).await.unwrap().into_inner();
    own.revoke_api_key(pb::RevokeApiKeyRequest { key_id: made.key.clone().unwrap().key_id }).await.unwrap();
    own.set_api_allowlist(pb::SetApiAllowlistRequest {
        merchant_id: sub.merchant_id.clone(),
        cidr_blocks: vec!["127.0.0.0/8".into()],
    })
    .await
    .unwrap();
    let mut channels = pb::channel_service_client::ChannelServiceClient::with_interceptor(
        gate.grpc_from("127.0.0.2").await,
        Bearer::new(&key),
    );
    channels.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let secret_change = pb::ChannelUpdate {
        paymentwall: Some(pb::PaymentwallCredentials { secret_key: "new-secret-9f8e7d".into(), ..Default::default() }),
        ..Default::default()
    };
    channels.update_channel(update("main", secret_change, "paymentwall.secret_key")).await.unwrap();
    channels.create_channel(channel_request(&sim, "spare", pb::ChannelMode::Test)).await.unwrap();
    channels.delete_channel(pb::DeleteChannelRequest { channel_key: "spare".into() }).await.unwrap();
    let mut webhooks = pb::webhook_service_client::WebhookServiceClient::with_interceptor(
        gate.grpc_from("127.0.0.2").await,
        Bearer::new(&key),
    );
    let endpoint = webhooks
        .set_webhook_endpoint(pb::SetWebhookEndpointRequest { url: receiver.url(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    // Someone else's actions, which Acme must not see.
    gate.merchants(&other_key).await.create_api_key(new_key("theirs")).await.unwrap();

    let list = |client: &mut Merchants, r: pb::ListAuditEventsRequest| {
        let mut client = client.clone();
        async move { client.list_audit_events(r).await.unwrap().into_inner().events }
    };
    let mut own_plain = gate.merchants(&key).await;
    let seen = list(&mut own_plain, pb::ListAuditEventsRequest::default()).await;
    let lines: Vec<(String, String, String, String)> = seen
        .iter()
        .rev()
        .map(|e| (e.action.clone(), e.actor.clone(), e.address.clone(), e.changed_fields.join(",")))
        .collect();
    let key_id = made.key.unwrap().key_id;
    // Every field CreateChannel was given, by name.
    const CREATED_FIELDS: &str = "channel_key,name,provider,mode,paymentwall.project_key,paymentwall.secret_key,\
        paymentwall.widget,paymentwall.sign_version,paymentwall.pingback_allowlist,paymentwall.api_base_url,\
        paymentwall.confirm_digital_delivery";
    let expected = [
        ("merchant.created", "cli", "local", "name"),
        ("api_key.created", "cli", "local", "name"),
        ("sub_merchant.created", "admin", "127.0.0.4", "name,parent_merchant_id"),
        ("api_key.created", "admin", "127.0.0.4", "name"),
        ("api_key.created", own_key_id.as_str(), "127.0.0.2", "name"),
        ("api_key.revoked", own_key_id.as_str(), "127.0.0.2", "revoked_at"),
        ("api_allowlist.set", own_key_id.as_str(), "127.0.0.2", "cidr_blocks"),
        ("channel.created", own_key_id.as_str(), "127.0.0.2", CREATED_FIELDS),
        ("channel.updated", own_key_id.as_str(), "127.0.0.2", "paymentwall.secret_key"),
        ("channel.created", own_key_id.as_str(), "127.0.0.2", CREATED_FIELDS),
        ("channel.deleted", own_key_id.as_str(), "127.0.0.2", "erased"),
        ("webhook_endpoint.set", own_key_id.as_str(), "127.0.0.2", "url,event_types,signing_secret"),
    ];
    let got: Vec<(&str, &str, &str, &str)> =
        lines.iter().map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_str(), d.as_str())).collect();
    assert_eq!(got, expected);
    assert!(seen.iter().all(|e| e.merchant_id != other), "another merchant's entries never show");
    assert!(seen.iter().any(|e| e.target == key_id));

    // Filters and pages; the admin sees everyone; the sub-merchant sees only its own.
    let revoked = pb::ListAuditEventsRequest { action: "api_key.revoked".into(), ..Default::default() };
    assert_eq!(list(&mut own_plain, revoked).await.len(), 1);
    let first = own_plain
        .list_audit_events(pb::ListAuditEventsRequest { page_size: 5, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let rest = pb::ListAuditEventsRequest { page_size: 100, page_token: first.next_page_token, ..Default::default() };
    assert_eq!(first.events.len() + list(&mut own_plain, rest).await.len(), expected.len());
    let everyone = list(&mut admin, pb::ListAuditEventsRequest::default()).await;
    assert_eq!(everyone.len(), expected.len() + 3, "plus Other Co's merchant and two keys");
    let of_sub = list(&mut gate.merchants(&sub.api_key).await, pb::ListAuditEventsRequest::default()).await;
    assert!(of_sub.iter().all(|e| e.merchant_id == sub.merchant_id), "{of_sub:?}");
    let bad = pb::ListAuditEventsRequest { action: "api_key.stolen".into(), ..Default::default() };
    assert_eq!(field_names(&own_plain.list_audit_events(bad).await.unwrap_err()), ["action"]);

    // No secret in any entry, nor in the logs.
    let secrets =
        [key.as_str(), made.api_key.as_str(), SECRET_KEY, "new-secret-9f8e7d", endpoint.secret.as_str(), ADMIN];
    let printed = format!("{everyone:?}");
    let logs = gate.process.logs().join("\n");
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(!printed.contains(secret), "an audit entry holds a secret");
        assert!(!logs.contains(secret), "a log line holds a secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_ends_when_its_key_is_revoked() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let (_, key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[]);
    gate.channels(&key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let made = gate.merchants(&key).await.create_api_key(new_key("watcher")).await.unwrap().into_inner();
    let mut watcher = gate.payments(&made.api_key).await;
    let mut stream = watcher.watch_payments(pb::WatchPaymentsRequest::default()).await.unwrap().into_inner();
    let mut payments = gate.payments(&key).await;

    // Live while the key is.
    let first = checkout_and_pay(&gate, &mut payments, "order-1").await;
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(event.payment.unwrap().payment_id, first);

    // Revoked: the next event ends the stream instead of reaching it.
    let revoke = pb::RevokeApiKeyRequest { key_id: made.key.unwrap().key_id };
    gate.merchants(&key).await.revoke_api_key(revoke).await.unwrap();
    checkout_and_pay(&gate, &mut payments, "order-2").await;
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("revoked"), "{ended:?}");
}

/// A trusted proxy's own request (no `x-forwarded-for`), a chain of trusted hops only, or a chain
/// paygate cannot read is an unknown caller: never the proxy, admitted by no API allowlist (not
/// even 0.0.0.0/0), shown as "unknown"; and no list may name 0.0.0.0/8 or ::/128 to let such
/// callers in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_behind_the_proxy_without_a_readable_address_is_unknown_and_no_api_allowlist_admits_it() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (merchant, key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[("PAYGATE_ADMIN_TOKEN", ADMIN)]);
    let from = |ip: &'static str, bearer: Bearer| {
        let gate = &gate;
        async move { PaymentServiceClient::with_interceptor(gate.grpc_from(ip).await, bearer) }
    };
    let set = |blocks: &[&str]| pb::SetApiAllowlistRequest {
        merchant_id: merchant.clone(),
        cidr_blocks: blocks.iter().map(|b| b.to_string()).collect(),
    };

    // A key behind the proxy sending junk cannot name the unknown caller on its own list.
    let mut own_unknown =
        MerchantServiceClient::with_interceptor(gate.grpc_from(PROXY).await, Bearer::forwarded_for(&key, "junk"));
    for unfit in ["0.0.0.0/32", "0.0.0.0/8", "::/128"] {
        let status = own_unknown.set_api_allowlist(set(&[unfit])).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{unfit}: {status:?}");
        assert_eq!(field_names(&status), ["cidr_blocks[0]"], "{unfit}");
    }
    // Nor set any list: an unknown caller passes none, so it would lock itself out.
    let status = own_unknown.set_api_allowlist(set(&["0.0.0.0/0"])).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("your address unknown"), "{status:?}");
    assert!(status.message().contains("No block can contain an unknown address"), "{status:?}");

    // With the widest list, a known caller passes and an unknown one does not.
    let mut admin_via_proxy = MerchantServiceClient::with_interceptor(gate.grpc_from(PROXY).await, Bearer::new(ADMIN));
    admin_via_proxy.set_api_allowlist(set(&["0.0.0.0/0", "::/0"])).await.unwrap();
    list_payments(&mut from("127.0.0.2", Bearer::new(&key)).await).await.unwrap();
    list_payments(&mut from(PROXY, Bearer::forwarded_for(&key, "127.0.0.2")).await).await.unwrap();
    for (what, bearer) in [
        ("the proxy's own request", Bearer::new(&key)),
        ("a chain of trusted hops only", Bearer::forwarded_for(&key, PROXY)),
        ("an unreadable chain", Bearer::forwarded_for(&key, "junk")),
        ("a forwarded unspecified address", Bearer::forwarded_for(&key, "0.0.0.0")),
    ] {
        let status = list_payments(&mut from(PROXY, bearer).await).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
        assert!(status.message().contains("caller address unknown"), "{what}: {status:?}");
    }

    // The audit trail says who could not be named, not the proxy.
    let audit = admin_via_proxy
        .list_audit_events(pb::ListAuditEventsRequest {
            merchant_id: merchant.clone(),
            action: "api_allowlist.set".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(audit.events.iter().map(|e| e.address.as_str()).collect::<Vec<_>>(), ["unknown"]);
}

/// The same for a pingback: a source behind the proxy paygate cannot name is admitted by no
/// channel's pingback allowlist, not even 0.0.0.0/0, and no pingback allowlist may name 0.0.0.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pingback_behind_the_proxy_without_a_readable_address_is_unknown_and_no_allowlist_admits_it() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let (_, key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[("PAYGATE_ADMIN_TOKEN", ADMIN)]);
    let from = |ip: &'static str, bearer: Bearer| {
        let gate = &gate;
        async move { PaymentServiceClient::with_interceptor(gate.grpc_from(ip).await, bearer) }
    };

    // A channel's pingback allowlist: 0.0.0.0 is refused, and 0.0.0.0/0 admits no unknown source.
    let mut channels = gate.channels(&key).await;
    let mut bad = channel_request(&sim, "main", pb::ChannelMode::Test);
    bad.paymentwall.as_mut().unwrap().pingback_allowlist = vec!["0.0.0.0".into()];
    let status = channels.create_channel(bad).await.unwrap_err();
    assert_eq!(field_names(&status), ["paymentwall.pingback_allowlist[0]"], "{status:?}");
    let mut open = channel_request(&sim, "main", pb::ChannelMode::Test);
    open.paymentwall.as_mut().unwrap().pingback_allowlist = vec!["0.0.0.0/0".into()];
    channels.create_channel(open).await.unwrap();
    let mut payments = from("127.0.0.2", Bearer::new(&key)).await;
    let pid = payments.create_checkout_session(checkout_request("main", "order-1")).await.unwrap().into_inner();
    let base = Pingback::new(&pid.payment_id).uid("user-40012").one_time().reference("b1");
    let url = format!("{}?{}", gate.http_url("/pingback/paymentwall/main"), base.signed(SECRET_KEY));
    let proxy = http_client_from(PROXY);
    for chain in [None, Some(PROXY), Some("junk")] {
        let mut request = proxy.get(&url);
        if let Some(chain) = chain {
            request = request.header("x-forwarded-for", chain);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 403, "{chain:?}");
        let body = answer.text().await.unwrap();
        assert_eq!(body.trim(), "source address unknown is not allowed for this channel", "{chain:?}");
    }
    let payment = payments
        .get_payment(pb::GetPaymentRequest { lookup: Some(pb::get_payment_request::Lookup::PaymentId(pid.payment_id)) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(payment.status(), pb::PaymentStatus::Ready, "no refused pingback changed it");
    let answer = proxy.get(&url).header("x-forwarded-for", "174.36.92.186").send().await.unwrap();
    assert_eq!(answer.status(), 200, "a readable chain still names the source");
}
