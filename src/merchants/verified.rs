//! A key as verified against the database, and the decisions on it: may it make this call, from
//! this address, now. Pure: the cache that keeps verified keys is `key_cache`.

use std::{
    net::IpAddr,
    sync::{Arc, atomic::AtomicI64},
};

use ipnet::IpNet;

use super::{AuthError, allowlist};
use crate::store::now_ms;

/// A key as read from the database: enough to decide every later call without it.
#[derive(Debug)]
pub(super) struct VerifiedKey {
    pub(super) key_id: String,
    pub(super) merchant_id: String,
    pub(super) parent_id: Option<String>,
    pub(super) scope: Vec<String>,
    pub(super) expires_at: Option<i64>,
    pub(super) revoked: bool,
    /// The merchant's own blocks and its parent's: a call must pass both.
    pub(super) allowlist: Vec<IpNet>,
    pub(super) parent_allowlist: Vec<IpNet>,
    /// The invalidation count when it was read from the database, and when (Unix ms): it is good
    /// while no invalidation of its merchant (or parent) came since, and for at most the TTL.
    pub(super) generation: u64,
    pub(super) read_at: i64,
    pub(super) last_touched: AtomicI64,
}

/// What a long-lived session (an open stream) re-checks about the key it was opened with: the key
/// as authentication found it, and the address the session was opened from.
#[derive(Debug, Clone)]
pub struct KeyState {
    pub(super) key: Arc<VerifiedKey>,
    pub(super) address: IpAddr,
}

impl PartialEq for KeyState {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.key, &other.key) && self.address == other.address
    }
}

impl Eq for KeyState {}

/// Whether a verified key may make this call now.
pub(super) fn decide(key: &VerifiedKey, address: IpAddr, now: i64) -> Result<(), AuthError> {
    if let Some(refusal) = refused_at(key, now) {
        return Err(refusal);
    }
    if !allowlist::admits(&key.allowlist, &key.parent_allowlist, address) {
        return Err(AuthError::AddressNotAllowed(address.to_canonical()));
    }
    Ok(())
}

/// Why the key itself acts no more (revoked or expired), wherever it is used from.
pub(super) fn refused(key: &VerifiedKey) -> Option<AuthError> {
    refused_at(key, now_ms())
}

fn refused_at(key: &VerifiedKey, now: i64) -> Option<AuthError> {
    if key.revoked {
        Some(AuthError::Revoked(key.key_id.clone()))
    } else if key.expires_at.is_some_and(|at| at <= now) {
        Some(AuthError::Expired(key.key_id.clone()))
    } else {
        None
    }
}

#[cfg(test)]
impl VerifiedKey {
    /// A key of `mer_1`, read at invalidation 0 and time 0.
    pub(super) fn example(revoked: bool, expires_at: Option<i64>, allowlist: &[&str]) -> Self {
        Self {
            key_id: "key_1".into(),
            merchant_id: "mer_1".into(),
            parent_id: None,
            scope: vec!["mer_1".into()],
            expires_at,
            revoked,
            allowlist: allowlist.iter().map(|n| n.parse().unwrap()).collect(),
            parent_allowlist: Vec::new(),
            generation: 0,
            read_at: 0,
            last_touched: AtomicI64::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_expired_and_outside_keys_are_refused_in_that_order() {
        let here: IpAddr = "127.0.0.2".parse().unwrap();
        let elsewhere: IpAddr = "127.0.0.3".parse().unwrap();
        assert!(decide(&VerifiedKey::example(false, None, &[]), elsewhere, 10).is_ok());
        assert!(decide(&VerifiedKey::example(false, Some(11), &["127.0.0.2/32"]), here, 10).is_ok());
        assert!(matches!(decide(&VerifiedKey::example(true, Some(5), &[]), here, 10), Err(AuthError::Revoked(_))));
        assert!(matches!(decide(&VerifiedKey::example(false, Some(10), &[]), here, 10), Err(AuthError::Expired(_))));
        let refused = decide(&VerifiedKey::example(false, None, &["127.0.0.2/32"]), elsewhere, 10).unwrap_err();
        assert_eq!(refused.to_string(), "caller address 127.0.0.3 is not allowed to use this merchant's API keys");
    }
}
