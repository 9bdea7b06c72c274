//! Executing a claimed job within its budget, and the dead letters the processor
//! writes: a failed attempt's, an untracked end's, an unreadable message's.

use super::{jitter_unit, Outcome, Processor};
use crate::ending::{Ending, Tracking};
use crate::execute::JobError;
use crate::fault::Fault;
use crate::job::parse_job_with;
use crate::kinds::{Registry, Saga, Spec};
use crate::messages::{
    DeadLetter, EnrichedJob, ErrorCode, ErrorEntry, JobStatus, Notification, Stage,
};
use crate::ports::{MessageQueue, Topic};
use crate::record::{raw_body, RecordMeta};
use crate::retry::Decision;
use crate::store::{JobStore, Sagas};
use crate::telemetry::instruments_prelude::*;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::{info, warn};

impl<Q: MessageQueue, T: Topic, S: JobStore + Sagas> Processor<Q, T, S> {
    /// Runs a claimed job.
    pub(super) async fn run(
        &self,
        job: &EnrichedJob,
        meta: &RecordMeta,
        (deadline, started): (DateTime<Utc>, tokio::time::Instant),
        now: DateTime<Utc>,
        consumer: &JobSpan,
    ) -> Outcome {
        let spec = match revalidate(&self.config.kinds, job) {
            Ok(spec) => spec,
            Err(dl) => return give_up(meta, job, *dl),
        };
        // What is left now (after the claim), less the ending's reserve.
        let budget = (deadline - now)
            .to_std()
            .unwrap_or_default()
            .saturating_sub(started.elapsed())
            .saturating_sub(self.config.deadline_margin);
        if let Some(saga) = spec.get::<Saga>() {
            return self.run_saga(job, saga, meta, budget, consumer).await;
        }
        match self.attempt(job, &spec, budget, now, consumer).await {
            Ok(result) => {
                info!(job_id = %job.job_id, job_type = %job.job_type, attempt = job.attempt, "job completed");
                completed(meta, job, result)
            }
            Err(e) => self.after_failure(meta, job, &e),
        }
    }

    /// One attempt at the job, in its `execute` span; an injected fault stands in for
    /// the work when the job asks for one and fault injection is on.
    async fn attempt(
        &self,
        job: &EnrichedJob,
        spec: &Spec,
        budget: std::time::Duration,
        now: DateTime<Utc>,
        consumer: &JobSpan,
    ) -> Result<Value, JobError> {
        let span = self
            .telemetry
            .execute_span(&job.job_id, job.job_type.as_str(), consumer);
        let injected = Fault::of(&job.job)
            .filter(|f| self.config.fault_injection && f.fails(job.attempt))
            .map(|_| JobError::InjectedFault {
                attempt: job.attempt,
            });
        let result = match injected {
            Some(e) => Err(e),
            // Inside the span: what the work traces is the span's child.
            None => span.around(spec.execute(budget, now)).await,
        };
        if let Err(e) = &result {
            span.fail(e.code().as_str(), &e.to_string());
        }
        span.end();
        result
    }

    /// A failed attempt: the next one, by the retry policy, or the job's end.
    fn after_failure(&self, meta: &RecordMeta, job: &EnrichedJob, e: &JobError) -> Outcome {
        let dl = failure(job, e.code(), e.to_string(), None);
        let unit = jitter_unit(&job.job_id, job.attempt);
        match self.config.retry.decide(job.attempt, e.retryable(), unit) {
            Decision::Retry {
                delay,
                next_attempt,
            } => Outcome::Retry {
                next: Box::new(EnrichedJob {
                    attempt: next_attempt,
                    errors: dl.errors,
                    ..job.clone()
                }),
                delay,
                code: e.code(),
            },
            Decision::GiveUp => {
                warn!(job_id = %job.job_id, code = %e.code(), attempt = job.attempt, error = %e, "job failed");
                give_up(meta, job, dl)
            }
        }
    }
}

