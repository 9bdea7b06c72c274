//! Sagas through the processor over one in-memory table: each step's effect once,
//! across retries, crashes and lost answers, and the compensations of a failed saga
//! in reverse, each once, before its one `FAILED` end.

use super::super::{Processor, ProcessorConfig};
use crate::messages::{DeadLetter, ErrorCode, JobStatus, Notification, Stage};
use crate::ports::OutgoingMessage;
use crate::retry::RetryPolicy;
use crate::store::saga::{EffectRecord, Phase, Sagas};
use crate::store::{fingerprint, MemoryStore, OperatorStore, Reopen};
use crate::telemetry::Instruments;
use crate::testing::{MemoryQueue, MemoryTopic, SdkRetry};
use aws_lambda_events::sqs::SqsEvent;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Duration;

type SagaProcessor<S> = Processor<MemoryQueue, MemoryTopic, S>;

fn processor<S>(store: S) -> SagaProcessor<S> {
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

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000 + secs, 0).expect("valid")
}

const STEPS: [&str; 3] = ["create_account", "create_workspace", "send_welcome"];

/// A saga of [`STEPS`] asking for `fault`.
fn saga(fault: Option<Value>) -> Value {
    let steps: Vec<Value> = STEPS.iter().map(|a| json!({"action": a})).collect();
    let mut d = json!({"job_type": "saga", "message": {"user_id": "42", "steps": steps}});
    if let Some(f) = fault {
        d["fault"] = f;
    }
    d
}

fn body(id: &str, attempt: u32, detail: &Value) -> String {
    json!({"job_id": id, "job_type": "saga", "status": "NEW",
        "received_at": "2026-11-22T10:00:00Z", "attempt": attempt, "errors": [],
        "job": detail})
    .to_string()
}

