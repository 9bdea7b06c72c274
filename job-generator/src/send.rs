//! Putting job events on EventBridge with publisher confirms: entries go in batches
//! of up to ten, each entry's outcome is read back, and only retryable failures are
//! sent again, with exponential backoff and full jitter, never past the run's end.

use rand::Rng;
use std::time::Duration;
use tokio::time::Instant;

/// The most entries one `PutEvents` call takes.
pub const MAX_ENTRIES: usize = 10;

/// What EventBridge said about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    Accepted { event_id: String },
    Refused { code: String, message: String },
}

/// Where events go: EventBridge, or a fake in tests.
pub trait EventSink {
    /// Puts up to [`MAX_ENTRIES`] details (serialized JSON). `Ok` carries one outcome
    /// per detail, in order; `Err` means the call as a whole failed.
    async fn put(&self, details: &[String]) -> Result<Vec<EntryOutcome>, String>;
}

/// Entry error codes worth sending again; anything else is a verdict on the entry.
fn retryable(code: &str) -> bool {
    matches!(
        code,
        "InternalFailure" | "InternalException" | "ThrottlingException" | "ServiceUnavailable"
    )
}

/// How hard to try: the pipeline's own policy type, so that both backoffs are the
/// one rule (full jitter under a doubling ceiling).
pub use jobs_core::retry::RetryPolicy;

/// Six attempts, the retries from up to 100 ms to up to 5 s apart: a run's events
/// are worth a few seconds of waiting for a throttled bus, not minutes.
pub const PUT_EVENTS_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 6,
    base_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(5),
};

/// Full jitter: a uniform delay up to the policy's ceiling after failed attempt
/// `attempt` (1-based).
fn delay<R: Rng>(policy: &RetryPolicy, attempt: u32, rng: &mut R) -> Duration {
    policy.ceiling(attempt).mul_f64(rng.random::<f64>())
}

/// The fate of each detail handed to [`send`], by its index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendReport {
    pub accepted: Vec<(usize, String)>,
    pub refused: Vec<(usize, String)>,
    pub unsent: Vec<(usize, String)>,
    /// Entries sent again after a retryable failure.
    pub retried: u64,
}

/// Sends `details`, re-sending retryable failures until they are accepted, refused,
/// out of attempts, or the deadline comes.
pub async fn send<S: EventSink, R: Rng>(
    sink: &S,
    details: &[String],
    policy: &RetryPolicy,
    deadline: Option<Instant>,
    rng: &mut R,
) -> SendReport {
    let mut report = SendReport::default();
    let mut pending: Vec<usize> = (0..details.len()).collect();
    let mut attempt = 0;
    while !pending.is_empty() {
        let mut again = Vec::new();
        let mut last_error = String::new();
        for chunk in pending.chunks(MAX_ENTRIES) {
            let put = put_chunk(sink, details, chunk, deadline, &mut report).await;
            if let Some(e) = put.last_error {
                last_error = e;
            }
            again.extend(put.again);
        }
        attempt += 1;
        if again.is_empty() {
            break;
        }
        let delay = delay(policy, attempt, rng);
        let out_of_time = deadline.is_some_and(|d| Instant::now() + delay >= d);
        if attempt >= policy.max_attempts || out_of_time {
            let why = if out_of_time {
                "the run ended"
            } else {
                "out of attempts"
            };
            report.unsent.extend(
                again
                    .into_iter()
                    .map(|i| (i, format!("{why}; last error: {last_error}"))),
            );
            break;
        }
        report.retried += again.len() as u64;
        tokio::time::sleep(delay).await;
        pending = again;
    }
    report
}

/// What one `PutEvents` call leaves to send again, and the last reason why.
#[derive(Default)]
struct Put {
    again: Vec<usize>,
    last_error: Option<String>,
}

impl Put {
    fn retry(&mut self, i: usize, why: String) {
        self.again.push(i);
        self.last_error = Some(why);
    }
}

