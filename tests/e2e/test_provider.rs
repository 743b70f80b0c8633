//! The provider port's proof: a provider written here, against the port alone, drives checkout ->
//! paid -> refund -> refunded end to end through the generic callback route. paygate runs in this
//! process (so it can be handed the provider) and is reached over real gRPC and HTTP sockets.
//!
//! "testpay": a hosted page at the channel's `page_url`; callbacks are `POST`ed JSON, signed with
//! HMAC-SHA256 under the channel's `signing_key` (hex in `?sig=`); refunds are asked for by a call
//! the provider records, and confirmed by a later `refunded` callback.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use hmac::{Hmac, Mac};
use paygate::{
    channels::{
        Channel, ChannelMode,
        config::{ConfigContext, ConfigField, ConfigRules, ProviderConfig},
    },
    payments::{
        Payment, PaymentOutcome,
        provider::{
            Callback, CallbackError, CallbackNotice, MinorUnits, Notice, PaymentMethod, Provider, ProviderError,
            ProviderEvent, RawNotification, RemotePayment, ReversalKind, ReversalNotice, RiskProfile, Subscription,
        },
    },
    proto::v1 as pb,
    validation::Violations,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::Sha256;

use crate::support::{self, Backend, Bearer, TestDb};

const SIGNING_KEY: &str = "testpay-signing-key-0123456789";

/// A refund testpay was asked for: (payment id, amount).
type Asked = Arc<Mutex<Vec<(String, i64)>>>;

struct TestPay {
    refunds_asked: Asked,
}

const FIELDS: [ConfigField; 2] =
    [ConfigField { name: "page_url", secret: false }, ConfigField { name: "signing_key", secret: true }];

fn sign(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

impl ConfigRules for TestPay {
    fn name(&self) -> &'static str {
        "testpay"
    }

    fn display_name(&self) -> &'static str {
        "TestPay"
    }

    fn config_fields(&self) -> &'static [ConfigField] {
        &FIELDS
    }

    fn check_config(&self, given: ProviderConfig, ctx: &ConfigContext<'_>, v: &mut Violations) -> ProviderConfig {
        let page_url = given.setting_text("page_url").to_owned();
        if !page_url.starts_with("http://") && !page_url.starts_with("https://") {
            v.add(format!("{}page_url", ctx.field_prefix), "must be an http(s) URL");
        }
        let key = given.secret("signing_key").map(|s| s.expose_secret().to_owned()).unwrap_or_default();
        if key.len() < 16 {
            v.add(format!("{}signing_key", ctx.field_prefix), "must be at least 16 characters");
        }
        ProviderConfig {
            settings: json!({ "page_url": page_url }),
            secrets: [("signing_key".to_owned(), SecretString::from(key))].into(),
        }
    }
}

