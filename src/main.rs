//! The `paygate` command: `serve`, `migrate`, and admin commands.

use std::{path::PathBuf, process::ExitCode};

mod watch;

use clap::{Parser, Subcommand};
use paygate::{
    app,
    channels::{self, crypto::MasterKeys},
    config::Settings,
    merchants, telemetry,
};

#[derive(Parser)]
#[command(name = "paygate", version, about = "Payments gateway: gRPC API, provider pingbacks")]
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
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Administration.
    #[command(subcommand)]
    Admin(Admin),
    /// Follow payment events as JSON lines, reconnecting (and resuming) until interrupted.
    Watch(watch::WatchArgs),
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
    /// Print a new random master key (base64) for PAYGATE_MASTER_KEY.
    GenerateMasterKey,
    /// Re-encrypt every channel secret under the current master key. Run with the new key as
    /// PAYGATE_MASTER_KEY and the old one in PAYGATE_PREVIOUS_MASTER_KEYS; afterwards the old key
    /// can be removed from the configuration.
    RotateMasterKey,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("paygate: {e}");
            return ExitCode::from(2);
        }
    };
    let is_serve = matches!(cli.command, Command::Serve);
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
        let _telemetry = telemetry::init(settings.log_format, &settings.log_level, !is_serve);
        match cli.command {
            Command::Serve => app::serve(settings).await.map_err(|e| e.to_string()),
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
            Command::Admin(admin) => {
                let db = app::connect_db(&settings).await.map_err(|e| e.to_string())?;
                if settings.migrate_on_start {
                    db.migrate().await.map_err(|e| e.to_string())?;
                }
                match admin {
                    Admin::CreateMerchant { name, parent } => {
                        let created = merchants::create_merchant(&db, &name, parent.as_deref())
                            .await
                            .map_err(|e| e.to_string())?;
                        println!("{}", serde_json::to_string(&created).map_err(|e| e.to_string())?);
                    }
                    Admin::RotateMasterKey => {
                        let redis = app::connect_redis(&settings).map_err(|e| e.to_string())?;
                        let cache = app::channel_cache(&settings, &db, redis).await.map_err(|e| e.to_string())?;
                        let (rotated, total) = channels::rotate_master_key(&db, &cache).await?;
                        let key_id = cache.keys().current_id();
                        println!("{}", serde_json::json!({"rotated": rotated, "channels": total, "key_id": key_id}));
                    }
                    Admin::GenerateMasterKey => unreachable!("handled above"),
                }
                Ok(())
            }
            Command::Watch(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "paygate failed");
            eprintln!("paygate: {e}");
            ExitCode::FAILURE
        }
    }
}
