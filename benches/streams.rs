//! Stream benchmark (not a test): starts release `paygate` processes on PostgreSQL and Redis, and
//! measures
//! - pingback -> stream subscriber latency on one replica and across two (via Redis), p50/p99,
//!   with a bare single-row INSERT transaction measured in the same run as the baseline;
//! - process memory per open stream at 1,000 and 10,000 streams, and the time for one event to
//!   reach all of them.
//!
//! Run: `cargo bench --bench streams` (PostgreSQL at PAYGATE_TEST_POSTGRES_URL or
//! postgres://postgres@127.0.0.1:5432/postgres, Redis at 127.0.0.1:6379). Prints a Markdown report.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The simulator's own signer, for signing pingbacks as Paymentwall does.
#[path = "../src/bin/paymentwall-sim/sim/signature.rs"]
#[allow(dead_code, unused_imports)]
mod sim_signature;

use paygate::proto::v1::{
    self as pb, channel_service_client::ChannelServiceClient, payment_service_client::PaymentServiceClient,
};
use sqlx::{Connection, Executor, PgConnection};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

const SECRET: &str = "a7408723eaf4bfa2e3ac49b3cb695046";
const LATENCY_SAMPLES: usize = 400;

struct Gate {
    child: Child,
    grpc: String,
    http: String,
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gate {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

fn env_base(cmd: &mut Command, db_url: &str, key: &str) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PAYGATE_DATABASE_URL", db_url)
        .env("PAYGATE_MASTER_KEY", key)
        .env("PAYGATE_LOG_LEVEL", "warn,paygate=info");
}

fn start_gate(db_url: &str, key: &str, prefix: &str) -> Gate {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paygate"));
    env_base(&mut cmd, db_url, key);
    cmd.arg("serve")
        .env("PAYGATE_GRPC_ADDR", "127.0.0.1:0")
        .env("PAYGATE_HTTP_ADDR", "127.0.0.1:0")
        .env("PAYGATE_REDIS_URL", "redis://127.0.0.1:6379/")
        .env("PAYGATE_REDIS_KEY_PREFIX", prefix)
        .env("PAYGATE_TRUSTED_PROXIES", "127.0.0.1/32")
        .env("PAYGATE_MAX_STREAMS_PER_MERCHANT", "20000")
        // The load comes from one key; its rate limit is not what is measured.
        .env("PAYGATE_API_RATE_LIMIT_PER_SECOND", "0")
        .env("PAYGATE_DATABASE_MAX_CONNECTIONS", "32")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("paygate binary");
    let stdout = child.stdout.take().unwrap();
    let ready: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
    let seen = ready.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                && json["message"] == "paygate ready"
            {
                *seen.lock().unwrap() = Some(json);
            }
        }
    });
    for _ in 0..600 {
        if let Some(json) = ready.lock().unwrap().clone() {
            return Gate {
                child,
                grpc: format!("http://{}", json["grpc_addr"].as_str().unwrap()),
                http: format!("http://{}", json["http_addr"].as_str().unwrap()),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("paygate did not start");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Client {
    payments: PaymentServiceClient<Channel>,
    bearer: MetadataValue<tonic::metadata::Ascii>,
}

impl Client {
    fn req<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut().insert("authorization", self.bearer.clone());
        r
    }
}

async fn connect(grpc: &str, api_key: &str) -> Client {
    let channel = Channel::from_shared(grpc.to_owned()).unwrap().connect().await.unwrap();
    Client { payments: PaymentServiceClient::new(channel), bearer: format!("Bearer {api_key}").parse().unwrap() }
}

fn pingback_url(gate: &Gate, payment_id: &str, n: usize) -> String {
    let mut params: Vec<(String, String)> = [
        ("uid", "bench-user"),
        ("goodsid", payment_id),
        ("slength", ""),
        ("speriod", ""),
        ("type", "0"),
        ("ref", &format!("b{n}")),
        ("is_test", "1"),
        ("sign_version", "3"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sig = sim_signature::pingback_sig(3, &params, SECRET);
    params.push(("sig".into(), sig));
    let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    format!("{}/pingback/paymentwall/main?{query}", gate.http)
}

async fn checkout(client: &mut Client, uid: &str) -> String {
    let request = client.req(pb::CreateCheckoutSessionRequest {
        channel_key: "main".into(),
        merchant_uid: uid.into(),
        amount: Some(pb::Money { amount_minor: 999, currency: "USD".into() }),
        order_name: "bench".into(),
        customer: Some(pb::Customer { uid: "bench-user".into(), email: String::new() }),
        ..Default::default()
    });
    client.payments.create_checkout_session(request).await.unwrap().into_inner().payment_id
}

/// Pingbacks to `sender`, one at a time; latency until a subscriber on `receiver` sees each, and
/// until the pingback itself was answered `OK` (its transaction committed).
async fn latency(sender: &Gate, receiver: &Gate, api_key: &str, label: &str) -> (Vec<Duration>, Vec<Duration>) {
    let http = reqwest::Client::new();
    let mut on_sender = connect(&sender.grpc, api_key).await;
    let mut on_receiver = connect(&receiver.grpc, api_key).await;
    let request = on_receiver.req(pb::WatchPaymentsRequest::default());
    let mut stream = on_receiver.payments.watch_payments(request).await.unwrap().into_inner();
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = arrivals.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(event)) = stream.message().await {
            seen.lock().unwrap().insert(event.payment.unwrap().payment_id, Instant::now());
        }
    });
    let mut samples = Vec::new();
    let mut answered = Vec::new();
    for n in 0..LATENCY_SAMPLES {
        let payment_id = checkout(&mut on_sender, &format!("{label}-{n}")).await;
        let url = pingback_url(sender, &payment_id, n + label.len() * 100_000);
        let sent = Instant::now();
        let response = http.get(url).send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "OK");
        answered.push(sent.elapsed());
        loop {
            if let Some(at) = arrivals.lock().unwrap().get(&payment_id) {
                samples.push(at.saturating_duration_since(sent));
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    reader.abort();
    samples.sort();
    answered.sort();
    (samples, answered)
}

/// Opens `count` streams (100 per connection), measures the server's RSS growth and the time for
/// one event to reach every stream.
async fn fan_out(gate: &Gate, api_key: &str, count: usize, label: &str) -> (f64, Duration) {
    let before = gate.rss_kib();
    let received = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = Vec::new();
    let mut opened = 0;
    while opened < count {
        let client = connect(&gate.grpc, api_key).await;
        for _ in 0..100.min(count - opened) {
            let mut payments = client.payments.clone();
            let mut stream =
                payments.watch_payments(client.req(pb::WatchPaymentsRequest::default())).await.unwrap().into_inner();
            let received = received.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok(Some(_)) = stream.message().await {
                    received.add_permits(1);
                }
            }));
            opened += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = gate.rss_kib();
    let per_stream_kib = (after.saturating_sub(before)) as f64 / count as f64;
    let mut client = connect(&gate.grpc, api_key).await;
    let payment_id = checkout(&mut client, &format!("fan-{label}")).await;
    let url = pingback_url(gate, &payment_id, 900_000 + count);
    let sent = Instant::now();
    reqwest::get(url).await.unwrap();
    let _all = received.acquire_many(count as u32).await.unwrap();
    let elapsed = sent.elapsed();
    for task in tasks {
        task.abort();
    }
    (per_stream_kib, elapsed)
}

async fn insert_baseline(db_url: &str) -> Vec<Duration> {
    let mut conn = PgConnection::connect(db_url).await.unwrap();
    conn.execute("CREATE TABLE bench_baseline (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)").await.unwrap();
    let mut samples = Vec::new();
    for n in 0..LATENCY_SAMPLES {
        let started = Instant::now();
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("INSERT INTO bench_baseline (body) VALUES ($1)")
            .bind(n.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        samples.push(started.elapsed());
    }
    samples.sort();
    samples
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin_url = std::env::var("PAYGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("paygate_bench_{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut admin = PgConnection::connect(&admin_url).await.expect("PostgreSQL");
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    let base = admin_url.split('?').next().unwrap();
    let db_url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
    let key = paygate::secrets::MasterKeys::generate();
    let prefix = format!("bench{}:", ulid::Ulid::new());

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paygate"));
    env_base(&mut cmd, &db_url, &key);
    let out = cmd.args(["admin", "create-merchant", "--name", "bench"]).output().unwrap();
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("merchant JSON");
    let api_key = created["api_key"].as_str().unwrap().to_owned();

    let a = start_gate(&db_url, &key, &prefix);
    let b = start_gate(&db_url, &key, &prefix);
    let bearer: MetadataValue<_> = format!("Bearer {api_key}").parse().unwrap();
    let mut channels =
        ChannelServiceClient::new(Channel::from_shared(a.grpc.clone()).unwrap().connect().await.unwrap());
    let mut create = Request::new(pb::CreateChannelRequest {
        channel_key: "main".into(),
        name: "bench".into(),
        provider: pb::Provider::Paymentwall as i32,
        mode: pb::ChannelMode::Test as i32,
        paymentwall: Some(pb::PaymentwallCredentials {
            project_key: "c22f895840bf2391f67a40da64bfed26".into(),
            secret_key: SECRET.into(),
            pingback_allowlist: vec!["127.0.0.1/32".into()],
            ..Default::default()
        }),
        ..Default::default()
    });
    create.metadata_mut().insert("authorization", bearer);
    channels.create_channel(create).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let baseline = insert_baseline(&db_url).await;
    let (same, answered) = latency(&a, &a, &api_key, "same").await;
    let (across, _) = latency(&a, &b, &api_key, "across").await;
    let (kib_1k, fan_1k) = fan_out(&b, &api_key, 1_000, "1k").await;
    let (kib_10k, fan_10k) = fan_out(&a, &api_key, 10_000, "10k").await;

    println!("| measurement | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| baseline: bare single-row INSERT transaction (sqlx, same database) | {} | {} |",
        ms(percentile(&baseline, 0.5)),
        ms(percentile(&baseline, 0.99))
    );
    println!(
        "| pingback answered `OK` (verify, transaction, commit) | {} | {} |",
        ms(percentile(&answered, 0.5)),
        ms(percentile(&answered, 0.99))
    );
    println!(
        "| pingback -> subscriber, same replica | {} | {} |",
        ms(percentile(&same, 0.5)),
        ms(percentile(&same, 0.99))
    );
    println!(
        "| pingback on A -> subscriber on B (Redis) | {} | {} |",
        ms(percentile(&across, 0.5)),
        ms(percentile(&across, 0.99))
    );
    println!();
    println!("| open streams | server memory per stream | one event to all streams |");
    println!("|---|---|---|");
    println!("| 1,000 | {kib_1k:.1} KiB | {} |", ms(fan_1k));
    println!("| 10,000 | {kib_10k:.1} KiB | {} |", ms(fan_10k));
    println!();
    println!("samples: {LATENCY_SAMPLES} sequential pingbacks per latency row");

    drop(a);
    drop(b);
    let _ = admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
}
