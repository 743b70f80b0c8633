//! Channel configs are read on every checkout and pingback, so they are cached: in-process (bounded,
//! TTL, one load per key however many requests miss together) in front of Redis in front of the
//! database. Every write goes through to Redis (newest version wins) and is announced on Redis
//! pub/sub so every replica drops its copy.
//!
//! Staleness bounds, for a replica other than the writer: with Redis up, the pub/sub delivery time
//! (milliseconds); with Redis down, the in-process TTL (`channel_cache_ttl_ms`). A replica that
//! (re)subscribes drops its whole in-process cache, since it may have missed announcements; a
//! writer that could not reach Redis replays its writes when Redis answers again.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use moka::future::Cache;

use super::{
    Channel, ChannelError,
    repo::{self, StoredChannel},
};
use crate::secrets::MasterKeys;
use crate::shutdown::Shutdown;
use crate::store::{
    Db,
    redis::{Followed, RedisError, RedisHandle},
};

const INVALIDATION_CHANNEL: &str = "channels:invalidate";
const UNKNOWN_TTL: Duration = Duration::from_secs(2);
/// Redis copies expire on their own too, bounding anything a lost write-through leaves behind.
const REDIS_TTL: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct ChannelCache {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    keys: Arc<MasterKeys>,
    local: Cache<String, Arc<Channel>>,
    /// Channel keys recently found in no layer, so a flood of pingbacks for made-up channels costs
    /// no database read each. Creating the channel drops the entry, here and (through Redis) on
    /// every replica; without Redis another replica sees a new channel within `UNKNOWN_TTL`.
    unknown: Cache<String, ()>,
    redis: Option<RedisHandle>,
    /// Channel keys whose write-through or announcement failed; replayed when Redis answers.
    pending: Mutex<HashSet<String>>,
    /// Counts invalidations: a load that saw one happen meanwhile does not keep its result.
    invalidations: std::sync::atomic::AtomicU64,
}

/// A channel as Redis holds it: the stored form (secret encrypted), when it was written, and a tag
/// under the master key over both and the key it is filed under. A copy altered, filed under
/// another channel's key, or older than `REDIS_TTL` (a replay of a copy from before a rotation)
/// is not believed.
#[derive(serde::Serialize, serde::Deserialize)]
struct Cached {
    #[serde(flatten)]
    channel: StoredChannel,
    written_at: i64,
    tag: String,
}

const TAG_PURPOSE: &str = "channel cache v3";

impl Cached {
    fn tagged_bytes(channel_key: &str, written_at: i64, channel: &StoredChannel) -> Option<Vec<u8>> {
        let mut bytes = format!("{channel_key}\n{written_at}\n").into_bytes();
        bytes.extend(serde_json::to_vec(channel).ok()?);
        Some(bytes)
    }

    fn seal(channel: &StoredChannel, keys: &MasterKeys) -> Option<String> {
        let written_at = crate::store::now_ms();
        let body = Self::tagged_bytes(&channel.channel_key, written_at, channel)?;
        let tag = keys.tag(TAG_PURPOSE, &body);
        serde_json::to_string(&Cached { channel: channel.clone(), written_at, tag }).ok()
    }

    /// The channel filed under `channel_key`, when the copy is genuine, its own and fresh.
    fn open(json: &str, channel_key: &str, keys: &MasterKeys) -> Option<StoredChannel> {
        let cached: Cached = serde_json::from_str(json).ok()?;
        let body = Self::tagged_bytes(channel_key, cached.written_at, &cached.channel)?;
        let age = crate::store::now_ms() - cached.written_at;
        let fresh = (-5_000..=REDIS_TTL.as_millis() as i64).contains(&age);
        if keys.verify_tag(TAG_PURPOSE, &body, &cached.tag) && cached.channel.channel_key == channel_key && fresh {
            Some(cached.channel)
        } else {
            metrics::counter!("paygate_channel_cache_rejected_total").increment(1);
            tracing::warn!(%channel_key, "a channel copy in redis failed its tag, key or age check; ignored");
            None
        }
    }
}

