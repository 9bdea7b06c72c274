//! Fault injection for demos and tests, off unless the processor's `FAULT_INJECTION`
//! setting enables it.
//!
//! A job asks for a fault with a top-level `fault` object beside `job_type` and
//! `message` (unknown to the schema, so ignored everywhere else):
//! `{"fail_attempts": 2}` fails its first two attempts, `{"fail_always": true}` fails
//! every attempt. Both failures are retryable, which is what makes them useful: they
//! exercise the retry path, its backoff and the error history.
//!
//! A saga names the step the fault strikes (`"step": 1`, else its first), and may ask
//! instead for a crash right after that step took effect and before the saga records
//! it (`{"step": 1, "crash": true}`): the process aborts, on the job's first delivery
//! only, as a worker the OS killed would.

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

/// The fault a saga job asks for at one of its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepFault {
    /// The step it strikes (0-based).
    pub step: u32,
    /// The step fails before its request, as [`Fault`] says.
    pub fail: Option<Fault>,
    /// The process dies after the step's request took effect, before its record.
    pub crash: bool,
}

impl StepFault {
    pub fn of(job: &Value) -> Option<StepFault> {
        let fault = job.get("fault")?;
        let step = match fault.get("step") {
            None => 0,
            Some(v) => u32::try_from(v.as_u64()?).ok()?,
        };
        let crash = fault.get("crash").and_then(Value::as_bool) == Some(true);
        let fail = Fault::of(job);
        (crash || fail.is_some()).then_some(StepFault { step, fail, crash })
    }

    /// Whether attempt `attempt` of step `step` fails before its request.
    pub fn fails(&self, step: u32, attempt: u32) -> bool {
        self.step == step && self.fail.is_some_and(|f| f.fails(attempt))
    }

    /// Whether the first delivery (`receive_count` 1) of attempt 1 dies after `step`.
    pub fn crashes(&self, step: u32, attempt: u32, receive_count: u32) -> bool {
        self.crash && self.step == step && attempt == 1 && receive_count == 1
    }
}

/// The crash a job asked for, in a unit test: the process cannot die there, so the
/// caller gets this and stops as the dead process would have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crashed;

/// What a simulated process unwinds with when a job asks to crash
/// ([`simulate_crashes`]): the simulator drops the invocation, as Lambda loses a
/// sandbox whose process died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimulatedCrash;

thread_local! {
    static SIMULATED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// On this thread, from now on, [`crash`] unwinds with [`SimulatedCrash`] instead of
/// ending the process: a simulation runs many sandboxes in one process.
pub fn simulate_crashes(on: bool) {
    SIMULATED.with(|s| s.set(on));
}

/// Ends the process at once (no unwinding, no flush, no answer to Lambda), as a worker
/// killed mid-job; in unit tests, [`Crashed`]; in a simulation, an unwind the
/// simulator catches ([`simulate_crashes`]).
pub fn crash() -> Crashed {
    if cfg!(test) {
        return Crashed;
    }
    if SIMULATED.with(std::cell::Cell::get) {
        std::panic::panic_any(SimulatedCrash);
    }
    std::process::abort()
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
    fn a_step_fault_strikes_its_step_and_a_crash_only_the_first_delivery() {
        let f = StepFault::of(&json!({"fault": {"step": 2, "fail_attempts": 1}})).expect("fault");
        assert!(f.fails(2, 1) && !f.fails(2, 2) && !f.fails(1, 1));
        let c = StepFault::of(&json!({"fault": {"step": 1, "crash": true}})).expect("fault");
        assert!(c.crashes(1, 1, 1) && !c.crashes(1, 1, 2) && !c.crashes(1, 2, 1));
        assert!(!c.fails(1, 1) && !c.crashes(0, 1, 1));
        assert_eq!(
            StepFault::of(&json!({"fault": {"step": -1, "crash": true}})),
            None
        );
        assert_eq!(StepFault::of(&json!({"fault": {"step": 1}})), None);
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
