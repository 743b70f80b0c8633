//! The `paygate` command: `serve`, `migrate`, and admin commands.

use std::{path::PathBuf, process::ExitCode};

mod demo;
mod seed;
mod watch;

use clap::{Parser, Subcommand};
use paygate::{
    app,
    audit::Actor,
    channels,
    config::Settings,
    merchants::{
        ApiKey,
        keys::{ListFilter, NewApiKey},
    },
    secrets::MasterKeys,
    store::now_ms,
    telemetry,
};

/// `paygate --version`: the release, and the schema (newest migration) it needs.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (schema ", env!("PAYGATE_SCHEMA_VERSION"), ")");

#[derive(Parser)]
#[command(name = "paygate", version = VERSION, about = "Payments gateway: gRPC API, provider pingbacks")]
struct Cli {
    /// TOML settings file (default: ./paygate.toml when present). PAYGATE_* variables override it.
    #[arg(long, global = true, env = "PAYGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC and HTTP servers.
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Administration.
    #[command(subcommand)]
    Admin(Admin),
    /// Follow payment events as JSON lines, reconnecting (and resuming) until interrupted.
    Watch(watch::WatchArgs),
    /// Try paygate in a minute: a temporary database, the Paymentwall simulator, a checkout paid
    /// end to end; then keeps serving until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Development tools.
    #[command(subcommand)]
    Dev(Dev),
}

