//! The job envelope: parsing and validating a job detail into a [`Job`].
//!
//! A job arrives as the `detail` of an EventBridge event:
//! `{"job_type": <string>, "message": <object>, "id"?: <string>, "ordering_key"?:
//! <string>}`. This module checks the envelope (size, id, ordering key, `job_type`,
//! `message`); the kind `job_type` names checks
//! its `message` ([`crate::kinds`]). Unknown fields are ignored, so the original
//! demo's job files are accepted unchanged. Validation never panics; every rejection
//! names the field at fault and says what was expected.

use crate::kinds::{describe, truncate, Fields, Kind, Malformed, Registry, Spec};
pub use crate::messages::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::fmt;

/// Largest accepted job detail, serialized. SQS caps a message at 256 KiB on the
/// emulators (1 MiB on AWS since 2026); the enriched message and its error history
/// must still fit, so the detail is held to a quarter of the smaller cap.
pub const MAX_DETAIL_BYTES: usize = 64 * 1024;

/// Longest accepted job id, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// The longest `long_running_job` timeout the processor can run, in seconds: its
/// function timeout (`functions.processor.timeout_seconds` in pipeline.json, 900 s)
/// less its deadline margin (`DEADLINE_MARGIN_MS`, 21 s: room for the ending's calls).
/// The ingester's `MAX_JOB_TIMEOUT_SECONDS` overrides it.
pub const DEFAULT_MAX_TIMEOUT_SECS: u64 = 900 - 21;

/// The `job_type` of a job on its way through the pipeline: the name of one of the
/// kinds in the [`Registry`] that validated it. `job_type` is case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobType(Cow<'static, str>);

impl JobType {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&'static str> for JobType {
    fn from(name: &'static str) -> Self {
        JobType(Cow::Borrowed(name))
    }
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated job: its kind's spec and, when the sender gave one, its own id.
#[derive(Debug)]
pub struct Job {
    pub id: Option<String>,
    /// Jobs sharing a key run one at a time, in order ([`ordering_key`]).
    pub ordering_key: Option<String>,
    pub spec: Spec,
}

/// A rejection: the code, the field at fault (dotted path, when there is one) and a
/// sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub code: ErrorCode,
    pub field: Option<String>,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, field: Option<&str>, message: impl Into<String>) -> Self {
        Rejection {
            code,
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }
}

/// A job detail's `ordering_key`, once the detail is valid: where the ingester and the
/// processor read it from (the enriched job carries the detail as it was sent).
pub fn ordering_key(detail: &Value) -> Option<&str> {
    detail.get("ordering_key").and_then(Value::as_str)
}

/// Parses and validates a job detail against the built-in kinds ([`parse_job_with`]).
pub fn parse_job(detail: &Value, written_len: Option<usize>) -> Result<Job, Rejection> {
    parse_job_with(&Registry::builtin(), detail, written_len)
}

/// Parses and validates a job detail: the envelope here, the `message` by the kind
/// `kinds` knows under its `job_type`.
///
/// `written_len` is the detail's size as the pipeline writes it on
/// ([`crate::messages::written_len`]), what the size limit applies to; pass `None` to
/// have it measured.
pub fn parse_job_with(
    kinds: &Registry,
    detail: &Value,
    written_len: Option<usize>,
) -> Result<Job, Rejection> {
    let size = written_len.unwrap_or_else(|| crate::messages::written_len(detail));
    if size > MAX_DETAIL_BYTES {
        return Err(Rejection::new(
            ErrorCode::TooLarge,
            None,
            format!(
                "the job detail is {size} bytes as written for the next hop (numbers are written out in full, 1e15 as 1000000000000000.0); the limit is {MAX_DETAIL_BYTES} bytes"
            ),
        ));
    }
    let Value::Object(obj) = detail else {
        return Err(Rejection::new(
            ErrorCode::InvalidDetail,
            None,
            format!(
                "the job detail must be a JSON object with job_type and message, got {}",
                describe(detail)
            ),
        ));
    };
    let id = parse_id(obj)?;
    let ordering_key = parse_ordering_key(obj)?;
    let kind = parse_kind(kinds, obj)?;
    let message = parse_message(kind.name(), obj)?;
    let spec = kind.parse(&Fields::new(kind.name(), message))?;
    Ok(Job {
        id,
        ordering_key,
        spec,
    })
}

