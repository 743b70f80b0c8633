//! Verified API keys, cached so that authentication costs no database query per RPC. Revocation
//! beats the cache: a change that can refuse a key (a revocation, an allowlist change, a new
//! sub-merchant) makes the cached keys of that merchant and its sub-merchants stale, here and,
//! through Redis pub/sub, on every replica. Other merchants' cached keys stay: no merchant can
//! empty the cache for everyone.
//!
//! Staleness bounds, for a replica other than the writer: with Redis up, the pub/sub delivery time
//! (milliseconds); with Redis down or the announcement lost, the cache TTL (`auth_cache_ttl_ms`).
//! A replica that (re)subscribes treats every entry as stale, since it may have missed announcements.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use moka::future::Cache;
use tokio::task::JoinSet;

use super::{
    AuthError, Caller, allowlist,
    keys::{self, KEY_PREFIX},
    verified::{KeyState, VerifiedKey, decide, refused},
};
use crate::shutdown::Shutdown;
use crate::store::{
    Db, StoreError, UnixMs, now_ms,
    redis::{Followed, RedisHandle},
};

const INVALIDATION_CHANNEL: &str = "api_keys:invalidate";
/// An announcement that concerns every merchant (what releases before per-merchant invalidation sent).
const EVERY_MERCHANT: &str = "*";
/// `last_used_at` is written at most this often per key and replica.
const TOUCH_EVERY_MS: i64 = 60_000;
/// Longer than any key this server issues: refused before hashing or lookup.
const MAX_KEY_LEN: usize = 64;
const KNOWN_KEYS: u64 = 100_000;
/// Digests that match no key have a small cache of their own, so made-up keys cannot evict real ones.
const UNKNOWN_DIGESTS: u64 = 10_000;
/// Merchants' invalidations remembered before the ones older than the TTL are forgotten.
const REMEMBERED_INVALIDATIONS: usize = 1_000;

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("no such key")]
    NoSuchKey,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for LoadError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// Counts invalidations and remembers each merchant's latest for a TTL: an entry read before its
/// merchant's (or parent's) latest invalidation, or before the latest of everything, is stale.
#[derive(Default)]
struct Invalidations {
    count: AtomicU64,
    /// The count after the latest invalidation of every entry.
    of_everything: AtomicU64,
    /// Merchant id -> the count after its latest invalidation, and when (Unix ms).
    of_merchant: RwLock<HashMap<String, (u64, i64)>>,
}

impl Invalidations {
    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    fn everything(&self) {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        self.of_everything.fetch_max(n, Ordering::SeqCst);
    }

    fn merchant(&self, merchant_id: &str, ttl: Duration) {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        let now = now_ms();
        let mut of_merchant = self.of_merchant.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        of_merchant.insert(merchant_id.to_owned(), (n, now));
        // An entry read before an invalidation older than the TTL is past its TTL anyway.
        if of_merchant.len() > REMEMBERED_INVALIDATIONS {
            of_merchant.retain(|_, (_, at)| now - *at < ttl.as_millis() as i64);
        }
    }

    /// Whether no invalidation that concerns `key` came after it was read.
    fn covers(&self, key: &VerifiedKey) -> bool {
        let read = key.generation;
        if self.count() == read {
            return true; // none at all: the per-event path of 10,000 streams stops here
        }
        if self.of_everything.load(Ordering::SeqCst) > read {
            return false;
        }
        let of_merchant = self.of_merchant.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        [Some(&key.merchant_id), key.parent_id.as_ref()]
            .into_iter()
            .flatten()
            .all(|merchant| of_merchant.get(merchant).is_none_or(|(n, _)| *n <= read))
    }
}

