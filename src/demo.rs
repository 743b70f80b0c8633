//! `paygate demo`: paygate on a temporary SQLite database with the Paymentwall simulator beside
//! it; makes a merchant, its key and a TEST channel, pays a checkout through the simulator, says
//! what happened and what to try next, and keeps serving until Ctrl-C.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use clap::Args;
use paygate::{
    app,
    config::Settings,
    proto::v1::{
        self as pb, channel_service_client::ChannelServiceClient, merchant_service_client::MerchantServiceClient,
        payment_service_client::PaymentServiceClient,
    },
};
use secrecy::SecretString;
use tonic::{Request, metadata::MetadataValue, transport::Channel};

#[derive(Args)]
pub struct DemoArgs {
    /// gRPC address; a taken (or 0) port falls back to a free one.
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// HTTP address (pingbacks); a taken (or 0) port falls back to a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
}

// Paymentwall's public test credentials (from its SDKs' test suites).
const PROJECT_KEY: &str = "c22f895840bf2391f67a40da64bfed26";
const SECRET_KEY: &str = "a7408723eaf4bfa2e3ac49b3cb695046";

/// The simulator process, stopped with the demo.
struct Simulator {
    child: Child,
    base_url: String,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_simulator() -> Result<Simulator, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe.with_file_name("paymentwall-sim");
    let mut child = Command::new(&path)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "the demo runs the Paymentwall simulator beside paygate, {}: {e}. Build it with `cargo build --bin \
                 paymentwall-sim` (cargo install --path . installs both)",
                path.display()
            )
        })?;
    let stdout = child.stdout.take().ok_or("no simulator output")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = lines.by_ref().map_while(Result::ok).find_map(|line| {
        let json: serde_json::Value = serde_json::from_str(&line).ok()?;
        (json["message"] == "paymentwall-sim ready").then(|| json["addr"].as_str().map(str::to_owned))?
    });
    // Keep reading its output so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    match addr {
        Some(addr) => Ok(Simulator { child, base_url: format!("http://{addr}") }),
        None => {
            drop(Simulator { child, base_url: String::new() });
            Err("the simulator did not start".into())
        }
    }
}

/// `addr` if it can be bound now, else a free port on the same address.
fn usable(addr: SocketAddr) -> SocketAddr {
    let taken = addr.port() == 0 || std::net::TcpListener::bind(addr).is_err();
    let fallback = || std::net::TcpListener::bind((addr.ip(), 0)).and_then(|l| l.local_addr()).unwrap_or(addr);
    if taken { fallback() } else { addr }
}

fn authed<T>(message: T, bearer: &MetadataValue<tonic::metadata::Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", bearer.clone());
    request
}

fn readable(status: tonic::Status) -> String {
    format!("{}: {}", status.code().description(), status.message())
}

