//! `data_cleanup`: deletes a table's rows older than a retention. Simulated: the
//! cut-off date is real, the number of rows deleted a digest of the request.

use super::{pick, Draw, Fields, JobKind, Malformed};
use crate::execute::{fnv1a, JobError};
use crate::job::Rejection;
use crate::messages::ErrorCode;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};
use std::time::Duration;

/// The `data_cleanup` kind.
#[derive(Debug, Clone, Copy)]
pub struct DataCleanup;

/// A valid `data_cleanup` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup {
    pub target_table: String,
    /// `message.retention`, in days.
    pub retention_days: u64,
}

const TABLES: &[&str] = &["users", "sessions", "audit_log", "orders", "events"];

impl JobKind for DataCleanup {
    const NAME: &'static str = "data_cleanup";
    type Spec = Cleanup;

    fn parse(message: &Fields<'_>) -> Result<Cleanup, Rejection> {
        Ok(Cleanup {
            target_table: message.text("target_table")?,
            retention_days: message.positive_int("retention")?,
        })
    }

    async fn execute(spec: &Cleanup, _: Duration, now: DateTime<Utc>) -> Result<Value, JobError> {
        // Absurd retentions (beyond chrono's range) keep everything: no cut-off.
        let cutoff = i64::try_from(spec.retention_days)
            .ok()
            .and_then(TimeDelta::try_days)
            .and_then(|d| now.checked_sub_signed(d))
            .map(|t| t.format("%Y-%m-%d").to_string());
        let digest = fnv1a(&[
            spec.target_table.as_bytes(),
            &spec.retention_days.to_le_bytes(),
        ]);
        Ok(json!({
            "table": spec.target_table,
            "retention_days": spec.retention_days,
            "cutoff": cutoff,
            "rows_deleted": if cutoff.is_some() { digest % 100_000 } else { 0 },
        }))
    }

    /// Retention starts at 1: the original generator sometimes drew an invalid 0.
    fn sample(draw: &mut dyn Draw, _: u64) -> Value {
        json!({"target_table": pick(draw, TABLES), "retention": draw.between(1, 365)})
    }

    fn malformed() -> Vec<Malformed> {
        let retention = |r: Value| json!({"job_type": Self::NAME, "message": {"target_table": "users", "retention": r}});
        vec![
            Malformed::new(retention(json!("30")), ErrorCode::WrongType),
            Malformed::new(retention(json!(0)), ErrorCode::OutOfRange),
            Malformed::new(retention(json!(30.5)), ErrorCode::WrongType),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::tests::{now, parse};

    #[test]
    fn accepts_a_cleanup() {
        let job = parse(
            json!({"job_type":"data_cleanup","message":{"target_table":"users","retention":30}}),
        )
        .expect("valid");
        assert_eq!(
            job.spec.get::<Cleanup>(),
            Some(&Cleanup {
                target_table: "users".into(),
                retention_days: 30
            })
        );
        assert_eq!(job.id, None);
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
            let r = parse(json!({"job_type":"data_cleanup",
                                 "message":{"target_table":"t","retention":retention}}))
            .expect_err("rejected");
            assert_eq!(r.code, code, "retention {retention}");
            assert_eq!(r.field.as_deref(), Some("message.retention"));
        }
    }

    #[tokio::test]
    async fn cleanup_computes_cutoff_and_survives_huge_retention() {
        let spec = Cleanup {
            target_table: "users".into(),
            retention_days: 30,
        };
        let r = DataCleanup::execute(&spec, Duration::ZERO, now())
            .await
            .expect("runs");
        assert_eq!(r["cutoff"], "2026-10-23");
        let spec = Cleanup {
            target_table: "users".into(),
            retention_days: u64::MAX,
        };
        let r = DataCleanup::execute(&spec, Duration::ZERO, now())
            .await
            .expect("runs");
        assert_eq!(
            (r["cutoff"].clone(), r["rows_deleted"].clone()),
            (Value::Null, json!(0))
        );
    }
}
