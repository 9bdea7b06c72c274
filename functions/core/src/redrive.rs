//! Sending dead letters back into the pipeline, decided without I/O.
//!
//! A job the processor gave up on goes back to `jobs-todo` as its next attempt, its
//! error history kept. A job the ingester rejected goes back to the ingester's queue as
//! the EventBridge event it came in as, to be validated again (useful once the validator
//! or the sender was fixed). Either way the job keeps its id, so its state record is
//! reopened first (see [`crate::store::JobStore::reopen`]) and it still ends once.

use crate::kinds::Registry;
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

/// A record SQS itself moved to the dead-letter queue after `maxReceiveCount` failed
/// receives (a dependency was down for longer than the functions' retry schedule). It
/// is not a dead letter: it is the record as it was, and the job never ended, so it goes
/// back to the queue it came from unchanged, with no state record to reopen.
#[derive(Debug, Clone, PartialEq)]
pub enum Stranded {
    /// A `jobs-todo` message: the enriched job, at the attempt it had reached.
    Job(Box<EnrichedJob>),
    /// An `ingester-queue` message: the EventBridge event, not yet validated.
    Event { job_id: Option<String> },
}

impl Stranded {
    /// Recognises a DLQ body that is not a dead letter; `None` for anything else,
    /// such as a `jobs-todo` message of a kind this build does not know (written by a
    /// newer version, say): it stays in the DLQ rather than end as unreadable.
    pub fn of(body: &str) -> Option<Stranded> {
        if let Ok(job) = EnrichedJob::from_body_in(body, &crate::kinds::Registry::builtin()) {
            return Some(Stranded::Job(Box::new(job)));
        }
        let Some(envelope) = crate::messages::EventEnvelope::from_body(body) else {
            // An event too deep for the parser is still one: named as the ingester
            // names it, so `dlq` shows and sends it back under its producer's id.
            let event = crate::messages::shallow_event(body);
            event.detail?;
            return Some(Stranded::Event {
                job_id: event.producers_id(),
            });
        };
        let job_id = envelope
            .detail
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(envelope.id);
        Some(Stranded::Event { job_id })
    }

    /// The job id, when the record names one.
    pub fn job_id(&self) -> Option<&str> {
        match self {
            Stranded::Job(job) => Some(&job.job_id),
            Stranded::Event { job_id } => job_id.as_deref(),
        }
    }
}

/// Plans the redrive of one dead letter.
pub fn plan(dl: &DeadLetter, now: Timestamp) -> Redrive {
    match dl.stage {
        Stage::Processor => {
            let known = dl
                .job_type
                .as_deref()
                .and_then(|t| Registry::builtin().get(t));
            let Some(kind) = known else {
                return Redrive::Keep(format!(
                    "job {} has no known job_type, so the processor cannot run it; fix the job and send it again",
                    dl.job_id
                ));
            };
            Redrive::JobsTodo(EnrichedJob {
                job_id: dl.job_id.clone(),
                job_type: kind.name().into(),
                status: JobStatus::New,
                received_at: now,
                event_time: None,
                attempt: dl.attempts.saturating_add(1),
                trace_context: dl.trace_context.clone(),
                errors: dl.errors.clone(),
                // A redrive is an operator's act of its own, not part of any replay.
                replay: None,
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

    #[test]
    fn stranded_records_are_told_apart_from_dead_letters_and_junk() {
        let job = r#"{"job_id":"job-9","job_type":"user_onboarding","status":"NEW",
            "received_at":"2026-11-23T10:00:00Z","attempt":2,"errors":[],
            "job":{"job_type":"user_onboarding","message":{"user_id":"1","user_name":"A"}}}"#;
        match Stranded::of(job) {
            Some(Stranded::Job(j)) => assert_eq!((j.job_id.as_str(), j.attempt), ("job-9", 2)),
            other => panic!("{other:?}"),
        }
        let event = r#"{"id":"evt-1","source":"jobs","detail":{"id":"job-3","job_type":"x"}}"#;
        assert_eq!(
            Stranded::of(event).as_ref().and_then(Stranded::job_id),
            Some("job-3")
        );
        let no_id = r#"{"id":"evt-1","source":"jobs","detail":{"job_type":"x"}}"#;
        assert_eq!(
            Stranded::of(no_id).as_ref().and_then(Stranded::job_id),
            Some("evt-1")
        );
        let unknown = job.replace(
            "\"job_type\":\"user_onboarding\",\"status\"",
            "\"job_type\":\"mystery\",\"status\"",
        );
        assert_ne!(unknown, job);
        assert_eq!(
            Stranded::of(&unknown),
            None,
            "a kind this build does not know stays"
        );
        assert_eq!(Stranded::of("not json"), None);
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let too_deep = format!(r#"{{"id":"evt-2","detail":{{"id":"job-4","m":{deep}}}}}"#);
        assert_eq!(
            Stranded::of(&too_deep).as_ref().and_then(Stranded::job_id),
            Some("job-4"),
            "an event too deep for the parser is still its producer's job"
        );
        assert_eq!(Stranded::of(r#"{"hello":"world"}"#), None);
    }
    use crate::messages::{ErrorEntry, EventEnvelope};
    use chrono::Utc;

    fn dead_letter(stage: Stage, job_type: Option<&str>) -> DeadLetter {
        let status = if stage == Stage::Ingester {
            JobStatus::Rejected
        } else {
            JobStatus::Failed
        };
        let error = ErrorEntry::new(stage, "injected".into(), "failed on purpose", 3, Utc::now());
        let job =
            json!({"job_type": "data_cleanup", "message": {"target_table": "t", "retention": 3}});
        DeadLetter::new(
            "job-7".into(),
            job_type.map(str::to_owned),
            status,
            error,
            job,
        )
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
