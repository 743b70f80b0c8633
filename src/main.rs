//! The `paygate` command: `serve`, `migrate`, and admin commands.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use paygate::{app, config::Settings, merchants, telemetry};

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
}

#[derive(Subcommand)]
enum Admin {
    /// Create a merchant and its first API key; prints {"merchant_id", "api_key"} as JSON.
    CreateMerchant {
        #[arg(long)]
        name: String,
    },
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
    telemetry::init(settings.log_format, &settings.log_level, !is_serve);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paygate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => app::serve(settings).await.map_err(|e| e.to_string()),
            Command::Migrate => {
                let db = app::connect_db(&settings).await.map_err(|e| e.to_string())?;
                db.migrate().await.map_err(|e| e.to_string())?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::Admin(Admin::CreateMerchant { name }) => {
                let db = app::connect_db(&settings).await.map_err(|e| e.to_string())?;
                if settings.migrate_on_start {
                    db.migrate().await.map_err(|e| e.to_string())?;
                }
                let name = name.trim();
                if name.is_empty() || name.chars().count() > 128 {
                    return Err("--name must be 1 to 128 characters".to_owned());
                }
                let created = merchants::create_merchant(&db, name).await.map_err(|e| e.to_string())?;
                println!("{}", serde_json::to_string(&created).map_err(|e| e.to_string())?);
                Ok(())
            }
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
