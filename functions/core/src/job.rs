//! The job schema: parsing and validating a job detail into a typed [`Job`].
//!
//! A job arrives as the `detail` of an EventBridge event:
//! `{"job_type": <string>, "message": <object>, "id"?: <string>}`. Unknown fields are
//! ignored, so the original demo's job files are accepted unchanged. Validation never
//! panics; every rejection names the field at fault and says what was expected.

pub use crate::messages::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
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

/// Rejects a job the processor could never finish: a `long_running_job` whose
/// `timeout` is over `max_secs` would only end as `deadline_exceeded` after taking a
/// processor slot, so it is refused up front, naming the field and the limit.
pub fn check_timeout(spec: &JobSpec, max_secs: u64) -> Result<(), Rejection> {
    match spec {
        JobSpec::LongRunningJob { timeout_secs, .. } if *timeout_secs > max_secs => {
            Err(Rejection::new(
                ErrorCode::OutOfRange,
                Some("message.timeout"),
                format!(
                    "message.timeout must be at most {max_secs} seconds, what the processor can run within its function timeout less its deadline margin, got {timeout_secs}"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// The kinds of job the pipeline knows. `job_type` is case-sensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    ReportGeneration,
    DataCleanup,
    UserOnboarding,
    LongRunningJob,
}

impl JobType {
    pub const ALL: [JobType; 4] = [
        JobType::ReportGeneration,
        JobType::DataCleanup,
        JobType::UserOnboarding,
        JobType::LongRunningJob,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobType::ReportGeneration => "report_generation",
            JobType::DataCleanup => "data_cleanup",
            JobType::UserOnboarding => "user_onboarding",
            JobType::LongRunningJob => "long_running_job",
        }
    }

    pub fn parse(s: &str) -> Option<JobType> {
        JobType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a job asks for, one variant per [`JobType`], with its validated fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobSpec {
    ReportGeneration {
        report_name: String,
        filters: String,
    },
    DataCleanup {
        target_table: String,
        retention_days: u64,
    },
    UserOnboarding {
        user_id: String,
        user_name: String,
    },
    LongRunningJob {
        task_name: String,
        timeout_secs: u64,
    },
}

impl JobSpec {
    pub fn job_type(&self) -> JobType {
        match self {
            JobSpec::ReportGeneration { .. } => JobType::ReportGeneration,
            JobSpec::DataCleanup { .. } => JobType::DataCleanup,
            JobSpec::UserOnboarding { .. } => JobType::UserOnboarding,
            JobSpec::LongRunningJob { .. } => JobType::LongRunningJob,
        }
    }
}

/// A validated job: its typed spec and, when the sender gave one, its own id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: Option<String>,
    pub spec: JobSpec,
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

/// Parses and validates a job detail.
///
/// `written_len` is the detail's size as the pipeline writes it on
/// ([`crate::messages::written_len`]), what the size limit applies to; pass `None` to
/// have it measured.
pub fn parse_job(detail: &Value, written_len: Option<usize>) -> Result<Job, Rejection> {
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
    let job_type_name = match obj.get("job_type") {
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
    let Some(job_type) = JobType::parse(job_type_name) else {
        let known: Vec<&str> = JobType::ALL.iter().map(|t| t.as_str()).collect();
        return Err(Rejection::new(
            ErrorCode::UnknownJobType,
            Some("job_type"),
            format!(
                "unknown job_type {:?}; expected one of {}",
                truncate(job_type_name),
                known.join(", ")
            ),
        ));
    };
    let message = match obj.get("message") {
        None | Some(Value::Null) => {
            return Err(Rejection::new(
                ErrorCode::MissingField,
                Some("message"),
                format!("message is required for {job_type}"),
            ))
        }
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(Rejection::new(
                ErrorCode::WrongType,
                Some("message"),
                format!("message must be an object, got {}", describe(other)),
            ))
        }
    };

    let fields = Fields { job_type, message };
    let spec = match job_type {
        JobType::ReportGeneration => JobSpec::ReportGeneration {
            report_name: fields.text("report_name")?,
            filters: fields.text("filters")?,
        },
        JobType::DataCleanup => JobSpec::DataCleanup {
            target_table: fields.text("target_table")?,
            retention_days: fields.positive_int("retention")?,
        },
        JobType::UserOnboarding => JobSpec::UserOnboarding {
            user_id: fields.text("user_id")?,
            user_name: fields.text("user_name")?,
        },
        JobType::LongRunningJob => JobSpec::LongRunningJob {
            task_name: fields.text("task_name")?,
            timeout_secs: fields.positive_int("timeout")?,
        },
    };
    Ok(Job { id, spec })
}

fn parse_id(obj: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    match obj.get("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let chars = s.chars().count();
            if chars == 0 || chars > MAX_ID_CHARS {
                Err(Rejection::new(
                    ErrorCode::InvalidId,
                    Some("id"),
                    format!("id must be 1 to {MAX_ID_CHARS} characters, got {chars}"),
                ))
            } else if s.chars().any(char::is_control) {
                Err(Rejection::new(
                    ErrorCode::InvalidId,
                    Some("id"),
                    "id must not contain control characters",
                ))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(other) => Err(Rejection::new(
            ErrorCode::InvalidId,
            Some("id"),
            format!("id must be a string, got {}", describe(other)),
        )),
    }
}

/// Field access on a job's `message`, producing rejections that name `message.<field>`.
struct Fields<'a> {
    job_type: JobType,
    message: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn text(&self, name: &str) -> Result<String, Rejection> {
        let path = format!("message.{name}");
        match self.message.get(name) {
            None | Some(Value::Null) => Err(Rejection::new(
                ErrorCode::MissingField,
                Some(&path),
                format!("{path} is required for {}", self.job_type),
            )),
            Some(Value::String(s)) if s.trim().is_empty() => Err(Rejection::new(
                ErrorCode::EmptyString,
                Some(&path),
                format!("{path} must not be empty"),
            )),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(Rejection::new(
                ErrorCode::WrongType,
                Some(&path),
                format!("{path} must be a string, got {}", describe(other)),
            )),
        }
    }

    fn positive_int(&self, name: &str) -> Result<u64, Rejection> {
        let path = format!("message.{name}");
        let wrong_type = |v: &Value| {
            Rejection::new(
                ErrorCode::WrongType,
                Some(&path),
                format!(
                    "{path} must be an integer greater than 0, got {}",
                    describe(v)
                ),
            )
        };
        match self.message.get(name) {
            None | Some(Value::Null) => Err(Rejection::new(
                ErrorCode::MissingField,
                Some(&path),
                format!("{path} is required for {}", self.job_type),
            )),
            Some(v @ Value::Number(n)) => {
                if let Some(u) = n.as_u64() {
                    if u == 0 {
                        Err(Rejection::new(
                            ErrorCode::OutOfRange,
                            Some(&path),
                            format!("{path} must be greater than 0, got 0"),
                        ))
                    } else {
                        Ok(u)
                    }
                } else if n.as_i64().is_some() {
                    Err(Rejection::new(
                        ErrorCode::OutOfRange,
                        Some(&path),
                        format!("{path} must be greater than 0, got {n}"),
                    ))
                } else {
                    Err(wrong_type(v))
                }
            }
            Some(other) => Err(wrong_type(other)),
        }
    }
}

/// A short description of a JSON value for error messages: its type and, for
/// scalars, the value itself (long strings are cut).
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) if n.is_f64() => format!("the non-integer number {n}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {:?}", truncate(s)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(MAX).collect();
        cut.push('…');
        cut
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
    fn accepts_each_kind() {
        let job = parse_job(
            &json!({"job_type":"data_cleanup","message":{"target_table":"users","retention":30}}),
            None,
        )
        .expect("valid");
        assert_eq!(
            job.spec,
            JobSpec::DataCleanup {
                target_table: "users".into(),
                retention_days: 30
            }
        );
        assert_eq!(job.id, None);
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
    fn integer_fields_reject_strings_floats_zero_and_negatives() {
        let cases = [
            (json!("30"), ErrorCode::WrongType),
            (json!(30.5), ErrorCode::WrongType),
            (json!(30.0), ErrorCode::WrongType),
            (json!(0), ErrorCode::OutOfRange),
            (json!(-3), ErrorCode::OutOfRange),
            (json!(true), ErrorCode::WrongType),
        ];
        for (retention, code) in cases {
            let r = reject(json!({"job_type":"data_cleanup",
                                  "message":{"target_table":"t","retention":retention}}));
            assert_eq!(r.code, code, "retention {retention}");
            assert_eq!(r.field.as_deref(), Some("message.retention"));
        }
    }

    #[test]
    fn reasons_name_the_field() {
        let r = reject(json!({"job_type":"report_generation","message":{"filters":"x"}}));
        assert_eq!(r.code, ErrorCode::MissingField);
        assert_eq!(
            r.message,
            "message.report_name is required for report_generation"
        );
        let r = reject(
            json!({"job_type":"user_onboarding","message":{"user_id":"1","user_name":"  "}}),
        );
        assert_eq!(
            (r.code, r.field.as_deref()),
            (ErrorCode::EmptyString, Some("message.user_name"))
        );
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
    fn a_timeout_over_the_limit_is_out_of_range() {
        let job = parse_job(
            &json!({"job_type":"long_running_job","message":{"task_name":"t","timeout":898}}),
            None,
        )
        .expect("valid");
        assert!(check_timeout(&job.spec, 898).is_ok());
        let r = check_timeout(&job.spec, DEFAULT_MAX_TIMEOUT_SECS).expect_err("too long");
        assert_eq!(
            (r.code, r.field.as_deref()),
            (ErrorCode::OutOfRange, Some("message.timeout"))
        );
        assert!(r.message.contains("at most 879 seconds"), "{}", r.message);
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
}
