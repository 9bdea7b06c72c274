//! When a failed job gets another attempt, and how long it waits first.
//!
//! Delays follow exponential backoff with full jitter: attempt `n` waits a uniformly
//! random time in `[0, min(max_delay, base_delay * 2^(n-1))]`, which spreads retries of
//! jobs that failed together. The ceiling can never exceed SQS's longest message delay.

use std::time::Duration;

/// The longest `DelaySeconds` SQS accepts on a message.
pub const SQS_MAX_DELAY: Duration = Duration::from_secs(900);

/// How failed jobs are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; a job failing this many times ends FAILED.
    pub max_attempts: u32,
    /// Ceiling of the first retry's delay.
    pub base_delay: Duration,
    /// Highest ceiling; clamped to [`SQS_MAX_DELAY`].
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_secs(2),
            max_delay: SQS_MAX_DELAY,
        }
    }
}

/// What to do with a job whose attempt `attempt` just failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it back to the queue, visible again after `delay`, as attempt `next_attempt`.
    Retry { delay: Duration, next_attempt: u32 },
    /// Dead-letter it: the failure is permanent or the attempts are used up.
    GiveUp,
}

impl RetryPolicy {
    /// The upper bound of the delay after failed attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let cap = self.max_delay.min(SQS_MAX_DELAY);
        let doublings = attempt.saturating_sub(1).min(30);
        self.base_delay
            .checked_mul(1 << doublings)
            .map_or(cap, |d| d.min(cap))
    }

    /// Decides after failed attempt `attempt`. `unit` is a uniform random number in
    /// `[0, 1)`, passed in so that decisions are reproducible in tests.
    pub fn decide(&self, attempt: u32, retryable: bool, unit: f64) -> Decision {
        if !retryable || attempt >= self.max_attempts {
            return Decision::GiveUp;
        }
        let ceiling = self.ceiling(attempt).as_secs_f64();
        // Whole seconds, as SQS takes them; rounding up keeps a delay from collapsing to 0.
        let delay = (ceiling * unit.clamp(0.0, 1.0)).ceil();
        Decision::Retry {
            delay: Duration::from_secs(delay as u64),
            next_attempt: attempt + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_sqs_limit() {
        let p = RetryPolicy {
            max_attempts: 20,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(3600),
        };
        let ceilings: Vec<u64> = (1..=11).map(|a| p.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, [2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]);
        assert_eq!(p.ceiling(u32::MAX), SQS_MAX_DELAY);
    }

    #[test]
    fn permanent_failures_and_used_up_attempts_give_up() {
        let p = RetryPolicy::default();
        assert_eq!(p.decide(1, false, 0.5), Decision::GiveUp);
        assert_eq!(p.decide(3, true, 0.5), Decision::GiveUp);
        assert!(matches!(
            p.decide(2, true, 0.5),
            Decision::Retry {
                next_attempt: 3,
                ..
            }
        ));
    }

    proptest! {
        #[test]
        fn a_delay_stays_within_its_ceiling(attempt in 1u32..64, unit in 0.0f64..1.0) {
            let p = RetryPolicy { max_attempts: 100, ..RetryPolicy::default() };
            match p.decide(attempt, true, unit) {
                Decision::Retry { delay, next_attempt } => {
                    prop_assert!(delay <= p.ceiling(attempt));
                    prop_assert!(delay <= SQS_MAX_DELAY);
                    prop_assert_eq!(next_attempt, attempt + 1);
                }
                Decision::GiveUp => prop_assert!(false, "retryable under max_attempts"),
            }
        }
    }
}
