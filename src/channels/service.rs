//! The channel capability: admin operations over the database, the hot-path lookups through the
//! cache, and the master key's start-up check and rotation.

use std::{collections::HashMap, sync::Arc};

use super::{
    Channel, ChannelCache, ChannelError, ChannelMode, NewChannel,
    config::{self, ConfigRules, ProviderConfig},
    model::field_prefix,
    repo::{self, ListFilter, StoredChannel},
};
use crate::{
    audit::{self, Action, Actor},
    merchants::Caller,
    secrets::{CryptoError, MasterKeys},
    store::{Db, StoreError, now_ms},
    validation::{InvalidArgument, Violations},
};

/// Which fields an update changes (proto field paths) and their new values. A provider's config
/// field is named `{provider}.{field}`.
#[derive(Debug, Clone, Default)]
pub struct ChannelPatch {
    pub paths: Vec<String>,
    pub name: String,
    pub mode: Option<ChannelMode>,
    /// The new values of the config fields the paths name.
    pub config: ProviderConfig,
    pub sub_merchant_id: String,
}

/// The fields of a channel an update may change, besides its provider's config fields.
pub const UPDATABLE_PATHS: [&str; 3] = ["name", "mode", "sub_merchant_id"];

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
    /// Whether a channel's config may point at internal addresses (the simulator).
    allow_internal_targets: bool,
    /// The config rules of every provider paygate runs, by name.
    rules: Arc<HashMap<&'static str, Arc<dyn ConfigRules>>>,
}

impl Channels {
    pub fn new(db: Db, cache: ChannelCache, allow_internal_targets: bool, rules: Vec<Arc<dyn ConfigRules>>) -> Self {
        let rules = Arc::new(rules.into_iter().map(|r| (r.name(), r)).collect());
        Self { db, cache, allow_internal_targets, rules }
    }

    /// The rules of a provider paygate runs.
    pub fn rules(&self, provider: &str) -> Option<&dyn ConfigRules> {
        self.rules.get(provider).map(AsRef::as_ref)
    }

    /// Where the channel's provider must send its callbacks.
    pub fn callback_path(&self, channel: &Channel) -> String {
        match self.rules(&channel.provider) {
            Some(rules) => rules.callback_path(&channel.channel_key),
            None => config::generic_callback_path(&channel.provider, &channel.channel_key),
        }
    }

    fn keys(&self) -> &MasterKeys {
        self.cache.keys()
    }

