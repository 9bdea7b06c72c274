//! Running a claimed saga ([`crate::kinds::saga`]): its steps in order, each effect
//! exactly once, and when a step fails for good the steps before it undone in
//! reverse, each once, before the job ends `FAILED`.
//!
//! The sequence that makes it safe ([`crate::store::saga`] has the keys):
//! 1. each step's request goes out under its idempotency key, *then* the log records
//!    the step done. A crash between the two sends the request again on the next
//!    delivery, and the service answers that the key already took effect;
//! 2. a step that fails goes back to `jobs-todo` as the next attempt, which resumes
//!    at that step, until the retry policy gives up;
//! 3. then the log records *compensating* before the first compensation, so no later
//!    delivery goes forward again. Each compensation goes out under its step's key
//!    (the failed step's too: its request may have landed with its answer lost), then
//!    is recorded;
//! 4. after the last one the log records *compensated*, and the job ends `FAILED`
//!    like any job, its history holding the failure of every attempt and one
//!    `compensated` entry per step undone.
//!
//! Whatever the table or a service refuses on the way, or a budget too short, leaves
//! the record in SQS; its next delivery resumes from the log.

use super::execute::{completed, give_up};
use super::{jitter_unit, Outcome, Processor};
use crate::ending::give_back;
use crate::fault::{self, StepFault};
use crate::kinds::{Action, Saga};
use crate::messages::{DeadLetter, EnrichedJob, ErrorCode, ErrorEntry, Stage};
use crate::ports::{MessageQueue, PortError, Topic};
use crate::record::RecordMeta;
use crate::retry::Decision;
use crate::store::saga::{Applied, Effect, Phase, SagaLog, Sagas, Undo};
use crate::store::JobStore;
use crate::telemetry::instruments_prelude::*;
use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::{info, warn};

/// Why a saga stopped short of an end.
enum Stop {
    /// A step failed; whether another attempt could pass.
    Step { entry: ErrorEntry, retryable: bool },
    /// The table or a service could not be reached, or the budget ran out.
    Unavailable(PortError),
    /// The crash the job asked for, in a unit test (elsewhere the process is gone).
    Crashed,
}

impl From<PortError> for Stop {
    fn from(e: PortError) -> Stop {
        Stop::Unavailable(e)
    }
}

/// One delivery's run of a saga: the log as this delivery knows it.
struct Run<'a> {
    job: &'a EnrichedJob,
    saga: &'a Saga,
    fault: Option<StepFault>,
    log: SagaLog,
    version: u64,
    /// When the budget runs out.
    until: Instant,
    /// Kept back before each step or compensation: one call's share of the ending's
    /// reserve ([`call_share`]).
    reserve: std::time::Duration,
}

impl Run<'_> {
    fn effect(&self, step: u32) -> Effect<'_> {
        Effect {
            job_id: &self.job.job_id,
            run: self.log.run,
            step,
            action: self.action(step).name(),
            attempt: self.job.attempt,
        }
    }

    fn action(&self, step: u32) -> Action {
        self.saga.steps[step as usize]
    }

    /// Whether a step or compensation still fits in the budget, its calls included.
    fn in_time(&self, what: &str) -> Result<(), PortError> {
        if Instant::now() + self.reserve <= self.until {
            return Ok(());
        }
        Err(PortError::Unreachable {
            operation: "saga",
            message: format!(
                "the invocation's budget ran out before {what}; the next delivery resumes there"
            ),
        })
    }
}

impl<Q: MessageQueue, T: Topic, S: JobStore + Sagas> Processor<Q, T, S> {
    /// Runs a claimed saga within `budget`, in its `execute saga` span.
    pub(super) async fn run_saga(
        &self,
        job: &EnrichedJob,
        saga: &Saga,
        meta: &RecordMeta,
        budget: std::time::Duration,
        consumer: &JobSpan,
    ) -> Outcome {
        let span = self.telemetry.execute_span(&job.job_id, "saga", consumer);
        let until = Instant::now() + budget;
        let outcome = span
            .around(self.saga_outcome(job, saga, meta, until, &span))
            .await;
        match &outcome {
            Outcome::End(ending) if ending.dead_letter.is_some() => span.fail(
                "saga_failed",
                "a step failed for good; its steps were undone",
            ),
            Outcome::Retry { code, .. } => span.fail(code.as_str(), "a step failed"),
            Outcome::Unavailable(e) => span.fail("state_unavailable", &e.to_string()),
            _ => {}
        }
        span.end();
        outcome
    }