#[derive(Clone)]
pub struct KeyCache {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    redis: Option<RedisHandle>,
    /// Keys by their digest.
    known: Cache<String, Arc<VerifiedKey>>,
    /// Digests that match no key (keys are made server-side at random, so a digest unknown now can
    /// never become a key later).
    unknown: Cache<String, ()>,
    /// Keys by id, for sessions that outlive one call (open streams) and client tokens' issuers.
    by_id: Cache<String, Arc<VerifiedKey>>,
    ttl: Duration,
    invalidations: Invalidations,
    /// Announcements of invalidations still going out.
    announcing: Mutex<JoinSet<()>>,
}

impl KeyCache {
    pub fn new(db: Db, redis: Option<RedisHandle>, ttl: Duration) -> Self {
        let known = Cache::builder().max_capacity(KNOWN_KEYS).time_to_live(ttl).build();
        let unknown = Cache::builder().max_capacity(UNKNOWN_DIGESTS).time_to_live(ttl).build();
        let by_id = Cache::builder().max_capacity(KNOWN_KEYS).time_to_live(ttl).build();
        let invalidations = Invalidations::default();
        let announcing = Mutex::default();
        Self { inner: Arc::new(Inner { db, redis, known, unknown, by_id, ttl, invalidations, announcing }) }
    }

    pub async fn authenticate(&self, api_key: &str, address: IpAddr) -> Result<Caller, AuthError> {
        let key = match self.cached(api_key).await {
            Some(cached) => cached?,
            None => self.load_by_digest(&keys::digest(api_key)).await?,
        };
        let now = now_ms();
        decide(&key, address, now)?;
        self.touch(&key, now);
        Ok(caller(key, address))
    }

    /// `authenticate`, when the answer needs no database read (a key or an unknown digest in the
    /// cache, or a secret no key can be); `None` otherwise.
    pub async fn authenticate_cached(&self, api_key: &str, address: IpAddr) -> Option<Result<Caller, AuthError>> {
        let key = match self.cached(api_key).await? {
            Ok(key) => key,
            Err(refused) => return Some(Err(refused)),
        };
        Some(decide(&key, address, now_ms()).map(|()| caller(key, address)))
    }

    async fn cached(&self, api_key: &str) -> Option<Result<Arc<VerifiedKey>, AuthError>> {
        if !api_key.starts_with(KEY_PREFIX) || api_key.len() > MAX_KEY_LEN {
            return Some(Err(AuthError::UnknownKey));
        }
        let digest = keys::digest(api_key);
        if self.inner.unknown.contains_key(&digest) {
            metrics::counter!("paygate_auth_cache_requests_total", "result" => "unknown").increment(1);
            return Some(Err(AuthError::UnknownKey));
        }
        match self.inner.known.get(&digest).await {
            Some(key) if self.fresh(&key) => {
                metrics::counter!("paygate_auth_cache_requests_total", "result" => "hit").increment(1);
                Some(Ok(key))
            }
            _ => None,
        }
    }

    async fn load_by_digest(&self, digest: &str) -> Result<Arc<VerifiedKey>, AuthError> {
        metrics::counter!("paygate_auth_cache_requests_total", "result" => "miss").increment(1);
        let read = || {
            let (inner, digest) = (self.inner.clone(), digest.to_owned());
            async move { load(&inner.db, KeyColumn::Digest, &digest, inner.invalidations.count()).await }
        };
        match current_entry(&self.inner.known, digest, read, |key| self.fresh(key)).await {
            Ok(key) => Ok(key),
            Err(LoadError::NoSuchKey) => {
                self.inner.unknown.insert(digest.to_owned(), ()).await;
                Err(AuthError::UnknownKey)
            }
            Err(LoadError::Store(e)) => Err(e.into()),
        }
    }

    /// Whether an entry read from the database is still good: within the TTL and after every
    /// invalidation that concerns it.
    fn fresh(&self, key: &VerifiedKey) -> bool {
        now_ms() - key.read_at < self.inner.ttl.as_millis() as i64 && self.inner.invalidations.covers(key)
    }

