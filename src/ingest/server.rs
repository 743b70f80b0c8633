//! The HTTP server of the public port, with the limits a port facing the internet needs: a cap
//! on open connections, a deadline for each request's head (which also closes idle keep-alive
//! connections), and a deadline for the whole request.

use std::{future::Future, net::SocketAddr, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::net::conn::{ConnectionCap, Guarded, Lingering, LingeringClose};

#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Open connections at most; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// A request's head must arrive within this, counted from when the connection opened or
    /// its previous response was sent: slow headers and idle keep-alive connections end here.
    pub header_read_timeout: Duration,
    /// A whole request must be answered within this (408 otherwise).
    pub request_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish; every
/// connection closes lingering, as one of `lingering`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    lingering: Lingering,
    shutdown: impl Future<Output = ()>,
) {
    let router = router.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        http::StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let cap = ConnectionCap::new(limits.max_connections);
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only: what providers, probes and Prometheus speak. Its head timer runs from the
    // first byte the connection is waiting for, so a client that sends nothing, a byte, or a
    // trickle, and an idle keep-alive connection, all end at the deadline.
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = cap.slot() => slot,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let service = router.clone().map_request(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            request
        });
        let io = Guarded::new(LingeringClose::new(tcp, lingering.clone()), limits.header_read_timeout, 0, slot);
        let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
    // New connections are refused while open requests finish.
    drop(listener);
    graceful.shutdown().await;
}