/// The kind the detail's `job_type` names.
fn parse_kind(kinds: &Registry, obj: &Map<String, Value>) -> Result<&'static dyn Kind, Rejection> {
    let name = match obj.get("job_type") {
        None | Some(Value::Null) => {
            return Err(Rejection::new(
                ErrorCode::MissingField,
                Some("job_type"),
                "job_type is required",
            ))
        }
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(Rejection::new(
                ErrorCode::WrongType,
                Some("job_type"),
                format!("job_type must be a string, got {}", describe(other)),
            ))
        }
    };
    kinds.get(name).ok_or_else(|| {
        let known: Vec<&str> = kinds.names().collect();
        Rejection::new(
            ErrorCode::UnknownJobType,
            Some("job_type"),
            format!(
                "unknown job_type {:?}; expected one of {}",
                truncate(name),
                known.join(", ")
            ),
        )
    })
}

/// The detail's `message` object, for a job of `job_type`.
fn parse_message<'a>(
    job_type: &str,
    obj: &'a Map<String, Value>,
) -> Result<&'a Map<String, Value>, Rejection> {
    match obj.get("message") {
        None | Some(Value::Null) => Err(Rejection::new(
            ErrorCode::MissingField,
            Some("message"),
            format!("message is required for {job_type}"),
        )),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(Rejection::new(
            ErrorCode::WrongType,
            Some("message"),
            format!("message must be an object, got {}", describe(other)),
        )),
    }
}

/// Malformed details any registry refuses, whatever its kinds, for the generator's
/// catalogue: the original demo's unknown kind, a kind's name in the wrong case, and
/// a detail that is not an object.
pub fn malformed_details() -> Vec<Malformed> {
    vec![
        Malformed::new(
            json!({"job_type": "does_not_exist",
                   "message": {"target_table": "users", "retention": 30}}),
            ErrorCode::UnknownJobType,
        ),
        Malformed::new(
            json!({"job_type": "Data_Cleanup",
                   "message": {"target_table": "users", "retention": 30}}),
            ErrorCode::UnknownJobType,
        ),
        // Not an object at all: real EventBridge refuses it at PutEvents.
        Malformed::new(
            Value::String("report_generation for Sales Report".into()),
            ErrorCode::InvalidDetail,
        ),
    ]
}

fn parse_id(obj: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    parse_name(obj, "id", ErrorCode::InvalidId)
}

/// The detail's `ordering_key`, validated as `id` is: jobs that share one run one at a
/// time, in the order the ingester forwarded them.
fn parse_ordering_key(obj: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    parse_name(obj, "ordering_key", ErrorCode::InvalidOrderingKey)
}

/// Whether a name the sender chose (`id`, `ordering_key`) is usable: 1 to
/// [`MAX_ID_CHARS`] characters of text, without control characters.
pub(crate) fn usable_name(s: &str) -> bool {
    (1..=MAX_ID_CHARS).contains(&s.chars().count()) && !s.chars().any(char::is_control)
}

/// An optional name the sender chose (`id`, `ordering_key`): [`usable_name`], else a
/// rejection saying which rule it breaks.
fn parse_name(
    obj: &Map<String, Value>,
    field: &str,
    code: ErrorCode,
) -> Result<Option<String>, Rejection> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if usable_name(s) => Ok(Some(s.clone())),
        Some(Value::String(s)) => {
            let chars = s.chars().count();
            if chars == 0 || chars > MAX_ID_CHARS {
                Err(Rejection::new(
                    code,
                    Some(field),
                    format!("{field} must be 1 to {MAX_ID_CHARS} characters, got {chars}"),
                ))
            } else {
                Err(Rejection::new(
                    code,
                    Some(field),
                    format!("{field} must not contain control characters"),
                ))
            }
        }
        Some(other) => Err(Rejection::new(
            code,
            Some(field),
            format!("{field} must be a string, got {}", describe(other)),
        )),
    }
}

