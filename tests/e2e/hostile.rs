//! Hostile input and hostile neighbours: what a client, a provider or someone with write access
//! to Redis can send must never produce an internal error or change what paygate believes.

use paygate::proto::v1 as pb;
use std::time::Duration;

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

    // A genuine copy of B's own channel, filed under A's channel key, is not believed either.
    b.channels(&key_b).await.create_channel(channel_request(&sim, "mallory", pb::ChannelMode::Test)).await.unwrap();
    b.payments(&key_b).await.create_checkout_session(checkout_request("mallory", "m-1")).await.unwrap();
    let genuine = redis.get(&format!("{prefix}channel:mallory")).await.expect("cached");
    let _: () = redis::cmd("SET").arg(&cache_key).arg(&genuine).query_async(&mut conn).await.unwrap();
    let c = Paygate::start(&db, &env);
    let status = c.payments(&key_b).await.create_checkout_session(checkout_request("main", "o-4")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "B must not use A's channel: {status:?}");
    c.payments(&key_a).await.create_checkout_session(checkout_request("main", "o-5")).await.unwrap();
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

/// Sends bytes as they are, as a broken or hostile client would.
#[derive(Default)]
struct RawCodec;

struct RawBytes;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = prost::bytes::Buf::copy_to_bytes(buf, prost::bytes::Buf::remaining(buf));
        Ok(Some(bytes.to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_invalid_argument() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (_, key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[]);
    let cases: [(&str, Vec<u8>); 5] = [
        ("bad UTF-8 in a string", vec![0x0a, 0x02, 0xff, 0xfe]),
        ("a field longer than the message", vec![0x0a, 0x10, b'a']),
        ("an invalid wire type", vec![0x0f, 0x01]),
        ("a length that overflows", vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ("a truncated varint", vec![0x10, 0xff]),
    ];
    for (what, bytes) in cases {
        let mut grpc = tonic::client::Grpc::new(gate.grpc().await);
        grpc.ready().await.unwrap();
        let mut request = tonic::Request::new(bytes);
        request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
        let path = http::uri::PathAndQuery::from_static("/paygate.v1.PaymentService/GetPayment");
        let status = grpc.unary(request, path, RawCodec).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains("GetPaymentRequest"), "{what}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingbacks_for_made_up_channels_cost_no_database_read_each_and_a_new_channel_is_seen_at_once() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let (_, key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[("PAYGATE_PINGBACK_REFUSAL_RATE_PER_SECOND", "0")]);
    let http = http_client();
    for _ in 0..30 {
        let answer = http.get(gate.http_url("/pingback/paymentwall/ghost?type=0")).send().await.unwrap();
        assert_eq!(answer.status(), 404);
    }
    let remembered = metric_series(&gate, "paygate_channel_cache_requests_total", &[("result", "unknown")]).await;
    assert!(remembered >= 29.0, "only the first lookup reads the database: {remembered}");

    // Created now: known at once, not after the unknown entry expires.
    gate.channels(&key).await.create_channel(channel_request(&sim, "ghost", pb::ChannelMode::Test)).await.unwrap();
    let answer = http.get(gate.http_url("/pingback/paymentwall/ghost?type=0")).send().await.unwrap();
    assert_ne!(answer.status(), 404, "the new channel is found");
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

/// Every table a rejected request could have written to, counted together.
async fn stored_rows(pool: &sqlx::AnyPool) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "payments",
        "channels",
        "pingbacks",
        "cancellations",
        "idempotency_keys",
        "webhook_endpoints",
        "payment_events",
        "audit_events",
    ] {
        let row = sqlx::query(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(pool).await.expect("count");
        counts.push(sqlx::Row::try_get::<i64, _>(&row, 0).expect("integer"));
    }
    counts
}

/// One hostile request: where the arbitrary text goes.
#[derive(Debug, Clone)]
enum Hostile {
    /// Raw bytes as the pingback path segment (percent-encoded) and as the raw query.
    PingbackBytes {
        segment: Vec<u8>,
        query: Vec<u8>,
    },
    /// A correctly signed pingback on a real channel whose parameter `field` is arbitrary.
    SignedPingback {
        field: usize,
        value: String,
    },
    Checkout {
        field: usize,
        value: String,
    },
    Refund {
        field: usize,
        value: String,
    },
    Channel {
        field: usize,
        value: String,
    },
    Webhook {
        field: usize,
        value: String,
    },
}

fn hostile_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        any::<String>(),
        "[a-z0-9_\\-]{0,80}",
        ".{0,6}[\\x00-\\x1f\\x7f\\u{85}\\u{2028}].{0,6}",
        "https?://[a-z.]{1,12}(:[0-9]{1,5})?/[ -~]{0,20}",
        "[ -~]{0,300}",
        proptest::collection::vec(any::<char>(), 1000..3000).prop_map(|c| c.into_iter().collect()),
    ]
}

fn hostile() -> impl proptest::strategy::Strategy<Value = Hostile> {
    use proptest::prelude::*;
    let bytes = |max| proptest::collection::vec(any::<u8>(), 0..max);
    prop_oneof![
        (bytes(100), bytes(300)).prop_map(|(segment, query)| Hostile::PingbackBytes { segment, query }),
        (0..5usize, hostile_text()).prop_map(|(field, value)| Hostile::SignedPingback { field, value }),
        (0..11usize, hostile_text()).prop_map(|(field, value)| Hostile::Checkout { field, value }),
        (0..3usize, hostile_text()).prop_map(|(field, value)| Hostile::Refund { field, value }),
        (0..6usize, hostile_text()).prop_map(|(field, value)| Hostile::Channel { field, value }),
        (0..2usize, hostile_text()).prop_map(|(field, value)| Hostile::Webhook { field, value }),
    ]
}

/// `GET` over a plain socket, so any byte reaches the server as sent; the answer's status code.
async fn raw_get(addr: std::net::SocketAddr, target: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: paygate\r\nConnection: close\r\n\r\n");
    stream.write_all(&request).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let line = String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned();
    line.get(9..12).and_then(|code| code.parse().ok()).unwrap_or(0)
}

struct Target<'a> {
    gate: &'a Paygate,
    sim: &'a Simulator,
    payments: Payments,
    channels: Channels,
    webhooks: Webhooks,
    /// Stays unpaid: refunds of it are refused before anything is stored.
    payment_id: String,
    /// Signed pingbacks go to this one (they may pay it).
    pingback_payment_id: String,
}

