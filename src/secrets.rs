//! Secrets at rest (channel secret keys, webhook signing secrets): AES-256-GCM under a master key from configuration. The stored form
//! names the key that wrote it (`pgenc:v1:<key id>:<base64 nonce+ciphertext>`), so a master key can
//! be rotated: old keys stay readable while listed as previous keys, and `paygate admin
//! rotate-master-key` re-encrypts everything under the current one. The channel key is bound in as
//! associated data, so a ciphertext copied onto another channel's row does not decrypt.

use std::path::{Path, PathBuf};

use aes_gcm::{
    Aes256Gcm, Nonce,
    aead::{Aead, AeadCore, KeyInit, OsRng, Payload},
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

const PREFIX: &str = "pgenc:v1:";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "a master key is required with PostgreSQL: set PAYGATE_MASTER_KEY (base64 of 32 bytes) or PAYGATE_MASTER_KEY_FILE"
    )]
    Missing,
    #[error("{0} must be the base64 encoding of exactly 32 bytes")]
    Invalid(&'static str),
    #[error("master key file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("stored secret is not in the pgenc:v1 format")]
    Format,
    #[error("stored secret was encrypted with master key {0}, which is not configured")]
    UnknownKey(String),
    #[error("stored secret does not decrypt with master key {0} (wrong key or tampered row)")]
    Decrypt(String),
}

struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
    /// Derived from the master key, for authenticating records kept outside the database.
    mac_key: [u8; 32],
}

impl MasterKey {
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let cipher = Aes256Gcm::new_from_slice(bytes).ok()?;
        // A short digest names the key in stored rows and messages without revealing it.
        let digest = Sha256::new().chain_update(b"paygate master key id:").chain_update(bytes).finalize();
        let mac_key = Sha256::new().chain_update(b"paygate cache mac key:").chain_update(bytes).finalize().into();
        Some(Self { id: hex::encode(&digest[..4]), cipher, mac_key })
    }

    fn from_base64(encoded: &str, what: &'static str) -> Result<Self, KeyError> {
        let bytes = STANDARD.decode(encoded.trim()).map_err(|_| KeyError::Invalid(what))?;
        if bytes.len() != 32 {
            return Err(KeyError::Invalid(what));
        }
        Self::from_bytes(&bytes).ok_or(KeyError::Invalid(what))
    }
}

/// The current master key and any previous ones. Holds no printable key material.
pub struct MasterKeys {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeys").field("current", &self.current.id).finish_non_exhaustive()
    }
}

/// Where the master keys come from, as configured.
pub struct KeySources<'a> {
    /// `PAYGATE_MASTER_KEY`: base64 of 32 bytes.
    pub master_key: Option<&'a SecretString>,
    /// `PAYGATE_MASTER_KEY_FILE`: a file holding it.
    pub master_key_file: Option<&'a Path>,
    /// `PAYGATE_PREVIOUS_MASTER_KEYS`: comma-separated, readable during a rotation.
    pub previous: Option<&'a SecretString>,
    /// The embedded SQLite database: without a key configured, one is generated beside it.
    pub embedded_database: Option<PathBuf>,
}

impl MasterKeys {
    /// The configured key, else the key file, else (SQLite only) a key file beside the database,
    /// generated on first use.
    pub fn load(sources: &KeySources<'_>) -> Result<Self, KeyError> {
        let current = match (sources.master_key, sources.master_key_file, &sources.embedded_database) {
            (Some(key), _, _) => MasterKey::from_base64(key.expose_secret(), "PAYGATE_MASTER_KEY")?,
            (None, Some(path), _) => MasterKey::from_base64(&read_key_file(path)?, "PAYGATE_MASTER_KEY_FILE")?,
            (None, None, Some(db_path)) => embedded_key(db_path)?,
            (None, None, None) => return Err(KeyError::Missing),
        };
        let previous = match sources.previous {
            Some(list) => list
                .expose_secret()
                .split(',')
                .filter(|k| !k.trim().is_empty())
                .map(|k| MasterKey::from_base64(k, "PAYGATE_PREVIOUS_MASTER_KEYS"))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Self { current, previous })
    }