/// The `job_type` of a detail as sent, when it is a string, even if it is not a known
/// type: rejections still say what the sender asked for.
pub fn raw_job_type(detail: &Value) -> Option<&str> {
    detail.get("job_type").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reject(v: Value) -> Rejection {
        parse_job(&v, None).expect_err("should be rejected")
    }

    #[test]
    fn the_original_demos_job_files_keep_their_verdicts() {
        let file = |text: &str| serde_json::from_str::<Value>(text).expect("json");
        let good = [
            include_str!("../fixtures/original-jobs/good/report_generation.json"),
            include_str!("../fixtures/original-jobs/good/data_cleanup.json"),
            include_str!("../fixtures/original-jobs/good/user_onboarding.json"),
            include_str!("../fixtures/original-jobs/good/long_running_job.json"),
        ];
        for text in good {
            let detail = file(text);
            let job = parse_job(&detail, None).expect("valid");
            assert_eq!(Some(job.spec.job_type()), raw_job_type(&detail));
        }
        let bad = [
            (
                include_str!("../fixtures/original-jobs/bad/report_missing_name.json"),
                ErrorCode::MissingField,
            ),
            (
                include_str!("../fixtures/original-jobs/bad/unknown_job_type.json"),
                ErrorCode::UnknownJobType,
            ),
        ];
        for (text, code) in bad {
            assert_eq!(reject(file(text)).code, code, "{text}");
        }
    }

    #[test]
    fn keeps_a_given_id_and_ignores_unknown_fields() {
        let job = parse_job(
            &json!({"id":"abc-1","extra":1,"job_type":"user_onboarding",
                    "message":{"user_id":"1","user_name":"Ann","nick":"a"}}),
            None,
        )
        .expect("valid");
        assert_eq!(job.id.as_deref(), Some("abc-1"));
    }

    #[test]
    fn job_type_is_case_sensitive_and_must_be_known() {
        let r = reject(json!({"job_type":"Report_Generation","message":{}}));
        assert_eq!(r.code, ErrorCode::UnknownJobType);
        assert!(r.message.contains("\"Report_Generation\""), "{}", r.message);
    }

    #[test]
    fn message_must_be_a_present_object() {
        for (message, code) in [
            (None, ErrorCode::MissingField),
            (Some(Value::Null), ErrorCode::MissingField),
            (Some(json!([1])), ErrorCode::WrongType),
        ] {
            let mut detail = json!({"job_type":"user_onboarding"});
            if let Some(m) = message {
                detail["message"] = m;
            }
            assert_eq!(reject(detail).code, code);
        }
    }

    #[test]
    fn detail_must_be_an_object_within_the_size_limit() {
        assert_eq!(reject(json!("just text")).code, ErrorCode::InvalidDetail);
        assert_eq!(reject(json!([1, 2])).code, ErrorCode::InvalidDetail);
        let big = "x".repeat(MAX_DETAIL_BYTES);
        let r = reject(
            json!({"job_type":"report_generation","message":{"report_name":big,"filters":"f"}}),
        );
        assert_eq!(r.code, ErrorCode::TooLarge);
    }

    #[test]
    fn the_size_limit_applies_to_the_detail_as_written_on() {
        let samples = vec!["1e15"; 4_000].join(",");
        let text = format!(
            r#"{{"job_type":"user_onboarding","message":{{"user_id":"1","user_name":"A"}},"s":[{samples}]}}"#
        );
        assert!(text.len() < MAX_DETAIL_BYTES);
        let detail: Value = serde_json::from_str(&text).expect("json");
        let r = parse_job(&detail, None).expect_err("too large written out");
        assert_eq!(r.code, ErrorCode::TooLarge);
    }

    #[test]
    fn ids_are_bounded_strings() {
        for id in [
            json!(""),
            json!(7),
            json!("x".repeat(MAX_ID_CHARS + 1)),
            json!("a\nb"),
        ] {
            let r = reject(
                json!({"id":id,"job_type":"user_onboarding","message":{"user_id":"1","user_name":"A"}}),
            );
            assert_eq!(r.code, ErrorCode::InvalidId);
        }
    }

    #[test]
    fn ordering_keys_are_bounded_strings_like_ids() {
        let job = |key: Value| {
            json!({"ordering_key": key, "job_type": "user_onboarding",
                   "message": {"user_id": "1", "user_name": "A"}})
        };
        for key in [
            json!(""),
            json!(7),
            json!("x".repeat(MAX_ID_CHARS + 1)),
            json!("a\tb"),
        ] {
            let r = reject(job(key));
            assert_eq!(r.code, ErrorCode::InvalidOrderingKey);
            assert_eq!(r.field.as_deref(), Some("ordering_key"));
        }
        let ok = parse_job(&job(json!("user 42 é")), None).expect("valid key");
        assert_eq!(ok.ordering_key.as_deref(), Some("user 42 é"));
        let none = parse_job(&job(Value::Null), None).expect("no key");
        assert_eq!(none.ordering_key, None);
    }
}