#[tonic::async_trait]
impl Provider for TestPay {
    fn read_callback(&self, channel: &Channel, callback: &Callback<'_>) -> Result<CallbackNotice, CallbackError> {
        let sig = form_urlencoded::parse(callback.query.as_bytes())
            .find(|(k, _)| k == "sig")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| CallbackError::Malformed("missing sig".into()))?;
        let key = channel.config.secret("signing_key").ok_or_else(|| CallbackError::Malformed("no key".into()))?;
        if sign(key.expose_secret(), callback.body) != sig {
            return Err(CallbackError::BadSignature);
        }
        let body: serde_json::Value =
            serde_json::from_slice(callback.body).map_err(|e| CallbackError::Malformed(format!("body: {e}")))?;
        let text = |name: &str| body[name].as_str().map(str::to_owned);
        let test = body["test"].as_bool().unwrap_or(false);
        if test && channel.mode == ChannelMode::Live {
            return Err(CallbackError::TestOnLive("test callback on a LIVE channel".into()));
        }
        let (kind, event) = match text("event").as_deref() {
            Some("paid") => (1, ProviderEvent::Payment(PaymentOutcome::Completed)),
            Some("refunded") => (
                2,
                ProviderEvent::Reversal(ReversalNotice {
                    kind: ReversalKind::FullRefund,
                    provider_reason: None,
                    description: "refunded by testpay",
                }),
            ),
            _ => return Err(CallbackError::Malformed("event: must be paid or refunded".into())),
        };
        let payment_id = text("payment_id").ok_or_else(|| CallbackError::Malformed("missing payment_id".into()))?;
        let provider_ref = text("ref").ok_or_else(|| CallbackError::Malformed("missing ref".into()))?;
        Ok(CallbackNotice {
            notice: Notice { payment_id, provider_ref: provider_ref.clone(), event, test },
            raw: RawNotification {
                channel_key: channel.channel_key.clone(),
                provider_ref,
                kind,
                unique_ref: text("id").unwrap_or_default(),
                query: String::from_utf8_lossy(callback.body).into_owned(),
            },
        })
    }

    fn callback_answer(&self) -> &'static str {
        "accepted"
    }

    fn checkout_url(
        &self,
        channel: &Channel,
        payment: &Payment,
        _: Option<&Subscription>,
        _: &RiskProfile,
    ) -> Result<String, ProviderError> {
        let page = channel.config.setting_text("page_url");
        Ok(format!(
            "{page}?payment={}&amount={}&currency={}",
            payment.payment_id, payment.amount_minor, payment.currency
        ))
    }

    async fn request_refund(
        &self,
        _: &Channel,
        payment: &Payment,
        amount: MinorUnits,
        _: &str,
    ) -> Result<(), ProviderError> {
        self.refunds_asked.lock().unwrap().push((payment.payment_id.clone(), amount.into()));
        Ok(())
    }

    async fn stop_recurring(&self, _: &Channel, _: &Payment, _: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported("testpay sells no subscriptions".into()))
    }

    async fn payment_methods(&self, _: &Channel, _: &str) -> Result<Vec<PaymentMethod>, ProviderError> {
        Ok(vec![])
    }

    async fn payment_status(&self, _: &Channel, _: &Payment) -> Result<Option<RemotePayment>, ProviderError> {
        Ok(None)
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")
}