    /// Like `KeyWatch::refusal`, for admitting a new call on a key's behalf (a payment client token): a
    /// database that cannot answer refuses, as it would for the key itself.
    pub async fn check_live(&self, key_id: &str) -> Result<(), AuthError> {
        match self.by_id(key_id).await {
            Ok(key) => refused(&key).map_or(Ok(()), Err),
            Err(LoadError::NoSuchKey) => Err(AuthError::Revoked(key_id.to_owned())),
            Err(LoadError::Store(e)) => Err(e.into()),
        }
    }

    /// A watch over `key_id` for a session opened with it (`seen`: the key and address authentication
    /// found when the session was admitted, if any): `KeyWatch::refusal` before each step.
    pub fn watch(&self, key_id: String, seen: Option<KeyState>) -> KeyWatch {
        let address = seen.as_ref().map(|state| state.address);
        KeyWatch { cache: self.clone(), key_id, seen: seen.map(|state| state.key), address }
    }

    /// The key with this id, as of at most the TTL ago and after the invalidations that concern it.
    /// Concurrent misses share one read: the first event after 10,000 streams opened asks once.
    async fn by_id(&self, key_id: &str) -> Result<Arc<VerifiedKey>, LoadError> {
        let read = || {
            let (inner, key_id) = (self.inner.clone(), key_id.to_owned());
            async move { load(&inner.db, KeyColumn::Id, &key_id, inner.invalidations.count()).await }
        };
        current_entry(&self.inner.by_id, key_id, read, |key| self.fresh(key)).await
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

    /// After a committed change that may refuse some of `merchant_id`'s keys (or its
    /// sub-merchants'): their cached entries go stale here, and every replica is told. The
    /// announcement runs on its own task, so a caller that hangs up right after the commit cannot
    /// cancel it, and is retried for as long as it could still matter (the TTL).
    pub fn invalidate(&self, merchant_id: &str) {
        self.inner.invalidations.merchant(merchant_id, self.inner.ttl);
        metrics::counter!("paygate_auth_cache_invalidations_total", "source" => "write").increment(1);
        let Some(redis) = self.inner.redis.clone() else { return };
        let mut announcing = self.inner.announcing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while announcing.try_join_next().is_some() {}
        announcing.spawn(announce(redis, merchant_id.to_owned(), self.inner.ttl));
    }

    /// Waits until every announcement went out (or gave up): for the CLI, whose process ends next.
    pub async fn flush(&self) {
        let mut announcing = std::mem::take(&mut *self.inner.announcing.lock().unwrap_or_else(|p| p.into_inner()));
        while announcing.join_next().await.is_some() {}
    }

    fn drop_everything(&self) {
        self.inner.invalidations.everything();
        self.inner.known.invalidate_all();
        self.inner.by_id.invalidate_all();
    }

    /// Follows other replicas' invalidations until `shutdown`. Without Redis there is nothing to follow.
    pub fn spawn_background(&self, mut shutdown: Shutdown) {
        let Some(redis) = self.inner.redis.clone() else { return };
        let cache = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cache.follow_invalidations(redis) => {}
                _ = shutdown.signalled() => {}
            }
        });
    }

    async fn follow_invalidations(&self, redis: RedisHandle) {
        redis
            .follow(INVALIDATION_CHANNEL, |followed| {
                match followed {
                    Followed::Message(merchant_id) => {
                        if merchant_id.is_empty() || merchant_id == EVERY_MERCHANT {
                            self.drop_everything();
                        } else {
                            self.inner.invalidations.merchant(&merchant_id, self.inner.ttl);
                        }
                        metrics::counter!("paygate_auth_cache_invalidations_total", "source" => "remote").increment(1)
                    }
                    // (Re)subscribed or lost: announcements may have been missed, so everything goes.
                    Followed::Lost => {
                        self.drop_everything();
                        tracing::warn!(
                            "api key cache: invalidation subscription lost; entries now live at most their TTL"
                        )
                    }
                    Followed::Subscribed => self.drop_everything(),
                }
                std::future::ready(())
            })
            .await
    }
}

