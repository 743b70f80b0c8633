//! Network rules shared by the edges and the domain: CIDR notation, who a caller is, where
//! outgoing calls may go, and connection guards.

mod cidr;
pub mod client_ip;
pub mod conn;
pub mod egress;

pub use cidr::{in_blocks, parse_cidr, parse_cidr_block, unfit_for_a_list};
