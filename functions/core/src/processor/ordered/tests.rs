//! A FIFO queue modelled as SQS and MiniStack run one (a group in flight is held
//! back; a batch takes up to ten records of several groups in send order; records not
//! reported as failures are deleted), driving the processor, with a store that
//! checks, at every claim, that no job of the same key is running and every earlier
//! one has ended.

use super::super::*;
use crate::messages::{JobStatus, Notification, Stage};
use crate::ports::{PortError, Receipt};
use crate::store::{
    Claim, ClaimOutcome, Finish, Forestalled, JobState, MemoryStore, Progress, Release, Stop,
};
use crate::testing::{MemoryQueue, MemoryTopic};
use crate::Timestamp;
use async_trait::async_trait;
use chrono::TimeDelta;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// The store, watching per key what runs: a job's key is the part of its id before `#`.
#[derive(Default)]
struct Watch {
    inner: MemoryStore,
    /// The ids of each key's jobs, in send order.
    order: HashMap<String, Vec<String>>,
    running: Mutex<HashSet<String>>,
    ended: Mutex<HashSet<String>>,
    violations: Mutex<Vec<String>>,
}

fn key_of(job_id: &str) -> &str {
    job_id.split('#').next().unwrap_or(job_id)
}

impl Watch {
    fn claimed(&self, job_id: &str) {
        let key = key_of(job_id);
        let running = self.running.lock().expect("lock");
        let ended = self.ended.lock().expect("lock");
        let mut violations = self.violations.lock().expect("lock");
        if let Some(other) = running.iter().find(|r| key_of(r) == key && *r != job_id) {
            violations.push(format!("{job_id} started while {other} runs"));
        }
        let earlier = self.order[key].iter().take_while(|id| *id != job_id);
        for before in earlier.filter(|id| !ended.contains(*id)) {
            violations.push(format!("{job_id} started before {before} ended"));
        }
        drop((running, ended, violations));
        self.running.lock().expect("lock").insert(job_id.to_owned());
    }
}

#[async_trait]
impl JobStore for Watch {
    async fn claim(&self, claim: &Claim<'_>, now: Timestamp) -> Result<ClaimOutcome, PortError> {
        let answer = self.inner.claim(claim, now).await;
        if matches!(answer, Ok(ClaimOutcome::Claimed)) {
            self.claimed(claim.job_id);
        }
        answer
    }

    async fn finish(&self, finish: &Finish) -> Result<(), PortError> {
        let done = self.inner.finish(finish).await;
        if done.is_ok() {
            self.running.lock().expect("lock").remove(&finish.job_id);
            if matches!(finish.progress, Progress::Done(_)) {
                self.ended
                    .lock()
                    .expect("lock")
                    .insert(finish.job_id.clone());
            }
        }
        done
    }

    async fn mark(&self, mark: &crate::store::Mark, now: Timestamp) -> Result<(), PortError> {
        self.inner.mark(mark, now).await
    }

    async fn release(&self, release: &Release<'_>, now: Timestamp) -> Result<(), PortError> {
        self.running.lock().expect("lock").remove(release.job_id);
        self.inner.release(release, now).await
    }

    async fn stop(&self, end: &Stop<'_>) -> Result<Forestalled, PortError> {
        self.inner.stop(end).await
    }

    async fn get(&self, job_id: &str) -> Result<Vec<JobState>, PortError> {
        self.inner.get(job_id).await
    }
}

crate::delegate_sagas!([] Watch, inner);

type Ordered = Processor<MemoryQueue, MemoryTopic, Watch>;

fn processor(store: Watch) -> Ordered {
    Processor {
        jobs_todo: MemoryQueue::default(),
        jobs_todo_fifo: MemoryQueue::fifo(),
        dead_letters: MemoryQueue::default(),
        topic: MemoryTopic::default(),
        store,
        config: ProcessorConfig {
            deadline_margin: Duration::from_secs(3),
            retry: RetryPolicy::default(),
            fault_injection: true,
            kinds: crate::kinds::Registry::builtin(),
        },
        telemetry: Instruments::default(),
    }
}

struct Message {
    id: String,
    group: String,
    body: String,
    seq: u64,
    receives: u32,
    visible_at: i64,
}

/// `jobs-todo.fifo`, on a clock of whole seconds.
#[derive(Default)]
struct Fifo {
    messages: Vec<Message>,
    clock: i64,
    /// Visibility changes already applied.
    applied: usize,
}

const VISIBILITY_TIMEOUT: i64 = 960;

