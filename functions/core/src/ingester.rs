//! The ingester: reads EventBridge events from `ingester-queue`, validates each job,
//! forwards valid ones to `jobs-todo` enriched for the processor, and dead-letters
//! rejections with one `REJECTED` notification each.
//!
//! Only records whose downstream calls failed are reported as batch item failures,
//! so SQS retries them alone and the rest of the batch is neither lost nor repeated.

use crate::job::{parse_job, raw_job_type, Rejection, MAX_DETAIL_BYTES};
use crate::messages::{
    DeadLetter, EnrichedJob, ErrorEntry, EventEnvelope, JobStatus, Stage, TraceContext,
};
use crate::ports::{send_all, MessageQueue, PortError, Topic};
use crate::record::{
    deliver_dead_letters, enriched_message, raw_body, RecordMeta, MAX_KEPT_BODY_BYTES,
};
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::{info, warn};

/// Settings that change the ingester's decisions.
#[derive(Debug, Clone)]
pub struct IngesterConfig {
    /// The source queue's `maxReceiveCount`. On its last allowed receive a record that
    /// still cannot be forwarded is dead-lettered by the ingester itself, so it gets its
    /// notification and the DLQ keeps one shape.
    pub max_receive_count: u32,
}

/// The ingester's downstream resources.
#[derive(Debug)]
pub struct Ingester<Q, T> {
    pub jobs_todo: Q,
    pub dead_letters: Q,
    pub topic: T,
    pub config: IngesterConfig,
}

/// What to do with one record.
enum Verdict {
    Forward(EnrichedJob),
    Reject(DeadLetter),
}

impl<Q: MessageQueue, T: Topic> Ingester<Q, T> {
    pub async fn handle(&self, event: SqsEvent, now: DateTime<Utc>) -> SqsBatchResponse {
        let mut forwards = Vec::new();
        let mut dead = Vec::new();
        for record in &event.records {
            let meta = RecordMeta::of(record);
            match triage(record, &meta, now) {
                Verdict::Forward(job) => forwards.push((meta, job)),
                Verdict::Reject(dl) => {
                    info!(job_id = %dl.job_id, code = dl.last_error_code(), "job rejected");
                    dead.push((meta, dl));
                }
            }
        }

        let mut response = SqsBatchResponse::default();
        let outgoing: Vec<_> = forwards
            .iter()
            .map(|(_, job)| enriched_message(job))
            .collect();
        let sent = send_all(&self.jobs_todo, &outgoing).await;
        for ((meta, job), result) in forwards.into_iter().zip(sent) {
            match result {
                Ok(()) => info!(job_id = %job.job_id, job_type = %job.job_type, "job forwarded"),
                Err(e) if meta.receive_count >= self.config.max_receive_count => {
                    warn!(job_id = %job.job_id, error = %e, "forwarding failed on the last attempt; dead-lettering");
                    let letter = forward_failed(job, &meta, &e, now);
                    dead.push((meta, letter));
                }
                Err(e) => {
                    warn!(job_id = %job.job_id, error = %e, "forwarding failed; SQS will retry");
                    response.add_failure(meta.message_id);
                }
            }
        }

        for failed in deliver_dead_letters(&self.dead_letters, &self.topic, dead, now).await {
            response.add_failure(failed);
        }
        response
    }
}

fn triage(record: &SqsMessage, meta: &RecordMeta, now: DateTime<Utc>) -> Verdict {
    let body = record.body.as_deref().unwrap_or_default();
    let Some(envelope) = EventEnvelope::from_body(body) else {
        let rejection = Rejection::new(
            crate::job::RejectCode::MalformedEnvelope,
            None,
            "the message is not an EventBridge event with a detail",
        );
        return Verdict::Reject(reject(
            meta.message_id.clone(),
            None,
            raw_body(body),
            rejection,
            meta,
            now,
        ));
    };
    // The detail is no longer than the body that carried it.
    let size = (body.len() > MAX_DETAIL_BYTES)
        .then(|| serde_json::to_vec(&envelope.detail).map_or(0, |v| v.len()));
    let fallback_id = envelope
        .id
        .clone()
        .unwrap_or_else(|| meta.message_id.clone());
    match parse_job(&envelope.detail, Some(size.unwrap_or(body.len()))) {
        Ok(job) => Verdict::Forward(EnrichedJob {
            job_id: job.id.unwrap_or(fallback_id),
            job_type: job.spec.job_type(),
            status: JobStatus::New,
            received_at: now,
            event_time: envelope.time,
            attempt: 1,
            trace_context: trace_context_of(&envelope.detail),
            errors: Vec::new(),
            job: envelope.detail,
        }),
        Err(rejection) => {
            let job_id = valid_id(&envelope.detail).unwrap_or(fallback_id);
            let job = if size.is_some_and(|s| s > MAX_KEPT_BODY_BYTES) {
                raw_body(body)
            } else {
                envelope.detail
            };
            Verdict::Reject(reject(
                job_id,
                trace_context_of(&job),
                job,
                rejection,
                meta,
                now,
            ))
        }
    }
}

