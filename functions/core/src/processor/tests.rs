use super::*;
use crate::batching::Batching;
use crate::messages::{JobStatus, Stage};
use crate::ports::OutgoingMessage;
use crate::retry::SQS_MAX_DELAY;
use crate::store::MemoryStore;
use crate::store::{fingerprint, Claim, ClaimOutcome, Progress};
use crate::testing::{MemoryQueue, MemoryTopic};
use serde_json::json;
use serde_json::Value;
use std::sync::atomic::Ordering;

type TestProcessor = Processor<MemoryQueue, MemoryTopic, MemoryStore>;

fn batch() -> SqsEvent {
    serde_json::from_str(include_str!("../../fixtures/processor-batch.json")).expect("fixture")
}

fn processor(topic: MemoryTopic) -> TestProcessor {
    Processor {
        jobs_todo: MemoryQueue::default(),
        jobs_todo_fifo: MemoryQueue::fifo(),
        dead_letters: MemoryQueue::default(),
        topic,
        store: MemoryStore::default(),
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

/// An SQS event carrying the given `jobs-todo` messages.
fn event(messages: &[(String, String)]) -> SqsEvent {
    let records: Vec<_> = messages
        .iter()
        .map(|(id, body)| {
            json!({"messageId": id, "receiptHandle": format!("rh-{id}"), "body": body,
            "attributes": {"ApproximateReceiveCount": "1"},
            "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:jobs-todo"})
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).expect("event")
}

fn job(id: &str, attempt: u32, detail: Value) -> (String, String) {
    let body = json!({"job_id": id, "job_type": detail["job_type"], "status": "NEW",
        "received_at": "2026-11-22T10:00:00Z", "attempt": attempt, "errors": [],
        "job": detail});
    (format!("m-{id}-{attempt}"), body.to_string())
}

fn report(fault: Option<Value>) -> Value {
    let mut d = json!({"job_type": "report_generation",
        "message": {"report_name": "Sales", "filters": "region=US"}});
    if let Some(f) = fault {
        d["fault"] = f;
    }
    d
}

/// Feeds whatever the processor sent back to `jobs-todo` since `seen` to it again,
/// as SQS would once the delay passed; returns the delays asked for.
async fn drain_retries(p: &TestProcessor, mut seen: usize, now: i64) -> Vec<u32> {
    let mut delays = Vec::new();
    loop {
        let sent: Vec<OutgoingMessage> = p.jobs_todo.sent.lock().expect("lock")[seen..].to_vec();
        if sent.is_empty() {
            return delays;
        }
        seen += sent.len();
        delays.extend(sent.iter().map(|m| m.delay_seconds));
        let messages: Vec<_> = sent
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("retry-{seen}-{i}"), m.body.clone()))
            .collect();
        p.handle(event(&messages), at(now + 900), at(now)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn completes_fails_on_deadline_and_dead_letters_garbage() {
    // 60 s left: the 300 s migration cannot fit, the 2 s task can.
    let p = processor(MemoryTopic::default());
    let response = p.handle(batch(), at(60), at(0)).await;
    assert!(response.batch_item_failures.is_empty());

    let mut notes: Vec<_> = p
        .topic
        .notifications()
        .into_iter()
        .map(|n| (n.job_id, n.status))
        .collect();
    notes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        notes,
        [
            ("job-broken".to_owned(), JobStatus::Failed),
            ("job-long".to_owned(), JobStatus::Failed),
            ("job-report".to_owned(), JobStatus::Completed),
            ("job-short".to_owned(), JobStatus::Completed),
        ]
    );
    let dead = p.dead_letters.dead_letters();
    let long = dead
        .iter()
        .find(|d| d.job_id == "job-long")
        .expect("dead-lettered");
    assert_eq!(
        (long.last_error_code(), long.stage, long.errors.len()),
        ("deadline_exceeded", Stage::Processor, 1)
    );
    assert_eq!(
        long.job["message"]["timeout"], 300,
        "the original job travels unchanged"
    );
    assert!(p.jobs_todo.bodies().is_empty(), "a deadline is not retried");
    let broken = dead
        .iter()
        .find(|d| d.job_id == "job-broken")
        .expect("dead-lettered");
    assert_eq!(broken.last_error_code(), "invalid_message");
}

#[tokio::test(start_paused = true)]
async fn a_long_job_runs_when_the_deadline_allows() {
    let p = processor(MemoryTopic::default());
    let started = tokio::time::Instant::now();
    p.handle(batch(), at(900), at(0)).await;
    let long = p
        .topic
        .notifications()
        .into_iter()
        .find(|n| n.job_id == "job-long")
        .expect("announced");
    assert_eq!(long.status, JobStatus::Completed);
    assert_eq!(long.result.expect("result")["ran_for_secs"], 300);
    // Records run concurrently: the batch takes as long as its longest job.
    assert_eq!(started.elapsed().as_secs(), 300);
}

#[tokio::test(start_paused = true)]
async fn a_quick_job_is_announced_without_waiting_for_the_batch() {
    let p = processor(MemoryTopic::default());
    let handling = p.handle(batch(), at(900), at(0));
    tokio::pin!(handling);
    tokio::select! {
        _ = &mut handling => panic!("the 300 s job cannot be done yet"),
        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
    }
    let announced: Vec<_> = p
        .topic
        .notifications()
        .into_iter()
        .map(|n| n.job_id)
        .collect();
    assert!(
        announced.contains(&"job-report".to_owned()),
        "{announced:?}"
    );
    assert!(!announced.contains(&"job-long".to_owned()), "{announced:?}");
    handling.await;
}

#[tokio::test(start_paused = true)]
async fn an_unannounced_completion_is_announced_on_redelivery_without_running_again() {
    let p = processor(MemoryTopic::refusing("job-short"));
    let response = p.handle(batch(), at(60), at(0)).await;
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["msg-0002"]);

    p.topic.refuse.lock().expect("lock").clear();
    let started = tokio::time::Instant::now();
    let response = p.handle(batch(), at(60), at(1)).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "the 2 s job did not run again"
    );
    let short: Vec<_> = p
        .topic
        .notifications()
        .into_iter()
        .filter(|n| n.job_id == "job-short")
        .collect();
    assert_eq!(short.len(), 1);
    assert_eq!(short[0].result.as_ref().expect("result")["ran_for_secs"], 2);
}

#[tokio::test(start_paused = true)]
async fn a_repeated_delivery_is_executed_and_announced_once() {
    let p = processor(MemoryTopic::default());
    p.handle(batch(), at(60), at(0)).await;
    let once = p.topic.notifications().len();
    let dead_once = p.dead_letters.bodies().len();
    // The same messages again, and once more in one batch with themselves.
    let response = p.handle(batch(), at(60), at(1)).await;
    assert!(response.batch_item_failures.is_empty());
    let mut twice = batch();
    twice.records.extend(batch().records);
    p.handle(twice, at(60), at(2)).await;
    // job-broken is unreadable, but it still names its job: it ends once too.
    assert_eq!(
        p.topic.notifications().len(),
        once,
        "nothing announced again"
    );
    assert_eq!(
        p.dead_letters.bodies().len(),
        dead_once,
        "no second dead letter, not even for the unreadable message"
    );
}

/// One record of `body` under `message_id`, on its `receive`-th receive.
fn received(message_id: &str, body: &str, receive: u32) -> SqsEvent {
    let mut e = event(&[(message_id.to_owned(), body.to_owned())]);
    e.records[0]
        .attributes
        .insert("ApproximateReceiveCount".into(), receive.to_string());
    e
}

#[tokio::test]
async fn results_and_retries_holding_characters_sqs_refuses_go_out() {
    let p = processor(MemoryTopic::default());
    let odd = "A\u{fffe}B\u{ffff}";
    let welcome = json!({"job_type": "user_onboarding",
        "message": {"user_id": "1", "user_name": odd}});
    let mut flaky = report(Some(json!({"fail_always": true})));
    flaky["message"]["report_name"] = Value::from(odd);
    let first = p
        .handle(
            event(&[job("job-w", 1, welcome), job("job-f", 1, flaky.clone())]),
            at(60),
            at(0),
        )
        .await;
    assert!(
        first.batch_item_failures.is_empty(),
        "{:?}",
        first.batch_item_failures
    );
    drain_retries(&p, 0, 10).await;
    let mut notes: Vec<_> = p
        .topic
        .notifications()
        .into_iter()
        .map(|n| (n.job_id, n.status))
        .collect();
    notes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        notes,
        [
            ("job-f".to_owned(), JobStatus::Failed),
            ("job-w".to_owned(), JobStatus::Completed)
        ]
    );
    let dead = p.dead_letters.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].job, flaky, "the job travels unchanged");
    assert_eq!(dead[0].errors.len(), 3, "three attempts");
}

