//! Everything that differs between PostgreSQL and SQLite, in one place. The rest of paygate writes
//! one set of queries (sqlx `Any`, `$n` placeholders, BIGINT times and flags) and asks here for
//! the few fragments and settings that cannot be shared.

use sqlx::{Any, AnyPool, Executor, Transaction, any::AnyPoolOptions, migrate::Migrator};

use super::{PoolSettings, StoreError};

// `ignore_missing`: a schema a newer release has already moved on (its migrations applied) is one
// this release still runs on, during a rolling upgrade and after a rollback (docs/upgrades.md).
static POSTGRES_MIGRATIONS: Migrator = Migrator { ignore_missing: true, ..sqlx::migrate!("migrations/postgres") };
static SQLITE_MIGRATIONS: Migrator = Migrator { ignore_missing: true, ..sqlx::migrate!("migrations/sqlite") };

/// Every table paygate creates (a test holds this to the migrations). A transaction writing one of
/// them is one of paygate's own, and may append to the event log.
pub const PAYGATE_TABLES: &[&str] = &[
    "merchants",
    "api_keys",
    "channels",
    "payments",
    "cancellations",
    "subscriptions",
    "idempotency_keys",
    "pingbacks",
    "payment_events",
    "webhook_endpoints",
    "webhook_deliveries",
    "webhook_attempts",
    "audit_events",
    "retention_marks",
    "deliveries",
    "worker_cursors",
];

