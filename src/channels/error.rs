//! What can go wrong with a channel, in terms the API answers with; errors convert themselves.

use crate::{secrets::CryptoError, store::StoreError, validation::InvalidArgument};

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    #[error("channel not found")]
    NotFound,
    #[error("channel_key already taken")]
    KeyTaken,
    #[error("the channel changed while this update ran; read it again and retry")]
    Conflict,
    /// A sub-merchant may use a channel its parent assigned to it, never change or delete it.
    #[error("channel {channel_key} belongs to merchant {owner_id}; only its owner may change or delete it")]
    NotOwner { channel_key: String, owner_id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("channel secret: {0}")]
    Crypto(#[from] CryptoError),
    #[error("stored channel is unreadable: {0}")]
    Corrupt(String),
    /// At start-up: stored secrets that the configured master keys cannot open.
    #[error(
        "{failed} of {total} channel secrets cannot be decrypted with the configured master key (current key id \
         {key_id}); first: channel {channel_key}: {error}. Set PAYGATE_MASTER_KEY to the key they were written \
         with, or list it in PAYGATE_PREVIOUS_MASTER_KEYS while rotating"
    )]
    WrongMasterKey { failed: usize, total: usize, key_id: String, channel_key: String, error: CryptoError },
    #[error("channel {channel_key}: {error}")]
    SecretUnreadable { channel_key: String, error: CryptoError },
}

impl From<sqlx::Error> for ChannelError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl ChannelError {
    /// A copy of an error shared by every request that waited on the same cache load.
    pub(super) fn clone_shared(e: &ChannelError) -> ChannelError {
        match e {
            Self::Invalid(i) => Self::Invalid(i.clone()),
            Self::NotFound => Self::NotFound,
            Self::KeyTaken => Self::KeyTaken,
            Self::Conflict => Self::Conflict,
            Self::NotOwner { channel_key, owner_id } => {
                Self::NotOwner { channel_key: channel_key.clone(), owner_id: owner_id.clone() }
            }
            Self::Store(StoreError::Unavailable(inner)) => {
                Self::Store(StoreError::Unavailable(sqlx::Error::Protocol(inner.to_string())))
            }
            Self::Store(StoreError::InvalidValue(inner)) => {
                Self::Store(StoreError::InvalidValue(sqlx::Error::Protocol(inner.to_string())))
            }
            Self::Store(other) => Self::Corrupt(other.to_string()),
            Self::Crypto(c) => Self::Crypto(c.clone()),
            // Start-up and CLI errors, never shared by a cache load.
            other @ (Self::Corrupt(_) | Self::WrongMasterKey { .. } | Self::SecretUnreadable { .. }) => {
                Self::Corrupt(other.to_string())
            }
        }
    }
}