/// One delivery of `body` as message `message_id`, its `receive_count`th.
fn delivery(message_id: &str, body: &str, receive_count: u32) -> SqsEvent {
    serde_json::from_value(json!({"Records": [{
        "messageId": message_id, "receiptHandle": format!("rh-{message_id}-{receive_count}"),
        "body": body, "attributes": {"ApproximateReceiveCount": receive_count.to_string()},
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:jobs-todo"}]}))
    .expect("event")
}

/// Hands `body` to the processor at `now` (deadline 900 s on), then every retry it
/// sends back, as SQS would; the number of records that stayed in SQS.
async fn through<S: crate::store::JobStore + Sagas>(
    p: &SagaProcessor<S>,
    message_id: &str,
    body: &str,
    now: i64,
) -> usize {
    let mut stayed = 0;
    let mut next = vec![(message_id.to_owned(), body.to_owned())];
    let mut seen = p.jobs_todo.sent.lock().expect("lock").len();
    while let Some((id, body)) = next.pop() {
        let r = p
            .handle(delivery(&id, &body, 1), at(now + 900), at(now))
            .await;
        stayed += r.batch_item_failures.len();
        let sent: Vec<OutgoingMessage> = p.jobs_todo.sent.lock().expect("lock")[seen..].to_vec();
        seen += sent.len();
        next.extend(
            sent.into_iter()
                .enumerate()
                .map(|(i, m)| (format!("{id}-retry-{i}"), m.body)),
        );
    }
    stayed
}

fn effect(store: &MemoryStore, job: &str, run: u32, step: u32) -> Option<EffectRecord> {
    store.effect(&format!("effect#{job}#{run}#{step}"))
}

/// Every effect of `job`'s run `run`, by step: `(applied, compensated, calls)`.
fn effects(store: &MemoryStore, job: &str, run: u32) -> Vec<(bool, bool, u32)> {
    (0..STEPS.len() as u32)
        .map(|s| {
            effect(store, job, run, s).map_or((false, false, 0), |e| {
                (e.applied_ns.is_some(), e.compensated_ns.is_some(), e.calls)
            })
        })
        .collect()
}

fn ends(p: &SagaProcessor<impl Sized>) -> Vec<(String, JobStatus)> {
    p.topic
        .notifications()
        .into_iter()
        .map(|n: Notification| (n.job_id, n.status))
        .collect()
}

/// The letter's history as `(code, field, attempt)`.
fn history(dl: &DeadLetter) -> Vec<(String, Option<String>, u32)> {
    dl.errors
        .iter()
        .map(|e| (e.code.as_str().to_owned(), e.field.clone(), e.attempt))
        .collect()
}

fn step(i: u32) -> Option<String> {
    Some(format!("message.steps[{i}]"))
}

#[tokio::test]
async fn a_saga_runs_its_steps_in_order_each_once() {
    let p = processor(MemoryStore::default());
    assert_eq!(through(&p, "m-1", &body("s-1", 1, &saga(None)), 0).await, 0);
    assert_eq!(ends(&p), [("s-1".to_owned(), JobStatus::Completed)]);
    let note = &p.topic.notifications()[0];
    assert_eq!(note.result.as_ref().expect("result")["steps"], json!(STEPS));
    assert_eq!(effects(&p.store, "s-1", 1), [(true, false, 1); 3]);
    let times: Vec<i64> = (0..3)
        .map(|s| {
            effect(&p.store, "s-1", 1, s)
                .and_then(|e| e.applied_ns)
                .expect("applied")
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(p.dead_letters.dead_letters().is_empty());
}

#[tokio::test]
async fn a_step_that_passes_on_retry_resumes_there_without_repeating_the_others() {
    let p = processor(MemoryStore::default());
    let fault = json!({"step": 1, "fail_attempts": 2});
    through(&p, "m-1", &body("s-2", 1, &saga(Some(fault))), 0).await;
    assert_eq!(ends(&p), [("s-2".to_owned(), JobStatus::Completed)]);
    // Step 0 ran at attempt 1 only; step 1 took effect at attempt 3.
    assert_eq!(effects(&p.store, "s-2", 1), [(true, false, 1); 3]);
    let first = effect(&p.store, "s-2", 1, 0).expect("step 0");
    let second = effect(&p.store, "s-2", 1, 1).expect("step 1");
    assert_eq!((first.attempt, second.attempt), (1, 3));
    let errors = &p.topic.notifications()[0].errors;
    let codes: Vec<_> = errors
        .iter()
        .map(|e| (e.code.as_str(), e.field.clone(), e.attempt))
        .collect();
    assert_eq!(
        codes,
        [
            ("injected_fault", step(1), 1),
            ("injected_fault", step(1), 2)
        ]
    );
}

#[tokio::test]
async fn a_step_failing_for_good_undoes_the_steps_before_it_in_reverse_once() {
    for failing in 0..3u32 {
        let p = processor(MemoryStore::default());
        let job = format!("s-fail-{failing}");
        let fault = json!({"step": failing, "fail_always": true});
        through(&p, "m-1", &body(&job, 1, &saga(Some(fault))), 0).await;
        assert_eq!(
            ends(&p),
            [(job.clone(), JobStatus::Failed)],
            "step {failing}"
        );
        let letters = p.dead_letters.dead_letters();
        assert_eq!(letters.len(), 1, "step {failing}");
        // Every attempt's failure, then one entry per step undone, the last done first.
        let mut expected: Vec<_> = (1..=3)
            .map(|a| ("injected_fault".to_owned(), step(failing), a))
            .collect();
        expected.extend(
            (0..failing)
                .rev()
                .map(|s| ("compensated".to_owned(), step(s), 3)),
        );
        assert_eq!(history(&letters[0]), expected, "step {failing}");
        let note = &p.topic.notifications()[0];
        assert_eq!(note.errors.len(), letters[0].errors.len());
        // The steps before the failed one were applied once and undone once; the
        // failed one never took effect, and its tombstone keeps it so.
        for s in 0..3u32 {
            let e = effect(&p.store, &job, 1, s);
            match s.cmp(&failing) {
                std::cmp::Ordering::Less => {
                    let e = e.expect("applied");
                    assert_eq!((e.calls, e.undo_calls), (1, 1), "step {s}");
                    assert!(e.applied_ns.is_some() && e.compensated_ns.is_some());
                }
                std::cmp::Ordering::Equal => {
                    let e = e.expect("tombstone");
                    assert_eq!((e.applied_ns, e.calls), (None, 0), "step {s}");
                }
                std::cmp::Ordering::Greater => assert_eq!(e, None, "step {s}"),
            }
        }
        let undone: Vec<i64> = (0..failing)
            .rev()
            .map(|s| {
                effect(&p.store, &job, 1, s)
                    .and_then(|e| e.compensated_ns)
                    .expect("undone")
            })
            .collect();
        assert!(
            undone.windows(2).all(|w| w[0] <= w[1]),
            "reverse order: {undone:?}"
        );
    }
}

#[tokio::test]
async fn a_crash_between_a_step_and_its_record_repeats_the_request_not_the_effect() {
    let p = processor(MemoryStore::default());
    let fault = json!({"step": 1, "crash": true});
    let job = body("s-crash", 1, &saga(Some(fault)));
    // The first delivery dies after step 1 took effect: nothing ends.
    let r = p.handle(delivery("m-1", &job, 1), at(30), at(0)).await;
    assert_eq!(r.batch_item_failures.len(), 1);
    assert!(ends(&p).is_empty());
    let log = p
        .store
        .saga_log("s-crash")
        .await
        .expect("read")
        .expect("log");
    assert_eq!(log.log.done, 1, "step 1 took effect but was not recorded");
    assert_eq!(effect(&p.store, "s-crash", 1, 1).map(|e| e.calls), Some(1));
    // Its next delivery, once the dead one's lease ran out: step 1 is sent again
    // under its key, found done, and the saga goes on.
    let r = p.handle(delivery("m-1", &job, 2), at(90), at(60)).await;
    assert!(r.batch_item_failures.is_empty());
    assert_eq!(ends(&p), [("s-crash".to_owned(), JobStatus::Completed)]);
    let calls: Vec<u32> = (0..3)
        .map(|s| effect(&p.store, "s-crash", 1, s).expect("effect").calls)
        .collect();
    assert_eq!(calls, [1, 2, 1]);
    assert!(
        (0..3).all(|s| effect(&p.store, "s-crash", 1, s).is_some_and(|e| e.applied_ns.is_some()))
    );
}

#[tokio::test]
async fn lost_answers_sent_again_change_nothing() {
    // (the call whose answer is lost, the step failing for good, the requests each
    // step's key got: the lost one's twice)
    let cases = [
        ("UpdateItem apply", 2, [2, 1, 0]),
        ("PutItem saga", 2, [1, 1, 0]),
        // The first save is the one that starts the compensations.
        ("PutItem saga", 0, [0, 0, 0]),
        ("UpdateItem compensate", 2, [1, 1, 0]),
    ];
    for (op, failing, calls) in cases {
        let p = processor(SdkRetry {
            inner: MemoryStore::default(),
        });
        p.store.inner.faults.only(op);
        p.store.inner.faults.lose_answers(1);
        let fault = json!({"step": failing, "fail_always": true});
        let job = format!("s-lost-{}-{failing}", op.len());
        assert_eq!(
            through(&p, "m-1", &body(&job, 1, &saga(Some(fault))), 0).await,
            0,
            "{op}"
        );
        assert_eq!(ends(&p), [(job.clone(), JobStatus::Failed)], "{op}");
        let letter = &p.dead_letters.dead_letters()[0];
        let undone: Vec<_> = history(letter)
            .into_iter()
            .filter(|e| e.0 == "compensated")
            .collect();
        let entry = |s| ("compensated".to_owned(), step(s), 3);
        let expected: Vec<_> = (0..failing).rev().map(entry).collect();
        assert_eq!(undone, expected, "{op} at {failing}");
        // Applied and undone once each, however often its key was asked.
        let found = effects(&p.store.inner, &job, 1);
        let flags: Vec<_> = found.iter().map(|(a, u, _)| (*a, *u)).collect();
        let want: Vec<_> = (0..3).map(|s| (s < failing, s <= failing)).collect();
        assert_eq!(flags, want, "{op} at {failing}");
        let asked: Vec<u32> = found.iter().map(|(_, _, c)| *c).collect();
        assert_eq!(asked, calls, "{op} at {failing}");
        let undo_calls: Vec<u32> = (0..=failing)
            .map(|s| effect(&p.store.inner, &job, 1, s).map_or(0, |e| e.undo_calls))
            .collect();
        let resent = usize::from(op == "UpdateItem compensate");
        let mut want_undo = vec![1; failing as usize + 1];
        if resent == 1 {
            // The first compensation sent is the failed step's own.
            want_undo[failing as usize] = 2;
        }
        assert_eq!(undo_calls, want_undo, "{op} at {failing}");
    }
}

#[tokio::test]
async fn an_older_attempt_back_after_a_later_one_wrote_the_log_is_dropped() {
    let p = processor(MemoryStore::default());
    p.store.faults.only("UpdateItem compensate");
    p.store.faults.refuse_calls(1);
    let fault = json!({"step": 1, "fail_always": true});
    let detail = saga(Some(fault));
    // Attempt 3 began compensating, then gave the job back.
    through(&p, "m-1", &body("s-old", 1, &detail), 0).await;
    let log = p.store.saga_log("s-old").await.expect("read").expect("log");
    assert_eq!((log.log.phase, log.log.attempt), (Phase::Compensating, 3));
    // Attempt 2's message, sent again by SQS, claims the released job: dropped.
    let old = body("s-old", 2, &detail);
    let r = p.handle(delivery("m-old", &old, 2), at(900), at(20)).await;
    assert!(r.batch_item_failures.is_empty(), "dropped, not kept");
    assert!(ends(&p).is_empty());
    // Attempt 3's own delivery ends the job, at attempt 3.
    let last = p
        .jobs_todo
        .sent
        .lock()
        .expect("lock")
        .last()
        .expect("attempt 3")
        .body
        .clone();
    p.handle(delivery("m-1-retry-0-retry-0", &last, 2), at(900), at(30))
        .await;
    assert_eq!(ends(&p), [("s-old".to_owned(), JobStatus::Failed)]);
    let letter = &p.dead_letters.dead_letters()[0];
    assert_eq!(letter.attempts, 3);
    assert_eq!(
        history(letter),
        [
            ("injected_fault".into(), step(1), 1),
            ("injected_fault".into(), step(1), 2),
            ("injected_fault".into(), step(1), 3),
            ("compensated".into(), step(0), 3)
        ]
    );
}

#[tokio::test]
async fn a_compensation_refused_leaves_the_record_to_resume_and_end_once() {
    let p = processor(MemoryStore::default());
    p.store.faults.only("UpdateItem compensate");
    p.store.faults.refuse_calls(1);
    let fault = json!({"step": 2, "fail_always": true});
    let stayed = through(&p, "m-1", &body("s-refused", 1, &saga(Some(fault))), 0).await;
    assert_eq!(stayed, 1, "the last attempt stays in SQS");
    assert!(ends(&p).is_empty());
    let log = p
        .store
        .saga_log("s-refused")
        .await
        .expect("read")
        .expect("log");
    assert_eq!((log.log.phase, log.log.undone), (Phase::Compensating, 0));
    // Its next delivery resumes the compensations, never the steps.
    let last = p
        .jobs_todo
        .sent
        .lock()
        .expect("lock")
        .last()
        .expect("attempt 3")
        .body
        .clone();
    let r = p
        .handle(delivery("m-1-retry-0-retry-0", &last, 2), at(900), at(10))
        .await;
    assert!(r.batch_item_failures.is_empty());
    assert_eq!(ends(&p), [("s-refused".to_owned(), JobStatus::Failed)]);
    let letter = &p.dead_letters.dead_letters()[0];
    let mut expected: Vec<_> = (1..=3)
        .map(|a| ("injected_fault".to_owned(), step(2), a))
        .collect();
    expected.extend([
        ("compensated".into(), step(1), 3),
        ("compensated".into(), step(0), 3),
    ]);
    assert_eq!(history(letter), expected);
    let undo_calls: Vec<u32> = (0..2)
        .map(|s| {
            effect(&p.store, "s-refused", 1, s)
                .expect("effect")
                .undo_calls
        })
        .collect();
    assert_eq!(undo_calls, [1, 1], "the refused request took no effect");
}

#[tokio::test]
async fn a_redriven_saga_runs_again_under_new_keys() {
    let p = processor(MemoryStore::default());
    let fault = json!({"step": 1, "fail_attempts": 3});
    let detail = saga(Some(fault));
    through(&p, "m-1", &body("s-again", 1, &detail), 0).await;
    let letter = p.dead_letters.dead_letters().remove(0);
    assert_eq!(letter.status, JobStatus::Failed);
    // The operator's redrive: reopen the end, send attempt 4.
    let print = fingerprint(&detail);
    let reopen = Reopen {
        job_id: "s-again",
        stage: Stage::Processor,
        fingerprint: &print,
        legacy_fingerprint: None,
        status: JobStatus::Failed,
        attempt: 3,
        last_error: letter.errors.last(),
        below: 3,
        by: "dlq-1",
    };
    p.store.reopen(&reopen, at(1000)).await.expect("reopened");
    let crate::redrive::Redrive::JobsTodo(again) = crate::redrive::plan(&letter, at(1000)) else {
        panic!("a saga's letter goes back to jobs-todo");
    };
    assert_eq!(again.attempt, 4);
    let again = serde_json::to_string(&again).expect("json");
    through(&p, "m-4", &again, 1000).await;
    assert_eq!(
        ends(&p),
        [
            ("s-again".to_owned(), JobStatus::Failed),
            ("s-again".to_owned(), JobStatus::Completed)
        ]
    );
    // Run 1 stays undone; run 2 took effect once.
    assert_eq!(
        effects(&p.store, "s-again", 1),
        [(true, true, 1), (false, true, 0), (false, false, 0)]
    );
    assert_eq!(effects(&p.store, "s-again", 2), [(true, false, 1); 3]);
    let carried = &p.topic.notifications()[1].errors;
    assert!(
        carried.iter().any(|e| e.code == ErrorCode::Compensated),
        "the history it came back with"
    );
}

#[tokio::test]
async fn a_saga_whose_end_was_not_recorded_ends_once_without_asking_its_steps_again() {
    let p = processor(MemoryStore::default());
    // The end's record is refused once: every step done, the job not ended.
    p.store.faults.only("UpdateItem");
    p.store.faults.refuse_calls(1);
    let job = body("s-end", 1, &saga(None));
    let r = p.handle(delivery("m-1", &job, 1), at(900), at(0)).await;
    assert_eq!(r.batch_item_failures.len(), 1, "stays in SQS");
    assert!(ends(&p).is_empty());
    // Its next delivery finds every step recorded and ends the job.
    let r = p.handle(delivery("m-1", &job, 2), at(1900), at(1000)).await;
    assert!(r.batch_item_failures.is_empty());
    assert_eq!(ends(&p), [("s-end".to_owned(), JobStatus::Completed)]);
    assert_eq!(effects(&p.store, "s-end", 1), [(true, false, 1); 3]);
}

#[tokio::test]
async fn a_saga_fits_in_the_budget_a_short_function_timeout_leaves() {
    // The crash test's stack: a 30 s function, 21 s kept back for the ending.
    let mut p = processor(MemoryStore::default());
    p.config.deadline_margin = Duration::from_secs(21);
    let r = p
        .handle(
            delivery("m-1", &body("s-short", 1, &saga(None)), 1),
            at(30),
            at(0),
        )
        .await;
    assert!(r.batch_item_failures.is_empty());
    assert_eq!(ends(&p), [("s-short".to_owned(), JobStatus::Completed)]);
    // With less than a call's share left the saga waits for its next delivery instead.
    let mut p = processor(MemoryStore::default());
    p.config.deadline_margin = Duration::from_secs(21);
    let r = p
        .handle(
            delivery("m-1", &body("s-tight", 1, &saga(None)), 1),
            at(23),
            at(0),
        )
        .await;
    assert_eq!(r.batch_item_failures.len(), 1, "stays in SQS");
    assert!(ends(&p).is_empty() && effect(&p.store, "s-tight", 1, 0).is_none());
}

#[tokio::test]
async fn a_step_whose_key_was_compensated_first_never_takes_effect_and_the_saga_fails_once() {
    // A compensation's tombstone already stands on step 1's key (a compensation that
    // overtook the request it undoes): the request is refused, not retried, and the
    // saga undoes step 0 and ends FAILED once, saying why.
    let p = processor(MemoryStore::default());
    let job = "s-refused";
    let step_1 = crate::store::saga::Effect {
        job_id: job,
        run: 1,
        step: 1,
        action: "create_workspace",
        attempt: 1,
    };
    p.store
        .compensate(&step_1, "close_workspace", at(0))
        .await
        .expect("tombstone");
    let stayed = through(&p, "m-1", &body(job, 1, &saga(None)), 1).await;
    assert_eq!(stayed, 0);
    assert_eq!(ends(&p), [(job.to_owned(), JobStatus::Failed)]);
    let letters = p.dead_letters.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        history(&letters[0]),
        [
            ("compensated".to_owned(), step(1), 1),
            ("compensated".to_owned(), step(0), 1)
        ],
        "the refusal, then step 0 undone; no retry"
    );
    assert_eq!(
        effects(&p.store, job, 1),
        [(true, true, 1), (false, true, 0), (false, false, 0)],
        "step 0 applied and undone once; step 1 never applied; step 2 never asked"
    );
}
