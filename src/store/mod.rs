//! The database: one pool over PostgreSQL (production) or SQLite (embedded default), one schema,
//! one set of queries (sqlx's `Any` driver; times are unix milliseconds, flags are integers). What
//! differs between the two lives in `dialect`; what a column holds, in `types`; the pool in `db`;
//! what goes wrong in `error`.

mod db;
mod dialect;
mod error;
pub mod redis;
mod types;

pub use db::{AnyQuery, Db, PoolSettings, now_ms, redacted_url};
pub use dialect::Backend;
pub use error::{OnUniqueViolation, StoreError};
pub use types::{Flag, UnixMs};

/// The schema this build needs: its newest migration's version (build.rs reads `migrations/`).
pub const SCHEMA_VERSION: &str = env!("PAYGATE_SCHEMA_VERSION");