#[tokio::test]
async fn ten_large_results_are_published_in_batches_that_fit() {
    use crate::batching::Batching;
    use crate::guard::{GuardConfig, Guarded};
    let guard = GuardConfig {
        failure_threshold: 1,
        ..GuardConfig::default()
    };
    let p = Processor {
        jobs_todo: MemoryQueue::default(),
        jobs_todo_fifo: MemoryQueue::fifo(),
        dead_letters: MemoryQueue::default(),
        topic: Batching::new(Guarded::new(MemoryTopic::default(), "topic", guard)),
        store: MemoryStore::default(),
        config: ProcessorConfig {
            deadline_margin: Duration::from_secs(3),
            retry: RetryPolicy::default(),
            fault_injection: false,
            kinds: crate::kinds::Registry::builtin(),
        },
        telemetry: Instruments::default(),
    };
    // A 45 KB filter becomes a 65 KB result: ten of them are far over one batch call.
    let filters: Vec<String> = (0..5000).map(|i| format!("k{i:05}=v")).collect();
    let mut big = report(None);
    big["message"]["filters"] = Value::from(filters.join(","));
    let jobs: Vec<_> = (0..10)
        .map(|i| job(&format!("job-{i}"), 1, big.clone()))
        .collect();
    let response = p.handle(event(&jobs), at(60), at(0)).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "{} records failed",
        response.batch_item_failures.len()
    );
    assert_eq!(p.topic.inner().inner().notifications().len(), 10);
    assert!(!p.topic.inner().breaker().is_open());
}

