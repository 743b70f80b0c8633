//! End-to-end tests: the real `paygate` and `paymentwall-sim` binaries over gRPC and HTTP, against
//! real PostgreSQL and SQLite. One test binary so the suite links once.

mod support;

mod bad_input;
mod channels;
mod checkout;
mod crash_storm;
mod db_outage;
mod event_log;
mod lifecycle;
mod operations;
mod streams;
mod webhooks;