    async fn saga_outcome(
        &self,
        job: &EnrichedJob,
        saga: &Saga,
        meta: &RecordMeta,
        until: Instant,
        span: &JobSpan,
    ) -> Outcome {
        let mut run = match self.open(job, saga, until).await {
            Ok(run) => run,
            Err(e) => return self.stays(job, meta, e).await,
        };
        // A later attempt wrote the log: this delivery is an older attempt's, come
        // back after that one gave the job back. The later attempt's own message is
        // still queued (it has not ended, or this claim would have found the end), so
        // this one is dropped, and the claim it just took given back.
        if job.attempt < run.log.attempt {
            self.give_back(job, meta).await;
            return Outcome::Repeat("stale");
        }
        if run.log.phase == Phase::Forward {
            let failure = match self.forward(&mut run, meta, span).await {
                Ok(result) => {
                    info!(job_id = %job.job_id, attempt = job.attempt, run = run.log.run, "saga completed");
                    return completed(meta, job, result);
                }
                Err(Stop::Step { entry, retryable }) => entry_or_retry(self, job, entry, retryable),
                Err(Stop::Unavailable(e)) => return self.stays(job, meta, e).await,
                Err(Stop::Crashed) => return crashed(),
            };
            let entry = match failure {
                Ok(entry) => entry,
                Err(retry) => return retry,
            };
            warn!(job_id = %job.job_id, attempt = job.attempt, step = run.log.done, "saga step failed for good; compensating");
            run.log.phase = Phase::Compensating;
            run.log.top = run.log.done.min(last_step(saga));
            run.log.failure = Some(entry);
            if let Err(e) = self.save(&mut run).await {
                return self.stays(job, meta, e).await;
            }
        }
        if run.log.phase == Phase::Compensating {
            if let Err(e) = self.compensate(&mut run, span).await {
                return self.stays(job, meta, e).await;
            }
        }
        give_up(meta, job, compensated(&run))
    }

