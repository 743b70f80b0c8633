//! Verified API keys, cached so that authentication costs no database query per RPC. Revocation
//! beats the cache: every change that can refuse a key (revoke, allowlist, sub-merchants) drops
//! the whole in-process cache here and, through Redis pub/sub, on every replica.
//!
//! Staleness bounds, for a replica other than the writer: with Redis up, the pub/sub delivery time
//! (milliseconds); with Redis down or the announcement lost, the cache TTL (`auth_cache_ttl_ms`).
//! A replica that (re)subscribes drops its cache, since it may have missed announcements.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use ipnet::IpNet;
use moka::future::Cache;

use super::{
    AuthError, Caller, allowlist,
    keys::{self, KEY_PREFIX},
};
use crate::store::{
    Db, StoreError, UnixMs, now_ms,
    redis::{Followed, RedisHandle},
};

const INVALIDATION_CHANNEL: &str = "api_keys:invalidate";
/// `last_used_at` is written at most this often per key and replica.
const TOUCH_EVERY_MS: i64 = 60_000;
/// Longer than any key this server issues: refused before hashing or lookup.
const MAX_KEY_LEN: usize = 64;

/// What a long-lived session re-checks about the key it was opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyState {
    revoked: bool,
    expires_at: Option<i64>,
    /// The cache generation when it was read from the database, and when (Unix ms): it is good
    /// while no invalidation came since and for at most the TTL, in the cache or out of it.
    generation: u64,
    read_at: i64,
}

impl KeyState {
    fn current(&self, generation: u64, ttl: Duration, now: i64) -> bool {
        self.generation == generation && now - self.read_at < ttl.as_millis() as i64
    }
}

/// A key as verified against the database: enough to decide every later call without it.
struct VerifiedKey {
    key_id: String,
    merchant_id: String,
    scope: Vec<String>,
    expires_at: Option<i64>,
    revoked: bool,
    /// The merchant's own blocks and its parent's: a call must pass both.
    allowlist: Vec<IpNet>,
    parent_allowlist: Vec<IpNet>,
    /// The cache generation (count of invalidations) when it was read from the database, and when.
    generation: u64,
    read_at: i64,
    last_touched: AtomicI64,
}

#[derive(Clone)]
pub struct KeyCache {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    redis: Option<RedisHandle>,
    /// Keyed by the key's digest; `None` remembers a digest that matches no key (keys are made
    /// server-side at random, so a digest unknown now can never become a key later).
    local: Cache<String, Option<Arc<VerifiedKey>>>,
    /// Revocation and expiry by key id, for sessions that outlive one call (open streams).
    by_id: Cache<String, KeyState>,
    ttl: Duration,
    /// Counts invalidations: a load that saw one happen meanwhile does not keep its result.
    invalidations: AtomicU64,
}

impl KeyCache {
    pub fn new(db: Db, redis: Option<RedisHandle>, ttl: Duration) -> Self {
        let local = Cache::builder().max_capacity(100_000).time_to_live(ttl).build();
        let by_id = Cache::builder().max_capacity(100_000).time_to_live(ttl).build();
        Self { inner: Arc::new(Inner { db, redis, local, by_id, ttl, invalidations: AtomicU64::new(0) }) }
    }

    pub async fn authenticate(&self, api_key: &str, address: IpAddr) -> Result<Caller, AuthError> {
        if !api_key.starts_with(KEY_PREFIX) || api_key.len() > MAX_KEY_LEN {
            return Err(AuthError::UnknownKey);
        }
        let key = self.verified(&keys::digest(api_key)).await?.ok_or(AuthError::UnknownKey)?;
        let now = now_ms();
        decide(&key, address, now)?;
        self.touch(&key, now);
        Ok(Caller {
            merchant_id: key.merchant_id.clone(),
            scope: key.scope.clone(),
            key_id: key.key_id.clone(),
            address,
            key_state: Some(KeyState {
                revoked: false,
                expires_at: key.expires_at,
                generation: key.generation,
                read_at: key.read_at,
            }),
        })
    }

