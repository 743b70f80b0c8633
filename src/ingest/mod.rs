//! The HTTP surface (port 8080): provider pingbacks and health probes, the state their handlers
//! share, and the server that runs them.

mod dependencies;
pub mod health;
pub mod pingback;
mod routes;
pub mod server;
mod state;

pub use dependencies::Dependencies;
pub use pingback::PingbackError;
pub use routes::router;
pub use state::AppState;
