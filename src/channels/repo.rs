//! Channel rows. A row holds its provider's config with each secret encrypted (`StoredChannel`);
//! `open` decrypts it into a `Channel`. The stored form is also what the Redis cache holds, so
//! Redis never sees a secret.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row, any::AnyRow};

use super::{Channel, ChannelError, ChannelMode, config::ProviderConfig};
use crate::{
    merchants::IN_SCOPE,
    secrets::MasterKeys,
    store::{Db, OnUniqueViolation},
};

const COLUMNS: &str = "channel_key, merchant_id, owner_id, name, provider, mode, settings, secrets, version, \
    created_at, updated_at, disabled_at";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChannel {
    pub channel_key: String,
    pub merchant_id: String,
    /// Absent in copies cached by an older version; ownership is always decided from the database.
    #[serde(default)]
    pub owner_id: String,
    pub name: String,
    /// The provider's name: the tag saying whose config `settings` and `secrets` are.
    pub provider: String,
    pub mode: String,
    /// The provider's settings, a JSON object.
    pub settings: String,
    /// The provider's secrets by name, each encrypted under the master key with the channel key as
    /// associated data ("pgenc:v1:<key id>:<base64 nonce+ciphertext>").
    pub secrets: BTreeMap<String, String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub disabled_at: Option<i64>,
}

impl StoredChannel {
    pub fn seal(c: &Channel, keys: &MasterKeys) -> Self {
        Self {
            channel_key: c.channel_key.clone(),
            merchant_id: c.merchant_id.clone(),
            owner_id: c.owner_id.clone(),
            name: c.name.clone(),
            provider: c.provider.clone(),
            mode: c.mode.as_str().to_owned(),
            settings: c.config.settings.to_string(),
            secrets: c
                .config
                .secrets
                .iter()
                .map(|(name, secret)| (name.clone(), keys.encrypt(&c.channel_key, secret)))
                .collect(),
            version: c.version,
            created_at: c.created_at,
            updated_at: c.updated_at,
            disabled_at: c.disabled_at,
        }
    }

    pub fn open(&self, keys: &MasterKeys) -> Result<Channel, ChannelError> {
        let corrupt = |col: &str, e: &dyn std::fmt::Display| ChannelError::Corrupt(format!("{col}: {e}"));
        let settings: serde_json::Value = serde_json::from_str(&self.settings).map_err(|e| corrupt("settings", &e))?;
        let secrets = self
            .secrets
            .iter()
            .map(|(name, sealed)| Ok((name.clone(), keys.decrypt(&self.channel_key, sealed)?)))
            .collect::<Result<_, ChannelError>>()?;
        Ok(Channel {
            channel_key: self.channel_key.clone(),
            merchant_id: self.merchant_id.clone(),
            // Empty only for a row an older version wrote: such a channel is nobody's to change.
            owner_id: self.owner_id.clone(),
            name: self.name.clone(),
            provider: self.provider.clone(),
            mode: ChannelMode::parse(&self.mode).ok_or_else(|| corrupt("mode", &"unknown"))?,
            config: ProviderConfig { settings, secrets },
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            disabled_at: self.disabled_at,
        })
    }

    fn secrets_json(&self) -> Result<String, ChannelError> {
        serde_json::to_string(&self.secrets).map_err(|e| ChannelError::Corrupt(e.to_string()))
    }
}

pub async fn insert(conn: &mut AnyConnection, c: &StoredChannel) -> Result<(), ChannelError> {
    let sql = format!("INSERT INTO channels ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)");
    let result = sqlx::query(&sql)
        .bind(&c.channel_key)
        .bind(&c.merchant_id)
        .bind(&c.owner_id)
        .bind(&c.name)
        .bind(&c.provider)
        .bind(&c.mode)
        .bind(&c.settings)
        .bind(c.secrets_json()?)
        .bind(c.version)
        .bind(c.created_at)
        .bind(c.updated_at)
        .bind(c.disabled_at)
        .execute(conn)
        .await;
    result.on_unique_violation(|| ChannelError::KeyTaken).map(|_| ())
}

