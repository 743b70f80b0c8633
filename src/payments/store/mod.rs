//! The payments' SQL, and nothing else: the payment rows, cancellations, subscriptions, raw
//! pingbacks, the event log with each change's event and webhook, and idempotency keys.

pub mod cancellations;
pub mod cas;
pub mod changes;
pub mod deliveries;
pub mod erasure;
pub mod event_log;
pub mod idempotency;
pub mod payments;
pub mod pingbacks;
pub mod reversal;
pub mod subscriptions;
