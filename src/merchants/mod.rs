//! Merchants (tenants), their sub-merchants, and API keys. Keys are shown once and stored as
//! SHA-256 digests: they are long random strings, so a fast hash is enough and a lookup stays one
//! indexed read.

use rand::{Rng, distr::Alphanumeric};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{
    error::InvalidArgument,
    store::{Db, StoreError, now_ms},
};

const KEY_PREFIX: &str = "pgk_";
const KEY_RANDOM_CHARS: usize = 32; // 62^32 ~ 2^190
pub const MAX_NAME: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing authorization metadata (expected \"authorization: Bearer <api key>\")")]
    Missing,
    #[error("malformed authorization metadata (expected \"Bearer <api key>\")")]
    Malformed,
    #[error("invalid API key")]
    UnknownKey,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum MerchantError {
    #[error("merchant not found")]
    NotFound,
    #[error("{0} is a sub-merchant; a sub-merchant cannot have sub-merchants")]
    NestedSubMerchant(String),
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for MerchantError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// The merchant a request acts for, put in request extensions by the auth layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub merchant_id: String,
    /// The merchant itself and its sub-merchants: everything this key may act for.
    pub scope: Vec<String>,
}

impl Caller {
    pub fn acts_for(&self, merchant_id: &str) -> bool {
        self.scope.iter().any(|m| m == merchant_id)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CreatedMerchant {
    pub merchant_id: String,
    /// Shown once; only its digest is stored.
    pub api_key: String,
}

/// A merchant (or, with `parent_id`, a sub-merchant) and its first API key.
pub async fn create_merchant(db: &Db, name: &str, parent_id: Option<&str>) -> Result<CreatedMerchant, MerchantError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME || name.chars().any(char::is_control) {
        return Err(InvalidArgument::single("name", format!("must be 1 to {MAX_NAME} printable characters")).into());
    }
    if let Some(parent) = parent_id {
        let row = sqlx::query("SELECT parent_id FROM merchants WHERE merchant_id = $1")
            .bind(parent)
            .fetch_optional(db.pool())
            .await?
            .ok_or(MerchantError::NotFound)?;
        if row.try_get::<Option<String>, _>("parent_id")?.is_some() {
            return Err(MerchantError::NestedSubMerchant(parent.to_owned()));
        }
    }
    let merchant_id = format!("mer_{}", ulid::Ulid::new());
    let now = now_ms();
    let mut tx = db.pool().begin().await?;
    sqlx::query("INSERT INTO merchants (merchant_id, name, parent_id, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&merchant_id)
        .bind(name)
        .bind(parent_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let api_key = insert_api_key(&mut tx, &merchant_id, now).await?;
    tx.commit().await?;
    Ok(CreatedMerchant { merchant_id, api_key })
}

/// Another API key for an existing merchant.
pub async fn create_api_key(db: &Db, merchant_id: &str) -> Result<String, MerchantError> {
    let mut tx = db.pool().begin().await?;
    let exists = sqlx::query("SELECT 1 FROM merchants WHERE merchant_id = $1")
        .bind(merchant_id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Err(MerchantError::NotFound);
    }
    let key = insert_api_key(&mut tx, merchant_id, now_ms()).await?;
    tx.commit().await?;
    Ok(key)
}

async fn insert_api_key(conn: &mut sqlx::AnyConnection, merchant_id: &str, now: i64) -> Result<String, sqlx::Error> {
    let api_key = new_api_key();
    sqlx::query("INSERT INTO api_keys (key_id, merchant_id, key_hash, created_at) VALUES ($1, $2, $3, $4)")
        .bind(format!("key_{}", ulid::Ulid::new()))
        .bind(merchant_id)
        .bind(digest(&api_key))
        .bind(now)
        .execute(conn)
        .await?;
    Ok(api_key)
}

/// Resolves `authorization` metadata to the merchant it acts for.
pub async fn authenticate(db: &Db, authorization: Option<&str>) -> Result<Caller, AuthError> {
    let key = bearer_token(authorization)?;
    if !key.starts_with(KEY_PREFIX) {
        return Err(AuthError::UnknownKey);
    }
    // One read: the key's merchant and every merchant it acts for (itself and its sub-merchants).
    let rows = sqlx::query(
        "SELECT k.merchant_id AS merchant_id, m.merchant_id AS member FROM api_keys k \
         JOIN merchants m ON m.merchant_id = k.merchant_id OR m.parent_id = k.merchant_id \
         WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
    )
    .bind(digest(key))
    .fetch_all(db.pool())
    .await
    .map_err(StoreError::from)?;
    let first = rows.first().ok_or(AuthError::UnknownKey)?;
    let merchant_id: String = first.try_get("merchant_id").map_err(StoreError::from)?;
    let scope = rows
        .iter()
        .map(|r| r.try_get::<String, _>("member"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from)?;
    Ok(Caller { merchant_id, scope })
}

/// The token of `Bearer <token>`.
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthError> {
    let header = authorization.ok_or(AuthError::Missing)?;
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or(AuthError::Malformed)
}

fn new_api_key() -> String {
    let random: String = rand::rng().sample_iter(Alphanumeric).take(KEY_RANDOM_CHARS).map(char::from).collect();
    format!("{KEY_PREFIX}{random}")
}

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_distinct() {
        let (a, b) = (new_api_key(), new_api_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_PREFIX.len() + KEY_RANDOM_CHARS);
        assert_ne!(digest(&a), digest(&b));
        assert!(!digest(&a).contains(&a[KEY_PREFIX.len()..]));
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer_token(Some("Bearer pgk_x")).unwrap(), "pgk_x");
        assert!(matches!(bearer_token(None), Err(AuthError::Missing)));
        assert!(matches!(bearer_token(Some("Basic abc")), Err(AuthError::Malformed)));
        assert!(matches!(bearer_token(Some("Bearer ")), Err(AuthError::Malformed)));
    }
}