#[tokio::test]
async fn an_oversized_or_unreadable_message_ends_once_however_often_it_comes() {
    let p = processor(MemoryTopic::default());
    // What an ingester that measured the detail as sent could forward: `1e15`s
    // written out in full make it larger than the processor reads.
    let mut detail = json!({"job_type": "user_onboarding",
        "message": {"user_id": "1", "user_name": "A"}});
    detail["samples"] =
        serde_json::from_str(&format!("[{}]", vec!["1e15"; 12_000].join(","))).expect("numbers");
    let oversized = job("job-big", 1, detail).1;
    assert!(oversized.len() > crate::messages::MAX_ENRICHED_BYTES);
    for receive in 1..=3 {
        for (id, body) in [("m-big", oversized.as_str()), ("m-junk", "not json")] {
            let response = p
                .handle(received(id, body, receive), at(60), at(i64::from(receive)))
                .await;
            assert!(response.batch_item_failures.is_empty());
        }
    }
    let mut ended: Vec<_> = p
        .topic
        .notifications()
        .into_iter()
        .map(|n| (n.job_id, n.status))
        .collect();
    ended.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        ended,
        [
            ("job-big".to_owned(), JobStatus::Failed),
            ("m-junk".to_owned(), JobStatus::Failed)
        ],
        "each ends once"
    );
    let dead = p.dead_letters.dead_letters();
    assert_eq!(dead.len(), 2, "one dead letter each");
    assert!(dead
        .iter()
        .all(|d| d.last_error_code() == "invalid_message"));
}

#[tokio::test(start_paused = true)]
async fn two_copies_in_one_batch_run_once_whatever_the_table_answers() {
    use crate::batching::Batching;
    let store = Batching::new(MemoryStore::default());
    store.inner().snapshot_batches.store(true, Ordering::SeqCst);
    store.inner().faults.slow_down(Duration::from_millis(300));
    let p = Processor {
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
    };
    let body = job("job-1", 1, report(None)).1;
    let bad = job("job-2", 1, report(Some(json!({"fail_always": true})))).1;
    let copies = [
        ("copy-1".to_owned(), body.clone()),
        ("copy-2".to_owned(), body),
        ("copy-3".to_owned(), bad.clone()),
        ("copy-4".to_owned(), bad),
    ];
    let response = p.handle(event(&copies), at(60), at(0)).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(p.topic.notifications().len(), 1, "job-1 announced once");
    assert_eq!(p.jobs_todo.bodies().len(), 1, "job-2 retried once");
}

#[tokio::test]
async fn concurrent_copies_of_one_job_run_once() {
    let p = processor(MemoryTopic::default());
    // Copies of one message have message ids of their own.
    let body = job("job-1", 1, report(None)).1;
    let copies: Vec<_> = (0..3)
        .map(|i| (format!("copy-{i}"), body.clone()))
        .collect();
    let response = p.handle(event(&copies), at(60), at(0)).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(p.topic.notifications().len(), 1);
}

