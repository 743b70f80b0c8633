//! End-to-end tests: the real `paygate` and `paymentwall-sim` binaries over gRPC and HTTP, against
//! real PostgreSQL and SQLite. One test binary so the suite links once.

mod support;

mod access;
mod bad_input;
mod channels;
mod checkout;
mod client_tokens;
mod convergence;
mod crash_storm;
mod db_outage;
mod delivery;
mod erasure;
mod event_log;
mod failover;
mod group_commit;
mod hostile;
mod key_abuse;
mod lifecycle;
mod limits;
mod observability;
mod operations;
mod readiness;
mod retention;
mod risk_profile;
mod rolling_upgrade;
mod streams;
mod subscriptions;
mod sync;
mod test_provider;
mod upgrade;
mod webhooks;
