//! The live fan-out of the payment event log (`payments::event_log`, which records every change
//! and reads it back in a gapless order): `hub` delivers new events to the open streams of this
//! replica; `bridge` tells other replicas (through Redis) that there is something new to read.

pub mod bridge;
pub mod hub;

pub use hub::{Filter, Hub};

pub use crate::payments::{
    core::{Event, EventDetail, EventKind, Position},
    store::event_log as log,
};
