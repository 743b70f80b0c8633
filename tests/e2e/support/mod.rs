//! Test harness: real `paygate` and `paymentwall-sim` processes over real sockets, a database of
//! each test's own (a fresh PostgreSQL database, or a SQLite file in a temp dir), gRPC clients,
//! and a TCP proxy the test controls for cutting the database connection.

#![allow(dead_code)]

pub mod balancer;
pub mod pingback;
pub mod postgres_cluster;
pub mod proxy;
/// The simulator's own signer (independent of the gateway's), for signing as Paymentwall does.
#[path = "../../../src/bin/paymentwall-sim/sim/signature.rs"]
pub mod sim_signature;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use paygate::proto::v1::{
    self as pb, channel_service_client::ChannelServiceClient, merchant_service_client::MerchantServiceClient,
    payment_service_client::PaymentServiceClient,
};
pub use pingback::Pingback;
use sqlx::{AnyPool, Connection, Executor, PgConnection, Row};
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

pub const PROJECT_KEY: &str = "c22f895840bf2391f67a40da64bfed26";
pub const SECRET_KEY: &str = "a7408723eaf4bfa2e3ac49b3cb695046";

pub type Payments = PaymentServiceClient<InterceptedService<Channel, Bearer>>;
pub type Channels = ChannelServiceClient<InterceptedService<Channel, Bearer>>;
pub type Merchants = MerchantServiceClient<InterceptedService<Channel, Bearer>>;

pub fn postgres_admin_url() -> String {
    std::env::var("PAYGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database only this test uses; dropped (PostgreSQL) or deleted (SQLite) afterwards.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    /// The master key paygate processes on this database use (SQLite: the embedded key file instead).
    pub master_key: Option<String>,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => {
                let name = format!("paygate_test_{}", ulid::Ulid::new().to_string().to_lowercase());
                let mut admin = PgConnection::connect(&postgres_admin_url()).await.expect("connect to PostgreSQL");
                admin.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create test database");
                let url = with_database(&postgres_admin_url(), &name);
                let master_key = Some(paygate::secrets::MasterKeys::generate());
                Self { backend, url, master_key, pg_name: Some(name), _dir: None }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("paygate.db").display());
                Self { backend, url, master_key: None, pg_name: None, _dir: Some(dir) }
            }
        }
    }

    /// A direct connection for assertions on raw rows.
    pub async fn pool(&self) -> AnyPool {
        sqlx::any::install_default_drivers();
        AnyPool::connect(&self.url).await.expect("connect to test database")
    }

    /// `SELECT COUNT(*) ...` with one text argument.
    pub async fn count(&self, sql: &str, arg: &str) -> i64 {
        let pool = self.pool().await;
        let row = sqlx::query(sql).bind(arg).fetch_one(&pool).await.expect("count query");
        pool.close().await;
        row.try_get::<i64, _>(0).expect("count is an integer")
    }
}

/// `postgres://u@h:p/old` -> `postgres://u@h:p/name`
pub fn with_database(url: &str, name: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    format!("{}/{name}", base.rsplit_once('/').map(|(b, _)| b).unwrap_or(base))
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else { return };
        // Drop may run outside a runtime; use a private one on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&postgres_admin_url()).await {
                    let _ = admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
                }
            });
        })
        .join();
    }
}

/// A child process that is killed when the test ends, however it ends.
pub struct Process {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    pub name: &'static str,
}

impl Process {
    /// Starts `cmd` and waits for the JSON log line whose message is `ready_message`.
    pub fn start(name: &'static str, mut cmd: Command, ready_message: &str) -> (Self, serde_json::Value) {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let streams: [Box<dyn std::io::Read + Send>; 2] =
            [Box::new(child.stdout.take().expect("stdout")), Box::new(child.stderr.take().expect("stderr"))];
        for stream in streams {
            let logs = logs.clone();
            let ready_tx = ready_tx.clone();
            let ready_message = ready_message.to_owned();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                        && json["message"] == ready_message.as_str()
                    {
                        let _ = ready_tx.send(json);
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let mut process = Self { child, logs, name };
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => (process, line),
            Err(_) => {
                let _ = process.child.kill();
                panic!("{name} did not become ready:\n{}", process.logs().join("\n"))
            }
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} logs ----\n{}", self.name, self.logs().join("\n"));
        }
    }
}

