//! Per-record plumbing shared by both handlers: reading an SQS record's metadata,
//! turning jobs and dead letters into queue messages, and delivering dead letters
//! with their notifications so that a failure leaves the record in SQS for a retry.

use crate::job::MAX_DETAIL_BYTES;
use crate::messages::{
    attribute_value, sqs_safe_json, written_char_len, DeadLetter, EnrichedJob, Notification,
    MAX_ATTRIBUTE_CHARS,
};
use crate::ports::{
    retry_later_delay, send_all, MessageQueue, OutgoingMessage, Receipt, Topic, MAX_MESSAGE_BYTES,
};
use crate::telemetry::propagation;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use serde_json::Value;
use tracing::field::Empty;
use tracing::warn;

/// What the handlers need to know about an SQS record besides its body.
#[derive(Debug, Clone)]
pub struct RecordMeta {
    pub message_id: String,
    /// `ApproximateReceiveCount`: 1 on first delivery.
    pub receive_count: u32,
    /// This delivery's claim token ([`crate::store::claim_token`]), made anew each time
    /// the record is received and kept for its whole invocation: its claims carry it,
    /// and its give-back releases only a claim holding it.
    pub claim_token: String,
    /// The `job` log span: every log line about the record carries its `job_id` and
    /// `trace_id` (filled in by [`RecordMeta::identify`]).
    pub log: tracing::Span,
}

impl RecordMeta {
    pub fn of(record: &SqsMessage) -> RecordMeta {
        let receive_count = receive_count(record);
        let message_id = record.message_id.clone().unwrap_or_default();
        RecordMeta {
            log: tracing::info_span!(target: crate::telemetry::LOG_SPAN_TARGET, "job", job_id = Empty, trace_id = Empty, message_id = %message_id),
            message_id,
            receive_count,
            claim_token: crate::store::claim_token(),
        }
    }

