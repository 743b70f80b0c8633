//! Payments: checkout, the status machine, refunds, subscriptions, idempotency, and applying what
//! providers report.

pub mod cancellations;
mod changes;
pub mod checkout;
mod error;
pub mod event_log;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod group_commit;
pub mod idempotency;
pub mod methods;
pub mod model;
pub mod money;
pub mod notifications;
pub mod provider;
pub mod recent;
pub mod refunds;
pub mod repo;
pub mod status;
pub mod subscriptions;
pub mod sweep;

pub use model::Payment;
pub use status::{PaymentOutcome, PaymentStatus};

pub use provider::{Provider, ProviderError, Providers};

pub use changes::{Change, ChangeStatement, record, record_all, record_update};
pub use error::PaymentError;
