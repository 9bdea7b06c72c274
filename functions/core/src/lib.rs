//! The job pipeline's library: the job schema and its validation, the messages
//! between hops, job execution, and the ingester and processor handlers written
//! against small ports so they run the same on AWS and in tests.
//!
//! The Lambda binaries only wire configuration, clients and logging ([`logging`]) to
//! this crate.

/// A UTC point in time, as the handlers take it.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

pub mod aws;
pub mod batching;
pub mod clock;
pub mod config;
pub mod ending;
pub mod execute;
pub mod fault;
pub mod guard;
pub mod ingester;
pub mod job;
pub mod kinds;
pub mod logging;
pub mod messages;
pub mod ports;
pub mod processor;
pub mod record;
pub mod redrive;
pub mod relay;
pub mod retry;
pub mod store;
pub mod telemetry;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
