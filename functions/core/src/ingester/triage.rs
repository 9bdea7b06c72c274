//! Triage: what validation makes of one record, before any call is made. Pure: the
//! same record always gets the same verdict.

use super::{IngesterConfig, Verdict};
use crate::job::{parse_job_with, raw_job_type, Job, Rejection};
use crate::messages::{
    written_len, DeadLetter, EnrichedJob, ErrorCode, ErrorEntry, EventEnvelope, JobStatus, Stage,
    TraceContext, MAX_FORWARD_BYTES,
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
        let rejection = Rejection::new(
            crate::job::ErrorCode::MalformedEnvelope,
            None,
            "the message is not an EventBridge event with a detail",
        );
        return Verdict::Reject(
            reject(
                meta.message_id.clone(),
                None,
                raw_body(body),
                rejection,
                meta,
                now,
            ),
            None,
        );
    };
    // The limits apply to the detail as it is written on, not as it came: numbers are
    // written out in full, so a detail can grow several times over.
    let size = written_len(&envelope.detail);
    let fallback_id = envelope
        .id
        .clone()
        .unwrap_or_else(|| meta.message_id.clone());
    let parsed = parse_job_with(&config.kinds, &envelope.detail, Some(size))
        .and_then(|job| job.spec.admit(config.max_job_timeout_secs).map(|()| job));
    let (detail, rejection) = match parsed {
        Ok(job) => match enrich(job, envelope.detail, &envelope.time, &fallback_id, now) {
            Ok(enriched) => return Verdict::Forward(enriched, envelope.time),
            Err(refused) => refused,
        },
        Err(rejection) => (envelope.detail, rejection),
    };
    let job_id = valid_id(&detail).unwrap_or(fallback_id);
    let job = if size > MAX_KEPT_BODY_BYTES {
        raw_body(body)
    } else {
        detail
    };
    Verdict::Reject(
        reject(
            job_id,
            propagation::detail_trace_context(&job),
            job,
            rejection,
            meta,
            now,
        ),
        envelope.time,
    )
}

/// A valid job as the enriched message for the processor; the detail back with a
/// rejection when that message would be too large to forward.
fn enrich(
    job: Job,
    detail: Value,
    event_time: &Option<String>,
    fallback_id: &str,
    now: DateTime<Utc>,
) -> Result<EnrichedJob, (Value, Rejection)> {
    let enriched = EnrichedJob {
        job_id: job.id.unwrap_or_else(|| fallback_id.to_owned()),
        job_type: job.spec.job_type().into(),
        status: JobStatus::New,
        received_at: now,
        event_time: event_time.clone(),
        attempt: 1,
        trace_context: propagation::detail_trace_context(&detail),
        errors: Vec::new(),
        job: detail,
    };
    let forward_size = enriched_message(&enriched).size();
    if forward_size <= MAX_FORWARD_BYTES {
        return Ok(enriched);
    }
    let rejection = Rejection::new(
        ErrorCode::TooLarge,
        None,
        format!(
            "the message for the processor would be {forward_size} bytes (the detail with its id, times and trace context, as written); the limit is {MAX_FORWARD_BYTES} bytes"
        ),
    );
    Err((enriched.job, rejection))
}

pub(super) fn reject(
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
            code: rejection.code,
            message: rejection.message,
            field: rejection.field,
            attempt: meta.receive_count,
            timestamp: now,
        }],
        trace_context,
        job,
    }
}

/// The sender's id when it is usable, so even a rejected job keeps the id it was sent with.
fn valid_id(detail: &Value) -> Option<String> {
    let id = detail.get("id")?.as_str()?;
    let ok = (1..=crate::job::MAX_ID_CHARS).contains(&id.chars().count())
        && !id.chars().any(char::is_control);
    ok.then(|| id.to_owned())
}
