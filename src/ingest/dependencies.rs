//! The database's and Redis's state as last checked: what every readiness surface reads.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use crate::store::{Db, redis::RedisHandle};

/// How long a dependency may take to answer a readiness check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The dependencies' state as last checked.
#[derive(Debug)]
pub struct Dependencies {
    database: AtomicBool,
    redis: AtomicBool,
}

impl Default for Dependencies {
    fn default() -> Self {
        Self { database: AtomicBool::new(true), redis: AtomicBool::new(true) }
    }
}

impl Dependencies {
    pub fn database_up(&self) -> bool {
        self.database.load(Ordering::Relaxed)
    }

    pub fn redis_up(&self) -> bool {
        self.redis.load(Ordering::Relaxed)
    }

    /// Asks both (Redis only when configured), records the answers and their gauges; returns
    /// whether the database answered.
    pub async fn check(&self, db: &Db, redis: Option<&RedisHandle>) -> bool {
        let database = matches!(tokio::time::timeout(CHECK_TIMEOUT, db.ping()).await, Ok(Ok(())));
        let redis_up = match redis {
            None => true,
            Some(redis) => matches!(tokio::time::timeout(CHECK_TIMEOUT, redis.ping()).await, Ok(Ok(()))),
        };
        let was = (self.database.swap(database, Ordering::Relaxed), self.redis.swap(redis_up, Ordering::Relaxed));
        if was.0 != database {
            tracing::warn!(
                up = database,
                "readiness: database {}",
                if database { "answers again" } else { "unreachable" }
            );
        }
        if was.1 != redis_up {
            tracing::warn!(
                up = redis_up,
                "readiness: redis {}",
                if redis_up { "answers again" } else { "unreachable (degraded)" }
            );
        }
        metrics::gauge!("paygate_dependency_up", "dependency" => "database").set(f64::from(u8::from(database)));
        if redis.is_some() {
            metrics::gauge!("paygate_dependency_up", "dependency" => "redis").set(f64::from(u8::from(redis_up)));
        }
        database
    }
}
