//! Wire formats between the pipeline's hops: the EventBridge envelope the ingester
//! reads, the enriched job on `jobs-todo`, the dead letter and the end-state
//! notification. Each has exactly one shape, whichever stage produced it.

use crate::job::{JobType, MAX_DETAIL_BYTES};
use crate::kinds::Registry;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::fmt::Write as _;

/// The pipeline stage that produced an error, a dead letter or a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Ingester,
    Processor,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ingester => "ingester",
            Stage::Processor => "processor",
        }
    }

    /// The stage [`Stage::as_str`] names; `None` for any other text.
    pub fn parse(name: &str) -> Option<Stage> {
        [Stage::Ingester, Stage::Processor]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// A job's status. `NEW` while in flight; the other three are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    New,
    Completed,
    Failed,
    Rejected,
}

impl JobStatus {
    /// The statuses a job ends in.
    pub const TERMINAL: [JobStatus; 3] =
        [JobStatus::Completed, JobStatus::Failed, JobStatus::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::New => "NEW",
            JobStatus::Completed => "COMPLETED",
            JobStatus::Failed => "FAILED",
            JobStatus::Rejected => "REJECTED",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Timestamps travel as RFC 3339 with millisecond precision, always in UTC.
pub mod rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Why a job was rejected or failed: the one vocabulary of error codes, for both
/// stages, the error history, dead letters, notifications, spans and metrics. On the
/// wire each is its snake_case name, as before this enum existed; a code this build
/// does not know (written by a newer one) is kept as it came, not refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The SQS body was not the EventBridge envelope the rule delivers.
    MalformedEnvelope,
    /// The detail was not a JSON object.
    InvalidDetail,
    TooLarge,
    MissingField,
    WrongType,
    EmptyString,
    OutOfRange,
    UnknownJobType,
    InvalidId,
    /// The job's `ordering_key` is not 1 to 128 characters of text.
    InvalidOrderingKey,
    /// The job's id was already used for a job with different content.
    IdReused,
    /// The job needs more time than the invocation has left.
    DeadlineExceeded,
    /// The job asked to fail (fault injection).
    InjectedFault,
    /// A saga step names an action the pipeline does not know.
    UnknownAction,
    /// A saga's step was undone by its compensation (an entry of the history, not a
    /// failure of its own).
    Compensated,
    /// The ingester could not forward the job to `jobs-todo`.
    ForwardFailed,
    /// A `jobs-todo` message the processor cannot read.
    InvalidMessage,
    /// Any other code, as written.
    Other(String),
}

impl ErrorCode {
    const KNOWN: [ErrorCode; 17] = [
        ErrorCode::MalformedEnvelope,
        ErrorCode::InvalidDetail,
        ErrorCode::TooLarge,
        ErrorCode::MissingField,
        ErrorCode::WrongType,
        ErrorCode::EmptyString,
        ErrorCode::OutOfRange,
        ErrorCode::UnknownJobType,
        ErrorCode::InvalidId,
        ErrorCode::InvalidOrderingKey,
        ErrorCode::IdReused,
        ErrorCode::DeadlineExceeded,
        ErrorCode::InjectedFault,
        ErrorCode::ForwardFailed,
        ErrorCode::InvalidMessage,
        ErrorCode::UnknownAction,
        ErrorCode::Compensated,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::MalformedEnvelope => "malformed_envelope",
            ErrorCode::InvalidDetail => "invalid_detail",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::WrongType => "wrong_type",
            ErrorCode::EmptyString => "empty_string",
            ErrorCode::OutOfRange => "out_of_range",
            ErrorCode::UnknownJobType => "unknown_job_type",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::InvalidOrderingKey => "invalid_ordering_key",
            ErrorCode::IdReused => "job_id_reused",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::InjectedFault => "injected_fault",
            ErrorCode::ForwardFailed => "forward_failed",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::Compensated => "compensated",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::Other(code) => code,
        }
    }

    /// The code named `code`; an unknown name is [`ErrorCode::Other`].
    pub fn parse(code: &str) -> ErrorCode {
        ErrorCode::KNOWN
            .into_iter()
            .find(|c| c.as_str() == code)
            .unwrap_or_else(|| ErrorCode::Other(code.to_owned()))
    }
}