    /// A fresh random key, base64, for `PAYGATE_MASTER_KEY`.
    pub fn generate() -> String {
        STANDARD.encode(Aes256Gcm::generate_key(OsRng))
    }

    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Encrypts `secret` for the channel `channel_key` under the current key.
    pub fn encrypt(&self, channel_key: &str, secret: &SecretString) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload { msg: secret.expose_secret().as_bytes(), aad: channel_key.as_bytes() };
        let ciphertext = self.current.cipher.encrypt(&nonce, payload).expect("AES-GCM encrypts any input under 64 GiB");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        format!("{PREFIX}{}:{}", self.current.id, STANDARD.encode(blob))
    }

    pub fn decrypt(&self, channel_key: &str, stored: &str) -> Result<SecretString, CryptoError> {
        let (key_id, blob) =
            stored.strip_prefix(PREFIX).and_then(|rest| rest.split_once(':')).ok_or(CryptoError::Format)?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        let blob = STANDARD.decode(blob).map_err(|_| CryptoError::Format)?;
        if blob.len() < 12 + 16 {
            return Err(CryptoError::Format);
        }
        let (nonce, ciphertext) = blob.split_at(12);
        let plain = key
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: channel_key.as_bytes() })
            .map_err(|_| CryptoError::Decrypt(key_id.to_owned()))?;
        String::from_utf8(plain).map(SecretString::from).map_err(|_| CryptoError::Decrypt(key_id.to_owned()))
    }

    /// An HMAC-SHA256 tag over `data` for `purpose`, under the current key: "<key id>:<hex>". For
    /// records paygate keeps outside the database (the Redis channel cache), so that write access
    /// to that store alone cannot change what paygate believes.
    pub fn tag(&self, purpose: &str, data: &[u8]) -> String {
        format!("{}:{}", self.current.id, hex::encode(Self::hmac(&self.current, purpose, data)))
    }

    /// Whether `tag` is `data`'s tag for `purpose` under a configured key (constant time).
    pub fn verify_tag(&self, purpose: &str, data: &[u8], tag: &str) -> bool {
        let Some((key_id, hex_tag)) = tag.split_once(':') else { return false };
        let Some(key) = std::iter::once(&self.current).chain(&self.previous).find(|k| k.id == key_id) else {
            return false;
        };
        // Compared as text: the tag is lower-case hex, and no other spelling of it is the tag.
        let expected = hex::encode(Self::hmac(key, purpose, data));
        bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), hex_tag.as_bytes()))
    }

    /// `plain` encrypted for `purpose` under the current key, as URL-safe base64 (nonce and
    /// ciphertext): for values paygate hands out that must reveal nothing and come back unaltered.
    pub fn seal(&self, purpose: &str, plain: &[u8]) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload { msg: plain, aad: purpose.as_bytes() };
        let ciphertext = self.current.cipher.encrypt(&nonce, payload).expect("AES-GCM encrypts any input under 64 GiB");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        URL_SAFE_NO_PAD.encode(blob)
    }

    /// What `seal` sealed for `purpose` under a configured key; `None` for anything else.
    pub fn open(&self, purpose: &str, sealed: &str) -> Option<Vec<u8>> {
        let blob = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if blob.len() < 12 + 16 {
            return None;
        }
        let (nonce, ciphertext) = blob.split_at(12);
        std::iter::once(&self.current).chain(&self.previous).find_map(|key| {
            let payload = Payload { msg: ciphertext, aad: purpose.as_bytes() };
            key.cipher.decrypt(Nonce::from_slice(nonce), payload).ok()
        })
    }

    fn hmac(key: &MasterKey, purpose: &str, data: &[u8]) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.mac_key).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// True when `stored` was written under a key other than the current one.
    pub fn is_stale(&self, stored: &str) -> bool {
        stored.strip_prefix(PREFIX).and_then(|rest| rest.split_once(':')).is_none_or(|(id, _)| id != self.current.id)
    }
}

