//! The database: one pool over PostgreSQL (production) or SQLite (embedded default), one schema,
//! one set of queries (sqlx's `Any` driver; times are unix milliseconds, flags are integers).

pub mod redis;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{AnyPool, Executor, any::AnyPoolOptions, migrate::Migrator};

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or did not answer in time; the caller may retry.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("unique constraint violated")]
    UniqueViolation,
    /// PostgreSQL refused a value (SQLSTATE class 22, e.g. 22021 for a NUL byte in text). The
    /// edges check every field first, so this is defense in depth: it is the caller's input, not
    /// our fault, and never an internal error.
    #[error("value refused by the database: {0}")]
    InvalidValue(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Query(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url (expected postgres://... or sqlite:...)")]
    UnsupportedUrl,
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &err {
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Protocol(_) => {
                Self::Unavailable(err)
            }
            E::Database(db) if db.is_unique_violation() => Self::UniqueViolation,
            E::Database(db) if is_transient(db.code().as_deref()) => Self::Unavailable(err),
            E::Database(db) if db.code().is_some_and(|c| c.starts_with("22")) => Self::InvalidValue(err),
            _ => Self::Query(err),
        }
    }
}

/// PostgreSQL connection-class and shutdown errors, SQLite busy/locked: worth a retry.
fn is_transient(code: Option<&str>) -> bool {
    match code {
        Some(code) => {
            code.starts_with("08") || code.starts_with("57P") || code == "53300" || code == "5" || code == "6"
        }
        None => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Pool settings, from configuration.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// Signalled after a commit that appended events, so the event tailer reads at once.
    commits: std::sync::Arc<tokio::sync::Notify>,
}

impl Db {
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let options = AnyPoolOptions::new().acquire_timeout(settings.acquire_timeout);
        let options = match backend {
            // SQLite has one writer; a single connection turns lock contention into queueing
            // instead of SQLITE_BUSY failures when a read transaction upgrades to a write.
            Backend::Sqlite => options.max_connections(1).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                    )
                    .await?;
                    Ok(())
                })
            }),
            Backend::Postgres => options.max_connections(settings.max_connections),
        };
        let pool = options.connect(url).await?;
        Ok(Self { pool, backend, commits: Default::default() })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Readiness: can we run a query right now?
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Call after committing a transaction that appended events.
    pub fn signal_commit(&self) {
        self.commits.notify_one();
    }

    /// Resolves after the next `signal_commit` (or at once if one is pending).
    pub async fn committed(&self) {
        self.commits.notified().await;
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Now, as stored: unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}
