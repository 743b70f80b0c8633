//! Payment channels: one set of provider credentials each, owned by a merchant or assigned to one
//! of its sub-merchants. Secrets are encrypted at rest (`crypto`), configs are cached (`cache`).

pub mod cache;
pub mod crypto;
pub mod model;
pub mod repo;

use std::sync::Arc;

pub use cache::ChannelCache;
pub use model::{Channel, ChannelMode, NewChannel, PaymentwallConfig, Provider};

use self::{
    crypto::{CryptoError, MasterKeys},
    model::NewPaymentwall,
    repo::{ListFilter, StoredChannel},
};
use crate::{
    error::{InvalidArgument, Violations},
    merchants::Caller,
    store::{Db, StoreError, now_ms},
};

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    #[error("channel not found")]
    NotFound,
    #[error("channel_key already taken")]
    KeyTaken,
    #[error("the channel changed while this update ran; read it again and retry")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("channel secret: {0}")]
    Crypto(#[from] CryptoError),
    #[error("stored channel is unreadable: {0}")]
    Corrupt(String),
}

impl ChannelError {
    /// A copy of an error shared by every request that waited on the same cache load.
    fn clone_shared(e: &ChannelError) -> ChannelError {
        match e {
            Self::Invalid(i) => Self::Invalid(i.clone()),
            Self::NotFound => Self::NotFound,
            Self::KeyTaken => Self::KeyTaken,
            Self::Conflict => Self::Conflict,
            Self::Store(StoreError::Unavailable(inner)) => {
                Self::Store(StoreError::Unavailable(sqlx::Error::Protocol(inner.to_string())))
            }
            Self::Store(other) => Self::Corrupt(other.to_string()),
            Self::Crypto(c) => Self::Crypto(c.clone()),
            Self::Corrupt(s) => Self::Corrupt(s.clone()),
        }
    }
}

/// Which fields an update changes (proto field paths) and their new values.
#[derive(Debug, Clone, Default)]
pub struct ChannelPatch {
    pub paths: Vec<String>,
    pub name: String,
    pub mode: Option<ChannelMode>,
    pub paymentwall: NewPaymentwall,
    pub sub_merchant_id: String,
}

pub const UPDATABLE_PATHS: [&str; 9] = [
    "name",
    "mode",
    "sub_merchant_id",
    "paymentwall.project_key",
    "paymentwall.secret_key",
    "paymentwall.widget",
    "paymentwall.sign_version",
    "paymentwall.pingback_allowlist",
    "paymentwall.api_base_url",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// Nothing referred to it; the row is gone.
    Erased,
    /// It has payments or pingbacks: kept so its pingbacks still verify, closed to new checkouts.
    Disabled,
}

/// The channel capability: admin operations (read the database) and the hot-path lookups
/// (checkout, pingback) that go through the cache.
#[derive(Clone)]
pub struct Channels {
    db: Db,
    cache: ChannelCache,
}

impl Channels {
    pub fn new(db: Db, cache: ChannelCache) -> Self {
        Self { db, cache }
    }

    fn keys(&self) -> &MasterKeys {
        self.cache.keys()
    }

    pub async fn create(&self, caller: &Caller, mut new: NewChannel) -> Result<Channel, ChannelError> {
        let owner = owner(caller, std::mem::take(&mut new.sub_merchant_id), "sub_merchant_id")?;
        let channel = new.validate(&owner, now_ms())?;
        let stored = StoredChannel::seal(&channel, self.keys());
        repo::insert(&self.db, &stored).await?;
        self.cache.written(Some(&stored), &stored.channel_key).await;
        Ok(channel)
    }

    pub async fn get(&self, caller: &Caller, channel_key: &str) -> Result<Channel, ChannelError> {
        repo::get_in_scope(&self.db, &caller.merchant_id, channel_key).await?.open(self.keys())
    }

    pub async fn list(&self, caller: &Caller, filter: &ListFilter) -> Result<Vec<Channel>, ChannelError> {
        let rows = repo::list(&self.db, &caller.merchant_id, filter).await?;
        rows.iter().map(|row| row.open(self.keys())).collect()
    }

