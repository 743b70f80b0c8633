//! Paymentwall (paymentwall.md): signed widget URLs for hosted checkout, signed pingbacks back.

pub mod pingback;
pub mod signature;
pub mod widget;

use ipnet::IpNet;

pub use signature::SignVersion;

use super::{Provider, ProviderError};
use crate::{channels::Channel, payments::Payment, store::now_ms};

pub const DEFAULT_API_BASE_URL: &str = "https://api.paymentwall.com";

/// The addresses Paymentwall publishes as its pingback sources.
pub const PUBLISHED_PINGBACK_SOURCES: [&str; 6] = [
    "174.36.92.186/32",
    "174.36.92.187/32",
    "174.36.92.192/32",
    "174.36.96.66/32",
    "174.37.14.28/32",
    "216.127.71.0/24",
];

pub fn published_pingback_sources() -> Vec<IpNet> {
    PUBLISHED_PINGBACK_SOURCES.iter().map(|cidr| cidr.parse().expect("constant CIDR parses")).collect()
}

pub struct Paymentwall;

impl Provider for Paymentwall {
    fn checkout_url(&self, channel: &Channel, payment: &Payment) -> Result<String, ProviderError> {
        widget::checkout_url(&channel.paymentwall, payment, now_ms() / 1000)
    }
}
