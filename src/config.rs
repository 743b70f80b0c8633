//! Settings: defaults, then a TOML file, then `PAYGATE_*` environment variables (env wins).
//! Every setting and its default is listed in docs/configuration.md.

use std::{
    net::SocketAddr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use ipnet::IpNet;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::store::PoolSettings;

pub const DEFAULT_CONFIG_FILE: &str = "paygate.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text when standard output is a terminal (a person reads it), JSON otherwise (a collector).
    Auto,
    Json,
    Text,
}

impl LogFormat {
    /// The format to write in: `Auto` decided by whether `stdout` is a terminal.
    pub fn resolved(self, stdout_is_terminal: bool) -> Self {
        match self {
            Self::Auto if stdout_is_terminal => Self::Text,
            Self::Auto => Self::Json,
            explicit => explicit,
        }
    }
}

/// Serialized only to feed the defaults to figment: secrets and lists are skipped there (their
/// defaults come from `Default` through `#[serde(default)]`), so they are written once, below.
///
/// Durations are given in milliseconds under their `_ms` names (`PAYGATE_PINGBACK_TIMEOUT_MS=5000`,
/// `pingback_timeout_ms = 5000`), and each must lie in its range (`duration_ranges`),
/// checked by `load`: out of it, paygate does not start.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Settings {
    /// gRPC API (internal services).
    pub grpc_addr: SocketAddr,
    /// HTTP: provider pingbacks, health.
    pub http_addr: SocketAddr,
    /// `postgres://...` or `sqlite:...`; holds credentials, so never printed.
    #[serde(skip_serializing)]
    pub database_url: SecretString,
    pub database_max_connections: u32,
    /// How long a request waits for a database connection before it fails as unavailable.
    #[serde(rename = "database_acquire_timeout_ms", with = "millis")]
    pub database_acquire_timeout: Duration,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
    /// Group commit, copies and one-statement settlements (`payments::batch`); off, every write is a
    /// transaction of its own (the plain path).
    pub batch_writes: bool,
    /// Redis for the shared cache and cross-replica fan-out; none means in-process only.
    #[serde(skip_serializing)]
    pub redis_url: Option<SecretString>,
    /// Prefix of every Redis key and pub/sub channel, so several deployments can share a Redis.
    pub redis_key_prefix: String,
    /// Connect and response timeout for Redis calls; past it, paygate goes to the database.
    #[serde(rename = "redis_timeout_ms", with = "millis")]
    pub redis_timeout: Duration,
    /// Base64 of 32 random bytes; encrypts channel secrets (AES-256-GCM).
    #[serde(skip_serializing)]
    pub master_key: Option<SecretString>,
    /// A file holding the master key (base64), instead of `master_key`.
    pub master_key_file: Option<PathBuf>,
    /// Earlier master keys, comma-separated, still accepted for reading during a rotation.
    #[serde(skip_serializing)]
    pub previous_master_keys: Option<SecretString>,
    /// In-process channel cache: how long an entry lives, and how many entries at most.
    #[serde(rename = "channel_cache_ttl_ms", with = "millis")]
    pub channel_cache_ttl: Duration,
    pub channel_cache_capacity: u64,
    /// Token for the admin RPCs.
    #[serde(skip_serializing)]
    pub admin_token: Option<SecretString>,
    /// How long a verified API key is trusted without asking the database. Revocation reaches
    /// every replica through Redis at once; with Redis down, within this time.
    #[serde(rename = "auth_cache_ttl_ms", with = "millis")]
    pub auth_cache_ttl: Duration,
    /// Per API key, shared by every replica through Redis: requests per second and burst. 0: off.
    pub api_rate_limit_per_second: u32,
    pub api_rate_limit_burst: u32,
    /// Per top-level merchant (its sub-merchants' keys included), beside the per-key limit, so
    /// more keys do not mean more calls: requests per second and burst. 0: off.
    pub api_merchant_rate_limit_per_second: u32,
    pub api_merchant_rate_limit_burst: u32,
    /// Live (neither revoked nor expired) API keys one merchant may hold; CreateApiKey refuses more.
    pub max_api_keys_per_merchant: u32,
    /// Per source address: failed authentications (unknown keys, bad tokens) per second and burst;
    /// past them, the address's calls are refused before any lookup, except with a key already
    /// verified in the cache. 0: off.
    pub auth_failure_rate_per_second: u32,
    pub auth_failure_burst: u32,
    /// Per source address: refused pingbacks (bad signature, unknown channel, source not allowed,
    /// malformed) per second and burst before further refusals are answered 429. Valid pingbacks
    /// are never limited. 0: off.
    pub pingback_refusal_rate_per_second: u32,
    pub pingback_refusal_burst: u32,
    /// Proxies (CIDR blocks) whose `X-Forwarded-For` is believed: for pingback sources and for
    /// the caller address of gRPC calls (API allowlists, audit entries).
    #[serde(deserialize_with = "cidr_list", skip_serializing)]
    pub trusted_proxies: Vec<IpNet>,
    /// A pingback that cannot be stored within this time is answered 503 (the provider retries).
    #[serde(rename = "pingback_timeout_ms", with = "millis")]
    pub pingback_timeout: Duration,
    /// The public HTTP port: open connections at most; a request head must arrive within the
    /// header timeout (of the connection opening or the previous response, so idle keep-alive
    /// connections close then too); a whole request must be answered within the request timeout.
    pub http_max_connections: usize,
    #[serde(rename = "http_header_read_timeout_ms", with = "millis")]
    pub http_header_read_timeout: Duration,
    #[serde(rename = "http_request_timeout_ms", with = "millis")]
    pub http_request_timeout: Duration,
    /// The gRPC port: open connections at most; a new connection must send its first bytes (the
    /// HTTP/2 preface) within the handshake timeout; concurrent HTTP/2 streams and in-flight
    /// requests per connection; the largest request message accepted.
    pub grpc_max_connections: usize,
    #[serde(rename = "grpc_handshake_timeout_ms", with = "millis")]
    pub grpc_handshake_timeout: Duration,
    pub grpc_max_concurrent_streams: u32,
    pub grpc_max_in_flight_per_connection: usize,
    pub grpc_max_message_bytes: usize,
    /// Let provider API calls (a channel's `api_base_url`) reach loopback, private and link-local
    /// addresses: for the simulator in tests and local runs.
    pub provider_allow_private_targets: bool,
    /// Outgoing provider API calls: connect timeout and whole-request timeout.
    #[serde(rename = "provider_connect_timeout_ms", with = "millis")]
    pub provider_connect_timeout: Duration,
    #[serde(rename = "provider_timeout_ms", with = "millis")]
    pub provider_timeout: Duration,
    /// How long a request holds its idempotency key; after that a retry may take over.
    #[serde(rename = "idempotency_lease_ms", with = "millis")]
    pub idempotency_lease: Duration,
    /// The longest a payment client token (CreatePaymentClientToken) lives.
    #[serde(rename = "client_token_ttl_ms", with = "millis")]
    pub client_token_ttl: Duration,
    /// Browser origins allowed to call the gRPC port through gRPC-Web (CORS), comma-separated,
    /// e.g. "https://shop.example". Empty: none, so a cross-origin browser call is refused.
    pub grpc_web_allowed_origins: String,
    /// How long a provider's payment-method list is cached per channel and country.
    #[serde(rename = "payment_methods_cache_ttl_ms", with = "millis")]
    pub payment_methods_cache_ttl: Duration,
    /// The stuck-payment sweep: how often it runs, which payments it asks the provider about, and
    /// how long before it asks about the same payment again.
    #[serde(rename = "sweep_interval_ms", with = "millis")]
    pub sweep_interval: Duration,
    #[serde(rename = "sweep_ready_after_ms", with = "millis")]
    pub sweep_ready_after: Duration,
    /// A READY payment is asked about until it is this old (then its checkout is abandoned).
    #[serde(rename = "sweep_ready_until_ms", with = "millis")]
    pub sweep_ready_until: Duration,
    #[serde(rename = "sweep_pending_after_ms", with = "millis")]
    pub sweep_pending_after: Duration,
    #[serde(rename = "sweep_recheck_ms", with = "millis")]
    pub sweep_recheck: Duration,
    /// A live subscription is asked about an hour after each renewal is due, and at least this often.
    #[serde(rename = "sweep_subscription_recheck_ms", with = "millis")]
    pub sweep_subscription_recheck: Duration,
    /// How often the delivery outbox sends the confirmations the provider could not take at once.
    #[serde(rename = "delivery_outbox_interval_ms", with = "millis")]
    pub delivery_outbox_interval: Duration,
    /// `SyncPayment` asks the provider about one payment at most once per this (0: no limit).
    #[serde(rename = "sync_min_interval_ms", with = "millis")]
    pub sync_min_interval: Duration,
    /// Retention by kind of data, in days (0: kept forever), and how often expiry runs. Payments,
    /// cancellations and subscriptions are the ledger: always kept (docs/operations.md#retention).
    pub retention_events_days: u32,
    pub retention_pingbacks_days: u32,
    pub retention_webhook_deliveries_days: u32,
    pub retention_webhook_attempts_days: u32,
    pub retention_audit_days: u32,
    #[serde(rename = "retention_interval_ms", with = "millis")]
    pub retention_interval: Duration,
    /// Events buffered per open stream; a stream that falls this far behind is ended (it resumes).
    pub stream_buffer: usize,
    pub max_streams_per_merchant: usize,
    /// The event tailer reads the log at least this often (catching up what a lost Redis message missed).
    #[serde(rename = "event_poll_interval_ms", with = "millis")]
    pub event_poll_interval: Duration,
    /// HTTP/2 keepalive pings on gRPC connections, and how long to wait for the answer.
    #[serde(rename = "http2_keepalive_interval_ms", with = "millis")]
    pub http2_keepalive_interval: Duration,
    #[serde(rename = "http2_keepalive_timeout_ms", with = "millis")]
    pub http2_keepalive_timeout: Duration,
    /// Let webhooks reach loopback, private and link-local addresses (tests, private networks).
    pub webhook_allow_private_targets: bool,
    #[serde(rename = "webhook_connect_timeout_ms", with = "millis")]
    pub webhook_connect_timeout: Duration,
    #[serde(rename = "webhook_timeout_ms", with = "millis")]
    pub webhook_timeout: Duration,
    /// Retries: the first after this, each next 4 times longer up to the max, for the window.
    #[serde(rename = "webhook_retry_base_ms", with = "millis")]
    pub webhook_retry_base: Duration,
    #[serde(rename = "webhook_retry_max_ms", with = "millis")]
    pub webhook_retry_max: Duration,
    #[serde(rename = "webhook_retry_window_ms", with = "millis")]
    pub webhook_retry_window: Duration,
    #[serde(rename = "webhook_poll_interval_ms", with = "millis")]
    pub webhook_poll_interval: Duration,
    #[serde(rename = "webhook_claim_ms", with = "millis")]
    pub webhook_claim: Duration,
    /// How long the previous secret keeps signing after SetWebhookEndpoint made a new one.
    #[serde(rename = "webhook_secret_overlap_ms", with = "millis")]
    pub webhook_secret_overlap: Duration,
    /// After SIGTERM: how long in-flight requests and deliveries may take before paygate exits anyway.
    #[serde(rename = "shutdown_grace_ms", with = "millis")]
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// `tracing` filter directives, e.g. `info` or `paygate=debug,info`.
    pub log_level: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc_addr: ([0, 0, 0, 0], 50051).into(),
            http_addr: ([0, 0, 0, 0], 8080).into(),
            database_url: SecretString::from("sqlite://paygate.db?mode=rwc"),
            database_max_connections: 16,
            database_acquire_timeout: ms(3_000),
            migrate_on_start: true,
            batch_writes: true,
            redis_url: None,
            redis_key_prefix: "paygate:".to_owned(),
            redis_timeout: ms(250),
            master_key: None,
            master_key_file: None,
            previous_master_keys: None,
            channel_cache_ttl: ms(30_000),
            channel_cache_capacity: 10_000,
            admin_token: None,
            auth_cache_ttl: ms(10_000),
            api_rate_limit_per_second: 100,
            api_rate_limit_burst: 200,
            api_merchant_rate_limit_per_second: 500,
            api_merchant_rate_limit_burst: 1_000,
            max_api_keys_per_merchant: 100,
            auth_failure_rate_per_second: 5,
            auth_failure_burst: 50,
            pingback_refusal_rate_per_second: 5,
            pingback_refusal_burst: 20,
            trusted_proxies: Vec::new(),
            pingback_timeout: ms(10_000),
            http_max_connections: 1_024,
            http_header_read_timeout: ms(10_000),
            http_request_timeout: ms(30_000),
            grpc_max_connections: 1_024,
            grpc_handshake_timeout: ms(5_000),
            grpc_max_concurrent_streams: 200,
            grpc_max_in_flight_per_connection: 256,
            grpc_max_message_bytes: 1_048_576,
            provider_allow_private_targets: false,
            provider_connect_timeout: ms(3_000),
            provider_timeout: ms(10_000),
            idempotency_lease: ms(30_000),
            client_token_ttl: ms(900_000),
            grpc_web_allowed_origins: String::new(),
            payment_methods_cache_ttl: ms(600_000),
            sweep_interval: ms(60_000),
            sweep_ready_after: ms(HOUR),
            sweep_ready_until: ms(7 * DAY),
            sweep_pending_after: ms(600_000),
            sweep_recheck: ms(300_000),
            sweep_subscription_recheck: ms(DAY),
            delivery_outbox_interval: ms(1_000),
            sync_min_interval: ms(5_000),
            retention_events_days: 400,
            retention_pingbacks_days: 400,
            retention_webhook_deliveries_days: 90,
            retention_webhook_attempts_days: 30,
            retention_audit_days: 2_557,
            retention_interval: ms(HOUR),
            stream_buffer: 256,
            max_streams_per_merchant: 1_000,
            event_poll_interval: ms(1_000),
            http2_keepalive_interval: ms(30_000),
            http2_keepalive_timeout: ms(10_000),
            webhook_allow_private_targets: false,
            webhook_connect_timeout: ms(5_000),
            webhook_timeout: ms(10_000),
            webhook_retry_base: ms(60_000),
            webhook_retry_max: ms(6 * HOUR),
            webhook_retry_window: ms(25 * HOUR),
            webhook_poll_interval: ms(250),
            webhook_claim: ms(60_000),
            webhook_secret_overlap: ms(DAY),
            shutdown_grace: ms(25_000),
            log_format: LogFormat::Auto,
            log_level: "info".to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// Settings out of their ranges, each named as it was given (variable, or key and file).
    #[error("configuration: {}", .0.join("; "))]
    OutOfRange(Vec<String>),
    #[error("configuration file {0} does not exist")]
    MissingFile(String),
}

