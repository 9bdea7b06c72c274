//! Calls of concurrent records, sent together.
//!
//! The records of a batch are handled concurrently, and each claims, finishes,
//! announces and publishes its job's end on its own. [`Batching`] gathers the calls of
//! one kind that are made while the first of them waits for its turn (one scheduler
//! pass: the other records reach the same step without waiting on I/O), and hands them
//! to the wrapped port's `*_all` method as one batch. Each caller still gets its own
//! answer, so handler logic and its tests stay per record. Ten `PutItem` calls become
//! one `BatchExecuteStatement` (billed the same per item), ten `Publish` calls one
//! `PublishBatch` (or several, split by count and size, [`crate::ports::publish_batched`]),
//! the processor's per-record retries and dead letters one `SendMessageBatch`, and the
//! records it gives back one `ChangeMessageVisibilityBatch`.
//!
//! A batch call never names one job twice. Two copies of a job delivered in one SQS
//! batch claim it in the same pass, and a store may judge every statement of a batch
//! against the table as it was before the batch (the emulator answered "claimed" to
//! both): so the calls gathered for one job go in rounds, each round a batch call of
//! its own, the second copy's after the first's, and the store decides it against
//! what the first one wrote.

use crate::messages::{Notification, Stage};
use crate::ports::{send_all, MessageQueue, OutgoingMessage, PortError, Receipt, Topic};
use crate::store::{Claim, ClaimOutcome, Finish, JobState, JobStore, Mark, Release};
use crate::Timestamp;
use async_trait::async_trait;
use std::future::Future;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// A port whose calls are gathered into batches: a store's claims, finishes and
/// announcements, a topic's publishes, a queue's sends and visibility changes.
#[derive(Debug)]
pub struct Batching<S> {
    inner: S,
    claims: Gather<OwnedClaim, Result<ClaimOutcome, PortError>>,
    finishes: Gather<Finish, Result<(), PortError>>,
    marks: Gather<(Mark, Timestamp), Result<(), PortError>>,
    publishes: Gather<Notification, Result<(), PortError>>,
    sends: Gather<Vec<OutgoingMessage>, Vec<Result<(), PortError>>>,
    visibility: Gather<Vec<Receipt>, Result<(), PortError>>,
}

impl<S> Batching<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            claims: Gather::default(),
            finishes: Gather::default(),
            marks: Gather::default(),
            publishes: Gather::default(),
            sends: Gather::default(),
            visibility: Gather::default(),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

/// Calls of one kind waiting to go out.
#[derive(Debug)]
struct Gather<Req, Resp> {
    waiting: Mutex<Waiting<Req, Resp>>,
}

#[derive(Debug)]
struct Waiting<Req, Resp> {
    calls: Vec<(Req, oneshot::Sender<Resp>)>,
    /// Whether a caller already leads the next batch.
    led: bool,
}

impl<Req, Resp> Default for Gather<Req, Resp> {
    fn default() -> Self {
        Self {
            waiting: Mutex::new(Waiting {
                calls: Vec::new(),
                led: false,
            }),
        }
    }
}

impl<Req, Resp> Gather<Req, Resp> {
    /// Adds `req` to the next batch and waits for its answer. The first caller of a
    /// batch yields once, so that the callers running alongside it join, then sends
    /// the batch with `send` and hands out the answers. `None` if the batch was lost
    /// (its leader was cancelled).
    async fn join<F, Fut>(&self, req: Req, send: F) -> Option<Resp>
    where
        F: FnOnce(Vec<Req>) -> Fut,
        Fut: Future<Output = Vec<Resp>>,
    {
        let (tx, rx) = oneshot::channel();
        let leads = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            waiting.calls.push((req, tx));
            !std::mem::replace(&mut waiting.led, true)
        };
        if leads {
            let mut lead = Lead {
                gather: self,
                sent: false,
            };
            tokio::task::yield_now().await;
            let batch = {
                let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                waiting.led = false;
                lead.sent = true;
                std::mem::take(&mut waiting.calls)
            };
            let (reqs, senders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            for (tx, answer) in senders.into_iter().zip(send(reqs).await) {
                let _ = tx.send(answer);
            }
        }
        rx.await.ok()
    }
}

