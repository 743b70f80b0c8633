//! Merchants (tenants) and their sub-merchants, with everything that decides who may act for
//! them: API keys (`keys`), the API allowlist (`allowlist`), the verified-key cache that makes
//! authentication cost no database query per RPC (`key_cache`) and the decisions on a verified key
//! (`verified`), payment client tokens, who a caller is (`caller`), and the capability (`service`).

pub mod allowlist;
mod caller;
pub mod client_tokens;
mod error;
pub mod key_cache;
pub mod keys;
mod service;
mod verified;

pub use allowlist::Allowlist;
pub use caller::{Caller, IN_SCOPE, MERCHANTS_IN_SCOPE, Principal, bearer_token};
pub use error::{AuthError, MerchantError};
pub use key_cache::{KeyCache, KeyWatch};
pub use keys::{ApiKey, MAX_NAME};
pub use service::{CreatedMerchant, Merchants};
pub use verified::KeyState;