    pub async fn create(&self, caller: &Caller, mut new: NewChannel) -> Result<Channel, ChannelError> {
        let rules = self.rules(&new.provider);
        let fields = new.given_fields(rules);
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        let user = owner(caller, std::mem::take(&mut new.sub_merchant_id), "sub_merchant_id")?;
        let mut channel = new.validate(&user, now_ms(), rules, self.allow_internal_targets)?;
        channel.owner_id = caller.merchant_id.clone();
        let stored = StoredChannel::seal(&channel, self.keys());
        let mut tx = self.db.pool().begin().await?;
        repo::insert(&mut tx, &stored).await?;
        audited(&mut tx, &caller.actor(), Action::ChannelCreated, &channel, &fields).await?;
        tx.commit().await?;
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
        let current = self.owned(caller, channel_key).await?;
        let mut v = Violations::default();
        if patch.paths.is_empty() {
            v.add("update_mask", "name at least one field to change");
        }
        let rules = self.rules(&current.provider);
        let prefix = field_prefix(&current.provider);
        let mut next = NewChannel {
            channel_key: current.channel_key.clone(),
            name: current.name.clone(),
            provider: current.provider.clone(),
            mode: Some(current.mode),
            sub_merchant_id: String::new(),
            config: Some(current.config.clone()),
        };
        let mut owner_id = current.merchant_id.clone();
        let next_config = next.config.as_mut().expect("set above");
        let config_fields = rules.map(|r| r.config_fields()).unwrap_or_default();
        for (i, path) in patch.paths.iter().enumerate() {
            let config_field = path.strip_prefix(&prefix).and_then(|f| config_fields.iter().find(|c| c.name == f));
            match (path.as_str(), config_field) {
                (_, Some(field)) => next_config.take_field(&patch.config, field),
                ("name", _) => next.name = patch.name.clone(),
                ("mode", _) => next.mode = patch.mode,
                ("sub_merchant_id", _) => match owner(caller, patch.sub_merchant_id.clone(), "sub_merchant_id") {
                    Ok(id) => owner_id = id,
                    Err(e) => v.add("sub_merchant_id", e.to_string()),
                },
                (other, None) => {
                    let updatable: Vec<String> = UPDATABLE_PATHS
                        .iter()
                        .map(|p| p.to_string())
                        .chain(config_fields.iter().map(|f| format!("{prefix}{}", f.name)))
                        .collect();
                    v.add(
                        format!("update_mask.paths[{i}]"),
                        format!("{other:?} cannot be updated (updatable: {})", updatable.join(", ")),
                    )
                }
            }
        }
        let validated = next.validate(&owner_id, now_ms(), rules, self.allow_internal_targets);
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
        channel.owner_id = current.owner_id.clone();
        let stored = StoredChannel::seal(&channel, self.keys());
        let mut tx = self.db.pool().begin().await?;
        if !repo::update(&mut tx, &stored).await? {
            return Err(ChannelError::Conflict);
        }
        let fields: Vec<&str> = patch.paths.iter().map(String::as_str).collect();
        audited(&mut tx, &caller.actor(), Action::ChannelUpdated, &channel, &fields).await?;
        tx.commit().await?;
        self.cache.written(Some(&stored), channel_key).await;
        Ok(channel)
    }

    pub async fn delete(&self, caller: &Caller, channel_key: &str) -> Result<Deleted, ChannelError> {
        let current = self.owned(caller, channel_key).await?;
        let mut tx = self.db.pool().begin().await?;
        if repo::erase_if_unused(&mut tx, channel_key).await? {
            audited(&mut tx, &caller.actor(), Action::ChannelDeleted, &current, &["erased"]).await?;
            tx.commit().await?;
            self.cache.written(None, channel_key).await;
            return Ok(Deleted::Erased);
        }
        if current.disabled_at.is_none() {
            let mut channel = current;
            channel.version += 1;
            channel.updated_at = now_ms();
            channel.disabled_at = Some(channel.updated_at);
            let stored = StoredChannel::seal(&channel, self.keys());
            if !repo::update(&mut tx, &stored).await? {
                return Err(ChannelError::Conflict);
            }
            audited(&mut tx, &caller.actor(), Action::ChannelDeleted, &channel, &["disabled_at"]).await?;
            tx.commit().await?;
            self.cache.written(Some(&stored), channel_key).await;
        }
        Ok(Deleted::Disabled)
    }

    /// A channel the caller may change: one its merchant (or a sub-merchant of it) created.
    async fn owned(&self, caller: &Caller, channel_key: &str) -> Result<Channel, ChannelError> {
        let channel = self.get(caller, channel_key).await?;
        if !channel.owner_id.is_empty() && caller.acts_for(&channel.owner_id) {
            Ok(channel)
        } else {
            Err(ChannelError::NotOwner { channel_key: channel.channel_key, owner_id: channel.owner_id })
        }
    }

    /// For a checkout: a channel the caller acts for (cached).
    pub async fn for_caller(&self, caller: &Caller, channel_key: &str) -> Result<Arc<Channel>, ChannelError> {
        let channel = self.cache.get(channel_key).await?;
        if caller.acts_for(&channel.merchant_id) { Ok(channel) } else { Err(ChannelError::NotFound) }
    }

    /// Whether any channel confirms digital deliveries by itself (one small read; the automatic
    /// confirmations skip the event log while none does).
    pub async fn any_confirming_digital_delivery(&self) -> Result<bool, ChannelError> {
        repo::any_setting_on(&self.db, super::config::CONFIRM_DIGITAL_DELIVERY).await
    }

