//! What the API and the pingback endpoint ask of payments, each flow reading what it needs once,
//! deciding with `core`, writing with `store`: a checkout, a refund (and its resolution), a
//! notification, cancelling a subscription, the sweep of stuck payments, a sync on demand, the payment methods.
//! The edges hold one `Payments` service (each flow adds its methods in its own file); the two
//! most frequent writes go through the ports in `writers`; idempotency keys are handled once, in
//! `idempotent`, for every flow that takes one.

pub mod checkout;
pub mod client_token;
pub mod delivery;
pub mod erasure;
mod idempotent;
pub mod methods;
pub mod notification;
pub mod queries;
pub mod refund;
mod service;
pub mod subscription;
pub mod sweep;
pub mod sync;
pub mod writers;

pub use service::Payments;