#[tokio::test]
async fn a_flaky_job_completes_on_its_third_attempt_with_two_errors() {
    let p = processor(MemoryTopic::default());
    let flaky = job("job-f", 1, report(Some(json!({"fail_attempts": 2}))));
    p.handle(event(&[flaky]), at(60), at(0)).await;
    assert!(p.topic.notifications().is_empty(), "no end state yet");
    let delays = drain_retries(&p, 0, 10).await;
    assert_eq!(delays.len(), 2);
    let policy = RetryPolicy::default();
    for (i, d) in delays.iter().enumerate() {
        let ceiling = policy.ceiling(i as u32 + 1).as_secs() as u32;
        assert!((1..=ceiling).contains(d), "delay {d} of retry {i}");
    }
    let notes = p.topic.notifications();
    assert_eq!(notes.len(), 1);
    assert_eq!(
        (notes[0].status, notes[0].attempts, notes[0].errors.len()),
        (JobStatus::Completed, 3, 2)
    );
    assert_eq!(
        notes[0]
            .errors
            .iter()
            .map(|e| (e.code.as_str(), e.attempt))
            .collect::<Vec<_>>(),
        [("injected_fault", 1), ("injected_fault", 2)]
    );
}

#[tokio::test]
async fn a_retry_that_could_not_be_queued_runs_when_its_record_comes_back() {
    let mut p = processor(MemoryTopic::default());
    p.jobs_todo = MemoryQueue::refusing("\"job-f\"");
    let flaky = job("job-f", 1, report(Some(json!({"fail_attempts": 1}))));
    let first = p
        .handle(event(std::slice::from_ref(&flaky)), at(600), at(0))
        .await;
    assert_eq!(first.batch_item_failures.len(), 1, "stays in SQS");
    p.jobs_todo.refuse.lock().expect("lock").clear();
    // SQS offers the record again 15 s later, long before the claim's lease ends.
    let again = p.handle(event(&[flaky]), at(600), at(15)).await;
    assert!(again.batch_item_failures.is_empty());
    drain_retries(&p, 0, 30).await;
    let notes = p.topic.notifications();
    assert_eq!(notes.len(), 1);
    assert_eq!(
        (notes[0].status, notes[0].attempts),
        (JobStatus::Completed, 2)
    );
}

#[tokio::test]
async fn a_job_failing_always_ends_failed_after_the_last_attempt() {
    let mut p = processor(MemoryTopic::default());
    p.config.retry = RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_secs(100),
        max_delay: SQS_MAX_DELAY,
    };
    let bad = job("job-b", 1, report(Some(json!({"fail_always": true}))));
    p.handle(event(&[bad]), at(60), at(0)).await;
    let delays = drain_retries(&p, 0, 10).await;
    assert_eq!(delays.len(), 3, "attempts 2, 3 and 4");
    // Ceilings of 100, 200 and 400 s: each delay lies within its own.
    for (i, d) in delays.iter().enumerate() {
        assert!(*d <= 100 << i, "{delays:?}");
    }
    let dead = p.dead_letters.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].status, dead[0].attempts, dead[0].errors.len()),
        (JobStatus::Failed, 4, 4)
    );
    assert_eq!(p.topic.notifications().len(), 1);
}

#[tokio::test]
async fn without_fault_injection_a_fault_request_is_ignored() {
    let mut p = processor(MemoryTopic::default());
    p.config.fault_injection = false;
    let bad = job("job-b", 1, report(Some(json!({"fail_always": true}))));
    p.handle(event(&[bad]), at(60), at(0)).await;
    assert_eq!(p.topic.notifications()[0].status, JobStatus::Completed);
}

#[tokio::test]
async fn a_reused_id_with_other_content_is_dead_lettered_with_a_clear_error() {
    let p = processor(MemoryTopic::default());
    p.handle(event(&[job("job-1", 1, report(None))]), at(60), at(0))
        .await;
    let other =
        json!({"job_type": "user_onboarding", "message": {"user_id": "7", "user_name": "Ann"}});
    p.handle(event(&[job("job-1", 1, other)]), at(60), at(1))
        .await;
    let dead = p.dead_letters.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error_code(), "job_id_reused");
    assert!(dead[0].errors[0].message.contains("different content"));
    assert_eq!(dead[0].job["job_type"], "user_onboarding");
}

