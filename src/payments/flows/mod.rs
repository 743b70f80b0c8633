//! What the API and the pingback endpoint ask of payments, each flow reading what it needs once,
//! deciding with `core`, writing with `store`: a checkout, a refund (and its resolution), a
//! notification, cancelling a subscription, the sweep of stuck payments, the payment methods.
//! The two most frequent writes go through the ports in `writers`.

pub mod checkout;
pub mod methods;
pub mod notification;
pub mod refund;
pub mod subscription;
pub mod sweep;
pub mod writers;
