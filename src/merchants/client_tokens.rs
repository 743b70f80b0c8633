//! Payment client tokens: a credential for one payment that a merchant may hand to the buyer's
//! browser. Stateless: `pct_<payload>.<tag>`, the payload (payment, merchant, issuing key, issue
//! time, expiry) tagged under the master key, so any replica verifies it without a lookup. It is
//! refused once it expires, when it claims to live longer than the longest lifetime configured,
//! and once the key that issued it is revoked or expires.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

use crate::secrets::MasterKeys;

pub const PREFIX: &str = "pct_";
/// Longer is not a token paygate made (they are about 250 characters); refused before any HMAC.
const MAX_LEN: usize = 1024;
const PURPOSE: &str = "payment client token v1";
/// How far ahead of this replica's clock another replica's may run when it issues a token.
const CLOCK_SKEW_MS: i64 = 30_000;
/// A token stream's cursors: sealed (encrypted) positions in the event log, bound to the payment.
const CURSOR_PURPOSE: &str = "payment client token cursor v1";
pub const CURSOR_PREFIX: &str = "pcc_";

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
    /// Unix milliseconds. Tokens of releases before it had none (they expired within the
    /// maximum lifetime of their issue, so the cap then runs from the time of the check).
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<i64>,
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
    #[error("payment client token claims a longer life than a token may have")]
    TooLong,
}

pub fn issue(keys: &MasterKeys, grant: &PaymentGrant) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(grant).expect("a grant serializes"));
    let tag = keys.tag(PURPOSE, payload.as_bytes());
    format!("{PREFIX}{payload}.{tag}")
}

/// The grant a token carries, if its tag verifies under a configured master key, it has not
/// expired at `now`, and it lives no longer than `max_ttl_ms` from its issue (a token paygate
/// made never does: one that claims more was not made by this configuration).
pub fn verify(keys: &MasterKeys, token: &str, now: i64, max_ttl_ms: i64) -> Result<PaymentGrant, TokenError> {
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
    // Issued by now (give or take the replicas' clocks), for no longer than the maximum; a token
    // of the previous release (no issue time) has at most the maximum left.
    let latest_issue = now.saturating_add(CLOCK_SKEW_MS);
    let too_long = match grant.issued_at {
        Some(at) => at > latest_issue || grant.expires_at > at.saturating_add(max_ttl_ms),
        None => grant.expires_at > latest_issue.saturating_add(max_ttl_ms),
    };
    if too_long {
        return Err(TokenError::TooLong);
    }
    Ok(grant)
}

/// The cursor a token stream shows for an event-log position: sealed, so it says nothing about
/// the log (other merchants' activity), and bound to its payment.
pub fn seal_cursor(keys: &MasterKeys, payment_id: &str, position: &str) -> String {
    let purpose = format!("{CURSOR_PURPOSE}:{payment_id}");
    format!("{CURSOR_PREFIX}{}", keys.seal(&purpose, position.as_bytes()))
}