/// Sends one hostile request. `Ok(accepted)`: it was answered without a server fault.
async fn send(t: &Target<'_>, case: Hostile) -> Result<bool, String> {
    let grpc = |result: Result<(), tonic::Status>| match result {
        Ok(()) => Ok(true),
        Err(s) if matches!(s.code(), Code::Internal | Code::Unknown | Code::Unavailable | Code::DataLoss) => {
            Err(format!("server fault: {s:?}"))
        }
        Err(_) => Ok(false),
    };
    let http = |code: u16| match code {
        // 422: a correctly signed pingback for a payment paygate does not know. It passed every
        // check, and is kept (as unmatched) for an operator to look at, by design.
        200 | 422 => Ok(true),
        400..=499 => Ok(false),
        // 0: the server closed the connection without an answer; hyper may do that for garbage.
        0 => Ok(false),
        other => Err(format!("HTTP {other}")),
    };
    match case {
        Hostile::PingbackBytes { segment, query } => {
            let mut target = b"/pingback/paymentwall/".to_vec();
            for b in &segment {
                target.extend_from_slice(format!("%{b:02X}").as_bytes());
            }
            target.push(b'?');
            // As sent: most of it is not even a valid request line, which must still not be a 5xx.
            target.extend(query.iter().filter(|b| !matches!(b, b' ' | b'\r' | b'\n')));
            http(raw_get(t.gate.http_addr, &target).await)
        }
        Hostile::SignedPingback { field, value } => {
            let mut params =
                vec![("type", "0".to_owned()), ("ref", "r-1".to_owned()), ("goodsid", t.pingback_payment_id.clone())];
            let name = ["ref", "goodsid", "uid", "UNIQUE_REF", "type"][field];
            params.retain(|(k, _)| *k != name);
            params.push((name, value));
            let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let query = signed_pingback_query(&pairs, SECRET_KEY, 3);
            http(raw_get(t.gate.http_addr, format!("/pingback/paymentwall/main?{query}").as_bytes()).await)
        }
        Hostile::Checkout { field, value } => {
            let mut r = checkout_request("main", "o-prop");
            let customer = r.customer.as_mut().unwrap();
            match field {
                0 => r.channel_key = value,
                1 => r.merchant_uid = value,
                2 => r.order_name = value,
                3 => customer.uid = value,
                4 => customer.email = value,
                5 => r.success_url = value,
                6 => r.failure_url = value,
                7 => r.idempotency_key = value,
                8 => r.language = value,
                9 => {
                    r.custom_params.insert(value, "v".into());
                }
                _ => {
                    r.custom_params.insert("note".into(), value);
                }
            }
            grpc(t.payments.clone().create_checkout_session(r).await.map(drop))
        }
        Hostile::Refund { field, value } => {
            let mut r = pb::RefundPaymentRequest {
                payment_id: t.payment_id.clone(),
                reason: "customer asked".into(),
                ..Default::default()
            };
            match field {
                0 => r.payment_id = value,
                1 => r.reason = value,
                _ => r.idempotency_key = value,
            }
            // The payment is unpaid: even a well-formed refund is refused (FAILED_PRECONDITION).
            grpc(t.payments.clone().refund_payment(r).await.map(drop))
        }
        Hostile::Channel { field, value } => {
            let mut r = channel_request(t.sim, "", pb::ChannelMode::Test);
            let pw = r.paymentwall.as_mut().unwrap();
            match field {
                0 => r.channel_key = value,
                1 => r.name = value,
                2 => pw.pingback_allowlist = vec![value],
                3 => pw.api_base_url = value,
                4 => pw.project_key = value,
                _ => r.sub_merchant_id = value,
            }
            grpc(t.channels.clone().create_channel(r).await.map(drop))
        }
        Hostile::Webhook { field, value } => {
            let mut r = pb::SetWebhookEndpointRequest { url: "https://hooks.example/in".into(), event_types: vec![] };
            match field {
                0 => r.url = value,
                _ => r.event_types = vec![value],
            }
            grpc(t.webhooks.clone().set_webhook_endpoint(r).await.map(drop))
        }
    }
}

