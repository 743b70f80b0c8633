//! `paymentwall-sim`: a stand-in for Paymentwall in tests and local runs.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
mod sim;

use sim::{Project, Sim, SimSettings, router};

#[derive(Parser)]
#[command(name = "paymentwall-sim", about = "Paymentwall simulator: widget, hosted page, signed pingbacks")]
struct Cli {
    /// Address to listen on (port 0 picks a free one; the chosen address is logged).
    #[arg(long, env = "SIM_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// A project: key=K,secret=S,pingback_url=U[,sign_version=3][,test_mode=true]. Repeatable;
    /// projects can also be added at run time with POST /control/projects.
    #[arg(long = "project")]
    projects: Vec<Project>,
    /// Wait between pingback attempts that did not get "OK".
    #[arg(long, default_value_t = 1000)]
    retry_interval_ms: u64,
    /// Give up on a pingback after this many attempts.
    #[arg(long, default_value_t = 100)]
    max_attempts: u32,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt().json().flatten_event(true).with_target(false).init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = SimSettings {
        retry_interval: Duration::from_millis(cli.retry_interval_ms),
        max_attempts: cli.max_attempts.max(1),
    };
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, projects = cli.projects.len(), "paymentwall-sim ready");
    axum::serve(listener, router(Sim::new(cli.projects, settings)))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