/// The trusted proxy of every `Paygate` (connect from it with `grpc_from` or `http_client_from`);
/// not 127.0.0.1, so that other calls (and the simulator's pingbacks) come from hosts of their own.
pub const PROXY: &str = "127.0.0.254";

/// A running `paygate serve`.
pub struct Paygate {
    pub process: Process,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    _workdir: tempfile::TempDir,
}

impl Paygate {
    /// `paygate serve` on `db`; `env` may override anything (e.g. PAYGATE_DATABASE_URL for a proxy).
    pub fn start(db: &TestDb, env: &[(&str, &str)]) -> Self {
        Self::start_binary(PAYGATE, db, env)
    }

    /// `start`, with the `paygate` executable at `binary` (another release's).
    pub fn start_binary(binary: &str, db: &TestDb, env: &[(&str, &str)]) -> Self {
        let workdir = tempfile::tempdir().expect("temp dir");
        let mut cmd = paygate_command_of(binary, db, workdir.path());
        cmd.arg("serve")
            .env("PAYGATE_GRPC_ADDR", "127.0.0.1:0")
            .env("PAYGATE_HTTP_ADDR", "127.0.0.1:0")
            // As if behind an ingress on loopback: tests present X-Forwarded-For from PROXY.
            .env("PAYGATE_TRUSTED_PROXIES", format!("{PROXY}/32"))
            // The simulator (a channel's api_base_url) listens on loopback.
            .env("PAYGATE_PROVIDER_ALLOW_PRIVATE_TARGETS", "true")
            // Tests poll as fast as they like; the rate-limit tests set their own limits.
            .env("PAYGATE_API_RATE_LIMIT_PER_SECOND", "100000")
            .env("PAYGATE_API_RATE_LIMIT_BURST", "100000")
            .env("PAYGATE_API_MERCHANT_RATE_LIMIT_PER_SECOND", "100000")
            .env("PAYGATE_API_MERCHANT_RATE_LIMIT_BURST", "100000")
            // Tests try wrong credentials on purpose; the failure-limit tests set their own limits.
            .env("PAYGATE_AUTH_FAILURE_RATE_PER_SECOND", "100000")
            .env("PAYGATE_AUTH_FAILURE_BURST", "100000");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (process, ready) = Process::start("paygate", cmd, "paygate ready");
        let addr = |field: &str| ready[field].as_str().and_then(|s| s.parse().ok()).expect("address in ready line");
        Self { grpc_addr: addr("grpc_addr"), http_addr: addr("http_addr"), process, _workdir: workdir }
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    pub async fn grpc(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr)).unwrap().connect().await.expect("gRPC connect")
    }

    /// A connection whose source address is `local` (any 127.0.0.0/8 address works on Linux), so
    /// tests can call as distinct hosts.
    pub async fn grpc_from(&self, local: &str) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .local_address(Some(local.parse().expect("an IP address")))
            .connect()
            .await
            .expect("gRPC connect")
    }

    pub async fn merchants(&self, credential: &str) -> Merchants {
        MerchantServiceClient::with_interceptor(self.grpc().await, Bearer::new(credential))
    }

    pub async fn payments(&self, api_key: &str) -> Payments {
        PaymentServiceClient::with_interceptor(self.grpc().await, Bearer::new(api_key))
    }

    pub async fn channels(&self, api_key: &str) -> Channels {
        ChannelServiceClient::with_interceptor(self.grpc().await, Bearer::new(api_key))
    }
}

/// The `paygate` executable this build made.
pub const PAYGATE: &str = env!("CARGO_BIN_EXE_paygate");

/// A `paygate` command on `db`, with a clean environment and its own working directory.
pub fn paygate_command(db: &TestDb, workdir: &std::path::Path) -> Command {
    paygate_command_of(PAYGATE, db, workdir)
}