pub async fn run(args: DemoArgs) -> Result<(), String> {
    let started = Instant::now();
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let sim = start_simulator()?;
    let (grpc_addr, http_addr) = (usable(args.grpc_addr), usable(args.http_addr));
    let admin_token = format!("demo-admin-{}", ulid::Ulid::new());
    let settings = Settings {
        grpc_addr,
        http_addr,
        database_url: SecretString::from(format!("sqlite://{}?mode=rwc", dir.path().join("paygate.db").display())),
        admin_token: Some(SecretString::from(admin_token.clone())),
        // The simulator listens on loopback.
        provider_allow_private_targets: true,
        ..Settings::default()
    };
    let providers = app::shipped_providers(&settings);
    let server = tokio::spawn(app::serve_with(settings, providers, app::shutdown_signal()));
    let grpc = connect(grpc_addr).await?;
    println!("paygate demo: serving gRPC on {grpc_addr}, HTTP on {http_addr}, SQLite in {}", dir.path().display());
    println!("               the Paymentwall simulator on {}", sim.base_url);
    let addrs = Addrs { grpc: grpc_addr, http: http_addr, sim: sim.base_url.clone() };
    let (api_key, payment_id) = story(grpc, &admin_token, &addrs).await?;
    println!(
        "\nReached PAID in {:.1} s. Try next (paygate keeps serving until Ctrl-C):",
        started.elapsed().as_secs_f64()
    );
    try_next(&addrs, &api_key, &payment_id);
    match server.await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

struct Addrs {
    grpc: SocketAddr,
    http: SocketAddr,
    sim: String,
}

/// Merchant, key, channel, checkout, payment through the simulator, PAID: each step said.
/// Returns the merchant's API key and the payment's id.
async fn story(grpc: Channel, admin_token: &str, addrs: &Addrs) -> Result<(String, String), String> {
    let Addrs { http: http_addr, sim, .. } = addrs;
    let admin: MetadataValue<_> = format!("Bearer {admin_token}").parse().map_err(|_| "admin token")?;
    let merchant = MerchantServiceClient::new(grpc.clone())
        .create_merchant(authed(pb::CreateMerchantRequest { name: "Demo shop".into() }, &admin))
        .await
        .map_err(readable)?
        .into_inner();
    println!("\n1. Merchant {} with API key {}", merchant.merchant_id, merchant.api_key);
    let bearer: MetadataValue<_> = format!("Bearer {}", merchant.api_key).parse().map_err(|_| "api key")?;

    let channel = ChannelServiceClient::new(grpc.clone())
        .create_channel(authed(channel_request(sim), &bearer))
        .await
        .map_err(readable)?
        .into_inner();
    println!("2. TEST channel {} (pingbacks to {})", channel.channel_key, channel.pingback_path);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let project = serde_json::json!({
        "key": PROJECT_KEY, "secret": SECRET_KEY,
        "pingback_url": format!("http://{http_addr}{}", channel.pingback_path),
    });
    let sent = http.post(format!("{sim}/control/projects")).json(&project).send().await;
    sent.and_then(|r| r.error_for_status()).map_err(|e| format!("registering the project with the simulator: {e}"))?;

    let mut payments = PaymentServiceClient::new(grpc);
    let session = payments
        .create_checkout_session(authed(checkout_request(&channel.channel_key), &bearer))
        .await
        .map_err(readable)?
        .into_inner();
    println!("3. Checkout {} for USD 9.99: READY\n   hosted page {}", session.payment_id, session.redirect_url);

    let sim_session = pay(&http, sim, &session.redirect_url).await?;
    println!("4. Paid on the simulator's hosted page; it sent a signed pingback");
    let payment = wait_paid(&mut payments, &bearer, &session.payment_id).await?;
    println!("5. Payment {} is PAID (Paymentwall ref {})", payment.payment_id, payment.provider_ref);
    let events = payments
        .list_payment_events(authed(
            pb::ListPaymentEventsRequest { payment_id: session.payment_id.clone(), ..Default::default() },
            &bearer,
        ))
        .await
        .map_err(readable)?
        .into_inner();
    for event in &events.events {
        println!("   event {} {}", event.event_id, event.kind);
    }
    let delivered: serde_json::Value = http
        .get(format!("{sim}/control/sessions/{sim_session}"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if let Some(pingback) = delivered["pingbacks"].get(0) {
        println!(
            "   the pingback, as signed by the simulator:\n   GET {}",
            pingback["url"].as_str().unwrap_or_default()
        );
    }
    Ok((merchant.api_key, session.payment_id))
}

/// What to try next, with the demo's own key and payment.
fn try_next(addrs: &Addrs, api_key: &str, payment_id: &str) {
    let Addrs { grpc: grpc_addr, http: http_addr, .. } = addrs;
    println!(
        "   grpcurl -plaintext -H 'authorization: Bearer {key}' -d '{{\"payment_id\": \"{id}\"}}' {grpc_addr} \
         paygate.v1.PaymentService/GetPayment",
        key = api_key,
        id = payment_id
    );
    println!("   PAYGATE_API_KEY={api_key} paygate watch --grpc http://{grpc_addr}");
    println!("   curl http://{http_addr}/metrics");
}

async fn connect(addr: SocketAddr) -> Result<Channel, String> {
    let endpoint = Channel::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
    for _ in 0..200 {
        if let Ok(channel) = endpoint.connect().await {
            return Ok(channel);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("paygate did not start on {addr}"))
}

fn channel_request(sim: &str) -> pb::CreateChannelRequest {
    pb::CreateChannelRequest {
        channel_key: "demo".into(),
        name: "demo".into(),
        provider: pb::Provider::Paymentwall as i32,
        mode: pb::ChannelMode::Test as i32,
        paymentwall: Some(pb::PaymentwallCredentials {
            project_key: PROJECT_KEY.into(),
            secret_key: SECRET_KEY.into(),
            pingback_allowlist: vec!["127.0.0.1/32".into(), "::1/128".into()],
            api_base_url: sim.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn checkout_request(channel_key: &str) -> pb::CreateCheckoutSessionRequest {
    pb::CreateCheckoutSessionRequest {
        channel_key: channel_key.into(),
        merchant_uid: format!("demo-{}", ulid::Ulid::new()),
        amount: Some(pb::Money { amount_minor: 999, currency: "USD".into() }),
        order_name: "Gold Membership".into(),
        customer: Some(pb::Customer { uid: "buyer-1".into(), email: "buyer@example.com".into(), ..Default::default() }),
        ..Default::default()
    }
}

/// Opens the hosted page and presses Pay through the simulator's control API; its session id.
async fn pay(http: &reqwest::Client, sim: &str, redirect_url: &str) -> Result<String, String> {
    let page = http.get(redirect_url).send().await.and_then(|r| r.error_for_status()).map_err(|e| e.to_string())?;
    let session = page.headers().get("x-sim-session").and_then(|v| v.to_str().ok()).ok_or("no simulator session")?;
    let session = session.to_owned();
    let paid = http.post(format!("{sim}/control/sessions/{session}/pay")).send().await;
    paid.and_then(|r| r.error_for_status()).map_err(|e| e.to_string())?;
    Ok(session)
}

async fn wait_paid(
    payments: &mut PaymentServiceClient<Channel>,
    bearer: &MetadataValue<tonic::metadata::Ascii>,
    payment_id: &str,
) -> Result<pb::Payment, String> {
    let lookup = Some(pb::get_payment_request::Lookup::PaymentId(payment_id.to_owned()));
    for _ in 0..300 {
        let request = authed(pb::GetPaymentRequest { lookup: lookup.clone() }, bearer);
        let payment = payments.get_payment(request).await.map_err(readable)?.into_inner();
        if payment.status() == pb::PaymentStatus::Paid {
            return Ok(payment);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the payment did not reach PAID within 30 s".into())
}
