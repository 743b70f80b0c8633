//! What one merchant's keys, or anyone's guesses, may cost everyone else: no-op changes leave
//! every cache alone and real ones only their merchant's, more keys do not mean more calls, an
//! open stream follows its merchant's allowlist, and an address that keeps failing is refused
//! before any lookup.

use std::time::{Duration, Instant};

use paygate::proto::v1::{
    self as pb, merchant_service_client::MerchantServiceClient, payment_service_client::PaymentServiceClient,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::*;

const ADMIN: &str = "test-admin-token-0123456789";

async fn list_payments(client: &mut Payments) -> Result<(), tonic::Status> {
    client.list_payments(pb::ListPaymentsRequest::default()).await.map(|_| ())
}

fn new_key(merchant_id: &str, name: &str) -> pb::CreateApiKeyRequest {
    pb::CreateApiKeyRequest { merchant_id: merchant_id.into(), name: name.into(), ..Default::default() }
}

fn allowlist(merchant_id: &str, blocks: &[&str]) -> pb::SetApiAllowlistRequest {
    pb::SetApiAllowlistRequest {
        merchant_id: merchant_id.into(),
        cidr_blocks: blocks.iter().map(|b| b.to_string()).collect(),
    }
}

async fn payments_from(gate: &Paygate, ip: &str, key: &str) -> Payments {
    PaymentServiceClient::with_interceptor(gate.grpc_from(ip).await, Bearer::new(key))
}

async fn cache(gate: &Paygate, result: &str) -> f64 {
    metric_series(gate, "paygate_auth_cache_requests_total", &[("result", result)]).await
}

async fn invalidations(gate: &Paygate, source: &str) -> f64 {
    metric_series(gate, "paygate_auth_cache_invalidations_total", &[("source", source)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_op_change_touches_no_cache_and_a_real_one_only_its_merchants_keys() {
    let db = TestDb::new(Backend::Postgres).await;
    let redis = RedisServer::start();
    let (acme, acme_key) = create_merchant(&db, "Acme");
    let (_, other_key) = create_merchant(&db, "Other");
    let prefix = format!("t{}:", ulid::Ulid::new());
    let redis_url = redis.url();
    let env = [
        ("PAYGATE_REDIS_URL", redis_url.as_str()),
        ("PAYGATE_REDIS_KEY_PREFIX", prefix.as_str()),
        ("PAYGATE_ADMIN_TOKEN", ADMIN),
    ];
    let (a, b) = (Paygate::start(&db, &env), Paygate::start(&db, &env));
    wait_until(|| async { metric_series(&b, "paygate_auth_cache_invalidations_total", &[]).await >= 0.0 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut acme_on_a = MerchantServiceClient::with_interceptor(a.grpc_from("127.0.0.2").await, Bearer::new(&acme_key));
    let mut other_on_b = payments_from(&b, "127.0.0.2", &other_key).await;
    list_payments(&mut other_on_b).await.unwrap();

    // Real changes first: a revocation, an allowlist.
    let spare = acme_on_a.create_api_key(new_key("", "spare")).await.unwrap().into_inner().key.unwrap();
    acme_on_a.revoke_api_key(pb::RevokeApiKeyRequest { key_id: spare.key_id.clone() }).await.unwrap();
    acme_on_a.set_api_allowlist(allowlist("", &["127.0.0.0/24", "10.0.0.0/8"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let audited = || db.count("SELECT COUNT(*) FROM audit_events WHERE merchant_id = $1", &acme);
    let before = (invalidations(&a, "write").await, invalidations(&b, "remote").await, audited().await);
    assert!(before.0 >= 2.0 && before.1 >= 2.0, "the real changes invalidated: {before:?}");

    // The same again: the key is revoked already, the list is the same (in another order).
    let again = acme_on_a.revoke_api_key(pb::RevokeApiKeyRequest { key_id: spare.key_id }).await.unwrap();
    assert!(again.into_inner().revoked_at.is_some());
    acme_on_a.set_api_allowlist(allowlist("", &["10.0.0.0/8", "127.0.0.0/24"])).await.unwrap();
    acme_on_a.set_api_allowlist(allowlist("", &["127.0.0.0/24", "10.0.0.0/8"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = (invalidations(&a, "write").await, invalidations(&b, "remote").await, audited().await);
    assert_eq!(after, before, "no-op changes invalidate nothing on any replica and audit nothing");

    // A real change of Acme's: the other merchant's cached key stays cached on the other replica.
    let (hits, misses) = (cache(&b, "hit").await, cache(&b, "miss").await);
    acme_on_a.set_api_allowlist(allowlist("", &["127.0.0.0/24"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(invalidations(&b, "remote").await, before.1 + 1.0, "replica B heard of it");
    list_payments(&mut other_on_b).await.unwrap();
    assert_eq!((cache(&b, "hit").await, cache(&b, "miss").await), (hits + 1.0, misses), "Other's key was a hit");
    // Acme's own key is read again on B, and the new list applies there.
    let status = list_payments(&mut payments_from(&b, "127.0.1.2", &acme_key).await).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(cache(&b, "miss").await, misses + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_keys_do_not_mean_more_calls_and_live_keys_are_capped() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (acme, acme_key) = create_merchant(&db, "Acme");
    let (_, other_key) = create_merchant(&db, "Other");
    let gate = Paygate::start(
        &db,
        &[
            ("PAYGATE_ADMIN_TOKEN", ADMIN),
            ("PAYGATE_API_RATE_LIMIT_PER_SECOND", "10"),
            ("PAYGATE_API_RATE_LIMIT_BURST", "10"),
            ("PAYGATE_API_MERCHANT_RATE_LIMIT_PER_SECOND", "5"),
            ("PAYGATE_API_MERCHANT_RATE_LIMIT_BURST", "5"),
            ("PAYGATE_MAX_API_KEYS_PER_MERCHANT", "4"),
        ],
    );
    let mut admin = gate.merchants(ADMIN).await;

    // The cap: Acme has its initial key and may make three more; a revoked key makes room.
    let mut keys = vec![acme_key.clone()];
    for i in 0..3 {
        keys.push(admin.create_api_key(new_key(&acme, &format!("k{i}"))).await.unwrap().into_inner().api_key);
    }
    let status = admin.create_api_key(new_key(&acme, "one-too-many")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("4 live API keys"), "{status:?}");
    let listed = admin
        .list_api_keys(pb::ListApiKeysRequest { merchant_id: acme.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys.len(), 4, "nothing was created");
    let spare = admin.create_api_key(new_key(&acme, "spare")).await.unwrap_err();
    assert_eq!(spare.code(), Code::ResourceExhausted);
    let last = listed.keys.last().unwrap().key_id.clone();
    admin.revoke_api_key(pb::RevokeApiKeyRequest { key_id: last }).await.unwrap();
    keys.pop();
    keys.push(admin.create_api_key(new_key(&acme, "replacement")).await.unwrap().into_inner().api_key);

    // A sub-merchant's key shares its parent's bucket.
    let sub = admin
        .create_sub_merchant(pb::CreateSubMerchantRequest { parent_merchant_id: acme.clone(), name: "Sub".into() })
        .await
        .unwrap()
        .into_inner();
    keys.push(sub.api_key);
    let mut clients = Vec::new();
    for key in &keys {
        clients.push(gate.payments(key).await);
    }

    // 30 calls over five keys, each within its own limit (6 of its 10): Acme's bucket decides.
    let started = Instant::now();
    let (mut ok, mut merchant_limited) = (0, 0);
    for i in 0..30 {
        let n = clients.len();
        match list_payments(&mut clients[i % n]).await {
            Ok(()) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains(&acme), "names the merchant: {status:?}");
                assert!(status.get_details_retry_info().and_then(|r| r.retry_delay).is_some(), "{status:?}");
                merchant_limited += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = 5.0 + 5.0 * elapsed + 1.0;
    println!("{ok} of 30 allowed over 5 keys in {elapsed:.2} s (the merchant's bucket allows {allowed:.1})");
    assert!(f64::from(ok) <= allowed && ok < 25, "{ok} calls passed: the keys' buckets added up");
    assert!(merchant_limited > 0);
    assert!(metric_series(&gate, "paygate_rate_limited_total", &[("scope", "api_merchant")]).await >= 1.0);

    // Another merchant's calls are not Acme's.
    list_payments(&mut gate.payments(&other_key).await).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_ends_when_the_allowlist_no_longer_admits_its_caller() {
    let Shop { db: _db, sim: _sim, merchant_id: acme, api_key: key, gate } =
        Shop::open(Backend::Sqlite, &[("PAYGATE_ADMIN_TOKEN", ADMIN)]).await;
    let mut admin = gate.merchants(ADMIN).await;
    admin.set_api_allowlist(allowlist(&acme, &["127.0.0.2/32", "127.0.0.3/32"])).await.unwrap();
    let mut watcher = payments_from(&gate, "127.0.0.2", &key).await;
    let mut stream = watcher.watch_payments(pb::WatchPaymentsRequest::default()).await.unwrap().into_inner();
    let mut payments = payments_from(&gate, "127.0.0.3", &key).await;

    // Live while its address is admitted, and after a change that still admits it.
    let first = checkout_and_pay(&gate, &mut payments, "order-1").await;
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(event.payment.unwrap().payment_id, first);
    admin.set_api_allowlist(allowlist(&acme, &["127.0.0.2/32", "127.0.0.3/32", "10.0.0.0/8"])).await.unwrap();
    let second = checkout_and_pay(&gate, &mut payments, "order-2").await;
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(event.payment.unwrap().payment_id, second);

    // The list no longer admits the stream's caller: new calls from there are refused, and the next
    // event ends the open stream instead of reaching it.
    admin.set_api_allowlist(allowlist(&acme, &["127.0.0.3/32"])).await.unwrap();
    let status = list_payments(&mut payments_from(&gate, "127.0.0.2", &key).await).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    checkout_and_pay(&gate, &mut payments, "order-3").await;
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap_err();
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    assert!(ended.message().contains("127.0.0.2"), "{ended:?}");
}

/// A key no one issued.
fn made_up_key(i: usize) -> String {
    format!("pgk_{:032}", i)
}

/// Made-up keys from `ip` until it is refused for its failures (within 10 tries).
async fn fail_until_blocked(gate: &Paygate, ip: &str, tries: &mut usize) {
    for _ in 0..10 {
        *tries += 1;
        let status = list_payments(&mut payments_from(gate, ip, &made_up_key(*tries)).await).await.unwrap_err();
        if status.code() == Code::ResourceExhausted {
            return;
        }
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    panic!("not refused for its failures after 10 made-up keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_keeps_failing_is_refused_before_any_lookup_but_its_verified_keys_work() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (acme, key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(
        &db,
        &[
            ("PAYGATE_ADMIN_TOKEN", ADMIN),
            ("PAYGATE_AUTH_FAILURE_RATE_PER_SECOND", "1"),
            ("PAYGATE_AUTH_FAILURE_BURST", "5"),
        ],
    );
    let mut from_2 = payments_from(&gate, "127.0.0.2", &key).await;
    list_payments(&mut from_2).await.unwrap(); // verified, and now in the cache
    let fresh_key =
        gate.merchants(ADMIN).await.create_api_key(new_key(&acme, "not-yet-used")).await.unwrap().into_inner().api_key;

    // 40 made-up keys from one address: after the burst, refused without a lookup.
    let misses = cache(&gate, "miss").await;
    let started = Instant::now();
    let (mut unauthenticated, mut refused) = (0, 0);
    for i in 0..40 {
        let mut guess = payments_from(&gate, "127.0.0.2", &made_up_key(1_000 + i)).await;
        let status = list_payments(&mut guess).await.unwrap_err();
        match status.code() {
            Code::Unauthenticated => unauthenticated += 1,
            Code::ResourceExhausted => {
                let delay = status.get_details_retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
                assert!(delay > Duration::ZERO && delay <= Duration::from_secs(1), "{delay:?}");
                assert!(status.message().contains("failed authentications"), "{status:?}");
                refused += 1;
            }
            other => panic!("{other:?}: {status:?}"),
        }
    }
    let looked_up = cache(&gate, "miss").await - misses;
    let allowed = 5.0 + started.elapsed().as_secs_f64() + 1.0;
    println!(
        "40 made-up keys: {unauthenticated} looked up and refused, {refused} refused unread ({looked_up} lookups)"
    );
    assert!(looked_up <= allowed && f64::from(unauthenticated) <= allowed, "{looked_up} lookups, bound {allowed:.1}");
    assert!(refused >= 30, "{refused}");

    // While the address is refused: its key already verified works; one that needs a lookup, an
    // admin token guess and a client token guess do not.
    let mut tries = 0;
    fail_until_blocked(&gate, "127.0.0.2", &mut tries).await;
    list_payments(&mut from_2).await.expect("a key verified in the cache still works");
    let status = list_payments(&mut payments_from(&gate, "127.0.0.2", &fresh_key).await).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    fail_until_blocked(&gate, "127.0.0.2", &mut tries).await;
    let mut admin_guess = MerchantServiceClient::with_interceptor(
        gate.grpc_from("127.0.0.2").await,
        Bearer::new("guess-0123456789abcdef"),
    );
    let status = admin_guess.list_api_keys(pb::ListApiKeysRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Another address is not refused for these failures.
    list_payments(&mut payments_from(&gate, "127.0.0.3", &fresh_key).await).await.unwrap();
    let status = list_payments(&mut payments_from(&gate, "127.0.0.3", &made_up_key(7)).await).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}
