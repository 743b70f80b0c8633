//! Payment channels: one set of provider credentials each, owned by a merchant.

pub mod model;
pub mod repo;

pub use model::{Channel, ChannelMode, NewChannel, PaymentwallConfig, Provider};

use crate::{error::InvalidArgument, store::StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    #[error("channel not found")]
    NotFound,
    #[error("channel_key already taken")]
    KeyTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored channel is unreadable: {0}")]
    Corrupt(String),
}
