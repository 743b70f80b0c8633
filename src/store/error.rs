//! What can go wrong with the database, in terms callers act on; errors convert themselves, and a
//! unique violation becomes the caller's own error where it means something (`on_unique_violation`).

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

/// Where a unique violation means something to the caller (a key taken), it says so in its own
/// error; any other database error stays a `StoreError` (as realworld-axum-sqlx's `on_constraint`).
pub trait OnUniqueViolation<T> {
    fn on_unique_violation<E: From<StoreError>>(self, error: impl FnOnce() -> E) -> Result<T, E>;
}

impl<T> OnUniqueViolation<T> for Result<T, sqlx::Error> {
    fn on_unique_violation<E: From<StoreError>>(self, error: impl FnOnce() -> E) -> Result<T, E> {
        self.map_err(|e| match StoreError::from(e) {
            StoreError::UniqueViolation => error(),
            other => other.into(),
        })
    }
}

/// PostgreSQL connection-class and shutdown errors, a write refused by a standby (25006: the
/// database behind paygate's address is not, or not yet, the primary, as during a failover), SQLite
/// busy/locked: worth a retry.
fn is_transient(code: Option<&str>) -> bool {
    match code {
        Some(code) => {
            code.starts_with("08")
                || code.starts_with("57P")
                || code == "53300"
                || code == "25006"
                || code == "5"
                || code == "6"
        }
        None => false,
    }
}