impl From<&str> for ErrorCode {
    fn from(code: &str) -> ErrorCode {
        ErrorCode::parse(code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(ErrorCode::parse(&code))
    }
}

/// One failed attempt, appended to the job's history (the error-history pattern):
/// the history travels with the job, so a dead letter explains itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEntry {
    pub stage: Stage,
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub attempt: u32,
    #[serde(with = "rfc3339")]
    pub timestamp: DateTime<Utc>,
}

impl ErrorEntry {
    /// The error `code` with `message`, raised at `stage` on `attempt`, about no one field.
    pub fn new(
        stage: Stage,
        code: ErrorCode,
        message: impl Into<String>,
        attempt: u32,
        timestamp: DateTime<Utc>,
    ) -> ErrorEntry {
        ErrorEntry {
            stage,
            code,
            message: message.into(),
            field: None,
            attempt,
            timestamp,
        }
    }

    /// The same error, naming the field of the job it is about.
    pub fn on_field(self, field: Option<String>) -> ErrorEntry {
        ErrorEntry { field, ..self }
    }
}

/// W3C trace context carried with the job across hops that drop transport headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// The replay an event came back in (EventBridge's `replay-name`), carried from the
/// ingester to the job's end so its notification says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    /// The replay's name.
    pub name: String,
    /// Whether this run ends, once more, a job that had ended already (an operator's
    /// `--rerun`), under a new attempt.
    #[serde(default)]
    pub rerun: bool,
}

/// The message the ingester puts on `jobs-todo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichedJob {
    pub job_id: String,
    pub job_type: JobType,
    pub status: JobStatus,
    #[serde(with = "rfc3339")]
    pub received_at: DateTime<Utc>,
    /// When the event entered EventBridge, for end-to-end latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// 1 on first delivery to the processor; raised when a job is sent back for retry.
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<TraceContext>,
    #[serde(default)]
    pub errors: Vec<ErrorEntry>,
    /// The replay this job came back in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replayed>,
    /// The job detail exactly as it was sent.
    pub job: Value,
}

/// Reasons a `jobs-todo` body cannot be read back as an [`EnrichedJob`].
#[derive(Debug, thiserror::Error)]
pub enum EnrichedJobError {
    #[error("the message is {0} bytes, over the {max} byte limit", max = MAX_ENRICHED_BYTES)]
    TooLarge(usize),
    #[error("the message is not a valid enriched job: {0}")]
    Invalid(#[from] serde_json::Error),
    /// A `job_type` the reader's registry does not know; the list it does.
    #[error(
        "the message is not a valid enriched job: unknown job_type `{0}`, expected one of {1}"
    )]
    UnknownJobType(String, String),
}

/// Largest enriched message the processor reads: the detail limit plus room for the
/// envelope and a long error history.
pub const MAX_ENRICHED_BYTES: usize = MAX_DETAIL_BYTES + 64 * 1024;

/// Largest enriched message the ingester forwards, as written ([`written_len`]): the
/// detail limit plus room for the id, times and trace context. The rest of
/// [`MAX_ENRICHED_BYTES`] is left for the error history that retries add.
pub const MAX_FORWARD_BYTES: usize = MAX_DETAIL_BYTES + 16 * 1024;

impl EnrichedJob {
    pub fn from_body(body: &str) -> Result<EnrichedJob, EnrichedJobError> {
        if body.len() > MAX_ENRICHED_BYTES {
            return Err(EnrichedJobError::TooLarge(body.len()));
        }
        Ok(serde_json::from_str(body)?)
    }

    /// Reads a body as [`EnrichedJob::from_body`] does, refusing a `job_type` outside
    /// `kinds` as the enum of kinds once did.
    pub fn from_body_in(body: &str, kinds: &Registry) -> Result<EnrichedJob, EnrichedJobError> {
        let job = EnrichedJob::from_body(body)?;
        if kinds.get(job.job_type.as_str()).is_some() {
            return Ok(job);
        }
        let known: Vec<String> = kinds.names().map(|n| format!("`{n}`")).collect();
        Err(EnrichedJobError::UnknownJobType(
            job.job_type.to_string(),
            known.join(", "),
        ))
    }
}

/// What goes to `dead-letter-queue`: the original job and its full error history,
/// the same shape for rejections (ingester) and failures (processor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub job_id: String,
    pub job_type: Option<String>,
    pub status: JobStatus,
    pub stage: Stage,
    pub attempts: u32,
    pub errors: Vec<ErrorEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<TraceContext>,
    /// The replay whose event this end came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replayed>,
    /// The job detail as sent; the raw SQS body (a string) when even that was unreadable.
    pub job: Value,
}