/// `paygate_command`, with the executable at `binary`.
pub fn paygate_command_of(binary: &str, db: &TestDb, workdir: &std::path::Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.current_dir(workdir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PAYGATE_DATABASE_URL", &db.url)
        .env("PAYGATE_LOG_FORMAT", "json");
    if let Some(key) = &db.master_key {
        cmd.env("PAYGATE_MASTER_KEY", key);
    }
    cmd
}

/// `paygate admin create-merchant`, as an operator runs it. Returns (merchant_id, api_key).
pub fn create_merchant(db: &TestDb, name: &str) -> (String, String) {
    create_merchant_with(PAYGATE, db, name)
}

/// `create_merchant`, by the `paygate` executable at `binary`.
pub fn create_merchant_with(binary: &str, db: &TestDb, name: &str) -> (String, String) {
    let workdir = tempfile::tempdir().expect("temp dir");
    let out = paygate_command_of(binary, db, workdir.path())
        .args(["admin", "create-merchant", "--name", name])
        .output()
        .expect("run paygate admin");
    assert!(out.status.success(), "create-merchant failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("create-merchant prints JSON");
    let merchant_id = json["merchant_id"].as_str().expect("merchant_id").to_owned();
    let api_key = json["api_key"].as_str().expect("api_key").to_owned();
    (merchant_id, api_key)
}

#[derive(Clone)]
pub struct Bearer {
    authorization: MetadataValue<tonic::metadata::Ascii>,
    forwarded_for: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Bearer {
    pub fn new(api_key: &str) -> Self {
        Self { authorization: format!("Bearer {api_key}").parse().expect("ascii key"), forwarded_for: None }
    }

    /// Also sends `x-forwarded-for`, as a proxy (or someone pretending to be one) would.
    pub fn forwarded_for(api_key: &str, chain: &str) -> Self {
        Self { forwarded_for: Some(chain.parse().expect("ascii")), ..Self::new(api_key) }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.authorization.clone());
        if let Some(chain) = &self.forwarded_for {
            request.metadata_mut().insert("x-forwarded-for", chain.clone());
        }
        Ok(request)
    }
}

/// A running `paymentwall-sim`.
pub struct Simulator {
    pub process: Process,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
}

impl Simulator {
    pub fn start() -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paymentwall-sim"));
        cmd.args(["--listen", "127.0.0.1:0", "--retry-interval-ms", "200", "--max-attempts", "50"]);
        let (process, ready) = Process::start("paymentwall-sim", cmd, "paymentwall-sim ready");
        let addr = ready["addr"].as_str().and_then(|s| s.parse().ok()).expect("sim address");
        Self { process, addr, http: http_client() }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn add_project(&self, key: &str, secret: &str, pingback_url: &str, sign_version: u8) {
        let response = self
            .http
            .post(format!("{}/control/projects", self.base_url()))
            .json(&serde_json::json!({
                "key": key, "secret": secret, "pingback_url": pingback_url, "sign_version": sign_version,
            }))
            .send()
            .await
            .expect("sim reachable");
        assert_eq!(response.status(), 204);
    }

    /// Opens the hosted page at `redirect_url` as a buyer's browser would; returns the session id.
    pub async fn open(&self, redirect_url: &str) -> String {
        let response = self.http.get(redirect_url).send().await.expect("sim reachable");
        let status = response.status();
        let session = response.headers().get("x-sim-session").map(|v| v.to_str().unwrap().to_owned());
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 200, "the simulator refused the checkout URL: {body}");
        assert!(body.contains("<button"), "the hosted page shows Pay / Decline");
        session.expect("session header")
    }

    pub async fn control(&self, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let url = format!("{}/control{path}", self.base_url());
        let request = match body {
            Some(body) => self.http.post(url).json(&body),
            None => self.http.post(url),
        };
        let response = request.send().await.expect("sim reachable");
        assert!(response.status().is_success(), "sim control {path}: {}", response.status());
        response.json().await.expect("JSON")
    }

    pub async fn session(&self, id: &str) -> serde_json::Value {
        let url = format!("{}/control/sessions/{id}", self.base_url());
        self.http.get(url).send().await.expect("sim reachable").json().await.expect("JSON")
    }

    /// Waits until the session's pingback number `index` was answered `OK`.
    pub async fn wait_delivered(&self, id: &str, index: usize) -> serde_json::Value {
        for _ in 0..400 {
            let session = self.session(id).await;
            if session["pingbacks"][index]["delivered"] == true {
                return session;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("pingback {index} of {id} was never acknowledged: {}", self.session(id).await);
    }
}

pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client")
}

/// An HTTP client whose connections come from `local` (e.g. `PROXY`).
pub fn http_client_from(local: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let local: std::net::IpAddr = local.parse().expect("an IP address");
    reqwest::Client::builder().timeout(Duration::from_secs(20)).local_address(local).build().expect("client")
}

/// A channel pointing at the simulator, accepting pingbacks from loopback.
pub fn channel_request(sim: &Simulator, channel_key: &str, mode: pb::ChannelMode) -> pb::CreateChannelRequest {
    pb::CreateChannelRequest {
        channel_key: channel_key.into(),
        name: "test channel".into(),
        provider: pb::Provider::Paymentwall as i32,
        mode: mode as i32,
        paymentwall: Some(pb::PaymentwallCredentials {
            project_key: PROJECT_KEY.into(),
            secret_key: SECRET_KEY.into(),
            widget: "p1_1".into(),
            sign_version: 3,
            pingback_allowlist: vec!["127.0.0.1/32".into()],
            api_base_url: sim.base_url(),
            confirm_digital_delivery: false,
        }),
        sub_merchant_id: String::new(),
        credentials: None,
    }
}

pub fn checkout_request(channel_key: &str, merchant_uid: &str) -> pb::CreateCheckoutSessionRequest {
    pb::CreateCheckoutSessionRequest {
        channel_key: channel_key.into(),
        merchant_uid: merchant_uid.into(),
        amount: Some(pb::Money { amount_minor: 999, currency: "USD".into() }),
        order_name: "Gold Membership".into(),
        customer: Some(pb::Customer {
            uid: "user-40012".into(),
            email: "buyer@example.com".into(),
            ..Default::default()
        }),
        success_url: "https://shop.example/thanks?ref=$ref".into(),
        ..Default::default()
    }
}

/// A pingback query signed as Paymentwall signs it, by the simulator's independent signer.
pub fn signed_pingback_query(params: &[(&str, &str)], secret: &str, version: u8) -> String {
    let mut params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    params.push(("sign_version".into(), version.to_string()));
    let sig = sim_signature::pingback_sig(version, &params, secret);
    params.push(("sig".into(), sig));
    form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish()
}

pub async fn get_payment(client: &mut Payments, payment_id: &str) -> pb::Payment {
    client
        .get_payment(pb::GetPaymentRequest {
            lookup: Some(pb::get_payment_request::Lookup::PaymentId(payment_id.into())),
        })
        .await
        .expect("GetPayment")
        .into_inner()
}

/// Polls until the payment reaches `status`.
pub async fn wait_for_status(client: &mut Payments, payment_id: &str, status: pb::PaymentStatus) -> pb::Payment {
    for _ in 0..400 {
        let payment = get_payment(client, payment_id).await;
        if payment.status == status as i32 {
            return payment;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("payment {payment_id} never reached {status:?}: {:?}", get_payment(client, payment_id).await);
}

/// A `redis-server` of the test's own, on a free port, that the test may stop and restart.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { port, child: None };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
        redis::cmd("GET").arg(key).query_async(&mut conn).await.expect("GET")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when the `sign` of a widget URL is the signature of its other parameters under `secret`
/// (checked with the simulator's independent signer).
pub fn signed_with(redirect_url: &str, secret: &str) -> bool {
    let url = url::Url::parse(redirect_url).expect("redirect URL");
    let mut pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let Some(i) = pairs.iter().position(|(k, _)| k == "sign") else { return false };
    let sign = pairs.remove(i).1;
    let version: u8 = pairs.iter().find(|(k, _)| k == "sign_version").and_then(|(_, v)| v.parse().ok()).unwrap_or(1);
    sim_signature::request_sign(version, &pairs, secret) == sign
}

pub fn query_param(redirect_url: &str, name: &str) -> Option<String> {
    url::Url::parse(redirect_url).ok()?.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The value of a metric in Prometheus text, summed over its label sets.
pub async fn metric(gate: &Paygate, name: &str) -> f64 {
    metric_series(gate, name, &[]).await
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL by PID, now, and waits until it is gone (a crash: nothing gets to finish).
    pub fn kill9(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return; // gone already
        }
        let status = Command::new("kill").args(["-KILL", &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -9 {}", self.child.id());
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (up to `within`) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Checks out `uid` on channel `main` and pays it with a signed pingback sent straight to paygate
/// (as Paymentwall would); returns the payment id.
pub async fn checkout_and_pay(gate: &Paygate, payments: &mut Payments, uid: &str) -> String {
    let session = payments.create_checkout_session(checkout_request("main", uid)).await.unwrap().into_inner();
    let reference = format!("b{}", ulid::Ulid::new());
    let pingback = Pingback::new(&session.payment_id).uid("user-40012").one_time().reference(&reference).test();
    assert_eq!(pingback.send(gate, "main").await, "OK");
    session.payment_id
}

/// The Python webhook receiver (`tests/webhook_receiver.py`), verifying with `standardwebhooks`.
pub struct Receiver {
    pub process: Process,
    pub port: u16,
    http: reqwest::Client,
}

impl Receiver {
    /// Starts on `port` (0: a free one).
    pub fn start(port: u16) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhook_receiver.py");
        let mut cmd = Command::new("python3");
        cmd.args([script, &port.to_string()]);
        let (process, ready) = Process::start("webhook-receiver", cmd, "receiver ready");
        Self { process, port: ready["port"].as_u64().unwrap() as u16, http: http_client() }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    async fn control(&self, path: &str, body: serde_json::Value) {
        let url = format!("http://127.0.0.1:{}/control/{path}", self.port);
        assert!(self.http.post(url).json(&body).send().await.unwrap().status().is_success());
    }

    pub async fn trust(&self, secrets: &[&str]) {
        self.control("secrets", serde_json::json!({ "secrets": secrets })).await;
    }

    /// Answers `status` to the next `count` deliveries.
    pub async fn fail_next(&self, count: u32, status: u16) {
        self.control("answer", serde_json::json!({ "fail": count, "status": status })).await;
    }

    pub async fn received(&self) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}/control/received", self.port);
        self.http.get(url).send().await.unwrap().json().await.unwrap()
    }

    /// Waits until `count` deliveries were accepted; returns them.
    pub async fn wait_for(&self, count: usize) -> Vec<serde_json::Value> {
        for _ in 0..600 {
            let received = self.received().await;
            let list = received["received"].as_array().cloned().unwrap_or_default();
            if list.len() >= count {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the receiver got fewer than {count} webhooks: {}", self.received().await);
    }
}

/// Polls `check` for up to 10 s.
pub async fn wait_until<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not met within 10 s");
}

/// The value of a metric's series whose labels include all of `labels` (summed); 0 when none exists yet.
pub async fn metric_series(gate: &Paygate, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = http_client().get(gate.http_url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && l.split([' ', '{']).next() == Some(name))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The usual start of a test: a database, the simulator, merchant "Acme" with its key, paygate
/// (with `env`), and Acme's TEST channel "main".
pub struct Shop {
    pub db: TestDb,
    pub sim: Simulator,
    pub merchant_id: String,
    pub api_key: String,
    pub gate: Paygate,
}

impl Shop {
    pub async fn open(backend: Backend, env: &[(&str, &str)]) -> Self {
        let db = TestDb::new(backend).await;
        let sim = Simulator::start();
        let (merchant_id, api_key) = create_merchant(&db, "Acme");
        let gate = Paygate::start(&db, env);
        gate.channels(&api_key)
            .await
            .create_channel(channel_request(&sim, "main", pb::ChannelMode::Test))
            .await
            .unwrap();
        Self { db, sim, merchant_id, api_key, gate }
    }
}

/// A PAID payment row `pay_<prefix><n>` of `merchant_id` on channel "main", as tests that write to
/// the store directly (the event log, retention) insert it.
pub fn stored_payment(merchant_id: &str, prefix: &str, n: usize) -> paygate::payments::Payment {
    use paygate::payments::{PaymentStatus, core::money::MinorUnits};
    paygate::payments::Payment {
        payment_id: format!("pay_{prefix}{n:06}"),
        merchant_id: merchant_id.into(),
        channel_key: "main".into(),
        merchant_uid: format!("order-{n}"),
        amount_minor: MinorUnits(100),
        currency: "USD".into(),
        order_name: "x".into(),
        customer_uid: "u".into(),
        customer_email: Default::default(),
        payment_method: "all".into(),
        widget: "p1_1".into(),
        success_url: String::new(),
        failure_url: String::new(),
        country_code: String::new(),
        language: String::new(),
        custom_params: Default::default(),
        status: PaymentStatus::Paid,
        provider_ref: None,
        test: true,
        redirect_url: String::new(),
        subscription_id: None,
        cancelled_amount: MinorUnits(0),
        pending_cancel_amount: MinorUnits(0),
        version: 1,
        created_at: 0,
        updated_at: 0,
        paid_at: None,
        failed_at: None,
        cancelled_at: None,
    }
}