/// A caller leading the next batch. If it is cancelled before taking the batch, the
/// calls waiting in it learn at once that it is lost (their senders are dropped)
/// instead of waiting for a leader that will not come, and the next call leads anew.
struct Lead<'a, Req, Resp> {
    gather: &'a Gather<Req, Resp>,
    sent: bool,
}

impl<Req, Resp> Drop for Lead<'_, Req, Resp> {
    fn drop(&mut self) {
        if !self.sent {
            let mut waiting = self
                .gather
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            waiting.led = false;
            waiting.calls.clear();
        }
    }
}

/// A claim that can wait in a queue.
#[derive(Debug)]
struct OwnedClaim {
    job_id: String,
    stage: Stage,
    fingerprint: String,
    legacy_fingerprint: Option<String>,
    attempt: u32,
    lease_until: Timestamp,
    holder: String,
    token: String,
    /// The error history the claim writes into the record (a keyed job's attempts).
    history: Option<serde_json::Value>,
    now: Timestamp,
}

impl OwnedClaim {
    fn of(claim: &Claim<'_>, now: Timestamp) -> Self {
        Self {
            job_id: claim.job_id.to_owned(),
            stage: claim.stage,
            fingerprint: claim.fingerprint.to_owned(),
            legacy_fingerprint: claim.legacy_fingerprint.map(str::to_owned),
            attempt: claim.attempt,
            lease_until: claim.lease_until,
            holder: claim.holder.to_owned(),
            token: claim.token.to_owned(),
            history: claim.history.cloned(),
            now,
        }
    }

    fn as_claim(&self) -> Claim<'_> {
        Claim {
            job_id: &self.job_id,
            stage: self.stage,
            fingerprint: &self.fingerprint,
            legacy_fingerprint: self.legacy_fingerprint.as_deref(),
            attempt: self.attempt,
            lease_until: self.lease_until,
            holder: &self.holder,
            token: &self.token,
            history: self.history.as_ref(),
        }
    }
}

/// The calls of a gathered batch in rounds that name each key at most once: round `k`
/// holds the `k`-th call for every key, in the order they came.
fn rounds(keys: &[String]) -> Vec<Vec<usize>> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let round = seen.entry(key.as_str()).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(i);
        *round += 1;
    }
    rounds
}

/// Sends the calls named by `keys` round by round ([`rounds`]), each round with `send`
/// given the indexes of its calls, and puts every answer back in its call's place
/// (`missing` for a call its round did not answer).
async fn by_rounds<Resp, Fut>(
    keys: &[String],
    send: impl Fn(Vec<usize>) -> Fut,
    missing: impl Fn() -> Resp,
) -> Vec<Resp>
where
    Fut: Future<Output = Vec<Resp>>,
{
    let mut answers: Vec<Option<Resp>> = keys.iter().map(|_| None).collect();
    for round in rounds(keys) {
        let got = send(round.clone()).await;
        for (i, answer) in round.into_iter().zip(got) {
            answers[i] = Some(answer);
        }
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(&missing))
        .collect()
}

fn item_key(stage: Stage, job_id: &str) -> String {
    format!("{}#{job_id}", stage.as_str())
}

fn lost(operation: &'static str) -> PortError {
    PortError::Unreachable {
        operation,
        message: "the batch carrying this call was abandoned".into(),
    }
}

/// The relay's reads and takes go one by one: a sweep makes few of them.
#[async_trait]
impl<S: crate::store::Outbox> crate::store::Outbox for Batching<S> {
    async fn stranded(
        &self,
        shard: u32,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<crate::store::Stranded>, PortError> {
        self.inner.stranded(shard, before, limit).await
    }

    async fn take(
        &self,
        take: &crate::store::Take<'_>,
        now: Timestamp,
    ) -> Result<Option<crate::store::JobState>, PortError> {
        self.inner.take(take, now).await
    }
}

/// Replays are rare: their calls go one by one.
#[async_trait]
impl<S: crate::store::Replays> crate::store::Replays for Batching<S> {
    async fn replay_order(
        &self,
        name: &str,
    ) -> Result<Option<crate::store::ReplayOrder>, PortError> {
        self.inner.replay_order(name).await
    }