impl Fifo {
    fn send(&mut self, group: &str, job_id: &str, detail: Value) {
        let body = json!({"job_id": job_id, "job_type": detail["job_type"], "status": "NEW",
            "received_at": "2026-11-22T10:00:00Z", "attempt": 1, "errors": [], "job": detail});
        let seq = self.messages.len() as u64 + 1;
        self.messages.push(Message {
            id: format!("m-{job_id}"),
            group: group.to_owned(),
            body: body.to_string(),
            seq,
            receives: 0,
            visible_at: 0,
        });
    }

    /// Up to ten visible records of groups with none in flight, in send order.
    fn receive(&mut self) -> Option<SqsEvent> {
        let now = self.clock;
        let in_flight: HashSet<String> = self
            .messages
            .iter()
            .filter(|m| m.visible_at > now && m.receives > 0)
            .map(|m| m.group.clone())
            .collect();
        let mut records = Vec::new();
        for m in self.messages.iter_mut() {
            if records.len() == 10 {
                break;
            }
            if m.visible_at > now || in_flight.contains(&m.group) {
                continue;
            }
            m.receives += 1;
            m.visible_at = now + VISIBILITY_TIMEOUT;
            records.push(json!({"messageId": m.id, "body": m.body,
                "receiptHandle": format!("rh-{}-{}", m.id, m.receives),
                "attributes": {"ApproximateReceiveCount": m.receives.to_string(),
                    "MessageGroupId": m.group, "SequenceNumber": m.seq.to_string()},
                "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:jobs-todo.fifo"}));
        }
        if records.is_empty() {
            return None;
        }
        Some(serde_json::from_value(json!({ "Records": records })).expect("event"))
    }

    /// Deletes what the batch did not report, then applies the visibility changes.
    fn settle(&mut self, batch: &SqsEvent, response: &SqsBatchResponse, queue: &MemoryQueue) {
        let failed: HashSet<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        let delivered: HashSet<&str> = batch
            .records
            .iter()
            .filter_map(|r| r.message_id.as_deref())
            .collect();
        self.messages
            .retain(|m| !delivered.contains(m.id.as_str()) || failed.contains(m.id.as_str()));
        let released: Vec<Receipt> = queue.released.lock().expect("lock")[self.applied..].to_vec();
        self.applied += released.len();
        for r in released {
            let found = self
                .messages
                .iter_mut()
                .find(|m| format!("rh-{}-{}", m.id, m.receives) == r.receipt_handle);
            if let Some(m) = found {
                m.visible_at = self.clock + i64::from(r.delay_seconds);
            }
        }
    }

    /// Runs the processor until the queue is empty or `limit` batches went by.
    async fn drain(&mut self, p: &Ordered, limit: usize) {
        for _ in 0..limit {
            let Some(batch) = self.receive() else {
                match self.messages.iter().map(|m| m.visible_at).min() {
                    Some(next) => {
                        self.clock = next.max(self.clock + 1);
                        continue;
                    }
                    None => return,
                }
            };
            let now = at(self.clock);
            let response = p
                .handle(batch.clone(), now + TimeDelta::seconds(900), now)
                .await;
            self.settle(&batch, &response, &p.jobs_todo_fifo);
        }
        panic!("the queue did not drain in {limit} batches");
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000 + secs, 0).expect("valid")
}

fn report(key: &str, fault: Option<Value>) -> Value {
    let mut d = json!({"job_type": "report_generation", "ordering_key": key,
        "message": {"report_name": "Sales", "filters": "region=US"}});
    if let Some(f) = fault {
        d["fault"] = f;
    }
    d
}

/// Five keys of four jobs each, sent interleaved; some fail once or twice, one for good.
fn twenty_jobs() -> (Fifo, Watch, Vec<(String, Option<Value>)>) {
    let mut fifo = Fifo::default();
    let mut store = Watch::default();
    let mut jobs = Vec::new();
    for n in 0..4 {
        for k in 0..5 {
            let key = format!("user-{k}");
            let job_id = format!("{key}#{n}");
            let fault = match (k + n) % 4 {
                1 if n % 2 == 0 => Some(json!({"fail_attempts": 1})),
                2 if k == 2 => Some(json!({"fail_attempts": 2})),
                _ if k == 4 && n == 1 => Some(json!({"fail_always": true})),
                _ => None,
            };
            fifo.send(&key, &job_id, report(&key, fault.clone()));
            store.order.entry(key).or_default().push(job_id.clone());
            jobs.push((job_id, fault));
        }
    }
    (fifo, store, jobs)
}

