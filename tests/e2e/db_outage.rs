//! A pingback is answered OK only after its transaction commits. The test puts a TCP proxy it
//! controls between paygate and PostgreSQL and cuts it while a pingback is in flight.

use std::time::Duration;

use paygate::proto::v1::{self as pb, PaymentStatus};

use crate::support::{proxy::TcpProxy, *};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pingback_cut_off_from_the_database_is_not_acknowledged_and_its_retry_succeeds() {
    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");

    let target = url::Url::parse(&db.url).unwrap();
    let target = format!("{}:{}", target.host_str().unwrap(), target.port().unwrap_or(5432));
    let proxy = TcpProxy::start(target.parse().expect("PostgreSQL address is host:port")).await;
    let proxied_url = db.url.replacen(&target, &proxy.addr.to_string(), 1);
    let gate = Paygate::start(
        &db,
        &[
            ("PAYGATE_DATABASE_URL", &proxied_url),
            ("PAYGATE_DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
            ("PAYGATE_PINGBACK_TIMEOUT_MS", "5000"),
        ],
    );
    let mut channels = gate.channels(&api_key).await;
    let mut payments = gate.payments(&api_key).await;
    let channel =
        channels.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap().into_inner();
    let checkout = payments.create_checkout_session(checkout_request("main", "order-1")).await.unwrap().into_inner();
    let pid = checkout.payment_id.as_str();

    let query = Pingback::new(pid).uid("user-40012").one_time().reference("b4242").test().signed(SECRET_KEY);
    let url = format!("{}?{query}", gate.http_url(&channel.pingback_path));
    let http = http_client();

    // Freeze the database link so the pingback stalls mid-request, then cut it.
    proxy.freeze();
    let in_flight = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move {
            let response = http.get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!in_flight.is_finished(), "the pingback is waiting on the database");
    proxy.cut();
    let (status, body) = in_flight.await.unwrap();
    assert_ne!(body, "OK");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("retry later"), "{body}");

    // Nothing was committed.
    assert_eq!(db.count("SELECT COUNT(*) FROM pingbacks WHERE ref = $1", "b4242").await, 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM payments WHERE status = 'READY' AND payment_id = $1", pid).await, 1);

    // While the link is down the answer stays non-OK; readiness says why.
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(http.get(gate.http_url("/readyz")).send().await.unwrap().status(), 503);

    // The link returns; Paymentwall's retry is applied.
    proxy.restore();
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "OK");
    let payment = get_payment(&mut payments, pid).await;
    assert_eq!(payment.status, PaymentStatus::Paid as i32);
    assert_eq!(payment.provider_ref, "b4242");
    assert_eq!(http.get(gate.http_url("/readyz")).send().await.unwrap().status(), 200);
}
