//! Job kinds: each kind of job is one file here, holding its `message` schema and
//! validation, its execution and the sample jobs the generator sends; [`BUILTIN`] is
//! the one list of the kinds the pipeline knows.
//!
//! Whatever depends on the kind goes through a [`Registry`] (the ingester's
//! validation, the processor's execution, the generator's catalogue; the metrics'
//! `job.type`s and `dlq redrive` use the built-in one, so a test-only kind counts as
//! `unknown` there), and a kind is written only through [`JobKind`], so its rejections
//! name their field as `message.<name>` ([`Fields`]) and its work is given the budget
//! left before the deadline. A registry is a value the handlers take in their config
//! ([`Registry::builtin`] by default), so a test can run the pipeline with a kind of
//! its own (`kinds/tests/fifth.rs`). To add a kind, write a file beside these that
//! implements [`JobKind`] for a unit struct and add that struct to [`BUILTIN`]; the
//! compiler checks the rest.

pub mod data_cleanup;
mod draw;
mod fields;
pub mod long_running_job;
mod registry;
pub mod report_generation;
pub mod saga;
pub mod user_onboarding;

pub use data_cleanup::DataCleanup;
pub use draw::{pick, Draw};
pub use fields::Fields;
pub(crate) use fields::{describe, truncate};
pub use long_running_job::LongRunningJob;
pub use registry::{Kind, Registry, Spec, BUILTIN};
pub use report_generation::ReportGeneration;
pub use saga::{Action, Saga, SagaKind};
pub use user_onboarding::UserOnboarding;

use crate::execute::JobError;
use crate::job::Rejection;
use crate::messages::ErrorCode;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::future::Future;
use std::time::Duration;

/// One kind of job. Implemented by a unit struct; the registry holds it as a [`Kind`].
pub trait JobKind: Send + Sync + 'static {
    /// The kind's `job_type` on the wire (case-sensitive).
    const NAME: &'static str;

    /// The kind's validated message.
    type Spec: std::fmt::Debug + Send + Sync + 'static;

    /// Validates a job's `message`. Each rejection names its field as `message.<name>`
    /// ([`Fields`] does that).
    fn parse(message: &Fields<'_>) -> Result<Self::Spec, Rejection>;

    /// Refuses, at the ingester, a valid job the processor could never finish: one
    /// asking for more than `max_secs` seconds of work. Most kinds take no time.
    fn admit(_spec: &Self::Spec, _max_secs: u64) -> Result<(), Rejection> {
        Ok(())
    }

    /// Runs the job with `budget` left before the deadline; `now` dates the work. A
    /// job that cannot finish within `budget` fails at once with
    /// [`JobError::DeadlineExceeded`].
    fn execute(
        spec: &Self::Spec,
        budget: Duration,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Value, JobError>> + Send;

    /// A valid `message` for the generator, asking for at most `max_secs` of work.
    fn sample(draw: &mut dyn Draw, max_secs: u64) -> Value;

    /// Malformed job details of this kind that real senders produce, each with the
    /// rejection it must earn.
    fn malformed() -> Vec<Malformed>;
}

/// A malformed job detail for the generator, and the rejection code it must earn.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    pub detail: Value,
    pub code: ErrorCode,
}

impl Malformed {
    pub fn new(detail: Value, code: ErrorCode) -> Malformed {
        Malformed { detail, code }
    }
}

#[cfg(test)]
mod tests;
