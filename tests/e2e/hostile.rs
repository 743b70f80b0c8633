//! Hostile input and hostile neighbours: what a client, a provider or someone with write access
//! to Redis can send must never produce an internal error or change what paygate believes.

use paygate::proto::v1 as pb;
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_forged_in_redis_is_not_believed() {
    let db = TestDb::new(Backend::Postgres).await;
    let redis = RedisServer::start();
    let sim = Simulator::start();
    let (_, key_a) = create_merchant(&db, "Acme");
    let (merchant_b, key_b) = create_merchant(&db, "Mallory");
    let prefix = format!("t{}:", ulid::Ulid::new());
    let redis_url = redis.url();
    let env = [("PAYGATE_REDIS_URL", redis_url.as_str()), ("PAYGATE_REDIS_KEY_PREFIX", prefix.as_str())];
    let a = Paygate::start(&db, &env);
    a.channels(&key_a).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    a.payments(&key_a).await.create_checkout_session(checkout_request("main", "o-1")).await.unwrap();

    // Someone who can write to Redis (but not the database) hands A's channel to B.
    let cache_key = format!("{prefix}channel:main");
    let mut copy: serde_json::Value = serde_json::from_str(&redis.get(&cache_key).await.expect("cached")).unwrap();
    assert!(copy["tag"].is_string(), "the cached copy carries a tag: {copy}");
    copy["merchant_id"] = merchant_b.clone().into();
    copy["version"] = (copy["version"].as_i64().unwrap() + 100).into();
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET").arg(&cache_key).arg(copy.to_string()).query_async(&mut conn).await.unwrap();

    // A replica that starts now reads Redis first, rejects the copy, and asks the database.
    let b = Paygate::start(&db, &env);
    let status = b.payments(&key_b).await.create_checkout_session(checkout_request("main", "o-2")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "B must not use A's channel: {status:?}");
    assert!(status.message().contains("no channel with this key"), "{status:?}");
    b.payments(&key_a).await.create_checkout_session(checkout_request("main", "o-3")).await.unwrap();
    assert!(metric(&b, "paygate_channel_cache_rejected_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_calls_check_the_base_url_on_every_call() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let (_, key) = create_merchant(&db, "Acme");
    // Stored while internal targets were allowed (the harness allows them for the simulator)...
    let gate = Paygate::start(&db, &[]);
    sim.add_project(PROJECT_KEY, SECRET_KEY, &gate.http_url("/pingback/paymentwall/main"), 3).await;
    gate.channels(&key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let methods = pb::ListPaymentMethodsRequest { channel_key: "main".into(), country_code: "US".into() };
    gate.payments(&key).await.list_payment_methods(methods.clone()).await.expect("allowed: the simulator answers");
    drop(gate);

    // ...and called after the rule changed: refused before anything leaves.
    let gate = Paygate::start(&db, &[("PAYGATE_PROVIDER_ALLOW_PRIVATE_TARGETS", "false")]);
    let status = gate.payments(&key).await.list_payment_methods(methods).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("internal address"), "{status:?}");
}

type Webhooks = pb::webhook_service_client::WebhookServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// The status must be INVALID_ARGUMENT whose BadRequest names `field`.
fn assert_names(status: &tonic::Status, field: &str) {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    let violations = status.get_details_bad_request().map(|b| b.field_violations).unwrap_or_default();
    assert!(violations.iter().any(|v| v.field == field), "{field} named in {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_and_oversized_input_are_refused_at_the_edge_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let (_, key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[]);
    let mut channels = gate.channels(&key).await;
    let mut payments = gate.payments(&key).await;
    let mut webhooks: Webhooks =
        pb::webhook_service_client::WebhookServiceClient::with_interceptor(gate.grpc().await, Bearer::new(&key));
    channels.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let payment_id = payments.create_checkout_session(checkout_request("main", "o-1")).await.unwrap().into_inner();
    let payment_id = payment_id.payment_id;
    let rows = |table: &'static str| {
        let db = &db;
        async move { db.count(&format!("SELECT COUNT(*) FROM {table} WHERE '' <> $1"), "x").await }
    };
    let before = (rows("payments").await, rows("channels").await, rows("pingbacks").await);

    // Pingbacks: the path segment and the query, unauthenticated, on the public port.
    let http = http_client();
    let get = |path: String| {
        let http = http.clone();
        let url = gate.http_url(&path);
        async move {
            let answer = http.get(url).send().await.expect("answer");
            (answer.status().as_u16(), answer.text().await.unwrap_or_default())
        }
    };
    let (code, body) = get("/pingback/paymentwall/ma%00in?type=0&ref=r&sig=s".into()).await;
    assert_eq!(code, 400, "NUL in the channel key: {body}");
    assert!(body.contains("channel_key"), "{body}");
    let long_key = "k".repeat(60 * 1024);
    let (code, body) = get(format!("/pingback/paymentwall/{long_key}?type=0&ref=r&sig=s")).await;
    assert_eq!(code, 400, "60 KB channel key: {body}");
    assert!(body.contains("channel_key") && body.len() < 200, "{body}");
    for (field, value) in [("ref", "r\0"), ("goodsid", "pay\0"), ("UNIQUE_REF", "u\u{1}")] {
        let mut params = vec![("type", "0"), ("ref", "r-1"), ("goodsid", payment_id.as_str()), ("uid", "user-40012")];
        params.retain(|(k, _)| *k != field);
        params.push((field, value));
        let query = signed_pingback_query(&params, SECRET_KEY, 3);
        let (code, body) = get(format!("/pingback/paymentwall/main?{query}")).await;
        assert_eq!(code, 400, "control character in {field}: {body}");
        assert!(body.contains(field), "{field}: {body}");
    }
    let logs = gate.process.logs();
    assert!(!logs.iter().any(|l| l.contains(&long_key[..1024])), "the 60 KB key is never logged in full");

    // gRPC: every identifier is checked before it is looked up.
    let mut checkout = checkout_request("ma\0in", "o-2");
    let status = payments.create_checkout_session(checkout.clone()).await.unwrap_err();
    assert_names(&status, "channel_key");
    checkout.channel_key = "main".into();
    checkout.idempotency_key = "k\0".into();
    assert_names(&payments.create_checkout_session(checkout.clone()).await.unwrap_err(), "idempotency_key");
    checkout.idempotency_key.clear();
    checkout.success_url = "https://shop.example/th\tanks".into();
    assert_names(&payments.create_checkout_session(checkout.clone()).await.unwrap_err(), "success_url");
    checkout.success_url = "https://shop.example/ok".into();
    checkout.failure_url = " https://shop.example/failed".into();
    assert_names(&payments.create_checkout_session(checkout.clone()).await.unwrap_err(), "failure_url");

    let get_payment =
        |id: &str| pb::GetPaymentRequest { lookup: Some(pb::get_payment_request::Lookup::PaymentId(id.into())) };
    assert_names(&payments.get_payment(get_payment("pay\0")).await.unwrap_err(), "payment_id");
    let by_uid = pb::GetPaymentRequest { lookup: Some(pb::get_payment_request::Lookup::MerchantUid("o\0".into())) };
    assert_names(&payments.get_payment(by_uid).await.unwrap_err(), "merchant_uid");
    let refund = pb::RefundPaymentRequest {
        payment_id: "pay\0".into(),
        reason: "r".into(),
        amount: Some(pb::Money { amount_minor: 1, currency: "USD".into() }),
        ..Default::default()
    };
    assert_names(&payments.refund_payment(refund).await.unwrap_err(), "payment_id");
    let cancel = pb::CancelSubscriptionRequest { subscription_id: "sub\0".into(), ..Default::default() };
    assert_names(&payments.cancel_subscription(cancel).await.unwrap_err(), "subscription_id");
    let resolve = pb::ResolveCancellationRequest {
        cancellation_id: "can\0".into(),
        resolution: pb::Resolution::Failed as i32,
        ..Default::default()
    };
    assert_names(&payments.resolve_cancellation(resolve).await.unwrap_err(), "cancellation_id");
    let list = pb::ListPaymentsRequest { channel_key: "m\0".into(), ..Default::default() };
    assert_names(&payments.list_payments(list).await.unwrap_err(), "channel_key");
    // "AA" is a well-formed token that decodes to a NUL byte.
    let list = pb::ListPaymentsRequest { page_token: "AA".into(), ..Default::default() };
    assert_names(&payments.list_payments(list).await.unwrap_err(), "page_token");
    let list = pb::ListPaymentsRequest { statuses: vec![1; 1000], ..Default::default() };
    assert_names(&payments.list_payments(list).await.unwrap_err(), "statuses");
    let events = pb::ListPaymentEventsRequest { payment_id: "p\0".into(), ..Default::default() };
    assert_names(&payments.list_payment_events(events).await.unwrap_err(), "payment_id");
    let methods = pb::ListPaymentMethodsRequest { channel_key: "m\0".into(), country_code: "US".into() };
    assert_names(&payments.list_payment_methods(methods).await.unwrap_err(), "channel_key");
    let watch = pb::WatchPaymentsRequest { payment_ids: vec!["p\0".into()], ..Default::default() };
    assert_names(&payments.watch_payments(watch).await.unwrap_err(), "payment_ids[0]");
    let watch = pb::WatchPaymentsRequest { merchant_uids: vec!["o\u{7f}".into()], ..Default::default() };
    assert_names(&payments.watch_payments(watch).await.unwrap_err(), "merchant_uids[0]");

    assert_names(
        &channels.get_channel(pb::GetChannelRequest { channel_key: "m\0".into() }).await.unwrap_err(),
        "channel_key",
    );
    assert_names(
        &channels.delete_channel(pb::DeleteChannelRequest { channel_key: "m\0".into() }).await.unwrap_err(),
        "channel_key",
    );
    let list = pb::ListChannelsRequest { sub_merchant_id: "m\0".into(), ..Default::default() };
    assert_names(&channels.list_channels(list).await.unwrap_err(), "sub_merchant_id");
    let list = pb::ListChannelsRequest { page_token: "AA".into(), ..Default::default() };
    assert_names(&channels.list_channels(list).await.unwrap_err(), "page_token");
    let mut bad = channel_request(&sim, "second", pb::ChannelMode::Test);
    bad.paymentwall.as_mut().unwrap().api_base_url = format!("{}/a\nb", sim.base_url());
    assert_names(&channels.create_channel(bad).await.unwrap_err(), "paymentwall.api_base_url");
    let mut bad = channel_request(&sim, "second", pb::ChannelMode::Test);
    bad.paymentwall.as_mut().unwrap().pingback_allowlist = vec!["127.0.0.1/32".into(); 1000];
    assert_names(&channels.create_channel(bad).await.unwrap_err(), "paymentwall.pingback_allowlist");

    let set = |url: &str, types: Vec<String>| pb::SetWebhookEndpointRequest { url: url.into(), event_types: types };
    assert_names(&webhooks.set_webhook_endpoint(set("https://hooks.example/a b", vec![])).await.unwrap_err(), "url");
    let many = vec!["payment.paid".to_owned(); 1000];
    assert_names(&webhooks.set_webhook_endpoint(set("https://hooks.example/", many)).await.unwrap_err(), "event_types");
    let redeliver = pb::RedeliverWebhookRequest { delivery_id: "d\0".into() };
    assert_names(&webhooks.redeliver_webhook(redeliver).await.unwrap_err(), "delivery_id");

    assert_eq!((rows("payments").await, rows("channels").await, rows("pingbacks").await), before, "nothing stored");
    assert_eq!(db.count("SELECT COUNT(*) FROM webhook_endpoints WHERE '' <> $1", "x").await, 0);
}