    /// Any merchant's channel, not scoped to a caller: for provider callbacks (named by their URL)
    /// and the sweep, never for a merchant's request (cached).
    pub async fn unscoped(&self, channel_key: &str) -> Result<Arc<Channel>, ChannelError> {
        self.cache.get(channel_key).await
    }
}

/// Records a channel change in its transaction: who, which channel, which fields (never values).
async fn audited(
    conn: &mut sqlx::AnyConnection,
    actor: &Actor,
    action: Action,
    channel: &Channel,
    fields: &[&str],
) -> Result<(), StoreError> {
    let entry = audit::Entry {
        actor,
        action,
        merchant_id: Some(&channel.owner_id),
        target: &channel.channel_key,
        changed_fields: fields,
    };
    audit::record(conn, &entry, now_ms()).await
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

/// The secrets of one channel as stored: name -> ciphertext.
fn sealed_secrets(channel_key: &str, json: &str) -> Result<std::collections::BTreeMap<String, String>, ChannelError> {
    serde_json::from_str(json)
        .map_err(|e| ChannelError::Corrupt(format!("channel {channel_key}: unreadable secrets column: {e}")))
}

/// Start-up check: every stored secret must decrypt with the configured master keys, so a wrong
/// key fails here, clearly, instead of at the first pingback.
pub async fn verify_master_key(db: &Db, keys: &MasterKeys) -> Result<(), ChannelError> {
    let channels = repo::all_secrets(db).await?;
    let mut failures: Vec<(String, CryptoError)> = Vec::new();
    let mut total = 0;
    for (channel_key, json) in &channels {
        let sealed = sealed_secrets(channel_key, json)?;
        total += sealed.len();
        let failed = sealed.values().filter_map(|ciphertext| keys.decrypt(channel_key, ciphertext).err());
        failures.extend(failed.map(|e| (channel_key.clone(), e)));
    }
    let failed = failures.len();
    match failures.into_iter().next() {
        None => Ok(()),
        Some((channel_key, error)) => Err(ChannelError::WrongMasterKey {
            failed,
            total,
            key_id: keys.current_id().to_owned(),
            channel_key,
            error,
        }),
    }
}

/// Re-encrypts every secret not yet under the current master key. Returns (rotated, total)
/// counted in channels.
pub async fn rotate_master_key(db: &Db, cache: &ChannelCache) -> Result<(usize, usize), ChannelError> {
    let keys = cache.keys();
    let channels = repo::all_secrets(db).await?;
    let mut rotated = 0;
    for (channel_key, old) in &channels {
        let mut sealed = sealed_secrets(channel_key, old)?;
        let stale: Vec<String> = sealed.iter().filter(|(_, c)| keys.is_stale(c)).map(|(n, _)| n.clone()).collect();
        if stale.is_empty() {
            continue;
        }
        for name in &stale {
            let secret = keys
                .decrypt(channel_key, &sealed[name])
                .map_err(|error| ChannelError::SecretUnreadable { channel_key: channel_key.clone(), error })?;
            sealed.insert(name.clone(), keys.encrypt(channel_key, &secret));
        }
        let new = serde_json::to_string(&sealed).map_err(|e| ChannelError::Corrupt(e.to_string()))?;
        let stored = repo::get(db, channel_key).await?;
        let prefix = field_prefix(stored.as_ref().map_or("", |c| c.provider.as_str()));
        let fields: Vec<String> = stale.iter().map(|name| format!("{prefix}{name}")).collect();
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        let mut tx = db.pool().begin().await?;
        if repo::replace_secrets(&mut tx, channel_key, old, &new).await? {
            let entry = audit::Entry {
                actor: &Actor::cli(),
                action: Action::MasterKeyRotated,
                merchant_id: None,
                target: channel_key,
                changed_fields: &fields,
            };
            audit::record(&mut tx, &entry, now_ms()).await?;
            tx.commit().await?;
            let stored = repo::get(db, channel_key).await?;
            cache.written(stored.as_ref(), channel_key).await;
            rotated += 1;
        }
    }
    Ok((rotated, channels.len()))
}