    async fn verified(&self, digest: &str) -> Result<Option<Arc<VerifiedKey>>, AuthError> {
        // An entry read before the latest invalidation is never used, however it got into the
        // cache (a load that began before the change, and that this call joined, included).
        let current = |key: &Option<Arc<VerifiedKey>>| {
            key.as_ref().is_none_or(|k| k.generation == self.inner.invalidations.load(Ordering::SeqCst))
        };
        if let Some(found) = self.inner.local.get(digest).await
            && current(&found)
        {
            metrics::counter!("paygate_auth_cache_requests_total", "result" => "hit").increment(1);
            return Ok(found);
        }
        metrics::counter!("paygate_auth_cache_requests_total", "result" => "miss").increment(1);
        let read = || {
            let (inner, digest) = (self.inner.clone(), digest.to_owned());
            async move { load(&inner.db, &digest, inner.invalidations.load(Ordering::SeqCst)).await }
        };
        Ok(current_entry(&self.inner.local, digest, read, current).await?)
    }

    /// Like `KeyWatch::refusal`, for admitting a new call on a key's behalf (a payment client token): a
    /// database that cannot answer refuses, as it would for the key itself.
    pub async fn check_live(&self, key_id: &str) -> Result<(), AuthError> {
        match Self::refused(key_id, self.state(key_id).await?) {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }

    /// A watch over `key_id` for a session opened with it (`seen`: its state when the session was
    /// admitted, if known): `KeyWatch::refusal` before each step.
    pub fn watch(&self, key_id: String, seen: Option<KeyState>) -> KeyWatch {
        KeyWatch { cache: self.clone(), key_id, seen }
    }

    fn generation(&self) -> u64 {
        self.inner.invalidations.load(Ordering::SeqCst)
    }

    /// The key's state as of at most the TTL ago and after the latest invalidation. Concurrent
    /// misses share one read: the first event after 10,000 streams opened asks the database once.
    async fn state(&self, key_id: &str) -> Result<KeyState, StoreError> {
        let read = || {
            let (inner, key_id) = (self.inner.clone(), key_id.to_owned());
            async move {
                let (generation, read_at) = (inner.invalidations.load(Ordering::SeqCst), now_ms());
                let (revoked, expires_at) = keys::state(&inner.db, &key_id).await?;
                Ok(KeyState { revoked, expires_at, generation, read_at })
            }
        };
        let (ttl, now) = (self.inner.ttl, now_ms());
        current_entry(&self.inner.by_id, key_id, read, |state| state.current(self.generation(), ttl, now)).await
    }

    fn refused(key_id: &str, state: KeyState) -> Option<AuthError> {
        if state.revoked {
            Some(AuthError::Revoked(key_id.to_owned()))
        } else if state.expires_at.is_some_and(|at| at <= now_ms()) {
            Some(AuthError::Expired(key_id.to_owned()))
        } else {
            None
        }
    }

    fn touch(&self, key: &Arc<VerifiedKey>, now: i64) {
        let last = key.last_touched.load(Ordering::Relaxed);
        if now - last < TOUCH_EVERY_MS
            || key.last_touched.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let (db, key_id) = (self.inner.db.clone(), key.key_id.clone());
        tokio::spawn(async move {
            if let Err(e) = keys::touch(&db, &key_id, now).await {
                tracing::debug!(%key_id, error = %e, "could not record the key's last use");
            }
        });
    }

    fn drop_local(&self) {
        self.inner.invalidations.fetch_add(1, Ordering::SeqCst);
        self.inner.local.invalidate_all();
        self.inner.by_id.invalidate_all();
    }

    /// After a committed change that may refuse a key: drop every cached key here and tell every
    /// replica. The announcement runs on its own task, so a caller that hangs up right after the
    /// commit cannot cancel it, and is retried for as long as it could still matter (the TTL).
    pub async fn invalidate(&self) {
        self.drop_local();
        metrics::counter!("paygate_auth_cache_invalidations_total", "source" => "write").increment(1);
        let Some(redis) = self.inner.redis.clone() else { return };
        tokio::spawn(announce(redis, self.inner.ttl));
    }

    /// `invalidate`, waiting until the announcement went out (or gave up): for the CLI, whose
    /// process ends right after.
    pub async fn invalidate_and_wait(&self) {
        self.drop_local();
        if let Some(redis) = self.inner.redis.clone() {
            announce(redis, self.inner.ttl).await;
        }
    }

    /// Follows other replicas' invalidations until `shutdown`. Without Redis there is nothing to follow.
    pub fn spawn_background(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let Some(redis) = self.inner.redis.clone() else { return };
        let cache = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cache.follow_invalidations(redis) => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
        });
    }

    async fn follow_invalidations(&self, redis: RedisHandle) {
        redis
            .follow(INVALIDATION_CHANNEL, |followed| {
                // Resubscribed: announcements may have been missed meanwhile, so everything goes.
                self.drop_local();
                match followed {
                    Followed::Message(_) => {
                        metrics::counter!("paygate_auth_cache_invalidations_total", "source" => "remote").increment(1)
                    }
                    Followed::Lost => tracing::warn!(
                        "api key cache: invalidation subscription lost; entries now live at most their TTL"
                    ),
                    Followed::Subscribed => {}
                }
                std::future::ready(())
            })
            .await
    }
}

