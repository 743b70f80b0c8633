//! paygate: a payments gateway. Internal services call it over gRPC (`api`); providers call it back
//! over HTTP (`ingest`). A pingback flows `ingest` -> `providers::paymentwall` -> `payments` (one
//! transaction with `events`); a checkout flows `api::payments` -> `payments::checkout` -> `providers`.

pub mod api;
pub mod app;
pub mod audit;
pub mod channels;
pub mod config;
pub mod console;
pub mod error;
pub mod events;
pub mod ingest;
pub mod merchants;
pub mod metrics_catalog;
pub mod net;
pub mod payments;
pub mod personal;
pub mod proto;
pub mod providers;
pub mod ratelimit;
pub mod retention;
pub mod secrets;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod validation;
pub mod webhooks;
