//! Timeouts and a circuit breaker around every downstream call.
//!
//! A dependency that hangs or keeps failing must not eat the invocation's deadline one
//! record at a time. [`Guarded`] wraps a port: each call gets its own timeout, and after
//! `failure_threshold` consecutive failures the breaker opens, so calls fail at once for
//! `open_for` (the records go back to SQS as batch item failures and stay safe there).
//! Then one trial call is let through; its success closes the breaker again.
//!
//! The breaker lives as long as the wrapped client, across warm invocations.

use crate::messages::Notification;
use crate::ports::{MessageQueue, OutgoingMessage, PortError, Receipt, Topic};
use crate::store::{Claim, ClaimOutcome, Finish, JobState, JobStore, Release};
use crate::Timestamp;
use async_trait::async_trait;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How a dependency is guarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardConfig {
    /// Longest a single call may take; well under the function's timeout.
    pub call_timeout: Duration,
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before one trial call.
    pub open_for: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(5),
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial call is in flight; others fail fast until it reports.
    Trial,
}

/// The breaker's decision logic, separate from any I/O.
#[derive(Debug)]
pub struct Breaker {
    config: GuardConfig,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(config: GuardConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a call may go ahead now. An open breaker past its time admits exactly one.
    pub fn admit(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::Trial;
                true
            }
            State::Open { .. } | State::Trial => false,
        }
    }

    /// Records a call's outcome.
    pub fn record(&self, ok: bool, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = match (*state, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.config.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => State::Open {
                until: now + self.config.open_for,
            },
        };
    }

    pub fn is_open(&self) -> bool {
        !matches!(
            *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            State::Closed { .. }
        )
    }
}

/// A port with a per-call timeout and a circuit breaker.
#[derive(Debug)]
pub struct Guarded<P> {
    inner: P,
    name: &'static str,
    breaker: Breaker,
}

impl<P> Guarded<P> {
    /// `name` appears in errors and logs: `jobs-todo`, `job-end-state-topic`.
    pub fn new(inner: P, name: &'static str, config: GuardConfig) -> Self {
        Self {
            inner,
            name,
            breaker: Breaker::new(config),
        }
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Runs one call under the breaker and the timeout. `failed` tells whether the
    /// call's own result counts as a failure of the dependency.
    async fn call<R>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = R>,
        failed: impl Fn(&R) -> bool,
        fail: impl Fn(PortError) -> R,
    ) -> R {
        if !self.breaker.admit(Instant::now()) {
            return fail(PortError::Unreachable {
                operation,
                message: format!("circuit to {} is open after repeated failures", self.name),
            });
        }
        let timeout = self.breaker.config.call_timeout;
        match tokio::time::timeout(timeout, fut).await {
            Ok(result) => {
                let bad = failed(&result);
                self.breaker.record(!bad, Instant::now());
                if bad && self.breaker.is_open() {
                    tracing::warn!(dependency = self.name, "circuit opened");
                }
                result
            }
            Err(_) => {
                self.breaker.record(false, Instant::now());
                fail(PortError::Unreachable {
                    operation,
                    message: format!("{} did not answer within {timeout:?}", self.name),
                })
            }
        }
    }

    /// A batch call of `n` entries: the dependency is sick only when every entry
    /// failed, and an open circuit refuses each entry.
    async fn call_batch<T: Clone>(
        &self,
        operation: &'static str,
        n: usize,
        fut: impl Future<Output = Vec<Result<T, PortError>>>,
    ) -> Vec<Result<T, PortError>> {
        self.call(operation, fut, |r| all_failed(r), |e| vec![Err(e); n])
            .await
    }
}

/// A batch where every entry failed says the dependency is in trouble; a single
/// refused entry does not.
fn all_failed<T>(results: &[Result<T, PortError>]) -> bool {
    !results.is_empty() && results.iter().all(Result::is_err)
}

#[async_trait]
impl<Q: MessageQueue> MessageQueue for Guarded<Q> {
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PortError>> {
        let call = self.inner.send_batch(messages);
        self.call_batch("SendMessageBatch", messages.len(), call)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn retry_later(&self, receipts: &[Receipt]) -> Result<(), PortError> {
        let call = self.inner.retry_later(receipts);
        self.call("ChangeMessageVisibilityBatch", call, Result::is_err, Err)
            .await
    }
}

#[async_trait]
impl<T: Topic> Topic for Guarded<T> {
    async fn publish(&self, notification: &Notification) -> Result<(), PortError> {
        self.call(
            "Publish",
            self.inner.publish(notification),
            Result::is_err,
            Err,
        )
        .await
    }

