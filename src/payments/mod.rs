//! Payments: checkout, the status machine, refunds, subscriptions, idempotency, and applying what
//! providers report. Four floors, each importing only the ones below it:
//! `batch` (speed, switched on by `app.rs`) -> `flows` (read, decide, write) -> `store` (SQL) ->
//! `core` (decisions, pure). `provider` is the port providers implement; `error` what goes wrong.

pub mod batch;
pub mod core;
mod error;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod flows;
pub mod provider;
pub mod store;

pub use core::{Payment, PaymentOutcome, PaymentStatus};
pub use error::{PaymentError, ProviderError};
pub use provider::{Provider, Providers};