/// A tombstone in Redis for an erased channel, so a slow reader cannot put the old row back.
#[derive(serde::Serialize, serde::Deserialize)]
struct Tombstone {
    version: i64,
    erased: bool,
}

impl ChannelCache {
    pub fn new(db: Db, keys: Arc<MasterKeys>, redis: Option<RedisHandle>, ttl: Duration, capacity: u64) -> Self {
        let local = Cache::builder().max_capacity(capacity).time_to_live(ttl).build();
        Self {
            inner: Arc::new(Inner {
                db,
                keys,
                local,
                unknown: Cache::builder().max_capacity(capacity).time_to_live(UNKNOWN_TTL).build(),
                redis,
                pending: Mutex::new(HashSet::new()),
                invalidations: Default::default(),
            }),
        }
    }

    pub fn keys(&self) -> &MasterKeys {
        &self.inner.keys
    }

    pub fn keys_arc(&self) -> Arc<MasterKeys> {
        self.inner.keys.clone()
    }

    /// The channel, from the nearest layer that has it.
    pub async fn get(&self, channel_key: &str) -> Result<Arc<Channel>, ChannelError> {
        if let Some(channel) = self.inner.local.get(channel_key).await {
            metrics::counter!("paygate_channel_cache_requests_total", "result" => "hit").increment(1);
            return Ok(channel);
        }
        if self.inner.unknown.contains_key(channel_key) {
            metrics::counter!("paygate_channel_cache_requests_total", "result" => "unknown").increment(1);
            return Err(ChannelError::NotFound);
        }
        metrics::counter!("paygate_channel_cache_requests_total", "result" => "miss").increment(1);
        let inner = self.inner.clone();
        let key = channel_key.to_owned();
        let seen = self.inner.invalidations.load(std::sync::atomic::Ordering::SeqCst);
        // Concurrent misses for one key share this single load.
        let loaded = self
            .inner
            .local
            .try_get_with(channel_key.to_owned(), async move {
                let started = Instant::now();
                let result = inner.load(&key).await.map(Arc::new);
                metrics::histogram!("paygate_channel_cache_load_seconds").record(started.elapsed().as_secs_f64());
                result
            })
            .await
            .map_err(|e| ChannelError::clone_shared(&e));
        // An invalidation raced the load: the result may predate the write, so it is not kept.
        let raced = self.inner.invalidations.load(std::sync::atomic::Ordering::SeqCst) != seen;
        if raced {
            self.inner.local.invalidate(channel_key).await;
        } else if matches!(loaded, Err(ChannelError::NotFound)) {
            self.inner.unknown.insert(channel_key.to_owned(), ()).await;
        }
        loaded
    }

    async fn drop_local(&self, channel_key: Option<&str>) {
        self.inner.invalidations.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match channel_key {
            Some(key) => {
                self.inner.local.invalidate(key).await;
                self.inner.unknown.invalidate(key).await;
            }
            None => {
                self.inner.local.invalidate_all();
                self.inner.unknown.invalidate_all();
            }
        }
    }

    /// After a committed write: drop the local copy, write through to Redis, tell every replica.
    pub async fn written(&self, stored: Option<&StoredChannel>, channel_key: &str) {
        self.drop_local(Some(channel_key)).await;
        metrics::counter!("paygate_channel_cache_invalidations_total", "source" => "write").increment(1);
        if let Err(e) = self.inner.announce(channel_key, stored).await {
            tracing::warn!(%channel_key, error = %e, "channel change not shared through redis yet; will replay");
            self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(channel_key.to_owned());
        }
    }

