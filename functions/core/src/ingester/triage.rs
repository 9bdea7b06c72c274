//! Triage: what validation makes of one record, before any call is made. Pure: the
//! same record always gets the same verdict.

use super::{IngesterConfig, Verdict};
use crate::job::{parse_job_with, raw_job_type, Job, Rejection};
use crate::messages::{
    written_len, DeadLetter, EnrichedJob, ErrorCode, ErrorEntry, EventEnvelope, JobStatus,
    Replayed, Stage, TraceContext, MAX_FORWARD_BYTES,
};
use crate::record::{enriched_message, raw_body, RecordMeta, MAX_KEPT_BODY_BYTES};
use crate::telemetry::propagation;
use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// The name of the queue a batch came from (the last part of its ARN).
pub(crate) fn source_queue(event: &SqsEvent) -> String {
    event
        .records
        .iter()
        .find_map(|r| r.event_source_arn.as_deref())
        .and_then(|arn| arn.rsplit(':').next())
        .unwrap_or("unknown")
        .to_owned()
}

pub(super) fn triage(
    record: &SqsMessage,
    meta: &RecordMeta,
    config: &IngesterConfig,
    now: DateTime<Utc>,
) -> Verdict {
    let body = record.body.as_deref().unwrap_or_default();
    let Some(envelope) = EventEnvelope::from_body(body) else {
        return not_an_event(body, meta, now);
    };
    // The limits apply to the detail as it is written on, not as it came: numbers are
    // written out in full, so a detail can grow several times over.
    let size = written_len(&envelope.detail);
    let fallback_id = envelope
        .id
        .clone()
        .unwrap_or_else(|| meta.message_id.clone());
    let replay = envelope
        .replay_name
        .clone()
        .map(|name| Replayed { name, rerun: false });
    let parsed = parse_job_with(&config.kinds, &envelope.detail, Some(size))
        .and_then(|job| job.spec.admit(config.max_job_timeout_secs).map(|()| job));
    let (detail, rejection) = match parsed {
        Ok(job) => {
            let time = envelope.time.clone();
            let mut enriched = enrich(job, envelope.detail, time, fallback_id.clone(), now);
            // Measured as the live event was: a replay's few bytes of name must not turn
            // a job that was forwarded into a rejection (the processor reads messages
            // up to MAX_ENRICHED_BYTES, well above).
            match too_large_to_forward(&enriched) {
                None => {
                    enriched.replay = replay;
                    return Verdict::Forward(enriched, envelope.time);
                }
                Some(rejection) => (enriched.job, rejection),
            }
        }
        Err(rejection) => (envelope.detail, rejection),
    };
    let job_id = valid_id(&detail).unwrap_or(fallback_id);
    let job = if size > MAX_KEPT_BODY_BYTES {
        raw_body(body)
    } else {
        detail
    };
    let mut letter = reject(
        job_id,
        propagation::detail_trace_context(&job),
        job,
        rejection,
        meta,
        now,
    );
    letter.replay = replay;
    Verdict::Reject(letter, envelope.time)
}

/// A body that is not an EventBridge event the parser can read: rejected as it came,
/// under the id its producer knows when its text names one (the detail's `id`, else
/// the event's: EventBridge accepted it, so it is JSON, even if too deep to parse),
/// and only else under its SQS message id; its letter keeps the detail's text.
fn not_an_event(body: &str, meta: &RecordMeta, now: DateTime<Utc>) -> Verdict {
    let rejection = Rejection::new(
        crate::job::ErrorCode::MalformedEnvelope,
        None,
        "the message is not an EventBridge event with a detail the parser can read",
    );
    let event = crate::messages::shallow_event(body);
    let producers_id = event
        .producers_id()
        .unwrap_or_else(|| meta.message_id.clone());
    // The letter keeps the detail's text, not the envelope's: its fingerprint is then
    // the same for every delivery and replay of the event, so the rejection is claimed,
    // and ends, once.
    let job = raw_body(event.detail.unwrap_or(body));
    let dl = reject(producers_id, None, job, rejection, meta, now);
    Verdict::Reject(dl, None)
}

/// The valid `job` as the first attempt's message for the processor: under its own
/// id, else `fallback_id`, carrying the trace context its detail brought.
fn enrich(
    job: Job,
    detail: Value,
    event_time: Option<String>,
    fallback_id: String,
    now: DateTime<Utc>,
) -> EnrichedJob {
    EnrichedJob {
        job_id: job.id.unwrap_or(fallback_id),
        job_type: job.spec.job_type().into(),
        status: JobStatus::New,
        received_at: now,
        event_time,
        attempt: 1,
        trace_context: propagation::detail_trace_context(&detail),
        errors: Vec::new(),
        replay: None,
        job: detail,
    }
}

/// The rejection of a valid job whose message would be over [`MAX_FORWARD_BYTES`]
/// as written; `None` when it fits.
fn too_large_to_forward(enriched: &EnrichedJob) -> Option<Rejection> {
    let forward_size = enriched_message(enriched).size();
    (forward_size > MAX_FORWARD_BYTES).then(|| {
        Rejection::new(
            ErrorCode::TooLarge,
            None,
            format!(
                "the message for the processor would be {forward_size} bytes (the detail with its id, times and trace context, as written); the limit is {MAX_FORWARD_BYTES} bytes"
            ),
        )
    })
}

pub(super) fn reject(
    job_id: String,
    trace_context: Option<TraceContext>,
    job: Value,
    rejection: Rejection,
    meta: &RecordMeta,
    now: DateTime<Utc>,
) -> DeadLetter {
    let error = ErrorEntry::new(
        Stage::Ingester,
        rejection.code,
        rejection.message,
        meta.receive_count,
        now,
    )
    .on_field(rejection.field);
    let job_type = raw_job_type(&job).map(str::to_owned);
    DeadLetter::new(job_id, job_type, JobStatus::Rejected, error, job)
        .with_trace_context(trace_context)
}

/// The sender's id when it is usable, so even a rejected job keeps the id it was sent with.
fn valid_id(detail: &Value) -> Option<String> {
    let id = detail.get("id")?.as_str()?;
    crate::job::usable_name(id).then(|| id.to_owned())
}
