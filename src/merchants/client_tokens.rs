//! Payment client tokens: a credential for one payment that a merchant may hand to the buyer's
//! browser. Stateless: `pct_<payload>.<tag>`, the payload (payment, merchant, issuing key, expiry)
//! tagged under the master key, so any replica verifies it without a lookup. It is refused once
//! it expires or once the key that issued it is revoked or expires.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

use crate::secrets::MasterKeys;

pub const PREFIX: &str = "pct_";
/// Longer is not a token paygate made (they are about 250 characters); refused before any HMAC.
const MAX_LEN: usize = 1024;
const PURPOSE: &str = "payment client token v1";

/// What a client token lets its holder read: one payment of one merchant, until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentGrant {
    #[serde(rename = "p")]
    pub payment_id: String,
    #[serde(rename = "m")]
    pub merchant_id: String,
    /// The API key that issued it: the grant lives no longer than that key.
    #[serde(rename = "k")]
    pub key_id: String,
    /// Unix milliseconds.
    #[serde(rename = "e")]
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed payment client token")]
    Malformed,
    #[error("payment client token has expired")]
    Expired,
}

pub fn issue(keys: &MasterKeys, grant: &PaymentGrant) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(grant).expect("a grant serializes"));
    let tag = keys.tag(PURPOSE, payload.as_bytes());
    format!("{PREFIX}{payload}.{tag}")
}

/// The grant a token carries, if its tag verifies under a configured master key and it has not
/// expired at `now`.
pub fn verify(keys: &MasterKeys, token: &str, now: i64) -> Result<PaymentGrant, TokenError> {
    if token.len() > MAX_LEN {
        return Err(TokenError::Malformed);
    }
    let (payload, tag) = token.strip_prefix(PREFIX).and_then(|t| t.split_once('.')).ok_or(TokenError::Malformed)?;
    if !keys.verify_tag(PURPOSE, payload.as_bytes(), tag) {
        return Err(TokenError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
    let grant: PaymentGrant = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    if grant.expires_at <= now {
        return Err(TokenError::Expired);
    }
    Ok(grant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::KeySources;

    fn keys(key: &str) -> MasterKeys {
        let key = secrecy::SecretString::from(key.to_owned());
        let sources =
            KeySources { master_key: Some(&key), master_key_file: None, previous: None, embedded_database: None };
        MasterKeys::load(&sources).unwrap()
    }

    fn grant() -> PaymentGrant {
        PaymentGrant {
            payment_id: "pay_1".into(),
            merchant_id: "mer_1".into(),
            key_id: "key_1".into(),
            expires_at: 1000,
        }
    }

    #[test]
    fn a_token_carries_its_grant_until_it_expires() {
        let keys = keys(&MasterKeys::generate());
        let token = issue(&keys, &grant());
        assert!(token.starts_with(PREFIX));
        assert_eq!(verify(&keys, &token, 999), Ok(grant()));
        assert_eq!(verify(&keys, &token, 1000), Err(TokenError::Expired));
    }

    #[test]
    fn an_altered_or_foreign_token_is_refused() {
        let keys_a = keys(&MasterKeys::generate());
        let token = issue(&keys_a, &grant());
        let other = PaymentGrant { payment_id: "pay_2".into(), ..grant() };
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        let tag = token.split_once('.').unwrap().1;
        assert_eq!(verify(&keys_a, &format!("{PREFIX}{forged_payload}.{tag}"), 0), Err(TokenError::Malformed));
        assert_eq!(
            verify(&keys(&MasterKeys::generate()), &token, 0),
            Err(TokenError::Malformed),
            "another deployment's"
        );
        let long = format!("{token}{}", "0".repeat(MAX_LEN));
        for junk in ["", "pct_", "pct_.", "pct_abc", "pgk_x.y", long.as_str()] {
            assert_eq!(verify(&keys_a, junk, 0), Err(TokenError::Malformed), "{junk:?}");
        }
    }
}