    /// The metadata of something handled like a record that did not come from SQS
    /// (the relay's outbox entries): `id` stands for its message id.
    pub fn named(id: String) -> RecordMeta {
        RecordMeta {
            log: tracing::info_span!(target: crate::telemetry::LOG_SPAN_TARGET, "job", job_id = Empty, trace_id = Empty, message_id = %id),
            message_id: id,
            receive_count: 1,
            claim_token: crate::store::claim_token(),
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

/// Serializes a wire type as text SQS accepts ([`sqs_safe_json`]). These types hold
/// only strings, numbers and JSON values keyed by strings, which always serialize.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    sqs_safe_json(serde_json::to_string(value).expect("wire types always serialize to JSON"))
}

/// The `jobs-todo` message for an enriched job.
pub fn enriched_message(job: &EnrichedJob) -> OutgoingMessage {
    let mut attributes = vec![
        ("job_id", attribute_value(&job.job_id)),
        ("job_type", job.job_type.as_str().to_owned()),
    ];
    if let Some(tc) = &job.trace_context {
        if propagation::valid_traceparent(&tc.traceparent) {
            attributes.push(("traceparent", tc.traceparent.clone()));
        }
    }
    OutgoingMessage {
        body: to_json(job),
        attributes,
        delay_seconds: 0,
        group: None,
    }
}

/// The `dead-letter-queue` message for a dead letter. One too large for the queue
/// ([`MAX_MESSAGE_BYTES`]: a job whose detail grew when written out, an enormous
/// `job_type`) keeps its job as JSON text cut to fit, the shape a dead letter of an
/// unreadable body has, rather than never being stored.
pub fn dead_letter_message(dl: &DeadLetter) -> OutgoingMessage {
    let message = dead_letter_message_as_is(dl);
    if message.size() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut cut = dl.clone();
    cut.job = Value::Null;
    if let Some(t) = cut.job_type.as_mut() {
        if t.chars().nth(MAX_ATTRIBUTE_CHARS).is_some() {
            *t = attribute_value(t);
        }
    }
    // What the rest takes, and a little room for the quotes around the text.
    let rest = dead_letter_message_as_is(&cut).size();
    let budget = MAX_MESSAGE_BYTES.saturating_sub(rest + 16);
    let text = match &dl.job {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    cut.job = cut_text(&text, budget);
    dead_letter_message_as_is(&cut)
}

fn dead_letter_message_as_is(dl: &DeadLetter) -> OutgoingMessage {
    OutgoingMessage {
        body: to_json(dl),
        attributes: vec![
            ("stage", dl.stage.as_str().to_owned()),
            ("error_code", attribute_value(dl.last_error_code())),
            ("job_id", attribute_value(&dl.job_id)),
            (
                "job_type",
                attribute_value(crate::messages::job_type_attribute(dl.job_type.as_deref())),
            ),
        ],
        delay_seconds: 0,
        group: None,
    }
}

/// What goes to `job-end-state-topic` for a notification (SNS delivers the same to an
/// SQS subscriber): the notification with its `notification_id`, and the attributes
/// `status` and `job_type` (for subscription filter policies) and `notification_id`
/// (for consumers that drop copies).
pub fn notification_message(n: &Notification) -> OutgoingMessage {
    let id = n.notification_id();
    let mut body = serde_json::to_value(n).unwrap_or_default();
    if let Value::Object(fields) = &mut body {
        fields.insert(NOTIFICATION_ID.to_owned(), Value::String(id.clone()));
    }
    OutgoingMessage {
        body: to_json(&body),
        attributes: vec![
            ("status", n.status.as_str().to_owned()),
            ("job_type", attribute_value(n.job_type_attribute())),
            (NOTIFICATION_ID, id),
        ],
        delay_seconds: 0,
        group: None,
    }
}

/// The body field and SNS message attribute that carry [`Notification::notification_id`].
pub const NOTIFICATION_ID: &str = "notification_id";

/// Sends each dead letter, then publishes the notification of its end (the one the end
/// was recorded with, so every copy of one end says the same). Returns the message ids
/// of records to report as failures: the dead letter was not stored, or its
/// notification not sent.
pub async fn deliver_dead_letters<Q: MessageQueue, T: Topic>(
    dead_letters: &Q,
    topic: &T,
    letters: Vec<(RecordMeta, DeadLetter, Notification)>,
) -> Delivered {
    let outgoing: Vec<_> = letters
        .iter()
        .map(|(_, dl, _)| dead_letter_message(dl))
        .collect();
    let stored = send_all(dead_letters, &outgoing).await;
    let mut failed = Vec::new();
    let mut announcements = Vec::new();
    for ((meta, dl, notification), result) in letters.into_iter().zip(stored) {
        match result {
            Ok(()) => announcements.push((meta, notification)),
            Err(e) => {
                meta.log.in_scope(|| warn!(job_id = %dl.job_id, error = %e, "could not store the dead letter; SQS will retry"));
                failed.push(meta.message_id);
            }
        }
    }
    let unannounced = publish_all(topic, announcements).await;
    Delivered {
        letter_only: unannounced.clone(),
        failed: failed.into_iter().chain(unannounced).collect(),
    }
}

/// What [`deliver_dead_letters`] did.
#[derive(Debug, Default)]
pub struct Delivered {
    /// The message ids of the records that must stay in SQS.
    pub failed: Vec<String>,
    /// Those of them whose letter was stored and only the publish failed: their end
    /// is to be marked [`crate::store::Marked::LetterStored`].
    pub letter_only: Vec<String>,
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

/// The most bytes a raw body takes in a dead letter, as written there (escapes
/// included), when the job itself could not be read.
pub const MAX_KEPT_BODY_BYTES: usize = 2 * MAX_DETAIL_BYTES;

/// An unreadable body, kept as a string so the dead letter still shows what came;
/// cut on a character boundary if huge, so that it takes at most
/// [`MAX_KEPT_BODY_BYTES`] once written (a body of quotes or control characters
/// doubles or more when escaped).
pub fn raw_body(body: &str) -> Value {
    cut_text(body, MAX_KEPT_BODY_BYTES)
}

/// The longest start of `text` that takes at most `budget` bytes written as a JSON
/// string ([`written_char_len`]), as a JSON string.
fn cut_text(text: &str, budget: usize) -> Value {
    let mut written = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        written += written_char_len(c);
        if written > budget {
            break;
        }
        end = i + c.len_utf8();
    }
    Value::String(text[..end].to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ErrorEntry, JobStatus, Stage};
    use serde_json::json;

    #[test]
    fn every_copy_of_an_end_carries_one_notification_id_and_another_end_another() {
        let dl = letter(json!({"job_type": "x"}), Some("x".into()));
        let first = Notification::for_dead_letter(&dl, crate::clock::now());
        let later =
            Notification::for_dead_letter(&dl, first.timestamp + chrono::TimeDelta::hours(1));
        assert_eq!(
            first.notification_id(),
            later.notification_id(),
            "a re-publish, built later"
        );
        let wire = notification_message(&first);
        let body: Value = serde_json::from_str(&wire.body).expect("json");
        assert_eq!(body[NOTIFICATION_ID], json!(first.notification_id()));
        assert!(wire
            .attributes
            .contains(&(NOTIFICATION_ID, first.notification_id())));
        // The same job rejected again (a redrive): a new error, a new end.
        let mut again = dl.clone();
        again.errors[0].timestamp += chrono::TimeDelta::seconds(1);
        let again = Notification::for_dead_letter(&again, first.timestamp);
        assert_ne!(again.notification_id(), first.notification_id());
        let mut next_attempt = first.clone();
        next_attempt.attempts += 1;
        assert_ne!(next_attempt.notification_id(), first.notification_id());
        assert_eq!(first.notification_id().len(), 32);
    }

    fn letter(job: Value, job_type: Option<String>) -> DeadLetter {
        let now = crate::clock::now();
        let error = ErrorEntry::new(Stage::Ingester, "too_large".into(), "too large", 1, now);
        DeadLetter::new("job-1".into(), job_type, JobStatus::Rejected, error, job)
    }

    #[test]
    fn a_dead_letter_too_large_for_the_queue_keeps_its_job_as_text_cut_to_fit() {
        // 128 KiB of `1e15`s as sent is 480 KiB as written, with quotes to escape.
        let samples: Value =
            serde_json::from_str(&format!("[{}]", vec!["1e15"; 26_000].join(","))).expect("json");
        let job = json!({"job_type": "x\"y", "samples": samples});
        let dl = letter(job.clone(), Some("t".repeat(200_000)));
        let message = dead_letter_message(&dl);
        assert!(message.size() <= MAX_MESSAGE_BYTES, "{}", message.size());
        let stored: DeadLetter = serde_json::from_str(&message.body).expect("a dead letter");
        let Value::String(text) = &stored.job else {
            panic!("the job as text, got {:?}", stored.job);
        };
        assert!(job.to_string().starts_with(text.as_str()));
        assert!(text.len() > 100_000, "as much as fits: {}", text.len());
        assert_eq!(stored.last_error_code(), "too_large", "the history is kept");
        // One that fits is stored as it is.
        let small = letter(json!({"job_type": "x"}), Some("x".into()));
        assert_eq!(dead_letter_message(&small).body, to_json(&small));
    }

    #[test]
    fn a_raw_body_is_cut_by_what_it_takes_written() {
        let quotes = "\"".repeat(MAX_KEPT_BODY_BYTES);
        let kept = raw_body(&quotes);
        assert_eq!(kept.as_str().map(str::len), Some(MAX_KEPT_BODY_BYTES / 2));
        assert!(crate::messages::written_len(&kept) <= MAX_KEPT_BODY_BYTES + 2);
        let odd = "\u{ffff}".repeat(MAX_KEPT_BODY_BYTES);
        let kept = raw_body(&odd);
        assert!(crate::messages::written_len(&kept) <= MAX_KEPT_BODY_BYTES + 2);
    }

    #[test]
    fn messages_hold_only_what_sqs_accepts_and_mean_the_same() {
        let job = json!({"job_type": "user_onboarding", "message": {"user_name": "A\u{fffe}\u{ffff}\u{0}"}});
        let dl = letter(job.clone(), Some(String::new()));
        let message = dead_letter_message(&dl);
        assert!(message.body.chars().all(crate::ports::sqs_allows));
        assert!(
            message.body.contains(r"\ufffe\uffff\u0000"),
            "{}",
            message.body
        );
        let back: DeadLetter = serde_json::from_str(&message.body).expect("a dead letter");
        assert_eq!(back.job, job, "the same JSON value");
        let attrs: std::collections::HashMap<_, _> = message.attributes.into_iter().collect();
        assert_eq!(attrs["job_type"], "unknown");
        assert_eq!(crate::messages::attribute_value(""), "-");
        assert_eq!(
            crate::messages::attribute_value("a\u{ffff}\u{1}"),
            "a\u{fffd}\u{fffd}"
        );
        let long = crate::messages::attribute_value(&"x".repeat(1000));
        assert_eq!(long.chars().count(), MAX_ATTRIBUTE_CHARS);
        assert!(long.ends_with('…'));
    }
}
