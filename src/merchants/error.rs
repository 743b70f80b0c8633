//! What can go wrong when authenticating or managing merchants; errors convert themselves.

use std::{net::IpAddr, time::Duration};

use super::client_tokens;
use crate::{
    net::client_ip::{self, Shown},
    store::StoreError,
    validation::InvalidArgument,
};

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
    let fix = if client_ip::is_unknown(address) {
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
