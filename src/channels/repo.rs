//! Channel rows.

use secrecy::{ExposeSecret, SecretString};
use sqlx::{Row, any::AnyRow};

use super::{Channel, ChannelError, ChannelMode, PaymentwallConfig, Provider};
use crate::{
    ingest::parse_cidr,
    providers::paymentwall::SignVersion,
    store::{Db, StoreError},
};

const COLUMNS: &str = "channel_key, merchant_id, name, provider, mode, project_key, secret_key, widget, \
    sign_version, pingback_allowlist, api_base_url, created_at, updated_at";

pub async fn insert(db: &Db, c: &Channel) -> Result<(), ChannelError> {
    let allowlist: Vec<String> = c.paymentwall.pingback_allowlist.iter().map(ToString::to_string).collect();
    let allowlist = serde_json::to_string(&allowlist).map_err(|e| ChannelError::Corrupt(e.to_string()))?;
    let sql =
        format!("INSERT INTO channels ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)");
    let result = sqlx::query(&sql)
        .bind(&c.channel_key)
        .bind(&c.merchant_id)
        .bind(&c.name)
        .bind(c.provider.as_str())
        .bind(c.mode.as_str())
        .bind(&c.paymentwall.project_key)
        .bind(c.paymentwall.secret_key.expose_secret())
        .bind(&c.paymentwall.widget)
        .bind(i64::from(c.paymentwall.sign_version.number()))
        .bind(allowlist)
        .bind(&c.paymentwall.api_base_url)
        .bind(c.created_at)
        .bind(c.updated_at)
        .execute(db.pool())
        .await;
    match result.map_err(StoreError::from) {
        Ok(_) => Ok(()),
        Err(StoreError::UniqueViolation) => Err(ChannelError::KeyTaken),
        Err(e) => Err(e.into()),
    }
}

/// A merchant's channel; another merchant's reads as not found.
pub async fn get_for_merchant(db: &Db, merchant_id: &str, channel_key: &str) -> Result<Channel, ChannelError> {
    let sql = format!("SELECT {COLUMNS} FROM channels WHERE channel_key = $1 AND merchant_id = $2");
    let row = sqlx::query(&sql)
        .bind(channel_key)
        .bind(merchant_id)
        .fetch_optional(db.pool())
        .await
        .map_err(StoreError::from)?;
    row.as_ref().map(from_row).transpose()?.ok_or(ChannelError::NotFound)
}

/// Any merchant's channel, for provider callbacks (the channel key is in the callback URL).
pub async fn get(db: &Db, channel_key: &str) -> Result<Channel, ChannelError> {
    let sql = format!("SELECT {COLUMNS} FROM channels WHERE channel_key = $1");
    let row = sqlx::query(&sql).bind(channel_key).fetch_optional(db.pool()).await.map_err(StoreError::from)?;
    row.as_ref().map(from_row).transpose()?.ok_or(ChannelError::NotFound)
}

/// A page of a merchant's channels in key order, after `after_key`.
pub async fn list(
    db: &Db,
    merchant_id: &str,
    after_key: Option<&str>,
    limit: u32,
) -> Result<Vec<Channel>, ChannelError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM channels WHERE merchant_id = $1 AND channel_key > $2 ORDER BY channel_key LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(merchant_id)
        .bind(after_key.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(db.pool())
        .await
        .map_err(StoreError::from)?;
    rows.iter().map(from_row).collect()
}

fn from_row(row: &AnyRow) -> Result<Channel, ChannelError> {
    let corrupt = |col: &str, e: &dyn std::fmt::Display| ChannelError::Corrupt(format!("{col}: {e}"));
    let s = |col: &str| row.try_get::<String, _>(col).map_err(|e| corrupt(col, &e));
    let n = |col: &str| row.try_get::<i64, _>(col).map_err(|e| corrupt(col, &e));
    let allowlist: Vec<String> =
        serde_json::from_str(&s("pingback_allowlist")?).map_err(|e| corrupt("pingback_allowlist", &e))?;
    let pingback_allowlist = allowlist
        .iter()
        .map(|c| parse_cidr(c).map_err(|e| corrupt("pingback_allowlist", &e)))
        .collect::<Result<_, _>>()?;
    let sign_version = u32::try_from(n("sign_version")?)
        .ok()
        .and_then(SignVersion::from_number)
        .ok_or_else(|| corrupt("sign_version", &"out of range"))?;
    Ok(Channel {
        channel_key: s("channel_key")?,
        merchant_id: s("merchant_id")?,
        name: s("name")?,
        provider: Provider::parse(&s("provider")?).ok_or_else(|| corrupt("provider", &"unknown"))?,
        mode: ChannelMode::parse(&s("mode")?).ok_or_else(|| corrupt("mode", &"unknown"))?,
        paymentwall: PaymentwallConfig {
            project_key: s("project_key")?,
            secret_key: SecretString::from(s("secret_key")?),
            widget: s("widget")?,
            sign_version,
            pingback_allowlist,
            api_base_url: s("api_base_url")?,
        },
        created_at: n("created_at")?,
        updated_at: n("updated_at")?,
    })
}