impl DeadLetter {
    /// A job that ends with its first error, `error`: a letter is written at the stage
    /// and the attempt of its last error, so both are read from it. No trace context;
    /// add one with [`DeadLetter::with_trace_context`].
    pub fn new(
        job_id: String,
        job_type: Option<String>,
        status: JobStatus,
        error: ErrorEntry,
        job: Value,
    ) -> DeadLetter {
        DeadLetter {
            job_id,
            job_type,
            status,
            stage: error.stage,
            attempts: error.attempt,
            errors: vec![error],
            trace_context: None,
            replay: None,
            job,
        }
    }

    /// The enriched `job` given up as `FAILED`, with `error` appended to the history it
    /// carried.
    pub fn failed(job: EnrichedJob, error: ErrorEntry) -> DeadLetter {
        DeadLetter::ended(job, JobStatus::Failed, error)
    }

    /// The enriched `job` refused as `REJECTED` (its id names other content), with
    /// `error` appended to the history it carried.
    pub fn rejected(job: EnrichedJob, error: ErrorEntry) -> DeadLetter {
        DeadLetter::ended(job, JobStatus::Rejected, error)
    }

    fn ended(job: EnrichedJob, status: JobStatus, error: ErrorEntry) -> DeadLetter {
        let mut errors = job.errors;
        let (stage, attempts) = (error.stage, error.attempt);
        errors.push(error);
        DeadLetter {
            job_id: job.job_id,
            job_type: Some(job.job_type.as_str().to_owned()),
            status,
            stage,
            attempts,
            errors,
            trace_context: job.trace_context,
            replay: job.replay,
            job: job.job,
        }
    }

    /// The letter behind an end-state notification that was not `COMPLETED`, for `job`
    /// as sent: the notification keeps everything else a letter says.
    pub fn for_notification(
        note: &Notification,
        trace_context: Option<TraceContext>,
        job: Value,
    ) -> DeadLetter {
        DeadLetter {
            job_id: note.job_id.clone(),
            job_type: note.job_type.clone(),
            status: note.status,
            stage: note.stage,
            attempts: note.attempts,
            errors: note.errors.clone(),
            trace_context,
            replay: note.replay.clone(),
            job,
        }
    }

    pub fn with_trace_context(self, trace_context: Option<TraceContext>) -> DeadLetter {
        DeadLetter {
            trace_context,
            ..self
        }
    }

    /// The most recent error: what the DLQ's `error_code` attribute reports.
    pub fn last_error_code(&self) -> &str {
        self.errors.last().map_or("unknown", |e| e.code.as_str())
    }
}

/// The end-state announcement on `job-end-state-topic`: exactly one per job id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub job_id: String,
    pub job_type: Option<String>,
    pub status: JobStatus,
    pub stage: Stage,
    pub attempts: u32,
    pub errors: Vec<ErrorEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The replay this end came from: with `rerun`, the job had ended before and an
    /// operator asked to run it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replayed>,
    #[serde(with = "rfc3339")]
    pub timestamp: DateTime<Utc>,
}