impl Settings {
    /// Loads settings. `file` is the explicit `--config` path (must exist); without it,
    /// `paygate.toml` in the working directory is read when present.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match file {
            Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.display().to_string())),
            Some(path) => figment = figment.merge(Toml::file(path)),
            None => figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE)),
        }
        figment = figment.merge(Env::prefixed("PAYGATE_").ignore(&["config"]));
        let settings: Self = figment.extract().map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        let problems = settings.out_of_range(|key| given_as(&figment, key));
        if problems.is_empty() { Ok(settings) } else { Err(ConfigError::OutOfRange(problems)) }
    }

    /// Each duration setting: its key (`_ms`, in milliseconds), its value, and the milliseconds it
    /// must lie between. 0 is allowed only where it means off.
    fn duration_ranges(&self) -> [(&'static str, Duration, RangeInclusive<u64>); 34] {
        [
            ("database_acquire_timeout_ms", self.database_acquire_timeout, 1..=10 * MINUTE),
            ("redis_timeout_ms", self.redis_timeout, 1..=MINUTE),
            // 0: no in-process caching.
            ("channel_cache_ttl_ms", self.channel_cache_ttl, 0..=DAY),
            ("auth_cache_ttl_ms", self.auth_cache_ttl, 1..=DAY),
            ("pingback_timeout_ms", self.pingback_timeout, 1..=10 * MINUTE),
            ("http_header_read_timeout_ms", self.http_header_read_timeout, 1..=10 * MINUTE),
            ("http_request_timeout_ms", self.http_request_timeout, 1..=HOUR),
            ("grpc_handshake_timeout_ms", self.grpc_handshake_timeout, 1..=10 * MINUTE),
            ("provider_connect_timeout_ms", self.provider_connect_timeout, 1..=10 * MINUTE),
            ("provider_timeout_ms", self.provider_timeout, 1..=10 * MINUTE),
            ("idempotency_lease_ms", self.idempotency_lease, 1..=DAY),
            // A token born expired helps nobody.
            ("client_token_ttl_ms", self.client_token_ttl, SECOND..=DAY),
            // 0: not cached.
            ("payment_methods_cache_ttl_ms", self.payment_methods_cache_ttl, 0..=DAY),
            ("sweep_interval_ms", self.sweep_interval, 10..=DAY),
            ("sweep_ready_after_ms", self.sweep_ready_after, 1..=30 * DAY),
            ("sweep_ready_until_ms", self.sweep_ready_until, 1..=365 * DAY),
            ("sweep_pending_after_ms", self.sweep_pending_after, 1..=30 * DAY),
            ("sweep_recheck_ms", self.sweep_recheck, 1..=30 * DAY),
            ("sweep_subscription_recheck_ms", self.sweep_subscription_recheck, 1..=30 * DAY),
            ("delivery_outbox_interval_ms", self.delivery_outbox_interval, 10..=HOUR),
            ("sync_min_interval_ms", self.sync_min_interval, 0..=HOUR),
            ("retention_interval_ms", self.retention_interval, SECOND..=DAY),
            ("event_poll_interval_ms", self.event_poll_interval, 10..=MINUTE),
            ("http2_keepalive_interval_ms", self.http2_keepalive_interval, SECOND..=HOUR),
            ("http2_keepalive_timeout_ms", self.http2_keepalive_timeout, 1..=10 * MINUTE),
            ("webhook_connect_timeout_ms", self.webhook_connect_timeout, 1..=10 * MINUTE),
            ("webhook_timeout_ms", self.webhook_timeout, 1..=10 * MINUTE),
            ("webhook_retry_base_ms", self.webhook_retry_base, 1..=DAY),
            ("webhook_retry_max_ms", self.webhook_retry_max, 1..=7 * DAY),
            // 0: no retries.
            ("webhook_retry_window_ms", self.webhook_retry_window, 0..=30 * DAY),
            ("webhook_poll_interval_ms", self.webhook_poll_interval, 10..=MINUTE),
            // At least a whole attempt too (below).
            ("webhook_claim_ms", self.webhook_claim, 1..=DAY),
            // 0: the previous secret stops signing at once.
            ("webhook_secret_overlap_ms", self.webhook_secret_overlap, 0..=30 * DAY),
            ("shutdown_grace_ms", self.shutdown_grace, 1..=HOUR),
        ]
    }

    /// What is out of range, each setting named by `named` (from its key).
    fn out_of_range(&self, named: impl Fn(&str) -> String) -> Vec<String> {
        let mut problems: Vec<String> = self
            .duration_ranges()
            .into_iter()
            .filter_map(|(key, value, range)| {
                let got = millis_of(value);
                (!range.contains(&got)).then(|| {
                    format!("{} must be between {} and {} (got {got})", named(key), range.start(), range.end())
                })
            })
            .collect();
        // A claim must outlast a whole attempt, or two replicas could send the same delivery.
        let attempt = 2 * self.webhook_timeout + self.webhook_connect_timeout;
        if self.webhook_claim < attempt {
            problems.push(format!(
                "{} must be at least 2 x {} + {} = {} (got {})",
                named("webhook_claim_ms"),
                named("webhook_timeout_ms"),
                named("webhook_connect_timeout_ms"),
                millis_of(attempt),
                millis_of(self.webhook_claim),
            ));
        }
        problems
    }

    /// The SQLite database file, when the database is SQLite (for the embedded master key file).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        use secrecy::ExposeSecret;
        let url = self.database_url.expose_secret();
        let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
        let path = rest.split('?').next().unwrap_or(rest);
        (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
    }

    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.database_max_connections.max(1),
            acquire_timeout: self.database_acquire_timeout,
        }
    }
}

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

const fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn millis_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How a setting was given, for an error: its key and file when a file gave it, else its variable.
fn given_as(figment: &Figment, key: &str) -> String {
    match figment.find_metadata(key).and_then(|m| m.source.as_ref()) {
        Some(figment::Source::File(path)) => format!("{key} in {}", path.display()),
        _ => format!("PAYGATE_{}", key.to_ascii_uppercase()),
    }
}

/// A duration as whole milliseconds (the unit of every `_ms` setting), in TOML and the environment.
mod millis {
    use super::*;

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(millis_of(*duration))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// Accepts a TOML array or a comma-separated string (the form an environment variable takes).
fn cidr_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Csv(String),
    }
    let items = match Raw::deserialize(deserializer)? {
        Raw::List(items) => items,
        Raw::Csv(csv) => csv.split(',').map(str::to_owned).collect(),
    };
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| crate::net::parse_cidr(s).map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn env_wins_over_file_and_defaults_fill_the_rest() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "paygate.toml",
                "grpc_addr = \"127.0.0.1:6000\"\nhttp_addr = \"127.0.0.1:6001\"\nlog_level = \"debug\"",
            )?;
            jail.set_env("PAYGATE_GRPC_ADDR", "127.0.0.1:7000");
            jail.set_env("PAYGATE_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1");
            let s = Settings::load(None).expect("settings load");
            assert_eq!(s.grpc_addr.to_string(), "127.0.0.1:7000");
            assert_eq!(s.http_addr.to_string(), "127.0.0.1:6001");
            assert_eq!(s.log_level, "debug");
            assert_eq!(s.database_url.expose_secret(), "sqlite://paygate.db?mode=rwc");
            // Defaults written once, in `Default`, reach the loaded settings.
            let d = Settings::default();
            assert_eq!((s.api_rate_limit_burst, s.grpc_max_message_bytes), (d.api_rate_limit_burst, 1_048_576));
            assert_eq!(s.webhook_retry_window, Duration::from_secs(25 * 3600));
            assert_eq!(s.trusted_proxies.len(), 2);
            assert_eq!(s.trusted_proxies[1].to_string(), "192.168.1.1/32");
            Ok(())
        });
    }

    #[test]
    fn a_malformed_proxy_list_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PAYGATE_TRUSTED_PROXIES", "10.0.0.0/33");
            assert!(Settings::load(None).is_err());
            Ok(())
        });
    }

    #[test]
    fn a_duration_is_read_in_milliseconds_from_the_environment_and_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("paygate.toml", "webhook_poll_interval_ms = 50\nwebhook_secret_overlap_ms = 0")?;
            jail.set_env("PAYGATE_PINGBACK_TIMEOUT_MS", "5000");
            let s = Settings::load(None).expect("settings load");
            assert_eq!(s.pingback_timeout, Duration::from_secs(5));
            assert_eq!(s.webhook_poll_interval, Duration::from_millis(50));
            // 0 where it means off: the previous secret stops signing at once.
            assert_eq!(s.webhook_secret_overlap, Duration::ZERO);
            assert_eq!(s.event_poll_interval, Settings::default().event_poll_interval);
            Ok(())
        });
    }

    #[test]
    fn a_duration_out_of_its_range_is_refused_naming_the_variable_and_the_range() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PAYGATE_EVENT_POLL_INTERVAL_MS", "3");
            let err = Settings::load(None).expect_err("3 ms is below the range").to_string();
            assert_eq!(err, "configuration: PAYGATE_EVENT_POLL_INTERVAL_MS must be between 10 and 60000 (got 3)");
            // Every setting out of range is named at once; 0 is refused where it does not mean off.
            jail.set_env("PAYGATE_SHUTDOWN_GRACE_MS", "0");
            jail.set_env("PAYGATE_CLIENT_TOKEN_TTL_MS", "999");
            let err = Settings::load(None).expect_err("three out of range").to_string();
            for named in [
                "PAYGATE_EVENT_POLL_INTERVAL_MS must be between 10 and 60000 (got 3)",
                "PAYGATE_SHUTDOWN_GRACE_MS must be between 1 and 3600000 (got 0)",
                "PAYGATE_CLIENT_TOKEN_TTL_MS must be between 1000 and 86400000 (got 999)",
            ] {
                assert!(err.contains(named), "{err}");
            }
            Ok(())
        });
    }

    #[test]
    fn a_duration_out_of_range_in_the_file_is_named_by_its_key_and_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("paygate.toml", "sweep_interval_ms = 5")?;
            let err = Settings::load(None).expect_err("5 ms is below the range").to_string();
            assert!(err.contains("sweep_interval_ms in "), "{err}");
            assert!(err.contains("paygate.toml must be between 10 and 86400000 (got 5)"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_duration_not_in_whole_milliseconds_is_refused() {
        for given in ["-5", "5s", "1.5"] {
            figment::Jail::expect_with(|jail| {
                jail.set_env("PAYGATE_SWEEP_INTERVAL_MS", given);
                let err = Settings::load(None).expect_err("not whole milliseconds").to_string();
                // figment's own wording names the variable without its prefix, then the prefix.
                assert!(err.contains("\"SWEEP_INTERVAL_MS\" in `PAYGATE_` environment"), "{given}: {err}");
                Ok(())
            });
        }
    }

    #[test]
    fn a_webhook_claim_shorter_than_an_attempt_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PAYGATE_WEBHOOK_TIMEOUT_MS", "40000");
            let err = Settings::load(None).expect_err("2 x 40 s + 5 s outlasts the 60 s claim").to_string();
            assert_eq!(
                err,
                "configuration: PAYGATE_WEBHOOK_CLAIM_MS must be at least 2 x PAYGATE_WEBHOOK_TIMEOUT_MS + \
                 PAYGATE_WEBHOOK_CONNECT_TIMEOUT_MS = 85000 (got 60000)"
            );
            jail.set_env("PAYGATE_WEBHOOK_CLAIM_MS", "85000");
            assert_eq!(Settings::load(None).expect("settings load").webhook_claim, Duration::from_secs(85));
            Ok(())
        });
    }

    #[test]
    fn the_defaults_lie_in_their_ranges_under_the_names_they_are_read_by() {
        let defaults = Settings::default();
        assert_eq!(defaults.out_of_range(str::to_owned), Vec::<String>::new());
        let figment = Figment::from(Serialized::defaults(&defaults));
        for (key, value, _) in defaults.duration_ranges() {
            assert_eq!(figment.extract_inner::<u64>(key).ok(), Some(millis_of(value)), "{key}");
        }
    }

    /// docs/configuration.md gives each duration's range as it is enforced.
    #[test]
    fn the_reference_gives_each_range() {
        let reference = include_str!("../docs/configuration.md");
        for (key, _, range) in Settings::default().duration_ranges() {
            let row = format!("| `PAYGATE_{}` |", key.to_ascii_uppercase());
            let line = reference.lines().find(|l| l.starts_with(&row)).unwrap_or_else(|| panic!("no row {row}"));
            let given = format!("`{}`–`{}`", range.start(), range.end());
            assert!(line.contains(&given), "{row} should give {given}");
        }
    }

    #[test]
    fn secrets_are_not_printed_by_debug() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PAYGATE_ADMIN_TOKEN", "very-secret-admin");
            jail.set_env("PAYGATE_DATABASE_URL", "postgres://u:hunter2@db/paygate");
            let s = Settings::load(None).expect("settings load");
            let printed = format!("{s:?}");
            assert!(!printed.contains("very-secret-admin"), "{printed}");
            assert!(!printed.contains("hunter2"), "{printed}");
            Ok(())
        });
    }
}