#[tokio::test]
async fn a_retry_racing_its_hand_over_is_deferred_not_dropped() {
    let p = processor(MemoryTopic::default());
    let fp = fingerprint(&report(None));
    let claim = Claim {
        job_id: "job-1",
        stage: Stage::Processor,
        fingerprint: &fp,
        legacy_fingerprint: None,
        attempt: 1,
        lease_until: at(600),
        holder: "m0",
        token: "",
        history: None,
    };
    p.store.claim(&claim, at(0)).await.expect("store");
    let response = p
        .handle(event(&[job("job-1", 2, report(None))]), at(60), at(1))
        .await;
    assert!(response.batch_item_failures.is_empty());
    let sent = p.jobs_todo.sent.lock().expect("lock").clone();
    assert_eq!(sent.len(), 1, "sent back to look again");
    assert_eq!(sent[0].delay_seconds, HAND_OVER_WAIT.as_secs() as u32);
    assert!(p.topic.notifications().is_empty());
}

#[tokio::test]
async fn an_unreachable_state_table_leaves_the_record_in_sqs() {
    let p = processor(MemoryTopic::default());
    p.store.down.store(true, Ordering::SeqCst);
    let response = p
        .handle(event(&[job("job-1", 1, report(None))]), at(60), at(0))
        .await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert!(p.topic.notifications().is_empty());
    assert!(p.dead_letters.bodies().is_empty());
    // It comes back in 15 s, not after the queue's 90-minute visibility timeout.
    let released = p.jobs_todo.released.lock().expect("lock").clone();
    assert_eq!(
        released,
        [crate::ports::Receipt {
            receipt_handle: "rh-m-job-1-1".into(),
            delay_seconds: 15
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn a_record_that_failed_at_once_goes_back_before_the_batch_s_long_job_ends() {
    let p = processor(MemoryTopic::default());
    // An earlier delivery of m-job-h-1 still holds job-h: that record fails at once.
    let fp = fingerprint(&report(None));
    let held = Claim {
        job_id: "job-h",
        stage: Stage::Processor,
        fingerprint: &fp,
        legacy_fingerprint: None,
        attempt: 1,
        lease_until: at(600),
        holder: "m-job-h-1",
        token: "",
        history: None,
    };
    p.store.claim(&held, at(0)).await.expect("store");
    let long = json!({"job_type": "long_running_job",
        "message": {"task_name": "t", "timeout": 300}});
    let records = [job("job-h", 1, report(None)), job("job-long", 1, long)];
    let handling = p.handle(event(&records), at(900), at(0));
    tokio::pin!(handling);
    tokio::select! {
        _ = &mut handling => panic!("the 300 s job cannot be done yet"),
        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
    }
    let released = p.jobs_todo.released.lock().expect("lock").clone();
    assert_eq!(
        released,
        [crate::ports::Receipt {
            receipt_handle: "rh-m-job-h-1".into(),
            delay_seconds: 15
        }],
        "released while the long job still runs"
    );
    let response = handling.await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(p.jobs_todo.released.lock().expect("lock").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_job_sized_to_its_budget_leaves_time_for_its_ending_after_a_slow_claim() {
    // Every call may take the 2 s call timeout; the margin holds one ending of them.
    let call = Duration::from_secs(2);
    let slow = || {
        let q = MemoryQueue::default();
        q.faults.slow_down(call);
        q
    };
    let topic = MemoryTopic::default();
    topic.faults.slow_down(call);
    let store = MemoryStore::default();
    store.faults.slow_down(call);
    let p = Processor {
        jobs_todo: slow(),
        jobs_todo_fifo: slow(),
        dead_letters: slow(),
        topic,
        store,
        config: ProcessorConfig {
            deadline_margin: ending_reserve(call),
            retry: RetryPolicy::default(),
            fault_injection: true,
            kinds: crate::kinds::Registry::builtin(),
        },
        telemetry: Instruments::default(),
    };
    // 60 s left; the job would take everything but the margin, from the start.
    let fits = 60 - ending_reserve(call).as_secs();
    let long = json!({"job_type": "long_running_job",
        "message": {"task_name": "t", "timeout": fits}});
    let started = tokio::time::Instant::now();
    let response = p
        .handle(event(&[job("job-l", 1, long)]), at(60), at(0))
        .await;
    let took = started.elapsed();
    assert!(response.batch_item_failures.is_empty());
    let notes = p.topic.notifications();
    assert_eq!(notes.len(), 1, "announced once");
    assert!(
        took <= Duration::from_secs(60),
        "the ending ran past the deadline: {took:?}, {:?}",
        notes[0].status
    );
    assert_eq!(notes[0].status, JobStatus::Failed);
    assert_eq!(notes[0].errors[0].code, "deadline_exceeded");
}

#[tokio::test]
async fn a_job_whose_envelope_disagrees_is_not_executed() {
    let body = serde_json::json!({"job_id":"j","job_type":"data_cleanup","status":"NEW",
        "received_at":"2026-11-22T10:00:00Z","attempt":2,
        "job":{"job_type":"user_onboarding","message":{"user_id":"1","user_name":"A"}}});
    let p = processor(MemoryTopic::default());
    p.handle(event(&[("m".into(), body.to_string())]), at(60), at(0))
        .await;
    let dead = p.dead_letters.dead_letters();
    assert_eq!(
        (dead[0].last_error_code(), dead[0].attempts),
        ("invalid_message", 2)
    );
}

/// The processor over another store, for the claim-token tests.
fn processor_over<S: JobStore>(store: S) -> Processor<MemoryQueue, MemoryTopic, S> {
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

#[tokio::test]
async fn a_lost_claim_answer_retried_with_its_own_token_runs_the_job_once() {
    // The claim took effect, its answer was lost, and the SDK sent it again: the
    // retry finds the record holding its own token and goes ahead.
    let p = processor_over(crate::testing::SdkRetry {
        inner: MemoryStore::default(),
    });
    p.store.inner.faults.lose_answers(1);
    let delivery = event(&[job("job-1", 1, report(None))]);
    let response = p.handle(delivery.clone(), at(60), at(0)).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "claimed, not held: {:?}",
        response.batch_item_failures
    );
    let notes = p.topic.notifications();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].status, JobStatus::Completed);
    // Any later delivery finds the job ended: it runs and ends once.
    let again = p.handle(delivery, at(60), at(1)).await;
    assert!(again.batch_item_failures.is_empty());
    assert_eq!(p.topic.notifications().len(), 1);
    assert!(p.dead_letters.bodies().is_empty());
    let record = &p.store.get("job-1").await.expect("store")[0];
    assert_eq!(
        (record.progress, record.announced),
        (Progress::Done(Some(JobStatus::Completed)), true)
    );
}

#[tokio::test]
async fn another_delivery_of_a_running_claim_is_held_even_when_its_answer_is_lost() {
    let p = processor(MemoryTopic::default());
    // The first delivery of m-job-1-1 (its own token) holds the job and runs it.
    let fp = fingerprint(&report(None));
    let first = Claim {
        job_id: "job-1",
        stage: Stage::Processor,
        fingerprint: &fp,
        legacy_fingerprint: None,
        attempt: 1,
        lease_until: at(600),
        holder: "m-job-1-1",
        token: "first-delivery",
        history: None,
    };
    assert_eq!(
        p.store.claim(&first, at(0)).await,
        Ok(ClaimOutcome::Claimed)
    );
    // SQS hands the same message to a second invocation at once.
    let copy = event(&[job("job-1", 1, report(None))]);
    let response = p.handle(copy.clone(), at(60), at(1)).await;
    assert_eq!(response.batch_item_failures.len(), 1, "held, kept in SQS");
    // Once more, its claim's answer lost: its give-back must not free the first's claim.
    p.store.faults.lose_answers(1);
    let response = p.handle(copy.clone(), at(60), at(2)).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    let response = p.handle(copy, at(60), at(3)).await;
    assert_eq!(
        response.batch_item_failures.len(),
        1,
        "still held by the first delivery"
    );
    assert!(p.topic.notifications().is_empty(), "not run");
    let record = &p.store.get("job-1").await.expect("store")[0];
    assert_eq!(
        (record.lease_until, record.token.as_str()),
        (at(600), "first-delivery")
    );
}

#[tokio::test]
async fn a_lost_claim_answer_is_given_back_so_the_next_delivery_runs_at_once() {
    let p = processor(MemoryTopic::default());
    // The claim took effect but its answer was lost: the record goes back to SQS.
    p.store.faults.lose_answers(1);
    let delivery = event(&[job("job-1", 1, report(None))]);
    let response = p.handle(delivery.clone(), at(600), at(0)).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert!(p.topic.notifications().is_empty());
    // Its next delivery, 15 s later and well inside the lease, takes the job.
    let response = p.handle(delivery, at(600), at(15)).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "taken at once, not after the lease: {:?}",
        response.batch_item_failures
    );
    let notes = p.topic.notifications();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].status, JobStatus::Completed);
}

/// The processor as the functions wire it: both queues batched, so the dead letters
/// and the retries of the records that end together go out in one call each.
fn batched_processor() -> Processor<Batching<MemoryQueue>, MemoryTopic, MemoryStore> {
    let p = processor(MemoryTopic::default());
    Processor {
        jobs_todo: Batching::new(MemoryQueue::default()),
        jobs_todo_fifo: Batching::new(MemoryQueue::fifo()),
        dead_letters: Batching::new(MemoryQueue::default()),
        topic: p.topic,
        store: p.store,
        config: p.config,
        telemetry: p.telemetry,
    }
}

/// A gathered dead-letter call whose answer is lost keeps every record it carried in
/// SQS, unannounced; a gathered retry call refused whole keeps each of its records. On
/// the next delivery each failed job is announced once (its letter stored again:
/// design window 6), each retry is queued, and the completed job is not touched again.
#[tokio::test]
async fn batched_queues_that_fail_keep_each_of_their_records_and_end_each_job_once() {
    let p = batched_processor();
    let failing: Vec<_> = (1..=3)
        .map(|i| {
            job(
                &format!("job-f{i}"),
                3,
                report(Some(json!({"fail_always": true}))),
            )
        })
        .collect();
    let flaky: Vec<_> = (1..=2)
        .map(|i| {
            job(
                &format!("job-r{i}"),
                1,
                report(Some(json!({"fail_attempts": 1}))),
            )
        })
        .collect();
    let done = job("job-ok", 1, report(None));
    let all: Vec<_> = failing
        .iter()
        .chain(&flaky)
        .chain([&done])
        .cloned()
        .collect();
    p.dead_letters.inner().faults.lose_answers(1);
    p.jobs_todo.inner().faults.only("SendMessageBatch");
    p.jobs_todo.inner().faults.refuse_calls(1);
    let response = p.handle(event(&all), at(60), at(0)).await;

    let mut stayed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    stayed.sort();
    let mut expected: Vec<_> = failing
        .iter()
        .chain(&flaky)
        .map(|(m, _)| m.clone())
        .collect();
    expected.sort();
    assert_eq!(
        stayed, expected,
        "each record of a failed gathered call stays"
    );
    assert_eq!(*p.dead_letters.inner().batches.lock().expect("lock"), [3]);
    assert_eq!(*p.jobs_todo.inner().batches.lock().expect("lock"), [2]);
    let ends: Vec<_> = p
        .topic
        .notifications()
        .iter()
        .map(|n| (n.job_id.clone(), n.status))
        .collect();
    assert_eq!(ends, [("job-ok".to_owned(), JobStatus::Completed)]);

    // SQS brings the records back.
    let again: Vec<_> = failing.iter().chain(&flaky).cloned().collect();
    let mut redelivered = event(&again);
    for r in &mut redelivered.records {
        r.attributes
            .insert("ApproximateReceiveCount".into(), "2".into());
    }
    let response = p.handle(redelivered, at(120), at(61)).await;
    assert!(response.batch_item_failures.is_empty());
    let mut ends: Vec<_> = p
        .topic
        .notifications()
        .iter()
        .map(|n| (n.job_id.clone(), n.status))
        .collect();
    ends.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![("job-ok".to_owned(), JobStatus::Completed)];
    want.extend((1..=3).map(|i| (format!("job-f{i}"), JobStatus::Failed)));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(ends, want, "each job announced once");
    let letters = p.dead_letters.inner().dead_letters();
    for i in 1..=3 {
        let id = format!("job-f{i}");
        assert_eq!(letters.iter().filter(|d| d.job_id == id).count(), 2, "{id}");
    }
    let mut retried: Vec<_> = p
        .jobs_todo
        .inner()
        .jobs()
        .iter()
        .map(|j| (j.job_id.clone(), j.attempt))
        .collect();
    retried.sort();
    assert_eq!(
        retried,
        [("job-r1".to_owned(), 2), ("job-r2".to_owned(), 2)],
        "each retry queued once, on the second delivery"
    );
}
