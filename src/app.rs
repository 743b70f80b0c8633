//! Wiring: settings -> database -> services -> the gRPC and HTTP servers; graceful shutdown.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures_util::StreamExt;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::{
    api::{
        self,
        auth::{AuthLayer, AuthSettings},
    },
    channels::{self, ChannelCache, Channels},
    config::Settings,
    events::{Hub, bridge::Bridge},
    ingest::{self, AppState},
    merchants::{KeyCache, Merchants, client_tokens, keys::KEY_PREFIX},
    net::conn::{ConnectionCap, Guarded, HTTP2_PREFACE_LEN, LINGER, Lingerers, Lingering, LingeringClose},
    payments::{
        Providers, batch,
        flows::{
            Payments, delivery,
            methods::PaymentMethods,
            sweep::{self, SweepSettings},
            writers::{PaymentInserts, Writers},
        },
    },
    proto::{
        self,
        v1::{
            channel_service_server::ChannelServiceServer, merchant_service_server::MerchantServiceServer,
            payment_service_server::PaymentServiceServer, webhook_service_server::WebhookServiceServer,
        },
    },
    providers::{ProviderHttp, paymentwall::Paymentwall},
    ratelimit::{FailureLimit, Limiter, Rate},
    secrets::{KeySources, MasterKeys},
    shutdown::{Shutdown, ShutdownTrigger},
    store::{
        Db, StoreError,
        redis::{RedisError, RedisHandle},
    },
    telemetry,
    webhooks::dispatcher::{Dispatcher, WebhookSettings},
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr} ({setting}; set another address there): {source}")]
    Bind { addr: SocketAddr, setting: &'static str, source: std::io::Error },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("master key: {0}")]
    MasterKey(#[from] crate::secrets::KeyError),
    #[error(transparent)]
    WrongMasterKey(#[from] crate::channels::ChannelError),
    #[error("PAYGATE_REDIS_URL: {0}")]
    Redis(#[from] RedisError),
    #[error("the shutdown grace period ran out with work in flight")]
    GraceExceeded,
    #[error("event log: {0}")]
    Events(String),
    #[error("{0}")]
    Config(&'static str),
}

pub async fn connect_db(settings: &Settings) -> Result<Db, StoreError> {
    Db::connect(settings.database_url.expose_secret(), &settings.pool_settings()).await
}

pub fn connect_redis(settings: &Settings) -> Result<Option<RedisHandle>, AppError> {
    Ok(match &settings.redis_url {
        Some(url) => Some(RedisHandle::new(url.expose_secret(), &settings.redis_key_prefix, settings.redis_timeout)?),
        None => None,
    })
}

/// Merchants, with the verified-key cache over the database and (when configured) Redis.
pub fn merchants(settings: &Settings, db: &Db, redis: Option<RedisHandle>) -> Merchants {
    let keys = KeyCache::new(db.clone(), redis, settings.auth_cache_ttl);
    Merchants::new(db.clone(), keys, settings.max_api_keys_per_merchant)
}

/// The admin token must be long, and must not be mistakable for an API key or a payment client
/// token (either is read as such first, so the token could never be used).
fn check_admin_token(settings: &Settings) -> Result<(), AppError> {
    match settings.admin_token.as_ref().map(|t| t.expose_secret()) {
        Some(token) if token.starts_with(KEY_PREFIX) => {
            Err(AppError::Config("PAYGATE_ADMIN_TOKEN must not start with pgk_ (the API key prefix)"))
        }
        Some(token) if token.starts_with(client_tokens::PREFIX) => {
            Err(AppError::Config("PAYGATE_ADMIN_TOKEN must not start with pct_ (the payment client token prefix)"))
        }
        Some(token) if !token.is_empty() && token.len() < 16 => {
            Err(AppError::Config("PAYGATE_ADMIN_TOKEN must be at least 16 characters"))
        }
        _ => Ok(()),
    }
}

/// The channel cache over the database and (when configured) Redis, after checking that the
/// master key opens every stored secret.
pub async fn channel_cache(settings: &Settings, db: &Db, redis: Option<RedisHandle>) -> Result<ChannelCache, AppError> {
    let keys = MasterKeys::load(&KeySources {
        master_key: settings.master_key.as_ref(),
        master_key_file: settings.master_key_file.as_deref(),
        previous: settings.previous_master_keys.as_ref(),
        embedded_database: settings.sqlite_path(),
    })?;
    channels::verify_master_key(db, &keys).await?;
    Ok(ChannelCache::new(
        db.clone(),
        Arc::new(keys),
        redis,
        settings.channel_cache_ttl,
        settings.channel_cache_capacity,
    ))
}

/// Runs both servers with the providers this build ships, until SIGTERM or Ctrl-C.
pub async fn serve(settings: Settings) -> Result<(), AppError> {
    let providers = shipped_providers(&settings);
    serve_with(settings, providers, shutdown_signal()).await
}

/// The providers this build ships, each with its own HTTP client.
pub fn shipped_providers(s: &Settings) -> Providers {
    let http = ProviderHttp::new(s.provider_connect_timeout, s.provider_timeout, s.provider_allow_private_targets);
    Providers::new().with(Arc::new(Paymentwall::new(http)))
}

/// What the servers are made of, once started.
struct Parts {
    state: AppState,
    hub: Arc<Hub>,
    merchants: Merchants,
    cache: ChannelCache,
    limits: RateLimits,
    webhook_settings: WebhookSettings,
    new_payments: Arc<dyn PaymentInserts>,
}

/// Runs both servers with `providers` until `shutdown` completes, then drains.
pub async fn serve_with(
    settings: Settings,
    providers: Providers,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AppError> {
    let grpc_listener = bind(settings.grpc_addr, GRPC_ADDR_SETTING).await?;
    let http_listener = bind(settings.http_addr, HTTP_ADDR_SETTING).await?;
    let stop = ShutdownTrigger::new();
    let (parts, dispatcher) = start(settings, providers, &stop).await?;
    let s = parts.state.settings.clone();
    let bound = |listener: &TcpListener, addr, setting| {
        listener.local_addr().map_err(|source| AppError::Bind { addr, setting, source })
    };
    let grpc_addr = bound(&grpc_listener, s.grpc_addr, GRPC_ADDR_SETTING)?;
    let http_addr = bound(&http_listener, s.http_addr, HTTP_ADDR_SETTING)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, true).await;
    spawn_readiness(parts.state.clone(), health.clone(), stop.handle());
    let lingerers = Lingerers::default();
    let incoming = guarded_incoming(grpc_listener, &s, lingerers.handle());
    let grpc = grpc_server(&parts, health_service, incoming, stopped(stop.handle()))?;
    let limits = ingest::server::HttpLimits {
        max_connections: s.http_max_connections,
        header_read_timeout: s.http_header_read_timeout,
        request_timeout: s.http_request_timeout,
    };
    let http = ingest::server::serve(
        http_listener,
        ingest::router(parts.state.clone()),
        limits,
        lingerers.handle(),
        stopped(stop.handle()),
    );
    let grpc = tokio::spawn(grpc);
    let http = tokio::spawn(http);
    let database = crate::store::redacted_url(s.database_url.expose_secret());
    tracing::info!(%grpc_addr, %http_addr, %database, "paygate ready");

    shutdown.await;
    tracing::info!("shutting down: refusing new work, finishing in-flight requests");
    parts.state.begin_shutdown();
    set_health(&health, false).await;
    // Open streams end now with UNAVAILABLE and their cursor, so clients resume elsewhere.
    parts.hub.close();
    stop.fire();

    // In-flight requests and webhook deliveries finish; past the grace period paygate gives up.
    let drained = tokio::time::timeout(s.shutdown_grace, async {
        let (grpc_result, http_result, _) = tokio::join!(grpc, http, dispatcher);
        (grpc_result.unwrap_or(Ok(())), http_result)
    })
    .await;
    let Ok((grpc_result, http_result)) = drained else {
        tracing::error!(grace_ms = millis(s.shutdown_grace), "grace period over with work in flight; exiting");
        return Err(AppError::GraceExceeded);
    };
    parts.state.db.close().await;
    // The connections just closed finish closing: cut short by the exit, each would be a reset.
    lingerers.finished(LINGER).await;
    grpc_result?;
    http_result.map_err(|e| AppError::Http(std::io::Error::other(e)))?;
    tracing::info!("stopped");
    Ok(())
}

/// Connects the stores, builds the services and starts the background work (cache upkeep, the
/// event hub, webhook dispatch, the sweep). Returns the parts and the dispatcher's task.
async fn start(
    settings: Settings,
    providers: Providers,
    stop: &ShutdownTrigger,
) -> Result<(Parts, tokio::task::JoinHandle<()>), AppError> {
    let metrics = telemetry::metrics();
    // Which release runs, and the schema it needs: tells the replicas apart during an upgrade.
    let (version, schema) = (env!("CARGO_PKG_VERSION"), crate::store::SCHEMA_VERSION);
    metrics::gauge!("paygate_build_info", "version" => version, "schema" => schema).set(1.0);
    crate::metrics_catalog::announce();
    let db = connect_db(&settings).await?;
    if settings.migrate_on_start {
        db.migrate().await?;
    }
    check_admin_token(&settings)?;
    let redis = connect_redis(&settings)?;
    let cache = channel_cache(&settings, &db, redis.clone()).await?;
    let channels =
        Channels::new(db.clone(), cache.clone(), settings.provider_allow_private_targets, providers.config_rules());
    let merchants = merchants(&settings, &db, redis.clone());
    let limits = rate_limits(&settings, &redis);
    let pingback_refusals = limits.pingback_refusals.clone();
    cache.spawn_background(stop.handle());
    merchants.key_cache().spawn_background(stop.handle());
    spawn_limiter_upkeep(limits.all(), stop.handle());
    let hub = Hub::new(settings.stream_buffer, settings.max_streams_per_merchant);
    // Before serving: a stream resuming now must not start from an unset position.
    hub.start_at_head(&db).await.map_err(|e| AppError::Events(e.to_string()))?;
    let bridge = redis.clone().map(Bridge::new);
    if let Some(bridge) = &bridge {
        bridge.spawn_listener(hub.clone(), stop.handle());
    }
    tokio::spawn(hub.clone().run(db.clone(), bridge, settings.event_poll_interval, stop.handle()));
    let webhook_settings = webhook_settings(&settings);
    let dispatcher = Dispatcher::new(db.clone(), cache.keys_arc(), webhook_settings.clone()).spawn(stop.handle());
    let sweep = sweep_settings(&settings);
    sweep::spawn(db.clone(), channels.clone(), providers.clone(), sweep, stop.handle());
    let outbox_interval = settings.delivery_outbox_interval;
    delivery::spawn(db.clone(), channels.clone(), providers.clone(), outbox_interval, stop.handle());
    crate::retention::spawn(db.clone(), retention_policy(&settings), settings.retention_interval, stop.handle());
    // A quarter of the pool for new checkout payments, which share INSERTs, and an eighth for
    // pingbacks, which share statements (`batch::writers`); the rest stays free for the API.
    let workers = (settings.database_max_connections as usize / 4).max(1);
    let writers = match settings.batch_writes {
        true => batch::writers(&db, workers),
        false => Writers::plain(db.clone()),
    };
    let new_payments = writers.payments;
    let state = AppState {
        notifications: writers.notifications,
        db,
        settings: Arc::new(settings),
        channels,
        providers,
        redis,
        metrics,
        pingback_refusals,
        shutting_down: Default::default(),
        dependencies: Default::default(),
    };
    let parts = Parts { state, hub, merchants, cache, limits, webhook_settings, new_payments };
    Ok((parts, dispatcher))
}

/// The gRPC server with every service, behind metrics and auth, serving `incoming` until `stop`.
fn grpc_server(
    parts: &Parts,
    health_service: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    incoming: impl futures_util::Stream<Item = std::io::Result<Guarded<LingeringClose>>> + Send + 'static,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<impl std::future::Future<Output = Result<(), tonic::transport::Error>> + Send + 'static, AppError> {
    let Parts { state, hub, merchants, cache, limits, webhook_settings, new_payments } = parts;
    let providers = &state.providers;
    let (s, db, channels) = (&state.settings, &state.db, &state.channels);
    let auth = AuthSettings {
        merchants: merchants.clone(),
        admin_token: s.admin_token.clone(),
        trusted_proxies: s.trusted_proxies.clone(),
        per_key_limit: limits.per_key.clone(),
        per_merchant_limit: limits.per_merchant.clone(),
        failures: limits.auth_failures.clone(),
        keys: cache.keys_arc(),
        client_token_max_ttl_ms: millis(s.client_token_ttl),
    };
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // The google.rpc error details (BadRequest, ...), so grpcurl can print a status's
            // field violations instead of undecoded bytes.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let max_message = s.grpc_max_message_bytes;
    let payments = api::payments::PaymentsApi {
        payments: Payments {
            db: db.clone(),
            channels: channels.clone(),
            providers: providers.clone(),
            new_payments: new_payments.clone(),
            idempotency_lease_ms: millis(s.idempotency_lease),
            sync_limit: limits.sync_payment.clone(),
        },
        db: db.clone(),
        hub: hub.clone(),
        keys: merchants.key_cache().clone(),
        methods: PaymentMethods::new(s.payment_methods_cache_ttl),
        settings: api::payments::PaymentsApiSettings {
            client_token_ttl_ms: millis(s.client_token_ttl),
            master_keys: cache.keys_arc(),
        },
    };
    let webhooks = api::webhooks::WebhooksApi::new(
        db.clone(),
        cache.keys_arc(),
        webhook_settings.allow_internal_targets,
        millis(webhook_settings.rotation_overlap),
    );
    let merchants_api = api::merchants::MerchantsApi::new(db.clone(), merchants.clone());
    let cors = grpc_web_cors(&s.grpc_web_allowed_origins)?;
    Ok(Server::builder()
        // gRPC-Web (browsers) arrives over HTTP/1.1 as well as HTTP/2.
        .accept_http1(true)
        .http2_keepalive_interval(Some(s.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(s.http2_keepalive_timeout))
        .max_concurrent_streams(s.grpc_max_concurrent_streams.max(1))
        .concurrency_limit_per_connection(s.grpc_max_in_flight_per_connection.max(1))
        .layer(
            tower::ServiceBuilder::new()
                // The console's pages first: they are neither gRPC nor authenticated.
                .layer(crate::console::ConsoleLayer)
                .option_layer(cors)
                .layer(tonic_web::GrpcWebLayer::new())
                .layer(api::metrics::MetricsLayer)
                .layer(AuthLayer::new(auth)),
        )
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(PaymentServiceServer::new(payments).max_decoding_message_size(max_message))
        .add_service(
            ChannelServiceServer::new(api::channels::ChannelsApi::new(channels.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(MerchantServiceServer::new(merchants_api).max_decoding_message_size(max_message))
        .add_service(WebhookServiceServer::new(webhooks).max_decoding_message_size(max_message))
        .serve_with_incoming_shutdown(incoming, stop))
}

/// CORS for gRPC-Web from the configured browser origins; none configured: no CORS at all, so a
/// browser refuses every cross-origin call (same-origin and non-browser clients are unaffected).
fn grpc_web_cors(origins: &str) -> Result<Option<tower_http::cors::CorsLayer>, AppError> {
    use http::{HeaderName, HeaderValue, Method};
    let mut origins: Vec<HeaderValue> = origins
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| match o {
            // A wildcard would let any page call with any token: origins are named one by one.
            "*" | "null" => Err(AppError::Config("PAYGATE_GRPC_WEB_ALLOWED_ORIGINS: name origins, not * or null")),
            _ => normalised_origin(o).and_then(|o| {
                HeaderValue::from_str(&o)
                    .map_err(|_| AppError::Config("PAYGATE_GRPC_WEB_ALLOWED_ORIGINS: an origin is not valid"))
            }),
        })
        .collect::<Result<_, _>>()?;
    origins.dedup();
    if origins.is_empty() {
        return Ok(None);
    }
    let header = |name: &'static str| HeaderName::from_static(name);
    Ok(Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::POST])
            .allow_headers(["authorization", "content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"].map(header))
            .expose_headers(["grpc-status", "grpc-message", "grpc-status-details-bin"].map(header))
            .max_age(Duration::from_secs(3600)),
    ))
}

/// The rate limits (each off when its rate is 0).
struct RateLimits {
    per_key: Option<Limiter>,
    per_merchant: Option<Limiter>,
    auth_failures: Option<FailureLimit>,
    pingback_refusals: Option<Limiter>,
    /// `SyncPayment`, per payment.
    sync_payment: Option<Limiter>,
}

impl RateLimits {
    fn all(&self) -> Vec<Limiter> {
        let failures = self.auth_failures.as_ref().map(|f| f.limiter().clone());
        [
            self.per_key.clone(),
            self.per_merchant.clone(),
            failures,
            self.pingback_refusals.clone(),
            self.sync_payment.clone(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// An origin as a browser sends it in `Origin` (compared exactly): scheme and host in lower case
/// (an IDN host in punycode), no default port, no trailing '/'. Anything past the authority is
/// refused: no browser sends it, so the entry could only ever fail to match.
fn normalised_origin(given: &str) -> Result<String, AppError> {
    const NOT_AN_ORIGIN: AppError = AppError::Config(
        "PAYGATE_GRPC_WEB_ALLOWED_ORIGINS: write each origin as scheme://host[:port] (http or https), \
         without a path, query, fragment or user name",
    );
    // The URL parser drops tabs and newlines silently; what it reads must be what was written.
    if given.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(NOT_AN_ORIGIN);
    }
    let url = url::Url::parse(given).map_err(|_| NOT_AN_ORIGIN)?;
    let origin_only = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    if !origin_only {
        return Err(NOT_AN_ORIGIN);
    }
    Ok(url.origin().ascii_serialization())
}

fn rate_limits(s: &Settings, redis: &Option<RedisHandle>) -> RateLimits {
    let rate = |per_second, burst| Rate { per_second, burst };
    RateLimits {
        per_key: Limiter::new("api_key", rate(s.api_rate_limit_per_second, s.api_rate_limit_burst), redis.clone()),
        per_merchant: Limiter::new(
            "api_merchant",
            rate(s.api_merchant_rate_limit_per_second, s.api_merchant_rate_limit_burst),
            redis.clone(),
        ),
        auth_failures: FailureLimit::new(
            "auth_failures",
            rate(s.auth_failure_rate_per_second, s.auth_failure_burst),
            redis.clone(),
        ),
        pingback_refusals: Limiter::new(
            "pingback_refusals",
            rate(s.pingback_refusal_rate_per_second, s.pingback_refusal_burst),
            redis.clone(),
        ),
        sync_payment: Limiter::one_per("sync_payment", s.sync_min_interval, redis.clone()),
    }
}

fn webhook_settings(s: &Settings) -> WebhookSettings {
    WebhookSettings {
        allow_internal_targets: s.webhook_allow_private_targets,
        connect_timeout: s.webhook_connect_timeout,
        timeout: s.webhook_timeout,
        retry_base: s.webhook_retry_base,
        retry_max: s.webhook_retry_max,
        retry_window: s.webhook_retry_window,
        poll_interval: s.webhook_poll_interval,
        // At least a whole attempt (config.rs checks), or two replicas could send the same delivery.
        claim: s.webhook_claim,
        rotation_overlap: s.webhook_secret_overlap,
    }
}

fn retention_policy(s: &Settings) -> crate::retention::Policy {
    crate::retention::Policy {
        events_days: s.retention_events_days,
        pingbacks_days: s.retention_pingbacks_days,
        webhook_deliveries_days: s.retention_webhook_deliveries_days,
        webhook_attempts_days: s.retention_webhook_attempts_days,
        audit_days: s.retention_audit_days,
    }
}

fn sweep_settings(s: &Settings) -> SweepSettings {
    SweepSettings {
        interval: s.sweep_interval,
        ready_after: s.sweep_ready_after,
        ready_until: s.sweep_ready_until,
        pending_after: s.sweep_pending_after,
        recheck: s.sweep_recheck,
        subscription_recheck: s.sweep_subscription_recheck,
    }
}

/// Checks the dependencies every second and keeps gRPC health in step with `/readyz`: SERVING
/// while the database answers (Redis down is degraded, still serving), NOT_SERVING otherwise.
fn spawn_readiness(state: AppState, health: tonic_health::server::HealthReporter, mut stop: Shutdown) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut serving = true;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.signalled() => return,
            }
            let ready = state.dependencies.check(&state.db, state.redis.as_ref()).await && !state.shutting_down();
            metrics::gauge!("paygate_ready").set(f64::from(u8::from(ready)));
            if ready != serving {
                serving = ready;
                set_health(&health, ready).await;
            }
        }
    });
}

/// gRPC health of paygate (the whole server, "", and every service): SERVING while ready,
/// NOT_SERVING otherwise and once shutting down.
async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    use tonic_health::ServingStatus;
    let overall = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    health.set_service_status("", overall).await;
    if serving {
        health.set_serving::<PaymentServiceServer<api::payments::PaymentsApi>>().await;
        health.set_serving::<ChannelServiceServer<api::channels::ChannelsApi>>().await;
        health.set_serving::<MerchantServiceServer<api::merchants::MerchantsApi>>().await;
        health.set_serving::<WebhookServiceServer<api::webhooks::WebhooksApi>>().await;
    } else {
        health.set_not_serving::<PaymentServiceServer<api::payments::PaymentsApi>>().await;
        health.set_not_serving::<ChannelServiceServer<api::channels::ChannelsApi>>().await;
        health.set_not_serving::<MerchantServiceServer<api::merchants::MerchantsApi>>().await;
        health.set_not_serving::<WebhookServiceServer<api::webhooks::WebhooksApi>>().await;
    }
}

/// gRPC connections as they are accepted: capped in number, each with a deadline for its first
/// bytes, and with Nagle off so small stream frames go out at once.
fn guarded_incoming(
    listener: TcpListener,
    settings: &Settings,
    lingering: Lingering,
) -> impl futures_util::Stream<Item = std::io::Result<Guarded<LingeringClose>>> + use<> {
    let cap = ConnectionCap::new(settings.grpc_max_connections);
    let handshake = settings.grpc_handshake_timeout;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    incoming.then(move |accepted| {
        let (cap, lingering) = (cap.clone(), lingering.clone());
        async move {
            let tcp = LingeringClose::new(accepted?, lingering);
            Ok(Guarded::new(tcp, handshake, HTTP2_PREFACE_LEN, cap.slot().await))
        }
    })
}

/// Local rate-limit buckets of keys and addresses no longer seen are dropped once a minute.
fn spawn_limiter_upkeep(limiters: Vec<Limiter>, mut stop: Shutdown) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = every.tick() => limiters.iter().for_each(Limiter::shrink),
                _ = stop.signalled() => return,
            }
        }
    });
}

