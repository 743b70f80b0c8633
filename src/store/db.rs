//! The pool over either backend, and the clock and URL helpers every query uses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Any, AnyPool, Transaction};

use super::{Backend, StoreError};

/// A query on either backend, as the helpers that bind a table's columns take and return it.
pub type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

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
        let backend = Backend::from_url(url)?;
        let pool = backend.connect(url, settings).await?;
        Ok(Self { pool, backend, commits: Default::default() })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.backend.migrator().run(&self.pool).await?;
        Ok(())
    }

    /// A transaction whose statements all read one snapshot (see `Backend::begin_snapshot`).
    pub async fn begin_snapshot(&self) -> Result<Transaction<'static, Any>, StoreError> {
        self.backend.begin_snapshot(&self.pool).await
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Readiness: can we write right now? A PostgreSQL standby answers queries but refuses writes,
    /// so it does not count (during a failover, paygate's address may reach one before promotion).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match sqlx::query(self.backend.readiness_query()).fetch_optional(&self.pool).await? {
            Some(_) => Ok(()),
            None => Err(StoreError::Unavailable(sqlx::Error::Protocol("the database is a read-only standby".into()))),
        }
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

/// A database URL fit for a log line: scheme, host, port and database, never a user or password
/// (nor query parameters, which may carry them). A `sqlite:` URL keeps its file path.
pub fn redacted_url(url: &str) -> String {
    if url.starts_with("sqlite:") {
        return url.split('?').next().unwrap_or(url).to_owned();
    }
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}{}", u.scheme(), u.path())
        }
        Err(_) => "(unparsable database URL)".to_owned(),
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::redacted_url;

    #[test]
    fn a_database_url_in_a_log_line_carries_no_credentials() {
        assert_eq!(
            redacted_url("postgres://paygate:s3cret@db.internal:5433/pay?password=also"),
            "postgres://db.internal:5433/pay"
        );
        assert_eq!(redacted_url("sqlite://paygate.db?mode=rwc"), "sqlite://paygate.db");
    }
}
