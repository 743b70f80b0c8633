//! The merchant capability: tenants, their keys and allowlists, and authentication. Every change is
//! audited; a change that can refuse a key tells the key cache.

use std::net::IpAddr;

use super::{
    Allowlist, ApiKey, AuthError, Caller, KeyCache, MerchantError, allowlist,
    keys::{self, validate_name},
};
use crate::{
    audit::{self, Action, Actor},
    store::{Db, now_ms},
};

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