/// PostgreSQL's event-log horizon, from the statement's snapshot: the oldest transaction the
/// snapshot counts as running that writes one of paygate's tables (it holds a row lock mode on one
/// in this database: `pg_locks`), or has committed since the snapshot was taken (its rows are not
/// in this read, and it may have been a writer); else the snapshot's `xmax`, below which every
/// transaction id is handed out. Transactions of other applications, in this database or another,
/// never hold it back. A writer locks a table before it is given a transaction id, so none can
/// hold an id without its lock showing. The locks are read (once, on the first `IN`) before any
/// `pg_xact_status`: a writer that ends after its status was asked must still show its locks (the
/// other way round it could end in between and be missed). `pg_locks` shows 32-bit ids; the
/// snapshot's are 64-bit.
static POSTGRES_HORIZON: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let tables = PAYGATE_TABLES.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
    format!(
        "(SELECT COALESCE(min(x::text::bigint), pg_snapshot_xmax(pg_current_snapshot())::text::bigint) \
         FROM pg_snapshot_xip(pg_current_snapshot()) AS x \
         WHERE x::text::bigint % 4294967296 IN ( \
           SELECT t.transactionid::text::bigint FROM pg_locks t JOIN pg_locks r USING (virtualtransaction) \
           WHERE t.locktype = 'transactionid' AND r.locktype = 'relation' \
             AND r.mode IN ('RowShareLock', 'RowExclusiveLock') \
             AND r.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND r.relation IN (SELECT to_regclass(name) FROM unnest(ARRAY[{tables}]) AS name)) \
           OR pg_xact_status(x) = 'committed')"
    )
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    pub(super) async fn connect(self, url: &str, settings: &PoolSettings) -> Result<AnyPool, StoreError> {
        // No ping before each acquire: it is a round trip on every request (a checkout's only
        // other one is its INSERT). A connection that broke meanwhile fails its statement, which
        // is answered as "unavailable, nothing changed", and the pool drops it.
        let options = AnyPoolOptions::new().acquire_timeout(settings.acquire_timeout).test_before_acquire(false);
        let options = match self {
            // SQLite has one writer; a single connection turns lock contention into queueing
            // instead of SQLITE_BUSY failures when a read transaction upgrades to a write.
            Self::Sqlite => options.max_connections(1).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                    )
                    .await?;
                    Ok(())
                })
            }),
            Self::Postgres => options.max_connections(settings.max_connections),
        };
        Ok(options.connect(url).await?)
    }

    /// The backend a connection talks to.
    pub fn of(conn: &sqlx::AnyConnection) -> Self {
        if conn.backend_name() == "SQLite" { Self::Sqlite } else { Self::Postgres }
    }

    /// PostgreSQL runs INSERT and UPDATE inside `WITH`, so one statement can make several writes:
    /// one round trip instead of several on the hot paths. SQLite cannot (and its round trips are
    /// function calls).
    /// One row when the database takes writes: a PostgreSQL standby (in recovery) does not.
    pub fn readiness_query(self) -> &'static str {
        match self {
            Self::Postgres => "SELECT 1 WHERE NOT pg_is_in_recovery()",
            Self::Sqlite => "SELECT 1",
        }
    }

    pub fn writes_in_ctes(self) -> bool {
        self == Self::Postgres
    }

    pub fn migrator(self) -> &'static Migrator {
        match self {
            Self::Postgres => &POSTGRES_MIGRATIONS,
            Self::Sqlite => &SQLITE_MIGRATIONS,
        }
    }

    /// SQL for the event log's horizon: every transaction below it that may write an event has
    /// ended, and every later one gets a larger id. SQLite has one writer, so nothing is ever
    /// running behind a committed id.
    pub fn running_horizon_sql(self) -> &'static str {
        match self {
            Self::Postgres => &POSTGRES_HORIZON,
            Self::Sqlite => "9223372036854775807",
        }
    }

    /// The locking clause of a claim's inner SELECT: replicas skip rows another one is claiming.
    /// SQLite's single writer serializes claims without it.
    pub fn skip_locked_sql(self) -> &'static str {
        match self {
            Self::Postgres => "FOR UPDATE SKIP LOCKED",
            Self::Sqlite => "",
        }
    }

    /// Begins a transaction whose statements all read one snapshot. PostgreSQL's default gives
    /// each statement its own; SQLite's read transaction is one already.
    pub async fn begin_snapshot(self, pool: &AnyPool) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = pool.begin().await?;
        if self == Self::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
        }
        Ok(tx)
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use sqlx::{AnyConnection, Connection};

    use super::*;
    use crate::store::{Db, Flag};

    /// table -> column -> nullable
    type Schema = BTreeMap<String, BTreeMap<String, bool>>;

    fn schema(rows: Vec<(String, String, Flag)>) -> Schema {
        let mut schema = Schema::new();
        for (table, column, nullable) in rows {
            schema.entry(table).or_default().insert(column, nullable.into());
        }
        schema
    }

    async fn migrated(url: &str) -> Db {
        let settings = PoolSettings { max_connections: 2, acquire_timeout: Duration::from_secs(10) };
        let db = Db::connect(url, &settings).await.expect("connect");
        db.migrate().await.expect("migrations apply");
        db
    }

    async fn postgres_schema() -> Schema {
        let admin_url = std::env::var("PAYGATE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        sqlx::any::install_default_drivers();
        let mut admin = AnyConnection::connect(&admin_url).await.expect("connect to PostgreSQL");
        let name = format!("paygate_schema_{}", ulid::Ulid::new().to_string().to_lowercase());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create database");
        let base = admin_url.split('?').next().unwrap_or(&admin_url);
        let url = format!("{}/{name}", base.rsplit_once('/').map_or(base, |(b, _)| b));
        let db = migrated(&url).await;
        // information_schema's own types (sql_identifier, yes_or_no) are text to the Any driver.
        let rows = sqlx::query_as(
            "SELECT table_name::text, column_name::text, (is_nullable::text = 'YES')::int::bigint \
             FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations' \
             AND table_name NOT IN (SELECT relname::text FROM pg_class WHERE relispartition)",
        )
        .fetch_all(db.pool())
        .await;
        db.close().await;
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await.expect("drop database");
        schema(rows.expect("read the catalogue"))
    }

    async fn sqlite_schema() -> Schema {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = migrated(&format!("sqlite://{}?mode=rwc", dir.path().join("schema.db").display())).await;
        // A primary key is never NULL in paygate's use (PostgreSQL says so; SQLite does not).
        let rows = sqlx::query_as(
            "SELECT m.name, p.name, p.\"notnull\" = 0 AND p.pk = 0 FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'",
        )
        .fetch_all(db.pool())
        .await
        .expect("read the catalogue");
        db.close().await;
        schema(rows)
    }

    /// Both sets of migrations must describe one schema: the queries are shared, so a column on
    /// one side only is a query that fails on the other backend.
    #[tokio::test]
    async fn both_backends_migrate_to_the_same_tables_and_columns() {
        let (postgres, sqlite) = (postgres_schema().await, sqlite_schema().await);
        assert!(postgres.contains_key("payments") && postgres["payments"].contains_key("amount_minor"));
        let tables: Vec<&String> = postgres.keys().chain(sqlite.keys()).collect();
        let mut differences = Vec::new();
        for table in tables {
            let (pg, lite) = (postgres.get(table), sqlite.get(table));
            let columns = pg.into_iter().chain(lite).flat_map(|c| c.keys());
            for column in columns {
                let (a, b) = (pg.and_then(|c| c.get(column)), lite.and_then(|c| c.get(column)));
                if a != b {
                    differences.push(format!("{table}.{column}: postgres nullable {a:?}, sqlite nullable {b:?}"));
                }
            }
        }
        differences.sort();
        differences.dedup();
        assert!(differences.is_empty(), "the migrations disagree (None: no such column):\n{}", differences.join("\n"));
    }

    /// The event log's horizon waits for transactions writing paygate's tables, named in
    /// `PAYGATE_TABLES`: a table the migrations add must be named there, or a transaction that
    /// writes it first and then an event could slip behind a reader's cursor.
    #[tokio::test]
    async fn every_table_the_migrations_create_holds_the_event_horizon() {
        let mut created: Vec<String> = postgres_schema().await.into_keys().collect();
        let mut named: Vec<String> = super::PAYGATE_TABLES.iter().map(|t| t.to_string()).collect();
        created.sort();
        named.sort();
        assert_eq!(created, named, "PAYGATE_TABLES (store::dialect) must name every table");
    }

    /// A rolling upgrade's old replicas, and a rollback, run `migrate` on a schema a newer release
    /// already migrated: a migration this build does not know is applied, and that must not stop it.
    #[tokio::test]
    async fn a_schema_a_newer_release_migrated_still_migrates() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = migrated(&format!("sqlite://{}?mode=rwc", dir.path().join("newer.db").display())).await;
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99999999, 'a newer release', TRUE, x'00', 1)",
        )
        .execute(db.pool())
        .await
        .expect("a newer release's migration");
        db.migrate().await.expect("this release migrates a schema a newer release moved on");
    }

    /// `paygate --version` and `paygate_build_info` name the schema a build needs: its newest
    /// migration, in both dialects.
    #[test]
    fn the_schema_version_is_the_newest_migration() {
        for backend in [Backend::Postgres, Backend::Sqlite] {
            let newest = backend.migrator().iter().map(|m| m.version).max().unwrap();
            assert_eq!(super::super::SCHEMA_VERSION, newest.to_string(), "{backend:?}");
        }
    }

    /// Migrations 0001-0007 shipped in release 0.2.0, before the rule was written down.
    const BEFORE_THE_RULE: i64 = 7;

    /// What in a PostgreSQL migration breaks the release before it, or stops its writes: the rule
    /// in docs/upgrades.md. A contract step says why it is safe on a `-- contract:` line.
    fn breaks_the_release_before(sql: &str) -> Vec<&'static str> {
        let sql = sql.to_uppercase();
        let code: String = sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join(" ");
        let code = code.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut problems = Vec::new();
        let contract = sql.lines().any(|l| l.trim_start().starts_with("-- CONTRACT:"));
        for (pattern, problem) in [
            ("DROP TABLE", "drops a table"),
            ("DROP COLUMN", "drops a column"),
            ("RENAME", "renames"),
            ("SET NOT NULL", "makes a column required"),
            (" TYPE ", "changes a column's type"),
        ] {
            if code.contains(pattern) && !contract {
                problems.push(problem);
            }
        }
        for statement in code.split(';') {
            let statement = statement.trim();
            if statement.starts_with("CREATE INDEX") || statement.starts_with("CREATE UNIQUE INDEX") {
                if !statement.contains("CONCURRENTLY") {
                    problems.push("builds an index without CONCURRENTLY (writes wait for it)");
                } else if !sql.trim_start().starts_with("-- NO-TRANSACTION") {
                    problems.push("CONCURRENTLY needs `-- no-transaction` as the first line");
                }
            }
            if statement.starts_with("ALTER TABLE")
                && statement.contains("ADD COLUMN")
                && statement.contains("NOT NULL")
                && !statement.contains("DEFAULT")
            {
                problems.push("adds a required column without a default (the release before inserts without it)");
            }
        }
        problems
    }

    /// Every migration after the rule only adds (expand), or says on a `-- contract:` line which
    /// release stopped using what it removes; indexes are built CONCURRENTLY.
    #[test]
    fn migrations_leave_the_release_before_working() {
        let mut problems = Vec::new();
        for migration in Backend::Postgres.migrator().iter().filter(|m| m.version > BEFORE_THE_RULE) {
            for problem in breaks_the_release_before(&migration.sql) {
                problems.push(format!("{} {}: {problem}", migration.version, migration.description));
            }
        }
        assert!(
            problems.is_empty(),
            "migrations that break the release before (docs/upgrades.md):\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn the_migration_rule_tells_expand_from_contract() {
        assert!(breaks_the_release_before("ALTER TABLE payments ADD COLUMN region TEXT;").is_empty());
        assert!(breaks_the_release_before("ALTER TABLE payments ADD COLUMN n BIGINT NOT NULL DEFAULT 0;").is_empty());
        assert!(
            breaks_the_release_before("-- no-transaction\nCREATE INDEX CONCURRENTLY x ON payments (a);").is_empty()
        );
        assert_eq!(breaks_the_release_before("ALTER TABLE payments DROP COLUMN order_name;"), ["drops a column"]);
        assert_eq!(
            breaks_the_release_before("ALTER TABLE payments ADD COLUMN region TEXT NOT NULL;"),
            ["adds a required column without a default (the release before inserts without it)"]
        );
        assert_eq!(
            breaks_the_release_before("CREATE INDEX x ON payments (a);"),
            ["builds an index without CONCURRENTLY (writes wait for it)"]
        );
        let contract = "-- contract: 0.3.0 stopped reading order_name\nALTER TABLE payments DROP COLUMN order_name;";
        assert!(breaks_the_release_before(contract).is_empty());
        // Migration 0004 did what the upgrade test now catches.
        let m4 = Backend::Postgres.migrator().iter().find(|m| m.version == 4).unwrap();
        assert!(breaks_the_release_before(&m4.sql).contains(&"drops a column"));
    }
}
