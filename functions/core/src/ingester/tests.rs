use super::*;
use crate::job::JobType;
use crate::messages::JobStatus;
use crate::store::MemoryStore;
use crate::store::{fingerprint, Claim, Progress};
use crate::testing::{MemoryQueue, MemoryTopic};
use serde_json::Value;

fn batch() -> SqsEvent {
    serde_json::from_str(include_str!("../../fixtures/ingester-batch.json")).expect("fixture")
}

fn ingester(
    jobs_todo: MemoryQueue,
    dead_letters: MemoryQueue,
    topic: MemoryTopic,
) -> Ingester<MemoryQueue, MemoryTopic, MemoryStore> {
    Ingester {
        source: MemoryQueue::default(),
        jobs_todo,
        jobs_todo_fifo: MemoryQueue::fifo(),
        dead_letters,
        topic,
        store: MemoryStore::default(),
        config: IngesterConfig {
            max_receive_count: 5,
            max_job_timeout_secs: crate::job::DEFAULT_MAX_TIMEOUT_SECS,
            kinds: crate::kinds::Registry::builtin(),
        },
        telemetry: Instruments::default(),
    }
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T10:00:01Z")
        .expect("valid")
        .with_timezone(&Utc)
}

#[tokio::test]
async fn routes_the_original_jobs_and_malformed_ones() {
    let ing = ingester(
        MemoryQueue::default(),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    let response = ing.handle(batch(), now()).await;
    assert!(response.batch_item_failures.is_empty());

    let forwarded = ing.jobs_todo.jobs();
    let ids: Vec<_> = forwarded.iter().map(|j| j.job_id.as_str()).collect();
    // The four original good jobs use the EventBridge event id; a given id is kept.
    assert_eq!(
        ids,
        ["evt-0000", "evt-0001", "evt-0002", "evt-0003", "given-id-7"]
    );
    assert!(forwarded
        .iter()
        .all(|j| j.status == JobStatus::New && j.attempt == 1 && j.errors.is_empty()));
    assert_eq!(forwarded[1].job_type, JobType::from("long_running_job"));
    assert_eq!(
        forwarded[0].event_time.as_deref(),
        Some("2026-11-22T10:00:00Z")
    );

    let dead = ing.dead_letters.dead_letters();
    let codes: Vec<_> = dead
        .iter()
        .map(|d| (d.job_id.as_str(), d.last_error_code()))
        .collect();
    assert_eq!(
        codes,
        [
            ("evt-0004", "missing_field"),
            ("evt-0005", "unknown_job_type"),
            ("evt-0007", "invalid_detail"),
            ("msg-0008", "malformed_envelope"),
            ("evt-0009", "wrong_type"),
        ]
    );
    assert!(dead
        .iter()
        .all(|d| d.status == JobStatus::Rejected && d.errors.len() == 1));
    assert_eq!(
        dead[0].errors[0].field.as_deref(),
        Some("message.report_name")
    );
    assert_eq!(dead[3].job, Value::String("this is not json at all".into()));

    let notes = ing.topic.notifications();
    assert_eq!(
        notes.len(),
        5,
        "one REJECTED notification per rejection, none for forwarded jobs"
    );
    assert!(notes
        .iter()
        .all(|n| n.status == JobStatus::Rejected && n.stage == Stage::Ingester));
    assert_eq!(notes[1].job_type.as_deref(), Some("does_not_exist"));
}

#[tokio::test]
async fn dead_letters_carry_routing_attributes() {
    let ing = ingester(
        MemoryQueue::default(),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    ing.handle(batch(), now()).await;
    let sent = ing.dead_letters.sent.lock().expect("lock").clone();
    let attrs: std::collections::HashMap<_, _> = sent[1].attributes.iter().cloned().collect();
    assert_eq!(attrs["stage"], "ingester");
    assert_eq!(attrs["error_code"], "unknown_job_type");
    assert_eq!(attrs["job_type"], "does_not_exist");
}

#[tokio::test]
async fn a_failed_forward_fails_only_its_record() {
    // Only the onboarding job (user "Ada") cannot be forwarded.
    let ing = ingester(
        MemoryQueue::refusing("\"Ada\""),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    let response = ing.handle(batch(), now()).await;
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["msg-0006"]);
    assert_eq!(ing.jobs_todo.jobs().len(), 4);
    assert_eq!(
        ing.dead_letters.dead_letters().len(),
        5,
        "rejections are unaffected"
    );
}

/// The records of `event` that `response` gave back, as SQS delivers them again.
fn failed_again(event: SqsEvent, response: &SqsBatchResponse) -> SqsEvent {
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    let mut again = event;
    again
        .records
        .retain(|r| failed.contains(&r.message_id.as_deref().unwrap_or_default()));
    again
}

#[tokio::test]
async fn a_failed_forward_is_forwarded_when_its_record_comes_back() {
    let ing = ingester(
        MemoryQueue::refusing("\"Ada\""),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    let first = ing.handle(batch(), now()).await;
    ing.jobs_todo.refuse.lock().expect("lock").clear();
    // SQS offers the failed record again 15 s later.
    let again = failed_again(batch(), &first);
    assert_eq!(again.records.len(), 1);
    let response = ing.handle(again, now() + TimeDelta::seconds(15)).await;
    assert!(response.batch_item_failures.is_empty());
    ended_once(&ing);
    assert_eq!(ing.jobs_todo.jobs().len(), 5, "each job forwarded once");
}

#[tokio::test]
async fn a_rejection_whose_stop_could_not_be_written_waits_in_sqs() {
    let ing = ingester(
        MemoryQueue::default(),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    ing.store.faults.only("PutItem");
    ing.store.faults.refuse_calls(1);
    let first = ing.handle(batch(), now()).await;
    assert_eq!(first.batch_item_failures.len(), 1);
    assert_eq!(
        ing.dead_letters.dead_letters().len(),
        4,
        "not ended without its stop"
    );
    let later = ing
        .handle(
            failed_again(batch(), &first),
            now() + TimeDelta::seconds(15),
        )
        .await;
    assert!(later.batch_item_failures.is_empty());
    ended_once(&ing);
}

#[tokio::test]
async fn a_rejection_of_a_job_the_processor_has_does_not_end_it_again() {
    use crate::store::{Claim, Fingerprints};
    // The job was valid when it came and runs at the processor; its event comes again
    // and is refused now (a setting tightened): its end is the processor's.
    let ing = ingester(
        MemoryQueue::default(),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    let prints = Fingerprints::of(
        &serde_json::json!({"id": "job-1", "job_type": "report_generation", "message": {}}),
    );
    let claim = Claim {
        job_id: "job-1",
        stage: Stage::Processor,
        fingerprint: &prints.current,
        legacy_fingerprint: None,
        attempt: 1,
        lease_until: now() + TimeDelta::seconds(60),
        holder: "todo-1",
        token: "t",
        history: None,
    };
    ing.store.claim(&claim, now()).await.expect("store");
    let refused =
        serde_json::json!({"id": "job-1", "job_type": "report_generation", "message": {}});
    let event = records(&[("m-again".into(), event_body("evt-again", &refused))]);
    let response = ing.handle(event, now()).await;
    assert!(response.batch_item_failures.is_empty());
    assert!(
        ing.topic.notifications().is_empty(),
        "no REJECTED beside the processor's end"
    );
    assert!(ing.dead_letters.dead_letters().is_empty());
}

#[tokio::test]
async fn unannounced_or_unstored_rejections_are_retried() {
    let ing = ingester(
        MemoryQueue::default(),
        MemoryQueue::refusing("malformed_envelope"),
        MemoryTopic::refusing("evt-0005"),
    );
    let response = ing.handle(batch(), now()).await;
    let mut failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    failed.sort();
    assert_eq!(failed, ["msg-0005", "msg-0008"]);
    // The unstored dead letter is not announced: a notification never precedes its dead letter.
    assert!(ing
        .topic
        .notifications()
        .iter()
        .all(|n| n.job_id != "msg-0008"));

    // SQS delivers the two records again once both are back: they end now, and
    // every job has exactly one end state.
    ing.dead_letters.refuse.lock().expect("lock").clear();
    ing.topic.refuse.lock().expect("lock").clear();
    let response = ing.handle(failed_again(batch(), &response), now()).await;
    assert!(response.batch_item_failures.is_empty());
    let mut announced: Vec<_> = ing
        .topic
        .notifications()
        .into_iter()
        .map(|n| n.job_id)
        .collect();
    announced.sort();
    assert_eq!(
        announced,
        ["evt-0004", "evt-0005", "evt-0007", "evt-0009", "msg-0008"]
    );
    assert_eq!(ing.jobs_todo.jobs().len(), 5, "nothing forwarded twice");
}

#[tokio::test]
async fn an_event_delivered_again_ends_once() {
    let ing = ingester(
        MemoryQueue::default(),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    ing.handle(batch(), now()).await;
    let mut twice = batch();
    twice.records.extend(batch().records);
    let response = ing.handle(twice, now()).await;
    assert!(response.batch_item_failures.is_empty());
    // Rejections are claimed here and end once; valid jobs go on each time, for
    // the processor's claim (`copies_forwarded_again_run_and_end_once`).
    ended_once(&ing);
    assert_eq!(ing.jobs_todo.jobs().len(), 15);
}

#[tokio::test]
async fn copies_forwarded_again_run_and_end_once() {
    let store = MemoryStore::default();
    let ing = ingester_over(crate::testing::Shared(&store));
    let jobs: Vec<_> = (0..3).map(|i| onboarding(&format!("job-{i}"))).collect();
    let event = |copy: usize| {
        let bodies: Vec<_> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (format!("m-{i}-{copy}"), event_body(&format!("e-{i}"), j)))
            .collect();
        records(&bodies)
    };
    // Delivered twice by SQS and published a second time by the producer.
    for copy in 0..3 {
        let response = ing.handle(event(copy), now()).await;
        assert!(response.batch_item_failures.is_empty());
    }
    assert_eq!(
        ing.jobs_todo.jobs().len(),
        9,
        "no table call decides a forward"
    );
    assert!(store.get("job-0").await.expect("store").is_empty());
    let notes = process_forwarded(&ing, crate::testing::Shared(&store), 0, now()).await;
    let mut ended = ends(&notes);
    ended.sort_by(|a, b| a.0.cmp(&b.0));
    let completed = |id: &str| (id.to_owned(), JobStatus::Completed, vec![]);
    assert_eq!(
        ended,
        [completed("job-0"), completed("job-1"), completed("job-2")]
    );
}

#[tokio::test]
async fn a_reused_id_with_other_content_is_rejected_by_the_processor() {
    let store = MemoryStore::default();
    let ing = ingester_over(crate::testing::Shared(&store));
    let event = |user: &str| -> SqsEvent {
        let detail = serde_json::json!({"id": "job-42", "job_type": "user_onboarding",
            "message": {"user_id": "1", "user_name": user}});
        serde_json::from_value(serde_json::json!({"Records": [{"messageId": user,
            "body": serde_json::json!({"id": "e", "detail": detail}).to_string()}]}))
        .expect("event")
    };
    ing.handle(event("Ada"), now()).await;
    let first = run_forwarded(&ing, crate::testing::Shared(&store), 0, now()).await;
    ing.handle(event("Bob"), now()).await;
    assert_eq!(ing.jobs_todo.jobs().len(), 2, "both valid, both forwarded");
    let second = run_forwarded(&ing, crate::testing::Shared(&store), 1, now()).await;
    let completed = ("job-42".to_owned(), JobStatus::Completed, vec![]);
    assert_eq!(ends(&first.topic.notifications()), [completed]);
    let reused = (
        "job-42".to_owned(),
        JobStatus::Rejected,
        vec!["job_id_reused".to_owned()],
    );
    assert_eq!(ends(&second.topic.notifications()), [reused]);
    let dead = second.dead_letters.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].last_error_code(),
            dead[0].errors[0].field.as_deref(),
            dead[0].status,
        ),
        ("job_id_reused", Some("id"), JobStatus::Rejected)
    );
    assert_eq!(dead[0].job["message"]["user_name"], "Bob");
    assert!(ing.dead_letters.dead_letters().is_empty());
}

#[tokio::test]
async fn an_unreachable_state_table_leaves_every_rejection_in_sqs() {
    let ing = ingester(
        MemoryQueue::default(),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    ing.store
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let response = ing.handle(batch(), now()).await;
    let mut failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    failed.sort();
    assert_eq!(
        failed,
        ["msg-0004", "msg-0005", "msg-0007", "msg-0008", "msg-0009"],
        "the rejections"
    );
    assert_eq!(ing.jobs_todo.jobs().len(), 5, "valid jobs need no table");
    assert!(ing.topic.notifications().is_empty());
}

#[tokio::test]
async fn the_last_receive_dead_letters_instead_of_failing() {
    let mut event = batch();
    for r in &mut event.records {
        r.attributes
            .insert("ApproximateReceiveCount".into(), "5".into());
    }
    let ing = ingester(
        MemoryQueue::refusing("\"Ada\""),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    let response = ing.handle(event, now()).await;
    assert!(response.batch_item_failures.is_empty());
    let dead = ing.dead_letters.dead_letters();
    let last = dead
        .iter()
        .find(|d| d.job_id == "given-id-7")
        .expect("dead-lettered");
    assert_eq!(
        (last.status, last.last_error_code(), last.attempts),
        (JobStatus::Failed, "forward_failed", 5)
    );
    let note = ing
        .topic
        .notifications()
        .into_iter()
        .find(|n| n.job_id == "given-id-7")
        .expect("announced");
    assert_eq!(note.status, JobStatus::Failed);
}

/// An SQS event of (message id, body) records, each on its first receive.
fn records(bodies: &[(String, String)]) -> SqsEvent {
    let records: Vec<_> = bodies
        .iter()
        .map(|(id, body)| {
            serde_json::json!({"messageId": id, "receiptHandle": format!("rh-{id}"),
                "body": body, "attributes": {"ApproximateReceiveCount": "1"}})
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "Records": records })).expect("event")
}

/// The body EventBridge delivers for a detail.
fn event_body(event_id: &str, detail: &Value) -> String {
    serde_json::json!({"id": event_id, "time": "2026-11-22T10:00:00Z", "detail": detail})
        .to_string()
}

fn onboarding(id: &str) -> Value {
    serde_json::json!({"id": id, "job_type": "user_onboarding",
        "message": {"user_id": "1", "user_name": "Ada"}})
}

const TP_A: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TP_B: &str = "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01";
const TP_C: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[tokio::test]
async fn a_copy_re_sent_with_a_fresh_trace_context_is_the_same_job() {
    let store = MemoryStore::default();
    let ing = ingester_over(crate::testing::Shared(&store));
    let job = onboarding("job-7");
    let mut a = job.clone();
    a["trace_context"] = serde_json::json!({"traceparent": TP_A});
    let mut b = job.clone();
    b["trace_context"] = serde_json::json!({"traceparent": TP_B, "tracestate": "vendor=1"});
    let mut c = job.clone();
    c["traceparent"] = Value::from(TP_C);
    c["tracestate"] = Value::from("x=y");
    // The producer re-sends the job three times, each copy a new event.
    for (i, detail) in [a, b, c].iter().enumerate() {
        let event = records(&[(format!("m{i}"), event_body(&format!("e{i}"), detail))]);
        let response = ing
            .handle(event, now() + TimeDelta::seconds(i as i64))
            .await;
        assert!(response.batch_item_failures.is_empty());
    }
    // `process_forwarded` checks that no copy is dead-lettered as id reuse.
    let copies = process_forwarded(&ing, crate::testing::Shared(&store), 0, now()).await;
    assert_eq!(
        ends(&copies),
        [("job-7".to_owned(), JobStatus::Completed, vec![])],
        "three copies, one end"
    );
    // Other content under the same id still is.
    let mut other = onboarding("job-7");
    other["message"]["user_name"] = Value::from("Bob");
    other["trace_context"] = serde_json::json!({"traceparent": TP_A});
    ing.handle(records(&[("m9".into(), event_body("e9", &other))]), now())
        .await;
    let p = run_forwarded(&ing, crate::testing::Shared(&store), 3, now()).await;
    let dead = p.dead_letters.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error_code(), "job_id_reused");
}

#[tokio::test]
async fn characters_sqs_refuses_are_escaped_and_the_job_is_unchanged() {
    let ing = ingester(
        MemoryQueue::default(),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    let odd = "A\u{fffe}B\u{ffff}";
    let mut valid = onboarding(&format!("id-{odd}"));
    valid["message"]["user_name"] = Value::from(odd);
    let unknown = serde_json::json!({"job_type": format!("type-{odd}"), "message": {}});
    let control = serde_json::json!({"job_type": "\u{0}"});
    let event = records(&[
        ("m1".into(), event_body("e1", &valid)),
        ("m2".into(), event_body("e2", &unknown)),
        ("m3".into(), event_body("e3", &control)),
    ]);
    let response = ing.handle(event, now()).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "{:?}",
        response.batch_item_failures
    );
    let forwarded = ing.jobs_todo.jobs();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].job, valid, "the job travels unchanged");
    assert_eq!(forwarded[0].job_id, format!("id-{odd}"));
    let dead = ing.dead_letters.dead_letters();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].job, unknown);
    assert_eq!(
        dead[0].job_type.as_deref(),
        Some(format!("type-{odd}").as_str())
    );
    let attrs: HashMap<_, _> = ing.dead_letters.sent.lock().expect("lock")[0]
        .attributes
        .iter()
        .cloned()
        .collect();
    assert_eq!(attrs["job_type"], "type-A\u{fffd}B\u{fffd}");
    assert_eq!(
        ing.topic.notifications().len(),
        2,
        "both rejections announced"
    );
}

