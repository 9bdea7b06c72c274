//! Executing a job. The work is simulated but honest: each kind does a small,
//! deterministic computation and returns a summary, and a long-running job really
//! takes its time, but never past the invocation's deadline.

use crate::job::JobSpec;
use crate::messages::ErrorCode;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// Why a job failed. Each variant maps to a stable `code` in the error history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error(
        "the job needs {needed:?} but only {available:?} remain before the function's deadline"
    )]
    DeadlineExceeded {
        needed: Duration,
        available: Duration,
    },
    #[error("attempt {attempt} failed because the job asked it to (fault injection)")]
    InjectedFault { attempt: u32 },
}

impl JobError {
    pub fn code(&self) -> ErrorCode {
        match self {
            JobError::DeadlineExceeded { .. } => ErrorCode::DeadlineExceeded,
            JobError::InjectedFault { .. } => ErrorCode::InjectedFault,
        }
    }

    /// Whether another attempt could succeed. A job too long for any invocation never
    /// will; an injected fault stands for a transient failure.
    pub fn retryable(&self) -> bool {
        match self {
            JobError::DeadlineExceeded { .. } => false,
            JobError::InjectedFault { .. } => true,
        }
    }
}

/// Runs a job with `budget` time left. `now` dates the work (cleanup cut-offs).
pub async fn execute(
    spec: &JobSpec,
    budget: Duration,
    now: DateTime<Utc>,
) -> Result<Value, JobError> {
    Ok(match spec {
        JobSpec::ReportGeneration {
            report_name,
            filters,
        } => {
            let parsed: Map<String, Value> = parse_filters(filters);
            let digest = fnv1a(&[report_name.as_bytes(), b"\0", filters.as_bytes()]);
            json!({
                "report": report_name,
                "filters": parsed,
                "rows": digest % 10_000,
                "checksum": format!("{digest:016x}"),
            })
        }
        JobSpec::DataCleanup {
            target_table,
            retention_days,
        } => {
            // Absurd retentions (beyond chrono's range) keep everything: no cut-off.
            let cutoff = i64::try_from(*retention_days)
                .ok()
                .and_then(TimeDelta::try_days)
                .and_then(|d| now.checked_sub_signed(d))
                .map(|t| t.format("%Y-%m-%d").to_string());
            let digest = fnv1a(&[target_table.as_bytes(), &retention_days.to_le_bytes()]);
            json!({
                "table": target_table,
                "retention_days": retention_days,
                "cutoff": cutoff,
                "rows_deleted": if cutoff.is_some() { digest % 100_000 } else { 0 },
            })
        }
        JobSpec::UserOnboarding { user_id, user_name } => json!({
            "user_id": user_id,
            "username": slug(user_name),
            "welcome": format!("Welcome, {}!", user_name.trim()),
        }),
        JobSpec::LongRunningJob {
            task_name,
            timeout_secs,
        } => {
            let needed = Duration::from_secs(*timeout_secs);
            // Known up front: starting work that cannot finish only burns the budget.
            if needed > budget {
                return Err(JobError::DeadlineExceeded {
                    needed,
                    available: budget,
                });
            }
            tokio::time::sleep(needed).await;
            json!({ "task": task_name, "ran_for_secs": timeout_secs })
        }
    })
}

/// `region=US, tier=gold` → `{"region":"US","tier":"gold"}`; a term without `=`
/// becomes a flag set to `true`.
fn parse_filters(filters: &str) -> Map<String, Value> {
    filters
        .split([',', ';', '&'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|term| match term.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), Value::String(v.trim().to_owned())),
            None => (term.to_owned(), Value::Bool(true)),
        })
        .collect()
}

fn slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('.') && !out.is_empty() {
            out.push('.');
        }
    }
    out.trim_end_matches('.').to_owned()
}

pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
            .expect("valid")
            .with_timezone(&Utc)
    }

    #[tokio::test]
    async fn report_is_deterministic() {
        let spec = JobSpec::ReportGeneration {
            report_name: "Sales".into(),
            filters: "region=US; vip".into(),
        };
        let a = execute(&spec, Duration::from_secs(1), now())
            .await
            .expect("runs");
        let b = execute(&spec, Duration::from_secs(1), now())
            .await
            .expect("runs");
        assert_eq!(a, b);
        assert_eq!(a["filters"], json!({"region":"US","vip":true}));
    }

    #[tokio::test]
    async fn cleanup_computes_cutoff_and_survives_huge_retention() {
        let spec = JobSpec::DataCleanup {
            target_table: "users".into(),
            retention_days: 30,
        };
        let r = execute(&spec, Duration::ZERO, now()).await.expect("runs");
        assert_eq!(r["cutoff"], "2026-10-23");
        let spec = JobSpec::DataCleanup {
            target_table: "users".into(),
            retention_days: u64::MAX,
        };
        let r = execute(&spec, Duration::ZERO, now()).await.expect("runs");
        assert_eq!(
            (r["cutoff"].clone(), r["rows_deleted"].clone()),
            (Value::Null, json!(0))
        );
    }

    #[tokio::test]
    async fn onboarding_slugs_the_name() {
        let spec = JobSpec::UserOnboarding {
            user_id: "1".into(),
            user_name: " John  Doe ".into(),
        };
        let r = execute(&spec, Duration::ZERO, now()).await.expect("runs");
        assert_eq!(r["username"], "john.doe");
    }

    #[tokio::test(start_paused = true)]
    async fn long_job_takes_its_time_within_budget() {
        let spec = JobSpec::LongRunningJob {
            task_name: "t".into(),
            timeout_secs: 300,
        };
        let started = tokio::time::Instant::now();
        execute(&spec, Duration::from_secs(301), now())
            .await
            .expect("fits");
        assert_eq!(started.elapsed().as_secs(), 300);
    }

    #[tokio::test(start_paused = true)]
    async fn long_job_past_the_deadline_fails_at_once() {
        let spec = JobSpec::LongRunningJob {
            task_name: "t".into(),
            timeout_secs: 300,
        };
        let started = tokio::time::Instant::now();
        let err = execute(&spec, Duration::from_secs(299), now())
            .await
            .expect_err("too long");
        assert_eq!(err.code(), "deadline_exceeded");
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
