//! `long_running_job`: a task that really takes its `timeout` in seconds, but never
//! past the invocation's deadline: one that cannot finish in the time left fails at
//! once, and the ingester refuses one longer than the processor could ever run.

use super::{pick, Draw, Fields, JobKind, Malformed};
use crate::execute::JobError;
use crate::job::Rejection;
use crate::messages::ErrorCode;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Duration;

/// The `long_running_job` kind.
#[derive(Debug, Clone, Copy)]
pub struct LongRunningJob;

/// A valid `long_running_job` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongTask {
    pub task_name: String,
    /// `message.timeout`: how long the task runs, in seconds.
    pub timeout_secs: u64,
}

const TASKS: &[&str] = &[
    "Data Migration",
    "Reindex Search",
    "Backfill Metrics",
    "Rebuild Cache",
];

impl JobKind for LongRunningJob {
    const NAME: &'static str = "long_running_job";
    type Spec = LongTask;

    fn parse(message: &Fields<'_>) -> Result<LongTask, Rejection> {
        Ok(LongTask {
            task_name: message.text("task_name")?,
            timeout_secs: message.positive_int("timeout")?,
        })
    }

    /// A task over `max_secs` would only end as `deadline_exceeded` after taking a
    /// processor slot, so it is refused up front, naming the field and the limit.
    fn admit(spec: &LongTask, max_secs: u64) -> Result<(), Rejection> {
        let timeout_secs = spec.timeout_secs;
        if timeout_secs <= max_secs {
            return Ok(());
        }
        Err(Rejection::new(
            ErrorCode::OutOfRange,
            Some("message.timeout"),
            format!(
                "message.timeout must be at most {max_secs} seconds, what the processor can run within its function timeout less its deadline margin, got {timeout_secs}"
            ),
        ))
    }

    async fn execute(
        spec: &LongTask,
        budget: Duration,
        _: DateTime<Utc>,
    ) -> Result<Value, JobError> {
        let needed = Duration::from_secs(spec.timeout_secs);
        // Known up front: starting work that cannot finish only burns the budget.
        if needed > budget {
            return Err(JobError::DeadlineExceeded {
                needed,
                available: budget,
            });
        }
        tokio::time::sleep(needed).await;
        Ok(json!({ "task": spec.task_name, "ran_for_secs": spec.timeout_secs }))
    }

    fn sample(draw: &mut dyn Draw, max_secs: u64) -> Value {
        json!({"task_name": pick(draw, TASKS), "timeout": draw.between(1, max_secs.max(1))})
    }

    fn malformed() -> Vec<Malformed> {
        vec![Malformed::new(
            json!({"job_type": Self::NAME, "message": {"task_name": "Rebuild Cache", "timeout": -5}}),
            ErrorCode::OutOfRange,
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::DEFAULT_MAX_TIMEOUT_SECS;
    use crate::kinds::tests::{now, parse};

    fn task(timeout_secs: u64) -> LongTask {
        LongTask {
            task_name: "t".into(),
            timeout_secs,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn long_job_takes_its_time_within_budget() {
        let started = tokio::time::Instant::now();
        LongRunningJob::execute(&task(300), Duration::from_secs(301), now())
            .await
            .expect("fits");
        assert_eq!(started.elapsed().as_secs(), 300);
    }

    #[tokio::test(start_paused = true)]
    async fn long_job_past_the_deadline_fails_at_once() {
        let started = tokio::time::Instant::now();
        let err = LongRunningJob::execute(&task(300), Duration::from_secs(299), now())
            .await
            .expect_err("too long");
        assert_eq!(err.code(), "deadline_exceeded");
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[test]
    fn a_timeout_over_the_limit_is_out_of_range() {
        let job =
            parse(json!({"job_type":"long_running_job","message":{"task_name":"t","timeout":898}}))
                .expect("valid");
        assert!(job.spec.admit(898).is_ok());
        let r = job
            .spec
            .admit(DEFAULT_MAX_TIMEOUT_SECS)
            .expect_err("too long");
        assert_eq!(
            (r.code, r.field.as_deref()),
            (ErrorCode::OutOfRange, Some("message.timeout"))
        );
        assert!(r.message.contains("at most 879 seconds"), "{}", r.message);
    }
}
