//! Payment client tokens and gRPC-Web: a token made for one payment reads that payment and
//! watches it, over gRPC and over gRPC-Web (HTTP/1.1, as a browser sends it), and nothing else;
//! it expires and dies with its key. CORS admits only configured origins.

use std::time::Duration;

use paygate::proto::v1::{self as pb, PaymentStatus};
use prost::Message;
use tonic::Code;

use crate::support::*;

async fn token_for(payments: &mut Payments, payment_id: &str, ttl_seconds: u32) -> String {
    let request = pb::CreatePaymentClientTokenRequest { payment_id: payment_id.into(), ttl_seconds };
    let token = payments.create_payment_client_token(request).await.unwrap().into_inner();
    assert_eq!(token.payment_id, payment_id);
    assert!(token.token.starts_with("pct_"), "{}", token.token);
    token.token
}

fn by_id(payment_id: &str) -> pb::GetPaymentRequest {
    pb::GetPaymentRequest { lookup: Some(pb::get_payment_request::Lookup::PaymentId(payment_id.into())) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_reads_and_watches_its_payment_and_nothing_else() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let (_, other_key) = create_merchant(&db, "Other");
    let gate = Paygate::start(&db, &[]);
    gate.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let mut payments = gate.payments(&api_key).await;
    let mine = payments.create_checkout_session(checkout_request("main", "order-a")).await.unwrap().into_inner();
    let another = payments.create_checkout_session(checkout_request("main", "order-b")).await.unwrap().into_inner();
    let token = token_for(&mut payments, &mine.payment_id, 0).await;

    // Another merchant cannot make one for this payment.
    let mut foreign = gate.payments(&other_key).await;
    let request = pb::CreatePaymentClientTokenRequest { payment_id: mine.payment_id.clone(), ttl_seconds: 0 };
    assert_eq!(foreign.create_payment_client_token(request).await.unwrap_err().code(), Code::NotFound);

    let mut with_token = gate.payments(&token).await;
    let read = with_token.get_payment(by_id(&mine.payment_id)).await.unwrap().into_inner();
    assert_eq!((read.payment_id.as_str(), read.status()), (mine.payment_id.as_str(), PaymentStatus::Ready));
    let denied = |status: tonic::Status| {
        assert!(matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated), "{status:?}");
    };
    denied(with_token.get_payment(by_id(&another.payment_id)).await.unwrap_err());
    let by_uid = pb::GetPaymentRequest { lookup: Some(pb::get_payment_request::Lookup::MerchantUid("order-b".into())) };
    denied(with_token.get_payment(by_uid).await.unwrap_err());
    denied(with_token.list_payments(pb::ListPaymentsRequest::default()).await.unwrap_err());
    denied(with_token.create_checkout_session(checkout_request("main", "order-c")).await.unwrap_err());
    let refund = pb::RefundPaymentRequest { payment_id: mine.payment_id.clone(), ..Default::default() };
    denied(with_token.refund_payment(refund).await.unwrap_err());
    let again = pb::CreatePaymentClientTokenRequest { payment_id: mine.payment_id.clone(), ttl_seconds: 0 };
    denied(with_token.create_payment_client_token(again).await.unwrap_err());
    denied(gate.channels(&token).await.list_channels(pb::ListChannelsRequest::default()).await.unwrap_err());
    for filter in [
        pb::WatchPaymentsRequest::default(),
        pb::WatchPaymentsRequest { payment_ids: vec![another.payment_id.clone()], ..Default::default() },
        pb::WatchPaymentsRequest {
            payment_ids: vec![mine.payment_id.clone()],
            merchant_uids: vec!["order-b".into()],
            ..Default::default()
        },
    ] {
        denied(with_token.watch_payments(filter).await.unwrap_err());
    }

    // Watching its payment: its state now, then PAID when the pingback lands.
    let watch = pb::WatchPaymentsRequest { payment_ids: vec![mine.payment_id.clone()], ..Default::default() };
    let mut stream = with_token.watch_payments(watch).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.payment.unwrap().status(), PaymentStatus::Ready);
    let pingback = Pingback::new(&mine.payment_id).uid("user-40012").reference("b777").test();
    assert_eq!(pingback.send(&gate, "main").await, "OK");
    let paid = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(paid.payment.unwrap().status(), PaymentStatus::Paid);

    // Tampered: refused.
    let tampered = format!("{}x", token);
    let status = gate.payments(&tampered).await.get_payment(by_id(&mine.payment_id)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_expires_and_its_open_stream_ends() {
    let Shop { db: _db, sim: _sim, api_key, gate, .. } = Shop::open(Backend::Sqlite, &[]).await;
    let mut payments = gate.payments(&api_key).await;
    let session = payments.create_checkout_session(checkout_request("main", "order-a")).await.unwrap().into_inner();

    // An open, idle stream ends when its token expires.
    let watching = token_for(&mut payments, &session.payment_id, 2).await;
    let watch = pb::WatchPaymentsRequest { payment_ids: vec![session.payment_id.clone()], ..Default::default() };
    let mut stream = gate.payments(&watching).await.watch_payments(watch).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some(), "the payment's state first");
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("ends at expiry");
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{}", status.message());

    let short = token_for(&mut payments, &session.payment_id, 1).await;
    gate.payments(&short).await.get_payment(by_id(&session.payment_id)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let status = gate.payments(&short).await.get_payment(by_id(&session.payment_id)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_dies_with_the_key_that_made_it() {
    let Shop { db: _db, sim: _sim, merchant_id, api_key, gate } = Shop::open(Backend::Sqlite, &[]).await;
    let mut payments = gate.payments(&api_key).await;
    let session = payments.create_checkout_session(checkout_request("main", "order-a")).await.unwrap().into_inner();

    // A second key makes a token; revoking that key kills the token.
    let mut merchants = gate.merchants(&api_key).await;
    let key = merchants
        .create_api_key(pb::CreateApiKeyRequest { merchant_id, name: "checkout page".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let token = token_for(&mut gate.payments(&key.api_key).await, &session.payment_id, 0).await;
    gate.payments(&token).await.get_payment(by_id(&session.payment_id)).await.unwrap();
    let key_id = key.key.unwrap().key_id;
    merchants.revoke_api_key(pb::RevokeApiKeyRequest { key_id: key_id.clone() }).await.unwrap();
    let status = gate.payments(&token).await.get_payment(by_id(&session.payment_id)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("revoked"), "{}", status.message());
}

/// A gRPC-Web call as a browser makes it: HTTP/1.1 POST, `application/grpc-web+proto`, one
/// length-prefixed message; the answer's frames are data (0x00) then trailers (0x80).
async fn grpc_web(
    gate: &Paygate,
    path: &str,
    token: &str,
    message: &impl Message,
    origin: Option<&str>,
) -> reqwest::Response {
    let body = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend((body.len() as u32).to_be_bytes());
    framed.extend(body);
    let client = reqwest::Client::builder().http1_only().build().unwrap();
    let mut request = client
        .post(format!("http://{}{path}", gate.grpc_addr))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {token}"))
        .body(framed);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request.send().await.unwrap()
}

/// The frames of a gRPC-Web body: (flag, payload).
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

async fn preflight(gate: &Paygate, origin: &str) -> Option<String> {
    let client = reqwest::Client::builder().http1_only().build().unwrap();
    let answer = client
        .request(reqwest::Method::OPTIONS, format!("http://{}/paygate.v1.PaymentService/GetPayment", gate.grpc_addr))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type,x-grpc-web")
        .send()
        .await
        .unwrap();
    answer.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_reads_its_payment_over_grpc_web_and_cors_admits_only_configured_origins() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[("PAYGATE_GRPC_WEB_ALLOWED_ORIGINS", "https://shop.example")]);
    gate.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let mut payments = gate.payments(&api_key).await;
    let session = payments.create_checkout_session(checkout_request("main", "order-a")).await.unwrap().into_inner();
    let token = token_for(&mut payments, &session.payment_id, 0).await;

    let answer = grpc_web(
        &gate,
        "/paygate.v1.PaymentService/GetPayment",
        &token,
        &by_id(&session.payment_id),
        Some("https://shop.example"),
    )
    .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers().get("access-control-allow-origin").unwrap(), "https://shop.example");
    let body = answer.bytes().await.unwrap();
    let answered = frames(&body);
    let payment = pb::Payment::decode(answered[0].1.as_slice()).expect("a Payment in the data frame");
    assert_eq!((answered[0].0, payment.payment_id.as_str()), (0, session.payment_id.as_str()));
    let trailers = String::from_utf8_lossy(&answered.last().unwrap().1).to_lowercase();
    assert!(answered.last().unwrap().0 & 0x80 != 0 && trailers.contains("grpc-status:0"), "{trailers}");

    // A server stream over gRPC-Web: the payment's state arrives as the first frame.
    let watch = pb::WatchPaymentsRequest { payment_ids: vec![session.payment_id.clone()], ..Default::default() };
    let mut streamed = grpc_web(&gate, "/paygate.v1.PaymentService/WatchPayments", &token, &watch, None).await;
    let mut buffered = Vec::new();
    while frames(&buffered).is_empty() {
        let chunk = tokio::time::timeout(Duration::from_secs(10), streamed.chunk()).await.unwrap().unwrap().unwrap();
        buffered.extend_from_slice(&chunk);
    }
    let event = pb::PaymentEvent::decode(frames(&buffered)[0].1.as_slice()).unwrap();
    assert_eq!(event.payment.unwrap().payment_id, session.payment_id);

    // Denied over gRPC-Web too: another call with the token.
    let list =
        grpc_web(&gate, "/paygate.v1.PaymentService/ListPayments", &token, &pb::ListPaymentsRequest::default(), None)
            .await;
    let status = list.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(status.as_deref(), Some((Code::PermissionDenied as i32).to_string().as_str()));

    assert_eq!(preflight(&gate, "https://shop.example").await.as_deref(), Some("https://shop.example"));
    assert_eq!(preflight(&gate, "https://evil.example").await, None, "an origin not configured");
    let unconfigured = Paygate::start(&db, &[]);
    assert_eq!(preflight(&unconfigured, "https://shop.example").await, None, "no origins configured: none admitted");
}

/// A leaked token cannot crowd out the merchant's own watchers: a payment's client-token streams
/// are capped on their own, and the merchant's quota is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_tokens_streams_are_capped_per_payment_apart_from_the_merchants() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[("PAYGATE_MAX_STREAMS_PER_MERCHANT", "5")]);
    gate.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let mut payments = gate.payments(&api_key).await;
    let session = payments.create_checkout_session(checkout_request("main", "order-a")).await.unwrap().into_inner();
    let token = token_for(&mut payments, &session.payment_id, 0).await;
    let watch = pb::WatchPaymentsRequest { payment_ids: vec![session.payment_id.clone()], ..Default::default() };
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(gate.payments(&token).await.watch_payments(watch.clone()).await.unwrap().into_inner());
    }
    let status = gate.payments(&token).await.watch_payments(watch.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // The merchant's own five streams still open.
    for _ in 0..5 {
        open.push(payments.watch_payments(pb::WatchPaymentsRequest::default()).await.unwrap().into_inner());
    }
}

/// Configured origins are read as browsers write them: `https://Shop.Example:443/` is the origin
/// a browser sends as `https://shop.example`, so its preflight is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_origins_are_normalised_so_a_browsers_origin_matches() {
    let db = TestDb::new(Backend::Sqlite).await;
    let origins = "HTTPS://Shop.Example:443/, http://Admin.Example:8080";
    let gate = Paygate::start(&db, &[("PAYGATE_GRPC_WEB_ALLOWED_ORIGINS", origins)]);
    assert_eq!(preflight(&gate, "https://shop.example").await.as_deref(), Some("https://shop.example"));
    assert_eq!(preflight(&gate, "http://admin.example:8080").await.as_deref(), Some("http://admin.example:8080"));
    assert_eq!(preflight(&gate, "http://shop.example").await, None, "another scheme is another origin");
    assert_eq!(preflight(&gate, "https://admin.example:8080").await, None);
}

/// What a payment's answer to a browser may hold: no buyer, nothing of the merchant's own.
fn assert_browser_view(payment: &pb::Payment, payment_id: &str) {
    assert_eq!(payment.payment_id, payment_id);
    assert_eq!(payment.order_name, "Gold Membership");
    assert_eq!(payment.amount, Some(pb::Money { amount_minor: 999, currency: "USD".into() }));
    assert!(payment.created_at.is_some() && payment.updated_at.is_some());
    let merchant_side = (
        &payment.customer,
        &payment.custom_params,
        payment.channel_key.as_str(),
        payment.merchant_uid.as_str(),
        payment.provider_ref.as_str(),
        payment.payment_method.as_str(),
        &payment.refundable_amount,
        &payment.cancelled_amount,
    );
    assert_eq!(merchant_side, (&None, &Default::default(), "", "", "", "", &None, &None), "{payment:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_sees_the_browser_view_of_its_payment() {
    let Shop { db: _db, sim: _sim, merchant_id: _, api_key, gate } = Shop::open(Backend::Sqlite, &[]).await;
    let mut payments = gate.payments(&api_key).await;
    let mut request = checkout_request("main", "order-a");
    request.custom_params.insert("internal_note".into(), "vip-margin-12".into());
    let session = payments.create_checkout_session(request).await.unwrap().into_inner();
    // The merchant's key sees it all.
    let full = get_payment(&mut payments, &session.payment_id).await;
    assert_eq!(full.customer.as_ref().unwrap().email, "buyer@example.com");
    assert_eq!(full.custom_params["internal_note"], "vip-margin-12");

    let token = token_for(&mut payments, &session.payment_id, 0).await;
    let mut browser = gate.payments(&token).await;
    let read = browser.get_payment(by_id(&session.payment_id)).await.unwrap().into_inner();
    assert_eq!(read.status(), PaymentStatus::Ready);
    assert_browser_view(&read, &session.payment_id);

    // The stream too: its snapshot and its events.
    let watch = pb::WatchPaymentsRequest { payment_ids: vec![session.payment_id.clone()], ..Default::default() };
    let mut stream = browser.watch_payments(watch).await.unwrap().into_inner();
    let snapshot = stream.message().await.unwrap().unwrap();
    assert_browser_view(snapshot.payment.as_ref().unwrap(), &session.payment_id);
    let pingback = Pingback::new(&session.payment_id).uid("user-40012").reference("b778").test();
    assert_eq!(pingback.send(&gate, "main").await, "OK");
    let paid = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    let payment = paid.payment.unwrap();
    assert_eq!(payment.status(), PaymentStatus::Paid);
    assert!(payment.paid_at.is_some());
    assert_browser_view(&payment, &session.payment_id);
    let read = browser.get_payment(by_id(&session.payment_id)).await.unwrap().into_inner();
    assert_browser_view(&read, &session.payment_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuing_a_client_token_is_audited_without_the_token() {
    let Shop { db: _db, sim: _sim, merchant_id, api_key, gate } = Shop::open(Backend::Sqlite, &[]).await;
    let mut payments = gate.payments(&api_key).await;
    let session = payments.create_checkout_session(checkout_request("main", "order-a")).await.unwrap().into_inner();
    let token = token_for(&mut payments, &session.payment_id, 60).await;

    let mut merchants = gate.merchants(&api_key).await;
    let keys =
        merchants.list_api_keys(pb::ListApiKeysRequest { merchant_id: merchant_id.clone(), ..Default::default() });
    let key_id = keys.await.unwrap().into_inner().keys.remove(0).key_id;
    let issued = pb::ListAuditEventsRequest { action: "payment_client_token.issued".into(), ..Default::default() };
    let entries = merchants.list_audit_events(issued).await.unwrap().into_inner().events;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(
        (entry.actor.as_str(), entry.target.as_str(), entry.merchant_id.as_str(), entry.address.as_str()),
        (key_id.as_str(), session.payment_id.as_str(), merchant_id.as_str(), "127.0.0.1")
    );
    let (_, tag) = token.split_once('.').unwrap();
    let printed = format!("{entries:?}");
    assert!(!printed.contains(&token) && !printed.contains(tag), "{printed}");
}

/// A token made with the deployment's master key, as a forger who has it (a leaked test key) would.
fn forge(master_key: &str, payload: &serde_json::Value) -> String {
    let key = secrecy::SecretString::from(master_key.to_owned());
    let sources = paygate::secrets::KeySources {
        master_key: Some(&key),
        master_key_file: None,
        previous: None,
        embedded_database: None,
    };
    let keys = paygate::secrets::MasterKeys::load(&sources).unwrap();
    let payload = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload.to_string());
    format!("pct_{payload}.{}", keys.tag("payment client token v1", payload.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_lives_no_longer_than_the_maximum_and_its_tag_has_one_spelling() {
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let (merchant_id, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[("PAYGATE_CLIENT_TOKEN_TTL_MS", "600000")]);
    gate.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let mut payments = gate.payments(&api_key).await;
    let session = payments.create_checkout_session(checkout_request("main", "order-a")).await.unwrap().into_inner();
    let mut merchants = gate.merchants(&api_key).await;
    let keys =
        merchants.list_api_keys(pb::ListApiKeysRequest { merchant_id: merchant_id.clone(), ..Default::default() });
    let key_id = keys.await.unwrap().into_inner().keys.remove(0).key_id;
    let master_key = db.master_key.clone().unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let grant = |issued_at: Option<i64>, expires_at: i64| {
        let mut payload = serde_json::json!({"p": session.payment_id, "m": merchant_id, "k": key_id, "e": expires_at});
        if let Some(at) = issued_at {
            payload["i"] = at.into();
        }
        forge(&master_key, &payload)
    };
    let year_2100 = 4_102_444_800_000;
    let read = |token: String| {
        let gate = &gate;
        let payment_id = session.payment_id.clone();
        async move { gate.payments(&token).await.get_payment(by_id(&payment_id)).await.map(|_| ()) }
    };
    // Within the maximum (10 minutes here): good, with or without an issue time (the previous
    // release's tokens have none).
    read(grant(Some(now_ms), now_ms + 600_000)).await.unwrap();
    read(grant(None, now_ms + 300_000)).await.unwrap();
    // Beyond it: refused, however the token dates itself.
    for forged in [
        grant(None, year_2100),
        grant(Some(now_ms), year_2100),
        grant(Some(now_ms), now_ms + 700_000),
        grant(Some(year_2100 - 600_000), year_2100),
    ] {
        let status = read(forged).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }

    // A real token's tag in upper case is not its tag.
    let token = token_for(&mut payments, &session.payment_id, 0).await;
    read(token.clone()).await.unwrap();
    let (body, tag) = token.rsplit_once(':').unwrap();
    assert!(tag.chars().any(|c| c.is_ascii_alphabetic()), "{tag}");
    let status = read(format!("{body}:{}", tag.to_ascii_uppercase())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}