/// The merchant a verified key acts for, as the auth layer puts it in a request.
fn caller(key: Arc<VerifiedKey>, address: IpAddr) -> Caller {
    Caller {
        merchant_id: key.merchant_id.clone(),
        top_merchant_id: key.parent_id.clone().unwrap_or_else(|| key.merchant_id.clone()),
        scope: key.scope.clone(),
        key_id: key.key_id.clone(),
        address,
        key_state: Some(KeyState { key, address }),
    }
}

/// The key an open session (a stream) was opened with, re-checked before each of its events. It
/// keeps the key as it last read it and asks the cache again only once that is no longer fresh (an
/// invalidation of its merchant came, or the TTL passed): the same bounds as
/// `KeyCache::authenticate`, and one atomic read per event while nothing was invalidated.
pub struct KeyWatch {
    cache: KeyCache,
    key_id: String,
    seen: Option<Arc<VerifiedKey>>,
    /// The address a session of an API key was opened from: the merchant's allowlist must keep
    /// admitting it. `None` for a payment client token's session (a buyer's browser), which no
    /// allowlist concerns.
    address: Option<IpAddr>,
}

impl KeyWatch {
    /// Why the session must not go on (its key was revoked or expired since it opened, or its
    /// merchant's allowlist no longer admits its address), within the same bounds as `authenticate`.
    /// A database that cannot answer does not end a session it already admitted.
    pub async fn refusal(&mut self) -> Option<AuthError> {
        let key = match &self.seen {
            Some(key) if self.cache.fresh(key) => key.clone(),
            _ => match self.cache.by_id(&self.key_id).await {
                Ok(key) => {
                    self.seen = Some(key.clone());
                    key
                }
                Err(LoadError::NoSuchKey) => return Some(AuthError::Revoked(self.key_id.clone())),
                Err(LoadError::Store(_)) => return None,
            },
        };
        match self.address {
            Some(address) => decide(&key, address, now_ms()).err(),
            None => refused(&key),
        }
    }
}