impl Notification {
    /// The id of the end this notification announces, the same in every copy: every
    /// re-publish of one end (after a lost `Publish` answer, or a lost announced mark)
    /// carries it, and another end of the job (a rerun, a redriven attempt) has another.
    /// It is a SHA-256, as 32 hex digits, of what tells one end from another: the job,
    /// the stage, the status, the attempt, the replay, and the last error with the time
    /// it was raised (a rejection redriven and rejected again has a new one). Consumers
    /// drop copies by it (the SNS message attribute `notification_id`).
    pub fn notification_id(&self) -> String {
        use sha2::{Digest, Sha256};
        let last = self.errors.last();
        let replay = self.replay.as_ref();
        let parts = [
            self.job_id.as_str(),
            self.stage.as_str(),
            self.status.as_str(),
            &self.attempts.to_string(),
            replay.map_or("", |r| r.name.as_str()),
            if replay.is_some_and(|r| r.rerun) {
                "rerun"
            } else {
                ""
            },
            last.map_or("", |e| e.code.as_str()),
            &last.map(|e| e.attempt.to_string()).unwrap_or_default(),
            &last
                .map(|e| rfc3339::format(&e.timestamp))
                .unwrap_or_default(),
        ];
        let mut hash = Sha256::new();
        for part in parts {
            // Lengths first, so no two lists of parts hash alike.
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        hex(&hash.finalize()[..16])
    }

    /// The `COMPLETED` announcement of `job` with its `result`. Only the processor
    /// completes a job, so the stage is the processor's.
    pub fn completed(job: &EnrichedJob, result: Value, timestamp: DateTime<Utc>) -> Notification {
        Notification {
            job_id: job.job_id.clone(),
            job_type: Some(job.job_type.as_str().to_owned()),
            status: JobStatus::Completed,
            stage: Stage::Processor,
            attempts: job.attempt,
            errors: job.errors.clone(),
            result: Some(result),
            replay: job.replay.clone(),
            timestamp,
        }
    }

    /// The notification that announces a dead letter.
    pub fn for_dead_letter(dl: &DeadLetter, timestamp: DateTime<Utc>) -> Notification {
        Notification {
            job_id: dl.job_id.clone(),
            job_type: dl.job_type.clone(),
            status: dl.status,
            stage: dl.stage,
            attempts: dl.attempts,
            errors: dl.errors.clone(),
            result: None,
            replay: dl.replay.clone(),
            timestamp,
        }
    }

    /// The `job_type` message attribute: subscribers filter on it, so it is always set.
    pub fn job_type_attribute(&self) -> &str {
        job_type_attribute(self.job_type.as_deref())
    }
}

/// Message attribute value (SNS, dead letters) for a job type that may be absent or
/// not a string: the text as sent, so subscribers see what the producer wrote. Metrics
/// use [`crate::telemetry::metric_job_type`], a closed set.
pub fn job_type_attribute(job_type: Option<&str>) -> &str {
    match job_type {
        Some(t) if !t.is_empty() => t,
        _ => "unknown",
    }
}

/// Serialized JSON made acceptable to SQS without changing the JSON value: every
/// character SQS refuses ([`crate::ports::sqs_allows`]; U+FFFE and U+FFFF, say) is
/// written as a `\uXXXX` escape. JSON's structure is ASCII, so such characters occur
/// only inside strings, where the escape means the same character.
pub fn sqs_safe_json(text: String) -> String {
    if text.chars().all(crate::ports::sqs_allows) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 32);
    for c in text.chars() {
        if crate::ports::sqs_allows(c) {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out
}

/// The bytes one character of a string takes once written as JSON that SQS accepts
/// (serde_json's escapes, then [`sqs_safe_json`]'s).
pub fn written_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        '\u{0}'..='\u{1f}' => 6,
        c if !crate::ports::sqs_allows(c) => 6,
        c => c.len_utf8(),
    }
}

/// The bytes `value` takes as the pipeline writes it on ([`sqs_safe_json`] of its
/// serialization): what size limits apply to. It can be much more than the text it
/// was read from, since numbers are written out in full (`1e15` as
/// `1000000000000000.0`).
pub fn written_len(value: &Value) -> usize {
    serde_json::to_string(value).map_or(0, |text| sqs_safe_json(text).len())
}

/// The longest message attribute value sent, in characters: a job type or id longer
/// than this is not worth routing on, and would crowd the message's size.
pub const MAX_ATTRIBUTE_CHARS: usize = 256;

/// A string message attribute value that SQS accepts (and SNS delivers to an SQS
/// subscriber): characters SQS refuses become U+FFFD, a value longer than
/// [`MAX_ATTRIBUTE_CHARS`] is cut (ending in `…`), and an empty one, which SQS refuses
/// too, becomes `-`. Attributes are for routing and reading; the body keeps the exact
/// value.
pub fn attribute_value(value: &str) -> String {
    if value.is_empty() {
        return "-".to_owned();
    }
    let mut out: String = value
        .chars()
        .take(MAX_ATTRIBUTE_CHARS)
        .map(|c| {
            if crate::ports::sqs_allows(c) {
                c
            } else {
                char::REPLACEMENT_CHARACTER
            }
        })
        .collect();
    if value.chars().nth(MAX_ATTRIBUTE_CHARS).is_some() {
        out.pop();
        out.push('…');
    }
    out
}

/// The fields of the EventBridge event the rule delivers as the SQS body.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope {
    pub id: Option<String>,
    pub time: Option<String>,
    /// The replay that sent this event again (`replay-name`); `None` for live traffic.
    pub replay_name: Option<String>,
    pub detail: Value,
}