#[tokio::test]
async fn ten_near_limit_dead_letters_all_get_through_without_tripping_the_breaker() {
    use crate::guard::{GuardConfig, Guarded};
    let guard = GuardConfig {
        failure_threshold: 1,
        ..GuardConfig::default()
    };
    let queue = |name| Guarded::new(MemoryQueue::default(), name, guard);
    let ing = Ingester {
        source: queue("ingester-queue"),
        jobs_todo: queue("jobs-todo"),
        jobs_todo_fifo: queue("jobs-todo.fifo"),
        dead_letters: queue("dead-letter-queue"),
        topic: MemoryTopic::default(),
        store: MemoryStore::default(),
        config: IngesterConfig {
            max_receive_count: 5,
            max_job_timeout_secs: crate::job::DEFAULT_MAX_TIMEOUT_SECS,
            kinds: crate::kinds::Registry::builtin(),
        },
        telemetry: Instruments::default(),
    };
    // Ten bodies that are no EventBridge event: each dead letter keeps its 120 KiB.
    let big = "x".repeat(120 * 1024);
    let bodies: Vec<(String, String)> = (0..10)
        .map(|i| (format!("m{i}"), format!("{i}{big}")))
        .collect();
    let response = ing.handle(records(&bodies), now()).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "{} records failed",
        response.batch_item_failures.len()
    );
    assert_eq!(ing.dead_letters.inner().dead_letters().len(), 10);
    assert!(!ing.dead_letters.breaker().is_open());
    assert_eq!(ing.topic.notifications().len(), 10);
}