fn reject(
    job_id: String,
    trace_context: Option<TraceContext>,
    job: Value,
    rejection: Rejection,
    meta: &RecordMeta,
    now: DateTime<Utc>,
) -> DeadLetter {
    DeadLetter {
        job_id,
        job_type: raw_job_type(&job).map(str::to_owned),
        status: JobStatus::Rejected,
        stage: Stage::Ingester,
        attempts: meta.receive_count,
        errors: vec![ErrorEntry {
            stage: Stage::Ingester,
            code: rejection.code.as_str().to_owned(),
            message: rejection.message,
            field: rejection.field,
            attempt: meta.receive_count,
            timestamp: now,
        }],
        trace_context,
        job,
    }
}

fn forward_failed(
    job: EnrichedJob,
    meta: &RecordMeta,
    error: &PortError,
    now: DateTime<Utc>,
) -> DeadLetter {
    let mut errors = job.errors;
    errors.push(ErrorEntry {
        stage: Stage::Ingester,
        code: "forward_failed".into(),
        message: format!("could not forward the job to jobs-todo: {error}"),
        field: None,
        attempt: meta.receive_count,
        timestamp: now,
    });
    DeadLetter {
        job_id: job.job_id,
        job_type: Some(job.job_type.as_str().to_owned()),
        status: JobStatus::Failed,
        stage: Stage::Ingester,
        attempts: meta.receive_count,
        errors,
        trace_context: job.trace_context,
        job: job.job,
    }
}

/// The sender's id when it is usable, so even a rejected job keeps the id it was sent with.
fn valid_id(detail: &Value) -> Option<String> {
    let id = detail.get("id")?.as_str()?;
    let ok = (1..=crate::job::MAX_ID_CHARS).contains(&id.chars().count())
        && !id.chars().any(char::is_control);
    ok.then(|| id.to_owned())
}

