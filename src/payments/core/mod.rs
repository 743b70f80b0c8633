//! The decisions, pure (no SQL, no I/O, no clock of their own): the payment and its money, the
//! status machine, what a checkout makes, what a notice does, refund and reversal planning, the
//! subscription rules, and what asking the provider teaches. The flows read, call these, and write; the tests here need nothing.

/// `as_str` and `parse` for an enum of fixed words (how a column or the wire spells each variant).
macro_rules! string_enum {
    ($t:ty { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $s),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

pub mod cancellation;
pub mod checkout;
pub mod delivery;
pub mod erasure;
pub mod event;
pub mod model;
pub mod money;
pub mod notice;
pub mod notification;
pub mod refund;
pub mod risk_profile;
pub mod status;
pub mod subscription;
pub mod sync;

pub use cancellation::{Cancellation, CancellationStatus, TicketState, Trigger, new_cancellation_id};
pub use event::{Event, EventDetail, EventKind, Position};
pub use model::{Payment, new_payment_id};
pub use status::{PaymentOutcome, PaymentStatus, next_status};
pub use subscription::{Subscription, SubscriptionStatus};