    async fn rerun(
        &self,
        rerun: &crate::store::Rerun<'_>,
        now: Timestamp,
    ) -> Result<crate::store::Rerunning, PortError> {
        self.inner.rerun(rerun, now).await
    }
}

// A saga's calls are one at a time, in order: nothing to batch.
crate::delegate_sagas!([S: crate::store::Sagas] Batching<S>, inner);

#[async_trait]
impl<S: JobStore> JobStore for Batching<S> {
    async fn claim(&self, claim: &Claim<'_>, now: Timestamp) -> Result<ClaimOutcome, PortError> {
        let send = |reqs: Vec<OwnedClaim>| async move {
            // One time for the batch: the latest, which no caller's clock is behind.
            let now = reqs.iter().map(|c| c.now).max().unwrap_or(now);
            let keys: Vec<String> = reqs.iter().map(|c| item_key(c.stage, &c.job_id)).collect();
            let round = |calls: Vec<usize>| {
                let claims: Vec<Claim<'_>> = calls.iter().map(|&i| reqs[i].as_claim()).collect();
                async move { self.inner.claim_all(&claims, now).await }
            };
            by_rounds(&keys, round, || Err(lost("claim"))).await
        };
        let answer = self.claims.join(OwnedClaim::of(claim, now), send).await;
        answer.unwrap_or_else(|| Err(lost("claim")))
    }

    async fn finish(&self, finish: &Finish) -> Result<(), PortError> {
        let finish = finish.clone();
        let send = |reqs: Vec<Finish>| async move {
            let keys: Vec<String> = reqs.iter().map(|f| item_key(f.stage, &f.job_id)).collect();
            let round = |calls: Vec<usize>| {
                let finishes: Vec<Finish> = calls.iter().map(|&i| reqs[i].clone()).collect();
                async move { self.inner.finish_all(&finishes).await }
            };
            by_rounds(&keys, round, || Err(lost("finish"))).await
        };
        let answer = self.finishes.join(finish, send).await;
        answer.unwrap_or_else(|| Err(lost("finish")))
    }

    async fn mark(&self, mark: &Mark, now: Timestamp) -> Result<(), PortError> {
        let send = |reqs: Vec<(Mark, Timestamp)>| async move {
            let now = reqs.iter().map(|r| r.1).max().unwrap_or(now);
            let keys: Vec<String> = reqs
                .iter()
                .map(|(m, _)| item_key(m.stage, &m.job_id))
                .collect();
            let round = |calls: Vec<usize>| {
                let marks: Vec<Mark> = calls.iter().map(|&i| reqs[i].0.clone()).collect();
                async move { self.inner.mark_all(&marks, now).await }
            };
            by_rounds(&keys, round, || Err(lost("mark"))).await
        };
        let answer = self.marks.join((mark.clone(), now), send).await;
        answer.unwrap_or_else(|| Err(lost("mark")))
    }

    async fn claim_all(
        &self,
        claims: &[Claim<'_>],
        now: Timestamp,
    ) -> Vec<Result<ClaimOutcome, PortError>> {
        self.inner.claim_all(claims, now).await
    }

    async fn finish_all(&self, finishes: &[Finish]) -> Vec<Result<(), PortError>> {
        self.inner.finish_all(finishes).await
    }

    async fn mark_all(&self, marks: &[Mark], now: Timestamp) -> Vec<Result<(), PortError>> {
        self.inner.mark_all(marks, now).await
    }

    async fn release(&self, release: &Release<'_>, now: Timestamp) -> Result<(), PortError> {
        self.inner.release(release, now).await
    }

    async fn stop(
        &self,
        end: &crate::store::Stop<'_>,
    ) -> Result<crate::store::Forestalled, PortError> {
        self.inner.stop(end).await
    }

    async fn get(&self, job_id: &str) -> Result<Vec<JobState>, PortError> {
        self.inner.get(job_id).await
    }
}

/// Notifications published by concurrent records go out together (`PublishBatch`).
#[async_trait]
impl<T: Topic> Topic for Batching<T> {
    async fn publish(&self, notification: &Notification) -> Result<(), PortError> {
        let send = |reqs: Vec<Notification>| async move {
            crate::ports::publish_batched(&self.inner, &reqs).await
        };
        let answer = self.publishes.join(notification.clone(), send).await;
        answer.unwrap_or_else(|| Err(lost("publish")))
    }