impl EventEnvelope {
    /// Reads an SQS body as an EventBridge event. `None` when it is not one.
    pub fn from_body(body: &str) -> Option<EventEnvelope> {
        let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(body) else {
            return None;
        };
        let detail = obj.remove("detail")?;
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Some(EventEnvelope {
            id: text(obj.remove("id")),
            time: text(obj.remove("time")),
            replay_name: text(obj.remove("replay-name")),
            detail,
        })
    }
}

/// Bytes as lowercase hex digits, as every id and fingerprint of the pipeline is written.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// What an event's text says of its job, read without building the event: the event's
/// own `id`, the detail's `id` (each only when it is a string), and the detail's text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShallowEvent<'a> {
    pub id: Option<String>,
    pub detail_id: Option<String>,
    /// The detail as it stands in the text: the same in every delivery and replay of
    /// the event, where the envelope around it is not (a replay adds its name).
    pub detail: Option<&'a str>,
}

impl ShallowEvent<'_> {
    /// The id the event's producer knows: the detail's `id` when it is usable, else
    /// the event's.
    pub fn producers_id(&self) -> Option<String> {
        self.detail_id
            .clone()
            .filter(|id| crate::job::usable_name(id))
            .or_else(|| self.id.clone())
    }
}

/// Reads an event's text shallowly ([`ShallowEvent`]).
///
/// EventBridge accepted the event, so its text is JSON; but a parser may still refuse
/// it (serde_json stops at 128 levels of nesting), and the event must then end under
/// the id its producer knows, not under an SQS message id. This walks the top level and
/// the detail's top level only, skipping every other value with a counter instead of
/// recursion, so no depth stops it.
pub fn shallow_event(body: &str) -> ShallowEvent<'_> {
    let mut event = ShallowEvent::default();
    let b = body.as_bytes();
    let Some(open) = skip_ws(b, 0).filter(|&i| b[i] == b'{') else {
        return event;
    };
    members(body, open, &mut |key, start, end| match key.as_str() {
        "id" => event.id = json_string(body, start, end),
        "detail" => {
            event.detail = body.get(start..end);
            if b[start] == b'{' {
                members(body, start, &mut |key, start, end| {
                    if key == "id" {
                        event.detail_id = json_string(body, start, end);
                    }
                });
            }
        }
        _ => {}
    });
    event
}

/// Calls `each(key, start, end)` for every member of the object opening at `open`,
/// with the byte range of its value; stops quietly at anything that is not JSON.
fn members(body: &str, open: usize, each: &mut dyn FnMut(String, usize, usize)) {
    let b = body.as_bytes();
    let mut i = open + 1;
    loop {
        let Some(k) = skip_ws(b, i).filter(|&k| b[k] == b'"') else {
            return;
        };
        let Some(key_end) = skip_value(b, k) else {
            return;
        };
        let Some(key) = json_string(body, k, key_end) else {
            return;
        };
        let Some(colon) = skip_ws(b, key_end).filter(|&c| b[c] == b':') else {
            return;
        };
        let Some(start) = skip_ws(b, colon + 1) else {
            return;
        };
        let Some(end) = skip_value(b, start) else {
            return;
        };
        each(key, start, end);
        match skip_ws(b, end).map(|j| (j, b[j])) {
            Some((j, b',')) => i = j + 1,
            _ => return,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    (i < b.len()).then_some(i)
}

/// The end (exclusive) of the JSON value starting at `i`, nested to any depth.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *b.get(j)? {
                    b'"' => j = skip_string(b, j)?,
                    b'{' | b'[' => {
                        depth += 1;
                        j += 1;
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        j += 1;
                        if depth == 0 {
                            return Some(j);
                        }
                    }
                    _ => j += 1,
                }
            }
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !b[j].is_ascii_whitespace()
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// The end (exclusive) of the JSON string opening at `i`.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match *b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

