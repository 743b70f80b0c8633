//! The project's benchmark tool (not a test): `cargo bench --bench gateway`.
//!
//! On a fresh PostgreSQL database it starts release `paygate serve` processes (two, sharing the
//! local Redis) and the baselines, and measures, interleaving paygate and baseline rounds so that
//! drift hits both:
//! - CreateCheckoutSession throughput and p99 at 64 concurrent callers, against a bare tonic server
//!   (this same executable, started as a separate process) whose checkout is one single-row INSERT
//!   through a sqlx pool of the same size;
//! - pingback ingest (signed type 0 -> PAID, answered OK) at 64 concurrent senders, against 64
//!   clients each running a one-INSERT transaction (pgbench's shape, through sqlx);
//! - pingback -> WatchPayments subscriber p99, on one replica and across two (via Redis), against
//!   a Redis PUBLISH -> subscriber round trip, with a lone one-INSERT transaction's latency for
//!   reference (an event cannot reach a subscriber before its transaction commits);
//! - 10,000 open streams: server memory per stream and one event to all of them, against a bare
//!   tonic server sending the same event to 10,000 streams of its own;
//! - with `PAYGATE_BENCH_LARGE=1` (or `PAYGATE_BENCH_ONLY=large`), the same checkout and ingest
//!   rounds on a database seeded with 10 million payments (`paygate dev seed`, once, kept as
//!   `paygate_bench_large`) beside the empty one, ListPayments per filter, a stream resumed 10
//!   million events back, and the storage a payment's life costs, table by table.
//!
//! It reports the CPU the load generator (this process) used, so nobody mistakes it for the
//! bottleneck. PostgreSQL: PAYGATE_TEST_POSTGRES_URL or postgres://postgres@127.0.0.1:5432/postgres;
//! Redis: 127.0.0.1:6379. Prints a Markdown report.

use std::{
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
    self as pb,
    channel_service_client::ChannelServiceClient,
    payment_service_client::PaymentServiceClient,
    payment_service_server::{PaymentService, PaymentServiceServer},
};
use sqlx::{Connection, Executor, PgConnection, postgres::PgPoolOptions};
use tonic::{Request, Response, Status, metadata::MetadataValue, transport::Channel};

const SECRET: &str = "a7408723eaf4bfa2e3ac49b3cb695046";
const LATENCY_SAMPLES: usize = 400;
/// Unmeasured pingbacks before each latency row: each of the pool's connections prepares the
/// pingback's statement on first use and plans it anew for its first five runs (PostgreSQL's
/// custom plans), and sequential pingbacks take the connections in turn.
const LATENCY_WARMUP: usize = 100;
const CONCURRENCY: usize = 64;
const ROUNDS: usize = 3;
const ROUND_TIME: Duration = Duration::from_secs(5);
const PINGBACKS_PER_ROUND: usize = 3_000;
/// paygate's default `PAYGATE_DATABASE_MAX_CONNECTIONS`; the bare server gets the same.
const POOL_SIZE: u32 = 16;
/// Who runs this executable: the benchmark, or (with this variable) the bare baseline server.
const ROLE: &str = "PAYGATE_BENCH_ROLE";

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn rss_kib(&self) -> u64 {
        proc_status_field(self.child.id(), "VmRSS:")
    }

    fn cpu(&self) -> Duration {
        cpu_of(&format!("/proc/{}/stat", self.child.id()))
    }
}

fn proc_status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with(field));
    line.and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// User + system CPU time of a process, from `/proc/<pid>/stat` (clock ticks of 10 ms).
fn cpu_of(stat_path: &str) -> Duration {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // After the parenthesised command name: state, ppid, ... with utime and stime 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((tick(11) + tick(12)) * 10)
}

fn own_cpu() -> Duration {
    cpu_of("/proc/self/stat")
}

/// CPU used so far by each PostgreSQL process on this machine (the server's backends included), by
/// process id.
fn postgres_cpu() -> std::collections::HashMap<String, Duration> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Default::default() };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), run_time_of(&e.path().join("schedstat"))))
        .collect()
}

/// Time on a CPU of a single-threaded process, in nanoseconds (`/proc/<pid>/schedstat`): a
/// backend of the floor's 64 runs for a few milliseconds a round, below `stat`'s 10 ms ticks.
fn run_time_of(schedstat: &std::path::Path) -> Duration {
    let text = std::fs::read_to_string(schedstat).unwrap_or_default();
    Duration::from_nanos(text.split_whitespace().next().and_then(|ns| ns.parse().ok()).unwrap_or(0))
}

/// PostgreSQL CPU since `before`, per process, so that a backend exiting during the round (the
/// previous round's pool closing) does not take its earlier CPU out of the sum. A process that
/// exits during the round takes its CPU of the round with it: rounds keep their connections.
fn postgres_cpu_since(before: &std::collections::HashMap<String, Duration>) -> Duration {
    postgres_cpu().into_iter().map(|(pid, now)| now.saturating_sub(before.get(&pid).copied().unwrap_or_default())).sum()
}

struct Gate {
    proc: Proc,
    grpc: String,
    http: String,
}

fn env_base(cmd: &mut Command, db_url: &str, key: &str) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PAYGATE_DATABASE_URL", db_url)
        .env("PAYGATE_MASTER_KEY", key)
        .env("PAYGATE_LOG_LEVEL", "warn,paygate=info");
}

/// The `paygate` this build made, or another (`PAYGATE_BENCH_PAYGATE`: an earlier release's, for a
/// before-and-after on the same host with the same harness).
fn paygate_exe() -> String {
    std::env::var("PAYGATE_BENCH_PAYGATE").unwrap_or_else(|_| env!("CARGO_BIN_EXE_paygate").to_owned())
}

