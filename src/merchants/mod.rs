//! Merchants (tenants) and their API keys. Keys are shown once and stored as SHA-256 digests:
//! they are long random strings, so a fast hash is enough and lookups stay one indexed read.

use rand::{Rng, distr::Alphanumeric};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::store::{Db, StoreError, now_ms};

const KEY_PREFIX: &str = "pgk_";
const KEY_RANDOM_CHARS: usize = 32; // 62^32 ~ 2^190

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

/// The merchant a request acts for, put in request extensions by the auth layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub merchant_id: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CreatedMerchant {
    pub merchant_id: String,
    /// Shown once; only its digest is stored.
    pub api_key: String,
}

pub async fn create_merchant(db: &Db, name: &str) -> Result<CreatedMerchant, StoreError> {
    let merchant_id = format!("mer_{}", ulid::Ulid::new());
    let api_key = new_api_key();
    let now = now_ms();
    let mut tx = db.pool().begin().await?;
    sqlx::query("INSERT INTO merchants (merchant_id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&merchant_id)
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO api_keys (key_id, merchant_id, key_hash, created_at) VALUES ($1, $2, $3, $4)")
        .bind(format!("key_{}", ulid::Ulid::new()))
        .bind(&merchant_id)
        .bind(digest(&api_key))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(CreatedMerchant { merchant_id, api_key })
}

/// Resolves `authorization` metadata to the merchant it acts for.
pub async fn authenticate(db: &Db, authorization: Option<&str>) -> Result<Caller, AuthError> {
    let header = authorization.ok_or(AuthError::Missing)?;
    let key = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or(AuthError::Malformed)?;
    if !key.starts_with(KEY_PREFIX) {
        return Err(AuthError::UnknownKey);
    }
    let row = sqlx::query("SELECT merchant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
        .bind(digest(key))
        .fetch_optional(db.pool())
        .await
        .map_err(StoreError::from)?
        .ok_or(AuthError::UnknownKey)?;
    Ok(Caller { merchant_id: row.try_get("merchant_id").map_err(StoreError::from)? })
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
}
