//! Redis, shared by the channel cache (and later the event fan-out). Redis is an accelerator, never
//! the source of truth: every call has a short timeout, and after a failure Redis is skipped for a
//! moment so a Redis outage costs requests nothing but the cache.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use redis::{
    AsyncCommands, Client, Script,
    aio::{ConnectionManager, ConnectionManagerConfig, PubSub},
};

use super::now_ms;

/// What `RedisHandle::follow` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    Subscribed,
    Message(String),
    Lost,
}

/// How long Redis is skipped after a failed call.
const BACKOFF_MS: i64 = 1_000;

#[derive(Clone)]
pub struct RedisHandle {
    client: Client,
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
    skip_until_ms: Arc<AtomicI64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis recently failed; skipped")]
    Skipped,
    #[error("redis timed out")]
    Timeout,
}

impl RedisHandle {
    /// Does not connect: the first call does, so paygate starts (and serves) with Redis down.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, RedisError> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self { client, conn, prefix: prefix.into(), timeout, skip_until_ms: Arc::new(AtomicI64::new(0)) })
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs one command unless Redis failed within the last second; a failure starts that pause.
    async fn call<T, F>(&self, op: &'static str, f: impl FnOnce(ConnectionManager) -> F) -> Result<T, RedisError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        if now_ms() < self.skip_until_ms.load(Ordering::Relaxed) {
            return Err(RedisError::Skipped);
        }
        let result = match tokio::time::timeout(self.timeout * 2, f(self.conn.clone())).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => RedisError::Redis(e),
            Err(_) => RedisError::Timeout,
        };
        self.skip_until_ms.store(now_ms() + BACKOFF_MS, Ordering::Relaxed);
        metrics::counter!("paygate_redis_errors_total", "op" => op).increment(1);
        tracing::warn!(op, error = %result, "redis call failed; using the database");
        Err(result)
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, RedisError> {
        let key = key.to_owned();
        self.call("get", |mut c| async move { c.get(key).await }).await
    }

    /// Stores `value` unless Redis already holds a value with a version at least as new.
    pub async fn set_if_newer(&self, key: &str, value: &str, version: i64, ttl: Duration) -> Result<(), RedisError> {
        static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
            Script::new(
                r"local cur = redis.call('GET', KEYS[1])
                  if cur then
                    local ok, obj = pcall(cjson.decode, cur)
                    if ok and type(obj) == 'table' and tonumber(obj['version']) and tonumber(obj['version']) >= tonumber(ARGV[2]) then
                      return 0
                    end
                  end
                  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
                  return 1",
            )
        });
        let (key, value, ttl_ms) = (key.to_owned(), value.to_owned(), ttl.as_millis() as u64);
        self.call("set", |mut c| async move {
            SCRIPT.key(key).arg(value).arg(version).arg(ttl_ms).invoke_async::<i64>(&mut c).await.map(|_| ())
        })
        .await
    }

    /// Takes one token from the bucket at `key` (refilled at `rate_per_sec` up to `burst`,
    /// timed by Redis's clock so replicas agree). Returns `None` when a token was taken, else how
    /// long until one will be there.
    pub async fn take_token(&self, key: &str, rate_per_sec: f64, burst: u32) -> Result<Option<Duration>, RedisError> {
        static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
            Script::new(
                r"local rate = tonumber(ARGV[1])
                  local burst = tonumber(ARGV[2])
                  local t = redis.call('TIME')
                  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
                  local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
                  local tokens = tonumber(state[1])
                  local at = tonumber(state[2])
                  if tokens == nil or at == nil then tokens = burst; at = now end
                  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
                  local wait = 0
                  if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
                  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
                  redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
                  return wait",
            )
        });
        let key = key.to_owned();
        let wait_ms = self
            .call("rate_limit", |mut c| async move {
                SCRIPT.key(key).arg(rate_per_sec).arg(burst).invoke_async::<i64>(&mut c).await
            })
            .await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms as u64)))
    }

    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), RedisError> {
        let (channel, message) = (channel.to_owned(), message.to_owned());
        self.call("publish", |mut c| async move { c.publish::<_, _, i64>(channel, message).await.map(|_| ()) }).await
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut c = self.conn.clone();
        match tokio::time::timeout(self.timeout * 4, redis::cmd("PING").query_async::<String>(&mut c)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(RedisError::Timeout),
        }
    }

    /// Follows `channel` (prefixed) for as long as the future runs, resubscribing with backoff
    /// after a lost connection. `on` hears of each (re)subscription (announcements may have been
    /// missed before it), each message, and each loss.
    pub async fn follow<F: Future<Output = ()>>(&self, channel: &str, mut on: impl FnMut(Followed) -> F) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.subscribe(channel).await {
                Ok(pubsub) => {
                    backoff = Duration::from_millis(100);
                    on(Followed::Subscribed).await;
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        on(Followed::Message(message.get_payload::<String>().unwrap_or_default())).await;
                    }
                    on(Followed::Lost).await;
                }
                Err(e) => tracing::debug!(channel, error = %e, "redis: cannot subscribe yet"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// A dedicated pub/sub connection subscribed to `channel` (prefixed).
    pub async fn subscribe(&self, channel: &str) -> Result<PubSub, RedisError> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(self.key(channel)).await?;
            Ok::<_, RedisError>(pubsub)
        };
        tokio::time::timeout(self.timeout * 4, connect).await.map_err(|_| RedisError::Timeout)?
    }
}