/// The position a cursor of `seal_cursor` holds, if it was sealed for this payment.
pub fn open_cursor(keys: &MasterKeys, payment_id: &str, cursor: &str) -> Option<String> {
    let sealed = cursor.strip_prefix(CURSOR_PREFIX)?;
    let plain = keys.open(&format!("{CURSOR_PURPOSE}:{payment_id}"), sealed)?;
    String::from_utf8(plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::KeySources;

    const MAX_TTL: i64 = 900_000;

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
            issued_at: Some(0),
            expires_at: 1000,
        }
    }

    #[test]
    fn a_token_carries_its_grant_until_it_expires() {
        let keys = keys(&MasterKeys::generate());
        let token = issue(&keys, &grant());
        assert!(token.starts_with(PREFIX));
        assert_eq!(verify(&keys, &token, 999, MAX_TTL), Ok(grant()));
        assert_eq!(verify(&keys, &token, 1000, MAX_TTL), Err(TokenError::Expired));
    }

    #[test]
    fn an_altered_or_foreign_token_is_refused() {
        let keys_a = keys(&MasterKeys::generate());
        let token = issue(&keys_a, &grant());
        let other = PaymentGrant { payment_id: "pay_2".into(), ..grant() };
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        let tag = token.split_once('.').unwrap().1;
        let forged = format!("{PREFIX}{forged_payload}.{tag}");
        assert_eq!(verify(&keys_a, &forged, 0, MAX_TTL), Err(TokenError::Malformed));
        assert_eq!(
            verify(&keys(&MasterKeys::generate()), &token, 0, MAX_TTL),
            Err(TokenError::Malformed),
            "another deployment's"
        );
        let long = format!("{token}{}", "0".repeat(MAX_LEN));
        for junk in ["", "pct_", "pct_.", "pct_abc", "pgk_x.y", long.as_str()] {
            assert_eq!(verify(&keys_a, junk, 0, MAX_TTL), Err(TokenError::Malformed), "{junk:?}");
        }
    }

    #[test]
    fn the_tag_is_accepted_in_its_lower_case_hex_only() {
        let keys = keys(&MasterKeys::generate());
        let token = issue(&keys, &grant());
        let (body, hex_tag) = token.rsplit_once(':').unwrap();
        assert!(hex_tag.chars().any(|c| c.is_ascii_alphabetic()), "a tag with letters in it: {hex_tag}");
        let upper = format!("{body}:{}", hex_tag.to_ascii_uppercase());
        assert_eq!(verify(&keys, &upper, 0, MAX_TTL), Err(TokenError::Malformed));
        assert_eq!(verify(&keys, &token, 0, MAX_TTL), Ok(grant()));
    }

    #[test]
    fn a_token_may_live_no_longer_than_the_maximum_from_its_issue() {
        let keys = keys(&MasterKeys::generate());
        let now = 1_700_000_000_000;
        let at = |issued_at: Option<i64>, expires_at: i64| {
            let grant = PaymentGrant { issued_at, expires_at, ..grant() };
            verify(&keys, &issue(&keys, &grant), now, MAX_TTL).map(|_| ())
        };
        assert_eq!(at(Some(now), now + MAX_TTL), Ok(()), "the longest a token may live");
        assert_eq!(at(Some(now - 1000), now + MAX_TTL - 1000), Ok(()));
        assert_eq!(at(Some(now), now + MAX_TTL + 1), Err(TokenError::TooLong));
        // The year 2100, as a forger with a leaked test key would ask for.
        assert_eq!(at(Some(now), 4_102_444_800_000), Err(TokenError::TooLong));
        assert_eq!(at(Some(4_102_444_800_000 - MAX_TTL), 4_102_444_800_000), Err(TokenError::TooLong), "issued later");
        assert_eq!(at(Some(now + 5_000), now + 5_000 + MAX_TTL), Ok(()), "a replica's clock a little ahead");
        // The previous release's tokens have no issue time: at most the maximum left.
        assert_eq!(at(None, now + MAX_TTL), Ok(()));
        assert_eq!(at(None, 4_102_444_800_000), Err(TokenError::TooLong));
    }

    #[test]
    fn a_token_of_the_previous_release_still_verifies() {
        let keys = keys(&MasterKeys::generate());
        // The payload as the previous release wrote it: no "i".
        let payload = URL_SAFE_NO_PAD.encode(br#"{"p":"pay_1","m":"mer_1","k":"key_1","e":1000}"#);
        let token = format!("{PREFIX}{payload}.{}", keys.tag(PURPOSE, payload.as_bytes()));
        assert_eq!(verify(&keys, &token, 999, MAX_TTL), Ok(PaymentGrant { issued_at: None, ..grant() }));
    }

    #[test]
    fn a_cursor_is_sealed_to_its_payment() {
        let keys = keys(&MasterKeys::generate());
        let cursor = seal_cursor(&keys, "pay_1", "1234-5678");
        assert!(cursor.starts_with(CURSOR_PREFIX) && !cursor.contains("1234") && !cursor.contains("5678"), "{cursor}");
        assert_eq!(open_cursor(&keys, "pay_1", &cursor).as_deref(), Some("1234-5678"));
        assert_eq!(open_cursor(&keys, "pay_2", &cursor), None, "another payment's");
        assert_eq!(open_cursor(&self::keys(&MasterKeys::generate()), "pay_1", &cursor), None, "another deployment's");
        for junk in ["", "pcc_", "pcc_AAAA", "1234-5678", &cursor[..cursor.len() - 1]] {
            assert_eq!(open_cursor(&keys, "pay_1", junk), None, "{junk:?}");
        }
    }
}