/// Writes `c` (whose version is already bumped) only if the row is still at `c.version - 1`.
pub async fn update(conn: &mut AnyConnection, c: &StoredChannel) -> Result<bool, ChannelError> {
    let done = sqlx::query(
        "UPDATE channels SET merchant_id = $1, name = $2, mode = $3, settings = $4, secrets = $5, version = $6, \
         updated_at = $7, disabled_at = $8 WHERE channel_key = $9 AND version = $10",
    )
    .bind(&c.merchant_id)
    .bind(&c.name)
    .bind(&c.mode)
    .bind(&c.settings)
    .bind(c.secrets_json()?)
    .bind(c.version)
    .bind(c.updated_at)
    .bind(c.disabled_at)
    .bind(&c.channel_key)
    .bind(c.version - 1)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Erases a channel nothing refers to. False when payments or pingbacks refer to it.
pub async fn erase_if_unused(conn: &mut AnyConnection, channel_key: &str) -> Result<bool, ChannelError> {
    let done = sqlx::query(
        "DELETE FROM channels WHERE channel_key = $1 \
         AND NOT EXISTS (SELECT 1 FROM payments WHERE channel_key = $1) \
         AND NOT EXISTS (SELECT 1 FROM pingbacks WHERE channel_key = $1)",
    )
    .bind(channel_key)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether any channel's settings have `name` set to true (settings are stored as compact JSON).
pub async fn any_setting_on(db: &Db, name: &str) -> Result<bool, ChannelError> {
    let pattern = format!("%\"{name}\":true%");
    let found: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT 1 FROM channels WHERE settings LIKE $1 LIMIT 1) t")
            .bind(pattern)
            .fetch_one(db.pool())
            .await?;
    Ok(found > 0)
}

/// Any merchant's channel, by key.
pub async fn get(db: &Db, channel_key: &str) -> Result<Option<StoredChannel>, ChannelError> {
    let sql = format!("SELECT {COLUMNS} FROM channels WHERE channel_key = $1");
    let row = sqlx::query(&sql).bind(channel_key).fetch_optional(db.pool()).await?;
    row.as_ref().map(from_row).transpose()
}

/// A channel of `merchant_id` or of one of its sub-merchants; anyone else's reads as not found.
pub async fn get_in_scope(db: &Db, merchant_id: &str, channel_key: &str) -> Result<StoredChannel, ChannelError> {
    let sql = format!("SELECT {COLUMNS} FROM channels WHERE {IN_SCOPE} AND channel_key = $2");
    let row = sqlx::query(&sql).bind(merchant_id).bind(channel_key).fetch_optional(db.pool()).await?;
    row.as_ref().map(from_row).transpose()?.ok_or(ChannelError::NotFound)
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub mode: Option<ChannelMode>,
    /// A provider's name.
    pub provider: Option<String>,
    /// Only channels assigned to this sub-merchant.
    pub sub_merchant_id: Option<String>,
    pub include_disabled: bool,
    pub after_key: Option<String>,
    pub limit: u32,
}

/// A page of the caller's channels (and its sub-merchants'), in key order.
pub async fn list(db: &Db, merchant_id: &str, f: &ListFilter) -> Result<Vec<StoredChannel>, ChannelError> {
    let mut sql = format!("SELECT {COLUMNS} FROM channels WHERE {IN_SCOPE} AND channel_key > $2");
    let mut args: Vec<String> = vec![merchant_id.to_owned(), f.after_key.clone().unwrap_or_default()];
    let mut filter = |column: &str, value: String| {
        args.push(value);
        sql.push_str(&format!(" AND {column} = ${}", args.len()));
    };
    if let Some(mode) = f.mode {
        filter("mode", mode.as_str().to_owned());
    }
    if let Some(provider) = &f.provider {
        filter("provider", provider.clone());
    }
    if let Some(sub) = &f.sub_merchant_id {
        filter("merchant_id", sub.clone());
    }
    if !f.include_disabled {
        sql.push_str(" AND disabled_at IS NULL");
    }
    sql.push_str(&format!(" ORDER BY channel_key LIMIT ${}", args.len() + 1));
    let mut query = sqlx::query(&sql);
    for arg in &args {
        query = query.bind(arg);
    }
    let rows = query.bind(i64::from(f.limit)).fetch_all(db.pool()).await?;
    rows.iter().map(from_row).collect()
}

/// Every channel's encrypted secrets (its `secrets` column as stored), for the start-up key check
/// and key rotation.
pub async fn all_secrets(db: &Db) -> Result<Vec<(String, String)>, ChannelError> {
    let rows =
        sqlx::query("SELECT channel_key, secrets FROM channels ORDER BY channel_key").fetch_all(db.pool()).await?;
    rows.iter().map(|r| Ok((r.try_get("channel_key")?, r.try_get("secrets")?))).collect()
}

/// Replaces a channel's encrypted secrets if they are still `old` (key rotation). The version is
/// bumped so cached copies holding the old ciphertexts are replaced.
pub async fn replace_secrets(
    conn: &mut AnyConnection,
    channel_key: &str,
    old: &str,
    new: &str,
) -> Result<bool, ChannelError> {
    let done =
        sqlx::query("UPDATE channels SET secrets = $1, version = version + 1 WHERE channel_key = $2 AND secrets = $3")
            .bind(new)
            .bind(channel_key)
            .bind(old)
            .execute(conn)
            .await?;
    Ok(done.rows_affected() == 1)
}

fn from_row(row: &AnyRow) -> Result<StoredChannel, ChannelError> {
    let corrupt = |col: &str, e: &dyn std::fmt::Display| ChannelError::Corrupt(format!("{col}: {e}"));
    let s = |col: &str| row.try_get::<String, _>(col).map_err(|e| corrupt(col, &e));
    let n = |col: &str| row.try_get::<i64, _>(col).map_err(|e| corrupt(col, &e));
    Ok(StoredChannel {
        channel_key: s("channel_key")?,
        merchant_id: s("merchant_id")?,
        owner_id: row
            .try_get::<Option<String>, _>("owner_id")
            .map_err(|e| corrupt("owner_id", &e))?
            .unwrap_or_default(),
        name: s("name")?,
        provider: s("provider")?,
        mode: s("mode")?,
        settings: s("settings")?,
        secrets: serde_json::from_str(&s("secrets")?).map_err(|e| corrupt("secrets", &e))?,
        version: n("version")?,
        created_at: n("created_at")?,
        updated_at: n("updated_at")?,
        disabled_at: row.try_get::<Option<i64>, _>("disabled_at").map_err(|e| corrupt("disabled_at", &e))?,
    })
}