/// Publishes the invalidation of `merchant_id`, retrying until Redis takes it or `ttl` has passed
/// (by then every cached entry has expired anyway).
async fn announce(redis: RedisHandle, merchant_id: String, ttl: Duration) {
    let deadline = tokio::time::Instant::now() + ttl;
    while redis.publish(&redis.key(INVALIDATION_CHANNEL), &merchant_id).await.is_err() {
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
) -> Result<V, LoadError>
where
    V: Clone + Send + Sync + 'static,
    Load: Fn() -> Loading,
    Loading: Future<Output = Result<V, LoadError>> + Send + 'static,
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
fn unshared(error: Arc<LoadError>) -> LoadError {
    match &*error {
        LoadError::NoSuchKey => LoadError::NoSuchKey,
        LoadError::Store(StoreError::Unavailable(inner)) => {
            StoreError::Unavailable(sqlx::Error::Protocol(inner.to_string())).into()
        }
        LoadError::Store(other) => StoreError::Query(sqlx::Error::Protocol(other.to_string())).into(),
    }
}

/// Which column finds the key.
#[derive(Clone, Copy)]
enum KeyColumn {
    Digest,
    Id,
}

/// The key, its merchant's scope and the allowlists that apply to it, as of invalidation count
/// `generation` (read before the key, so an invalidation during the read makes it stale).
async fn load(db: &Db, column: KeyColumn, value: &str, generation: u64) -> Result<Arc<VerifiedKey>, LoadError> {
    let read_at = now_ms();
    let condition = match column {
        KeyColumn::Digest => "k.key_hash = $1",
        KeyColumn::Id => "k.key_id = $1",
    };
    let sql = format!(
        "SELECT k.key_id AS key_id, k.merchant_id AS merchant_id, m.parent_id AS parent_id, \
         k.expires_at AS expires_at, k.revoked_at AS revoked_at, k.last_used_at AS last_used_at, \
         m.api_allowlist AS own, p.api_allowlist AS parent_list FROM api_keys k \
         JOIN merchants m ON m.merchant_id = k.merchant_id LEFT JOIN merchants p ON p.merchant_id = m.parent_id \
         WHERE {condition}"
    );
    let row =
        sqlx::query_as::<_, KeyRow>(&sql).bind(value).fetch_optional(db.pool()).await?.ok_or(LoadError::NoSuchKey)?;
    let scope =
        sqlx::query_scalar::<_, String>("SELECT merchant_id FROM merchants WHERE merchant_id = $1 OR parent_id = $1")
            .bind(&row.merchant_id)
            .fetch_all(db.pool())
            .await?;
    Ok(Arc::new(VerifiedKey {
        key_id: row.key_id,
        merchant_id: row.merchant_id,
        parent_id: row.parent_id,
        scope,
        expires_at: row.expires_at.map(i64::from),
        revoked: row.revoked_at.is_some(),
        allowlist: allowlist::decode(row.own.as_deref()),
        parent_allowlist: allowlist::decode(row.parent_list.as_deref()),
        generation,
        read_at,
        last_touched: AtomicI64::new(row.last_used_at.unwrap_or_default().into()),
    }))
}

/// A key as authentication reads it, with its merchant's and parent's allowlists (JSON).
#[derive(sqlx::FromRow)]
struct KeyRow {
    key_id: String,
    merchant_id: String,
    parent_id: Option<String>,
    expires_at: Option<UnixMs>,
    revoked_at: Option<UnixMs>,
    last_used_at: Option<UnixMs>,
    own: Option<String>,
    parent_list: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_at(merchant_id: &str, parent_id: Option<&str>, generation: u64) -> VerifiedKey {
        VerifiedKey {
            merchant_id: merchant_id.into(),
            parent_id: parent_id.map(Into::into),
            generation,
            ..VerifiedKey::example(false, None, &[])
        }
    }

    #[test]
    fn an_invalidation_makes_only_its_merchants_and_sub_merchants_keys_stale() {
        let ttl = Duration::from_secs(10);
        let invalidations = Invalidations::default();
        let (own, sub, other) =
            (read_at("mer_a", None, 0), read_at("mer_s", Some("mer_a"), 0), read_at("mer_b", None, 0));
        assert!([&own, &sub, &other].iter().all(|k| invalidations.covers(k)));

        invalidations.merchant("mer_a", ttl);
        assert!(!invalidations.covers(&own), "the merchant's own key");
        assert!(!invalidations.covers(&sub), "its sub-merchant's key");
        assert!(invalidations.covers(&other), "another merchant's key stays");
        // Read again after the invalidation: good.
        assert!(invalidations.covers(&read_at("mer_a", None, invalidations.count())));

        // A sub-merchant's change leaves its parent's keys alone.
        let parents = read_at("mer_a", None, invalidations.count());
        invalidations.merchant("mer_s", ttl);
        assert!(invalidations.covers(&parents));
        assert!(!invalidations.covers(&read_at("mer_s", Some("mer_a"), 1)));

        invalidations.everything();
        assert!(!invalidations.covers(&other), "everything goes after a resubscription");
    }

    #[test]
    fn forgotten_invalidations_are_older_than_the_ttl() {
        let ttl = Duration::from_millis(1);
        let invalidations = Invalidations::default();
        for i in 0..=REMEMBERED_INVALIDATIONS {
            invalidations.merchant(&format!("mer_{i}"), Duration::from_secs(60));
        }
        std::thread::sleep(Duration::from_millis(5));
        invalidations.merchant("mer_last", ttl);
        let remembered = invalidations.of_merchant.read().unwrap().len();
        assert_eq!(remembered, 1, "only the invalidation younger than the TTL is kept");
    }
}