    pub async fn update(
        &self,
        caller: &Caller,
        channel_key: &str,
        patch: ChannelPatch,
    ) -> Result<Channel, ChannelError> {
        let current = self.get(caller, channel_key).await?;
        let mut v = Violations::default();
        if patch.paths.is_empty() {
            v.add("update_mask", "name at least one field to change");
        }
        let pw = &current.paymentwall;
        let mut next = NewChannel {
            channel_key: current.channel_key.clone(),
            name: current.name.clone(),
            provider: Some(current.provider),
            mode: Some(current.mode),
            sub_merchant_id: String::new(),
            paymentwall: Some(NewPaymentwall {
                project_key: pw.project_key.clone(),
                secret_key: pw.secret_key.clone(),
                widget: pw.widget.clone(),
                sign_version: pw.sign_version.number(),
                pingback_allowlist: pw.pingback_allowlist.iter().map(ToString::to_string).collect(),
                api_base_url: pw.api_base_url.clone(),
            }),
        };
        let mut owner_id = current.merchant_id.clone();
        let next_pw = next.paymentwall.as_mut().expect("set above");
        for (i, path) in patch.paths.iter().enumerate() {
            match path.as_str() {
                "name" => next.name = patch.name.clone(),
                "mode" => next.mode = patch.mode,
                "sub_merchant_id" => match owner(caller, patch.sub_merchant_id.clone(), "sub_merchant_id") {
                    Ok(id) => owner_id = id,
                    Err(e) => v.add("sub_merchant_id", e.to_string()),
                },
                "paymentwall.project_key" => next_pw.project_key = patch.paymentwall.project_key.clone(),
                "paymentwall.secret_key" => next_pw.secret_key = patch.paymentwall.secret_key.clone(),
                "paymentwall.widget" => next_pw.widget = patch.paymentwall.widget.clone(),
                "paymentwall.sign_version" => next_pw.sign_version = patch.paymentwall.sign_version,
                "paymentwall.pingback_allowlist" => {
                    next_pw.pingback_allowlist = patch.paymentwall.pingback_allowlist.clone()
                }
                "paymentwall.api_base_url" => next_pw.api_base_url = patch.paymentwall.api_base_url.clone(),
                other => v.add(
                    format!("update_mask.paths[{i}]"),
                    format!("{other:?} cannot be updated (updatable: {})", UPDATABLE_PATHS.join(", ")),
                ),
            }
        }
        let validated = next.validate(&owner_id, now_ms());
        let mut channel = match (v.check(), validated) {
            (Ok(()), Ok(channel)) => channel,
            (Err(InvalidArgument(mut a)), Err(InvalidArgument(b))) => {
                for violation in b.iter() {
                    a.add(violation.field.clone(), violation.description.clone());
                }
                return Err(InvalidArgument(a).into());
            }
            (Err(e), _) | (_, Err(e)) => return Err(e.into()),
        };
        channel.version = current.version + 1;
        channel.created_at = current.created_at;
        channel.disabled_at = current.disabled_at;
        let stored = StoredChannel::seal(&channel, self.keys());
        if !repo::update(&self.db, &stored).await? {
            return Err(ChannelError::Conflict);
        }
        self.cache.written(Some(&stored), channel_key).await;
        Ok(channel)
    }

    pub async fn delete(&self, caller: &Caller, channel_key: &str) -> Result<Deleted, ChannelError> {
        let current = self.get(caller, channel_key).await?;
        if repo::erase_if_unused(&self.db, channel_key).await? {
            self.cache.written(None, channel_key).await;
            return Ok(Deleted::Erased);
        }
        if current.disabled_at.is_none() {
            let mut channel = current;
            channel.version += 1;
            channel.updated_at = now_ms();
            channel.disabled_at = Some(channel.updated_at);
            let stored = StoredChannel::seal(&channel, self.keys());
            if !repo::update(&self.db, &stored).await? {
                return Err(ChannelError::Conflict);
            }
            self.cache.written(Some(&stored), channel_key).await;
        }
        Ok(Deleted::Disabled)
    }

    /// For a checkout: a channel the caller acts for (cached).
    pub async fn for_caller(&self, caller: &Caller, channel_key: &str) -> Result<Arc<Channel>, ChannelError> {
        let channel = self.cache.get(channel_key).await?;
        if caller.acts_for(&channel.merchant_id) { Ok(channel) } else { Err(ChannelError::NotFound) }
    }

    /// For a provider callback: any channel, named by the callback URL (cached).
    pub async fn for_callback(&self, channel_key: &str) -> Result<Arc<Channel>, ChannelError> {
        self.cache.get(channel_key).await
    }
}

/// The merchant a new or reassigned channel belongs to: the caller, or one of its sub-merchants.
fn owner(caller: &Caller, sub_merchant_id: String, field: &str) -> Result<String, InvalidArgument> {
    if sub_merchant_id.is_empty() {
        Ok(caller.merchant_id.clone())
    } else if sub_merchant_id != caller.merchant_id && caller.acts_for(&sub_merchant_id) {
        Ok(sub_merchant_id)
    } else {
        Err(InvalidArgument::single(field, "is not a sub-merchant of this merchant"))
    }
}

/// Start-up check: every stored secret must decrypt with the configured master keys, so a wrong
/// key fails here, clearly, instead of at the first pingback.
pub async fn verify_master_key(db: &Db, keys: &MasterKeys) -> Result<(), String> {
    let secrets = repo::all_secrets(db).await.map_err(|e| e.to_string())?;
    let failures: Vec<(String, CryptoError)> = secrets
        .iter()
        .filter_map(|(key, ciphertext)| keys.decrypt(key, ciphertext).err().map(|e| (key.clone(), e)))
        .collect();
    match failures.first() {
        None => Ok(()),
        Some((first, error)) => Err(format!(
            "{} of {} channel secrets cannot be decrypted with the configured master key (current key id {}); \
             first: channel {first}: {error}. Set PAYGATE_MASTER_KEY to the key they were written with, or list \
             it in PAYGATE_PREVIOUS_MASTER_KEYS while rotating",
            failures.len(),
            secrets.len(),
            keys.current_id(),
        )),
    }
}

/// Re-encrypts every secret not yet under the current master key. Returns (rotated, total).
pub async fn rotate_master_key(db: &Db, cache: &ChannelCache) -> Result<(usize, usize), String> {
    let keys = cache.keys();
    let secrets = repo::all_secrets(db).await.map_err(|e| e.to_string())?;
    let mut rotated = 0;
    for (channel_key, old) in &secrets {
        if !keys.is_stale(old) {
            continue;
        }
        let secret = keys.decrypt(channel_key, old).map_err(|e| format!("channel {channel_key}: {e}"))?;
        let new = keys.encrypt(channel_key, &secret);
        if repo::replace_secret(db, channel_key, old, &new).await.map_err(|e| e.to_string())? {
            let stored = repo::get(db, channel_key).await.map_err(|e| e.to_string())?;
            cache.written(stored.as_ref(), channel_key).await;
            rotated += 1;
        }
    }
    Ok((rotated, secrets.len()))
}
