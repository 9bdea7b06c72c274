//! Sending dead letters back into the pipeline, decided without I/O.
//!
//! A job the processor gave up on goes back to `jobs-todo` as its next attempt, its
//! error history kept. A job the ingester rejected goes back to the ingester's queue as
//! the EventBridge event it came in as, to be validated again (useful once the validator
//! or the sender was fixed). Either way the job keeps its id, so its state record is
//! reopened first (see [`crate::state::JobStore::reopen`]) and it still ends once.

use crate::job::JobType;
use crate::messages::{DeadLetter, EnrichedJob, JobStatus, Stage};
use crate::Timestamp;
use serde_json::{json, Value};

/// Where a dead letter goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Redrive {
    /// Back to the processor, as attempt `job.attempt`.
    JobsTodo(EnrichedJob),
    /// Back to the ingester, as an EventBridge event.
    Ingester(Value),
    /// Nothing sensible to send: say why and leave it in the DLQ.
    Keep(String),
}

impl Redrive {
    /// The stage whose state record must be reopened before sending.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            Redrive::JobsTodo(_) => Some(Stage::Processor),
            Redrive::Ingester(_) => Some(Stage::Ingester),
            Redrive::Keep(_) => None,
        }
    }
}

/// Plans the redrive of one dead letter.
pub fn plan(dl: &DeadLetter, now: Timestamp) -> Redrive {
    match dl.stage {
        Stage::Processor => {
            let Some(job_type) = dl.job_type.as_deref().and_then(JobType::parse) else {
                return Redrive::Keep(format!(
                    "job {} has no known job_type, so the processor cannot run it; fix the job and send it again",
                    dl.job_id
                ));
            };
            Redrive::JobsTodo(EnrichedJob {
                job_id: dl.job_id.clone(),
                job_type,
                status: JobStatus::New,
                received_at: now,
                event_time: None,
                attempt: dl.attempts.saturating_add(1),
                trace_context: dl.trace_context.clone(),
                errors: dl.errors.clone(),
                job: dl.job.clone(),
            })
        }
        Stage::Ingester => Redrive::Ingester(json!({
            "version": "0",
            // The job's id as the event id: a job without its own `id` is known by the
            // id of the event that brought it.
            "id": dl.job_id,
            "detail-type": "JobEvent",
            "source": "jobs",
            "time": crate::messages::rfc3339::format(&now),
            "redriven": true,
            "detail": dl.job,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ErrorEntry, EventEnvelope};
    use chrono::Utc;

    fn dead_letter(stage: Stage, job_type: Option<&str>) -> DeadLetter {
        DeadLetter {
            job_id: "job-7".into(),
            job_type: job_type.map(str::to_owned),
            status: if stage == Stage::Ingester {
                JobStatus::Rejected
            } else {
                JobStatus::Failed
            },
            stage,
            attempts: 3,
            errors: vec![ErrorEntry {
                stage,
                code: "injected".into(),
                message: "failed on purpose".into(),
                field: None,
                attempt: 3,
                timestamp: Utc::now(),
            }],
            trace_context: None,
            job: json!({"job_type": "data_cleanup", "message": {"target_table": "t", "retention": 3}}),
        }
    }

    #[test]
    fn a_failed_job_goes_back_as_its_next_attempt_with_its_history() {
        let now = Utc::now();
        let Redrive::JobsTodo(job) =
            plan(&dead_letter(Stage::Processor, Some("data_cleanup")), now)
        else {
            panic!("expected jobs-todo");
        };
        assert_eq!((job.attempt, job.job_id.as_str()), (4, "job-7"));
        assert_eq!(job.errors.len(), 1);
        assert_eq!(job.status, JobStatus::New);
    }

    #[test]
    fn a_rejected_job_goes_back_to_the_ingester_as_an_event_it_can_read() {
        let dl = dead_letter(Stage::Ingester, None);
        let Redrive::Ingester(event) = plan(&dl, Utc::now()) else {
            panic!("expected the ingester");
        };
        let envelope = EventEnvelope::from_body(&event.to_string()).expect("an envelope");
        assert_eq!(envelope.id.as_deref(), Some("job-7"));
        assert_eq!(envelope.detail, dl.job);
    }

    #[test]
    fn a_processor_letter_without_a_known_type_stays() {
        let plan = plan(&dead_letter(Stage::Processor, Some("nope")), Utc::now());
        assert!(matches!(plan, Redrive::Keep(why) if why.contains("job-7")));
    }
}
