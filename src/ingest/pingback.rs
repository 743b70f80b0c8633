//! `GET /pingback/paymentwall/{channel_key}`. Order of work: resolve channel -> check source
//! address -> verify signature -> refuse test pingbacks on LIVE channels -> store and apply in one
//! transaction -> answer `OK`. Only a committed (or already committed) pingback is answered `OK`.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Path, RawQuery, State, rejection::PathRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use secrecy::ExposeSecret;
use tracing::Instrument;

use super::AppState;
use crate::{
    channels::{ChannelError, ChannelMode},
    net::client_ip,
    payments::notifications::{self, Applied, Notice, NotificationError, RawNotification},
    providers::paymentwall::{
        SignVersion,
        pingback::{ParseError, Pingback},
    },
    store::StoreError,
    validation,
};

/// How much of a refused channel key a log line shows.
const LOGGED_KEY_BYTES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PingbackError {
    #[error("unknown channel")]
    UnknownChannel,
    /// Refused before any lookup or log line: the key can be anything a client typed.
    #[error("channel_key: {0}")]
    BadChannelKey(String),
    #[error("source address {0} is not allowed for this channel")]
    SourceNotAllowed(IpAddr),
    #[error("malformed pingback: {0}")]
    Malformed(#[from] ParseError),
    #[error("bad signature")]
    BadSignature,
    #[error("signature version {0} is not accepted (use 2 or 3)")]
    SignVersionNotAccepted(u32),
    #[error("test pingback (is_test=1) on a LIVE channel")]
    TestOnLiveChannel,
    #[error("no such payment on this channel")]
    PaymentNotFound,
    #[error("timed out")]
    Timeout,
    #[error("the payment is being changed by another request")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Channel(ChannelError),
    #[error("{0}")]
    Corrupt(String),
    /// Too many refused pingbacks from this source; answered 429 instead of the refusal itself.
    #[error("too many refused pingbacks from this address; retry in {} s", retry_after_secs(*.retry_after))]
    RateLimited { retry_after: Duration, refused: Box<PingbackError> },
}

/// Whole seconds for `Retry-After`, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

/// The pingback's `type` as a metric label: only the types Paymentwall defines, else "other".
fn pingback_type_label(query: &str) -> &'static str {
    const TYPES: [&str; 10] = ["0", "1", "2", "12", "13", "14", "200", "201", "202", "203"];
    let raw = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "type").map(|(_, v)| v.into_owned());
    raw.and_then(|t| TYPES.iter().find(|known| **known == t).copied()).unwrap_or("other")
}

impl PingbackError {
    /// The outcome label of `paygate_pingbacks_total`.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            Self::UnknownChannel => "unknown_channel",
            Self::SourceNotAllowed(_) => "source_not_allowed",
            Self::Malformed(_) | Self::BadChannelKey(_) | Self::Store(StoreError::InvalidValue(_)) => "malformed",
            Self::BadSignature | Self::SignVersionNotAccepted(_) => "bad_signature",
            Self::TestOnLiveChannel => "test_on_live",
            Self::PaymentNotFound => "unknown_payment",
            Self::Timeout | Self::Busy | Self::Store(StoreError::Unavailable(_)) => "unavailable",
            Self::Store(_) | Self::Channel(_) | Self::Corrupt(_) => "error",
            Self::RateLimited { .. } => "rate_limited",
        }
    }

    /// Refused for something the sender did (not an outage, not a valid pingback we cannot
    /// place): what the per-source limit counts.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::UnknownChannel
                | Self::SourceNotAllowed(_)
                | Self::Malformed(_)
                | Self::BadChannelKey(_)
                | Self::Store(StoreError::InvalidValue(_))
                | Self::BadSignature
                | Self::SignVersionNotAccepted(_)
                | Self::TestOnLiveChannel
        )
    }

    /// The one line the provider sees. Internal detail stays in the log.
    pub fn public_reason(&self) -> String {
        match self {
            Self::Store(StoreError::Unavailable(_)) | Self::Timeout | Self::Busy => {
                "temporarily unavailable; retry later".to_owned()
            }
            Self::Store(StoreError::InvalidValue(_)) => "malformed pingback: a value is not acceptable".to_owned(),
            Self::Store(_) | Self::Channel(_) | Self::Corrupt(_) => "internal error; retry later".to_owned(),
            other => other.to_string(),
        }
    }
}

impl From<ChannelError> for PingbackError {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::NotFound => Self::UnknownChannel,
            ChannelError::Store(store) => Self::Store(store),
            other => Self::Channel(other),
        }
    }
}

impl From<NotificationError> for PingbackError {
    fn from(e: NotificationError) -> Self {
        use crate::payments::PaymentError;
        match e {
            NotificationError::UnknownPayment(_) => Self::PaymentNotFound,
            NotificationError::Concurrent => Self::Busy,
            NotificationError::Payment(PaymentError::Store(store)) => Self::Store(store),
            NotificationError::Payment(other) => Self::Corrupt(other.to_string()),
        }
    }
}

/// `GET /pingback/paymentwall/{channel_key}`: the URL Paymentwall projects are configured with.
pub async fn paymentwall(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    channel_key: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    // A segment that is not UTF-8 once decoded is as bad as one with a NUL in it.
    let channel_key = channel_key.map(|Path(key)| key).unwrap_or_else(|_| "\u{fffd}".to_owned());
    receive_paymentwall(state, peer, channel_key, query, headers).await
}

