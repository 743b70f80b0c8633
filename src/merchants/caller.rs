//! Who is calling, and for which merchants: the caller an API key resolves to, the principal of a
//! MerchantService call, and tenancy written once in SQL.

use std::net::IpAddr;

use super::{AuthError, MerchantError, verified::KeyState};
use crate::{audit::Actor, net::client_ip::Shown, validation::InvalidArgument};

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
