//! The README's five-minute tour as a small gRPC client: creates a TEST channel that points at the
//! Paymentwall simulator, registers that project with the simulator, creates a checkout, and waits
//! until the payment reads PAID (you click Pay in a browser, or pass `--auto-pay`).

use std::time::Duration;

use clap::Parser;
use paygate::proto::v1::{
    self as pb, channel_service_client::ChannelServiceClient, payment_service_client::PaymentServiceClient,
};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

#[derive(Parser)]
struct Args {
    /// The key printed by `paygate admin create-merchant`.
    #[arg(long, env = "PAYGATE_API_KEY")]
    api_key: String,
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    grpc: String,
    /// Where the simulator can reach paygate's HTTP port.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    paygate_http: String,
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    sim: String,
    /// Pay through the simulator's control API instead of a browser.
    #[arg(long)]
    auto_pay: bool,
}

// Paymentwall's public test credentials (from its SDKs' test suites).
const PROJECT_KEY: &str = "c22f895840bf2391f67a40da64bfed26";
const SECRET_KEY: &str = "a7408723eaf4bfa2e3ac49b3cb695046";

fn authed<T>(message: T, bearer: &MetadataValue<tonic::metadata::Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", bearer.clone());
    request
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match tour(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tour: {}", readable(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error as one line; a gRPC status as its code, message and any field violations.
fn readable(e: &(dyn std::error::Error + 'static)) -> String {
    let Some(status) = e.downcast_ref::<tonic::Status>() else { return e.to_string() };
    use tonic_types::StatusExt;
    let mut line = format!("{}: {}", status.code().description(), status.message());
    if let Some(bad) = status.get_details_bad_request() {
        for v in bad.field_violations {
            line.push_str(&format!("; {}: {}", v.field, v.description));
        }
    }
    line
}

async fn tour(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bearer: MetadataValue<_> = format!("Bearer {}", args.api_key).parse()?;
    let grpc = Channel::from_shared(args.grpc.clone())?.connect().await?;
    let mut channels = ChannelServiceClient::new(grpc.clone());
    let mut payments = PaymentServiceClient::new(grpc);
    let http = reqwest::Client::new();

    println!("1. CreateChannel (TEST, Paymentwall, pointing at the simulator)");
    let channel = channels
        .create_channel(authed(
            pb::CreateChannelRequest {
                name: "tour".into(),
                provider: pb::Provider::Paymentwall as i32,
                mode: pb::ChannelMode::Test as i32,
                paymentwall: Some(pb::PaymentwallCredentials {
                    project_key: PROJECT_KEY.into(),
                    secret_key: SECRET_KEY.into(),
                    pingback_allowlist: vec!["127.0.0.1/32".into(), "::1/128".into()],
                    api_base_url: args.sim.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &bearer,
        ))
        .await?
        .into_inner();
    println!("   channel_key={} pingback_path={}", channel.channel_key, channel.pingback_path);

    println!("2. Tell the simulator where this project's pingbacks go");
    http.post(format!("{}/control/projects", args.sim))
        .json(&serde_json::json!({
            "key": PROJECT_KEY, "secret": SECRET_KEY,
            "pingback_url": format!("{}{}", args.paygate_http, channel.pingback_path),
        }))
        .send()
        .await?
        .error_for_status()?;

    println!("3. CreateCheckoutSession (USD 9.99)");
    let session = payments
        .create_checkout_session(authed(
            pb::CreateCheckoutSessionRequest {
                channel_key: channel.channel_key.clone(),
                merchant_uid: format!("tour-{}", std::process::id()),
                amount: Some(pb::Money { amount_minor: 999, currency: "USD".into() }),
                order_name: "Gold Membership".into(),
                customer: Some(pb::Customer {
                    uid: "buyer-1".into(),
                    email: "buyer@example.com".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &bearer,
        ))
        .await?
        .into_inner();
    println!("   payment_id={} status=READY\n   redirect_url={}", session.payment_id, session.redirect_url);

    if args.auto_pay {
        println!("4. Open the hosted page and pay (simulator control API)");
        let page = http.get(&session.redirect_url).send().await?.error_for_status()?;
        let sim_session = page.headers().get("x-sim-session").ok_or("no session header")?.to_str()?.to_owned();
        http.post(format!("{}/control/sessions/{sim_session}/pay", args.sim)).send().await?.error_for_status()?;
    } else {
        println!("4. Open redirect_url in a browser and click Pay");
    }

    println!("5. GetPayment until PAID");
    loop {
        let payment = payments
            .get_payment(authed(
                pb::GetPaymentRequest {
                    lookup: Some(pb::get_payment_request::Lookup::PaymentId(session.payment_id.clone())),
                },
                &bearer,
            ))
            .await?
            .into_inner();
        if payment.status == pb::PaymentStatus::Paid as i32 {
            println!("   status=PAID provider_ref={} test={}", payment.provider_ref, payment.test);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