#[tokio::test]
async fn a_detail_that_grows_when_written_out_is_rejected_once() {
    let ing = ingester(
        MemoryQueue::default(),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    // `1e15` is written out again as `1000000000000000.0`: under the limit as sent,
    // four times over it as the pipeline would send it on.
    let samples = vec!["1e15"; 12_000].join(",");
    let body = format!(
        r#"{{"id":"e1","detail":{{"id":"job-big","job_type":"user_onboarding","message":{{"user_id":"1","user_name":"A"}},"samples":[{samples}]}}}}"#
    );
    assert!(body.len() < crate::job::MAX_DETAIL_BYTES);
    for receive in 1..=2 {
        let mut event = records(&[("m1".into(), body.clone())]);
        event.records[0]
            .attributes
            .insert("ApproximateReceiveCount".into(), receive.to_string());
        let response = ing.handle(event, now()).await;
        assert!(response.batch_item_failures.is_empty());
    }
    assert!(ing.jobs_todo.bodies().is_empty(), "not forwarded");
    let dead = ing.dead_letters.dead_letters();
    assert_eq!(dead.len(), 1, "rejected once");
    assert_eq!(
        (
            dead[0].job_id.as_str(),
            dead[0].status,
            dead[0].last_error_code()
        ),
        ("job-big", JobStatus::Rejected, "too_large")
    );
    assert!(
        dead[0].errors[0].message.contains("written"),
        "{}",
        dead[0].errors[0].message
    );
    assert_eq!(ing.topic.notifications().len(), 1);
}

#[tokio::test]
async fn an_invalid_traceparent_is_not_passed_on() {
    let ing = ingester(
        MemoryQueue::default(),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    let bad = [
        "00-garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ];
    let mut bodies = Vec::new();
    for (i, tp) in bad.iter().enumerate() {
        let mut detail = onboarding(&format!("bad-{i}"));
        if i % 2 == 0 {
            detail["traceparent"] = Value::from(*tp);
        } else {
            detail["trace_context"] = serde_json::json!({ "traceparent": tp });
        }
        bodies.push((format!("m{i}"), event_body(&format!("e{i}"), &detail)));
    }
    let mut good = onboarding("good");
    good["traceparent"] = Value::from(TP_A);
    bodies.push(("m-good".into(), event_body("e-good", &good)));
    let response = ing.handle(records(&bodies), now()).await;
    assert!(response.batch_item_failures.is_empty());
    let sent = ing.jobs_todo.sent.lock().expect("lock").clone();
    assert_eq!(sent.len(), bad.len() + 1, "every job still runs");
    for m in &sent {
        let attrs: HashMap<_, _> = m.attributes.iter().cloned().collect();
        let job = EnrichedJob::from_body(&m.body).expect("a job");
        if attrs["job_id"] == "good" {
            let tp = attrs.get("traceparent").expect("a valid one is passed on");
            assert_eq!(&tp[3..35], &TP_A[3..35], "the same trace");
        } else {
            assert_eq!(attrs.get("traceparent"), None, "{}", attrs["job_id"]);
            assert_eq!(job.trace_context, None, "{}", attrs["job_id"]);
        }
    }
}

#[tokio::test]
async fn a_long_running_job_longer_than_the_processor_can_run_is_rejected() {
    let ing = ingester(
        MemoryQueue::default(),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    let long = |id: &str, timeout: u64| {
        serde_json::json!({"id": id, "job_type": "long_running_job",
            "message": {"task_name": "t", "timeout": timeout}})
    };
    let event = records(&[
        ("m1".into(), event_body("e1", &long("too-long", 880))),
        ("m2".into(), event_body("e2", &long("fits", 879))),
    ]);
    let response = ing.handle(event, now()).await;
    assert!(response.batch_item_failures.is_empty());
    let forwarded: Vec<_> = ing.jobs_todo.jobs().into_iter().map(|j| j.job_id).collect();
    assert_eq!(forwarded, ["fits"]);
    let dead = ing.dead_letters.dead_letters();
    assert_eq!(dead.len(), 1);
    let e = &dead[0].errors[0];
    assert_eq!(
        (dead[0].job_id.as_str(), e.code.as_str(), e.field.as_deref()),
        ("too-long", "out_of_range", Some("message.timeout"))
    );
    assert!(e.message.contains("879"), "{}", e.message);
}

#[tokio::test(start_paused = true)]
async fn two_copies_in_one_batch_claim_the_job_once_whatever_the_table_answers() {
    use crate::batching::Batching;
    // The table answers "claimed" to every statement of a batch, even two on one
    // key, and takes its time: the second copy must wait for the first's answer.
    let store = Batching::new(MemoryStore::default());
    store
        .inner()
        .snapshot_batches
        .store(true, std::sync::atomic::Ordering::SeqCst);
    store
        .inner()
        .faults
        .slow_down(std::time::Duration::from_millis(300));
    let ing = Ingester {
        source: MemoryQueue::default(),
        jobs_todo: MemoryQueue::default(),
        jobs_todo_fifo: MemoryQueue::fifo(),
        dead_letters: MemoryQueue::default(),
        topic: MemoryTopic::default(),
        store,
        config: IngesterConfig {
            max_receive_count: 5,
            max_job_timeout_secs: crate::job::DEFAULT_MAX_TIMEOUT_SECS,
            kinds: crate::kinds::Registry::builtin(),
        },
        telemetry: Instruments::default(),
    };
    let rejected = serde_json::json!({"id": "job-r", "job_type": "report_generation",
        "message": {"filters": "x"}});
    let event = records(&[
        ("m1".into(), event_body("e1", &rejected)),
        ("m2".into(), event_body("e1", &rejected)),
        ("m3".into(), event_body("e2", &onboarding("job-v"))),
        ("m4".into(), event_body("e2", &onboarding("job-v"))),
    ]);
    let response = ing.handle(event, now()).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(ing.dead_letters.dead_letters().len(), 1, "one dead letter");
    assert_eq!(ing.topic.notifications().len(), 1, "one notification");
    // Both copies of the valid job go on: the processor's claim takes one
    // (`processor::tests::two_copies_in_one_batch_run_once_whatever_the_table_answers`).
    assert_eq!(ing.jobs_todo.jobs().len(), 2, "both forwards");
}

#[tokio::test]
async fn forwards_in_batches_of_ten() {
    let detail = r#"{"job_type":"user_onboarding","message":{"user_id":"1","user_name":"A"}}"#;
    let records: Vec<_> = (0..23)
        .map(|i| {
            serde_json::json!({"messageId": format!("m{i}"), "body":
                format!(r#"{{"id":"e{i}","detail":{detail}}}"#), "attributes": {}})
        })
        .collect();
    let event: SqsEvent =
        serde_json::from_value(serde_json::json!({"Records": records})).expect("event");
    let ing = ingester(
        MemoryQueue::default(),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    ing.handle(event, now()).await;
    assert_eq!(*ing.jobs_todo.batches.lock().expect("lock"), [10, 10, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_rejection_whose_claim_is_held_goes_back_before_the_slow_forward_of_the_rest() {
    // job-held lacks its user_name: a rejection, claimed; job-ok is forwarded.
    let detail = |id: &str| {
        let mut d = serde_json::json!({"id": id, "job_type": "user_onboarding",
            "message": {"user_id": "1", "user_name": "A"}});
        if id == "job-held" {
            d["message"].as_object_mut().map(|m| m.remove("user_name"));
        }
        d
    };
    let records: Vec<_> = ["held", "ok"]
        .iter()
        .map(|name| {
            serde_json::json!({"messageId": format!("m-{name}"),
                "receiptHandle": format!("rh-{name}"),
                "body": serde_json::json!({"id": "e", "detail": detail(&format!("job-{name}"))}).to_string(),
                "attributes": {"ApproximateReceiveCount": "2"}})
        })
        .collect();
    let event: SqsEvent =
        serde_json::from_value(serde_json::json!({"Records": records})).expect("event");
    let queue = |secs| {
        let q = MemoryQueue::default();
        q.faults.slow_down(std::time::Duration::from_secs(secs));
        q
    };
    let ing = Ingester {
        source: queue(0),
        jobs_todo: queue(5),
        jobs_todo_fifo: queue(5),
        dead_letters: queue(0),
        topic: MemoryTopic::default(),
        store: MemoryStore::default(),
        config: IngesterConfig {
            max_receive_count: 5,
            max_job_timeout_secs: crate::job::DEFAULT_MAX_TIMEOUT_SECS,
            kinds: crate::kinds::Registry::builtin(),
        },
        telemetry: Instruments::default(),
    };
    // An earlier delivery of m-held still holds its job.
    let fp = fingerprint(&detail("job-held"));
    let held = Claim {
        job_id: "job-held",
        stage: Stage::Ingester,
        fingerprint: &fp,
        legacy_fingerprint: None,
        attempt: 1,
        lease_until: now() + TimeDelta::seconds(30),
        holder: "m-held",
        token: "",
        history: None,
    };
    ing.store.claim(&held, now()).await.expect("store");
    let handling = ing.handle(event, now());
    tokio::pin!(handling);
    tokio::select! {
        _ = &mut handling => panic!("the forward takes 5 s"),
        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
    }
    let released = ing.source.released.lock().expect("lock").clone();
    assert_eq!(
        released,
        [crate::ports::Receipt {
            receipt_handle: "rh-held".into(),
            delay_seconds: 60
        }]
    );
    let response = handling.await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(ing.jobs_todo.jobs().len(), 1);
    assert!(
        ing.dead_letters.dead_letters().is_empty(),
        "held, not ended"
    );
}

/// An ingester over another store, for the claim-token tests.
fn ingester_over<S: JobStore>(store: S) -> Ingester<MemoryQueue, MemoryTopic, S> {
    Ingester {
        source: MemoryQueue::default(),
        jobs_todo: MemoryQueue::default(),
        jobs_todo_fifo: MemoryQueue::fifo(),
        dead_letters: MemoryQueue::default(),
        topic: MemoryTopic::default(),
        store,
        config: IngesterConfig {
            max_receive_count: 5,
            max_job_timeout_secs: crate::job::DEFAULT_MAX_TIMEOUT_SECS,
            kinds: crate::kinds::Registry::builtin(),
        },
        telemetry: Instruments::default(),
    }
}

/// Each of the fixture's ten records handled: its five valid jobs forwarded (some
/// perhaps more than once, for the processor's claim to end once), and its five
/// rejections each dead-lettered and announced once.
fn ended_once<S: JobStore>(ing: &Ingester<MemoryQueue, MemoryTopic, S>) {
    let mut forwarded: Vec<_> = ing.jobs_todo.jobs().into_iter().map(|j| j.job_id).collect();
    forwarded.sort();
    forwarded.dedup();
    assert_eq!(
        forwarded,
        ["evt-0000", "evt-0001", "evt-0002", "evt-0003", "given-id-7"]
    );
    assert_eq!(ing.dead_letters.dead_letters().len(), 5);
    assert_eq!(ing.topic.notifications().len(), 5);
    // Each rejection once, under its own id, with its letter.
    let rejected = ["evt-0004", "evt-0005", "evt-0007", "evt-0009", "msg-0008"];
    let mut announced: Vec<_> = ing
        .topic
        .notifications()
        .into_iter()
        .map(|n| (n.job_id, n.status))
        .collect();
    announced.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<_> = rejected
        .iter()
        .map(|id| (id.to_string(), JobStatus::Rejected))
        .collect();
    assert_eq!(announced, expected);
    let mut lettered: Vec<_> = ing
        .dead_letters
        .dead_letters()
        .into_iter()
        .map(|d| d.job_id)
        .collect();
    lettered.sort();
    assert_eq!(lettered, rejected);
}

#[tokio::test]
async fn a_lost_stop_answer_retried_with_the_same_token_is_the_stop_s_own() {
    use crate::batching::Batching;
    // A rejection's stop took effect, its answer was lost, the SDK sent it again.
    let ing = ingester_over(Batching::new(crate::testing::SdkRetry {
        inner: MemoryStore::default(),
    }));
    ing.store.inner().inner.faults.only("PutItem");
    ing.store.inner().inner.faults.lose_answers(1);
    let response = ing.handle(batch(), now()).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "its own stop, not another's: {:?}",
        response.batch_item_failures
    );
    ended_once(&ing);
    let again = ing.handle(batch(), now() + TimeDelta::seconds(1)).await;
    assert!(again.batch_item_failures.is_empty());
    ended_once(&ing);
}

#[tokio::test]
async fn a_lost_stop_answer_is_announced_by_the_next_delivery_at_once() {
    use crate::batching::Batching;
    let ing = ingester_over(Batching::new(MemoryStore::default()));
    ing.store.inner().faults.only("PutItem");
    ing.store.inner().faults.lose_answers(1);
    let response = ing.handle(batch(), now()).await;
    // The stop took effect; its record stays in SQS, and nothing is announced.
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(ing.dead_letters.dead_letters().len(), 4);
    // Its next delivery, 15 s later and inside the 30 s lease, finds its own stop.
    let again = failed_again(batch(), &response);
    let response = ing.handle(again, now() + TimeDelta::seconds(15)).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "announced at once, not after the lease: {:?}",
        response.batch_item_failures
    );
    ended_once(&ing);
}

#[tokio::test]
async fn a_lost_claim_answer_is_given_back_so_the_next_delivery_goes_at_once() {
    let ing = ingester_over(MemoryStore::default());
    // One record's claim (one call each, unbatched) took effect, its answer lost.
    ing.store.faults.lose_answers(1);
    let response = ing.handle(batch(), now()).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    let again = failed_again(batch(), &response);
    let response = ing.handle(again, now() + TimeDelta::seconds(15)).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "taken at once, not after the lease: {:?}",
        response.batch_item_failures
    );
    ended_once(&ing);
}

/// A processor over the same table, as the pipeline has.
fn processor_over<S: JobStore>(
    store: S,
) -> crate::processor::Processor<MemoryQueue, MemoryTopic, S> {
    crate::processor::Processor {
        jobs_todo: MemoryQueue::default(),
        jobs_todo_fifo: MemoryQueue::fifo(),
        dead_letters: MemoryQueue::default(),
        topic: MemoryTopic::default(),
        store,
        config: crate::processor::ProcessorConfig {
            deadline_margin: std::time::Duration::from_secs(3),
            retry: crate::retry::RetryPolicy::default(),
            fault_injection: false,
            kinds: crate::kinds::Registry::builtin(),
        },
        telemetry: Instruments::default(),
    }
}

/// One EventBridge delivery of `detail` on receive `receive`.
fn delivery(message_id: &str, detail: &Value, receive: u32) -> SqsEvent {
    let mut event = records(&[(message_id.to_owned(), event_body("evt-1", detail))]);
    event.records[0]
        .attributes
        .insert("ApproximateReceiveCount".into(), receive.to_string());
    event
}

/// The processor handles every message the ingester put on `jobs-todo` (from
/// `from` on), each as SQS delivers it, and none is dead-lettered: returns what it
/// announced.
async fn process_forwarded<S: JobStore + crate::store::Sagas>(
    ing: &Ingester<MemoryQueue, MemoryTopic, S>,
    store: S,
    from: usize,
    at: DateTime<Utc>,
) -> Vec<Notification> {
    let p = run_forwarded(ing, store, from, at).await;
    assert!(p.dead_letters.dead_letters().is_empty());
    p.topic.notifications()
}

/// The processor that handled every message the ingester put on `jobs-todo` (from
/// `from` on), with nothing left in SQS.
async fn run_forwarded<S: JobStore + crate::store::Sagas>(
    ing: &Ingester<MemoryQueue, MemoryTopic, S>,
    store: S,
    from: usize,
    at: DateTime<Utc>,
) -> crate::processor::Processor<MemoryQueue, MemoryTopic, S> {
    let p = processor_over(store);
    let bodies: Vec<(String, String)> = ing.jobs_todo.bodies()[from..]
        .iter()
        .enumerate()
        .map(|(i, b)| (format!("todo-{from}-{i}"), b.clone()))
        .collect();
    let mut event = records(&bodies);
    for r in &mut event.records {
        r.event_source_arn = Some("arn:aws:sqs:us-east-1:000000000000:jobs-todo".into());
    }
    let response = p.handle(event, at + TimeDelta::seconds(60), at).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "{:?}",
        response.batch_item_failures
    );
    p
}

fn ends(notes: &[Notification]) -> Vec<(String, JobStatus, Vec<String>)> {
    notes
        .iter()
        .map(|n| {
            let codes = n
                .errors
                .iter()
                .map(|e| e.code.as_str().to_owned())
                .collect();
            (n.job_id.clone(), n.status, codes)
        })
        .collect()
}

#[tokio::test]
async fn a_forward_whose_answer_was_lost_on_the_last_receive_ends_failed_once() {
    // SQS took the job, the answer was lost: the ingester gives up on its last
    // receive, and the copy on jobs-todo must not be run and announced too.
    let store = MemoryStore::default();
    let ing = ingester_over(crate::testing::Shared(&store));
    ing.jobs_todo.faults.lose_answers(1);
    let response = ing
        .handle(delivery("m-1", &onboarding("job-5"), 5), now())
        .await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(ing.jobs_todo.jobs().len(), 1, "the forward took effect");
    let failed = vec![(
        "job-5".to_owned(),
        JobStatus::Failed,
        vec!["forward_failed".to_owned()],
    )];
    assert_eq!(ends(&ing.topic.notifications()), failed);
    let letters = ing.dead_letters.dead_letters();
    assert_eq!(
        letters
            .iter()
            .map(|d| (d.job_id.as_str(), d.last_error_code()))
            .collect::<Vec<_>>(),
        [("job-5", "forward_failed")]
    );

    let later = now() + TimeDelta::seconds(5);
    let from_processor = process_forwarded(&ing, crate::testing::Shared(&store), 0, later).await;
    assert_eq!(
        ends(&from_processor),
        [],
        "the forwarded copy was run and announced"
    );
    let processor = store.get("job-5").await.expect("store");
    assert!(
        processor
            .iter()
            .all(|r| r.progress == Progress::Done(Some(JobStatus::Failed)) && r.announced),
        "one record, marked announced by the ingester: {processor:?}"
    );
}

#[tokio::test]
async fn an_unforwarded_end_the_ingester_could_not_announce_is_announced_once_later() {
    // The last receive's forward answer is lost and SNS refuses the FAILED end: it
    // stays recorded on the processor's record, unannounced, and SQS moves the record
    // to the DLQ as it was (stranded).
    let store = MemoryStore::default();
    let ing = ingester_over(crate::testing::Shared(&store));
    ing.jobs_todo.faults.lose_answers(1);
    ing.topic.refuse.lock().expect("lock").push("job-5".into());
    let response = ing
        .handle(delivery("m-1", &onboarding("job-5"), 5), now())
        .await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(ends(&ing.topic.notifications()), []);
    // The forward's copy, arriving while the ingester could still announce, is dropped.
    let during = run_forwarded(
        &ing,
        crate::testing::Shared(&store),
        0,
        now() + TimeDelta::seconds(5),
    )
    .await;
    assert_eq!(ends(&during.topic.notifications()), [], "announced twice");
    // An operator redrives the stranded event: the processor announces the end.
    ing.topic.refuse.lock().expect("lock").clear();
    let later = now() + TimeDelta::seconds(120);
    ing.handle(delivery("m-redriven", &onboarding("job-5"), 1), later)
        .await;
    let after = run_forwarded(&ing, crate::testing::Shared(&store), 1, later).await;
    let failed = (
        "job-5".to_owned(),
        JobStatus::Failed,
        vec!["forward_failed".to_owned()],
    );
    assert_eq!(
        ends(&after.topic.notifications()),
        [failed],
        "announced once"
    );
    assert_eq!(ends(&ing.topic.notifications()), []);
    let records = store.get("job-5").await.expect("store");
    assert!(records.iter().all(|r| r.announced), "{records:?}");
}

#[tokio::test]
async fn a_forward_the_processor_ran_before_the_last_receive_ends_completed_once() {
    // Receive 4: forwarded, answer lost, back to SQS. The processor runs the copy.
    // Receive 5: forwarded again, answer lost again: the processor has the job, so
    // the ingester leaves it to the processor instead of announcing FAILED.
    let store = MemoryStore::default();
    let ing = ingester_over(crate::testing::Shared(&store));
    ing.jobs_todo.faults.lose_answers(2);
    let fourth = ing
        .handle(delivery("m-1", &onboarding("job-6"), 4), now())
        .await;
    assert_eq!(fourth.batch_item_failures.len(), 1);
    let t1 = now() + TimeDelta::seconds(2);
    let first = process_forwarded(&ing, crate::testing::Shared(&store), 0, t1).await;
    assert_eq!(
        ends(&first),
        [("job-6".to_owned(), JobStatus::Completed, vec![])]
    );

    let t2 = now() + TimeDelta::seconds(40);
    let fifth = ing
        .handle(delivery("m-1", &onboarding("job-6"), 5), t2)
        .await;
    assert!(fifth.batch_item_failures.is_empty());
    assert_eq!(
        ends(&ing.topic.notifications()),
        [],
        "FAILED announced after COMPLETED"
    );
    assert!(ing.dead_letters.dead_letters().is_empty());
    let records = store.get("job-6").await.expect("store");
    let kept: Vec<_> = records.iter().map(|r| (r.stage, r.progress)).collect();
    let completed = Progress::Done(Some(JobStatus::Completed));
    assert_eq!(
        kept,
        [(Stage::Processor, completed)],
        "the job's one record"
    );
    let second = process_forwarded(&ing, crate::testing::Shared(&store), 1, t2).await;
    assert_eq!(ends(&second), [], "the second copy ran again");
}

#[tokio::test]
async fn an_unforwarded_job_whose_ending_could_not_be_written_stays_in_sqs() {
    // Forward refused, then the table refuses the ending's write: nothing is
    // announced, the record goes back to SQS (and so to its DLQ as it was).
    let ing = ingester(
        MemoryQueue::refusing("job-8"),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    ing.store.faults.only("PutItem");
    ing.store.faults.refuse_calls(1);
    let response = ing
        .handle(delivery("m-8", &onboarding("job-8"), 5), now())
        .await;
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["m-8"]);
    assert_eq!(ends(&ing.topic.notifications()), []);
    assert!(ing.dead_letters.dead_letters().is_empty());
    let records = ing.store.get("job-8").await.expect("store");
    assert!(records.is_empty(), "nothing written: {records:?}");
}

fn keyed(id: &str, key: &str) -> Value {
    let mut job = onboarding(id);
    job["ordering_key"] = key.into();
    job
}

#[tokio::test]
async fn jobs_with_an_ordering_key_go_to_the_fifo_queue_grouped_by_key() {
    let ing = ingester(
        MemoryQueue::default(),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    let bodies: Vec<(String, String)> = [
        keyed("a1", "user-1"),
        onboarding("plain"),
        keyed("b1", "ünïcode key"),
        keyed("a2", "user-1"),
    ]
    .iter()
    .enumerate()
    .map(|(i, d)| (format!("msg-{i}"), event_body(&format!("evt-{i}"), d)))
    .collect();
    let response = ing.handle(records(&bodies), now()).await;
    assert!(response.batch_item_failures.is_empty());
    let plain: Vec<String> = ing.jobs_todo.jobs().into_iter().map(|j| j.job_id).collect();
    assert_eq!(plain, ["plain"]);
    let sent = ing.jobs_todo_fifo.sent.lock().expect("lock").clone();
    let placed: Vec<(String, String)> = sent
        .iter()
        .map(|m| {
            let job: EnrichedJob = serde_json::from_str(&m.body).expect("job");
            (job.job_id, m.group.clone().expect("a group").group_id)
        })
        .collect();
    let hashed = super::forward::fifo_group("ünïcode key");
    assert!(hashed.starts_with("key-") && hashed.len() == 68, "{hashed}");
    assert_eq!(
        placed,
        [
            ("a1".to_owned(), "user-1".to_owned()),
            ("b1".to_owned(), hashed),
            ("a2".to_owned(), "user-1".to_owned()),
        ],
        "in the batch's order within each key"
    );
    let dedup: std::collections::HashSet<_> = sent
        .iter()
        .map(|m| m.group.as_ref().expect("group").deduplication_id.clone())
        .collect();
    assert_eq!(dedup.len(), 3, "each forward its own deduplication id");
}

#[tokio::test]
async fn a_keys_later_job_is_not_forwarded_ahead_of_an_earlier_one_that_failed() {
    let fifo = MemoryQueue::fifo();
    fifo.refuse.lock().expect("lock").push("\"a1\"".into());
    let ing = Ingester {
        jobs_todo_fifo: fifo,
        ..ingester(
            MemoryQueue::default(),
            MemoryQueue::default(),
            MemoryTopic::default(),
        )
    };
    let bodies: Vec<(String, String)> = [
        keyed("a1", "a"),
        keyed("b1", "b"),
        keyed("a2", "a"),
        keyed("b2", "b"),
    ]
    .iter()
    .enumerate()
    .map(|(i, d)| (format!("msg-{i}"), event_body(&format!("evt-{i}"), d)))
    .collect();
    let event = records(&bodies);
    let first = ing.handle(event.clone(), now()).await;
    let failed: Vec<&str> = first
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(
        failed,
        ["msg-0", "msg-2"],
        "a2 waits with a1; key b goes on"
    );
    let ids = |q: &MemoryQueue| -> Vec<String> { q.jobs().into_iter().map(|j| j.job_id).collect() };
    assert_eq!(ids(&ing.jobs_todo_fifo), ["b1", "b2"]);

    ing.jobs_todo_fifo.refuse.lock().expect("lock").clear();
    let again = failed_again(event, &first);
    let response = ing.handle(again, now() + TimeDelta::seconds(15)).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(ids(&ing.jobs_todo_fifo), ["b1", "b2", "a1", "a2"]);
}

/// EventBridge accepted it, so it is JSON, but too deep for the parser: it ends under
/// the producer's id, and its replayed copy (the envelope now names the replay) is a
/// repeat of the same end, not a second one.
#[tokio::test]
async fn an_event_too_deep_to_parse_ends_once_under_its_producers_id_replays_included() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let detail = format!(
        r#"{{"id":"job-deep","job_type":"report_generation","message":{{"report_name":"r","filters":{deep}}}}}"#
    );
    let live = format!(r#"{{"id":"evt-9","time":"2026-11-22T10:00:00Z","detail":{detail}}}"#);
    let replayed = live.replace(r#""id":"evt-9","#, r#""id":"evt-9","replay-name":"fix-1","#);
    assert_ne!(live, replayed);
    let ing = ingester(
        MemoryQueue::default(),
        MemoryQueue::default(),
        MemoryTopic::default(),
    );
    for (id, body) in [("m1", &live), ("m2", &live), ("m3", &replayed)] {
        let response = ing
            .handle(records(&[(id.into(), body.clone())]), now())
            .await;
        assert!(response.batch_item_failures.is_empty(), "{id}");
    }
    let notes = ing.topic.notifications();
    let ends: Vec<_> = notes
        .iter()
        .map(|n| (n.job_id.as_str(), n.status, n.errors[0].code.as_str()))
        .collect();
    assert_eq!(
        ends,
        [("job-deep", JobStatus::Rejected, "malformed_envelope")]
    );
    let letters = ing.dead_letters.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].job_id, "job-deep");
    assert_eq!(
        letters[0].job,
        Value::String(detail),
        "the detail's text, as sent"
    );
    assert!(ing.jobs_todo.jobs().is_empty());
}

#[tokio::test]
async fn a_rejected_job_sent_again_corrected_under_its_id_runs() {
    // A rejection does not own its id: once it is announced, the producer may send
    // the job again, fixed, under the same id.
    let store = MemoryStore::default();
    let ing = ingester_over(crate::testing::Shared(&store));
    let mut broken = onboarding("job-fix");
    broken["message"] = serde_json::json!({});
    ing.handle(records(&[("m1".into(), event_body("e1", &broken))]), now())
        .await;
    assert_eq!(ing.topic.notifications()[0].status, JobStatus::Rejected);
    let fixed = onboarding("job-fix");
    let later = now() + TimeDelta::seconds(60);
    ing.handle(records(&[("m2".into(), event_body("e2", &fixed))]), later)
        .await;
    let ends = process_forwarded(&ing, crate::testing::Shared(&store), 0, later).await;
    assert_eq!(
        ends.iter()
            .map(|n| (n.job_id.as_str(), n.status))
            .collect::<Vec<_>>(),
        [("job-fix", JobStatus::Completed)]
    );
}
