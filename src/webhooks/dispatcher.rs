//! Sends due webhooks: claims a batch from the outbox, signs each with the endpoint's active
//! secrets (Standard Webhooks), POSTs it with short timeouts and no redirects, and settles it:
//! 2xx delivered; 410 Gone disables the endpoint; anything else is retried with exponential
//! backoff and jitter until the retry window (at least a day) runs out.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rand::Rng;
use secrecy::ExposeSecret;

use super::{
    endpoints,
    outbox::{self, Attempt, Delivery, Settle},
    signature,
};
use crate::{
    net::egress,
    secrets::MasterKeys,
    shutdown::Shutdown,
    store::{Db, now_ms},
};

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub allow_internal_targets: bool,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// First retry delay; each next one is 4 times longer, up to `retry_max`, with +-20% jitter.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// A delivery not delivered within this time of its creation is given up.
    pub retry_window: Duration,
    pub poll_interval: Duration,
    /// How long a replica holds a claimed delivery.
    pub claim: Duration,
    /// How long the previous secret keeps signing after a rotation.
    pub rotation_overlap: Duration,
}

const BATCH: u32 = 32;

#[derive(Clone)]
pub struct Dispatcher {
    db: Db,
    keys: Arc<MasterKeys>,
    http: reqwest::Client,
    settings: WebhookSettings,
}

impl Dispatcher {
    pub fn new(db: Db, keys: Arc<MasterKeys>, settings: WebhookSettings) -> Self {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve and reach internal hosts on our behalf.
            .no_proxy()
            .user_agent(concat!("paygate-webhooks/", env!("CARGO_PKG_VERSION")));
        if !settings.allow_internal_targets {
            builder = builder.dns_resolver(Arc::new(egress::PublicOnly));
        }
        let http = builder.build().expect("the webhook HTTP client builds with static settings");
        Self { db, keys, http, settings }
    }

    /// Runs until shutdown; a batch in flight finishes first.
    pub fn spawn(self, mut shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                // In-flight deliveries finish before the loop looks at the shutdown signal again.
                match self.run_once().await {
                    Ok(sent) if sent > 0 => continue, // more may be due right away
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "webhook dispatcher: cannot claim deliveries"),
                }
                if shutdown.is_signalled() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.poll_interval) => {}
                    _ = shutdown.signalled() => return,
                }
            }
        })
    }

    /// Claims and sends one batch; returns how many were attempted.
    pub async fn run_once(&self) -> Result<usize, super::WebhookError> {
        let now = now_ms();
        let lease = now + self.settings.claim.as_millis() as i64;
        let batch = outbox::claim(&self.db, now, lease, BATCH).await?;
        let count = batch.len();
        futures_util::future::join_all(batch.into_iter().map(|d| self.deliver(d))).await;
        Ok(count)
    }

    async fn deliver(&self, delivery: Delivery) {
        let span = tracing::info_span!(
            "webhook.delivery", otel.kind = "client", delivery_id = %delivery.delivery_id,
            event_type = %delivery.event_type, payment_id = delivery.payment_id.as_deref().unwrap_or("")
        );
        let result = tracing::Instrument::instrument(self.try_deliver(&delivery), span).await;
        if let Err(e) = result {
            tracing::warn!(delivery_id = %delivery.delivery_id, error = %e, "webhook delivery not settled; retried after its claim runs out");
        }
    }

    async fn try_deliver(&self, delivery: &Delivery) -> Result<(), super::WebhookError> {
        let mut conn = self.db.pool().acquire().await?;
        let endpoint = endpoints::get(&mut conn, &delivery.merchant_id).await?;
        drop(conn);
        let Some(endpoint) = endpoint.filter(|e| e.disabled_at.is_none()) else {
            return outbox::fail_unsent(&self.db, &delivery.delivery_id, "the webhook endpoint is disabled or removed")
                .await;
        };
        if let Err(problem) = egress::check_url(&endpoint.url, self.settings.allow_internal_targets) {
            return outbox::fail_unsent(&self.db, &delivery.delivery_id, &format!("url {problem}")).await;
        }
        let now = now_ms();
        let timestamp = now / 1000;
        let signatures: Vec<String> = endpoint
            .active_secrets(&self.keys, now)?
            .iter()
            .filter_map(|secret| {
                signature::sign(secret.expose_secret(), &delivery.delivery_id, timestamp, &delivery.payload)
            })
            .collect();
        let started = Instant::now();
        let response = self
            .http
            .post(&endpoint.url)
            .headers(crate::telemetry::outgoing_trace_headers())
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.delivery_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signatures.join(" "))
            .body(delivery.payload.clone())
            .send()
            .await;
        let latency_ms = started.elapsed().as_millis() as i64;
        let (status_code, error) = match &response {
            Ok(r) => (Some(i64::from(r.status().as_u16())), None),
            Err(e) => (None, Some(describe(e))),
        };
        let attempt = Attempt { attempt: delivery.attempts + 1, status_code, error, latency_ms, at: now_ms() };
        let outcome = match status_code {
            Some(code) if (200..300).contains(&code) => "delivered",
            Some(410) => "gone",
            _ => "failed",
        };
        metrics::counter!("paygate_webhook_deliveries_total", "outcome" => outcome).increment(1);
        let settle = match outcome {
            "delivered" => Settle::Succeeded,
            "gone" => {
                endpoints::disable(&self.db, &delivery.merchant_id, "the endpoint answered 410 Gone").await?;
                Settle::Failed
            }
            _ => {
                let next = now_ms() + self.backoff(attempt.attempt);
                if next - delivery.created_at > self.settings.retry_window.as_millis() as i64 {
                    Settle::Failed
                } else {
                    Settle::Retry(next)
                }
            }
        };
        tracing::info!(
            delivery_id = %delivery.delivery_id, event_type = %delivery.event_type, attempt = attempt.attempt,
            status = ?status_code, latency_ms, outcome, "webhook attempt"
        );
        outbox::record(&self.db, delivery, &attempt, settle).await
    }

    /// Milliseconds until the next attempt after `attempt` failed.
    fn backoff(&self, attempt: i64) -> i64 {
        let base = self.settings.retry_base.as_millis() as f64;
        let exponent = (attempt - 1).clamp(0, 20) as i32;
        let delay = (base * 4f64.powi(exponent)).min(self.settings.retry_max.as_millis() as f64);
        (delay * rand::rng().random_range(0.8..1.2)) as i64
    }
}

/// What went wrong, without the URL (it may carry a token in its query).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_redirect() {
        "redirect refused".into()
    } else {
        "request failed".into()
    }
}
