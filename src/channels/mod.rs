//! Payment channels: one set of provider credentials each, owned by a merchant or assigned to one
//! of its sub-merchants. The credentials are their provider's config (`config`), secrets encrypted
//! at rest (`secrets`); configs are cached (`cache`). The capability itself is `service`; what goes
//! wrong, `error`.

pub mod cache;
pub mod config;
mod error;
pub mod model;
pub mod repo;
mod service;

pub use cache::ChannelCache;
pub use error::ChannelError;
pub use model::{Channel, ChannelMode, NewChannel};
pub use service::{ChannelPatch, Channels, Deleted, UPDATABLE_PATHS, rotate_master_key, verify_master_key};
