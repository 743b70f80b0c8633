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
