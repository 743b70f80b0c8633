//! Token-bucket rate limits, shared by every replica through Redis, and per process when Redis is
//! down or not configured (then each replica allows the full rate on its own).

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use moka::future::Cache;
use tokio::time::Instant;

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
    per_second: f64,
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
        Some(Self::with(scope, f64::from(per_second.get()), burst.get(), redis, local))
    }

    /// One token per `period` for each key (e.g. one check per payment every 5 s); `None` when
    /// `period` is zero (off).
    pub fn one_per(scope: &'static str, period: Duration, redis: Option<RedisHandle>) -> Option<Self> {
        let local = RateLimiter::keyed(Quota::with_period(period)?.allow_burst(NonZeroU32::MIN));
        Some(Self::with(scope, 1.0 / period.as_secs_f64(), 1, redis, local))
    }

    fn with(
        scope: &'static str,
        per_second: f64,
        burst: u32,
        redis: Option<RedisHandle>,
        local: DefaultKeyedRateLimiter<String>,
    ) -> Self {
        Self { inner: Arc::new(Inner { scope, per_second, burst, redis, local }) }
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

/// Failures counted per key (a source address) in a `Limiter`'s buckets. Once a key's bucket is
/// empty the key is blocked until the bucket has a token again, and a blocked key is refused from
/// memory, before any work or any Redis call.
#[derive(Clone)]
pub struct FailureLimit {
    limiter: Limiter,
    /// Key -> blocked until. Bounded: an attacker with more addresses than this only gets the
    /// shared buckets' answer for the ones evicted.
    blocked: Cache<String, Instant>,
}

/// Blocked keys remembered at once.
const BLOCKED_KEYS: u64 = 10_000;

impl FailureLimit {
    /// `None` when the limit is off.
    pub fn new(scope: &'static str, rate: Rate, redis: Option<RedisHandle>) -> Option<Self> {
        let limiter = Limiter::new(scope, rate, redis)?;
        // A block lasts until the bucket's next token: at most one refill interval of a burst.
        let longest = Duration::from_secs(u64::from(rate.burst.max(1)).div_ceil(u64::from(rate.per_second)).max(1));
        let blocked = Cache::builder().max_capacity(BLOCKED_KEYS).time_to_live(longest).build();
        Some(Self { limiter, blocked })
    }

    /// How much longer `key` is blocked, if it is.
    pub async fn blocked(&self, key: &str) -> Option<Duration> {
        let left = self.blocked.get(key).await?.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        metrics::counter!("paygate_rate_limited_total", "scope" => self.limiter.inner.scope).increment(1);
        Some(left)
    }

    /// Counts a failure of `key`; `Err(wait)` when its bucket was empty: the key is blocked for `wait`.
    pub async fn record(&self, key: &str) -> Result<(), Duration> {
        let verdict = self.limiter.check(key).await;
        if let Err(wait) = verdict {
            self.blocked.insert(key.to_owned(), Instant::now() + wait).await;
        }
        verdict
    }

    pub fn limiter(&self) -> &Limiter {
        &self.limiter
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

    #[tokio::test]
    async fn one_per_period_allows_one_then_waits_out_the_period() {
        let limiter = Limiter::one_per("test", Duration::from_secs(5), None).unwrap();
        assert!(limiter.check("pay_1").await.is_ok());
        let wait = limiter.check("pay_1").await.unwrap_err();
        assert!(wait > Duration::from_secs(4) && wait <= Duration::from_secs(5), "{wait:?}");
        assert!(limiter.check("pay_2").await.is_ok());
        assert!(Limiter::one_per("off", Duration::ZERO, None).is_none());
    }

    #[tokio::test]
    async fn a_key_out_of_failures_is_blocked_until_its_next_token() {
        let failures = FailureLimit::new("test", Rate { per_second: 10, burst: 2 }, None).unwrap();
        assert_eq!(failures.blocked("a").await, None);
        assert!(failures.record("a").await.is_ok());
        assert!(failures.record("a").await.is_ok());
        assert_eq!(failures.blocked("a").await, None, "the burst is allowed");
        let wait = failures.record("a").await.unwrap_err();
        let left = failures.blocked("a").await.expect("blocked once the bucket is empty");
        assert!(left <= wait && wait <= Duration::from_millis(100), "{left:?} of {wait:?}");
        assert_eq!(failures.blocked("b").await, None, "per key");
        tokio::time::sleep(wait).await;
        assert_eq!(failures.blocked("a").await, None, "a token came back");
    }
}
