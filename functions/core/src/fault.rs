//! Fault injection for demos and tests, off unless the processor's `FAULT_INJECTION`
//! setting enables it.
//!
//! A job asks for a fault with a top-level `fault` object beside `job_type` and
//! `message` (unknown to the schema, so ignored everywhere else):
//! `{"fail_attempts": 2}` fails its first two attempts, `{"fail_always": true}` fails
//! every attempt. Both failures are retryable, which is what makes them useful: they
//! exercise the retry path, its backoff and the error history.

use serde_json::Value;

/// The fault a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    FailFirst(u32),
    FailAlways,
}

impl Fault {
    /// Reads the job's `fault` object; anything malformed means no fault, since the
    /// request is a test aid, not part of the job.
    pub fn of(job: &Value) -> Option<Fault> {
        let fault = job.get("fault")?;
        if fault.get("fail_always").and_then(Value::as_bool) == Some(true) {
            return Some(Fault::FailAlways);
        }
        let n = fault.get("fail_attempts")?.as_u64()?;
        u32::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .map(Fault::FailFirst)
    }

    /// Whether attempt `attempt` (1-based) fails.
    pub fn fails(self, attempt: u32) -> bool {
        match self {
            Fault::FailAlways => true,
            Fault::FailFirst(n) => attempt <= n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_failing_its_first_two_attempts_passes_the_third() {
        let f = Fault::of(&json!({"job_type": "x", "fault": {"fail_attempts": 2}}));
        assert_eq!(f, Some(Fault::FailFirst(2)));
        let f = f.expect("a fault");
        assert!(f.fails(1) && f.fails(2) && !f.fails(3));
    }

    #[test]
    fn fail_always_fails_every_attempt() {
        let f = Fault::of(&json!({"fault": {"fail_always": true}})).expect("a fault");
        assert!((1..100).all(|a| f.fails(a)));
    }

    #[test]
    fn no_or_malformed_fault_means_none() {
        for job in [
            json!({"job_type": "x"}),
            json!({"fault": "yes"}),
            json!({"fault": {"fail_attempts": -1}}),
            json!({"fault": {"fail_attempts": 0}}),
            json!({"fault": {"fail_always": "true"}}),
        ] {
            assert_eq!(Fault::of(&job), None, "{job}");
        }
    }
}