fn read_key_file(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::File { path: path.to_owned(), source })
}

/// The embedded default: `<database file>.key`, created with a fresh key (mode 0600) when missing.
fn embedded_key(db_path: &Path) -> Result<MasterKey, KeyError> {
    let mut path = db_path.as_os_str().to_owned();
    path.push(".key");
    let path = PathBuf::from(path);
    if path.exists() {
        return MasterKey::from_base64(&read_key_file(&path)?, "the embedded master key file");
    }
    let encoded = MasterKeys::generate();
    write_private(&path, &encoded).map_err(|source| KeyError::File { path: path.clone(), source })?;
    tracing::warn!(
        path = %path.display(),
        "generated a master key for channel secrets beside the SQLite database; keep this file with the \
         database and back it up, or set PAYGATE_MASTER_KEY"
    );
    MasterKey::from_base64(&encoded, "the embedded master key file")
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(current: &str, previous: &[&str]) -> MasterKeys {
        MasterKeys {
            current: MasterKey::from_base64(current, "test").unwrap(),
            previous: previous.iter().map(|k| MasterKey::from_base64(k, "test").unwrap()).collect(),
        }
    }

    #[test]
    fn round_trips_and_never_stores_the_clear_secret() {
        let k = MasterKeys::generate();
        let keys = keys(&k, &[]);
        let secret = SecretString::from("a7408723eaf4bfa2e3ac49b3cb695046");
        let stored = keys.encrypt("ch_1", &secret);
        assert!(stored.starts_with(&format!("pgenc:v1:{}:", keys.current_id())));
        assert!(!stored.contains("a7408723eaf4bfa2e3ac49b3cb695046"));
        assert_ne!(stored, keys.encrypt("ch_1", &secret), "a fresh nonce every time");
        assert_eq!(keys.decrypt("ch_1", &stored).unwrap().expose_secret(), secret.expose_secret());
    }

    #[test]
    fn a_ciphertext_is_bound_to_its_channel() {
        let keys = keys(&MasterKeys::generate(), &[]);
        let stored = keys.encrypt("ch_1", &SecretString::from("s"));
        assert!(matches!(keys.decrypt("ch_2", &stored), Err(CryptoError::Decrypt(_))));
    }

    #[test]
    fn previous_keys_decrypt_until_rotated_and_wrong_keys_say_which_key() {
        let (old, new) = (MasterKeys::generate(), MasterKeys::generate());
        let stored = keys(&old, &[]).encrypt("ch_1", &SecretString::from("s"));
        let rotating = keys(&new, &[&old]);
        assert_eq!(rotating.decrypt("ch_1", &stored).unwrap().expose_secret(), "s");
        assert!(rotating.is_stale(&stored));
        let rewritten = rotating.encrypt("ch_1", &rotating.decrypt("ch_1", &stored).unwrap());
        assert!(!rotating.is_stale(&rewritten));
        let only_new = keys(&new, &[]);
        assert_eq!(only_new.decrypt("ch_1", &rewritten).unwrap().expose_secret(), "s");
        let old_id = keys(&old, &[]).current_id().to_owned();
        assert_eq!(only_new.decrypt("ch_1", &stored).unwrap_err(), CryptoError::UnknownKey(old_id));
    }

    #[test]
    fn malformed_keys_and_rows_are_refused() {
        assert!(MasterKey::from_base64("c2hvcnQ=", "k").is_err());
        assert!(MasterKey::from_base64("not base64!", "k").is_err());
        let keys = keys(&MasterKeys::generate(), &[]);
        assert_eq!(keys.decrypt("ch", "plain-secret").unwrap_err(), CryptoError::Format);
        let id = keys.current_id().to_owned();
        assert_eq!(keys.decrypt("ch", &format!("pgenc:v1:{id}:AAAA")).unwrap_err(), CryptoError::Format);
        assert_eq!(format!("{keys:?}"), format!("MasterKeys {{ current: {id:?}, .. }}"), "Debug names the key only");
    }
}