    async fn publish_batch(&self, notifications: &[Notification]) -> Vec<Result<(), PortError>> {
        let call = self.inner.publish_batch(notifications);
        self.call_batch("PublishBatch", notifications.len(), call)
            .await
    }
}

/// The relay's reads and takes, under the same timeout and breaker as the rest.
#[async_trait]
impl<S: crate::store::Outbox> crate::store::Outbox for Guarded<S> {
    async fn stranded(
        &self,
        shard: u32,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<crate::store::Stranded>, PortError> {
        let call = self.inner.stranded(shard, before, limit);
        self.call("Query", call, Result::is_err, Err).await
    }

    async fn take(
        &self,
        take: &crate::store::Take<'_>,
        now: Timestamp,
    ) -> Result<Option<crate::store::JobState>, PortError> {
        let call = self.inner.take(take, now);
        self.call("UpdateItem", call, Result::is_err, Err).await
    }
}

#[async_trait]
impl<S: crate::store::Replays> crate::store::Replays for Guarded<S> {
    async fn replay_order(
        &self,
        name: &str,
    ) -> Result<Option<crate::store::ReplayOrder>, PortError> {
        let call = self.inner.replay_order(name);
        self.call("GetItem", call, Result::is_err, Err).await
    }

    async fn rerun(
        &self,
        rerun: &crate::store::Rerun<'_>,
        now: Timestamp,
    ) -> Result<crate::store::Rerunning, PortError> {
        let call = self.inner.rerun(rerun, now);
        self.call("TransactWriteItems", call, Result::is_err, Err)
            .await
    }
}

#[async_trait]
impl<S: crate::store::Sagas> crate::store::Sagas for Guarded<S> {
    async fn saga_log(
        &self,
        job_id: &str,
    ) -> Result<Option<crate::store::saga::Versioned>, PortError> {
        let call = self.inner.saga_log(job_id);
        self.call("GetItem", call, Result::is_err, Err).await
    }

    async fn save_saga_log(
        &self,
        job_id: &str,
        log: &crate::store::saga::SagaLog,
        version: u64,
        now: Timestamp,
    ) -> Result<bool, PortError> {
        let call = self.inner.save_saga_log(job_id, log, version, now);
        self.call("PutItem", call, Result::is_err, Err).await
    }

    async fn apply(
        &self,
        effect: &crate::store::saga::Effect<'_>,
        now: Timestamp,
    ) -> Result<crate::store::saga::Applied, PortError> {
        let call = self.inner.apply(effect, now);
        self.call("UpdateItem", call, Result::is_err, Err).await
    }

    async fn compensate(
        &self,
        effect: &crate::store::saga::Effect<'_>,
        compensation: &str,
        now: Timestamp,
    ) -> Result<crate::store::saga::Undo, PortError> {
        let call = self.inner.compensate(effect, compensation, now);
        self.call("UpdateItem", call, Result::is_err, Err).await
    }
}

#[async_trait]
impl<S: JobStore> JobStore for Guarded<S> {
    async fn claim(&self, claim: &Claim<'_>, now: Timestamp) -> Result<ClaimOutcome, PortError> {
        let call = self.inner.claim(claim, now);
        self.call("PutItem", call, Result::is_err, Err).await
    }

    async fn finish(&self, finish: &Finish) -> Result<(), PortError> {
        let call = self.inner.finish(finish);
        // A lost claim is an answer, not a sick table.
        let sick = |r: &Result<(), PortError>| matches!(r, Err(PortError::Unreachable { .. }));
        self.call("UpdateItem", call, sick, Err).await
    }

    async fn mark(&self, mark: &crate::store::Mark, now: Timestamp) -> Result<(), PortError> {
        let call = self.inner.mark(mark, now);
        self.call("UpdateItem", call, Result::is_err, Err).await
    }