    async fn publish_batch(&self, notifications: &[Notification]) -> Vec<Result<(), PortError>> {
        self.inner.publish_batch(notifications).await
    }
}

/// Messages that concurrent records send go out together (`SendMessageBatch`, split
/// by [`send_all`] into batches SQS takes), and so do the visibility changes of the
/// records they give back. Each caller gets the answers for its own messages.
#[async_trait]
impl<Q: MessageQueue> MessageQueue for Batching<Q> {
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PortError>> {
        let send = |calls: Vec<Vec<OutgoingMessage>>| async move {
            let lengths: Vec<usize> = calls.iter().map(Vec::len).collect();
            let all: Vec<OutgoingMessage> = calls.into_iter().flatten().collect();
            let mut answers = send_all(&self.inner, &all).await.into_iter();
            lengths
                .into_iter()
                .map(|n| answers_for(&mut answers, n, "send"))
                .collect()
        };
        let answer = self.sends.join(messages.to_vec(), send).await;
        answer.unwrap_or_else(|| messages.iter().map(|_| Err(lost("send"))).collect())
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn retry_later(&self, receipts: &[Receipt]) -> Result<(), PortError> {
        let send = |calls: Vec<Vec<Receipt>>| async move {
            let count = calls.len();
            let all: Vec<Receipt> = calls.into_iter().flatten().collect();
            let result = self.inner.retry_later(&all).await;
            vec![result; count]
        };
        let answer = self.visibility.join(receipts.to_vec(), send).await;
        answer.unwrap_or_else(|| Err(lost("retry_later")))
    }
}

/// The next `n` answers of a gathered call, one per message; an answer the inner port
/// did not give counts as lost, never as sent.
fn answers_for(
    answers: &mut impl Iterator<Item = Result<(), PortError>>,
    n: usize,
    operation: &'static str,
) -> Vec<Result<(), PortError>> {
    (0..n)
        .map(|_| answers.next().unwrap_or_else(|| Err(lost(operation))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::JobStatus;
    use crate::store::{Marked, MemoryStore, Progress};
    use chrono::{TimeZone, Utc};
    use futures_util::future::join_all;
    use serde_json::Value;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A memory store that counts the batches it is handed.
    #[derive(Debug, Default)]
    struct Counting {
        store: MemoryStore,
        batches: Mutex<Vec<(&'static str, usize)>>,
        single: AtomicUsize,
    }

    impl Counting {
        fn batches(&self) -> Vec<(&'static str, usize)> {
            self.batches.lock().expect("lock").clone()
        }
    }

    #[async_trait]
    impl crate::store::Replays for Counting {
        async fn replay_order(
            &self,
            name: &str,
        ) -> Result<Option<crate::store::ReplayOrder>, PortError> {
            self.store.replay_order(name).await
        }
        async fn rerun(
            &self,
            rerun: &crate::store::Rerun<'_>,
            now: Timestamp,
        ) -> Result<crate::store::Rerunning, PortError> {
            self.store.rerun(rerun, now).await
        }
    }

    crate::delegate_sagas!([] Counting, store);

    #[async_trait]
    impl JobStore for Counting {
        async fn claim(&self, c: &Claim<'_>, now: Timestamp) -> Result<ClaimOutcome, PortError> {
            self.single.fetch_add(1, Ordering::SeqCst);
            self.store.claim(c, now).await
        }
        async fn finish(&self, finish: &Finish) -> Result<(), PortError> {
            self.single.fetch_add(1, Ordering::SeqCst);
            self.store.finish(finish).await
        }
        async fn mark(&self, mark: &Mark, now: Timestamp) -> Result<(), PortError> {
            self.single.fetch_add(1, Ordering::SeqCst);
            self.store.mark(mark, now).await
        }
        async fn claim_all(
            &self,
            claims: &[Claim<'_>],
            now: Timestamp,
        ) -> Vec<Result<ClaimOutcome, PortError>> {
            self.batches
                .lock()
                .expect("lock")
                .push(("claim", claims.len()));
            join_all(claims.iter().map(|c| self.store.claim(c, now))).await
        }
        async fn finish_all(&self, finishes: &[Finish]) -> Vec<Result<(), PortError>> {
            self.batches
                .lock()
                .expect("lock")
                .push(("finish", finishes.len()));
            self.store.finish_all(finishes).await
        }
        async fn mark_all(&self, marks: &[Mark], now: Timestamp) -> Vec<Result<(), PortError>> {
            self.batches
                .lock()
                .expect("lock")
                .push(("announce", marks.len()));
            self.store.mark_all(marks, now).await
        }
        async fn release(&self, release: &Release<'_>, now: Timestamp) -> Result<(), PortError> {
            self.store.release(release, now).await
        }
        async fn stop(
            &self,
            end: &crate::store::Stop<'_>,
        ) -> Result<crate::store::Forestalled, PortError> {
            self.store.stop(end).await
        }
        async fn get(&self, job_id: &str) -> Result<Vec<JobState>, PortError> {
            self.store.get(job_id).await
        }
    }

    fn at(secs: i64) -> Timestamp {
        Utc.timestamp_opt(1_790_000_000 + secs, 0)
            .single()
            .expect("time")
    }

    fn claim<'a>(job_id: &'a str, fingerprint: &'a str) -> Claim<'a> {
        Claim {
            job_id,
            stage: Stage::Processor,
            fingerprint,
            legacy_fingerprint: None,
            attempt: 1,
            lease_until: at(60),
            holder: job_id,
            token: "",
            history: None,
        }
    }

    #[tokio::test]
    async fn concurrent_calls_go_as_one_batch_and_each_gets_its_own_answer() {
        let store = Batching::new(Counting::default());
        // job-3 exists with other content: its answer must differ from the others'.
        store
            .inner()
            .store
            .claim(&claim("job-3", "other"), at(0))
            .await
            .expect("seed");
        let ids: Vec<String> = (0..10).map(|i| format!("job-{i}")).collect();
        let claims: Vec<Claim<'_>> = ids.iter().map(|id| claim(id, "fp")).collect();
        let answers = join_all(claims.iter().map(|c| store.claim(c, at(1)))).await;
        assert_eq!(store.inner().batches(), [("claim", 10)]);
        for (id, answer) in ids.iter().zip(&answers) {
            let expected = if id == "job-3" {
                ClaimOutcome::Conflict {
                    fingerprint: "other".into(),
                }
            } else {
                ClaimOutcome::Claimed
            };
            assert_eq!(answer.as_ref().expect("answer"), &expected, "{id}");
        }

        let done = Progress::Done(Some(JobStatus::Completed));
        let claimed: Vec<&String> = ids.iter().filter(|id| *id != "job-3").collect();
        let finishes: Vec<Finish> = claimed
            .iter()
            .map(|id| Finish {
                job_id: id.to_string(),
                stage: Stage::Processor,
                attempt: 1,
                progress: done,
                detail: None,
                now: at(2),
            })
            .collect();
        let finished = join_all(finishes.iter().map(|f| store.finish(f))).await;
        assert!(finished.iter().all(Result::is_ok));
        let announced = join_all(claimed.iter().map(|id| async {
            let mark = Mark::new(id, Stage::Processor, "", Marked::Announced);
            store.mark(&mark, at(3)).await
        }))
        .await;
        assert!(announced.iter().all(Result::is_ok));
        assert_eq!(
            store.inner().batches(),
            [("claim", 10), ("finish", 9), ("announce", 9)]
        );
        let records = store.inner().store.get("job-0").await.expect("store");
        assert_eq!((records[0].progress, records[0].announced), (done, true));
        assert_eq!(store.inner().single.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_ingester_batch_writes_its_jobs_state_in_a_few_calls() {
        use crate::ingester::{Ingester, IngesterConfig};
        use crate::telemetry::Instruments;
        use crate::testing::{MemoryQueue, MemoryTopic};
        let event =
            serde_json::from_str(include_str!("../fixtures/ingester-batch.json")).expect("fixture");
        let ingester = Ingester {
            source: MemoryQueue::default(),
            jobs_todo: MemoryQueue::default(),
            jobs_todo_fifo: MemoryQueue::fifo(),
            dead_letters: MemoryQueue::default(),
            topic: MemoryTopic::default(),
            store: Batching::new(Counting::default()),
            config: IngesterConfig {
                max_receive_count: 5,
                max_job_timeout_secs: crate::job::DEFAULT_MAX_TIMEOUT_SECS,
                kinds: crate::kinds::Registry::builtin(),
            },
            telemetry: Instruments::default(),
        };
        let response = ingester.handle(event, at(0)).await;
        assert!(response.batch_item_failures.is_empty());
        let batches = ingester.store.inner().batches();
        // Ten records, five rejections: each ends with its stop on the processor's
        // record (no claim, no finish), and their five marks go in one call; the
        // forwarded jobs write nothing here.
        assert_eq!(batches, [("announce", 5)], "{batches:?}");
        assert_eq!(ingester.store.inner().single.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_processor_batch_ends_its_jobs_in_a_few_calls() {
        use crate::processor::{Processor, ProcessorConfig};
        use crate::retry::RetryPolicy;
        use crate::telemetry::Instruments;
        use crate::testing::{MemoryQueue, MemoryTopic};
        // Four quick jobs: the fixture's report, under four ids.
        let mut event: aws_lambda_events::sqs::SqsEvent =
            serde_json::from_str(include_str!("../fixtures/processor-batch.json"))
                .expect("fixture");
        let report = event.records[0].clone();
        event.records = (0..4)
            .map(|i| {
                let mut record = report.clone();
                let mut body: Value =
                    serde_json::from_str(record.body.as_deref().unwrap_or("{}")).expect("body");
                body["job_id"] = Value::from(format!("report-{i}"));
                record.body = Some(body.to_string());
                record.message_id = Some(format!("m-{i}"));
                record
            })
            .collect();
        let processor = Processor {
            jobs_todo: MemoryQueue::default(),
            jobs_todo_fifo: MemoryQueue::fifo(),
            dead_letters: MemoryQueue::default(),
            topic: Batching::new(MemoryTopic::default()),
            store: Batching::new(Counting::default()),
            config: ProcessorConfig {
                deadline_margin: std::time::Duration::from_secs(3),
                retry: RetryPolicy::default(),
                fault_injection: false,
                kinds: crate::kinds::Registry::builtin(),
            },
            telemetry: Instruments::default(),
        };
        let now = crate::clock::now();
        let response = processor
            .handle(event, now + chrono::TimeDelta::seconds(60), now)
            .await;
        assert!(response.batch_item_failures.is_empty());
        let notes = processor.topic.inner().notifications();
        assert_eq!(notes.len(), 4, "four jobs, four end states");
        assert_eq!(*processor.topic.inner().batches.lock().expect("lock"), [4]);
        let batches = processor.store.inner().batches();
        assert_eq!(
            batches,
            [("claim", 4), ("finish", 4), ("announce", 4)],
            "one call per step"
        );
    }

    #[tokio::test]
    async fn each_publisher_learns_whether_its_own_notification_went_out() {
        use crate::testing::MemoryTopic;
        let topic = Batching::new(MemoryTopic::refusing("job-2"));
        let notes: Vec<Notification> = (0..5)
            .map(|i| Notification {
                job_id: format!("job-{i}"),
                job_type: None,
                status: JobStatus::Completed,
                stage: Stage::Processor,
                attempts: 1,
                errors: Vec::new(),
                result: None,
                replay: None,
                timestamp: at(0),
            })
            .collect();
        let results = join_all(notes.iter().map(|n| topic.publish(n))).await;
        assert_eq!(*topic.inner().batches.lock().expect("lock"), [5]);
        let refused: Vec<usize> = (0..5).filter(|&i| results[i].is_err()).collect();
        assert_eq!(refused, [2]);
        assert_eq!(topic.inner().notifications().len(), 4);
    }

    #[tokio::test]
    async fn a_leader_cancelled_before_sending_loses_its_batch_but_wedges_nothing() {
        use futures_util::FutureExt;
        let store = Batching::new(Counting::default());
        let (a, b) = (claim("a", "fp"), claim("b", "fp"));
        let mut leader = Box::pin(store.claim(&a, at(0)));
        assert!((&mut leader).now_or_never().is_none(), "yields once");
        let mut follower = Box::pin(store.claim(&b, at(0)));
        assert!(
            (&mut follower).now_or_never().is_none(),
            "waits for the batch"
        );
        drop(leader);
        let answer = tokio::time::timeout(std::time::Duration::from_secs(1), follower)
            .await
            .expect("the follower is not left waiting");
        assert!(
            answer.is_err(),
            "its batch was lost: the record goes back to SQS"
        );
        let next = store.claim(&claim("c", "fp"), at(0)).await;
        assert_eq!(next, Ok(ClaimOutcome::Claimed));
        assert_eq!(store.inner().batches(), [("claim", 1)]);
    }

    #[tokio::test]
    async fn calls_for_one_job_go_in_rounds_so_a_batch_never_names_it_twice() {
        let store = Batching::new(Counting::default());
        let copy = |holder| Claim {
            holder,
            ..claim("a", "fp")
        };
        let claims = [copy("m1"), claim("b", "fp"), copy("m2"), copy("m3")];
        let answers = join_all(claims.iter().map(|c| store.claim(c, at(0)))).await;
        assert_eq!(
            store.inner().batches(),
            [("claim", 2), ("claim", 1), ("claim", 1)],
            "a and b, then each further copy of a"
        );
        assert_eq!(
            answers,
            [
                Ok(ClaimOutcome::Claimed),
                Ok(ClaimOutcome::Claimed),
                Ok(ClaimOutcome::Stale),
                Ok(ClaimOutcome::Stale)
            ]
        );
        assert_eq!(
            rounds(&["x".into(), "y".into(), "x".into()]),
            [vec![0, 1], vec![2]]
        );
    }

    #[tokio::test]
    async fn calls_made_one_after_another_go_alone() {
        let store = Batching::new(Counting::default());
        for id in ["a", "b", "c"] {
            let answer = store.claim(&claim(id, "fp"), at(0)).await;
            assert_eq!(answer, Ok(ClaimOutcome::Claimed));
        }
        assert_eq!(
            store.inner().batches(),
            [("claim", 1), ("claim", 1), ("claim", 1)]
        );
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_caller_in_it() {
        let store = Batching::new(Counting::default());
        store.inner().store.down.store(true, Ordering::SeqCst);
        let claims = [claim("a", "fp"), claim("b", "fp")];
        let answers = join_all(claims.iter().map(|c| store.claim(c, at(0)))).await;
        assert!(answers.iter().all(Result::is_err));
        assert_eq!(store.inner().batches(), [("claim", 2)]);
    }

    fn message(body: String) -> OutgoingMessage {
        OutgoingMessage {
            body,
            attributes: Vec::new(),
            delay_seconds: 0,
            group: None,
        }
    }

    /// Four records' sends, of 1 to 4 messages each (`r<record>-m<message>`).
    fn sends() -> Vec<Vec<OutgoingMessage>> {
        (1..=4)
            .map(|r| (1..=r).map(|m| message(format!("r{r}-m{m}"))).collect())
            .collect()
    }

    /// Concurrent sends go out as SQS takes them (ten entries a call), and each sender
    /// learns the fate of its own messages, even one an entry of another call refused.
    #[tokio::test]
    async fn each_sender_learns_the_fate_of_its_own_messages() {
        use crate::testing::MemoryQueue;
        let queue = Batching::new(MemoryQueue::refusing("r4-m1"));
        let sends = sends();
        let answers = join_all(sends.iter().map(|m| queue.send_batch(m))).await;
        assert_eq!(*queue.inner().batches.lock().expect("lock"), [10]);
        for (send, answer) in sends.iter().zip(&answers) {
            assert_eq!(send.len(), answer.len());
            for (m, result) in send.iter().zip(answer) {
                assert_eq!(result.is_err(), m.body == "r4-m1", "{}: {result:?}", m.body);
            }
        }
        assert_eq!(queue.inner().bodies().len(), 9);
    }

    /// A gathered call refused whole fails every sender's every message; one whose
    /// answer was lost after SQS took it fails them too (so each record stays in its
    /// queue), though the messages were sent.
    #[tokio::test]
    async fn a_refused_or_unanswered_batch_is_no_senders_success() {
        use crate::testing::MemoryQueue;
        let queue = Batching::new(MemoryQueue::default());
        let sends = sends();
        queue.inner().faults.refuse_calls(1);
        let refused = join_all(sends.iter().map(|m| queue.send_batch(m))).await;
        assert!(refused.iter().flatten().all(Result::is_err));
        assert!(queue.inner().bodies().is_empty());
        queue.inner().faults.lose_answers(1);
        let lost = join_all(sends.iter().map(|m| queue.send_batch(m))).await;
        assert!(lost.iter().flatten().all(Result::is_err));
        assert_eq!(queue.inner().bodies().len(), 10, "took effect");
        let sent = join_all(sends.iter().map(|m| queue.send_batch(m))).await;
        assert!(sent.iter().flatten().all(Result::is_ok));
    }

    /// More messages than one call takes go in several calls, answers in order.
    #[tokio::test]
    async fn more_messages_than_one_call_takes_go_in_several() {
        use crate::testing::MemoryQueue;
        let queue = Batching::new(MemoryQueue::refusing("r4-m4"));
        let mut sends = sends();
        sends.push((1..=5).map(|m| message(format!("r5-m{m}"))).collect());
        let answers = join_all(sends.iter().map(|m| queue.send_batch(m))).await;
        let mut batches = queue.inner().batches.lock().expect("lock").clone();
        batches.sort_unstable();
        assert_eq!(batches, [5, 10]);
        let refused: Vec<&str> = sends
            .iter()
            .flatten()
            .zip(answers.iter().flatten())
            .filter(|(_, r)| r.is_err())
            .map(|(m, _)| m.body.as_str())
            .collect();
        assert_eq!(refused, ["r4-m4"]);
    }

    /// The records given back together change their visibility in one call, and a
    /// refusal of it reaches each of them.
    #[tokio::test]
    async fn visibility_changes_go_together_and_a_refusal_reaches_each_record() {
        use crate::testing::MemoryQueue;
        let queue = Batching::new(MemoryQueue::default());
        let receipts: Vec<Vec<Receipt>> = (0..3)
            .map(|i| {
                vec![Receipt {
                    receipt_handle: format!("rh-{i}"),
                    delay_seconds: 15,
                }]
            })
            .collect();
        let done = join_all(receipts.iter().map(|r| queue.retry_later(r))).await;
        assert!(done.iter().all(Result::is_ok));
        let released = || {
            let mut handles: Vec<_> = queue.inner().released.lock().expect("lock").clone();
            handles.sort_by(|a, b| a.receipt_handle.cmp(&b.receipt_handle));
            handles
        };
        let each: Vec<Receipt> = receipts.iter().flatten().cloned().collect();
        assert_eq!(released(), each, "every record's own receipt and delay");
        queue.inner().faults.refuse_calls(1);
        let refused = join_all(receipts.iter().map(|r| queue.retry_later(r))).await;
        assert!(refused.iter().all(Result::is_err));
        assert_eq!(released(), each, "a refused call changes nothing");
    }

    #[tokio::test]
    async fn a_claim_keeps_its_error_history_through_the_batch() {
        // A keyed job's attempts are read back from its record: the claim carries them.
        let store = Batching::new(MemoryStore::default());
        let history = serde_json::json!({"errors": [{"code": "injected_fault"}]});
        let claim = Claim {
            job_id: "job-k",
            stage: Stage::Processor,
            fingerprint: "fp",
            legacy_fingerprint: None,
            attempt: 2,
            lease_until: at(60),
            holder: "m1",
            token: "t1",
            history: Some(&history),
        };
        let answer = store.claim(&claim, at(0)).await.expect("store");
        assert_eq!(answer, ClaimOutcome::Claimed);
        let records = store.inner().get("job-k").await.expect("store");
        assert_eq!(records[0].detail.as_ref(), Some(&history), "sequence 5");
    }
}