/// Issue 11 acceptance: arbitrary bytes and strings, over real sockets on PostgreSQL, never get a
/// server fault, and a refused request stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_input_never_gets_a_server_fault_postgres() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let (_, key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[("PAYGATE_PROVIDER_ALLOW_PRIVATE_TARGETS", "true")]);
    let mut channels = gate.channels(&key).await;
    let mut payments = gate.payments(&key).await;
    channels.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let payment_id = payments.create_checkout_session(checkout_request("main", "o-1")).await.unwrap().into_inner();
    let paid = payments.create_checkout_session(checkout_request("main", "o-2")).await.unwrap().into_inner();
    let webhooks =
        pb::webhook_service_client::WebhookServiceClient::with_interceptor(gate.grpc().await, Bearer::new(&key));
    let target = Target {
        gate: &gate,
        sim: &sim,
        payments,
        channels,
        webhooks,
        payment_id: payment_id.payment_id,
        pingback_payment_id: paid.payment_id,
    };
    let pool = db.pool().await;
    let handle = tokio::runtime::Handle::current();
    // Bounded for the suite; PROPTEST_CASES=1000 for a longer hunt.
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64);
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&hostile(), |case| {
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let before = stored_rows(&pool).await;
                let accepted = send(&target, case.clone()).await.map_err(TestCaseError::fail)?;
                let after = stored_rows(&pool).await;
                if !accepted && before != after {
                    return Err(TestCaseError::fail(format!("refused, yet stored: {before:?} -> {after:?}")));
                }
                Ok(())
            })
        })
    });
    pool.close().await;
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(gate.process.logs().iter().all(|l| l.len() < 4096), "no log line carries a huge input");
}

