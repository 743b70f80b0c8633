//! Settings: defaults, then a TOML file, then `PAYGATE_*` environment variables (env wins).
//! Every setting and its default is listed in docs/configuration.md.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use ipnet::IpNet;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

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
    pub database_acquire_timeout_ms: u64,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
    /// Redis for the shared cache and cross-replica fan-out; none means in-process only.
    #[serde(skip_serializing)]
    pub redis_url: Option<SecretString>,
    /// Prefix of every Redis key and pub/sub channel, so several deployments can share a Redis.
    pub redis_key_prefix: String,
    /// Connect and response timeout for Redis calls; past it, paygate goes to the database.
    pub redis_timeout_ms: u64,
    /// Base64 of 32 random bytes; encrypts channel secrets (AES-256-GCM).
    #[serde(skip_serializing)]
    pub master_key: Option<SecretString>,
    /// A file holding the master key (base64), instead of `master_key`.
    pub master_key_file: Option<PathBuf>,
    /// Earlier master keys, comma-separated, still accepted for reading during a rotation.
    #[serde(skip_serializing)]
    pub previous_master_keys: Option<SecretString>,
    /// In-process channel cache: how long an entry lives, and how many entries at most.
    pub channel_cache_ttl_ms: u64,
    pub channel_cache_capacity: u64,
    /// Token for the admin RPCs.
    #[serde(skip_serializing)]
    pub admin_token: Option<SecretString>,
    /// How long a verified API key is trusted without asking the database. Revocation reaches
    /// every replica through Redis at once; with Redis down, within this time.
    pub auth_cache_ttl_ms: u64,
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
    pub pingback_timeout_ms: u64,
    /// The public HTTP port: open connections at most; a request head must arrive within the
    /// header timeout (of the connection opening or the previous response, so idle keep-alive
    /// connections close then too); a whole request must be answered within the request timeout.
    pub http_max_connections: usize,
    pub http_header_read_timeout_ms: u64,
    pub http_request_timeout_ms: u64,
    /// The gRPC port: open connections at most; a new connection must send its first bytes (the
    /// HTTP/2 preface) within the handshake timeout; concurrent HTTP/2 streams and in-flight
    /// requests per connection; the largest request message accepted.
    pub grpc_max_connections: usize,
    pub grpc_handshake_timeout_ms: u64,
    pub grpc_max_concurrent_streams: u32,
    pub grpc_max_in_flight_per_connection: usize,
    pub grpc_max_message_bytes: usize,
    /// Let provider API calls (a channel's `api_base_url`) reach loopback, private and link-local
    /// addresses: for the simulator in tests and local runs.
    pub provider_allow_private_targets: bool,
    /// Outgoing provider API calls: connect timeout and whole-request timeout.
    pub provider_connect_timeout_ms: u64,
    pub provider_timeout_ms: u64,
    /// How long a request holds its idempotency key; after that a retry may take over.
    pub idempotency_lease_ms: u64,
    /// The longest a payment client token (CreatePaymentClientToken) lives.
    pub client_token_ttl_ms: u64,
    /// Browser origins allowed to call the gRPC port through gRPC-Web (CORS), comma-separated,
    /// e.g. "https://shop.example". Empty: none, so a cross-origin browser call is refused.
    pub grpc_web_allowed_origins: String,
    /// How long a provider's payment-method list is cached per channel and country.
    pub payment_methods_cache_ttl_ms: u64,
    /// The stuck-payment sweep: how often it runs, which payments it asks the provider about, and
    /// how long before it asks about the same payment again.
    pub sweep_interval_ms: u64,
    pub sweep_ready_after_ms: u64,
    pub sweep_pending_after_ms: u64,
    pub sweep_recheck_ms: u64,
    /// Events buffered per open stream; a stream that falls this far behind is ended (it resumes).
    pub stream_buffer: usize,
    pub max_streams_per_merchant: usize,
    /// The event tailer reads the log at least this often (catching up what a lost Redis message missed).
    pub event_poll_interval_ms: u64,
    /// HTTP/2 keepalive pings on gRPC connections, and how long to wait for the answer.
    pub http2_keepalive_interval_ms: u64,
    pub http2_keepalive_timeout_ms: u64,
    /// Let webhooks reach loopback, private and link-local addresses (tests, private networks).
    pub webhook_allow_private_targets: bool,
    pub webhook_connect_timeout_ms: u64,
    pub webhook_timeout_ms: u64,
    /// Retries: the first after this, each next 4 times longer up to the max, for the window.
    pub webhook_retry_base_ms: u64,
    pub webhook_retry_max_ms: u64,
    pub webhook_retry_window_ms: u64,
    pub webhook_poll_interval_ms: u64,
    pub webhook_claim_ms: u64,
    /// How long the previous secret keeps signing after SetWebhookEndpoint made a new one.
    pub webhook_secret_overlap_ms: u64,
    /// After SIGTERM: how long in-flight requests and deliveries may take before paygate exits anyway.
    pub shutdown_grace_ms: u64,
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
            database_acquire_timeout_ms: 3_000,
            migrate_on_start: true,
            redis_url: None,
            redis_key_prefix: "paygate:".to_owned(),
            redis_timeout_ms: 250,
            master_key: None,
            master_key_file: None,
            previous_master_keys: None,
            channel_cache_ttl_ms: 30_000,
            channel_cache_capacity: 10_000,
            admin_token: None,
            auth_cache_ttl_ms: 10_000,
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
            pingback_timeout_ms: 10_000,
            http_max_connections: 1_024,
            http_header_read_timeout_ms: 10_000,
            http_request_timeout_ms: 30_000,
            grpc_max_connections: 1_024,
            grpc_handshake_timeout_ms: 5_000,
            grpc_max_concurrent_streams: 200,
            grpc_max_in_flight_per_connection: 256,
            grpc_max_message_bytes: 1_048_576,
            provider_allow_private_targets: false,
            provider_connect_timeout_ms: 3_000,
            provider_timeout_ms: 10_000,
            idempotency_lease_ms: 30_000,
            client_token_ttl_ms: 900_000,
            grpc_web_allowed_origins: String::new(),
            payment_methods_cache_ttl_ms: 600_000,
            sweep_interval_ms: 60_000,
            sweep_ready_after_ms: 3_600_000,
            sweep_pending_after_ms: 600_000,
            sweep_recheck_ms: 300_000,
            stream_buffer: 256,
            max_streams_per_merchant: 1_000,
            event_poll_interval_ms: 1_000,
            http2_keepalive_interval_ms: 30_000,
            http2_keepalive_timeout_ms: 10_000,
            webhook_allow_private_targets: false,
            webhook_connect_timeout_ms: 5_000,
            webhook_timeout_ms: 10_000,
            webhook_retry_base_ms: 60_000,
            webhook_retry_max_ms: 6 * 3_600_000,
            webhook_retry_window_ms: 25 * 3_600_000,
            webhook_poll_interval_ms: 250,
            webhook_claim_ms: 60_000,
            webhook_secret_overlap_ms: 24 * 3_600_000,
            shutdown_grace_ms: 25_000,
            log_format: LogFormat::Auto,
            log_level: "info".to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
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
        figment.extract().map_err(|e| ConfigError::Invalid(Box::new(e)))
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
            acquire_timeout: Duration::from_millis(self.database_acquire_timeout_ms),
        }
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
            assert_eq!(s.webhook_retry_window_ms, 25 * 3_600_000);
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
