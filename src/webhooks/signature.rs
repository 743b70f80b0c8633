//! Standard Webhooks signatures (docs/paymentwall.md section 6): `v1,` + base64(HMAC-SHA256(key,
//! "{id}.{timestamp}.{body}")), where the key is the base64 part of a `whsec_` secret. Several
//! signatures, space-separated, let receivers verify with either secret during a rotation.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// A fresh secret: `whsec_` + base64 of 24 random bytes.
pub fn new_secret() -> String {
    let mut key = [0u8; 24];
    rand::rng().fill_bytes(&mut key);
    format!("{PREFIX}{}", STANDARD.encode(key))
}

/// The `webhook-signature` entry for one secret; `None` if the secret is malformed.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix(PREFIX)?).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    Some(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_vector() {
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(signature.as_deref(), Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
    }

    #[test]
    fn any_change_changes_the_signature() {
        let secret = new_secret();
        let base = sign(&secret, "msg_1", 1, "{}").unwrap();
        assert_ne!(sign(&secret, "msg_2", 1, "{}").unwrap(), base);
        assert_ne!(sign(&secret, "msg_1", 2, "{}").unwrap(), base);
        assert_ne!(sign(&secret, "msg_1", 1, "{ }").unwrap(), base);
        assert_ne!(sign(&new_secret(), "msg_1", 1, "{}").unwrap(), base);
        assert_eq!(sign("not-a-secret", "msg_1", 1, "{}"), None);
    }
}
