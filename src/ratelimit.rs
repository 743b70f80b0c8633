//! Token-bucket rate limits, shared by every replica through Redis, and per process when Redis is
//! down or not configured (then each replica allows the full rate on its own).

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use crate::store::redis::RedisHandle;

/// A limit's settings: tokens per second and bucket size. A rate of 0 switches the limit off.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    /// Names the limit in Redis keys and metrics.
    scope: &'static str,
    per_second: u32,
    burst: u32,
    redis: Option<RedisHandle>,
    local: DefaultKeyedRateLimiter<String>,
}

impl Limiter {
    /// `None` when the limit is off.
    pub fn new(scope: &'static str, rate: Rate, redis: Option<RedisHandle>) -> Option<Self> {
        let per_second = NonZeroU32::new(rate.per_second)?;
        let burst = NonZeroU32::new(rate.burst).unwrap_or(per_second);
        let local = RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst));
        Some(Self { inner: Arc::new(Inner { scope, per_second: per_second.get(), burst: burst.get(), redis, local }) })
    }

    /// Takes a token for `key`; `Err(wait)` when the bucket is empty.
    pub async fn check(&self, key: &str) -> Result<(), Duration> {
        let inner = &self.inner;
        let shared = match &inner.redis {
            Some(redis) => {
                let bucket = redis.key(&format!("ratelimit:{}:{key}", inner.scope));
                redis.take_token(&bucket, inner.per_second, inner.burst).await.ok()
            }
            None => None,
        };
        let verdict = match shared {
            Some(None) => Ok(()),
            Some(Some(wait)) => Err(wait),
            // No Redis, or it failed: this process alone decides.
            None => inner.local.check_key(&key.to_owned()).map_err(|not_until| {
                not_until.wait_time_from(DefaultClock::default().now()).max(Duration::from_millis(1))
            }),
        };
        if verdict.is_err() {
            metrics::counter!("paygate_rate_limited_total", "scope" => inner.scope).increment(1);
        }
        verdict
    }

    /// Forgets idle local buckets (call now and then, so memory follows the active keys).
    pub fn shrink(&self) {
        self.inner.local.retain_recent();
        self.inner.local.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_bucket_allows_the_burst_then_says_how_long_to_wait() {
        let limiter = Limiter::new("test", Rate { per_second: 2, burst: 3 }, None).unwrap();
        for _ in 0..3 {
            assert!(limiter.check("k").await.is_ok());
        }
        let wait = limiter.check("k").await.unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500), "{wait:?}");
        // Buckets are per key.
        assert!(limiter.check("other").await.is_ok());
        assert!(Limiter::new("off", Rate { per_second: 0, burst: 10 }, None).is_none());
    }
}
