//! Per-record plumbing shared by both handlers: reading an SQS record's metadata,
//! turning jobs and dead letters into queue messages, and delivering dead letters
//! with their notifications so that a failure leaves the record in SQS for a retry.

use crate::job::MAX_DETAIL_BYTES;
use crate::messages::{DeadLetter, EnrichedJob, Notification};
use crate::ports::{retry_later_delay, send_all, MessageQueue, OutgoingMessage, Receipt, Topic};
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::field::Empty;
use tracing::warn;

/// What the handlers need to know about an SQS record besides its body.
#[derive(Debug, Clone)]
pub struct RecordMeta {
    pub message_id: String,
    /// `ApproximateReceiveCount`: 1 on first delivery.
    pub receive_count: u32,
    /// The `job` log span: every log line about the record carries its `job_id` and
    /// `trace_id` (filled in by [`RecordMeta::identify`]).
    pub log: tracing::Span,
}

impl RecordMeta {
    pub fn of(record: &SqsMessage) -> RecordMeta {
        let receive_count = receive_count(record);
        let message_id = record.message_id.clone().unwrap_or_default();
        RecordMeta {
            log: tracing::info_span!("job", job_id = Empty, trace_id = Empty, message_id = %message_id),
            message_id,
            receive_count,
        }
    }

    /// Names the record's job and trace in its log span.
    pub fn identify(&self, job_id: &str, trace_id: Option<&str>) {
        self.log.record("job_id", job_id);
        if let Some(t) = trace_id {
            self.log.record("trace_id", t);
        }
    }
}

/// `ApproximateReceiveCount`: 1 on first delivery.
fn receive_count(record: &SqsMessage) -> u32 {
    record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1)
}

/// Serializes a wire type. These types hold only strings, numbers and JSON values
/// keyed by strings, which always serialize.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("wire types always serialize to JSON")
}

/// The `jobs-todo` message for an enriched job.
pub fn enriched_message(job: &EnrichedJob) -> OutgoingMessage {
    let mut attributes = vec![
        ("job_id", job.job_id.clone()),
        ("job_type", job.job_type.as_str().to_owned()),
    ];
    if let Some(tc) = &job.trace_context {
        attributes.push(("traceparent", tc.traceparent.clone()));
    }
    OutgoingMessage {
        body: to_json(job),
        attributes,
        delay_seconds: 0,
    }
}

/// The `dead-letter-queue` message for a dead letter.
pub fn dead_letter_message(dl: &DeadLetter) -> OutgoingMessage {
    OutgoingMessage {
        body: to_json(dl),
        attributes: vec![
            ("stage", dl.stage.as_str().to_owned()),
            ("error_code", dl.last_error_code().to_owned()),
            ("job_id", dl.job_id.clone()),
            (
                "job_type",
                crate::messages::job_type_attribute(dl.job_type.as_deref()).to_owned(),
            ),
        ],
        delay_seconds: 0,
    }
}

/// Sends each dead letter, then announces it. Returns the message ids of records to
/// report as failures: the dead letter was not stored, or its notification not sent.
pub async fn deliver_dead_letters<Q: MessageQueue, T: Topic>(
    dead_letters: &Q,
    topic: &T,
    letters: Vec<(RecordMeta, DeadLetter)>,
    now: DateTime<Utc>,
) -> Vec<String> {
    let outgoing: Vec<_> = letters
        .iter()
        .map(|(_, dl)| dead_letter_message(dl))
        .collect();
    let stored = send_all(dead_letters, &outgoing).await;
    let mut failed = Vec::new();
    let mut announcements = Vec::new();
    for ((meta, dl), result) in letters.into_iter().zip(stored) {
        match result {
            Ok(()) => announcements.push((meta, Notification::for_dead_letter(&dl, now))),
            Err(e) => {
                meta.log.in_scope(|| warn!(job_id = %dl.job_id, error = %e, "could not store the dead letter; SQS will retry"));
                failed.push(meta.message_id);
            }
        }
    }
    failed.extend(publish_all(topic, announcements).await);
    failed
}

/// Publishes notifications concurrently; returns the message ids whose publish failed.
pub async fn publish_all<T: Topic>(
    topic: &T,
    notifications: Vec<(RecordMeta, Notification)>,
) -> Vec<String> {
    let results =
        futures_util::future::join_all(notifications.iter().map(|(_, n)| topic.publish(n))).await;
    notifications
        .into_iter()
        .zip(results)
        .filter_map(|((meta, n), result)| {
            let e = result.err()?;
            meta.log.in_scope(|| warn!(job_id = %n.job_id, error = %e, "could not publish the end state; SQS will retry"));
            Some(meta.message_id)
        })
        .collect()
}

/// The longest raw body kept in a dead letter when the job itself could not be read.
pub const MAX_KEPT_BODY_BYTES: usize = 2 * MAX_DETAIL_BYTES;

/// An unreadable body, kept as a string so the dead letter still shows what came;
/// cut on a character boundary if huge, to stay within the queue's message size.
pub fn raw_body(body: &str) -> Value {
    let mut end = body.len().min(MAX_KEPT_BODY_BYTES);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    Value::String(body[..end].to_owned())
}

/// Asks the source queue to offer the batch's failed records again soon, each after a
/// delay that grows with its receive count, rather than after the whole visibility
/// timeout (which must cover the function's longest run).
pub async fn retry_failed_soon<Q: MessageQueue>(
    source: &Q,
    event: &SqsEvent,
    response: &SqsBatchResponse,
) {
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    retry_soon(source, &event.records, &failed).await;
}

/// Asks the source queue to offer the records with these message ids again soon, as
/// [`retry_failed_soon`] does for a whole batch: a handler calls it as soon as a
/// record's failure is known, so the record does not wait for the rest of its batch
/// (or for the whole visibility timeout, if the invocation dies first). Records that
/// fail together go in one call.
pub async fn retry_soon<Q: MessageQueue>(source: &Q, records: &[SqsMessage], failed: &[&str]) {
    if failed.is_empty() {
        return;
    }
    let receipts: Vec<Receipt> = records
        .iter()
        .filter(|r| {
            r.message_id
                .as_deref()
                .is_some_and(|id| failed.contains(&id))
        })
        .filter_map(|r| {
            Some(Receipt {
                receipt_handle: r.receipt_handle.clone()?,
                delay_seconds: retry_later_delay(receive_count(r)),
            })
        })
        .collect();
    if receipts.is_empty() {
        return;
    }
    if let Err(e) = source.retry_later(&receipts).await {
        warn!(error = %e, records = receipts.len(), "could not bring failed records back early; the visibility timeout will");
    }
}