/// Starts `cmd` and waits for its JSON "ready" line, which names its addresses.
fn start_until_ready(mut cmd: Command, ready_message: &'static str) -> (Proc, serde_json::Value) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().expect("start process");
    let stdout = child.stdout.take().unwrap();
    let ready: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
    let seen = ready.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                && json["message"] == ready_message
            {
                *seen.lock().unwrap() = Some(json);
            }
        }
    });
    for _ in 0..600 {
        if let Some(json) = ready.lock().unwrap().clone() {
            return (Proc { child }, json);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(Proc { child });
    panic!("{ready_message:?} never came");
}

fn start_gate(db_url: &str, key: &str, prefix: &str) -> Gate {
    let mut cmd = Command::new(paygate_exe());
    env_base(&mut cmd, db_url, key);
    cmd.arg("serve")
        .env("PAYGATE_GRPC_ADDR", "127.0.0.1:0")
        .env("PAYGATE_HTTP_ADDR", "127.0.0.1:0")
        .env("PAYGATE_REDIS_URL", "redis://127.0.0.1:6379/")
        .env("PAYGATE_REDIS_KEY_PREFIX", prefix)
        .env("PAYGATE_MAX_STREAMS_PER_MERCHANT", "20000")
        // The load comes from one key; its rate limit is not what is measured.
        .env("PAYGATE_API_RATE_LIMIT_PER_SECOND", "0")
        .env("PAYGATE_API_MERCHANT_RATE_LIMIT_PER_SECOND", "0")
        .env("PAYGATE_PINGBACK_REFUSAL_RATE_PER_SECOND", "0")
        // The storage rows deliver webhooks to a receiver on loopback.
        .env("PAYGATE_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
        .env("PAYGATE_WEBHOOK_POLL_INTERVAL_MS", "100");
    let (proc, json) = start_until_ready(cmd, "paygate ready");
    Gate {
        proc,
        grpc: format!("http://{}", json["grpc_addr"].as_str().unwrap()),
        http: format!("http://{}", json["http_addr"].as_str().unwrap()),
    }
}

// ---- the bare baseline server: a tonic PaymentService whose checkout is one INSERT ----

struct Bare {
    pool: sqlx::PgPool,
    /// The fan-out floor: `GetPayment` sends this event (paygate's own, as a subscriber got it) to
    /// every open `WatchPayments` stream.
    event: Option<pb::PaymentEvent>,
    streams: tokio::sync::broadcast::Sender<pb::PaymentEvent>,
    /// `Some(merchant)`: the same INSERT paygate makes (every column of a `payments` row, its
    /// indexes and foreign keys, for this merchant's channel "main"); `None`: a four-column row.
    same_insert_for: Option<String>,
}

/// paygate's INSERT of a new payment, as the bare server makes it.
const SAME_INSERT: &str = "INSERT INTO payments (payment_id, merchant_id, channel_key, merchant_uid, amount_minor, \
    currency, order_name, customer_uid, customer_email, payment_method, widget, success_url, failure_url, country_code, \
    language, custom_params, status, provider_ref, is_test, redirect_url, subscription_id, cancelled_amount, \
    pending_cancel_amount, version, created_at, updated_at, paid_at, failed_at, cancelled_at) VALUES ($1, $2, 'main', \
    $3, $4, $5, $6, $7, '', 'all', '', '', '', '', '', '{}', 'READY', NULL, 0, $8, NULL, 0, 0, 1, $9, $9, NULL, NULL, NULL)";

#[tonic::async_trait]
impl PaymentService for Bare {
    async fn create_checkout_session(
        &self,
        request: Request<pb::CreateCheckoutSessionRequest>,
    ) -> Result<Response<pb::CheckoutSession>, Status> {
        let r = request.into_inner();
        let payment_id = format!("pay_{}", ulid::Ulid::new());
        let amount = r.amount.unwrap_or_default();
        let query = match &self.same_insert_for {
            Some(merchant_id) => {
                // A hosted-page URL of the length paygate signs.
                let redirect_url = format!(
                    "https://api.paymentwall.com/api/subscription?key=c22f895840bf2391f67a40da64bfed26&uid={}\
                     &widget=p1_1&amount={}&currencyCode={}&ag_name={}&ag_external_id={payment_id}&sign_version=3\
                     &sign=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                    r.customer.as_ref().map_or("", |c| c.uid.as_str()),
                    amount.amount_minor,
                    amount.currency,
                    r.order_name
                );
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
                sqlx::query(SAME_INSERT)
                    .bind(payment_id.clone())
                    .bind(merchant_id.clone())
                    .bind(r.merchant_uid.clone())
                    .bind(amount.amount_minor)
                    .bind(amount.currency.clone())
                    .bind(r.order_name.clone())
                    .bind(r.customer.map(|c| c.uid).unwrap_or_default())
                    .bind(redirect_url.clone())
                    .bind(now)
            }
            None => sqlx::query(
                "INSERT INTO bench_checkout (payment_id, merchant_uid, amount_minor, currency) VALUES ($1, $2, $3, $4)",
            )
            .bind(payment_id.clone())
            .bind(r.merchant_uid.clone())
            .bind(amount.amount_minor)
            .bind(amount.currency.clone()),
        };
        query.execute(&self.pool).await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::CheckoutSession { payment_id, ..Default::default() }))
    }

    async fn get_payment(&self, _: Request<pb::GetPaymentRequest>) -> Result<Response<pb::Payment>, Status> {
        let event = self.event.clone().ok_or_else(|| Status::unimplemented("bare: no event to send"))?;
        let _ = self.streams.send(event);
        Ok(Response::new(pb::Payment::default()))
    }

    async fn list_payments(
        &self,
        _: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn refund_payment(&self, _: Request<pb::RefundPaymentRequest>) -> Result<Response<pb::Cancellation>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn resolve_cancellation(
        &self,
        _: Request<pb::ResolveCancellationRequest>,
    ) -> Result<Response<pb::Cancellation>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn cancel_subscription(
        &self,
        _: Request<pb::CancelSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn get_subscription(
        &self,
        _: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn list_subscriptions(
        &self,
        _: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn list_payment_methods(
        &self,
        _: Request<pb::ListPaymentMethodsRequest>,
    ) -> Result<Response<pb::ListPaymentMethodsResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn create_payment_client_token(
        &self,
        _: Request<pb::CreatePaymentClientTokenRequest>,
    ) -> Result<Response<pb::PaymentClientToken>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn erase_customer(
        &self,
        _: Request<pb::EraseCustomerRequest>,
    ) -> Result<Response<pb::EraseCustomerResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn confirm_delivery(&self, _: Request<pb::ConfirmDeliveryRequest>) -> Result<Response<pb::Delivery>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn sync_payment(
        &self,
        _: Request<pb::SyncPaymentRequest>,
    ) -> Result<Response<pb::SyncPaymentResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }

    type WatchPaymentsStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pb::PaymentEvent, Status>> + Send>>;

    /// Each event `GetPayment` sends, as it is: no filter, no conversion, no credential check.
    async fn watch_payments(
        &self,
        _: Request<pb::WatchPaymentsRequest>,
    ) -> Result<Response<Self::WatchPaymentsStream>, Status> {
        let events = self.streams.subscribe();
        let stream = futures_util::stream::unfold(events, |mut events| async move {
            let event = events.recv().await.ok()?;
            Some((Ok(event), events))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_payment_events(
        &self,
        _: Request<pb::ListPaymentEventsRequest>,
    ) -> Result<Response<pb::ListPaymentEventsResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
}

async fn run_bare_server() {
    let db_url = std::env::var("PAYGATE_DATABASE_URL").expect("database");
    // As paygate's pool: no ping before each acquire.
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .test_before_acquire(false)
        .connect(&db_url)
        .await
        .expect("pool");
    let same_insert_for = std::env::var("PAYGATE_BENCH_MERCHANT_ID").ok();
    let event = std::env::var("PAYGATE_BENCH_EVENT_FILE").ok().map(|path| {
        use prost::Message;
        pb::PaymentEvent::decode(std::fs::read(path).expect("event file").as_slice()).expect("an encoded PaymentEvent")
    });
    let (streams, _) = tokio::sync::broadcast::channel(16);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    println!("{}", serde_json::json!({ "message": "bare ready", "grpc_addr": addr.to_string() }));
    tonic::transport::Server::builder()
        .add_service(PaymentServiceServer::new(Bare { pool, same_insert_for, event, streams }))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .unwrap();
}

/// The bare server; with `same_insert_for`, making paygate's own INSERT for that merchant.
fn start_bare(db_url: &str, same_insert_for: Option<&str>) -> (Proc, String) {
    start_bare_with(db_url, same_insert_for, None)
}

/// The bare server; with `event_file`, sending that encoded event to its streams on `GetPayment`.
fn start_bare_with(
    db_url: &str,
    same_insert_for: Option<&str>,
    event_file: Option<&std::path::Path>,
) -> (Proc, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env_clear().env(ROLE, "bare-server").env("PAYGATE_DATABASE_URL", db_url);
    if let Some(merchant_id) = same_insert_for {
        cmd.env("PAYGATE_BENCH_MERCHANT_ID", merchant_id);
    }
    if let Some(path) = event_file {
        cmd.env("PAYGATE_BENCH_EVENT_FILE", path);
    }
    let (proc, json) = start_until_ready(cmd, "bare ready");
    (proc, format!("http://{}", json["grpc_addr"].as_str().unwrap()))
}

// ---- measuring ----

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[derive(Clone)]
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
    let channel = Channel::from_shared(grpc.to_owned()).unwrap().tcp_nodelay(true).connect().await.unwrap();
    Client { payments: PaymentServiceClient::new(channel), bearer: format!("Bearer {api_key}").parse().unwrap() }
}

fn checkout_request(uid: &str) -> pb::CreateCheckoutSessionRequest {
    pb::CreateCheckoutSessionRequest {
        channel_key: "main".into(),
        merchant_uid: uid.into(),
        amount: Some(pb::Money { amount_minor: 999, currency: "USD".into() }),
        order_name: "bench".into(),
        customer: Some(pb::Customer { uid: "bench-user".into(), email: String::new(), ..Default::default() }),
        ..Default::default()
    }
}

async fn checkout(client: &mut Client, uid: &str) -> String {
    let request = client.req(checkout_request(uid));
    client.payments.create_checkout_session(request).await.unwrap().into_inner().payment_id
}

fn pingback_url(gate: &Gate, payment_id: &str, reference: &str) -> String {
    pingback_url_of(&gate.http, payment_id, reference, "0", "")
}

/// A signed pingback of `kind` (with `reason`, when not empty) to the paygate at `http`.
fn pingback_url_of(http: &str, payment_id: &str, reference: &str, kind: &str, reason: &str) -> String {
    let mut params: Vec<(String, String)> = [
        ("uid", "bench-user"),
        ("goodsid", payment_id),
        ("slength", ""),
        ("speriod", ""),
        ("type", kind),
        ("ref", reference),
        ("is_test", "1"),
        ("sign_version", "3"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if !reason.is_empty() {
        params.push(("reason".into(), reason.into()));
    }
    let sig = sim_signature::pingback_sig(3, &params, SECRET);
    params.push(("sig".into(), sig));
    let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    format!("{http}/pingback/paymentwall/main?{query}")
}

/// One round's result: how many, in how long, each one's latency, and the load generator's CPU.
#[derive(Default)]
struct Round {
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    generator_cpu: Duration,
    server_cpu: Duration,
    postgres_cpu: Duration,
    /// Event-log reads by both replicas' tailers during the round.
    log_reads: f64,
    /// Pingbacks of the round settled by one statement (from a copy), over both replicas.
    one_statement: f64,
}

/// CPU counters at a round's start, and the clock.
struct Meter<'a> {
    started: Instant,
    servers: Vec<&'a Proc>,
    generator: Duration,
    server_cpu: Duration,
    postgres: std::collections::HashMap<String, Duration>,
}

impl<'a> Meter<'a> {
    /// Counts the CPU of `servers` (summed) besides the load generator's and PostgreSQL's.
    fn start(servers: &[&'a Proc]) -> Self {
        let server_cpu = servers.iter().map(|proc| proc.cpu()).sum();
        Self {
            started: Instant::now(),
            servers: servers.to_vec(),
            generator: own_cpu(),
            server_cpu,
            postgres: postgres_cpu(),
        }
    }

    /// Waits for every caller's latencies, then reads what the round cost.
    async fn finish(self, tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>) -> Round {
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        Round {
            count: latencies.len(),
            elapsed: self.started.elapsed(),
            latencies,
            generator_cpu: own_cpu().saturating_sub(self.generator),
            server_cpu: self.servers.iter().map(|proc| proc.cpu()).sum::<Duration>().saturating_sub(self.server_cpu),
            // The tool assumes a machine where only the benchmark uses PostgreSQL.
            postgres_cpu: postgres_cpu_since(&self.postgres),
            log_reads: 0.0,
            one_statement: 0.0,
        }
    }
}

/// Totals over rounds of one side of a comparison.
#[derive(Default)]
struct Side {
    rounds: Vec<Round>,
}

impl Side {
    fn per_second(&self) -> f64 {
        let count: usize = self.rounds.iter().map(|r| r.count).sum();
        let secs: f64 = self.rounds.iter().map(|r| r.elapsed.as_secs_f64()).sum();
        count as f64 / secs
    }

    fn p99(&self) -> Duration {
        let mut all: Vec<Duration> = self.rounds.iter().flat_map(|r| r.latencies.iter().copied()).collect();
        all.sort();
        percentile(&all, 0.99)
    }

    /// Blank for a side that did not run (`PAYGATE_BENCH_ONLY`).
    fn generator_cpu_share(&self) -> String {
        let cpu: f64 = self.rounds.iter().map(|r| r.generator_cpu.as_secs_f64()).sum();
        let wall: f64 = self.rounds.iter().map(|r| r.elapsed.as_secs_f64()).sum();
        if wall > 0.0 { format!("{:.0}%", cpu / wall * 100.0) } else { String::new() }
    }

    fn per_request(&self, cpu: impl Fn(&Round) -> Duration) -> String {
        let total: f64 = self.rounds.iter().map(|r| cpu(r).as_secs_f64()).sum();
        let count: usize = self.rounds.iter().map(|r| r.count).sum();
        if count > 0 { format!("{:.0} µs", total / count as f64 * 1e6) } else { String::new() }
    }
}

/// 64 callers, each calling CreateCheckoutSession in a loop for `ROUND_TIME`, over 8 connections.
async fn checkout_round(grpc: &str, api_key: &str, label: &str, server: &Proc) -> Round {
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(connect(grpc, api_key).await);
    }
    let meter = Meter::start(&[server]);
    let started = meter.started;
    let mut tasks = Vec::new();
    for caller in 0..CONCURRENCY {
        let mut client = clients[caller % clients.len()].clone();
        let label = format!("{label}-{caller}");
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while started.elapsed() < ROUND_TIME {
                let sent = Instant::now();
                let request = client.req(checkout_request(&format!("{label}-{n}")));
                client.payments.create_checkout_session(request).await.expect("checkout");
                latencies.push(sent.elapsed());
                n += 1;
            }
            latencies
        }));
    }
    meter.finish(tasks).await
}

/// `PINGBACKS_PER_ROUND` signed type 0 pingbacks for fresh payments made on `gate`, 64 at a time,
/// sent in turn to each of `senders` (a load balancer's spread); each must be answered OK.
async fn ingest_round(gate: &Gate, gates: &[&Gate], senders: &[&Gate], api_key: &str, label: &str) -> Round {
    let mut urls = Vec::new();
    for (n, id) in fresh_payments(gate, api_key, label).await.into_iter().enumerate() {
        urls.push(pingback_url(senders[n % senders.len()], &id, &format!("r{id}")));
    }
    let urls = Arc::new(Mutex::new(urls));
    let http = reqwest::Client::builder().tcp_nodelay(true).build().unwrap();
    let reads_before = log_reads(gates).await;
    let one_statement_before = summed(gates, "paygate_pingbacks_settled_in_one_statement_total").await;
    perf_control("enable");
    let meter = Meter::start(&gates.iter().map(|gate| &gate.proc).collect::<Vec<_>>());
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (urls, http) = (urls.clone(), http.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some(url) = urls.lock().unwrap().pop() else { break };
                let sent = Instant::now();
                let answer = http.get(url).send().await.expect("pingback sent");
                assert_eq!(answer.text().await.unwrap(), "OK", "every pingback is applied");
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut round = meter.finish(tasks).await;
    perf_control("disable");
    round.log_reads = log_reads(gates).await - reads_before;
    round.one_statement =
        summed(gates, "paygate_pingbacks_settled_in_one_statement_total").await - one_statement_before;
    round
}

/// With `PAYGATE_BENCH_PERF_CONTROL` naming the control FIFO of a `perf record --control
/// fifo:<path> -D -1` (started disabled), profiles only paygate's ingest rounds, not the payments
/// they start from nor the baselines.
fn perf_control(command: &str) {
    if let Ok(fifo) = std::env::var("PAYGATE_BENCH_PERF_CONTROL") {
        let _ = std::fs::write(fifo, format!("{command}\n"));
    }
}

/// `PINGBACKS_PER_ROUND` new READY payments, made by checkouts on `gate`.
async fn fresh_payments(gate: &Gate, api_key: &str, label: &str) -> Vec<String> {
    let client = connect(&gate.grpc, api_key).await;
    let mut creating = Vec::new();
    for caller in 0..CONCURRENCY {
        let mut client = client.clone();
        let label = format!("{label}-{caller}");
        creating.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..PINGBACKS_PER_ROUND / CONCURRENCY {
                ids.push(checkout(&mut client, &format!("{label}-{n}")).await);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in creating {
        ids.extend(task.await.unwrap());
    }
    ids
}

/// The pingback's transaction alone: paygate's own notification ingest (with its batch layer) called from here, 64
/// at a time through a pool of paygate's size, with no HTTP, signature, or log line. What the
/// database work of a pingback allows on this machine.
async fn transaction_round(gate: &Gate, db_url: &str, api_key: &str, label: &str) -> Round {
    use paygate::payments::{
        PaymentOutcome, batch,
        flows::notification,
        provider::{Notice, ProviderEvent, RawNotification},
    };
    let settings =
        paygate::store::PoolSettings { max_connections: POOL_SIZE, acquire_timeout: Duration::from_secs(30) };
    let db = paygate::store::Db::connect(db_url, &settings).await.unwrap();
    let notifications = batch::writers(&db, POOL_SIZE as usize / 4).notifications;
    let ids = Arc::new(Mutex::new(fresh_payments(gate, api_key, label).await));
    let meter = Meter::start(&[]);
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (ids, notifications) = (ids.clone(), notifications.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some(payment_id) = ids.lock().unwrap().pop() else { break };
                let provider_ref = format!("t{payment_id}");
                let raw = RawNotification {
                    channel_key: "main".into(),
                    provider_ref: provider_ref.clone(),
                    kind: 0,
                    unique_ref: String::new(),
                    query: format!("uid=bench-user&goodsid={payment_id}&type=0&ref={provider_ref}&is_test=1&sign_version=3&sig=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
                };
                let notice = Notice {
                    payment_id,
                    provider_ref,
                    event: ProviderEvent::Payment(PaymentOutcome::Completed),
                    test: true,
                };
                let sent = Instant::now();
                let applied = notifications.ingest(raw, notice).await.expect("applied");
                assert!(matches!(applied, notification::Applied::Changed { .. }), "every one moves its payment");
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let round = meter.finish(tasks).await;
    db.close().await;
    round
}

/// Waits until the tailers of `gates` have stopped delivering events (none for a second).
async fn caught_up(gates: &[&Gate]) {
    let mut last = -1.0;
    loop {
        let mut delivered = 0.0;
        for gate in gates {
            delivered += metric(gate, "paygate_events_delivered_total").await;
        }
        if delivered == last {
            return;
        }
        last = delivered;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A counter of `gate`'s /metrics (0 before its first increment).
async fn metric(gate: &Gate, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", gate.http)).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// `paygate_event_log_reads_total` summed over `gates`.
async fn log_reads(gates: &[&Gate]) -> f64 {
    summed(gates, "paygate_event_log_reads_total").await
}

/// A counter summed over `gates`.
async fn summed(gates: &[&Gate], name: &str) -> f64 {
    let mut total = 0.0;
    for gate in gates {
        total += metric(gate, name).await;
    }
    total
}

/// The floor's transaction: BEGIN; one single-row INSERT; COMMIT.
async fn one_insert_transaction(conn: &mut PgConnection) {
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO bench_baseline (body) VALUES ($1)").bind("x").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

/// pgbench's shape: 64 clients, each on its own connection, each running BEGIN; one INSERT;
/// COMMIT, `PINGBACKS_PER_ROUND` in all.
async fn insert_round(db_url: &str) -> Round {
    let pool = PgPoolOptions::new().max_connections(CONCURRENCY as u32).connect(db_url).await.unwrap();
    // Connected before the clock starts, as pgbench reports "without initial connection time":
    // 64 TLS handshakes and backend starts inside a one-second round would halve the floor.
    let mut conns = Vec::new();
    for _ in 0..CONCURRENCY {
        conns.push(pool.acquire().await.unwrap());
    }
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(PINGBACKS_PER_ROUND));
    let meter = Meter::start(&[]);
    let mut tasks = Vec::new();
    for mut conn in conns {
        let left = left.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while left
                .fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |n| {
                    n.checked_sub(1)
                })
                .is_ok()
            {
                let sent = Instant::now();
                one_insert_transaction(&mut conn).await;
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    // Measured before closing: a backend's CPU leaves /proc with it.
    let round = meter.finish(tasks).await;
    pool.close().await;
    round
}

/// pgbench itself, on the floor's transaction (BEGIN; one INSERT; COMMIT), 64 clients on 2
/// threads, about as many transactions as a round: its tps "without initial connection time".
/// `None` when pgbench is not installed; the sqlx floor is the baseline either way.
fn pgbench_round(db_url: &str) -> Option<f64> {
    let script = std::env::temp_dir().join(format!("paygate-bench-{}.sql", std::process::id()));
    std::fs::write(&script, "BEGIN;\nINSERT INTO bench_baseline (body) VALUES ('x');\nCOMMIT;\n").ok()?;
    let per_client = (PINGBACKS_PER_ROUND / CONCURRENCY).to_string();
    let output = std::process::Command::new("pgbench")
        .args(["-n", "-c", &CONCURRENCY.to_string(), "-j", "2", "-t", &per_client, "-f"])
        .arg(&script)
        .arg(db_url)
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&script);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
}

/// Pingbacks to `sender`, one at a time; latency until a subscriber on `receiver` sees each.
async fn stream_latency(sender: &Gate, receiver: &Gate, api_key: &str, label: &str) -> Latencies {
    let http = reqwest::Client::builder().tcp_nodelay(true).build().unwrap();
    let mut on_sender = connect(&sender.grpc, api_key).await;
    let mut on_receiver = connect(&receiver.grpc, api_key).await;
    let (reader, mut arrivals) = arrivals(&mut on_receiver).await;
    let mut samples = Latencies::default();
    for n in 0..LATENCY_WARMUP + LATENCY_SAMPLES {
        let payment_id = checkout(&mut on_sender, &format!("{label}-{n}")).await;
        let url = pingback_url(sender, &payment_id, &format!("{label}{n}"));
        let sent = Instant::now();
        let response = http.get(url).send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "OK");
        if n >= LATENCY_WARMUP {
            samples.answered.push(sent.elapsed());
        }
        let at = arrival_of(&mut arrivals, &payment_id).await;
        if n >= LATENCY_WARMUP {
            samples.delivered.push(at.saturating_duration_since(sent));
        }
    }
    reader.abort();
    samples.answered.sort();
    samples.delivered.sort();
    samples
}

/// A merchant-wide stream on `client`, read by a task that reports each event's payment and when
/// it arrived. The waiter sleeps until an event arrives: a spinning waiter would take a core from
/// the servers it measures.
async fn arrivals(
    client: &mut Client,
) -> (tokio::task::JoinHandle<()>, tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>) {
    let request = client.req(pb::WatchPaymentsRequest::default());
    let mut stream = client.payments.watch_payments(request).await.unwrap().into_inner();
    let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    let _ = arrived.send((event.payment.unwrap().payment_id, Instant::now()));
                }
                Ok(None) => break eprintln!("the stream ended"),
                Err(status) => break eprintln!("the stream failed: {status}"),
            }
        }
    });
    (reader, arrivals)
}

/// When the event of `payment_id` arrived (earlier events are skipped).
async fn arrival_of(
    arrivals: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    payment_id: &str,
) -> Instant {
    loop {
        let (id, at) = arrivals.recv().await.expect("the stream stays open");
        if id == payment_id {
            return at;
        }
    }
}

/// How long the unrelated transaction of the horizon rows stays open, and how many pingbacks each
/// row sends while one is.
const UNRELATED_HOLD: Duration = Duration::from_secs(5);
const UNRELATED_TRIALS: usize = 10;

/// Each of `UNRELATED_TRIALS` pingbacks is sent on `gate` just after a transaction that has
/// nothing to do with paygate wrote a table of its own in `unrelated_url`'s database (another
/// database of the cluster, or paygate's own), which commits `UNRELATED_HOLD` later: the time until
/// a subscriber has each event. Sorted.
async fn unrelated_stall(gate: &Gate, api_key: &str, unrelated_url: &str, label: &str) -> Vec<Duration> {
    let http = reqwest::Client::builder().tcp_nodelay(true).build().unwrap();
    let mut client = connect(&gate.grpc, api_key).await;
    let (reader, mut arrivals) = arrivals(&mut client).await;
    let mut delays = Vec::new();
    for n in 0..UNRELATED_TRIALS {
        let payment_id = checkout(&mut client, &format!("{label}-{n}")).await;
        let mut unrelated = PgConnection::connect(unrelated_url).await.unwrap();
        // A table of the session's own: nothing is left behind in either database.
        unrelated.execute("CREATE TEMPORARY TABLE nightly_batch (n BIGINT)").await.unwrap();
        let (holding, held) = tokio::sync::oneshot::channel();
        let holder = tokio::spawn(async move {
            let mut tx = unrelated.begin().await.unwrap();
            sqlx::query("INSERT INTO nightly_batch VALUES (1)").execute(&mut *tx).await.unwrap();
            let _ = holding.send(());
            tokio::time::sleep(UNRELATED_HOLD).await;
            tx.commit().await.unwrap();
        });
        held.await.unwrap();
        let sent = Instant::now();
        let url = pingback_url(gate, &payment_id, &format!("{label}{n}"));
        assert_eq!(http.get(url).send().await.unwrap().text().await.unwrap(), "OK");
        delays.push(arrival_of(&mut arrivals, &payment_id).await.saturating_duration_since(sent));
        holder.await.unwrap();
    }
    reader.abort();
    delays.sort();
    delays
}

/// Sorted latencies of sequential pingbacks: until answered OK, and until the subscriber had the event.
#[derive(Default)]
struct Latencies {
    answered: Vec<Duration>,
    delivered: Vec<Duration>,
}

/// The cross-replica floor: PUBLISH on one Redis connection -> a subscriber on another.
async fn redis_round_trip(prefix: &str) -> Vec<Duration> {
    let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    let channel = format!("{prefix}bench-rtt");
    pubsub.subscribe(&channel).await.unwrap();
    let mut messages = pubsub.into_on_message();
    let mut samples = Vec::new();
    for n in 0..LATENCY_SAMPLES {
        let sent = Instant::now();
        let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(n).query_async(&mut publisher).await.unwrap();
        use futures_util::StreamExt;
        messages.next().await.unwrap();
        samples.push(sent.elapsed());
    }
    samples.sort();
    samples
}

/// What makes the one event of a fan-out: a pingback to paygate, or `GetPayment` on the bare server.
enum Sends<'a> {
    Pingback(&'a Gate),
    BareEvent,
}

/// One fan-out: the server's memory per open stream, the time for one event to reach every
/// stream, and that event as the first stream received it.
struct FanOut {
    bytes_per_stream: f64,
    elapsed: Duration,
    /// The server's CPU from sending the event until every stream had it.
    server_cpu: Duration,
    event: Option<pb::PaymentEvent>,
}

/// Opens `count` streams (100 per connection) on `grpc` (served by `server`), measures the
/// server's RSS growth and the time for one event to reach every stream.
async fn fan_out(grpc: &str, server: &Proc, api_key: &str, count: usize, sends: Sends<'_>) -> FanOut {
    let before = server.rss_kib();
    let received = Arc::new(tokio::sync::Semaphore::new(0));
    let (first, first_event) = tokio::sync::oneshot::channel();
    let mut first = Some(first);
    let mut tasks = Vec::new();
    let mut opened = 0;
    while opened < count {
        let client = connect(grpc, api_key).await;
        for _ in 0..100.min(count - opened) {
            let mut payments = client.payments.clone();
            let mut stream =
                payments.watch_payments(client.req(pb::WatchPaymentsRequest::default())).await.unwrap().into_inner();
            let received = received.clone();
            let mut first = first.take();
            tasks.push(tokio::spawn(async move {
                while let Ok(Some(event)) = stream.message().await {
                    if let Some(first) = first.take() {
                        let _ = first.send(event);
                    }
                    received.add_permits(1);
                }
            }));
            opened += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kib();
    let bytes_per_stream = (after.saturating_sub(before)) as f64 * 1024.0 / count as f64;
    let mut client = connect(grpc, api_key).await;
    let cpu_before = server.cpu();
    let sent = match sends {
        Sends::Pingback(gate) => {
            let payment_id = checkout(&mut client, "fan-out").await;
            let url = pingback_url(gate, &payment_id, &format!("fan{count}"));
            let sent = Instant::now();
            reqwest::get(url).await.unwrap();
            sent
        }
        Sends::BareEvent => {
            let sent = Instant::now();
            client.payments.get_payment(client.req(pb::GetPaymentRequest::default())).await.unwrap();
            sent
        }
    };
    let _all = received.acquire_many(count as u32).await.unwrap();
    let elapsed = sent.elapsed();
    let server_cpu = server.cpu().saturating_sub(cpu_before);
    for task in tasks {
        task.abort();
    }
    FanOut { bytes_per_stream, elapsed, server_cpu, event: first_event.await.ok() }
}

/// The latency floor of the stream rows: one-INSERT transactions (BEGIN; INSERT; COMMIT), one at
/// a time on one connection, as sorted latencies. A pingback's event cannot reach a subscriber
/// before its own transaction commits.
async fn lone_commits(db_url: &str) -> Vec<Duration> {
    let mut conn = PgConnection::connect(db_url).await.unwrap();
    let mut samples = Vec::new();
    for _ in 0..LATENCY_SAMPLES {
        let sent = Instant::now();
        one_insert_transaction(&mut conn).await;
        samples.push(sent.elapsed());
    }
    samples.sort();
    samples
}

struct Setup {
    admin: PgConnection,
    /// The cluster's admin database: another database than paygate's.
    admin_url: String,
    name: String,
    db_url: String,
    api_key: String,
    merchant_id: String,
    a: Gate,
    b: Gate,
    prefix: String,
}

/// The TEST channel "main" every checkout and pingback of the tool uses, for the key's merchant.
async fn create_main_channel(grpc: &str, api_key: &str) -> Result<(), Status> {
    let bearer: MetadataValue<_> = format!("Bearer {api_key}").parse().unwrap();
    let mut channels =
        ChannelServiceClient::new(Channel::from_shared(grpc.to_owned()).unwrap().connect().await.unwrap());
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
    channels.create_channel(create).await.map(drop)
}

async fn setup() -> Setup {
    let admin_url = std::env::var("PAYGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("paygate_bench_{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut admin = PgConnection::connect(&admin_url).await.expect("PostgreSQL");
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    let base = admin_url.split('?').next().unwrap();
    let db_url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
    let key = paygate::secrets::MasterKeys::generate();
    let prefix = format!("bench{}:", ulid::Ulid::new());

    let mut cmd = Command::new(paygate_exe());
    env_base(&mut cmd, &db_url, &key);
    let out = cmd.args(["admin", "create-merchant", "--name", "bench"]).output().unwrap();
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("merchant JSON");
    let api_key = created["api_key"].as_str().unwrap().to_owned();
    let mut conn = PgConnection::connect(&db_url).await.unwrap();
    conn.execute(
        "CREATE TABLE bench_baseline (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL); \
         CREATE TABLE bench_checkout (payment_id TEXT PRIMARY KEY, merchant_uid TEXT NOT NULL, \
         amount_minor BIGINT NOT NULL, currency TEXT NOT NULL)",
    )
    .await
    .unwrap();

    let a = start_gate(&db_url, &key, &prefix);
    let b = start_gate(&db_url, &key, &prefix);
    create_main_channel(&a.grpc, &api_key).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let merchant_id = created["merchant_id"].as_str().unwrap().to_owned();
    Setup { admin, admin_url, name, db_url, api_key, merchant_id, a, b, prefix }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if std::env::var(ROLE).as_deref() == Ok("bare-server") {
        return runtime.block_on(run_bare_server());
    }
    runtime.block_on(bench());
}

/// How fast one core of this machine is right now: SHA-256 over 256 MiB. A shared host's cores
/// slow down when its neighbours are busy; the rows with absolute targets (latency, fan-out) move
/// with it, the ratios much less.
fn speed_probe() -> Duration {
    use sha2::Digest;
    let started = Instant::now();
    let block = vec![7u8; 1 << 20];
    let mut hash = sha2::Sha256::new();
    for _ in 0..256 {
        hash.update(&block);
    }
    std::hint::black_box(hash.finalize());
    started.elapsed()
}

async fn bench() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let probe_before = speed_probe();
    let s = setup().await;
    // `PAYGATE_BENCH_ONLY=streams|latency|checkout|ingest|large`: only those rows, for iterating on
    // them (`latency`: the stream rows but the 10,000 streams).
    let only = std::env::var("PAYGATE_BENCH_ONLY").unwrap_or_default();
    let compare = !["streams", "latency", "large"].contains(&only.as_str());
    let large = only == "large" || std::env::var("PAYGATE_BENCH_LARGE").is_ok_and(|v| v == "1");
    let (run_checkout, run_ingest) = (compare && only != "ingest", compare && only != "checkout");
    let streams = only.is_empty() || only == "streams" || only == "latency";
    if compare {
        // Warm both (connections, caches, plans) before anything counts.
        checkout_round(&s.a.grpc, &s.api_key, "warm", &s.a.proc).await;
    }

    let (mut gate_checkout, mut bare_checkout, mut narrow_checkout) =
        (Side::default(), Side::default(), Side::default());
    let (mut gate_ingest, mut floor_ingest, mut transaction_only) = (Side::default(), Side::default(), Side::default());
    let mut spread_ingest = Side::default();
    let mut pgbench: Vec<f64> = Vec::new();
    for round in 0..if compare { ROUNDS } else { 0 } {
        if run_checkout {
            gate_checkout.rounds.push(checkout_round(&s.a.grpc, &s.api_key, &format!("c{round}"), &s.a.proc).await);
            // Started (and warmed) for each of its rounds: its pool, two paygates' and the floor's
            // 64 connections at once would not fit in PostgreSQL's default 100.
            for (shape, side) in [(Some(s.merchant_id.as_str()), &mut bare_checkout), (None, &mut narrow_checkout)] {
                let (bare, bare_grpc) = start_bare(&s.db_url, shape);
                checkout_round(&bare_grpc, &s.api_key, &format!("warm-b{round}"), &bare).await;
                side.rounds.push(checkout_round(&bare_grpc, &s.api_key, &format!("b{round}"), &bare).await);
            }
        }
        if run_ingest {
            let (gates, label) = ([&s.a, &s.b], format!("i{round}"));
            gate_ingest.rounds.push(ingest_round(&s.a, &gates, &[&s.a], &s.api_key, &label).await);
            spread_ingest.rounds.push(ingest_round(&s.a, &gates, &gates, &s.api_key, &format!("s{round}")).await);
            floor_ingest.rounds.push(insert_round(&s.db_url).await);
            pgbench.extend(pgbench_round(&s.db_url));
            transaction_only.rounds.push(transaction_round(&s.a, &s.db_url, &s.api_key, &format!("t{round}")).await);
        }
    }
    println!(
        "| measure (64 concurrent callers unless said) | paygate | baseline in the same run | ratio | target | verdict |"
    );
    println!("|---|---|---|---|---|---|");
    if compare {
        comparison_rows(&gate_checkout, &bare_checkout, &gate_ingest, &floor_ingest);
        if !spread_ingest.rounds.is_empty() {
            let ratio = spread_ingest.per_second() / floor_ingest.per_second();
            println!(
                "| pingback ingest spread over two replicas (every other one to the replica that did not make the payment) | {:.0}/s | {:.0}/s: the same floor | {ratio:.2} | >= 0.5 | {} |",
                spread_ingest.per_second(),
                floor_ingest.per_second(),
                verdict(ratio >= 0.5)
            );
        }
        if !spread_ingest.rounds.is_empty() {
            let share = |side: &Side| {
                let count: usize = side.rounds.iter().map(|r| r.count).sum();
                100.0 * side.rounds.iter().map(|r| r.one_statement).sum::<f64>() / count.max(1) as f64
            };
            println!(
                "| (for reference) pingbacks settled by one statement from a copy: all to one replica, spread | {:.0}%, {:.0}% | | | | |",
                share(&gate_ingest),
                share(&spread_ingest)
            );
        }
        if !transaction_only.rounds.is_empty() {
            println!(
                "| (for reference) the pingback's transaction alone (paygate's code, pool of {POOL_SIZE}, no HTTP) | {:.0}/s | | {:.2} of the floor | | |",
                transaction_only.per_second(),
                transaction_only.per_second() / floor_ingest.per_second()
            );
        }
        if !pgbench.is_empty() {
            let tps = pgbench.iter().sum::<f64>() / pgbench.len() as f64;
            println!(
                "| (for reference) pgbench, the floor's transaction, 64 clients | {tps:.0}/s | | pingback ingest is {:.2} of it | | |",
                gate_ingest.per_second() / tps
            );
        }
        if !narrow_checkout.rounds.is_empty() {
            println!(
                "| (for reference) the bare server with a four-column row, one index: throughput, p99 | {:.0}/s, {} | | | | |",
                narrow_checkout.per_second(),
                ms(narrow_checkout.p99())
            );
        }
    }
    if streams {
        stream_rows(&s, only != "latency").await;
    }
    let mut s = s;
    if large {
        large_rows(&mut s).await;
    }
    if compare {
        cpu_table(&gate_checkout, &bare_checkout, &gate_ingest, &spread_ingest, &floor_ingest);
    }
    println!();
    if compare {
        println!(
            "{ROUNDS} interleaved rounds per comparison: checkouts for {} s per round, {PINGBACKS_PER_ROUND} pingbacks per round.",
            ROUND_TIME.as_secs()
        );
    }
    println!("{LATENCY_SAMPLES} sequential pingbacks per latency row, after {LATENCY_WARMUP} unmeasured.");
    println!(
        "Machine speed probe (SHA-256 of 256 MiB on one core): {} before the rounds, {} after.",
        ms(probe_before),
        ms(speed_probe())
    );

    let Setup { mut admin, name, a, b, .. } = s;
    drop((a, b));
    let _ = admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
}

fn print_latency_rows(
    same: &Latencies,
    across: &Latencies,
    redis_rtt: &[Duration],
    other_database: &[Duration],
    same_database: &[Duration],
    commits: &[Duration],
) {
    let (same99, across99) = (percentile(&same.delivered, 0.99), percentile(&across.delivered, 0.99));
    println!(
        "| pingback -> WatchPayments subscriber, same replica, p99 (p50) | {} ({}) | {} ({}): the pingback answered OK | | < 5 ms | {} |",
        ms(same99),
        ms(percentile(&same.delivered, 0.5)),
        ms(percentile(&same.answered, 0.99)),
        ms(percentile(&same.answered, 0.5)),
        verdict(same99 < Duration::from_millis(5))
    );
    println!(
        "| pingback on A -> subscriber on B (Redis), p99 (p50) | {} ({}) | {} ({}): Redis PUBLISH -> subscriber | | < 10 ms | {} |",
        ms(across99),
        ms(percentile(&across.delivered, 0.5)),
        ms(percentile(redis_rtt, 0.99)),
        ms(percentile(redis_rtt, 0.5)),
        verdict(across99 < Duration::from_millis(10))
    );
    for (place, delays) in [("another database of the cluster", other_database), ("paygate's database", same_database)]
    {
        let worst = delays.last().copied().unwrap_or_default();
        println!(
            "| pingback -> subscriber while an unrelated transaction is open ({} s) in {place}: worst, median of {UNRELATED_TRIALS} | {} ({}) | | | < 10 ms | {} |",
            UNRELATED_HOLD.as_secs(),
            ms(worst),
            ms(percentile(delays, 0.5)),
            verdict(worst < Duration::from_millis(10))
        );
    }
    println!(
        "| (for reference) one-INSERT transaction, one at a time (sqlx), p99 (p50) | {} ({}) | | | | |",
        ms(percentile(commits, 0.99)),
        ms(percentile(commits, 0.5))
    );
}

/// The latency and (with `many`) the many-streams rows.
async fn stream_rows(s: &Setup, many: bool) {
    // The tailers may still be handing out the comparison rounds' events: a merchant-wide stream
    // opened now would get them all, fill its buffer and be cut off.
    caught_up(&[&s.a, &s.b]).await;
    let same = stream_latency(&s.a, &s.a, &s.api_key, "same").await;
    let across = stream_latency(&s.a, &s.b, &s.api_key, "across").await;
    let redis_rtt = redis_round_trip(&s.prefix).await;
    let other_database = unrelated_stall(&s.a, &s.api_key, &s.admin_url, "unrelated-other").await;
    let same_database = unrelated_stall(&s.a, &s.api_key, &s.db_url, "unrelated-same").await;
    let commits = lone_commits(&s.db_url).await;
    print_latency_rows(&same, &across, &redis_rtt, &other_database, &same_database, &commits);
    if !many {
        return;
    }
    let gate_fan = fan_out(&s.a.grpc, &s.a.proc, &s.api_key, 10_000, Sends::Pingback(&s.a)).await;
    let (bytes_10k, fan_10k) = (gate_fan.bytes_per_stream, gate_fan.elapsed);
    // The same fan-out from a bare tonic server, of the event paygate sent.
    let bare_fan = match &gate_fan.event {
        Some(event) => {
            use prost::Message;
            let path = std::env::temp_dir().join(format!("paygate-bench-event-{}.bin", std::process::id()));
            std::fs::write(&path, event.encode_to_vec()).unwrap();
            let (bare, bare_grpc) = start_bare_with(&s.db_url, None, Some(&path));
            let fan = fan_out(&bare_grpc, &bare, &s.api_key, 10_000, Sends::BareEvent).await;
            let _ = std::fs::remove_file(&path);
            Some(fan)
        }
        None => None,
    };

    println!(
        "| 10,000 open streams: server memory per stream | {bytes_10k:.0} bytes | {} | | <= 10,000 bytes | {} |",
        bare_fan.as_ref().map_or(String::new(), |b| format!("{:.0} bytes: bare tonic server", b.bytes_per_stream)),
        verdict(bytes_10k <= 10_000.0)
    );
    println!(
        "| one event to all 10,000 streams | {} | {} | {} | < 250 ms | {} |",
        ms(fan_10k),
        bare_fan.as_ref().map_or(String::new(), |b| format!("{}: bare tonic server, the same event", ms(b.elapsed))),
        bare_fan.as_ref().map_or(String::new(), |b| format!("{:.2}", fan_10k.as_secs_f64() / b.elapsed.as_secs_f64())),
        verdict(fan_10k < Duration::from_millis(250))
    );
    if let Some(bare) = &bare_fan {
        println!(
            "| (for reference) server CPU for that event, per stream: paygate, bare tonic server | {:.1} µs, {:.1} µs | | | | |",
            gate_fan.server_cpu.as_secs_f64() * 1e6 / 10_000.0,
            bare.server_cpu.as_secs_f64() * 1e6 / 10_000.0
        );
    }
}

/// The throughput and p99 rows: paygate against its baselines.
fn comparison_rows(gate_checkout: &Side, bare_checkout: &Side, gate_ingest: &Side, floor_ingest: &Side) {
    let (gc, bc) = (&gate_checkout, &bare_checkout);
    let (gi, fi) = (&gate_ingest, &floor_ingest);
    if !gc.rounds.is_empty() {
        checkout_rows(gc, bc);
    }
    if gi.rounds.is_empty() {
        return;
    }
    let ingest_ratio = gi.per_second() / fi.per_second();
    println!(
        "| pingback ingest (signed type 0 -> PAID, answered OK) | {:.0}/s | {:.0}/s: one-INSERT transactions, 64 clients | {ingest_ratio:.2} | >= 0.5 | {} |",
        gi.per_second(),
        fi.per_second(),
        verdict(ingest_ratio >= 0.5)
    );
}

fn checkout_rows(gc: &Side, bc: &Side) {
    let checkout_ratio = gc.per_second() / bc.per_second();
    let p99_ratio = gc.p99().as_secs_f64() / bc.p99().as_secs_f64();
    println!(
        "| CreateCheckoutSession throughput | {:.0}/s | {:.0}/s: bare tonic server, paygate's INSERT through a sqlx pool of {POOL_SIZE} | {checkout_ratio:.2} | >= 0.8 | {} |",
        gc.per_second(),
        bc.per_second(),
        verdict(checkout_ratio >= 0.8)
    );
    println!(
        "| checkout p99 | {} | {} | {p99_ratio:.2} | <= 1.25 | {} |",
        ms(gc.p99()),
        ms(bc.p99()),
        verdict(p99_ratio <= 1.25)
    );
}

/// Who used how much CPU per request.
fn cpu_table(gc: &Side, bc: &Side, gi: &Side, si: &Side, fi: &Side) {
    println!();
    println!(
        "| load generator and servers | checkout: paygate | checkout: bare | ingest: paygate | ingest: spread | ingest: floor |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| load generator CPU (share of one core) | {} | {} | {} | {} | {} |",
        gc.generator_cpu_share(),
        bc.generator_cpu_share(),
        gi.generator_cpu_share(),
        si.generator_cpu_share(),
        fi.generator_cpu_share()
    );
    println!(
        "| server CPU per request (paygate's two replicas, or the bare server) | {} | {} | {} | {} | |",
        gc.per_request(|r| r.server_cpu),
        bc.per_request(|r| r.server_cpu),
        gi.per_request(|r| r.server_cpu),
        si.per_request(|r| r.server_cpu)
    );
    println!(
        "| PostgreSQL CPU per request | {} | {} | {} | {} | {} |",
        gc.per_request(|r| r.postgres_cpu),
        bc.per_request(|r| r.postgres_cpu),
        gi.per_request(|r| r.postgres_cpu),
        si.per_request(|r| r.postgres_cpu),
        fi.per_request(|r| r.postgres_cpu)
    );
    let reads_per_pingback = |side: &Side| {
        let reads: f64 = side.rounds.iter().map(|r| r.log_reads).sum();
        let count: usize = side.rounds.iter().map(|r| r.count).sum();
        if count > 0 { format!("{:.2}", reads / count as f64) } else { String::new() }
    };
    if !gi.rounds.is_empty() {
        println!(
            "| event-log reads per pingback (both replicas' tailers) | | | {} | {} | |",
            reads_per_pingback(gi),
            reads_per_pingback(si)
        );
    }
}

// ---- the large-database rows (`PAYGATE_BENCH_LARGE=1`) ----

/// The seeded database: made by `paygate dev seed` on the first run (it takes a while) and kept
/// for the next ones. `PAYGATE_BENCH_LARGE_DATABASE` names it; `PAYGATE_BENCH_LARGE_PAYMENTS`
/// sets the size it is seeded with.
fn large_name() -> String {
    std::env::var("PAYGATE_BENCH_LARGE_DATABASE").unwrap_or_else(|_| "paygate_bench_large".into())
}

/// The seeded database, as the large rows use it: two replicas, the bench merchant's key (channel
/// "main", as on the empty database) and a key of the seeded merchant `mer_seed_000` (with its
/// four sub-merchants: a twentieth of everything).
struct Large {
    db_url: String,
    api_key: String,
    seeded_key: String,
    a: Gate,
    b: Gate,
    payments: i64,
    events: i64,
    seed_seconds: f64,
}

fn paygate_cli(db_url: &str, key: &str, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(paygate_exe());
    env_base(&mut cmd, db_url, key);
    let out = cmd.args(args).output().unwrap();
    assert!(out.status.success(), "paygate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("{}")).expect("JSON")
}

async fn large_setup(s: &mut Setup) -> Large {
    let name = large_name();
    let db_url = format!("{}/{name}", s.admin_url.split('?').next().unwrap().rsplit_once('/').unwrap().0);
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut s.admin)
        .await
        .unwrap();
    if exists.is_none() {
        let payments = std::env::var("PAYGATE_BENCH_LARGE_PAYMENTS").unwrap_or_else(|_| "10000000".into());
        s.admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
        let key = paygate::secrets::MasterKeys::generate();
        eprintln!("seeding {name} with {payments} payments (paygate dev seed; kept for later runs)");
        let seeded = paygate_cli(&db_url, &key, &["dev", "seed", "--payments", &payments]);
        let merchant = paygate_cli(&db_url, &key, &["admin", "create-merchant", "--name", "bench"]);
        let seeded_key =
            paygate_cli(&db_url, &key, &["admin", "create-api-key", "--merchant", "mer_seed_000", "--name", "bench"]);
        let mut conn = PgConnection::connect(&db_url).await.unwrap();
        sqlx::query(
            "CREATE TABLE bench_large AS SELECT $1::text AS master_key, $2::text AS api_key, $3::text AS seeded_key, \
             $4::float8 AS seed_seconds",
        )
        .bind(&key)
        .bind(merchant["api_key"].as_str().unwrap())
        .bind(seeded_key["api_key"].as_str().unwrap())
        .bind(seeded["seconds"].as_f64().unwrap_or_default())
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let mut conn = PgConnection::connect(&db_url).await.unwrap();
    let (key, api_key, seeded_key, seed_seconds): (String, String, String, f64) =
        sqlx::query_as("SELECT master_key, api_key, seeded_key, seed_seconds FROM bench_large")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let a = start_gate(&db_url, &key, &s.prefix);
    let b = start_gate(&db_url, &key, &s.prefix);
    // Made on the first run; then it exists.
    let _ = create_main_channel(&a.grpc, &api_key).await;
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT reltuples::bigint FROM pg_class WHERE relname = 'payments'), \
         (SELECT SUM(c.reltuples)::bigint FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
          WHERE i.inhparent = 'payment_events'::regclass)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    Large { db_url, api_key, seeded_key, a, b, payments: counts.0, events: counts.1, seed_seconds }
}

/// Sequential ListPayments calls with one filter: sorted latencies.
async fn list_latencies(grpc: &str, key: &str, request: pb::ListPaymentsRequest) -> Vec<Duration> {
    let mut client = connect(grpc, key).await;
    let mut samples = Vec::new();
    for n in 0..220 {
        let sent = Instant::now();
        let page = client.payments.list_payments(client.req(request.clone())).await.expect("list").into_inner();
        assert!(!page.payments.is_empty(), "{request:?} finds payments");
        if n >= 20 {
            samples.push(sent.elapsed());
        }
    }
    samples.sort();
    samples
}

/// A stream of the seeded merchant's events resumed `back` events (of the whole log) before its
/// end: time to the first event, and the rate at which it delivers all it has to.
async fn resume_from_far_back(l: &Large, back: i64) -> (Duration, f64, usize) {
    let mut conn = PgConnection::connect(&l.db_url).await.unwrap();
    let (txid, event_id): (i64, i64) =
        sqlx::query_as("SELECT txid, event_id FROM payment_events ORDER BY txid DESC, event_id DESC OFFSET $1 LIMIT 1")
            .bind(back)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let expected: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM payment_events WHERE (txid, event_id) > ($1, $2) \
         AND merchant_id IN (SELECT merchant_id FROM merchants WHERE merchant_id = 'mer_seed_000' OR parent_id = 'mer_seed_000')",
    )
    .bind(txid)
    .bind(event_id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let mut client = connect(&l.a.grpc, &l.seeded_key).await;
    let request = pb::WatchPaymentsRequest { resume_after: format!("{txid}-{event_id}"), ..Default::default() };
    let sent = Instant::now();
    let mut stream = client.payments.watch_payments(client.req(request)).await.expect("watch").into_inner();
    let mut first = None;
    let mut received = 0;
    while received < expected as usize {
        stream.message().await.expect("stream").expect("open");
        first.get_or_insert(sent.elapsed());
        received += 1;
    }
    let elapsed = sent.elapsed();
    (first.unwrap_or_default(), received as f64 / elapsed.as_secs_f64(), received)
}

/// Bytes of every table (partitions summed), by table.
async fn table_sizes(db_url: &str) -> std::collections::BTreeMap<String, i64> {
    let mut conn = PgConnection::connect(db_url).await.unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT COALESCE(p.relname, c.relname)::text, SUM(pg_total_relation_size(c.oid))::bigint FROM pg_class c \
         LEFT JOIN pg_inherits i ON i.inhrelid = c.oid LEFT JOIN pg_class p ON p.oid = i.inhparent \
         WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace GROUP BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// A local webhook receiver that answers 200 to everything; returns its URL.
async fn webhook_sink() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 65536];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 || socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("http://{addr}/hook")
}

const LIVES: usize = 2_000;

/// What one payment's life costs in storage, by table: `LIVES` checkouts, each paid (type 0) and
/// refunded by the provider (type 2, reason 9), their events, raw pingbacks and webhooks
/// (delivered to a local receiver), measured as the growth of each table over them.
async fn storage_per_life(s: &Setup) -> Vec<(String, f64)> {
    let sink = webhook_sink().await;
    let channel = Channel::from_shared(s.a.grpc.clone()).unwrap().connect().await.unwrap();
    let mut hooks = paygate::proto::v1::webhook_service_client::WebhookServiceClient::new(channel);
    let mut request = Request::new(pb::SetWebhookEndpointRequest { url: sink, event_types: vec![] });
    request.metadata_mut().insert("authorization", format!("Bearer {}", s.api_key).parse().unwrap());
    hooks.set_webhook_endpoint(request).await.expect("webhook endpoint");
    let before = table_sizes(&s.db_url).await;
    let client = connect(&s.a.grpc, &s.api_key).await;
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for caller in 0..16 {
        let (mut client, http, gate_http) = (client.clone(), http.clone(), s.a.http.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..LIVES / 16 {
                let id = checkout(&mut client, &format!("life-{caller}-{n}")).await;
                for (kind, reason) in [("0", ""), ("2", "9")] {
                    let url = pingback_url_of(&gate_http, &id, &format!("l{id}"), kind, reason);
                    assert_eq!(http.get(url).send().await.unwrap().text().await.unwrap(), "OK");
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Until every delivery is made (none pending).
    let mut conn = PgConnection::connect(&s.db_url).await.unwrap();
    for _ in 0..600 {
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'PENDING'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = table_sizes(&s.db_url).await;
    after
        .iter()
        .map(|(table, bytes)| (table.clone(), (bytes - before.get(table).copied().unwrap_or(0)) as f64 / LIVES as f64))
        .filter(|(table, bytes)| *bytes > 0.0 && !table.starts_with("bench_"))
        .collect()
}

async fn large_rows(s: &mut Setup) {
    let seeded = Instant::now();
    let l = large_setup(s).await;
    let setup_seconds = seeded.elapsed().as_secs_f64();
    // The large database is kept between runs: this run's orders need names of their own.
    let run = ulid::Ulid::new().to_string();
    // Warm the large replicas and both databases' caches before anything counts.
    checkout_round(&l.a.grpc, &l.api_key, &format!("{run}-warm"), &l.a.proc).await;
    let (mut empty_checkout, mut large_checkout) = (Side::default(), Side::default());
    let (mut empty_ingest, mut large_ingest) = (Side::default(), Side::default());
    for round in 0..ROUNDS {
        empty_checkout.rounds.push(checkout_round(&s.a.grpc, &s.api_key, &format!("ec{round}"), &s.a.proc).await);
        large_checkout.rounds.push(checkout_round(&l.a.grpc, &l.api_key, &format!("{run}-c{round}"), &l.a.proc).await);
        let gates = [&s.a, &s.b];
        empty_ingest.rounds.push(ingest_round(&s.a, &gates, &[&s.a], &s.api_key, &format!("ei{round}")).await);
        let gates = [&l.a, &l.b];
        large_ingest.rounds.push(ingest_round(&l.a, &gates, &[&l.a], &l.api_key, &format!("{run}-i{round}")).await);
    }
    let subscription: String =
        sqlx::query_scalar("SELECT subscription_id FROM subscriptions WHERE merchant_id = 'mer_seed_000' LIMIT 1")
            .fetch_one(&mut PgConnection::connect(&l.db_url).await.unwrap())
            .await
            .unwrap();
    let day = 86_400;
    let now = paygate::store::now_ms() / 1000;
    let range = |from_days: i64| prost_types::Timestamp { seconds: now - from_days * day, nanos: 0 };
    let filters = [
        ("no filter", pb::ListPaymentsRequest { page_size: 50, ..Default::default() }),
        (
            "status PAID",
            pb::ListPaymentsRequest {
                statuses: vec![pb::PaymentStatus::Paid as i32],
                page_size: 50,
                ..Default::default()
            },
        ),
        ("channel", pb::ListPaymentsRequest { channel_key: "seed_000".into(), page_size: 50, ..Default::default() }),
        (
            "a week, 100 days ago",
            pb::ListPaymentsRequest {
                created_from: Some(range(107)),
                created_to: Some(range(100)),
                page_size: 50,
                ..Default::default()
            },
        ),
        (
            "subscription",
            pb::ListPaymentsRequest { subscription_id: subscription, page_size: 50, ..Default::default() },
        ),
    ];
    let mut lists = Vec::new();
    for (label, request) in filters {
        lists.push((label, list_latencies(&l.a.grpc, &l.seeded_key, request).await));
    }
    let (first, rate, resumed) = resume_from_far_back(&l, 10_000_000.min(l.events - 1)).await;
    let storage = storage_per_life(s).await;

    println!();
    println!(
        "Large database: {} payments, {} events ({}, seeded by `paygate dev seed` in {:.0} s; this run's setup {:.0} s).",
        l.payments,
        l.events,
        large_name(),
        l.seed_seconds,
        setup_seconds
    );
    println!();
    println!("| measure | empty database | large database | ratio | target | verdict |");
    println!("|---|---|---|---|---|---|");
    for (label, empty, large) in
        [("checkout throughput", &empty_checkout, &large_checkout), ("pingback ingest", &empty_ingest, &large_ingest)]
    {
        let ratio = large.per_second() / empty.per_second();
        println!(
            "| {label} (64 callers) | {:.0}/s | {:.0}/s | {ratio:.2} | >= 0.9 | {} |",
            empty.per_second(),
            large.per_second(),
            verdict(ratio >= 0.9)
        );
    }
    for (label, samples) in &lists {
        let p99 = percentile(samples, 0.99);
        println!(
            "| ListPayments, {label}, a merchant with 4 sub-merchants: p99 (p50) | | {} ({}) | | < 20 ms | {} |",
            ms(p99),
            ms(percentile(samples, 0.5)),
            verdict(p99 < Duration::from_millis(20))
        );
    }
    println!(
        "| WatchPayments resumed 10,000,000 events back: first event | | {} | | < 50 ms | {} |",
        ms(first),
        verdict(first < Duration::from_millis(50))
    );
    println!(
        "| ... then catches up ({resumed} events of that merchant and its sub-merchants) | | {rate:.0} events/s | | >= 50,000/s | {} |",
        verdict(rate >= 50_000.0)
    );
    println!();
    println!(
        "Storage per payment life ({LIVES} lives: checkout, paid, refunded by the provider, events, raw pingbacks, webhooks delivered):"
    );
    println!();
    println!("| table | bytes per life |");
    println!("|---|---|");
    let total: f64 = storage.iter().map(|(_, b)| b).sum();
    for (table, bytes) in &storage {
        println!("| {table} | {bytes:.0} |");
    }
    println!("| all | {total:.0} |");
    let Large { a, b, .. } = l;
    drop((a, b));
}
