//! Operations: Prometheus metrics move by exactly the requests made.

use std::time::Duration;

use paygate::proto::v1 as pb;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_a_checkout_and_its_pingbacks() {
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[]);
    gate.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let mut payments = gate.payments(&api_key).await;

    let checkout = [("method", "paygate.v1.PaymentService/CreateCheckoutSession"), ("code", "0")];
    let paid = [("type", "0"), ("outcome", "applied")];
    let refused = [("type", "0"), ("outcome", "bad_signature")];
    let before = (
        metric_series(&gate, "paygate_grpc_requests_total", &checkout).await,
        metric_series(&gate, "paygate_pingbacks_total", &paid).await,
        metric_series(&gate, "paygate_pingbacks_total", &refused).await,
        metric_series(&gate, "paygate_pingbacks_total", &[]).await,
    );

    // One checkout and its pingback, one forged pingback.
    checkout_and_pay(&gate, &mut payments, "order-1").await;
    let forged = Pingback::new("pay_x").uid("u").one_time().reference("b1").signed("not-the-secret");
    let response =
        http_client().get(format!("{}?{forged}", gate.http_url("/pingback/paymentwall/main"))).send().await.unwrap();
    assert_eq!(response.status(), 403);

    let after = (
        metric_series(&gate, "paygate_grpc_requests_total", &checkout).await,
        metric_series(&gate, "paygate_pingbacks_total", &paid).await,
        metric_series(&gate, "paygate_pingbacks_total", &refused).await,
        metric_series(&gate, "paygate_pingbacks_total", &[]).await,
    );
    assert_eq!(after.0 - before.0, 1.0, "one CreateCheckoutSession, code OK");
    assert_eq!(after.1 - before.1, 1.0, "one pingback applied");
    assert_eq!(after.2 - before.2, 1.0, "one pingback refused for its signature");
    assert_eq!(after.3 - before.3, 2.0, "no other pingback counted");
    let failed = [("method", "paygate.v1.PaymentService/GetPayment"), ("code", "5")];
    let status = payments
        .get_payment(pb::GetPaymentRequest {
            lookup: Some(pb::get_payment_request::Lookup::PaymentId("pay_nope".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(
        metric_series(&gate, "paygate_grpc_requests_total", &failed).await,
        1.0,
        "NOT_FOUND counted with code 5"
    );
    assert!(metric_series(&gate, "paygate_db_pool_connections", &[("state", "idle")]).await >= 0.0);
    let text = http_client().get(gate.http_url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "paygate_grpc_request_duration_seconds_bucket",
        "paygate_db_pool_connections",
        "paygate_channel_cache_requests_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_finishes_the_pingback_in_flight_and_exits_zero() {
    use std::time::{Duration, Instant};

    use crate::support::proxy::TcpProxy;

    let db = TestDb::new(Backend::Postgres).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let target = url::Url::parse(&db.url).unwrap();
    let target = format!("{}:{}", target.host_str().unwrap(), target.port().unwrap_or(5432));
    let proxy = TcpProxy::start(target.parse().unwrap()).await;
    let proxied = db.url.replacen(&target, &proxy.addr.to_string(), 1);
    let mut gate = Paygate::start(&db, &[("PAYGATE_DATABASE_URL", &proxied), ("PAYGATE_SHUTDOWN_GRACE_MS", "8000")]);
    gate.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let mut payments = gate.payments(&api_key).await;
    let session = payments.create_checkout_session(checkout_request("main", "order-1")).await.unwrap().into_inner();
    let mut stream = payments.watch_payments(pb::WatchPaymentsRequest::default()).await.unwrap().into_inner();

    // A pingback stuck on the database when SIGTERM arrives.
    let query =
        Pingback::new(&session.payment_id).uid("user-40012").one_time().reference("b-term").test().signed(SECRET_KEY);
    let url = format!("{}?{query}", gate.http_url("/pingback/paymentwall/main"));
    proxy.freeze();
    let in_flight = tokio::spawn(async move {
        let response = http_client().get(url).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let pid = gate.process.pid();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();

    // The open stream ends with UNAVAILABLE at once.
    match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
        Ok(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    // The database comes back: the pingback in flight finishes, committed, and is answered OK.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "OK"));
    let exit = gate.process.terminate(Duration::from_secs(8)).expect("exits within the grace period");
    assert!(exit.success(), "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(
        db.count("SELECT COUNT(*) FROM payments WHERE status = 'PAID' AND payment_id = $1", &session.payment_id).await,
        1
    );
}

/// A real OTLP trace receiver: collects every exported span.
mod otlp {
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::{
        collector::trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
        trace::v1::Span,
    };
    use tonic::{Request, Response, Status};

    #[derive(Clone, Default)]
    pub struct Collector(pub Arc<Mutex<Vec<Span>>>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: Request<ExportTraceServiceRequest>,
        ) -> Result<Response<ExportTraceServiceResponse>, Status> {
            let mut spans = self.0.lock().unwrap();
            for resource in request.into_inner().resource_spans {
                for scope in resource.scope_spans {
                    spans.extend(scope.spans);
                }
            }
            Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
        }
    }

    pub async fn start() -> (String, Collector) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        (format!("http://{addr}"), collector)
    }

    pub fn attribute(span: &Span, key: &str) -> Option<String> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        span.attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_with_the_callers_trace_id() {
    use std::time::Duration;

    let (endpoint, collector) = otlp::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let sim = Simulator::start();
    let (_, api_key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(&db, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100")]);
    gate.channels(&api_key).await.create_channel(channel_request(&sim, "main", pb::ChannelMode::Test)).await.unwrap();
    let mut payments = gate.payments(&api_key).await;

    // The client's own trace, as W3C trace context in the gRPC metadata.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(checkout_request("main", "order-traced"));
    request.metadata_mut().insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap());
    let session = payments.create_checkout_session(request).await.unwrap().into_inner();
    let pingback = Pingback::new(&session.payment_id).uid("user-40012").one_time().reference("b-traced").test();
    assert_eq!(pingback.send(&gate, "main").await, "OK");

    let mut checkout_span = None;
    let mut pingback_span = None;
    for _ in 0..200 {
        {
            let spans = collector.0.lock().unwrap();
            checkout_span = spans
                .iter()
                .find(|s| {
                    otlp::attribute(s, "rpc.method").as_deref()
                        == Some("paygate.v1.PaymentService/CreateCheckoutSession")
                })
                .cloned();
            pingback_span = spans
                .iter()
                .find(|s| s.name == "pingback" && otlp::attribute(s, "provider_ref").as_deref() == Some("b-traced"))
                .cloned();
        }
        if checkout_span.is_some() && pingback_span.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let checkout_span = checkout_span.expect("the checkout's span was exported");
    assert_eq!(hex::encode(&checkout_span.trace_id), trace_id, "the caller's trace continues");
    assert_eq!(otlp::attribute(&checkout_span, "payment_id").as_deref(), Some(session.payment_id.as_str()));
    let pingback_span = pingback_span.expect("the pingback's span was exported");
    assert_eq!(otlp::attribute(&pingback_span, "payment_id").as_deref(), Some(session.payment_id.as_str()));
    assert_eq!(otlp::attribute(&pingback_span, "outcome").as_deref(), Some("applied"));
    let exported = format!("{:?}", collector.0.lock().unwrap());
    assert!(!exported.contains(SECRET_KEY), "no secret in any span");
    // The log line of the checkout carries the caller's trace id.
    let logs = gate.process.logs();
    let line = logs.iter().find(|l| l.contains("checkout created")).expect("checkout log line");
    assert!(line.contains(trace_id), "{line}");
}

/// `paygate serve --grpc-addr/--http-addr` choose the ports; a taken port says where to change it;
/// the ready line names both addresses and the database without its credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_its_addresses_as_flags_and_a_taken_port_says_which_setting_moves_it() {
    let db = TestDb::new(Backend::Sqlite).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let workdir = tempfile::tempdir().unwrap();
    let out = paygate_command(&db, workdir.path())
        .args(["serve", "--grpc-addr", &taken_addr, "--http-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot listen on {taken_addr}")), "{stderr}");
    assert!(stderr.contains("PAYGATE_GRPC_ADDR or paygate serve --grpc-addr"), "{stderr}");

    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut cmd = paygate_command(&db, workdir.path());
    cmd.args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", &free]);
    let (process, ready) = Process::start("paygate", cmd, "paygate ready");
    assert_eq!(ready["http_addr"].as_str(), Some(free.as_str()), "{ready}");
    let database = ready["database"].as_str().unwrap_or_default();
    assert!(database.starts_with("sqlite:") && !database.contains('?'), "{ready}");
    drop(process);
}

/// `paygate demo` reaches PAID on its own: merchant, key, channel, checkout paid through the
/// simulator beside it; it says what happened and keeps serving until told to stop.
#[test]
fn the_demo_reaches_paid_on_its_own_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let workdir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_paygate"))
        .current_dir(workdir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["demo", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed however the test ends, simulator included (it stops with the demo).
    struct Demo(std::process::Child);
    impl Drop for Demo {
        fn drop(&mut self) {
            // Only while it is still ours: once reaped, its PID may belong to another process.
            if let Ok(None) = self.0.try_wait() {
                let _ = std::process::Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
                let _ = self.0.wait();
            }
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let mut child = Demo(child);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = std::time::Instant::now();
    let mut said = Vec::new();
    // The story ends with the commands to try next, the last of them the metrics URL.
    while !said.iter().any(|l: &String| l.contains("/metrics")) {
        let left = std::time::Duration::from_secs(60).saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => said.push(line),
            Err(_) => panic!("the demo did not reach PAID within a minute; it said:\n{}", said.join("\n")),
        }
    }
    let text = said.join("\n");
    assert!(text.contains("Reached PAID in "), "{text}");
    assert!(text.contains("is PAID (Paymentwall ref "), "{text}");
    assert!(text.contains("event 0-1 payment.paid") || text.contains(" payment.paid"), "{text}");
    assert!(text.contains("/pingback/paymentwall/demo?") && text.contains("&sig="), "the signed pingback: {text}");
    assert!(text.contains("paygate watch"), "what to try next: {text}");
    // Still serving after the story; SIGTERM stops it cleanly, simulator included.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(child.0.try_wait().unwrap().is_none(), "keeps running until told to stop");
    std::process::Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The resident memory of a process, from /proc (Linux), in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS line");
    kib.trim().trim_end_matches("kB").trim().parse::<u64>().expect("VmRSS in kB") * 1024
}

/// Calls to methods paygate does not serve, with no credentials, each under a path of its own: they
/// all count as one `other` label, so neither the process nor /metrics grows with them.
/// `PAYGATE_TEST_UNKNOWN_CALLS` sets how many (the figure is 50,000); it prints the growth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_unknown_methods_share_one_metric_label() {
    let calls: usize = std::env::var("PAYGATE_TEST_UNKNOWN_CALLS").ok().and_then(|n| n.parse().ok()).unwrap_or(2_000);
    let db = TestDb::new(Backend::Sqlite).await;
    let gate = Paygate::start(&db, &[]);
    let other = [("method", "other")];
    let before = metric_series(&gate, "paygate_grpc_requests_total", &other).await;
    let rss_before = resident_bytes(gate.process.pid());
    let metrics_before = http_client().get(gate.http_url("/metrics")).send().await.unwrap().text().await.unwrap().len();

    let mut grpc = tonic::client::Grpc::new(gate.grpc().await);
    for i in 0..calls {
        let path = format!("/paygate.v1.{:060x}/{:016x}", i as u128 * 7919, i);
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let status = grpc
            .unary(tonic::Request::new(()), path.parse().unwrap(), codec)
            .await
            .expect_err("no such method, and no credentials");
        assert!(matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::Unimplemented), "{status:?}");
    }

    let text = http_client().get(gate.http_url("/metrics")).send().await.unwrap().text().await.unwrap();
    let after = metric_series(&gate, "paygate_grpc_requests_total", &other).await;
    assert_eq!(after - before, calls as f64, "every unknown call counted under method=\"other\"");
    assert!(!text.contains(&format!("{:016x}", 1)), "no label names a path a caller made up");
    let series = text.lines().filter(|l| l.starts_with("paygate_grpc_requests_total{")).count();
    assert!(series < 20, "{series} series of paygate_grpc_requests_total");
    eprintln!(
        "{calls} unknown calls: resident {} -> {} KiB, /metrics {} -> {} bytes",
        rss_before / 1024,
        resident_bytes(gate.process.pid()) / 1024,
        metrics_before,
        text.len()
    );
}

/// Settings that could never work are refused at start-up, naming the variable: an admin token
/// that reads as a payment client token (`pct_`, checked first, so it could never be used), and
/// a gRPC-Web origin with a path (no browser sends one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_an_admin_token_that_reads_as_a_client_token_and_an_origin_with_a_path() {
    let db = TestDb::new(Backend::Sqlite).await;
    let workdir = tempfile::tempdir().unwrap();
    for (variable, value) in [
        ("PAYGATE_ADMIN_TOKEN", "pct_an-operator-token-0123456789"),
        ("PAYGATE_GRPC_WEB_ALLOWED_ORIGINS", "https://shop.example, https://admin.example/console"),
        ("PAYGATE_GRPC_WEB_ALLOWED_ORIGINS", "https://admin.example?x=1"),
    ] {
        let mut cmd = paygate_command(&db, workdir.path());
        cmd.args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]).env(variable, value);
        let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("{variable}={value:?}: paygate kept running");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{variable}={value:?}");
        assert!(stderr.contains(variable), "{variable}={value:?}: {stderr}");
        if variable == "PAYGATE_ADMIN_TOKEN" {
            assert!(stderr.contains("pct_") && !stderr.contains(value), "names the prefix, not the token: {stderr}");
        }
    }
}

/// An operator (and the upgrade test) tells releases apart by `paygate --version` and by the
/// `paygate_build_info` series of each replica: the release, and the schema version it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_and_the_schema_it_needs_are_printed_and_exported() {
    let newest = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_string_lossy().split('_').next()?.parse::<u32>().ok())
        .max()
        .unwrap()
        .to_string();
    let out = std::process::Command::new(PAYGATE).arg("--version").output().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("paygate {version} (schema {newest})\n"));

    let db = TestDb::new(Backend::Sqlite).await;
    let gate = Paygate::start(&db, &[]);
    let labels = [("version", version), ("schema", newest.as_str())];
    assert_eq!(metric_series(&gate, "paygate_build_info", &labels).await, 1.0);
}
