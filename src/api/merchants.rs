//! `paygate.v1.MerchantService`: merchants (admin token), and API keys, allowlists and the audit
//! trail (admin token, or a merchant's key for itself and its sub-merchants).

use tonic::{Request, Response, Status};

use super::{convert, page_size};
use crate::{
    audit::{self, Action},
    merchants::{Allowlist, ApiKey, MerchantError, Merchants, Principal, allowlist, keys},
    proto::v1::{self as pb, merchant_service_server::MerchantService},
    store::Db,
    validation::{self, Violations},
};

pub struct MerchantsApi {
    db: Db,
    merchants: Merchants,
}

impl MerchantsApi {
    pub fn new(db: Db, merchants: Merchants) -> Self {
        Self { db, merchants }
    }
}

/// The principal the auth layer put in the request.
fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing authorization metadata"))
}

fn api_key(k: ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        revoked: k.revoked_at.is_some(),
        key_id: k.key_id,
        merchant_id: k.merchant_id,
        name: k.name,
        key_prefix: k.key_prefix,
        created_at: Some(convert::timestamp(k.created_at)),
        expires_at: k.expires_at.map(convert::timestamp),
        last_used_at: k.last_used_at.map(convert::timestamp),
        revoked_at: k.revoked_at.map(convert::timestamp),
    }
}

fn allowlist_to_proto(a: Allowlist) -> pb::ApiAllowlist {
    pb::ApiAllowlist {
        merchant_id: a.merchant_id,
        cidr_blocks: a.own.iter().map(ToString::to_string).collect(),
        effective_cidr_blocks: a.effective.iter().map(ToString::to_string).collect(),
        inherited_from_merchant_id: a.inherited_from.unwrap_or_default(),
        updated_at: a.updated_at.map(convert::timestamp),
    }
}

fn audit_event(e: audit::AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        audit_id: e.audit_id,
        merchant_id: e.merchant_id.unwrap_or_default(),
        actor: e.actor,
        action: e.action,
        target: e.target,
        changed_fields: e.changed_fields,
        address: e.address,
        created_at: Some(convert::timestamp(e.created_at)),
    }
}

#[tonic::async_trait]
impl MerchantService for MerchantsApi {
    async fn create_merchant(
        &self,
        request: Request<pb::CreateMerchantRequest>,
    ) -> Result<Response<pb::CreateMerchantResponse>, Status> {
        let principal = principal(&request)?;
        principal.require_admin("CreateMerchant")?;
        let created = self.merchants.create_merchant(&principal.actor(), &request.get_ref().name, None).await?;
        tracing::info!(merchant_id = %created.merchant_id, "merchant created");
        Ok(Response::new(pb::CreateMerchantResponse {
            merchant_id: created.merchant_id,
            api_key: created.api_key,
            key_id: created.key_id,
        }))
    }