/// The ingester validated the job; validating again guards against a message that was
/// altered or hand-written onto the queue.
fn revalidate(kinds: &Registry, job: &EnrichedJob) -> Result<Spec, Box<DeadLetter>> {
    match parse_job_with(kinds, &job.job, None) {
        Ok(valid) if valid.spec.job_type() == job.job_type.as_str() => Ok(valid.spec),
        Ok(valid) => {
            let msg = format!(
                "job_type is {} but the envelope says {}",
                valid.spec.job_type(),
                job.job_type
            );
            Err(Box::new(failure(
                job,
                ErrorCode::InvalidMessage,
                msg,
                Some("job_type".into()),
            )))
        }
        Err(r) => Err(Box::new(failure(job, r.code, r.message, r.field))),
    }
}

/// The job's `COMPLETED` ending, with its result.
pub(super) fn completed(meta: &RecordMeta, job: &EnrichedJob, result: Value) -> Outcome {
    Outcome::End(Box::new(Ending::new(
        meta.clone(),
        Notification::completed(job, result, crate::clock::now()),
        None,
        Tracking::Finish {
            attempt: job.attempt,
        },
    )))
}

/// The job's `FAILED` ending with `dl`, recorded for this attempt.
pub(super) fn give_up(meta: &RecordMeta, job: &EnrichedJob, dl: DeadLetter) -> Outcome {
    Outcome::End(Box::new(Ending::new(
        meta.clone(),
        Notification::for_dead_letter(&dl, crate::clock::now()),
        Some(dl),
        Tracking::Finish {
            attempt: job.attempt,
        },
    )))
}

/// The job as a `FAILED` dead letter, with this attempt's error appended to its history.
pub(super) fn failure(
    job: &EnrichedJob,
    code: ErrorCode,
    message: String,
    field: Option<String>,
) -> DeadLetter {
    DeadLetter::failed(job.clone(), this_attempt(job, code, message, field))
}

/// A job refused, not failed: its id names other content.
pub(super) fn rejection(
    job: &EnrichedJob,
    code: ErrorCode,
    message: String,
    field: Option<String>,
) -> DeadLetter {
    DeadLetter::rejected(job.clone(), this_attempt(job, code, message, field))
}

/// The error entry of the job's current attempt at the processor.
fn this_attempt(
    job: &EnrichedJob,
    code: ErrorCode,
    message: String,
    field: Option<String>,
) -> ErrorEntry {
    ErrorEntry::new(
        Stage::Processor,
        code,
        message,
        job.attempt,
        crate::clock::now(),
    )
    .on_field(field)
}

pub(super) fn end_untracked(meta: &RecordMeta, dl: DeadLetter) -> Outcome {
    Outcome::End(Box::new(Ending::new(
        meta.clone(),
        Notification::for_dead_letter(&dl, crate::clock::now()),
        Some(dl),
        Tracking::Untracked,
    )))
}

/// A `jobs-todo` body that is not an enriched job: dead-letter it as it came, under the
/// id it names (else its SQS message id, the same on every redelivery), with the
/// attempt it names (else 1) for its claim.
pub(super) fn unreadable(body: &str, meta: &RecordMeta, reason: &str) -> (DeadLetter, u32) {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()?
            .get(name)?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let attempt = parsed
        .as_ref()
        .and_then(|p| p.get("attempt")?.as_u64())
        .and_then(|a| u32::try_from(a).ok())
        .filter(|a| *a >= 1)
        .unwrap_or(1);
    let error = ErrorEntry::new(
        Stage::Processor,
        ErrorCode::InvalidMessage,
        reason,
        meta.receive_count,
        crate::clock::now(),
    );
    let dl = DeadLetter::new(
        field("job_id").unwrap_or_else(|| meta.message_id.clone()),
        field("job_type"),
        JobStatus::Failed,
        error,
        parsed
            .and_then(|p| p.get("job").cloned())
            .unwrap_or_else(|| raw_body(body)),
    );
    (dl, attempt)
}
