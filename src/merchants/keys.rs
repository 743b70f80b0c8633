//! API keys. A key is shown once and stored as a SHA-256 digest: keys are long random strings, so
//! a fast hash is enough and a lookup stays one indexed read. Listings show the key's first
//! characters, never the key.

use rand::{Rng, distr::Alphanumeric};
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

use super::MerchantError;
use crate::{
    audit::{self, Action, Actor},
    store::{Db, StoreError, UnixMs},
    validation::{InvalidArgument, Violations},
};

pub const KEY_PREFIX: &str = "pgk_";
/// The longest merchant or key name, in characters.
pub const MAX_NAME: usize = 128;
const KEY_RANDOM_CHARS: usize = 32; // 62^32 ~ 2^190
/// Characters of the key shown in listings: the prefix and 6 random ones (~2^36 of the 2^190).
const SHOWN_CHARS: usize = KEY_PREFIX.len() + 6;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub key_id: String,
    pub merchant_id: String,
    pub name: String,
    /// The key's first characters ("" for keys made before they were recorded).
    pub key_prefix: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A name as people give one: trimmed, 1 to `MAX_NAME` printable characters.
pub(super) fn validate_name<'a>(field: &str, name: &'a str) -> Result<&'a str, InvalidArgument> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME || name.chars().any(char::is_control) {
        return Err(InvalidArgument::single(field, format!("must be 1 to {MAX_NAME} printable characters")));
    }
    Ok(name)
}

#[derive(Debug, Clone, Default)]
pub struct NewApiKey {
    pub name: String,
    pub expires_at: Option<i64>,
}

impl NewApiKey {
    pub fn named(name: &str) -> Self {
        Self { name: name.to_owned(), expires_at: None }
    }

    pub fn validate(&self, now: i64) -> Result<(), InvalidArgument> {
        let mut v = Violations::default();
        if let Err(e) = validate_name("name", &self.name) {
            v.add("name", e.0.iter().next().map(|f| f.description.clone()).unwrap_or_default());
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            v.add("expires_at", "must be in the future");
        }
        v.check()
    }
}

#[derive(Debug, Clone)]
pub struct CreatedApiKey {
    pub key: ApiKey,
    /// The key itself: shown once, never stored.
    pub secret: String,
}

/// Inserts a new key (and its audit entry) in the caller's transaction.
pub(super) async fn insert(
    conn: &mut AnyConnection,
    actor: &Actor,
    merchant_id: &str,
    new: &NewApiKey,
    now: i64,
) -> Result<CreatedApiKey, StoreError> {
    let secret = new_api_key();
    let key = ApiKey {
        key_id: format!("key_{}", ulid::Ulid::new()),
        merchant_id: merchant_id.to_owned(),
        name: new.name.trim().to_owned(),
        key_prefix: secret[..SHOWN_CHARS].to_owned(),
        created_at: now,
        expires_at: new.expires_at,
        last_used_at: None,
        revoked_at: None,
    };
    sqlx::query(
        "INSERT INTO api_keys (key_id, merchant_id, key_hash, name, key_prefix, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&key.key_id)
    .bind(merchant_id)
    .bind(digest(&secret))
    .bind(&key.name)
    .bind(&key.key_prefix)
    .bind(now)
    .bind(key.expires_at)
    .execute(&mut *conn)
    .await?;
    let fields: &[&str] = if key.expires_at.is_some() { &["name", "expires_at"] } else { &["name"] };
    let entry = audit::Entry {
        actor,
        action: Action::ApiKeyCreated,
        merchant_id: Some(merchant_id),
        target: &key.key_id,
        changed_fields: fields,
    };
    audit::record(conn, &entry, now).await?;
    Ok(CreatedApiKey { key, secret })
}

const COLUMNS: &str = "key_id, merchant_id, name, key_prefix, created_at, expires_at, last_used_at, revoked_at";

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub merchant_id: String,
    pub include_revoked: bool,
    pub after_key_id: Option<String>,
    pub limit: u32,
}

pub(super) async fn list(db: &Db, filter: &ListFilter) -> Result<Vec<ApiKey>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM api_keys WHERE merchant_id = $1 AND key_id > $2 AND ($3 = 1 OR revoked_at IS NULL) \
         ORDER BY key_id LIMIT {}",
        filter.limit.max(1)
    );
    let rows = sqlx::query_as::<_, ApiKeyRow>(&sql)
        .bind(&filter.merchant_id)
        .bind(filter.after_key_id.as_deref().unwrap_or(""))
        .bind(i64::from(filter.include_revoked))
        .fetch_all(db.pool())
        .await?;
    Ok(rows.into_iter().map(ApiKey::from).collect())
}

pub(super) async fn get(db: &Db, key_id: &str) -> Result<Option<ApiKey>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE key_id = $1");
    let row = sqlx::query_as::<_, ApiKeyRow>(&sql).bind(key_id).fetch_optional(db.pool()).await?;
    Ok(row.map(ApiKey::from))
}

/// Marks the key revoked; false when it already was.
pub(super) async fn revoke(conn: &mut AnyConnection, key_id: &str, now: i64) -> Result<bool, MerchantError> {
    let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(key_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The merchant's keys that still act: neither revoked nor expired at `now`.
pub(super) async fn count_live(conn: &mut AnyConnection, merchant_id: &str, now: i64) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM api_keys WHERE merchant_id = $1 AND revoked_at IS NULL \
         AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(merchant_id)
    .bind(now)
    .fetch_one(conn)
    .await?)
}

/// Records that the key was used (best effort, off the request path).
pub(super) async fn touch(db: &Db, key_id: &str, at: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE api_keys SET last_used_at = $1 WHERE key_id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
    )
    .bind(at)
    .bind(key_id)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// An `api_keys` row as listed (never its digest).
#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    key_id: String,
    merchant_id: String,
    name: String,
    key_prefix: String,
    created_at: UnixMs,
    expires_at: Option<UnixMs>,
    last_used_at: Option<UnixMs>,
    revoked_at: Option<UnixMs>,
}

impl From<ApiKeyRow> for ApiKey {
    fn from(row: ApiKeyRow) -> Self {
        ApiKey {
            key_id: row.key_id,
            merchant_id: row.merchant_id,
            name: row.name,
            key_prefix: row.key_prefix,
            created_at: row.created_at.into(),
            expires_at: row.expires_at.map(i64::from),
            last_used_at: row.last_used_at.map(i64::from),
            revoked_at: row.revoked_at.map(i64::from),
        }
    }
}

pub(super) fn new_api_key() -> String {
    let random: String = rand::rng().sample_iter(Alphanumeric).take(KEY_RANDOM_CHARS).map(char::from).collect();
    format!("{KEY_PREFIX}{random}")
}

pub(super) fn digest(key: &str) -> String {
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
    fn a_new_key_needs_a_name_and_a_future_expiry() {
        assert!(NewApiKey::named("ci").validate(1_000).is_ok());
        let fields = |k: NewApiKey| -> Vec<String> {
            k.validate(1_000).unwrap_err().0.iter().map(|v| v.field.clone()).collect()
        };
        assert_eq!(fields(NewApiKey { name: " ".into(), expires_at: Some(999) }), ["name", "expires_at"]);
        assert_eq!(fields(NewApiKey { name: "a\u{0}b".into(), expires_at: None }), ["name"]);
    }
}