    /// The run this attempt takes part in: the log's, or a new one when the log's
    /// ended compensated under an earlier attempt (an operator's redrive or rerun).
    async fn open<'a>(
        &self,
        job: &'a EnrichedJob,
        saga: &'a Saga,
        until: Instant,
    ) -> Result<Run<'a>, PortError> {
        let read = self.store.saga_log(&job.job_id).await?;
        let (mut log, version) = read.map_or((SagaLog::start(1), 0), |v| (v.log, v.version));
        if log.phase == Phase::Compensated && job.attempt > log.ended_attempt {
            log = SagaLog::start(log.run + 1);
            log.attempt = job.attempt;
        }
        let fault = StepFault::of(&job.job).filter(|_| self.config.fault_injection);
        Ok(Run {
            job,
            saga,
            fault,
            log,
            version,
            until,
            reserve: call_share(self.config.deadline_margin),
        })
    }

    /// The steps not yet done, in order; the saga's result once all are.
    async fn forward(
        &self,
        run: &mut Run<'_>,
        meta: &RecordMeta,
        span: &JobSpan,
    ) -> Result<Value, Stop> {
        for step in run.log.done..run.saga.steps.len() as u32 {
            let name = run.action(step).name();
            run.in_time(&format!("step {step} ({name})"))?;
            let step_span =
                self.telemetry
                    .saga_span(format!("step {name}"), &run.job.job_id, step, span);
            let done = step_span.around(self.step(run, step, meta)).await;
            if let Err(stop) = &done {
                fail_span(&step_span, stop);
            }
            step_span.end();
            done?;
        }
        Ok(json!({
            "user_id": run.saga.user_id,
            "run": run.log.run,
            "steps": run.saga.steps.iter().map(|a| a.name()).collect::<Vec<_>>(),
        }))
    }

    /// Step `step`: its request under its key, then its record.
    async fn step(&self, run: &mut Run<'_>, step: u32, meta: &RecordMeta) -> Result<(), Stop> {
        let (job, action) = (run.job, run.action(step));
        if run.fault.is_some_and(|f| f.fails(step, job.attempt)) {
            let error = crate::execute::JobError::InjectedFault {
                attempt: job.attempt,
            };
            return Err(step_failure(
                job,
                step,
                action,
                error.code(),
                &error.to_string(),
                true,
            ));
        }
        match self
            .store
            .apply(&run.effect(step), crate::clock::now())
            .await?
        {
            Applied::Now | Applied::Already => {}
            // Only a compensation leaves a tombstone, and a compensating log never
            // comes back here; a step refused is never run again.
            Applied::Refused => {
                let why = "its key was compensated before it took effect";
                return Err(step_failure(
                    job,
                    step,
                    action,
                    ErrorCode::Compensated,
                    why,
                    false,
                ));
            }
        }
        if run
            .fault
            .is_some_and(|f| f.crashes(step, job.attempt, meta.receive_count))
        {
            warn!(job_id = %job.job_id, step, "crashing after the step, before its record (fault injection)");
            let fault::Crashed = fault::crash();
            return Err(Stop::Crashed);
        }
        run.log.done = step + 1;
        Ok(self.save(run).await?)
    }

    /// The compensations still to run, from the highest step down, each recorded;
    /// then the log's `compensated`.
    async fn compensate(&self, run: &mut Run<'_>, span: &JobSpan) -> Result<(), PortError> {
        let to_undo: Vec<u32> = run.log.to_undo().collect();
        for step in to_undo {
            let compensation = run.action(step).compensation();
            run.in_time(&format!("compensation {step} ({compensation})"))?;
            let undo_span = self.telemetry.saga_span(
                format!("compensate {compensation}"),
                &run.job.job_id,
                step,
                span,
            );
            let effect = run.effect(step);
            let call = self
                .store
                .compensate(&effect, compensation, crate::clock::now());
            let undo = match undo_span.around(call).await {
                Ok(undo) => undo,
                Err(e) => {
                    undo_span.fail("state_unavailable", &e.to_string());
                    undo_span.end();
                    return Err(e);
                }
            };
            undo_span.set_attribute("saga.undid", undo != Undo::NothingToUndo);
            undo_span.end();
            run.log.undone += 1;
            if undo != Undo::NothingToUndo {
                run.log.undid.push(step);
            }
            self.save(run).await?;
        }
        run.log.phase = Phase::Compensated;
        run.log.ended_attempt = run.job.attempt;
        self.save(run).await
    }

    /// Writes the run's log over the version it read. A write refused because its own
    /// earlier copy landed (a lost answer sent again) is taken as written.
    async fn save(&self, run: &mut Run<'_>) -> Result<(), PortError> {
        let job_id = &run.job.job_id;
        run.log.attempt = run.log.attempt.max(run.job.attempt);
        if self
            .store
            .save_saga_log(job_id, &run.log, run.version, crate::clock::now())
            .await?
        {
            run.version += 1;
            return Ok(());
        }
        match self.store.saga_log(job_id).await? {
            // Compared as written: the table keeps times to the millisecond.
            Some(stored) if as_written(&stored.log) == as_written(&run.log) => {
                run.version = stored.version;
                Ok(())
            }
            _ => Err(PortError::Refused {
                operation: "PutItem",
                message: format!(
                    "the saga log of job {job_id} changed under attempt {}",
                    run.job.attempt
                ),
            }),
        }
    }

    /// The record stays in SQS, the claim given back so that its next delivery
    /// resumes at once from the log.
    async fn stays(&self, job: &EnrichedJob, meta: &RecordMeta, e: PortError) -> Outcome {
        warn!(job_id = %job.job_id, error = %e, "saga stopped; its next delivery resumes");
        self.give_back(job, meta).await;
        Outcome::Unavailable(e)
    }

    /// Releases this delivery's claim on the job (only if it still holds it).
    async fn give_back(&self, job: &EnrichedJob, meta: &RecordMeta) {
        let now = crate::clock::now();
        give_back(
            &self.store,
            Stage::Processor,
            &job.job_id,
            job.attempt,
            meta,
            now,
        )
        .await;
    }
}

