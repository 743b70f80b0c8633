//! Provider callbacks: `GET /pingback/paymentwall/{channel_key}` (the URL Paymentwall projects are
//! configured with) and `/callbacks/{provider}/{channel_key}` for every provider. Order of work:
//! resolve the provider and the channel -> the provider reads and verifies the callback (its
//! source rules, signature, test mode) into a neutral notice -> store and apply in one transaction
//! -> answer what the provider expects. Only a committed (or already committed) callback is
//! answered as accepted.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, Path, RawQuery, State, rejection::PathRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use tracing::Instrument;

use super::AppState;
use crate::{
    channels::ChannelError,
    net::client_ip,
    payments::{
        flows::notification::{Applied, NotificationError},
        provider::{Callback, CallbackError, Provider},
    },
    store::StoreError,
    validation,
};

/// How much of a refused channel key a log line shows.
const LOGGED_KEY_BYTES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PingbackError {
    #[error("unknown provider")]
    UnknownProvider,
    #[error("unknown channel")]
    UnknownChannel,
    /// Refused before any lookup or log line: the key can be anything a client typed.
    #[error("channel_key: {0}")]
    BadChannelKey(String),
    #[error("source address {} is not allowed for this channel", client_ip::Shown(*.0))]
    SourceNotAllowed(IpAddr),
    /// The provider's words: which part is malformed and how.
    #[error("{0}")]
    Malformed(String),
    #[error("bad signature")]
    BadSignature,
    #[error("{0}")]
    SignatureNotAccepted(String),
    #[error("{0}")]
    TestOnLiveChannel(String),
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

impl PingbackError {
    /// The outcome label of `paygate_pingbacks_total`.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            Self::UnknownProvider => "unknown_provider",
            Self::UnknownChannel => "unknown_channel",
            Self::SourceNotAllowed(_) => "source_not_allowed",
            Self::Malformed(_) | Self::BadChannelKey(_) | Self::Store(StoreError::InvalidValue(_)) => "malformed",
            Self::BadSignature | Self::SignatureNotAccepted(_) => "bad_signature",
            Self::TestOnLiveChannel(_) => "test_on_live",
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
            Self::UnknownProvider
                | Self::UnknownChannel
                | Self::SourceNotAllowed(_)
                | Self::Malformed(_)
                | Self::BadChannelKey(_)
                | Self::Store(StoreError::InvalidValue(_))
                | Self::BadSignature
                | Self::SignatureNotAccepted(_)
                | Self::TestOnLiveChannel(_)
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

impl From<CallbackError> for PingbackError {
    fn from(e: CallbackError) -> Self {
        match e {
            CallbackError::SourceNotAllowed(source) => Self::SourceNotAllowed(source),
            CallbackError::Malformed(why) => Self::Malformed(why),
            CallbackError::BadSignature => Self::BadSignature,
            CallbackError::SignatureNotAccepted(why) => Self::SignatureNotAccepted(why),
            CallbackError::TestOnLive(why) => Self::TestOnLiveChannel(why),
            CallbackError::Config(e) => Self::Corrupt(e.to_string()),
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
    let received = Received { peer, channel_key, query: query.unwrap_or_default(), headers, body: Bytes::new() };
    receive(state, "paymentwall", received).await
}

/// `GET` or `POST /callbacks/{provider}/{channel_key}`: one callback URL shape for every provider.
pub async fn callback(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (provider, channel_key) = path.map(|Path(parts)| parts).unwrap_or_default();
    let received = Received { peer, channel_key, query: query.unwrap_or_default(), headers, body };
    receive(state, &provider, received).await
}

/// A callback request, as the route took it apart.
struct Received {
    peer: SocketAddr,
    channel_key: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

async fn receive(state: AppState, provider_name: &str, r: Received) -> Response {
    let source = client_ip::resolve(r.peer.ip(), &r.headers, &state.settings.trusted_proxies);
    let provider = state.providers.get(provider_name);
    let logged_key = validation::loggable(&r.channel_key, LOGGED_KEY_BYTES);
    let span = tracing::info_span!(
        "pingback", otel.kind = "server", provider = provider.map_or("unknown", |p| p.name()),
        channel_key = %logged_key, source = %client_ip::Shown(source),
        pingback_type = tracing::field::Empty, provider_ref = tracing::field::Empty,
        payment_id = tracing::field::Empty, outcome = tracing::field::Empty, trace_id = tracing::field::Empty
    );
    crate::telemetry::continue_trace(&span, &r.headers);
    let callback = Callback { source, query: &r.query, body: &r.body };
    let kind = provider.map_or("other", |p| p.callback_label(&callback));
    let work = async {
        let provider = provider.ok_or(PingbackError::UnknownProvider)?;
        if let Some(problem) = validation::problem(&r.channel_key, validation::CHANNEL_KEY) {
            return Err(PingbackError::BadChannelKey(problem));
        }
        handle(&state, provider, &r.channel_key, &callback).await
    };
    let result = tokio::time::timeout(state.pingback_timeout(), work.instrument(span.clone())).await;
    let answer = provider.map_or("OK", |p| p.callback_answer());
    match result {
        Ok(Ok(applied)) => accepted(&span, kind, &applied, answer),
        Ok(Err(err)) => refused(&state, &span, kind, source, err).await,
        Err(_) => {
            metrics::counter!("paygate_pingbacks_total", "type" => kind, "outcome" => "timeout").increment(1);
            span.in_scope(|| tracing::warn!("pingback timed out"));
            PingbackError::Timeout.into_response()
        }
    }
}

fn accepted(span: &tracing::Span, kind: &'static str, applied: &Applied, answer: &'static str) -> Response {
    let outcome = match applied {
        Applied::Changed { .. } => "applied",
        Applied::Unchanged => "unchanged",
        Applied::Duplicate => "duplicate",
    };
    metrics::counter!("paygate_pingbacks_total", "type" => kind, "outcome" => outcome).increment(1);
    span.record("outcome", outcome);
    if let Applied::Changed { payment, .. } = applied {
        span.record("payment_id", payment.payment_id.as_str());
    }
    span.in_scope(|| match applied {
        Applied::Changed { payment, event_id, .. } => {
            tracing::info!(payment_id = %payment.payment_id, status = %payment.status, event_id, "pingback applied")
        }
        Applied::Unchanged => tracing::info!("pingback acknowledged; it changes nothing"),
        Applied::Duplicate => tracing::info!("duplicate pingback acknowledged"),
    });
    (StatusCode::OK, answer).into_response()
}

async fn refused(
    state: &AppState,
    span: &tracing::Span,
    kind: &'static str,
    source: IpAddr,
    err: PingbackError,
) -> Response {
    // Valid pingbacks never reach here, so a flood of forged ones cannot slow them down.
    let err = match &state.pingback_refusals {
        Some(limiter) if err.is_refusal() => match limiter.check(&source.to_string()).await {
            Ok(()) => err,
            Err(retry_after) => PingbackError::RateLimited { retry_after, refused: Box::new(err) },
        },
        _ => err,
    };
    metrics::counter!("paygate_pingbacks_total", "type" => kind, "outcome" => err.outcome_label()).increment(1);
    span.record("outcome", err.outcome_label());
    span.in_scope(|| match &err {
        PingbackError::Store(StoreError::InvalidValue(_)) => tracing::warn!(error = %err, "pingback refused"),
        // The database out of reach (a failover, a restart): answered 503 and sent again by the
        // provider; a warning, as for the gRPC calls, so that an outage is not hundreds of errors.
        PingbackError::Store(StoreError::Unavailable(_)) => tracing::warn!(error = %err, "pingback failed"),
        PingbackError::Store(_) | PingbackError::Channel(_) | PingbackError::Corrupt(_) => {
            tracing::error!(error = %err, "pingback failed")
        }
        // A flood is counted by the metric, not written line by line.
        PingbackError::RateLimited { .. } => tracing::debug!(error = %err, "pingback refused"),
        _ => tracing::warn!(error = %err, "pingback refused"),
    });
    err.into_response()
}

async fn handle(
    state: &AppState,
    provider: &dyn Provider,
    channel_key: &str,
    callback: &Callback<'_>,
) -> Result<Applied, PingbackError> {
    let channel = state.channels.unscoped(channel_key).await?;
    // A channel is reached only through its own provider's URL.
    if channel.provider != provider.name() {
        return Err(PingbackError::UnknownChannel);
    }
    let verified = provider.read_callback(&channel, callback)?;
    Ok(state.notifications.ingest(verified.raw, verified.notice).await?)
}