/// One job, `a#0` of key `a`, with `fault`, and the processor to run it.
fn one_job(fault: Value) -> (Fifo, Ordered) {
    let mut fifo = Fifo::default();
    let mut store = Watch::default();
    fifo.send("a", "a#0", report("a", Some(fault)));
    store.order.insert("a".into(), vec!["a#0".into()]);
    (fifo, processor(store))
}

fn notification<'a>(notes: &'a [Notification], job_id: &str) -> &'a Notification {
    let mine: Vec<_> = notes.iter().filter(|n| n.job_id == job_id).collect();
    assert_eq!(mine.len(), 1, "{job_id}: {mine:?}");
    mine[0]
}

#[tokio::test(start_paused = true)]
async fn each_keys_jobs_run_one_at_a_time_in_order_and_retry_in_place() {
    let (mut fifo, store, jobs) = twenty_jobs();
    let p = processor(store);
    fifo.drain(&p, 200).await;

    let violations = p.store.violations.lock().expect("lock").clone();
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(
        p.jobs_todo_fifo.sent.lock().expect("lock").is_empty()
            && p.jobs_todo.sent.lock().expect("lock").is_empty(),
        "a retry waits in place; nothing is sent again"
    );
    let notes = p.topic.notifications();
    let letters = p.dead_letters.dead_letters();
    for (job_id, fault) in &jobs {
        let n = notification(&notes, job_id);
        let fails = match fault {
            Some(f) if f["fail_always"] == true => 3,
            Some(f) => f["fail_attempts"].as_u64().expect("n") as u32,
            None => 0,
        };
        let history: Vec<(u32, &str)> = n
            .errors
            .iter()
            .map(|e| (e.attempt, e.code.as_str()))
            .collect();
        let expected: Vec<(u32, &str)> = (1..=fails).map(|a| (a, "injected_fault")).collect();
        assert_eq!(
            history, expected,
            "{job_id}: each attempt's error, in order"
        );
        if fails == 3 {
            assert_eq!((n.status, n.attempts), (JobStatus::Failed, 3), "{job_id}");
            let letter: Vec<_> = letters.iter().filter(|d| &d.job_id == job_id).collect();
            assert_eq!(letter.len(), 1, "{job_id}: one dead letter");
            assert_eq!(letter[0].errors.len(), 3, "{job_id}: the whole history");
        } else {
            assert_eq!(n.status, JobStatus::Completed, "{job_id}");
            assert_eq!(n.attempts, fails + 1, "{job_id}");
        }
    }
    assert_eq!(letters.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_holds_back_the_rest_of_its_group_but_not_other_groups() {
    let mut fifo = Fifo::default();
    let mut store = Watch::default();
    for (key, n, fault) in [
        ("a", 0, Some(json!({"fail_attempts": 1}))),
        ("a", 1, None),
        ("b", 0, None),
        ("a", 2, None),
    ] {
        let job_id = format!("{key}#{n}");
        fifo.send(key, &job_id, report(key, fault));
        store.order.entry(key.to_owned()).or_default().push(job_id);
    }
    let p = processor(store);
    let batch = fifo.receive().expect("a batch");
    let now = at(0);
    let response = p
        .handle(batch.clone(), now + TimeDelta::seconds(900), now)
        .await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(
        failed,
        ["m-a#0", "m-a#1", "m-a#2"],
        "the group stops at its first failure"
    );
    let released: Vec<(String, u32)> = p
        .jobs_todo_fifo
        .released
        .lock()
        .expect("lock")
        .iter()
        .map(|r| (r.receipt_handle.clone(), r.delay_seconds))
        .collect();
    let retry = released
        .iter()
        .find(|r| r.0 == "rh-m-a#0-1")
        .expect("the failed one");
    assert!(retry.1 <= 2, "waits the backoff, at most 2 s: {released:?}");
    for behind in ["rh-m-a#1-1", "rh-m-a#2-1"] {
        assert!(
            released.contains(&(behind.to_owned(), 0)),
            "{behind}: {released:?}"
        );
    }
    let notes = p.topic.notifications();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].job_id, "b#0", "another key is not held back");
    let state = p.store.get("a#0").await.expect("state");
    assert_eq!(
        (state[0].progress, state[0].attempt),
        (Progress::Retrying, 1)
    );

    fifo.settle(&batch, &response, &p.jobs_todo_fifo);
    fifo.drain(&p, 20).await;
    let violations = p.store.violations.lock().expect("lock").clone();
    assert!(violations.is_empty(), "{violations:#?}");
    let notes = p.topic.notifications();
    let ended: Vec<&str> = notes.iter().map(|n| n.job_id.as_str()).collect();
    assert_eq!(ended, ["b#0", "a#0", "a#1", "a#2"]);
    assert_eq!(notification(&notes, "a#0").attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_redelivery_after_the_hand_over_was_lost_runs_the_same_attempt_again() {
    let (mut fifo, p) = one_job(json!({"fail_attempts": 1}));
    p.store.inner.faults.only("UpdateItem");
    p.store.inner.faults.refuse_calls(1);
    fifo.drain(&p, 20).await;
    let notes = p.topic.notifications();
    let n = notification(&notes, "a#0");
    let history: Vec<u32> = n.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(
        (n.status, n.attempts, history),
        (JobStatus::Completed, 2, vec![1]),
        "attempt 1 ran twice (its hand-over was refused) and attempt 2 completed"
    );
}

#[test]
fn the_attempt_after_a_record_is_the_next_only_after_a_hand_over() {
    let state = |progress, attempt| JobState {
        job_id: "a".into(),
        stage: Stage::Processor,
        progress,
        fingerprint: String::new(),
        attempt,
        lease_until: at(0),
        holder: String::new(),
        token: String::new(),
        announced: false,
        letter_stored: false,
        detail: Some(
            json!({"errors": [{"stage": "processor", "code": "injected_fault",
            "message": "x", "attempt": attempt, "timestamp": "2026-11-22T10:00:00Z"}]}),
        ),
        updated_at: at(0),
        expires_at: at(0),
    };
    assert_eq!(super::attempt_after(&state(Progress::Retrying, 2)), 3);
    assert_eq!(super::attempt_after(&state(Progress::InProgress, 2)), 2);
    let done = state(Progress::Done(Some(JobStatus::Completed)), 2);
    assert_eq!(super::attempt_after(&done), 2);
    let history = super::history(&state(Progress::Retrying, 2)).expect("history");
    assert_eq!(history[0].attempt, 2);
}

#[tokio::test(start_paused = true)]
async fn a_stranded_record_redriven_to_the_standard_queue_resumes_at_its_attempt() {
    let (mut fifo, p) = one_job(json!({"fail_attempts": 2}));
    // Two failed attempts, waiting in place; then SQS strands the record.
    for _ in 0..2 {
        let batch = (0..60)
            .find_map(|_| {
                fifo.clock += 1;
                fifo.receive()
            })
            .expect("the record comes back within a minute");
        let now = at(fifo.clock);
        let response = p
            .handle(batch.clone(), now + TimeDelta::seconds(900), now)
            .await;
        fifo.settle(&batch, &response, &p.jobs_todo_fifo);
    }
    let state = p.store.get("a#0").await.expect("state");
    assert_eq!(
        (state[0].progress, state[0].attempt),
        (Progress::Retrying, 2)
    );
    let stranded = fifo.messages.pop().expect("still queued");
    // `dlq redrive` sends it to jobs-todo as it is: attempt 1 in its body.
    let record = json!({"messageId": "redriven", "receiptHandle": "rh-redriven", "body": stranded.body,
        "attributes": {"ApproximateReceiveCount": "1"},
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:jobs-todo"});
    let event: SqsEvent = serde_json::from_value(json!({ "Records": [record] })).expect("event");
    let now = at(fifo.clock + 10);
    let response = p.handle(event, now + TimeDelta::seconds(900), now).await;
    assert!(response.batch_item_failures.is_empty());
    let notes = p.topic.notifications();
    let n = notification(&notes, "a#0");
    let history: Vec<u32> = n.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(
        (n.status, n.attempts, history),
        (JobStatus::Completed, 3, vec![1, 2])
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_hand_over_at_attempt_two_keeps_the_history_of_attempt_one() {
    let (mut fifo, p) = one_job(json!({"fail_attempts": 2}));
    let batch = fifo.receive().expect("the first delivery");
    let response = p.handle(batch.clone(), at(900), at(0)).await;
    fifo.settle(&batch, &response, &p.jobs_todo_fifo);
    // Attempt 2's hand-over is refused; its claim (which carries attempt 1's error) is
    // given back, and the next delivery runs attempt 2 again.
    p.store.inner.faults.only("UpdateItem");
    p.store.inner.faults.refuse_calls(1);
    fifo.drain(&p, 20).await;
    let notes = p.topic.notifications();
    let n = notification(&notes, "a#0");
    let history: Vec<u32> = n.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(
        (n.status, n.attempts, history),
        (JobStatus::Completed, 3, vec![1, 2]),
        "attempt 1's error survives the claim that attempt 2's rerun took over"
    );
}