fn json_string(body: &str, start: usize, end: usize) -> Option<String> {
    serde_json::from_str::<String>(body.get(start..end)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ids_of_an_event_too_deep_to_parse_are_still_read() {
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        let body = format!(
            r#"{{"version":"0","id":"evt-\u0031","detail":{{"job_type":"x","message":{{"f":{deep}}},"id":"job-7"}},"source":"jobs"}}"#
        );
        assert!(
            serde_json::from_str::<Value>(&body).is_err(),
            "past the parser's limit"
        );
        let event = shallow_event(&body);
        assert_eq!(
            (event.id.as_deref(), event.detail_id.as_deref()),
            (Some("evt-1"), Some("job-7"))
        );
        let detail = event.detail.expect("the detail's text");
        assert!(detail.starts_with(r#"{"job_type":"x""#) && detail.ends_with(r#""id":"job-7"}"#));
        let replayed = body.replace(
            r#""source":"jobs""#,
            r#""source":"jobs","replay-name":"r1""#,
        );
        assert_eq!(
            shallow_event(&replayed).detail,
            Some(detail),
            "a replay's detail is the same text"
        );
        let no_detail_id = format!(r#"{{"detail":{{"m":{deep},"id":5}},"id":"e2"}}"#);
        let event = shallow_event(&no_detail_id);
        assert_eq!((event.id.as_deref(), event.detail_id), (Some("e2"), None));
        assert_eq!(shallow_event("not json"), ShallowEvent::default());
        let text = shallow_event(r#"{"id":"e3","detail":"s\"x"}"#);
        assert_eq!(
            (text.id.as_deref(), text.detail),
            (Some("e3"), Some(r#""s\"x""#))
        );
        assert_eq!(shallow_event(r#"{"id": "#), ShallowEvent::default());
    }

    #[test]
    fn error_codes_keep_their_wire_names_and_unknown_ones_pass_through() {
        for code in ErrorCode::KNOWN {
            let wire = serde_json::to_value(&code).expect("json");
            assert_eq!(wire, serde_json::Value::String(code.as_str().to_owned()));
            assert_eq!(
                serde_json::from_value::<ErrorCode>(wire).expect("json"),
                code
            );
        }
        // The names the dead letters and notifications always carried.
        let names: Vec<&str> = ErrorCode::KNOWN.iter().map(ErrorCode::as_str).collect();
        for old in [
            "job_id_reused",
            "forward_failed",
            "invalid_message",
            "too_large",
            "deadline_exceeded",
            "injected_fault",
            "malformed_envelope",
        ] {
            assert!(names.contains(&old), "{old}");
        }
        let newer: ErrorCode = serde_json::from_str("\"quota_exceeded\"").expect("json");
        assert_eq!(newer, ErrorCode::Other("quota_exceeded".into()));
        assert_eq!(
            serde_json::to_string(&newer).expect("json"),
            "\"quota_exceeded\""
        );
    }
    use serde_json::json;

    #[test]
    fn enriched_job_round_trips() {
        let job = EnrichedJob {
            job_id: "j-1".into(),
            job_type: JobType::from("data_cleanup"),
            status: JobStatus::New,
            received_at: DateTime::parse_from_rfc3339("2026-11-22T10:00:00.250Z")
                .expect("valid")
                .with_timezone(&Utc),
            event_time: Some("2026-11-22T09:59:59Z".into()),
            attempt: 1,
            trace_context: None,
            errors: vec![],
            replay: None,
            job: json!({"job_type":"data_cleanup","message":{"target_table":"t","retention":1}}),
        };
        let body = serde_json::to_string(&job).expect("serializes");
        assert!(
            body.contains(r#""received_at":"2026-11-22T10:00:00.250Z""#),
            "{body}"
        );
        assert!(body.contains(r#""status":"NEW""#), "{body}");
        assert_eq!(EnrichedJob::from_body(&body).expect("parses"), job);
    }

    #[test]
    fn enriched_job_rejects_garbage_and_oversize() {
        assert!(matches!(
            EnrichedJob::from_body("{"),
            Err(EnrichedJobError::Invalid(_))
        ));
        let huge = " ".repeat(MAX_ENRICHED_BYTES + 1);
        assert!(matches!(
            EnrichedJob::from_body(&huge),
            Err(EnrichedJobError::TooLarge(_))
        ));
    }

    #[test]
    fn envelope_needs_a_detail() {
        let env = EventEnvelope::from_body(r#"{"id":"e1","source":"jobs","detail":"text"}"#)
            .expect("envelope");
        assert_eq!((env.id.as_deref(), env.detail), (Some("e1"), json!("text")));
        assert_eq!(EventEnvelope::from_body(r#"{"job_type":"x"}"#), None);
        assert_eq!(EventEnvelope::from_body("not json"), None);
    }
}
