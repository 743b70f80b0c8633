//! Connection limits, tried as an attacker would: idle and slow connections on the public HTTP port
//! are closed and capped, so they cannot starve the process of descriptors; the gRPC port closes
//! connections that never speak, caps streams per connection and refuses oversized messages.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use paygate::proto::v1::{self as pb, payment_service_client::PaymentServiceClient};
use tonic::{Code, transport::Channel};

use crate::support::*;

/// Sockets the process holds open.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Waits (up to `limit`) for the server to close `stream`: a read returns end of file or an error.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 1024];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_http_connections_are_closed_and_capped() {
    let db = TestDb::new(Backend::Sqlite).await;
    let gate =
        Paygate::start(&db, &[("PAYGATE_HTTP_MAX_CONNECTIONS", "20"), ("PAYGATE_HTTP_HEADER_READ_TIMEOUT_MS", "1000")]);
    let pid = gate.process.pid();
    let baseline = open_sockets(pid);

    // 60 connections that never send a byte, or send one and go quiet (as if starting an HTTP/2
    // preface): at most 20 are held at once, and each is closed.
    let mut idle: Vec<TcpStream> = (0..60).map(|_| TcpStream::connect(gate.http_addr).unwrap()).collect();
    for stream in idle.iter_mut().step_by(2) {
        stream.write_all(b"P").unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let held = open_sockets(pid) - baseline;
    println!("60 idle connections: paygate holds {held} sockets");
    assert!(held <= 20, "{held} connections held past the cap of 20");
    for stream in &mut idle {
        assert!(closed_within(stream, Duration::from_secs(6)).is_some(), "an idle connection stayed open");
    }

    // Headers trickled a byte at a time are cut off at the header deadline, not kept alive by the trickle.
    let mut slow = TcpStream::connect(gate.http_addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    slow.set_nonblocking(false).unwrap();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(4) {
        if slow.write_all(b"X").is_err() {
            cut = true;
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(200)).is_some() {
            cut = true;
            break;
        }
    }
    assert!(cut, "a trickled request head was still open after 4 s");
    println!("trickled head cut after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3));

    // A keep-alive connection left idle after a response is closed too.
    let mut keep = TcpStream::connect(gate.http_addr).unwrap();
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    keep.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut first = [0u8; 12];
    keep.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    assert!(closed_within(&mut keep, Duration::from_secs(3)).is_some(), "an idle keep-alive connection stayed open");

    // Through it all, the port still serves.
    let answer = http_client().get(gate.http_url("/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_outlives_the_total_timeout_is_answered_408() {
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = proxy::TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let via_proxy = db.url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let gate = Paygate::start(
        &db,
        &[
            ("PAYGATE_DATABASE_URL", via_proxy.as_str()),
            ("PAYGATE_HTTP_REQUEST_TIMEOUT_MS", "500"),
            ("PAYGATE_PINGBACK_TIMEOUT_MS", "20000"),
        ],
    );
    // The database stops answering: the channel lookup hangs, the request deadline answers.
    proxy.freeze();
    let started = Instant::now();
    let answer = http_client().get(gate.http_url("/pingback/paymentwall/some-channel?type=0")).send().await.unwrap();
    assert_eq!(answer.status(), 408);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    proxy.restore();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_port_closes_silent_connections_caps_streams_and_refuses_oversized_messages() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (_, key) = create_merchant(&db, "Acme");
    let gate = Paygate::start(
        &db,
        &[
            ("PAYGATE_GRPC_HANDSHAKE_TIMEOUT_MS", "500"),
            ("PAYGATE_GRPC_MAX_CONCURRENT_STREAMS", "3"),
            ("PAYGATE_GRPC_MAX_MESSAGE_BYTES", "65536"),
            ("PAYGATE_GRPC_MAX_CONNECTIONS", "4"),
        ],
    );

    // A connection that never sends the HTTP/2 preface, or only its first bytes, is closed.
    let mut silent = TcpStream::connect(gate.grpc_addr).unwrap();
    let mut partial = TcpStream::connect(gate.grpc_addr).unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let closed = closed_within(&mut silent, Duration::from_secs(3)).expect("a silent gRPC connection stayed open");
    println!("silent gRPC connection closed after {closed:?}");
    assert!(closed_within(&mut partial, Duration::from_secs(3)).is_some(), "a half-sent preface kept its connection");
    drop((silent, partial));

    // A request over the message limit is refused as too large, not as an internal error.
    let mut payments = gate.payments(&key).await;
    let mut big = checkout_request("main", "order-big");
    big.order_name = "x".repeat(100_000);
    let status = payments.create_checkout_session(big).await.unwrap_err();
    assert!(matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted), "{status:?}");

    drop(payments);

    // Three streams fill a connection; a fourth call on it waits until one ends.
    {
        let mut client = PaymentServiceClient::with_interceptor(gate.grpc().await, Bearer::new(&key));
        let mut streams = Vec::new();
        for _ in 0..3 {
            streams.push(client.watch_payments(pb::WatchPaymentsRequest::default()).await.unwrap().into_inner());
        }
        let list = || {
            let mut client = client.clone();
            async move { client.list_payments(pb::ListPaymentsRequest::default()).await }
        };
        assert!(tokio::time::timeout(Duration::from_millis(700), list()).await.is_err(), "a fourth stream was let in");
        streams.pop();
        tokio::time::timeout(Duration::from_secs(5), list()).await.expect("a freed stream lets the call in").unwrap();
    }

    // At most four connections: a fifth is not served until one closes.
    let bearer = Bearer::new(&key);
    let call = |channel: Channel| {
        let mut client = PaymentServiceClient::with_interceptor(channel, bearer.clone());
        async move { client.list_payments(pb::ListPaymentsRequest::default()).await }
    };
    let endpoint = Channel::from_shared(format!("http://{}", gate.grpc_addr)).unwrap();
    let mut open = Vec::new();
    for _ in 0..4 {
        let channel = tokio::time::timeout(Duration::from_secs(5), endpoint.connect()).await.unwrap().unwrap();
        call(channel.clone()).await.unwrap();
        open.push(channel);
    }
    let fifth =
        tokio::time::timeout(Duration::from_millis(700), async { call(endpoint.connect().await.unwrap()).await }).await;
    assert!(fifth.is_err(), "a fifth connection was served");
    drop(open);
    let channel = tokio::time::timeout(Duration::from_secs(5), endpoint.connect()).await.unwrap().unwrap();
    call(channel).await.unwrap();
}