    async fn create_sub_merchant(
        &self,
        request: Request<pb::CreateSubMerchantRequest>,
    ) -> Result<Response<pb::CreateMerchantResponse>, Status> {
        let principal = principal(&request)?;
        principal.require_admin("CreateSubMerchant")?;
        let r = request.into_inner();
        let mut v = Violations::default();
        validation::identifier(&mut v, "parent_merchant_id", &r.parent_merchant_id, validation::ID);
        v.check()?;
        let created = self.merchants.create_merchant(&principal.actor(), &r.name, Some(&r.parent_merchant_id)).await?;
        tracing::info!(merchant_id = %created.merchant_id, parent = %r.parent_merchant_id, "sub-merchant created");
        Ok(Response::new(pb::CreateMerchantResponse {
            merchant_id: created.merchant_id,
            api_key: created.api_key,
            key_id: created.key_id,
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let principal = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        validation::optional_identifier(&mut v, "merchant_id", &r.merchant_id, validation::ID);
        let expires_at = convert::request_millis(&mut v, "expires_at", r.expires_at.as_ref());
        v.check()?;
        let merchant_id = principal.target(&r.merchant_id)?;
        let new = keys::NewApiKey { name: r.name, expires_at };
        let created = self.merchants.create_api_key(&principal.actor(), &merchant_id, &new).await?;
        tracing::info!(%merchant_id, key_id = %created.key.key_id, "api key created");
        Ok(Response::new(pb::CreateApiKeyResponse { api_key: created.secret, key: Some(api_key(created.key)) }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let principal = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        validation::optional_identifier(&mut v, "merchant_id", &r.merchant_id, validation::ID);
        let after_key_id = convert::page_token::decode(&r.page_token).unwrap_or_else(|e| {
            v.add("page_token", e.0.iter().next().map(|f| f.description.clone()).unwrap_or_default());
            None
        });
        v.check()?;
        let merchant_id = principal.target(&r.merchant_id)?;
        let limit = page_size(r.page_size);
        let filter =
            keys::ListFilter { merchant_id, include_revoked: r.include_revoked, after_key_id, limit: limit + 1 };
        let keys = self.merchants.list_api_keys(&filter).await?;
        let (keys, next_page_token) = super::page(keys, limit, |k| k.key_id.clone());
        Ok(Response::new(pb::ListApiKeysResponse { keys: keys.into_iter().map(api_key).collect(), next_page_token }))
    }

    async fn revoke_api_key(&self, request: Request<pb::RevokeApiKeyRequest>) -> Result<Response<pb::ApiKey>, Status> {
        let principal = principal(&request)?;
        let key_id = &request.get_ref().key_id;
        let mut v = Violations::default();
        validation::identifier(&mut v, "key_id", key_id, validation::ID);
        v.check()?;
        let key = self.merchants.get_api_key(key_id).await?;
        if !principal.sees(&key.merchant_id) {
            return Err(MerchantError::KeyNotFound.into());
        }
        let revoked = self.merchants.revoke_api_key(&principal.actor(), &key).await?;
        tracing::info!(key_id = %revoked.key_id, merchant_id = %revoked.merchant_id, "api key revoked");
        Ok(Response::new(api_key(revoked)))
    }

    async fn set_api_allowlist(
        &self,
        request: Request<pb::SetApiAllowlistRequest>,
    ) -> Result<Response<pb::ApiAllowlist>, Status> {
        let principal = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        validation::optional_identifier(&mut v, "merchant_id", &r.merchant_id, validation::ID);
        v.check()?;
        let blocks = allowlist::parse(&r.cidr_blocks)?;
        let merchant_id = principal.target(&r.merchant_id)?;
        // A key must not shut its own merchant out; the admin token is never subject to a list.
        if let Principal::Merchant(caller) = &principal
            && caller.merchant_id == merchant_id
            && !allowlist::allows(&blocks, caller.address)
        {
            return Err(MerchantError::WouldLockOut(caller.address).into());
        }
        let list = self.merchants.set_allowlist(&principal.actor(), &merchant_id, &blocks).await?;
        tracing::info!(%merchant_id, blocks = blocks.len(), "api allowlist set");
        Ok(Response::new(allowlist_to_proto(list)))
    }

    async fn get_api_allowlist(
        &self,
        request: Request<pb::GetApiAllowlistRequest>,
    ) -> Result<Response<pb::ApiAllowlist>, Status> {
        let principal = principal(&request)?;
        let mut v = Violations::default();
        validation::optional_identifier(&mut v, "merchant_id", &request.get_ref().merchant_id, validation::ID);
        v.check()?;
        let merchant_id = principal.target(&request.get_ref().merchant_id)?;
        Ok(Response::new(allowlist_to_proto(self.merchants.get_allowlist(&merchant_id).await?)))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let principal = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        validation::optional_identifier(&mut v, "merchant_id", &r.merchant_id, validation::ID);
        let action = match r.action.as_str() {
            "" => None,
            name => Action::parse(name).or_else(|| {
                let known: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                v.add("action", format!("unknown action (known: {})", known.join(", ")));
                None
            }),
        };
        let before_id = convert::page_token::decode(&r.page_token).unwrap_or_else(|e| {
            v.add("page_token", e.0.iter().next().map(|f| f.description.clone()).unwrap_or_default());
            None
        });
        let from_ms = convert::request_millis(&mut v, "start_time", r.start_time.as_ref());
        let until_ms = convert::request_millis(&mut v, "end_time", r.end_time.as_ref());
        if let (Some(from), Some(until)) = (from_ms, until_ms)
            && until <= from
        {
            v.add("end_time", "must be after start_time");
        }
        v.check()?;
        let (scope_of, merchant_id) = match (&principal, r.merchant_id.as_str()) {
            (Principal::Admin { .. }, "") => (None, None),
            (Principal::Admin { .. }, id) => (None, Some(id.to_owned())),
            (Principal::Merchant(caller), "") => (Some(caller.merchant_id.clone()), None),
            (Principal::Merchant(_), id) => (None, Some(principal.target(id)?)),
        };
        let limit = page_size(r.page_size);
        let filter =
            audit::ListFilter { scope_of, merchant_id, action, from_ms, until_ms, before_id, limit: limit + 1 };
        let events = audit::list(&self.db, &filter).await?;
        let (events, next_page_token) = super::page(events, limit, |e| e.audit_id.clone());
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.into_iter().map(audit_event).collect(),
            next_page_token,
        }))
    }
}
