//! How executing a job fails. The work itself is each kind's ([`crate::kinds`]):
//! simulated but honest, a small deterministic computation returning a summary, and a
//! long-running job really takes its time, but never past the invocation's deadline.

use crate::messages::ErrorCode;
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

/// FNV-1a over `parts`: the stable digest the simulated work and the jitter use.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