/// Defense in depth: should a value the edge checks missed reach PostgreSQL and be refused there
/// (SQLSTATE class 22, e.g. 22021 for a NUL byte), the caller gets INVALID_ARGUMENT / 400, not an
/// internal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_postgres_refuses_is_the_callers_problem() {
    use axum::response::IntoResponse;
    use paygate::{
        ingest::PingbackError,
        store::{Db, PoolSettings, StoreError},
    };
    let test_db = TestDb::new(Backend::Postgres).await;
    let settings = PoolSettings { max_connections: 2, acquire_timeout: Duration::from_secs(10) };
    let db = Db::connect(&test_db.url, &settings).await.expect("connect");
    let refused = |sql: &'static str, value: &'static str| {
        let pool = db.pool().clone();
        async move { StoreError::from(sqlx::query(sql).bind(value).execute(&pool).await.unwrap_err()) }
    };
    for err in [refused("SELECT $1::text", "a\0b").await, refused("SELECT $1::int", "not a number").await] {
        assert!(matches!(err, StoreError::InvalidValue(_)), "{err:?}");
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let answer = PingbackError::Store(refused("SELECT $1::text", "a\0b").await).into_response();
    assert_eq!(answer.status(), 400);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_are_never_quoted_and_out_of_range_times_are_refused_postgres() {
    hostile_values_are_never_quoted_and_out_of_range_times_are_refused(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_are_never_quoted_and_out_of_range_times_are_refused_sqlite() {
    hostile_values_are_never_quoted_and_out_of_range_times_are_refused(Backend::Sqlite).await;
}

/// INVALID_ARGUMENT naming `field`, whose whole answer (message and details) is small and quotes
/// nothing of `hostile`.
fn assert_refused_briefly(status: &tonic::Status, field: &str, hostile: &str) {
    assert_names(status, field);
    let answer = [status.message().as_bytes(), status.details()].concat();
    assert!(answer.len() < 1024, "{field}: a {} byte answer: {:.300}", answer.len(), status.message());
    let piece = &hostile.as_bytes()[..32];
    assert!(
        !answer.windows(piece.len()).any(|w| w == piece),
        "{field}: the value is quoted: {:.300}",
        status.message()
    );
}

/// Four answers docs/limits.md rules out: a 100,000-character provider name or allowlist entry quoted
/// back, an expiry outside google.protobuf.Timestamp's range stored, and an update with both the
/// typed and the generic credentials read as the generic one.
async fn hostile_values_are_never_quoted_and_out_of_range_times_are_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sim = Simulator::start();
    let (merchant, key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[]);
    let mut channels = gate.channels(&key).await;
    let mut payments = gate.payments(&key).await;
    let mut merchants = gate.merchants(&key).await;
    channels.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let pool = db.pool().await;
    let snapshot = || {
        let pool = &pool;
        let merchant = merchant.clone();
        async move {
            let mut rows = stored_rows(pool).await;
            let keys = sqlx::query("SELECT COUNT(*) FROM api_keys").fetch_one(pool).await.unwrap();
            rows.push(sqlx::Row::try_get::<i64, _>(&keys, 0).unwrap());
            let channel =
                sqlx::query("SELECT version FROM channels WHERE channel_key = 'main'").fetch_one(pool).await.unwrap();
            rows.push(sqlx::Row::try_get::<i64, _>(&channel, 0).unwrap());
            let list = sqlx::query("SELECT api_allowlist FROM merchants WHERE merchant_id = $1")
                .bind(merchant)
                .fetch_one(pool)
                .await
                .unwrap();
            (rows, sqlx::Row::try_get::<Option<String>, _>(&list, 0).unwrap())
        }
    };
    let before = snapshot().await;
    let hostile = "A".repeat(100_000);

    // CreateChannel: a 100,000-character provider name.
    let credentials =
        pb::ProviderCredentials { provider: hostile.clone(), settings_json: "{}".into(), secrets: Default::default() };
    let create = pb::CreateChannelRequest {
        channel_key: "second".into(),
        name: "second".into(),
        credentials: Some(credentials),
        ..Default::default()
    };
    let status = channels.create_channel(create).await.unwrap_err();
    assert_refused_briefly(&status, "credentials.provider", &hostile);

    // SetApiAllowlist: a 100,000-character entry.
    let set = pb::SetApiAllowlistRequest { merchant_id: String::new(), cidr_blocks: vec![hostile.clone()] };
    let status = merchants.set_api_allowlist(set).await.unwrap_err();
    assert_refused_briefly(&status, "cidr_blocks[0]", &hostile);

    // Every Timestamp a request takes stays within Timestamp's range (0001-01-01 to 9999-12-31).
    let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    for seconds in [i64::MAX, 253_402_300_800] {
        let create = pb::CreateApiKeyRequest { name: "far".into(), expires_at: at(seconds), ..Default::default() };
        let status = merchants.create_api_key(create).await.unwrap_err();
        assert_refused_briefly(&status, "expires_at", &hostile);
        assert!(status.message().contains("9999-12-31"), "{status:?}");
    }
    let audit = pb::ListAuditEventsRequest { start_time: at(i64::MIN), end_time: at(i64::MAX), ..Default::default() };
    let status = merchants.list_audit_events(audit).await.unwrap_err();
    assert_names(&status, "start_time");
    assert_names(&status, "end_time");
    let list = pb::ListPaymentsRequest { created_from: at(-62_135_596_801), ..Default::default() };
    assert_names(&payments.list_payments(list).await.unwrap_err(), "created_from");
    let list = pb::ListSubscriptionsRequest { created_to: at(i64::MAX), ..Default::default() };
    assert_names(&payments.list_subscriptions(list).await.unwrap_err(), "created_to");
    // The bounds themselves are fine.
    let list = pb::ListPaymentsRequest {
        created_from: at(-62_135_596_800),
        created_to: at(253_402_300_799),
        ..Default::default()
    };
    payments.list_payments(list).await.unwrap();

    // UpdateChannel with both the typed paymentwall update and credentials.
    let both = pb::ChannelUpdate {
        paymentwall: Some(pb::PaymentwallCredentials {
            project_key: "pk-new".into(),
            secret_key: "sk-new".into(),
            ..Default::default()
        }),
        credentials: Some(pb::ProviderCredentials { provider: "paymentwall".into(), ..Default::default() }),
        ..Default::default()
    };
    let update = pb::UpdateChannelRequest {
        channel_key: "main".into(),
        channel: Some(both),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["paymentwall.project_key".into(), "paymentwall.secret_key".into()],
        }),
    };
    let status = channels.update_channel(update).await.unwrap_err();
    assert_refused_briefly(&status, "credentials", &hostile);
    use tonic_types::StatusExt;
    let named: Vec<String> =
        status.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| v.field).collect();
    assert_eq!(named, ["credentials"], "only the conflict, not the fields that were given: {status:?}");

    assert_eq!(snapshot().await, before, "nothing stored or changed");
    pool.close().await;
}