/// Trace context the sender put in the detail (`trace_context.traceparent`).
fn trace_context_of(detail: &Value) -> Option<TraceContext> {
    let tc = detail.get("trace_context")?;
    let traceparent = tc.get("traceparent")?.as_str()?;
    Some(TraceContext {
        traceparent: traceparent.to_owned(),
        tracestate: tc
            .get("tracestate")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobType;
    use crate::testing::{MemoryQueue, MemoryTopic};

    fn batch() -> SqsEvent {
        serde_json::from_str(include_str!("../fixtures/ingester-batch.json")).expect("fixture")
    }

    fn ingester(
        jobs_todo: MemoryQueue,
        dead_letters: MemoryQueue,
        topic: MemoryTopic,
    ) -> Ingester<MemoryQueue, MemoryTopic> {
        Ingester {
            jobs_todo,
            dead_letters,
            topic,
            config: IngesterConfig {
                max_receive_count: 5,
            },
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T10:00:01Z")
            .expect("valid")
            .with_timezone(&Utc)
    }

    #[tokio::test]
    async fn routes_the_original_jobs_and_malformed_ones() {
        let ing = ingester(
            MemoryQueue::default(),
            MemoryQueue::default(),
            MemoryTopic::default(),
        );
        let response = ing.handle(batch(), now()).await;
        assert!(response.batch_item_failures.is_empty());

        let forwarded = ing.jobs_todo.jobs();
        let ids: Vec<_> = forwarded.iter().map(|j| j.job_id.as_str()).collect();
        // The four original good jobs use the EventBridge event id; a given id is kept.
        assert_eq!(
            ids,
            ["evt-0000", "evt-0001", "evt-0002", "evt-0003", "given-id-7"]
        );
        assert!(forwarded
            .iter()
            .all(|j| j.status == JobStatus::New && j.attempt == 1 && j.errors.is_empty()));
        assert_eq!(forwarded[1].job_type, JobType::LongRunningJob);
        assert_eq!(
            forwarded[0].event_time.as_deref(),
            Some("2026-11-22T10:00:00Z")
        );

        let dead = ing.dead_letters.dead_letters();
        let codes: Vec<_> = dead
            .iter()
            .map(|d| (d.job_id.as_str(), d.last_error_code()))
            .collect();
        assert_eq!(
            codes,
            [
                ("evt-0004", "missing_field"),
                ("evt-0005", "unknown_job_type"),
                ("evt-0007", "invalid_detail"),
                ("msg-0008", "malformed_envelope"),
                ("evt-0009", "wrong_type"),
            ]
        );
        assert!(dead
            .iter()
            .all(|d| d.status == JobStatus::Rejected && d.errors.len() == 1));
        assert_eq!(
            dead[0].errors[0].field.as_deref(),
            Some("message.report_name")
        );
        assert_eq!(dead[3].job, Value::String("this is not json at all".into()));

        let notes = ing.topic.notifications();
        assert_eq!(
            notes.len(),
            5,
            "one REJECTED notification per rejection, none for forwarded jobs"
        );
        assert!(notes
            .iter()
            .all(|n| n.status == JobStatus::Rejected && n.stage == Stage::Ingester));
        assert_eq!(notes[1].job_type.as_deref(), Some("does_not_exist"));
    }

    #[tokio::test]
    async fn dead_letters_carry_routing_attributes() {
        let ing = ingester(
            MemoryQueue::default(),
            MemoryQueue::default(),
            MemoryTopic::default(),
        );
        ing.handle(batch(), now()).await;
        let sent = ing.dead_letters.sent.lock().expect("lock").clone();
        let attrs: std::collections::HashMap<_, _> = sent[1].attributes.iter().cloned().collect();
        assert_eq!(attrs["stage"], "ingester");
        assert_eq!(attrs["error_code"], "unknown_job_type");
        assert_eq!(attrs["job_type"], "does_not_exist");
    }

    #[tokio::test]
    async fn a_failed_forward_fails_only_its_record() {
        // Only the onboarding job (user "Ada") cannot be forwarded.
        let ing = ingester(
            MemoryQueue::refusing("\"Ada\""),
            MemoryQueue::default(),
            MemoryTopic::default(),
        );
        let response = ing.handle(batch(), now()).await;
        let failed: Vec<_> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        assert_eq!(failed, ["msg-0006"]);
        assert_eq!(ing.jobs_todo.jobs().len(), 4);
        assert_eq!(
            ing.dead_letters.dead_letters().len(),
            5,
            "rejections are unaffected"
        );
    }

    #[tokio::test]
    async fn unannounced_or_unstored_rejections_are_retried() {
        let ing = ingester(
            MemoryQueue::default(),
            MemoryQueue::refusing("malformed_envelope"),
            MemoryTopic::refusing("evt-0005"),
        );
        let response = ing.handle(batch(), now()).await;
        let mut failed: Vec<_> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        failed.sort();
        assert_eq!(failed, ["msg-0005", "msg-0008"]);
        // The unstored dead letter is not announced: a notification never precedes its dead letter.
        assert!(ing
            .topic
            .notifications()
            .iter()
            .all(|n| n.job_id != "msg-0008"));
    }

    #[tokio::test]
    async fn the_last_receive_dead_letters_instead_of_failing() {
        let mut event = batch();
        for r in &mut event.records {
            r.attributes
                .insert("ApproximateReceiveCount".into(), "5".into());
        }
        let ing = ingester(
            MemoryQueue::refusing("\"Ada\""),
            MemoryQueue::default(),
            MemoryTopic::default(),
        );
        let response = ing.handle(event, now()).await;
        assert!(response.batch_item_failures.is_empty());
        let dead = ing.dead_letters.dead_letters();
        let last = dead
            .iter()
            .find(|d| d.job_id == "given-id-7")
            .expect("dead-lettered");
        assert_eq!(
            (last.status, last.last_error_code(), last.attempts),
            (JobStatus::Failed, "forward_failed", 5)
        );
        let note = ing
            .topic
            .notifications()
            .into_iter()
            .find(|n| n.job_id == "given-id-7")
            .expect("announced");
        assert_eq!(note.status, JobStatus::Failed);
    }

    #[tokio::test]
    async fn forwards_in_batches_of_ten() {
        let detail = r#"{"job_type":"user_onboarding","message":{"user_id":"1","user_name":"A"}}"#;
        let records: Vec<_> = (0..23)
            .map(|i| {
                serde_json::json!({"messageId": format!("m{i}"), "body":
                    format!(r#"{{"id":"e{i}","detail":{detail}}}"#), "attributes": {}})
            })
            .collect();
        let event: SqsEvent =
            serde_json::from_value(serde_json::json!({"Records": records})).expect("event");
        let ing = ingester(
            MemoryQueue::default(),
            MemoryQueue::default(),
            MemoryTopic::default(),
        );
        ing.handle(event, now()).await;
        assert_eq!(*ing.jobs_todo.batches.lock().expect("lock"), [10, 10, 3]);
    }
}
