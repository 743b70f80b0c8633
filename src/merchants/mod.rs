//! Merchants (tenants) and their sub-merchants, with everything that decides who may act for
//! them: API keys (`keys`), the API allowlist (`allowlist`) and the verified-key cache that makes
//! authentication cost no database query per RPC (`key_cache`). Every change is audited.

pub mod allowlist;
pub mod client_tokens;
pub mod key_cache;
pub mod keys;

use std::{net::IpAddr, time::Duration};

pub use self::{
    allowlist::Allowlist,
    key_cache::{KeyCache, KeyState, KeyWatch},
    keys::ApiKey,
};
use crate::{
    audit::{self, Action, Actor},
    net::client_ip::Shown,
    store::{Db, StoreError, now_ms},
    validation::InvalidArgument,
};

pub const MAX_NAME: usize = 128;

/// Tenancy in SQL, defined once: the merchants a caller (bound as `$1`) acts for, itself and its
/// sub-merchants.
macro_rules! merchants_in_scope {
    () => {
        "(SELECT merchant_id FROM merchants WHERE merchant_id = $1 OR parent_id = $1)"
    };
}
/// `merchant_id IN <MERCHANTS_IN_SCOPE>` for a column of another name or table alias.
pub const MERCHANTS_IN_SCOPE: &str = merchants_in_scope!();
/// A row whose `merchant_id` the caller (`$1`) may see.
pub const IN_SCOPE: &str = concat!("merchant_id IN ", merchants_in_scope!());

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing authorization metadata (expected \"authorization: Bearer <api key>\")")]
    Missing,
    #[error("malformed authorization metadata (expected \"Bearer <api key>\")")]
    Malformed,
    #[error("invalid API key")]
    UnknownKey,
    #[error("API key {0} has been revoked")]
    Revoked(String),
    #[error("API key {0} has expired")]
    Expired(String),
    /// Names the caller's address and nothing about the list.
    #[error("caller address {} is not allowed to use this merchant's API keys", Shown(*.0))]
    AddressNotAllowed(IpAddr),
    #[error("the admin token is accepted by MerchantService only; call this RPC with a merchant API key")]
    AdminTokenNotAKey,
    #[error("rate limit of API key {key_id} exceeded; retry in {} ms", retry_after.as_millis())]
    RateLimited { key_id: String, retry_after: Duration },
    #[error(
        "rate limit of merchant {merchant_id} (its keys and its sub-merchants' together) exceeded; retry in {} ms",
        retry_after.as_millis()
    )]
    MerchantRateLimited { merchant_id: String, retry_after: Duration },
    /// Said instead of whether the credential was right: the address guessed too often.
    #[error("too many failed authentications from this address; retry in {} ms", retry_after.as_millis())]
    TooManyFailures { retry_after: Duration },
    #[error(transparent)]
    ClientToken(#[from] client_tokens::TokenError),
    /// A payment client token reaches GetPayment and WatchPayments of its own payment only.
    #[error("a payment client token may only call GetPayment and WatchPayments for its payment, not {0}")]
    ClientTokenNotAllowed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuthError {
    /// A failure that could be someone trying credentials: what the per-address failure limit counts.
    pub fn is_guess(&self) -> bool {
        matches!(self, Self::Malformed | Self::UnknownKey | Self::ClientToken(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MerchantError {
    #[error("merchant not found")]
    NotFound,
    #[error("API key not found")]
    KeyNotFound,
    #[error("{0} is a sub-merchant; a sub-merchant cannot have sub-merchants")]
    NestedSubMerchant(String),
    #[error("{0} needs the admin token")]
    AdminOnly(&'static str),
    #[error("{}", would_lock_out(*.0))]
    WouldLockOut(IpAddr),
    #[error("merchant {merchant_id} has {limit} live API keys, the most it may have; revoke one first")]
    TooManyKeys { merchant_id: String, limit: u32 },
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn would_lock_out(address: IpAddr) -> String {
    let fix = if crate::net::client_ip::is_unknown(address) {
        "No block can contain an unknown address (your proxy sent no usable x-forwarded-for)"
    } else {
        "Add a block that contains it"
    };
    format!(
        "this list does not include your address {}: calls with this merchant's keys from it would be refused. \
         {fix}, or set the list with the admin token",
        Shown(address)
    )
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
    /// The top-level merchant: the merchant itself, or its parent for a sub-merchant. Its keys and
    /// its sub-merchants' share one rate limit.
    pub top_merchant_id: String,
    /// The merchant itself and its sub-merchants: everything this key may act for.
    pub scope: Vec<String>,
    /// The API key used.
    pub key_id: String,
    /// Where the call came from (the TCP peer, or X-Forwarded-For from a trusted proxy).
    pub address: IpAddr,
    /// The key's state as authentication found it, when known: an open stream's re-checks of
    /// the key start from it.
    pub key_state: Option<KeyState>,
}

impl Caller {
    pub fn acts_for(&self, merchant_id: &str) -> bool {
        self.scope.iter().any(|m| m == merchant_id)
    }

    pub fn actor(&self) -> Actor {
        Actor::api_key(&self.key_id, Shown(self.address))
    }
}

/// Who is calling a MerchantService RPC: the operator with the admin token, or a merchant's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin { address: IpAddr },
    Merchant(Caller),
}

impl Principal {
    pub fn actor(&self) -> Actor {
        match self {
            Self::Admin { address } => Actor::admin(Shown(*address)),
            Self::Merchant(caller) => caller.actor(),
        }
    }

    pub fn require_admin(&self, rpc: &'static str) -> Result<(), MerchantError> {
        match self {
            Self::Admin { .. } => Ok(()),
            Self::Merchant(_) => Err(MerchantError::AdminOnly(rpc)),
        }
    }

    /// The merchant an RPC's `merchant_id` names: a key may name its own merchant (the default
    /// when empty) or one of its sub-merchants; anything else reads as not found. The admin must
    /// name one.
    pub fn target(&self, merchant_id: &str) -> Result<String, MerchantError> {
        match self {
            Self::Admin { .. } if merchant_id.is_empty() => {
                Err(InvalidArgument::single("merchant_id", "is required with the admin token").into())
            }
            Self::Admin { .. } => Ok(merchant_id.to_owned()),
            Self::Merchant(caller) if merchant_id.is_empty() => Ok(caller.merchant_id.clone()),
            Self::Merchant(caller) if caller.acts_for(merchant_id) => Ok(merchant_id.to_owned()),
            Self::Merchant(_) => Err(MerchantError::NotFound),
        }
    }

    /// Whether the principal may see `merchant_id`'s records.
    pub fn sees(&self, merchant_id: &str) -> bool {
        match self {
            Self::Admin { .. } => true,
            Self::Merchant(caller) => caller.acts_for(merchant_id),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CreatedMerchant {
    pub merchant_id: String,
    /// Shown once; only its digest is stored.
    pub api_key: String,
    pub key_id: String,
}

/// The merchant capability: tenants, their keys and allowlists, and authentication.
#[derive(Clone)]
pub struct Merchants {
    db: Db,
    keys: KeyCache,
    /// Live (neither revoked nor expired) API keys one merchant may hold.
    max_live_keys: u32,
}

impl Merchants {
    pub fn new(db: Db, keys: KeyCache, max_live_keys: u32) -> Self {
        Self { db, keys, max_live_keys }
    }

    pub fn key_cache(&self) -> &KeyCache {
        &self.keys
    }

    /// A merchant (or, with `parent_id`, a sub-merchant) and its first API key, named "initial".
    pub async fn create_merchant(
        &self,
        actor: &Actor,
        name: &str,
        parent_id: Option<&str>,
    ) -> Result<CreatedMerchant, MerchantError> {
        let name = validate_name("name", name)?;
        if let Some(parent) = parent_id {
            let grandparent =
                sqlx::query_scalar::<_, Option<String>>("SELECT parent_id FROM merchants WHERE merchant_id = $1")
                    .bind(parent)
                    .fetch_optional(self.db.pool())
                    .await?
                    .ok_or(MerchantError::NotFound)?;
            if grandparent.is_some() {
                return Err(MerchantError::NestedSubMerchant(parent.to_owned()));
            }
        }
        let merchant_id = format!("mer_{}", ulid::Ulid::new());
        let now = now_ms();
        let mut tx = self.db.pool().begin().await?;
        sqlx::query("INSERT INTO merchants (merchant_id, name, parent_id, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&merchant_id)
            .bind(name)
            .bind(parent_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let action = if parent_id.is_some() { Action::SubMerchantCreated } else { Action::MerchantCreated };
        let entry = audit::Entry {
            actor,
            action,
            merchant_id: Some(&merchant_id),
            target: &merchant_id,
            changed_fields: &["name", "parent_merchant_id"][..if parent_id.is_some() { 2 } else { 1 }],
        };
        audit::record(&mut tx, &entry, now).await?;
        let created = keys::insert(&mut tx, actor, &merchant_id, &keys::NewApiKey::named("initial"), now).await?;
        tx.commit().await?;
        if let Some(parent) = parent_id {
            // The parent's cached keys must start acting for the new sub-merchant.
            self.keys.invalidate(parent);
        }
        Ok(CreatedMerchant { merchant_id, api_key: created.secret, key_id: created.key.key_id })
    }

    pub async fn create_api_key(
        &self,
        actor: &Actor,
        merchant_id: &str,
        new: &keys::NewApiKey,
    ) -> Result<keys::CreatedApiKey, MerchantError> {
        let now = now_ms();
        new.validate(now)?;
        let mut tx = self.db.pool().begin().await?;
        // Takes the merchant's row (SQLite: the database) for writing first, so concurrent creations
        // count one after another and none passes the cap.
        let exists = sqlx::query("UPDATE merchants SET merchant_id = merchant_id WHERE merchant_id = $1")
            .bind(merchant_id)
            .execute(&mut *tx)
            .await?;
        if exists.rows_affected() == 0 {
            return Err(MerchantError::NotFound);
        }
        if keys::count_live(&mut tx, merchant_id, now).await? >= i64::from(self.max_live_keys) {
            return Err(MerchantError::TooManyKeys { merchant_id: merchant_id.to_owned(), limit: self.max_live_keys });
        }
        let created = keys::insert(&mut tx, actor, merchant_id, new, now).await?;
        tx.commit().await?;
        Ok(created)
    }

    pub async fn list_api_keys(&self, filter: &keys::ListFilter) -> Result<Vec<ApiKey>, MerchantError> {
        Ok(keys::list(&self.db, filter).await?)
    }

    pub async fn get_api_key(&self, key_id: &str) -> Result<ApiKey, MerchantError> {
        keys::get(&self.db, key_id).await?.ok_or(MerchantError::KeyNotFound)
    }

    /// Revokes a key (again: a no-op, which neither audits nor touches any cache). Every replica
    /// refuses it once this returns and the invalidation reached it: milliseconds with Redis, the
    /// cache TTL without.
    pub async fn revoke_api_key(&self, actor: &Actor, key: &ApiKey) -> Result<ApiKey, MerchantError> {
        let now = now_ms();
        let mut tx = self.db.pool().begin().await?;
        let revoked = keys::revoke(&mut tx, &key.key_id, now).await?;
        if revoked {
            let entry = audit::Entry {
                actor,
                action: Action::ApiKeyRevoked,
                merchant_id: Some(&key.merchant_id),
                target: &key.key_id,
                changed_fields: &["revoked_at"],
            };
            audit::record(&mut tx, &entry, now).await?;
        }
        tx.commit().await?;
        if revoked {
            self.keys.invalidate(&key.merchant_id);
        }
        self.get_api_key(&key.key_id).await
    }

    pub async fn get_allowlist(&self, merchant_id: &str) -> Result<Allowlist, MerchantError> {
        allowlist::get(&self.db, merchant_id).await
    }

    pub async fn set_allowlist(
        &self,
        actor: &Actor,
        merchant_id: &str,
        blocks: &[ipnet::IpNet],
    ) -> Result<Allowlist, MerchantError> {
        if allowlist::set(&self.db, actor, merchant_id, blocks).await? {
            self.keys.invalidate(merchant_id);
        }
        self.get_allowlist(merchant_id).await
    }

    /// Resolves a bearer API key used from `address` to the merchant it acts for.
    pub async fn authenticate(&self, api_key: &str, address: IpAddr) -> Result<Caller, AuthError> {
        self.keys.authenticate(api_key, address).await
    }
}

fn validate_name<'a>(field: &str, name: &'a str) -> Result<&'a str, InvalidArgument> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME || name.chars().any(char::is_control) {
        return Err(InvalidArgument::single(field, format!("must be 1 to {MAX_NAME} printable characters")));
    }
    Ok(name)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer_token(Some("Bearer pgk_x")).unwrap(), "pgk_x");
        assert!(matches!(bearer_token(None), Err(AuthError::Missing)));
        assert!(matches!(bearer_token(Some("Basic abc")), Err(AuthError::Malformed)));
        assert!(matches!(bearer_token(Some("Bearer ")), Err(AuthError::Malformed)));
    }

    fn caller(merchant_id: &str, scope: &[&str]) -> Caller {
        Caller {
            merchant_id: merchant_id.into(),
            top_merchant_id: merchant_id.into(),
            scope: scope.iter().map(|s| s.to_string()).collect(),
            key_id: "key_1".into(),
            address: "127.0.0.1".parse().unwrap(),
            key_state: None,
        }
    }

    #[test]
    fn a_key_targets_itself_and_its_sub_merchants_only() {
        let parent = Principal::Merchant(caller("mer_p", &["mer_p", "mer_s"]));
        assert_eq!(parent.target("").unwrap(), "mer_p");
        assert_eq!(parent.target("mer_s").unwrap(), "mer_s");
        assert!(matches!(parent.target("mer_other"), Err(MerchantError::NotFound)));
        let sub = Principal::Merchant(caller("mer_s", &["mer_s"]));
        assert!(matches!(sub.target("mer_p"), Err(MerchantError::NotFound)));
        let admin = Principal::Admin { address: "127.0.0.1".parse().unwrap() };
        assert_eq!(admin.target("mer_any").unwrap(), "mer_any");
        assert!(matches!(admin.target(""), Err(MerchantError::Invalid(_))));
        assert!(matches!(sub.require_admin("CreateMerchant"), Err(MerchantError::AdminOnly(_))));
    }
}
