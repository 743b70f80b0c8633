//! Checkout to paid, and every way a pingback can be refused without changing anything.

use paygate::proto::v1::{self as pb, PaymentStatus};
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_to_paid_on_postgres() {
    checkout_to_paid(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_to_paid_on_sqlite() {
    checkout_to_paid(Backend::Sqlite).await;
}

async fn checkout_to_paid(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sim = Simulator::start();
    let (_merchant_id, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[]);
    let http = http_client();
    let mut channels = gate.channels(&api_key).await;
    let mut payments = gate.payments(&api_key).await;

    // Health and readiness are served without credentials.
    assert_eq!(http.get(gate.http_url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(gate.http_url("/readyz")).send().await.unwrap().status(), 200);
    let mut health = tonic_health::pb::health_client::HealthClient::new(gate.grpc().await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest { service: "paygate.v1.PaymentService".into() })
        .await
        .expect("health check needs no key")
        .into_inner();
    assert_eq!(serving.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    assert_eq!(
        reflected_services(&gate).await,
        [
            "grpc.health.v1.Health",
            "paygate.v1.ChannelService",
            "paygate.v1.MerchantService",
            "paygate.v1.PaymentService",
            "paygate.v1.WebhookService"
        ]
    );

    // A channel; its secret never comes back.
    let channel = channels
        .create_channel(channel_request(&sim, "", pb::ChannelMode::Test))
        .await
        .expect("CreateChannel")
        .into_inner();
    assert!(channel.channel_key.starts_with("ch_"), "generated key: {}", channel.channel_key);
    assert_eq!(channel.pingback_path, format!("/pingback/paymentwall/{}", channel.channel_key));
    let fetched = channels
        .get_channel(pb::GetChannelRequest { channel_key: channel.channel_key.clone() })
        .await
        .expect("GetChannel")
        .into_inner();
    assert_eq!(fetched.paymentwall.as_ref().unwrap().project_key, PROJECT_KEY);
    assert!(!format!("{fetched:?}").contains(SECRET_KEY), "GetChannel leaks the secret");
    assert!(!format!("{channel:?}").contains(SECRET_KEY), "CreateChannel leaks the secret");
    let listed = channels.list_channels(pb::ListChannelsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.channels.len(), 1);

    let pingback_url = gate.http_url(&channel.pingback_path);
    sim.add_project(PROJECT_KEY, SECRET_KEY, &pingback_url, 3).await;

    // Checkout: READY, with a redirect URL the simulator accepts.
    let session = payments
        .create_checkout_session(checkout_request(&channel.channel_key, "order-1001"))
        .await
        .expect("CreateCheckoutSession")
        .into_inner();
    assert_eq!(session.status, PaymentStatus::Ready as i32);
    assert!(session.redirect_url.starts_with(&format!("{}/api/subscription?", sim.base_url())));
    let url = url::Url::parse(&session.redirect_url).unwrap();
    let param = |name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    assert_eq!(param("ag_external_id").as_deref(), Some(session.payment_id.as_str()));
    assert_eq!(param("amount").as_deref(), Some("9.99"));
    assert_eq!(param("sign_version").as_deref(), Some("3"));

    // The simulator checks the signature: a tampered amount is refused.
    let tampered = session.redirect_url.replace("amount=9.99", "amount=0.01");
    let refused = http.get(&tampered).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("wrong signature"));

    let sim_session = sim.open(&session.redirect_url).await;
    let paid = sim.control(&format!("/sessions/{sim_session}/pay"), None).await;
    let reference = paid["reference"].as_str().expect("sim reference").to_owned();
    let delivered = sim.wait_delivered(&sim_session, 0).await;
    assert_eq!(delivered["pingbacks"][0]["attempts"].as_array().unwrap().len(), 1, "first attempt got OK");

    let payment = wait_for_status(&mut payments, &session.payment_id, PaymentStatus::Paid).await;
    assert_eq!(payment.provider_ref, reference);
    assert!(payment.test, "the sim's project is in test mode");
    assert_eq!(payment.merchant_uid, "order-1001");
    assert!(payment.paid_at.is_some());
    let by_uid = payments
        .get_payment(pb::GetPaymentRequest {
            lookup: Some(pb::get_payment_request::Lookup::MerchantUid("order-1001".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_uid.payment_id, session.payment_id);
    let events = "SELECT COUNT(*) FROM payment_events WHERE payment_id = $1";
    assert_eq!(db.count(events, &session.payment_id).await, 1);

    // A duplicate pingback answers OK and changes nothing.
    let sent_url = delivered["pingbacks"][0]["url"].as_str().unwrap().to_owned();
    let again = http.get(&sent_url).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.text().await.unwrap(), "OK");
    assert_eq!(get_payment(&mut payments, &session.payment_id).await, payment);
    assert_eq!(db.count(events, &session.payment_id).await, 1);
    let deliveries = "SELECT deliveries FROM pingbacks WHERE ref = $1";
    assert_eq!(db.count(deliveries, &reference).await, 2, "the repeat is counted, not applied");

    refusals(&db, &gate, &sim, &mut channels, &mut payments).await;
    isolation(&db, &gate, &session.payment_id, &channel.channel_key).await;
}

/// Bad signature, a source outside the allowlist, and a test pingback on a LIVE channel are each
/// refused with their own status, and change nothing.
async fn refusals(db: &TestDb, gate: &Paygate, sim: &Simulator, channels: &mut Channels, payments: &mut Payments) {
    let http = http_client();
    let mut live = channel_request(sim, "live-main", pb::ChannelMode::Live);
    live.paymentwall.as_mut().unwrap().pingback_allowlist = vec![]; // Paymentwall's published addresses
    let live = channels.create_channel(live).await.expect("LIVE channel").into_inner();
    assert_eq!(live.paymentwall.as_ref().unwrap().pingback_allowlist.len(), 6);
    let checkout = payments
        .create_checkout_session(checkout_request(&live.channel_key, "order-live-1"))
        .await
        .unwrap()
        .into_inner();
    let pid = checkout.payment_id.as_str();
    let url = gate.http_url(&live.pingback_path);
    let from_paymentwall = "174.36.92.186"; // through our trusted loopback proxy
    let through_proxy = http_client_from(PROXY);
    let send = |query: String, forwarded_for: &'static str| {
        let request = through_proxy.get(format!("{url}?{query}")).header("x-forwarded-for", forwarded_for);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let base = Pingback::new(pid).uid("user-40012").one_time().reference("b777");

    // Wrong signature.
    let good = base.signed(SECRET_KEY);
    let (status, body) = send(good.replace("ref=b777", "ref=b778"), from_paymentwall).await;
    assert_eq!((status, body.trim()), (403, "bad signature"));
    let (status, _) = send(base.signed("not-the-secret"), from_paymentwall).await;
    assert_eq!(status, 403);

    // Source outside the allowlist: direct from loopback, and forwarded from an unlisted address.
    let direct = http.get(format!("{url}?{good}")).send().await.unwrap();
    assert_eq!(direct.status(), 403);
    assert!(direct.text().await.unwrap().contains("127.0.0.1 is not allowed"));
    let (status, body) = send(good.clone(), "203.0.113.9").await;
    assert_eq!((status, body.trim()), (403, "source address 203.0.113.9 is not allowed for this channel"));

    // is_test=1 on a LIVE channel.
    let (status, body) = send(base.clone().test().signed(SECRET_KEY), from_paymentwall).await;
    assert_eq!((status, body.trim()), (403, "test pingback (is_test=1) on a LIVE channel"));

    // Unknown channel, malformed query.
    let (status, _) = {
        let r = http.get(gate.http_url(&format!("/pingback/paymentwall/nope?{good}"))).send().await.unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 404);
    let (status, body) = send("type=0&sig=abc".into(), from_paymentwall).await;
    assert_eq!((status, body.trim()), (400, "malformed pingback: missing parameter ref"));

    // Nothing of that changed the payment or stored a pingback.
    let payment = get_payment(payments, pid).await;
    assert_eq!(payment.status, PaymentStatus::Ready as i32);
    assert_eq!(db.count("SELECT COUNT(*) FROM pingbacks WHERE payment_id = $1 OR ref = $1", pid).await, 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM pingbacks WHERE ref = $1", "b777").await, 0);

    // The genuine live pingback through the proxy is accepted.
    let (status, body) = send(good, from_paymentwall).await;
    assert_eq!((status, body.as_str()), (200, "OK"));
    let payment = get_payment(payments, pid).await;
    assert_eq!(payment.status, PaymentStatus::Paid as i32);
    assert!(!payment.test);
    assert_eq!(payment.provider_ref, "b777");
}

/// Another merchant's key sees none of the first merchant's payments or channels.
async fn isolation(db: &TestDb, gate: &Paygate, payment_id: &str, channel_key: &str) {
    let (_other, other_key) = create_merchant(db, "Other Co");
    let mut other_payments = gate.payments(&other_key).await;
    let mut other_channels = gate.channels(&other_key).await;
    let status = other_payments
        .get_payment(pb::GetPaymentRequest {
            lookup: Some(pb::get_payment_request::Lookup::PaymentId(payment_id.into())),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = other_payments
        .get_payment(pb::GetPaymentRequest {
            lookup: Some(pb::get_payment_request::Lookup::MerchantUid("order-1001".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let listed = other_payments.list_payments(pb::ListPaymentsRequest::default()).await.unwrap().into_inner();
    assert!(listed.payments.is_empty());
    let status =
        other_channels.get_channel(pb::GetChannelRequest { channel_key: channel_key.into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = other_payments.create_checkout_session(checkout_request(channel_key, "steal-1")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "another merchant's channel is unknown to this key");

    // No key, a wrong key: UNAUTHENTICATED, and the key is never echoed.
    let mut anonymous = pb::payment_service_client::PaymentServiceClient::new(gate.grpc().await);
    let status = anonymous.list_payments(pb::ListPaymentsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut wrong = gate.payments("pgk_notARealKey0000000000000000000000").await;
    let status = wrong.list_payments(pb::ListPaymentsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(!status.message().contains("notARealKey"));
}

/// What server reflection (v1, no credentials) lists, as `grpcurl list` would show it.
async fn reflected_services(gate: &Paygate) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut client = ServerReflectionClient::new(gate.grpc().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        client.server_reflection_info(tokio_stream::iter([request])).await.expect("reflection").into_inner();
    let response = responses.message().await.expect("reflection answer").expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list")
    };
    let mut names: Vec<String> =
        list.service.into_iter().map(|s| s.name).filter(|n| !n.starts_with("grpc.reflection")).collect();
    names.sort();
    names
}

/// Issue 11 item 4: a cart widget (`w`, `s`, `mw` codes) is served by `/api/cart`, every other
/// code by `/api/subscription`, as the Paymentwall SDKs build it; the simulator refuses a widget
/// asked for on the other endpoint, and pays a cart-widget checkout end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_widget_goes_to_its_own_endpoint() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[]);
    let channel = gate
        .channels(&api_key)
        .await
        .create_channel(channel_request(&sim, "main", pb::ChannelMode::Test))
        .await
        .unwrap()
        .into_inner();
    sim.add_project(PROJECT_KEY, SECRET_KEY, &gate.http_url(&channel.pingback_path), 3).await;
    let mut payments = gate.payments(&api_key).await;
    let http = http_client();
    for (widget, path, other) in [
        ("s1_1", "/api/cart", "/api/subscription"),
        ("mw1", "/api/cart", "/api/subscription"),
        ("p1_1", "/api/subscription", "/api/cart"),
    ] {
        let mut request = checkout_request("main", &format!("order-{widget}"));
        request.widget = widget.into();
        let session = payments.create_checkout_session(request).await.unwrap().into_inner();
        let url = url::Url::parse(&session.redirect_url).unwrap();
        assert_eq!(url.path(), path, "{widget}");
        assert!(signed_with(&session.redirect_url, SECRET_KEY));
        let mut wrong = url.clone();
        wrong.set_path(other);
        let response = http.get(wrong.as_str()).send().await.unwrap();
        assert_eq!(response.status(), 400, "{widget} on {other}");
        assert!(response.text().await.unwrap().contains(&format!("served by {path}")));
        let sim_session = sim.open(&session.redirect_url).await;
        sim.control(&format!("/sessions/{sim_session}/pay"), None).await;
        wait_for_status(&mut payments, &session.payment_id, PaymentStatus::Paid).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_callback_route_takes_paymentwall_pingbacks_and_refuses_unknown_providers() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let (_, key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[]);
    gate.channels(&key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let mut payments = gate.payments(&key).await;
    let session = payments.create_checkout_session(checkout_request("main", "order-cb")).await.unwrap().into_inner();
    let query = Pingback::new(&session.payment_id).uid("user-40012").reference("b-cb-1").test().signed(SECRET_KEY);
    let http = http_client();
    let unknown = http.get(format!("{}?{query}", gate.http_url("/callbacks/stripe/main"))).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let answer = http.get(format!("{}?{query}", gate.http_url("/callbacks/paymentwall/main"))).send().await.unwrap();
    assert_eq!(answer.text().await.unwrap(), "OK");
    wait_for_status(&mut payments, &session.payment_id, PaymentStatus::Paid).await;
}

/// Reflection serves the google.rpc error details, so grpcurl decodes a status's `BadRequest`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_describes_the_error_details_a_status_carries() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let db = TestDb::new(Backend::Sqlite).await;
    let gate = Paygate::start(&db, &[]);
    let mut client = ServerReflectionClient::new(gate.grpc().await);
    for symbol in ["google.rpc.BadRequest", "google.rpc.ErrorInfo", "google.rpc.Status"] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        };
        let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
        let response = responses.message().await.unwrap().expect("an answer");
        match response.message_response {
            Some(MessageResponse::FileDescriptorResponse(files)) => {
                assert!(!files.file_descriptor_proto.is_empty(), "{symbol}")
            }
            other => panic!("{symbol} is not described: {other:?}"),
        }
    }
}
