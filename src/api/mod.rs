//! The gRPC API (port 50051): one file per service, the auth layer, proto conversions.
//! Errors become `tonic::Status` in `crate::error`.

pub mod auth;
pub mod channels;
mod convert;
pub mod merchants;
pub mod metrics;
pub mod payments;
mod watch;
pub mod webhooks;

use tonic::{Request, Status};

use crate::merchants::Caller;

/// The authenticated merchant, placed in the request by `auth::AuthLayer`.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing authorization metadata"))
}

/// The page of a list read with `limit + 1` rows: the first `limit`, and the token of the next
/// page (the last row's key), empty when this is the last page.
fn page<T>(mut rows: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
    if rows.len() <= limit as usize {
        return (rows, String::new());
    }
    rows.truncate(limit as usize);
    let token = rows.last().map(|last| convert::page_token::encode(&key(last))).unwrap_or_default();
    (rows, token)
}

/// Page sizes: 0 means the default; anything above the maximum is lowered to it (AIP-158).
fn page_size(requested: u32) -> u32 {
    match requested {
        0 => 50,
        n => n.min(100),
    }
}
