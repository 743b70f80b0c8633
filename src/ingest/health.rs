//! Probes: `/healthz` says the process is up; `/readyz` says it can do its work right now.

use std::time::Duration;

use axum::{extract::State, http::StatusCode};
use secrecy::ExposeSecret;

use crate::app::AppState;

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    if state.shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    if let Err(e) = state.db.ping().await {
        tracing::warn!(error = %e, "readiness: database unreachable");
        return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n".into());
    }
    if let Some(url) = &state.settings.redis_url
        && let Err(e) = ping_redis(url.expose_secret()).await
    {
        tracing::warn!(error = %e, "readiness: redis unreachable");
        return (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable\n".into());
    }
    (StatusCode::OK, "ready\n".into())
}

async fn ping_redis(url: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    redis::cmd("PING").query_async::<String>(&mut conn).await?;
    Ok(())
}