#[derive(Subcommand)]
enum Dev {
    /// Fill a PostgreSQL database (PAYGATE_DATABASE_URL, migrated first) with a year of a busy
    /// deployment, by COPY: merchants, sub-merchants, channels, payments, events, refunds,
    /// subscriptions, raw pingbacks. For measuring at size (BENCHMARKS.md).
    Seed(seed::SeedArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The gRPC address (overrides PAYGATE_GRPC_ADDR), e.g. 127.0.0.1:50051; port 0 picks a free one.
    #[arg(long)]
    grpc_addr: Option<std::net::SocketAddr>,
    /// The HTTP address for callbacks and probes (overrides PAYGATE_HTTP_ADDR), e.g. 0.0.0.0:8080.
    #[arg(long)]
    http_addr: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
enum Admin {
    /// Create a merchant and its first API key; prints {"merchant_id", "api_key"} as JSON.
    CreateMerchant {
        #[arg(long)]
        name: String,
        /// Make it a sub-merchant of this merchant (the parent's keys then act for it too).
        #[arg(long)]
        parent: Option<String>,
    },
    /// Create another API key for a merchant; prints {"key_id", "api_key", ...} as JSON. The key is
    /// shown this once.
    CreateApiKey {
        #[arg(long)]
        merchant: String,
        /// What the key is for, shown in listings.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Make the key expire after this long, e.g. "90d" or "12h".
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
    },
    /// List a merchant's API keys as JSON lines (never the keys themselves).
    ListApiKeys {
        #[arg(long)]
        merchant: String,
        #[arg(long)]
        include_revoked: bool,
    },
    /// Revoke an API key by id. Every replica refuses it within a second (Redis) or
    /// PAYGATE_AUTH_CACHE_TTL_MS (no Redis reachable).
    RevokeApiKey {
        #[arg(long)]
        key_id: String,
    },
    /// Print a new random master key (base64) for PAYGATE_MASTER_KEY.
    GenerateMasterKey,
    /// Re-encrypt every channel secret under the current master key. Run with the new key as
    /// PAYGATE_MASTER_KEY and the old one in PAYGATE_PREVIOUS_MASTER_KEYS; afterwards the old key
    /// can be removed from the configuration.
    RotateMasterKey,
}

/// An API key as the admin commands print it (never the key itself).
fn key_json(key: &ApiKey) -> serde_json::Value {
    serde_json::json!({
        "key_id": key.key_id,
        "merchant_id": key.merchant_id,
        "name": key.name,
        "key_prefix": key.key_prefix,
        "created_at_ms": key.created_at,
        "expires_at_ms": key.expires_at,
        "last_used_at_ms": key.last_used_at,
        "revoked_at_ms": key.revoked_at,
    })
}

/// The admin commands that need the database (and Redis, to announce key changes).
async fn run_admin(settings: &Settings, admin: Admin) -> Result<(), String> {
    let db = app::connect_db(settings).await.map_err(|e| e.to_string())?;
    if settings.migrate_on_start {
        db.migrate().await.map_err(|e| e.to_string())?;
    }
    let redis = app::connect_redis(settings).map_err(|e| e.to_string())?;
    let merchants = app::merchants(settings, &db, redis.clone());
    let cli = Actor::cli();
    match admin {
        Admin::CreateMerchant { name, parent } => {
            let created = merchants.create_merchant(&cli, &name, parent.as_deref()).await.map_err(|e| e.to_string())?;
            // The process ends next: the parent's keys must hear of their new scope first.
            merchants.key_cache().flush().await;
            println!("{}", serde_json::to_string(&created).map_err(|e| e.to_string())?);
        }
        Admin::CreateApiKey { merchant, name, expires_in } => {
            let expires_at = expires_in.map(|d| now_ms() + d.as_millis() as i64);
            let new = NewApiKey { name, expires_at };
            let created = merchants.create_api_key(&cli, &merchant, &new).await.map_err(|e| e.to_string())?;
            let mut json = key_json(&created.key);
            json["api_key"] = created.secret.into();
            println!("{json}");
        }
        Admin::ListApiKeys { merchant, include_revoked } => {
            let mut after_key_id = None;
            loop {
                let filter = ListFilter { merchant_id: merchant.clone(), include_revoked, after_key_id, limit: 100 };
                let page = merchants.list_api_keys(&filter).await.map_err(|e| e.to_string())?;
                for key in &page {
                    println!("{}", key_json(key));
                }
                match page.last() {
                    Some(last) if page.len() == 100 => after_key_id = Some(last.key_id.clone()),
                    _ => break,
                }
            }
        }
        Admin::RevokeApiKey { key_id } => {
            let key = merchants.get_api_key(&key_id).await.map_err(|e| e.to_string())?;
            let revoked = merchants.revoke_api_key(&cli, &key).await.map_err(|e| e.to_string())?;
            merchants.key_cache().flush().await;
            println!("{}", key_json(&revoked));
        }
        Admin::RotateMasterKey => {
            let cache = app::channel_cache(settings, &db, redis).await.map_err(|e| e.to_string())?;
            let (rotated, total) = channels::rotate_master_key(&db, &cache).await.map_err(|e| e.to_string())?;
            let key_id = cache.keys().current_id();
            println!("{}", serde_json::json!({"rotated": rotated, "channels": total, "key_id": key_id}));
        }
        Admin::GenerateMasterKey => unreachable!("handled above"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("paygate: {e}");
            return ExitCode::from(2);
        }
    };
    let is_serve = matches!(cli.command, Command::Serve(_));
    if let Command::Serve(args) = &cli.command {
        settings.grpc_addr = args.grpc_addr.unwrap_or(settings.grpc_addr);
        settings.http_addr = args.http_addr.unwrap_or(settings.http_addr);
    }
    if let Command::Watch(args) = cli.command {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let run = |rt: tokio::runtime::Runtime| {
            rt.block_on(async {
                let _telemetry = telemetry::init(settings.log_format, &settings.log_level, true);
                watch::run(args).await
            })
        };
        return match tokio::runtime::Runtime::new().map(run) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) => {
                eprintln!("paygate watch: {e}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("paygate watch: cannot start the runtime: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paygate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        // Kept until the command ends, so exported spans are flushed.
        // The demo tells its own story on stdout; only warnings and errors are logged (to stderr).
        let is_demo = matches!(cli.command, Command::Demo(_));
        let level = if is_demo { "warn" } else { settings.log_level.as_str() };
        let _telemetry = telemetry::init(settings.log_format, level, !is_serve);
        let result = match cli.command {
            Command::Serve(_) => app::serve(settings).await.map_err(|e| e.to_string()),
            Command::Migrate => {
                let db = app::connect_db(&settings).await.map_err(|e| e.to_string())?;
                db.migrate().await.map_err(|e| e.to_string())?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::Admin(Admin::GenerateMasterKey) => {
                println!("{}", MasterKeys::generate());
                Ok(())
            }
            Command::Admin(admin) => run_admin(&settings, admin).await,
            Command::Watch(_) => unreachable!("handled above"),
            Command::Demo(args) => demo::run(args).await,
            Command::Dev(Dev::Seed(args)) => {
                let db = app::connect_db(&settings).await.map_err(|e| e.to_string())?;
                db.migrate().await.map_err(|e| e.to_string())?;
                db.close().await;
                seed::run(secrecy::ExposeSecret::expose_secret(&settings.database_url), args).await
            }
        };
        // Logged while the log writer still runs (it stops with `_telemetry`).
        if let Err(e) = &result {
            tracing::error!(error = %e, "paygate failed");
        }
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paygate: {e}");
            ExitCode::FAILURE
        }
    }
}