/// Puts the details at `chunk` in one call, cut off at the deadline. Accepted and
/// refused entries go in `report`; a failed call leaves the whole chunk to retry.
async fn put_chunk<S: EventSink>(
    sink: &S,
    details: &[String],
    chunk: &[usize],
    deadline: Option<Instant>,
    report: &mut SendReport,
) -> Put {
    let batch: Vec<String> = chunk.iter().map(|&i| details[i].clone()).collect();
    let call = sink.put(&batch);
    let result = match deadline {
        Some(d) => tokio::time::timeout_at(d, call)
            .await
            .unwrap_or_else(|_| Err("the run ended".into())),
        None => call.await,
    };
    let mut put = Put::default();
    let outcomes = match result {
        Ok(outcomes) => outcomes,
        Err(e) => {
            put.again.extend_from_slice(chunk);
            put.last_error = Some(e);
            return put;
        }
    };
    for (pos, &i) in chunk.iter().enumerate() {
        match outcomes.get(pos) {
            Some(EntryOutcome::Accepted { event_id }) => {
                report.accepted.push((i, event_id.clone()))
            }
            Some(EntryOutcome::Refused { code, message }) if !retryable(code) => {
                report.refused.push((i, format!("{code}: {message}")));
            }
            Some(EntryOutcome::Refused { code, message }) => {
                put.retry(i, format!("{code}: {message}"));
            }
            None => put.retry(i, "EventBridge returned no outcome for the entry".into()),
        }
    }
    put
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::cell::RefCell;

    /// Refuses chosen details a number of times, then accepts them; records calls.
    #[derive(Default)]
    struct FakeSink {
        throttle_first: RefCell<Vec<(String, u32)>>,
        malformed: Vec<String>,
        calls: RefCell<Vec<usize>>,
        fail_calls: RefCell<u32>,
    }

    impl EventSink for FakeSink {
        async fn put(&self, details: &[String]) -> Result<Vec<EntryOutcome>, String> {
            self.calls.borrow_mut().push(details.len());
            if *self.fail_calls.borrow() > 0 {
                *self.fail_calls.borrow_mut() -= 1;
                return Err("connection reset".into());
            }
            Ok(details
                .iter()
                .map(|d| {
                    if self.malformed.contains(d) {
                        return EntryOutcome::Refused {
                            code: "MalformedDetail".into(),
                            message: "bad".into(),
                        };
                    }
                    let mut throttle = self.throttle_first.borrow_mut();
                    if let Some((_, left)) = throttle.iter_mut().find(|(t, n)| t == d && *n > 0) {
                        *left -= 1;
                        return EntryOutcome::Refused {
                            code: "ThrottlingException".into(),
                            message: "slow".into(),
                        };
                    }
                    EntryOutcome::Accepted {
                        event_id: format!("e-{d}"),
                    }
                })
                .collect())
        }
    }

    fn details(n: usize) -> Vec<String> {
        (0..n).map(|i| i.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn batches_of_ten_and_resends_only_failed_entries() {
        let sink = FakeSink {
            throttle_first: RefCell::new(vec![("3".into(), 2), ("17".into(), 1)]),
            malformed: vec!["5".into()],
            ..FakeSink::default()
        };
        let report = send(
            &sink,
            &details(23),
            &PUT_EVENTS_RETRY,
            None,
            &mut StdRng::seed_from_u64(1),
        )
        .await;
        assert_eq!(*sink.calls.borrow(), [10, 10, 3, 2, 1]);
        assert_eq!(report.accepted.len(), 22);
        assert_eq!(report.refused, [(5, "MalformedDetail: bad".to_owned())]);
        assert_eq!(report.retried, 3);
        assert!(report.unsent.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_call_is_retried_whole_then_given_up() {
        let sink = FakeSink {
            fail_calls: RefCell::new(100),
            ..FakeSink::default()
        };
        let policy = RetryPolicy {
            max_attempts: 3,
            ..PUT_EVENTS_RETRY
        };
        let report = send(
            &sink,
            &details(4),
            &policy,
            None,
            &mut StdRng::seed_from_u64(1),
        )
        .await;
        assert_eq!(report.unsent.len(), 4);
        assert!(
            report.unsent[0].1.contains("connection reset"),
            "{:?}",
            report.unsent
        );
        assert_eq!(sink.calls.borrow().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn never_retries_past_the_deadline() {
        let sink = FakeSink {
            fail_calls: RefCell::new(100),
            ..FakeSink::default()
        };
        let deadline = Instant::now() + Duration::from_millis(1);
        let policy = RetryPolicy {
            base_delay: Duration::from_secs(1),
            ..PUT_EVENTS_RETRY
        };
        let report = send(
            &sink,
            &details(2),
            &policy,
            Some(deadline),
            &mut StdRng::seed_from_u64(3),
        )
        .await;
        assert!(Instant::now() <= deadline + Duration::from_millis(1));
        assert_eq!(report.unsent.len(), 2);
    }
}
