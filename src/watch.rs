//! `paygate watch`: a small client of WatchPayments. Prints each event as one JSON line and, when
//! the stream ends (server shutdown, falling behind, a dropped connection), reconnects and resumes
//! after the last event it printed, so nothing is missed and nothing is printed twice.

use std::time::Duration;

use clap::Args;
use paygate::proto::v1::{self as pb, payment_service_client::PaymentServiceClient};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

#[derive(Args)]
pub struct WatchArgs {
    /// paygate's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    grpc: String,
    /// An API key. Prefer setting PAYGATE_API_KEY: a flag's value shows in the process list.
    #[arg(long, env = "PAYGATE_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Only these payments (repeatable); their current state is printed first.
    #[arg(long = "payment-id")]
    payment_ids: Vec<String>,
    /// Only these merchant order ids (repeatable).
    #[arg(long = "merchant-uid")]
    merchant_uids: Vec<String>,
    /// Only these subscriptions' payments (repeatable); their current state is printed first.
    #[arg(long = "subscription-id")]
    subscription_ids: Vec<String>,
    /// Start after this event id.
    #[arg(long)]
    resume_after: Option<String>,
    /// Stop after printing this many events (default: never).
    #[arg(long)]
    limit: Option<u64>,
}

pub async fn run(args: WatchArgs) -> Result<(), String> {
    let bearer: MetadataValue<_> =
        format!("Bearer {}", args.api_key).parse().map_err(|_| "the API key is not valid ASCII".to_owned())?;
    let mut cursor = args.resume_after.clone();
    let mut printed = 0u64;
    let mut backoff = MIN_BACKOFF;
    // Said once per outage, not at every retry.
    let mut said_down = false;
    loop {
        let connected = |cursor: &Option<String>| {
            eprintln!(
                "paygate watch: connected to {}; following payment events after {}",
                args.grpc,
                cursor.as_deref().unwrap_or("the current head")
            );
        };
        match follow(&args, &bearer, &mut cursor, &mut printed, connected).await {
            Ok(()) => return Ok(()),
            Err(Ended { status, .. })
                if matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::InvalidArgument) =>
            {
                return Err(readable(&status));
            }
            Err(Ended { status, was_connected }) => {
                if was_connected {
                    backoff = MIN_BACKOFF;
                    said_down = false;
                    eprintln!("paygate watch: the stream ended ({}); resuming", readable(&status));
                } else if !said_down {
                    said_down = true;
                    eprintln!(
                        "paygate watch: cannot reach {} ({}); retrying every {} s at most until it answers",
                        args.grpc,
                        readable(&status),
                        MAX_BACKOFF.as_secs()
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How a connection ended, and whether it had been connected (a stream opened) first.
struct Ended {
    status: tonic::Status,
    was_connected: bool,
}

/// A gRPC status as one line: "unavailable: the server closed the stream".
fn readable(status: &tonic::Status) -> String {
    format!("{}: {}", status.code().description(), status.message())
}

/// One connection: prints events until the stream ends. `Ok` only when `limit` was reached.
async fn follow(
    args: &WatchArgs,
    bearer: &MetadataValue<tonic::metadata::Ascii>,
    cursor: &mut Option<String>,
    printed: &mut u64,
    connected: impl FnOnce(&Option<String>),
) -> Result<(), Ended> {
    let ended = |status| Ended { status, was_connected: false };
    let channel = Channel::from_shared(args.grpc.clone())
        .map_err(|e| ended(tonic::Status::invalid_argument(e.to_string())))?
        .connect()
        .await
        .map_err(|e| ended(tonic::Status::unavailable(e.to_string())))?;
    let mut request = Request::new(pb::WatchPaymentsRequest {
        payment_ids: args.payment_ids.clone(),
        merchant_uids: args.merchant_uids.clone(),
        statuses: vec![],
        resume_after: cursor.clone().unwrap_or_default(),
        subscription_ids: args.subscription_ids.clone(),
    });
    request.metadata_mut().insert("authorization", bearer.clone());
    let mut stream = PaymentServiceClient::new(channel).watch_payments(request).await.map_err(ended)?.into_inner();
    connected(cursor);
    let ended = |status| Ended { status, was_connected: true };
    while let Some(event) = stream.message().await.map_err(ended)? {
        let payment = event.payment.unwrap_or_default();
        let status = pb::PaymentStatus::try_from(payment.status).map(|s| s.as_str_name()).unwrap_or("UNKNOWN");
        // Set when the event changed a subscription (or is its snapshot).
        let subscription_status = event
            .subscription
            .map(|s| pb::SubscriptionStatus::try_from(s.status).map(|s| s.as_str_name()).unwrap_or("UNKNOWN"));
        println!(
            "{}",
            serde_json::json!({
                "event_id": event.event_id,
                "kind": event.kind,
                "snapshot": event.snapshot,
                "payment_id": payment.payment_id,
                "merchant_uid": payment.merchant_uid,
                "status": status,
                "provider_ref": payment.provider_ref,
                "subscription_id": payment.subscription_id,
                "subscription_status": subscription_status,
            })
        );
        // A snapshot's id is the log position it was taken at: resuming after it misses nothing.
        *cursor = Some(event.event_id);
        *printed += 1;
        if args.limit.is_some_and(|limit| *printed >= limit) {
            return Ok(());
        }
    }
    Err(ended(tonic::Status::unavailable("the server closed the stream")))
}