/// `GET /callbacks/{provider}/{channel_key}`: one callback URL shape for every provider.
pub async fn callback(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (provider, channel_key) = path.map(|Path(parts)| parts).unwrap_or_default();
    match provider.as_str() {
        "paymentwall" => receive_paymentwall(state, peer, channel_key, query, headers).await,
        _ => (StatusCode::NOT_FOUND, "unknown provider\n").into_response(),
    }
}

async fn receive_paymentwall(
    state: AppState,
    peer: SocketAddr,
    channel_key: String,
    query: Option<String>,
    headers: HeaderMap,
) -> Response {
    let source = client_ip::resolve(peer.ip(), &headers, &state.settings.trusted_proxies);
    let key_problem = validation::problem(&channel_key, validation::CHANNEL_KEY);
    let logged_key = validation::loggable(&channel_key, LOGGED_KEY_BYTES);
    let span = tracing::info_span!(
        "pingback", otel.kind = "server", provider = "paymentwall", channel_key = %logged_key, %source,
        pingback_type = tracing::field::Empty, provider_ref = tracing::field::Empty,
        payment_id = tracing::field::Empty, outcome = tracing::field::Empty, trace_id = tracing::field::Empty
    );
    crate::telemetry::continue_trace(&span, &headers);
    let query = query.unwrap_or_default();
    let pingback_type = pingback_type_label(&query);
    let work = async {
        match key_problem {
            Some(problem) => Err(PingbackError::BadChannelKey(problem)),
            None => handle(&state, &channel_key, source, query).await,
        }
    };
    match tokio::time::timeout(state.pingback_timeout(), work.instrument(span.clone())).await {
        Ok(Ok(applied)) => {
            let outcome = match &applied {
                Applied::Changed { .. } => "applied",
                Applied::Unchanged => "unchanged",
                Applied::Duplicate => "duplicate",
            };
            metrics::counter!("paygate_pingbacks_total", "type" => pingback_type, "outcome" => outcome).increment(1);
            span.record("outcome", outcome);
            if let Applied::Changed { payment, .. } = &applied {
                span.record("payment_id", payment.payment_id.as_str());
            }
            span.in_scope(|| match &applied {
                Applied::Changed { payment, event_id } => tracing::info!(
                    payment_id = %payment.payment_id, status = %payment.status, event_id, "pingback applied"
                ),
                Applied::Unchanged => tracing::info!("pingback acknowledged; it changes nothing"),
                Applied::Duplicate => tracing::info!("duplicate pingback acknowledged"),
            });
            (StatusCode::OK, "OK").into_response()
        }
        Ok(Err(err)) => {
            // Valid pingbacks never reach here, so a flood of forged ones cannot slow them down.
            let err = match &state.pingback_refusals {
                Some(limiter) if err.is_refusal() => match limiter.check(&source.to_string()).await {
                    Ok(()) => err,
                    Err(retry_after) => PingbackError::RateLimited { retry_after, refused: Box::new(err) },
                },
                _ => err,
            };
            metrics::counter!("paygate_pingbacks_total", "type" => pingback_type, "outcome" => err.outcome_label())
                .increment(1);
            span.record("outcome", err.outcome_label());
            span.in_scope(|| match &err {
                PingbackError::Store(StoreError::InvalidValue(_)) => tracing::warn!(error = %err, "pingback refused"),
                PingbackError::Store(_) | PingbackError::Channel(_) | PingbackError::Corrupt(_) => {
                    tracing::error!(error = %err, "pingback failed")
                }
                // A flood is counted by the metric, not written line by line.
                PingbackError::RateLimited { .. } => tracing::debug!(error = %err, "pingback refused"),
                _ => tracing::warn!(error = %err, "pingback refused"),
            });
            err.into_response()
        }
        Err(_) => {
            metrics::counter!("paygate_pingbacks_total", "type" => pingback_type, "outcome" => "timeout").increment(1);
            span.in_scope(|| tracing::warn!("pingback timed out"));
            PingbackError::Timeout.into_response()
        }
    }
}

async fn handle(state: &AppState, channel_key: &str, source: IpAddr, query: String) -> Result<Applied, PingbackError> {
    let channel = state.channels.unscoped(channel_key).await?;
    let pw = &channel.paymentwall;
    if !pw.pingback_allowlist.iter().any(|net| net.contains(&source)) {
        return Err(PingbackError::SourceNotAllowed(source));
    }
    let pingback = Pingback::parse(&query)?;
    let span = tracing::Span::current();
    span.record("pingback_type", pingback.kind);
    span.record("provider_ref", pingback.reference.as_str());
    if !pingback.verify(pw.secret_key.expose_secret()) {
        return Err(PingbackError::BadSignature);
    }
    // v1 signs neither `is_test` nor `reason`; channels are configured for v2 or v3 only.
    if pingback.sign_version == SignVersion::V1 {
        return Err(PingbackError::SignVersionNotAccepted(1));
    }
    if pingback.is_test && channel.mode == ChannelMode::Live {
        return Err(PingbackError::TestOnLiveChannel);
    }
    let notice = Notice {
        payment_id: pingback.goodsid.clone().ok_or(PingbackError::Malformed(ParseError::Missing("goodsid")))?,
        provider_ref: pingback.reference.clone(),
        event: pingback.event,
        test: pingback.is_test,
    };
    let raw = RawNotification {
        channel_key: channel.channel_key.clone(),
        provider_ref: pingback.reference.clone(),
        kind: i64::from(pingback.kind),
        unique_ref: pingback.unique_ref.clone(),
        query,
    };
    Ok(notifications::ingest(&state.db, &raw, &notice).await?)
}
