//! Ready means one thing on every surface: `/readyz`, gRPC health and `paygate_ready` agree. The
//! database cut off: not ready anywhere. Redis down: ready, degraded, and saying so.

use std::time::Duration;

use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::support::{proxy::TcpProxy, *};

async fn grpc_health(gate: &Paygate, service: &str) -> ServingStatus {
    let mut health = HealthClient::new(gate.grpc().await);
    let request = HealthCheckRequest { service: service.into() };
    health.check(request).await.expect("health answers").into_inner().status()
}

async fn readyz(gate: &Paygate) -> (u16, String) {
    let answer = http_client().get(gate.http_url("/readyz")).send().await.unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// Polls until every surface says `ready` (within 5 s: the watcher checks every second).
async fn wait_ready(gate: &Paygate, ready: bool) {
    let want = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
    for _ in 0..100 {
        let overall = grpc_health(gate, "").await;
        let payments = grpc_health(gate, "paygate.v1.PaymentService").await;
        let metric = metric(gate, "paygate_ready").await;
        if overall == want && payments == want && metric == f64::from(u8::from(ready)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gRPC health and paygate_ready never became ready={ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_database_is_not_ready_on_any_surface() {
    let db = TestDb::new(Backend::Postgres).await;
    let target = url::Url::parse(&db.url).unwrap();
    let target = format!("{}:{}", target.host_str().unwrap(), target.port().unwrap_or(5432));
    let proxy = TcpProxy::start(target.parse().unwrap()).await;
    let proxied_url = db.url.replacen(&target, &proxy.addr.to_string(), 1);
    let gate =
        Paygate::start(&db, &[("PAYGATE_DATABASE_URL", &proxied_url), ("PAYGATE_DATABASE_ACQUIRE_TIMEOUT_MS", "500")]);
    wait_ready(&gate, true).await;
    assert_eq!(readyz(&gate).await, (200, "ready\n".into()));

    proxy.cut();
    assert_eq!(readyz(&gate).await, (503, "database unreachable\n".into()));
    wait_ready(&gate, false).await;
    assert_eq!(metric_series(&gate, "paygate_dependency_up", &[("dependency", "database")]).await, 0.0);

    proxy.restore();
    wait_ready(&gate, true).await;
    assert_eq!(readyz(&gate).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_redis_is_ready_and_says_it_is_degraded() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut redis = RedisServer::start();
    let gate = Paygate::start(&db, &[("PAYGATE_REDIS_URL", &redis.url())]);
    wait_ready(&gate, true).await;
    assert_eq!(readyz(&gate).await, (200, "ready\n".into()));

    redis.stop();
    let (status, body) = readyz(&gate).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready, degraded: redis unreachable"), "{body}");
    assert_eq!(metric_series(&gate, "paygate_dependency_up", &[("dependency", "redis")]).await, 0.0);
    // Still serving: checkouts and pingbacks do not need Redis.
    wait_ready(&gate, true).await;

    redis.restart();
    for _ in 0..100 {
        if readyz(&gate).await == (200, "ready\n".into()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never ready without degradation after Redis came back");
}