/// Milliseconds, for the services that count time as epoch milliseconds (`store::now_ms`). Every
/// duration setting is bounded by config.rs far below `i64::MAX` milliseconds.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Where each address is set, for the error a taken port gives.
const GRPC_ADDR_SETTING: &str = "PAYGATE_GRPC_ADDR or paygate serve --grpc-addr";
const HTTP_ADDR_SETTING: &str = "PAYGATE_HTTP_ADDR or paygate serve --http-addr";

async fn bind(addr: SocketAddr, setting: &'static str) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, setting, source })
}

async fn stopped(mut stop: Shutdown) {
    stop.signalled().await
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::{grpc_web_cors, normalised_origin};

    #[test]
    fn origins_are_written_as_browsers_send_them() {
        for (given, stored) in [
            ("https://Admin.Example", "https://admin.example"),
            ("HTTPS://admin.example:443/", "https://admin.example"),
            ("http://shop.example:80", "http://shop.example"),
            ("https://shop.example:8443", "https://shop.example:8443"),
            ("https://Bücher.example", "https://xn--bcher-kva.example"),
            ("http://[::1]:3000/", "http://[::1]:3000"),
        ] {
            assert_eq!(normalised_origin(given).unwrap(), stored, "{given}");
        }
        for refused in [
            "https://shop.example/app",
            "https://shop.example?x=1",
            "https://shop.example/#top",
            "https://user@shop.example",
            "ftp://shop.example",
            "shop.example",
            "https://shop.exa\tmple",
        ] {
            let err = normalised_origin(refused).unwrap_err().to_string();
            assert!(err.starts_with("PAYGATE_GRPC_WEB_ALLOWED_ORIGINS"), "{refused:?}: {err}");
        }
    }

    #[test]
    fn grpc_web_admits_named_origins_only() {
        assert!(grpc_web_cors("").unwrap().is_none(), "none configured: no CORS at all");
        assert!(grpc_web_cors("https://shop.example, https://admin.example").unwrap().is_some());
        for refused in ["*", "null", "https://shop.example,*", "bad\norigin"] {
            assert!(grpc_web_cors(refused).is_err(), "{refused:?}");
        }
    }
}