/// The key an open session (a stream) was opened with, re-checked before each of its events. It
/// keeps the state it last read and asks the cache again only once that is no longer current (an
/// invalidation came, or the TTL passed): the same bounds as `KeyCache::authenticate`, and one atomic
/// read per event instead of a cache lookup among 10,000 streams.
pub struct KeyWatch {
    cache: KeyCache,
    key_id: String,
    seen: Option<KeyState>,
}

impl KeyWatch {
    /// Why the session must not go on (its key was revoked or expired since it opened), within the
    /// same bounds as `authenticate`. A database that cannot answer does not end a session it
    /// already admitted.
    pub async fn refusal(&mut self) -> Option<AuthError> {
        let state = match self.seen {
            Some(state) if state.current(self.cache.generation(), self.cache.inner.ttl, now_ms()) => state,
            _ => {
                let state = self.cache.state(&self.key_id).await.ok()?;
                self.seen = Some(state);
                state
            }
        };
        KeyCache::refused(&self.key_id, state)
    }
}

/// Publishes the invalidation, retrying until Redis takes it or `ttl` has passed (by then every
/// cached entry has expired anyway).
async fn announce(redis: RedisHandle, ttl: Duration) {
    let deadline = tokio::time::Instant::now() + ttl;
    while redis.publish(&redis.key(INVALIDATION_CHANNEL), "*").await.is_err() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("api key invalidation not announced; other replicas drop their copies within the TTL");
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `cache`'s entry for `key`, from `load` on a miss (concurrent misses share one load). An entry that
/// is not `current` (an invalidation raced its load, however it got in) is loaded again; when
/// invalidations keep coming, the database is asked without the cache.
async fn current_entry<V, Load, Loading>(
    cache: &Cache<String, V>,
    key: &str,
    load: Load,
    current: impl Fn(&V) -> bool,
) -> Result<V, StoreError>
where
    V: Clone + Send + Sync + 'static,
    Load: Fn() -> Loading,
    Loading: Future<Output = Result<V, StoreError>> + Send + 'static,
{
    for _ in 0..3 {
        let entry = cache.try_get_with(key.to_owned(), load()).await.map_err(unshared)?;
        if current(&entry) {
            return Ok(entry);
        }
        cache.invalidate(key).await;
    }
    load().await
}

/// A load's error as the cache shares it among the calls that waited for it, as one caller's own.
fn unshared(error: Arc<StoreError>) -> StoreError {
    match &*error {
        StoreError::Unavailable(inner) => StoreError::Unavailable(sqlx::Error::Protocol(inner.to_string())),
        other => StoreError::Query(sqlx::Error::Protocol(other.to_string())),
    }
}

/// Whether a verified key may make this call now.
fn decide(key: &VerifiedKey, address: IpAddr, now: i64) -> Result<(), AuthError> {
    if key.revoked {
        return Err(AuthError::Revoked(key.key_id.clone()));
    }
    if key.expires_at.is_some_and(|at| at <= now) {
        return Err(AuthError::Expired(key.key_id.clone()));
    }
    if !allowlist::admits(&key.allowlist, &key.parent_allowlist, address) {
        return Err(AuthError::AddressNotAllowed(address.to_canonical()));
    }
    Ok(())
}

/// The key with this digest, its merchant's scope and the allowlists that apply to it, as of
/// cache `generation`.
async fn load(db: &Db, digest: &str, generation: u64) -> Result<Option<Arc<VerifiedKey>>, StoreError> {
    let read_at = now_ms();
    let Some(row) = sqlx::query_as::<_, KeyRow>(
        "SELECT k.key_id AS key_id, k.merchant_id AS merchant_id, k.expires_at AS expires_at, \
         k.revoked_at AS revoked_at, k.last_used_at AS last_used_at, m.api_allowlist AS own, \
         p.api_allowlist AS parent_list FROM api_keys k JOIN merchants m ON m.merchant_id = k.merchant_id \
         LEFT JOIN merchants p ON p.merchant_id = m.parent_id WHERE k.key_hash = $1",
    )
    .bind(digest)
    .fetch_optional(db.pool())
    .await?
    else {
        return Ok(None);
    };
    let scope =
        sqlx::query_scalar::<_, String>("SELECT merchant_id FROM merchants WHERE merchant_id = $1 OR parent_id = $1")
            .bind(&row.merchant_id)
            .fetch_all(db.pool())
            .await?;
    Ok(Some(Arc::new(VerifiedKey {
        key_id: row.key_id,
        merchant_id: row.merchant_id,
        scope,
        expires_at: row.expires_at.map(i64::from),
        revoked: row.revoked_at.is_some(),
        allowlist: allowlist::decode(row.own.as_deref()),
        parent_allowlist: allowlist::decode(row.parent_list.as_deref()),
        generation,
        read_at,
        last_touched: AtomicI64::new(row.last_used_at.unwrap_or_default().into()),
    })))
}

/// A key as authentication reads it, with its merchant's and parent's allowlists (JSON).
#[derive(sqlx::FromRow)]
struct KeyRow {
    key_id: String,
    merchant_id: String,
    expires_at: Option<UnixMs>,
    revoked_at: Option<UnixMs>,
    last_used_at: Option<UnixMs>,
    own: Option<String>,
    parent_list: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(revoked: bool, expires_at: Option<i64>, allowlist: &[&str]) -> VerifiedKey {
        VerifiedKey {
            key_id: "key_1".into(),
            merchant_id: "mer_1".into(),
            scope: vec!["mer_1".into()],
            expires_at,
            revoked,
            allowlist: allowlist.iter().map(|n| n.parse().unwrap()).collect(),
            parent_allowlist: Vec::new(),
            generation: 0,
            read_at: 0,
            last_touched: AtomicI64::new(0),
        }
    }

    #[test]
    fn a_key_state_is_current_until_an_invalidation_or_its_ttl() {
        let state = KeyState { revoked: false, expires_at: None, generation: 3, read_at: 1_000 };
        let ttl = Duration::from_millis(500);
        assert!(state.current(3, ttl, 1_000));
        assert!(state.current(3, ttl, 1_499));
        assert!(!state.current(3, ttl, 1_500), "read a TTL ago");
        assert!(!state.current(4, ttl, 1_001), "an invalidation came since");
    }

    #[test]
    fn revoked_expired_and_outside_keys_are_refused_in_that_order() {
        let here: IpAddr = "127.0.0.2".parse().unwrap();
        let elsewhere: IpAddr = "127.0.0.3".parse().unwrap();
        assert!(decide(&key(false, None, &[]), elsewhere, 10).is_ok());
        assert!(decide(&key(false, Some(11), &["127.0.0.2/32"]), here, 10).is_ok());
        assert!(matches!(decide(&key(true, Some(5), &[]), here, 10), Err(AuthError::Revoked(_))));
        assert!(matches!(decide(&key(false, Some(10), &[]), here, 10), Err(AuthError::Expired(_))));
        let refused = decide(&key(false, None, &["127.0.0.2/32"]), elsewhere, 10).unwrap_err();
        assert_eq!(refused.to_string(), "caller address 127.0.0.3 is not allowed to use this merchant's API keys");
    }
}
