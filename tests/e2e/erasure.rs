//! EraseCustomer end to end: a buyer's whole life (a one-time payment refunded in part, a
//! subscription of a sub-merchant renewed once, webhooks delivered), then the parent merchant
//! erases them, and every table of the database, paygate's Redis and paygate's logs are searched
//! for the buyer's uid and e-mail: nothing. The payments still read with their amounts, refunds,
//! statuses and refs; streams and webhooks carry `customer.erased`; erasing again erases nothing.

use std::time::Duration;

use paygate::proto::v1::{self as pb, PaymentStatus, webhook_service_client::WebhookServiceClient};
use sqlx::Row;

use crate::support::*;

const ADMIN: &str = "admin-token-for-erasure-tests-0123456789";
const SECRET_KEY: &str = "8d5a4f2b1c9e7d3a6b0f4e2d8c1a7b59";

/// A value unique to this run: nothing else in the database or the logs can contain it.
fn unique(prefix: &str) -> String {
    format!("{prefix}{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Rows of every table holding `needle` (case-insensitive), as "table: count".
async fn tables_holding(db: &TestDb, needle: &str) -> Vec<String> {
    let pool = db.pool().await;
    let mut found = Vec::new();
    let pattern = format!("%{needle}%");
    let tables: Vec<String> = match db.backend {
        Backend::Postgres => sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' \
             AND table_type = 'BASE TABLE'",
        )
        .fetch_all(&pool)
        .await
        .unwrap(),
        Backend::Sqlite => {
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'").fetch_all(&pool).await.unwrap()
        }
    };
    assert!(tables.len() > 10, "the scan sees paygate's tables: {tables:?}");
    for table in tables {
        let sql = match db.backend {
            // A row as text is every column of it.
            Backend::Postgres => format!("SELECT COUNT(*) FROM {table} t WHERE t::text ILIKE $1"),
            Backend::Sqlite => {
                let columns: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT name FROM pragma_table_info('{table}')"))
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                let any =
                    columns.iter().map(|c| format!("CAST(\"{c}\" AS TEXT) LIKE $1")).collect::<Vec<_>>().join(" OR ");
                format!("SELECT COUNT(*) FROM \"{table}\" WHERE {any}")
            }
        };
        let count: i64 = sqlx::query(&sql).bind(&pattern).fetch_one(&pool).await.unwrap().get(0);
        if count > 0 {
            found.push(format!("{table}: {count}"));
        }
    }
    pool.close().await;
    found
}

/// Every key of a Redis server of the test's own, with its value(s) as text.
async fn redis_contents(url: &str) -> String {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    let mut text = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut conn).await.unwrap();
        let values: Vec<String> = match kind.as_str() {
            "string" => vec![redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap()],
            "hash" => redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await.unwrap(),
            "set" => redis::cmd("SMEMBERS").arg(&key).query_async(&mut conn).await.unwrap(),
            "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query_async(&mut conn).await.unwrap(),
            "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query_async(&mut conn).await.unwrap(),
            other => vec![format!("(a {other})")],
        };
        text.push_str(&format!("{key} = {values:?}\n"));
    }
    text
}

async fn events_of(client: &mut Payments, payment_id: &str) -> Vec<pb::PaymentEvent> {
    let request = pb::ListPaymentEventsRequest { payment_id: payment_id.into(), page_size: 100, ..Default::default() };
    client.list_payment_events(request).await.unwrap().into_inner().events
}

