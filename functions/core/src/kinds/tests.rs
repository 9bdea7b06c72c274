//! Helpers for the kinds' tests.

use crate::job::{parse_job, Job, Rejection};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// The instant the kinds' tests run at.
pub(crate) fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
        .expect("valid")
        .with_timezone(&Utc)
}

/// `detail` validated against the built-in kinds.
pub(crate) fn parse(detail: Value) -> Result<Job, Rejection> {
    parse_job(&detail, None)
}