    /// Background work: the invalidation subscriber and the replay of failed announcements.
    /// Returns at once without Redis (the in-process cache alone serves, invalidated on write).
    pub fn spawn_background(&self, shutdown: Shutdown) {
        let Some(redis) = self.inner.redis.clone() else { return };
        let subscriber = self.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = subscriber.follow_invalidations(redis) => {}
                _ = stop.signalled() => {}
            }
        });
        let replayer = self.clone();
        let mut stop = shutdown;
        tokio::spawn(async move {
            tokio::select! {
                _ = replayer.replay_pending() => {}
                _ = stop.signalled() => {}
            }
        });
    }

    async fn follow_invalidations(&self, redis: RedisHandle) {
        redis
            .follow(INVALIDATION_CHANNEL, |followed| async move {
                match followed {
                    Followed::Subscribed => {
                        // Announcements may have been missed while unsubscribed.
                        self.drop_local(None).await;
                        metrics::counter!("paygate_channel_cache_invalidations_total", "source" => "resync")
                            .increment(1);
                        metrics::gauge!("paygate_channel_cache_subscribed").set(1.0);
                        tracing::info!("channel cache: following invalidations");
                    }
                    Followed::Message(channel_key) => {
                        self.drop_local(Some(&channel_key)).await;
                        metrics::counter!("paygate_channel_cache_invalidations_total", "source" => "remote")
                            .increment(1);
                    }
                    Followed::Lost => {
                        metrics::gauge!("paygate_channel_cache_subscribed").set(0.0);
                        self.drop_local(None).await;
                        tracing::warn!("channel cache: invalidation subscription lost; serving from the database");
                    }
                }
            })
            .await
    }

    async fn replay_pending(&self) {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let keys: Vec<String> =
                self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
            for key in keys {
                let stored = match repo::get(&self.inner.db, &key).await {
                    Ok(stored) => stored,
                    Err(_) => continue,
                };
                if self.inner.announce(&key, stored.as_ref()).await.is_ok() {
                    self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                    tracing::info!(channel_key = %key, "replayed channel change to redis");
                }
            }
        }
    }
}

impl Inner {
    fn redis_key(redis: &RedisHandle, channel_key: &str) -> String {
        redis.key(&format!("channel:{channel_key}"))
    }

    async fn load(&self, channel_key: &str) -> Result<Channel, ChannelError> {
        if let Some(redis) = &self.redis
            && let Ok(Some(json)) = redis.get(&Self::redis_key(redis, channel_key)).await
        {
            // A tombstone, a copy whose tag fails, or one this replica cannot read (say, mid key
            // rotation): the database decides.
            if let Some(stored) = Cached::open(&json, channel_key, &self.keys)
                && let Ok(channel) = stored.open(&self.keys)
            {
                metrics::counter!("paygate_channel_cache_requests_total", "result" => "redis_hit").increment(1);
                return Ok(channel);
            }
        }
        let stored = repo::get(&self.db, channel_key).await?.ok_or(ChannelError::NotFound)?;
        if let Some(redis) = &self.redis
            && let Some(json) = Cached::seal(&stored, &self.keys)
        {
            // Best effort: a failure only means the next replica also reads the database.
            let _ = redis.set_if_newer(&Self::redis_key(redis, channel_key), &json, stored.version, REDIS_TTL).await;
        }
        stored.open(&self.keys)
    }

    async fn announce(&self, channel_key: &str, stored: Option<&StoredChannel>) -> Result<(), RedisError> {
        let Some(redis) = &self.redis else { return Ok(()) };
        let key = Self::redis_key(redis, channel_key);
        let (json, version) = match stored {
            Some(stored) => (Cached::seal(stored, &self.keys).unwrap_or_default(), stored.version),
            None => {
                let tombstone = Tombstone { version: i64::MAX, erased: true };
                (serde_json::to_string(&tombstone).unwrap_or_default(), i64::MAX)
            }
        };
        redis.set_if_newer(&key, &json, version, REDIS_TTL).await?;
        redis.publish(&redis.key(INVALIDATION_CHANNEL), channel_key).await
    }
}