/// A step failed: the next attempt if the retry policy allows (`Err`), else the entry
/// the compensations start from (`Ok`).
fn entry_or_retry<Q, T, S>(
    processor: &Processor<Q, T, S>,
    job: &EnrichedJob,
    entry: ErrorEntry,
    retryable: bool,
) -> Result<ErrorEntry, Outcome> {
    let unit = jitter_unit(&job.job_id, job.attempt);
    match processor.config.retry.decide(job.attempt, retryable, unit) {
        Decision::Retry {
            delay,
            next_attempt,
        } => {
            let code = entry.code.clone();
            let mut errors = job.errors.clone();
            errors.push(entry);
            Err(Outcome::Retry {
                next: Box::new(EnrichedJob {
                    attempt: next_attempt,
                    errors,
                    ..job.clone()
                }),
                delay,
                code,
            })
        }
        Decision::GiveUp => Ok(entry),
    }
}

/// One call's share of the deadline margin (which holds the ending's calls and their
/// slack, [`super::ending_reserve`]). Kept back before each step or compensation so that
/// one does not start when even its first call could not finish. Steps take a few
/// milliseconds, so keeping a worst case of every call back would stop sagas that fit
/// with room to spare. A step that runs into the ending's reserve anyway is cut off
/// with the invocation and resumed from the log, at worst a visibility timeout later.
fn call_share(margin: std::time::Duration) -> std::time::Duration {
    margin.saturating_sub(super::ENDING_SLACK) / super::ENDING_CALLS
}

fn as_written(log: &SagaLog) -> Option<Value> {
    serde_json::to_value(log).ok()
}

fn last_step(saga: &Saga) -> u32 {
    u32::try_from(saga.steps.len().saturating_sub(1)).unwrap_or(u32::MAX)
}

/// The entry of step `step`'s failure, naming the step as its field.
fn step_failure(
    job: &EnrichedJob,
    step: u32,
    action: Action,
    code: ErrorCode,
    why: &str,
    retryable: bool,
) -> Stop {
    let message = format!("step {step} ({}) failed: {why}", action.name());
    let entry = ErrorEntry::new(
        Stage::Processor,
        code,
        message,
        job.attempt,
        crate::clock::now(),
    )
    .on_field(Some(format!("message.steps[{step}]")));
    Stop::Step { entry, retryable }
}

/// The job's `FAILED` dead letter once compensated: its history, the failure that
/// started the compensations, and one entry per step undone.
fn compensated(run: &Run<'_>) -> DeadLetter {
    let job = run.job;
    let failure = run.log.failure.clone().unwrap_or_else(|| {
        ErrorEntry::new(
            Stage::Processor,
            ErrorCode::Compensated,
            "the saga was compensated",
            job.attempt,
            crate::clock::now(),
        )
    });
    let mut dl = DeadLetter::failed(job.clone(), failure);
    for &step in &run.log.undid {
        let action = run.action(step);
        let message = format!(
            "step {step} ({}) undone by {}",
            action.name(),
            action.compensation()
        );
        let entry = ErrorEntry::new(
            Stage::Processor,
            ErrorCode::Compensated,
            message,
            job.attempt,
            crate::clock::now(),
        );
        dl.errors
            .push(entry.on_field(Some(format!("message.steps[{step}]"))));
    }
    dl
}

fn fail_span(span: &JobSpan, stop: &Stop) {
    match stop {
        Stop::Step { entry, .. } => span.fail(entry.code.as_str(), &entry.message),
        Stop::Unavailable(e) => span.fail("state_unavailable", &e.to_string()),
        Stop::Crashed => span.fail("crashed", "the process died here (fault injection)"),
    }
}

/// A unit test's crash: the record stays, as a dead invocation's would.
fn crashed() -> Outcome {
    Outcome::Unavailable(PortError::Unreachable {
        operation: "saga",
        message: "the process crashed (fault injection)".into(),
    })
}

#[cfg(test)]
mod tests;