    async fn claim_all(
        &self,
        claims: &[Claim<'_>],
        now: Timestamp,
    ) -> Vec<Result<ClaimOutcome, PortError>> {
        let call = self.inner.claim_all(claims, now);
        self.call_batch("BatchExecuteStatement", claims.len(), call)
            .await
    }

    async fn finish_all(&self, finishes: &[Finish]) -> Vec<Result<(), PortError>> {
        let n = finishes.len();
        let call = self.inner.finish_all(finishes);
        // Lost claims are answers, not a sick table.
        let sick = |results: &Vec<Result<(), PortError>>| {
            results
                .iter()
                .any(|r| matches!(r, Err(PortError::Unreachable { .. })))
        };
        self.call("BatchExecuteStatement", call, sick, |e| vec![Err(e); n])
            .await
    }

    async fn mark_all(
        &self,
        marks: &[crate::store::Mark],
        now: Timestamp,
    ) -> Vec<Result<(), PortError>> {
        let call = self.inner.mark_all(marks, now);
        self.call_batch("BatchExecuteStatement", marks.len(), call)
            .await
    }

    async fn release(&self, release: &Release<'_>, now: Timestamp) -> Result<(), PortError> {
        let call = self.inner.release(release, now);
        self.call("UpdateItem", call, Result::is_err, Err).await
    }

    async fn stop(
        &self,
        end: &crate::store::Stop<'_>,
    ) -> Result<crate::store::Forestalled, PortError> {
        let call = self.inner.stop(end);
        // A lost claim or another content's record is an answer, not a sick table.
        let sick = |r: &Result<_, PortError>| matches!(r, Err(PortError::Unreachable { .. }));
        self.call("PutItem", call, sick, Err).await
    }

    async fn get(&self, job_id: &str) -> Result<Vec<JobState>, PortError> {
        let call = self.inner.get(job_id);
        self.call("Query", call, Result::is_err, Err).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryQueue;

    fn config() -> GuardConfig {
        GuardConfig {
            call_timeout: Duration::from_millis(100),
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
        }
    }

    fn message() -> OutgoingMessage {
        OutgoingMessage {
            body: "{}".into(),
            attributes: vec![],
            delay_seconds: 0,
            group: None,
        }
    }

    #[test]
    fn the_breaker_opens_after_the_threshold_and_admits_one_trial_later() {
        let b = Breaker::new(config());
        let t0 = Instant::now();
        b.record(false, t0);
        b.record(false, t0);
        assert!(b.admit(t0), "two failures are under the threshold");
        b.record(false, t0);
        assert!(!b.admit(t0), "the third failure opens it");
        let later = t0 + Duration::from_secs(10);
        assert!(b.admit(later), "one trial after open_for");
        assert!(!b.admit(later), "only one trial at a time");
        b.record(true, later);
        assert!(b.admit(later) && !b.is_open(), "a good trial closes it");
    }

    #[test]
    fn a_failed_trial_opens_it_again() {
        let b = Breaker::new(config());
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(false, t0);
        }
        let later = t0 + Duration::from_secs(10);
        assert!(b.admit(later));
        b.record(false, later);
        assert!(!b.admit(later + Duration::from_secs(9)));
        assert!(b.admit(later + Duration::from_secs(10)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new(config());
        let t0 = Instant::now();
        b.record(false, t0);
        b.record(false, t0);
        b.record(true, t0);
        b.record(false, t0);
        b.record(false, t0);
        assert!(b.admit(t0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_fails_at_once_without_calling_the_queue() {
        let queue = MemoryQueue::refusing(""); // every body contains ""
        let guarded = Guarded::new(queue, "jobs-todo", config());
        for _ in 0..3 {
            assert!(guarded.send_batch(&[message()]).await[0].is_err());
        }
        let calls = || guarded.inner().batches.lock().expect("lock").len();
        let calls_before = calls();
        let result = guarded.send_batch(&[message(), message()]).await;
        assert_eq!(result.len(), 2);
        assert!(result.iter().all(
            |r| matches!(r, Err(PortError::Unreachable { message, .. }) if message.contains("open"))
        ));
        assert_eq!(calls(), calls_before, "no call while open");
    }

    struct Hanging;

    #[async_trait]
    impl Topic for Hanging {
        async fn publish(&self, _: &Notification) -> Result<(), PortError> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_call_times_out_and_counts_as_a_failure() {
        let guarded = Guarded::new(Hanging, "job-end-state-topic", config());
        let n = Notification {
            job_id: "job-1".into(),
            job_type: None,
            status: crate::messages::JobStatus::Completed,
            stage: crate::messages::Stage::Processor,
            attempts: 1,
            errors: vec![],
            result: None,
            replay: None,
            timestamp: crate::clock::now(),
        };
        let started = Instant::now();
        let err = guarded.publish(&n).await.expect_err("must fail");
        assert!(err.to_string().contains("did not answer"), "{err}");
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        guarded.publish(&n).await.expect_err("must fail");
        guarded.publish(&n).await.expect_err("must fail");
        assert!(guarded.breaker().is_open());
    }
}