/// paygate in this process, with the shipped providers and `extra`; stopped when dropped.
struct InProcess {
    grpc: SocketAddr,
    http: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl InProcess {
    async fn start(db: &TestDb, extra: Arc<dyn Provider>) -> Self {
        let (grpc, http) = (free_addr(), free_addr());
        let settings = paygate::config::Settings {
            grpc_addr: grpc,
            http_addr: http,
            database_url: SecretString::from(db.url.clone()),
            master_key: db.master_key.clone().map(SecretString::from),
            api_rate_limit_per_second: 100_000,
            api_rate_limit_burst: 100_000,
            ..Default::default()
        };
        let providers = paygate::app::shipped_providers(&settings).with(extra);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = paygate::app::serve_with(settings, providers, shutdown).await {
                panic!("paygate stopped: {e}");
            }
        });
        support::wait_until(|| async move { tokio::net::TcpStream::connect(http).await.is_ok() }).await;
        Self { grpc, http, stop: Some(stop) }
    }

    async fn client(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await.unwrap()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn post_callback(gate: &InProcess, path: &str, body: &serde_json::Value, key: &str) -> (u16, String) {
    let body = body.to_string();
    let url = format!("http://{}{path}?sig={}", gate.http, sign(key, body.as_bytes()));
    let answer = support::http_client().post(url).body(body).send().await.expect("callback sent");
    (answer.status().as_u16(), answer.text().await.unwrap_or_default())
}

async fn through_the_generic_route(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (_merchant, api_key) = support::create_merchant(&db, "testpay merchant");
    let asked: Asked = Default::default();
    let gate = InProcess::start(&db, Arc::new(TestPay { refunds_asked: asked.clone() })).await;
    let bearer = Bearer::new(&api_key);
    let mut channels =
        pb::channel_service_client::ChannelServiceClient::with_interceptor(gate.client().await, bearer.clone());
    let mut payments = pb::payment_service_client::PaymentServiceClient::with_interceptor(gate.client().await, bearer);

    // A channel of the new provider, through the generic credentials; its config is checked by it.
    let credentials = |page_url: &str, key: &str| pb::ProviderCredentials {
        provider: "testpay".into(),
        settings_json: json!({ "page_url": page_url }).to_string(),
        secrets: [("signing_key".to_owned(), key.to_owned())].into(),
    };
    let create = |credentials| pb::CreateChannelRequest {
        channel_key: "tp-main".into(),
        name: "testpay".into(),
        mode: pb::ChannelMode::Test as i32,
        credentials: Some(credentials),
        ..Default::default()
    };
    let refused = channels.create_channel(create(credentials("ftp://x", "short"))).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    for field in ["testpay.page_url", "testpay.signing_key"] {
        assert!(refused.message().contains(field), "{field}: {}", refused.message());
    }
    let channel =
        channels.create_channel(create(credentials("https://pay.test/page", SIGNING_KEY))).await.unwrap().into_inner();
    assert_eq!(channel.provider_name, "testpay");
    assert_eq!(channel.pingback_path, "/callbacks/testpay/tp-main");
    assert!(channel.settings_json.contains("https://pay.test/page"), "{}", channel.settings_json);
    assert!(!format!("{channel:?}").contains(SIGNING_KEY), "the secret is never returned");

    // Checkout: the hosted page is the provider's.
    let session = payments
        .create_checkout_session(support::checkout_request("tp-main", "order-tp-1"))
        .await
        .unwrap()
        .into_inner();
    let payment_id = session.payment_id.clone();
    assert_eq!(
        session.redirect_url,
        format!("https://pay.test/page?payment={payment_id}&amount=999&currency=USD"),
        "the provider's checkout URL"
    );

    // A forged callback changes nothing; a signed one makes the payment PAID.
    let paid = json!({ "event": "paid", "payment_id": payment_id, "ref": "tp-ref-1", "id": "n1", "test": true });
    let callback_path = channel.pingback_path.clone();
    assert_eq!(post_callback(&gate, &callback_path, &paid, "not-the-signing-key").await.0, 403);
    assert_eq!(support::get_payment(&mut payments, &payment_id).await.status(), pb::PaymentStatus::Ready);
    assert_eq!(post_callback(&gate, &callback_path, &paid, SIGNING_KEY).await, (200, "accepted".into()));
    let payment = support::get_payment(&mut payments, &payment_id).await;
    assert_eq!(payment.status(), pb::PaymentStatus::Paid);
    assert_eq!(payment.provider_ref, "tp-ref-1");
    // Through the Paymentwall URL, a testpay channel is unknown.
    let wrong_route = support::http_client()
        .get(format!("http://{}/pingback/paymentwall/tp-main?type=0", gate.http))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_route.status().as_u16(), 404);

    // Refund: paygate asks the provider, then its callback confirms.
    let refund = payments
        .refund_payment(pb::RefundPaymentRequest {
            payment_id: payment_id.clone(),
            reason: "customer asked".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refund.amount.as_ref().map(|m| m.amount_minor), Some(999));
    assert_eq!(*asked.lock().unwrap(), [(payment_id.clone(), 999)], "the provider was asked once, for it all");
    assert_eq!(support::get_payment(&mut payments, &payment_id).await.status(), pb::PaymentStatus::CancelPending);
    let refunded =
        json!({ "event": "refunded", "payment_id": payment_id, "ref": "tp-ref-1", "id": "n2", "test": true });
    assert_eq!(post_callback(&gate, &callback_path, &refunded, SIGNING_KEY).await, (200, "accepted".into()));
    let payment = support::get_payment(&mut payments, &payment_id).await;
    assert_eq!(payment.status(), pb::PaymentStatus::Cancelled);
    assert_eq!(payment.cancelled_amount.as_ref().map(|m| m.amount_minor), Some(999));
    // Delivered again: acknowledged, nothing moves.
    assert_eq!(post_callback(&gate, &callback_path, &refunded, SIGNING_KEY).await, (200, "accepted".into()));
    let again = support::get_payment(&mut payments, &payment_id).await;
    assert_eq!((again.status(), again.updated_at), (pb::PaymentStatus::Cancelled, payment.updated_at));
    drop(gate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_written_against_the_port_drives_checkout_to_refunded_on_postgres() {
    through_the_generic_route(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_written_against_the_port_drives_checkout_to_refunded_on_sqlite() {
    through_the_generic_route(Backend::Sqlite).await;
}