async fn a_customers_whole_life_then_erased(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sim = Simulator::start();
    let redis = RedisServer::start();
    let (merchant_id, key) = create_merchant(&db, "Acme");
    let redis_url = redis.url();
    let gate = Paygate::start(
        &db,
        &[
            ("PAYGATE_ADMIN_TOKEN", ADMIN),
            ("PAYGATE_REDIS_URL", redis_url.as_str()),
            ("PAYGATE_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true"),
            ("PAYGATE_WEBHOOK_POLL_INTERVAL_MS", "50"),
        ],
    );
    let sub = gate
        .merchants(ADMIN)
        .await
        .create_sub_merchant(pb::CreateSubMerchantRequest {
            parent_merchant_id: merchant_id.clone(),
            name: "S1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    for (channel_key, project, assigned) in [
        ("main", "c22f895840bf2391f67a40da64bfed0a", String::new()),
        ("s1", "c22f895840bf2391f67a40da64bfed0b", sub.merchant_id.clone()),
    ] {
        let mut request = channel_request(&sim, channel_key, pb::ChannelMode::Test);
        let paymentwall = request.paymentwall.as_mut().unwrap();
        paymentwall.project_key = project.into();
        paymentwall.secret_key = SECRET_KEY.into();
        request.sub_merchant_id = assigned;
        let channel = gate.channels(&key).await.create_channel(request).await.unwrap().into_inner();
        sim.add_project(project, SECRET_KEY, &gate.http_url(&channel.pingback_path), 3).await;
    }
    let receiver = Receiver::start(0);
    let mut hooks = WebhookServiceClient::with_interceptor(gate.grpc().await, Bearer::new(&key));
    let endpoint = pb::SetWebhookEndpointRequest { url: receiver.url(), event_types: vec![] };
    let secret = hooks.set_webhook_endpoint(endpoint).await.unwrap().into_inner().secret;
    receiver.trust(&[&secret]).await;
    let (mut parent, mut sub_payments) = (gate.payments(&key).await, gate.payments(&sub.api_key).await);

    let uid = unique("erasable-");
    let email = format!("{}@erasure-test.example", unique("buyer."));
    let buyer = |merchant_uid: &str, channel_key: &str, customer: &str, email: &str| {
        let mut request = checkout_request(channel_key, merchant_uid);
        request.customer = Some(pb::Customer { uid: customer.into(), email: email.into(), ..Default::default() });
        request.custom_params.insert("loyalty_card".into(), format!("card-of-{customer}"));
        request.success_url = format!("https://shop.example/thanks?who={customer}");
        request
    };
    let pay = |redirect_url: String| {
        let sim = &sim;
        async move {
            let session = sim.open(&redirect_url).await;
            sim.control(&format!("/sessions/{session}/pay"), None).await;
            session
        }
    };

    // A one-time payment, refunded in part.
    let one_time = parent.create_checkout_session(buyer("order-1", "main", &uid, &email)).await.unwrap().into_inner();
    pay(one_time.redirect_url.clone()).await;
    wait_for_status(&mut parent, &one_time.payment_id, PaymentStatus::Paid).await;
    let refund = pb::RefundPaymentRequest {
        payment_id: one_time.payment_id.clone(),
        amount: Some(pb::Money { amount_minor: 300, currency: "USD".into() }),
        reason: "one item returned".into(),
        ..Default::default()
    };
    parent.refund_payment(refund).await.unwrap();
    wait_for_status(&mut parent, &one_time.payment_id, PaymentStatus::PartialCancelled).await;
    // A sub-merchant's subscription, renewed once.
    let mut request = buyer("plan-1", "s1", &uid, &email);
    request.subscription =
        Some(pb::SubscriptionTerms { period_length: 1, period_type: "month".into(), recurring: true });
    let subscribed = sub_payments.create_checkout_session(request).await.unwrap().into_inner();
    let sim_session = pay(subscribed.redirect_url.clone()).await;
    wait_for_status(&mut sub_payments, &subscribed.payment_id, PaymentStatus::Paid).await;
    sim.control(&format!("/sessions/{sim_session}/renew"), None).await;
    let renewals = || {
        let mut client = sub_payments.clone();
        let id = subscribed.subscription_id.clone();
        async move {
            let request =
                pb::GetSubscriptionRequest { lookup: Some(pb::get_subscription_request::Lookup::SubscriptionId(id)) };
            client.get_subscription(request).await.unwrap().into_inner().renewals
        }
    };
    wait_until(|| async { renewals().await == 1 }).await;
    // Another buyer of the same merchant, whom nothing touches.
    let other_uid = unique("keeper-");
    let other_email = format!("{other_uid}@kept.example");
    let other =
        parent.create_checkout_session(buyer("order-2", "main", &other_uid, &other_email)).await.unwrap().into_inner();
    pay(other.redirect_url.clone()).await;
    wait_for_status(&mut parent, &other.payment_id, PaymentStatus::Paid).await;
    // Everything the merchant's endpoint is sent before the erasure, delivered.
    let before = receiver.wait_for(4).await.len();
    for needle in [&uid, &email] {
        assert!(!tables_holding(&db, needle).await.is_empty(), "the buyer's {needle} is stored before erasure");
    }

    let erased =
        parent.erase_customer(pb::EraseCustomerRequest { customer_uid: uid.clone() }).await.unwrap().into_inner();
    assert!(erased.erasure_id.starts_with("era_"), "{erased:?}");
    assert_eq!(erased.payments_erased, 3, "the one-time payment, the subscription's first and its renewal");
    assert!(erased.payment_ids.contains(&one_time.payment_id) && erased.payment_ids.contains(&subscribed.payment_id));

    // Nothing of the buyer anywhere paygate keeps data.
    for needle in [uid.as_str(), email.as_str(), email.split('@').next().unwrap(), "erasure-test.example"] {
        assert_eq!(tables_holding(&db, needle).await, Vec::<String>::new(), "{needle} is still stored");
        assert!(!redis_contents(&redis_url).await.contains(needle), "{needle} is in Redis");
        let logs = gate.process.logs().join("\n");
        assert!(!logs.to_lowercase().contains(&needle.to_lowercase()), "{needle} is in paygate's logs");
    }
    // The other buyer is untouched.
    assert!(!tables_holding(&db, &other_uid).await.is_empty());
    let kept = get_payment(&mut parent, &other.payment_id).await;
    assert_eq!(kept.customer.as_ref().map(|c| c.uid.as_str()), Some(other_uid.as_str()));

    // The books still add up: amounts, refunds, statuses and refs read as before.
    let paid = get_payment(&mut parent, &one_time.payment_id).await;
    assert_eq!(paid.status, PaymentStatus::PartialCancelled as i32);
    assert_eq!(paid.amount.as_ref().map(|m| m.amount_minor), Some(999));
    assert_eq!(paid.cancelled_amount.as_ref().map(|m| m.amount_minor), Some(300));
    assert!(!paid.provider_ref.is_empty() && paid.merchant_uid == "order-1");
    let customer = paid.customer.clone().unwrap_or_default();
    assert!(customer.uid.is_empty() && customer.email.is_empty() && paid.custom_params.is_empty(), "{paid:?}");
    let first = get_payment(&mut parent, &subscribed.payment_id).await;
    assert_eq!(
        (first.status, first.subscription_id.as_str()),
        (PaymentStatus::Paid as i32, subscribed.subscription_id.as_str())
    );

    // The log tells the story: the erasure is the last event, with the erased payment.
    let events = events_of(&mut parent, &one_time.payment_id).await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "customer.erased");
    assert_eq!(last.payment.as_ref().and_then(|p| p.customer.as_ref()).map(|c| c.uid.as_str()).unwrap_or(""), "");
    assert!(events.iter().any(|e| e.kind == "payment.paid"), "earlier events stay, erased");
    // The merchant's endpoint is told, with nothing personal in the body.
    let received = receiver.wait_for(before + 1).await;
    let told: Vec<&serde_json::Value> = received.iter().filter(|r| r["type"] == "customer.erased").collect();
    assert_eq!(told.len(), 1, "the parent's own payment's erasure reaches its endpoint: {received:?}");
    assert_eq!(told[0]["payment_id"], one_time.payment_id.as_str());
    assert_eq!(told[0]["customer_uid"], "", "the body's payment is the erased one");
    // Audited, by id; never by uid.
    let audit = gate
        .merchants(&key)
        .await
        .list_audit_events(pb::ListAuditEventsRequest { action: "customer.erased".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(audit.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(), [erased.erasure_id.as_str()]);

    // Again: nothing more to erase, nothing more said.
    let again =
        parent.erase_customer(pb::EraseCustomerRequest { customer_uid: uid.clone() }).await.unwrap().into_inner();
    assert_eq!((again.payments_erased, again.payment_ids.len()), (0, 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events_of(&mut parent, &one_time.payment_id).await.len(), events.len());
    // A sibling cannot erase the parent's buyers (scope), and a blank uid is refused by name.
    let foreign = sub_payments.erase_customer(pb::EraseCustomerRequest { customer_uid: other_uid.clone() }).await;
    assert_eq!(foreign.unwrap().into_inner().payments_erased, 0);
    assert_eq!(get_payment(&mut parent, &other.payment_id).await.customer.map(|c| c.uid), Some(other_uid));
    let blank = parent.erase_customer(pb::EraseCustomerRequest::default()).await.unwrap_err();
    assert_eq!(blank.code(), tonic::Code::InvalidArgument);
    assert!(blank.message().contains("customer_uid"), "{}", blank.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_whole_life_then_erased_postgres() {
    a_customers_whole_life_then_erased(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_whole_life_then_erased_sqlite() {
    a_customers_whole_life_then_erased(Backend::Sqlite).await;
}
