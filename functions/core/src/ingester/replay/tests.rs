//! Replays through both stages over one in-memory table: the live event first, then
//! its archived copy under a replay's name, as EventBridge sends it again.

use super::super::{Ingester, IngesterConfig};
use crate::messages::{DeadLetter, JobStatus, Notification, Replayed};
use crate::processor::{Processor, ProcessorConfig};
use crate::store::{MemoryStore, OperatorStore, ReplayOrder};
use crate::telemetry::Instruments;
use crate::testing::{MemoryQueue, MemoryTopic, Shared};
use aws_lambda_events::sqs::SqsEvent;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};

type Ing<'a> = Ingester<MemoryQueue, MemoryTopic, Shared<'a, MemoryStore>>;
type Proc<'a> = Processor<MemoryQueue, MemoryTopic, Shared<'a, MemoryStore>>;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
        .expect("valid")
        .with_timezone(&Utc)
}

/// Both stages over `store`; the ingester accepts jobs longer than the processor's
/// invocation has left, so such a job fails there at once (`FAILED`, for good).
fn stages(store: &MemoryStore) -> (Ing<'_>, Proc<'_>) {
    let ingester = Ingester {
        source: MemoryQueue::default(),
        jobs_todo: MemoryQueue::default(),
        jobs_todo_fifo: MemoryQueue::fifo(),
        dead_letters: MemoryQueue::default(),
        topic: MemoryTopic::default(),
        store: Shared(store),
        config: IngesterConfig {
            max_receive_count: 5,
            max_job_timeout_secs: crate::job::DEFAULT_MAX_TIMEOUT_SECS,
            kinds: crate::kinds::Registry::builtin(),
        },
        telemetry: Instruments::default(),
    };
    let processor = Processor {
        jobs_todo: MemoryQueue::default(),
        jobs_todo_fifo: MemoryQueue::fifo(),
        dead_letters: MemoryQueue::default(),
        topic: MemoryTopic::default(),
        store: Shared(store),
        config: ProcessorConfig {
            deadline_margin: std::time::Duration::from_secs(3),
            retry: crate::retry::RetryPolicy::default(),
            fault_injection: false,
            kinds: crate::kinds::Registry::builtin(),
        },
        telemetry: Instruments::default(),
    };
    (ingester, processor)
}

fn completes(id: &str) -> Value {
    json!({"id": id, "job_type": "user_onboarding", "message": {"user_id": "1", "user_name": "Ada"}})
}

fn fails(id: &str) -> Value {
    json!({"id": id, "job_type": "long_running_job",
        "message": {"task_name": "t", "timeout": crate::job::DEFAULT_MAX_TIMEOUT_SECS}})
}

fn rejected(id: &str) -> Value {
    json!({"id": id, "job_type": "report_generation", "message": {"filters": "a=1"}})
}

/// The SQS delivery `message_id` of the event of `detail`, replayed by `replay`
/// when given.
fn delivery(message_id: &str, detail: &Value, replay: Option<&str>) -> SqsEvent {
    let mut body = json!({"id": format!("evt-{message_id}"), "time": "2026-12-01T09:00:00Z",
        "source": "jobs", "detail": detail});
    if let Some(name) = replay {
        body["replay-name"] = json!(name);
    }
    let record = json!({"messageId": message_id, "receiptHandle": format!("rh-{message_id}"),
        "body": body.to_string(), "attributes": {"ApproximateReceiveCount": "1"},
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:ingester-queue"});
    serde_json::from_value(json!({ "Records": [record] })).expect("event")
}

/// Runs one delivery through the ingester, then whatever it forwarded through the
/// processor, each message once: the ingester's and the processor's batch item
/// failures.
async fn deliver(
    (ing, proc): &(Ing<'_>, Proc<'_>),
    event: SqsEvent,
    at: DateTime<Utc>,
) -> (Vec<String>, Vec<String>) {
    let ids = |r: aws_lambda_events::sqs::SqsBatchResponse| -> Vec<String> {
        r.batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect()
    };
    let before = ing.jobs_todo.bodies().len();
    let response = ing.handle(event, at).await;
    let bodies = ing.jobs_todo.bodies()[before..].to_vec();
    let mut kept = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let id = format!("todo-{before}-{i}");
        let record = json!({"messageId": id, "receiptHandle": format!("rh-{id}"), "body": body,
            "attributes": {"ApproximateReceiveCount": "1"},
            "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:jobs-todo"});
        let event = serde_json::from_value(json!({ "Records": [record] })).expect("event");
        kept.extend(ids(proc
            .handle(event, at + TimeDelta::seconds(60), at)
            .await));
    }
    (ids(response), kept)
}

/// [`deliver`], with nothing the processor got left in SQS: the ingester's failures.
async fn through(pair: &(Ing<'_>, Proc<'_>), event: SqsEvent, at: DateTime<Utc>) -> Vec<String> {
    let (ingester, processor) = deliver(pair, event, at).await;
    assert!(processor.is_empty(), "{processor:?}");
    ingester
}

/// [`through`] for each event, none left in SQS.
async fn through_all(
    pair: &(Ing<'_>, Proc<'_>),
    events: impl IntoIterator<Item = SqsEvent>,
    at: DateTime<Utc>,
) {
    for event in events {
        let kept = through(pair, event, at).await;
        assert!(kept.is_empty(), "{kept:?}");
    }
}

type End = (String, JobStatus, u32, Option<Replayed>);

/// Every end announced by either stage, (job id, status, attempts, replay), sorted by
/// job id and attempt.
fn ends(pair: &(Ing<'_>, Proc<'_>)) -> Vec<End> {
    let mut notes: Vec<Notification> = pair.0.topic.notifications();
    notes.extend(pair.1.topic.notifications());
    let mut all: Vec<End> = notes
        .into_iter()
        .map(|n| (n.job_id, n.status, n.attempts, n.replay))
        .collect();
    all.sort_by(|a, b| (&a.0, a.2, a.3.is_some()).cmp(&(&b.0, b.2, b.3.is_some())));
    all
}

/// The ends announced since `before` was taken (every end is announced once, so
/// what is new is what `before` lacks).
fn new_ends(pair: &(Ing<'_>, Proc<'_>), before: &[End]) -> Vec<End> {
    let mut left = before.to_vec();
    let mut out = Vec::new();
    for end in ends(pair) {
        match left.iter().position(|e| *e == end) {
            Some(i) => {
                left.remove(i);
            }
            None => out.push(end),
        }
    }
    out
}

fn letters(pair: &(Ing<'_>, Proc<'_>)) -> Vec<DeadLetter> {
    let mut all = pair.0.dead_letters.dead_letters();
    all.extend(pair.1.dead_letters.dead_letters());
    all
}

/// Every dead letter, (job id, status), sorted.
fn letter_ends(pair: &(Ing<'_>, Proc<'_>)) -> Vec<(String, JobStatus)> {
    let mut all: Vec<_> = letters(pair)
        .into_iter()
        .map(|l| (l.job_id, l.status))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn rerun(name: &str) -> Option<Replayed> {
    Some(Replayed {
        name: name.into(),
        rerun: true,
    })
}

async fn order(store: &MemoryStore, name: &str, rerun: Vec<JobStatus>, ids: Option<&[&str]>) {
    let ids = ids.map(|ids| ids.iter().map(|s| (*s).to_owned()).collect());
    let order = ReplayOrder::new(name, rerun, ids).expect("order");
    assert!(store.record_replay(&order, t0()).await.expect("written"));
}

/// The three jobs ended live: one COMPLETED, one FAILED, one REJECTED.
async fn ended_live(pair: &(Ing<'_>, Proc<'_>)) {
    for (m, detail) in [
        ("l1", completes("ok")),
        ("l2", fails("bad")),
        ("l3", rejected("no")),
    ] {
        assert!(through(pair, delivery(m, &detail, None), t0())
            .await
            .is_empty());
    }
    assert_eq!(
        ends(pair),
        [
            ("bad".into(), JobStatus::Failed, 1, None),
            ("no".into(), JobStatus::Rejected, 1, None),
            ("ok".into(), JobStatus::Completed, 1, None),
        ]
    );
}

fn replayed(m: &str, name: &str) -> [SqsEvent; 3] {
    [
        delivery(&format!("{m}-ok"), &completes("ok"), Some(name)),
        delivery(&format!("{m}-bad"), &fails("bad"), Some(name)),
        delivery(&format!("{m}-no"), &rejected("no"), Some(name)),
    ]
}

#[tokio::test]
async fn a_replay_without_rerun_runs_and_ends_no_ended_job_again() {
    let store = MemoryStore::default();
    let pair = stages(&store);
    ended_live(&pair).await;
    let (live, live_letters) = (ends(&pair), letter_ends(&pair));
    // One replay with an order that reruns nothing, one started by hand (no order).
    order(&store, "plain", vec![], None).await;
    for name in ["plain", "by-hand"] {
        through_all(&pair, replayed(name, name), t0() + TimeDelta::minutes(5)).await;
    }
    assert_eq!(ends(&pair), live, "nothing announced again");
    assert_eq!(
        live_letters,
        [
            ("bad".into(), JobStatus::Failed),
            ("no".into(), JobStatus::Rejected)
        ]
    );
    assert_eq!(letter_ends(&pair), live_letters);
    assert!(
        pair.0.jobs_todo.bodies().len() == 2,
        "an ended valid job is not even forwarded again"
    );
}

#[tokio::test]
async fn a_rerun_ends_failed_and_rejected_jobs_once_more_under_a_new_attempt() {
    let store = MemoryStore::default();
    let pair = stages(&store);
    ended_live(&pair).await;
    let live = ends(&pair);
    order(
        &store,
        "fix",
        vec![JobStatus::Failed, JobStatus::Rejected],
        None,
    )
    .await;
    let later = t0() + TimeDelta::minutes(5);
    through_all(&pair, replayed("r", "fix"), later).await;
    assert_eq!(
        new_ends(&pair, &live),
        [
            ("bad".into(), JobStatus::Failed, 2, rerun("fix")),
            ("no".into(), JobStatus::Rejected, 1, rerun("fix")),
        ],
        "the COMPLETED job is not run again; the others end once more"
    );
    // The rerun's letter continues the history of the end it reopened.
    let bad: Vec<_> = letters(&pair)
        .into_iter()
        .filter(|l| l.job_id == "bad")
        .collect();
    assert_eq!(bad.len(), 2);
    let attempts: Vec<u32> = bad[1].errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2]);
    assert_eq!(bad[1].replay, rerun("fix"));

    // Copies of the replayed events (EventBridge delivers at least once), and the very
    // same messages again, change nothing.
    let again = replayed("copy", "fix")
        .into_iter()
        .chain(replayed("r", "fix"));
    let (rerun_ends, rerun_letters) = (ends(&pair), letter_ends(&pair));
    assert_eq!(rerun_letters.len(), 4);
    through_all(&pair, again, later + TimeDelta::minutes(1)).await;
    assert_eq!(ends(&pair), rerun_ends, "one rerun per replay");
    assert_eq!(letter_ends(&pair), rerun_letters);

    // Another replay may run them once more.
    let before = ends(&pair);
    order(&store, "again", vec![JobStatus::Failed], None).await;
    through_all(&pair, replayed("a", "again"), later + TimeDelta::minutes(2)).await;
    assert_eq!(
        new_ends(&pair, &before),
        [("bad".into(), JobStatus::Failed, 3, rerun("again"))]
    );
}

#[tokio::test]
async fn only_the_ordered_job_ids_are_let_through() {
    let store = MemoryStore::default();
    let pair = stages(&store);
    ended_live(&pair).await;
    let live = ends(&pair);
    order(
        &store,
        "one",
        vec![JobStatus::Failed, JobStatus::Rejected],
        Some(&["no"]),
    )
    .await;
    through_all(&pair, replayed("r", "one"), t0() + TimeDelta::minutes(5)).await;
    assert_eq!(
        new_ends(&pair, &live),
        [("no".into(), JobStatus::Rejected, 1, rerun("one"))]
    );
}

#[tokio::test]
async fn a_job_that_never_ended_runs_from_its_replayed_event() {
    // Its live event was lost (an outage longer than SQS keeps messages, say).
    let store = MemoryStore::default();
    let pair = stages(&store);
    let event = delivery("r1", &completes("lost"), Some("outage"));
    assert!(through(&pair, event, t0()).await.is_empty());
    let replay = Some(Replayed {
        name: "outage".into(),
        rerun: false,
    });
    assert_eq!(
        ends(&pair),
        [("lost".into(), JobStatus::Completed, 1, replay)]
    );
}

/// The processor handles the `index`th message the ingester forwarded once more, as
/// SQS delivers a message given back: its failures.
async fn redeliver_forward(
    pair: &(Ing<'_>, Proc<'_>),
    index: usize,
    at: DateTime<Utc>,
) -> Vec<String> {
    let body = pair.0.jobs_todo.bodies()[index].clone();
    let record = json!({"messageId": format!("todo-{index}"), "receiptHandle": "rh", "body": body,
        "attributes": {"ApproximateReceiveCount": "2"},
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:jobs-todo"});
    let event = serde_json::from_value(json!({ "Records": [record] })).expect("event");
    let done = pair.1.handle(event, at + TimeDelta::seconds(60), at).await;
    done.batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect()
}

#[tokio::test]
async fn a_rerun_waits_for_the_end_it_reopens_to_be_announced() {
    let store = MemoryStore::default();
    let pair = stages(&store);
    // The FAILED end is recorded; its notification did not go out.
    pair.1.topic.refuse.lock().expect("lock").push("bad".into());
    let (_, kept) = deliver(&pair, delivery("l2", &fails("bad"), None), t0()).await;
    assert_eq!(kept.len(), 1);
    pair.1.topic.refuse.lock().expect("lock").clear();
    order(&store, "fix", vec![JobStatus::Failed], None).await;
    let later = t0() + TimeDelta::minutes(5);
    let replayed = || delivery("r-bad", &fails("bad"), Some("fix"));
    let failed = through(&pair, replayed(), later).await;
    assert_eq!(failed, ["r-bad"], "kept in SQS, not dropped");
    assert!(ends(&pair).is_empty(), "{:?}", ends(&pair));
    // The end's own message comes back and announces it; then the rerun goes ahead.
    assert!(redeliver_forward(&pair, 0, later).await.is_empty());
    assert!(through(&pair, replayed(), later).await.is_empty());
    assert_eq!(
        ends(&pair),
        [
            ("bad".into(), JobStatus::Failed, 1, None),
            ("bad".into(), JobStatus::Failed, 2, rerun("fix")),
        ]
    );
}

#[tokio::test]
async fn a_replayed_event_refused_now_does_not_end_a_job_that_ran_again() {
    // A job that ran live, and a validator made stricter since: its replayed event
    // would be rejected now.
    let store = MemoryStore::default();
    let mut pair = stages(&store);
    let job = json!({"id": "ran", "job_type": "long_running_job",
        "message": {"task_name": "t", "timeout": 1}});
    assert!(through(&pair, delivery("l", &job, None), t0())
        .await
        .is_empty());
    pair.0.config.max_job_timeout_secs = 0;
    order(
        &store,
        "fix",
        vec![JobStatus::Failed, JobStatus::Rejected],
        None,
    )
    .await;
    let later = t0() + TimeDelta::minutes(5);
    for (m, name) in [("a", "fix"), ("b", "by-hand")] {
        assert!(through(&pair, delivery(m, &job, Some(name)), later)
            .await
            .is_empty());
    }
    assert_eq!(ends(&pair), [("ran".into(), JobStatus::Completed, 1, None)]);
    assert!(letters(&pair).is_empty(), "{:?}", letters(&pair));
}

#[tokio::test]
async fn a_rejection_rerun_that_runs_now_is_not_rerun_again_at_the_processor() {
    // Rejected live by a wrong limit; valid once the limit is fixed, and then FAILED
    // by the processor (too long for what its invocation has left).
    let store = MemoryStore::default();
    let mut pair = stages(&store);
    pair.0.config.max_job_timeout_secs = 10;
    assert!(through(&pair, delivery("l", &fails("j"), None), t0())
        .await
        .is_empty());
    pair.0.config.max_job_timeout_secs = crate::job::DEFAULT_MAX_TIMEOUT_SECS;
    order(
        &store,
        "fix",
        vec![JobStatus::Failed, JobStatus::Rejected],
        None,
    )
    .await;
    let later = t0() + TimeDelta::minutes(5);
    // Two deliveries of the replayed event, one after the other's rerun ended.
    for m in ["r1", "r2"] {
        assert!(through(&pair, delivery(m, &fails("j"), Some("fix")), later)
            .await
            .is_empty());
    }
    assert_eq!(
        ends(&pair),
        [
            ("j".into(), JobStatus::Rejected, 1, None),
            ("j".into(), JobStatus::Failed, 1, rerun("fix")),
        ],
        "one rerun per replay, whichever stage ended the job"
    );
}

#[tokio::test]
async fn a_replayed_job_without_an_id_of_its_own_is_dropped() {
    let store = MemoryStore::default();
    let pair = stages(&store);
    let no_id =
        json!({"job_type": "user_onboarding", "message": {"user_id": "1", "user_name": "Ada"}});
    assert!(through(&pair, delivery("l", &no_id, None), t0())
        .await
        .is_empty());
    let live = ends(&pair);
    assert_eq!(live, [("evt-l".into(), JobStatus::Completed, 1, None)]);
    assert!(through(&pair, delivery("r", &no_id, Some("by-hand")), t0())
        .await
        .is_empty());
    assert_eq!(
        ends(&pair),
        live,
        "not run again under whatever id its event has now"
    );
}

#[tokio::test]
async fn a_rerun_whose_transaction_answer_was_lost_runs_once_from_its_next_delivery() {
    let store = MemoryStore::default();
    let pair = stages(&store);
    ended_live(&pair).await;
    let live = ends(&pair);
    order(&store, "fix", vec![JobStatus::Failed], None).await;
    store.faults.only("TransactWriteItems");
    store.faults.lose_answers(1);
    let later = t0() + TimeDelta::minutes(5);
    let event = || delivery("r-bad", &fails("bad"), Some("fix"));
    assert_eq!(through(&pair, event(), later).await, ["r-bad"]);
    assert_eq!(
        ends(&pair),
        live,
        "the reopening took effect, nothing ran yet"
    );
    // A copy and the message itself come back: the rerun runs once.
    let copy = delivery("r-bad-copy", &fails("bad"), Some("fix"));
    assert!(through(&pair, event(), later).await.is_empty());
    assert!(through(&pair, copy, later).await.is_empty());
    assert_eq!(
        new_ends(&pair, &live),
        [("bad".into(), JobStatus::Failed, 2, rerun("fix"))]
    );
}

#[tokio::test]
async fn a_job_rejected_before_and_valid_now_runs_only_when_asked() {
    let store = MemoryStore::default();
    let mut pair = stages(&store);
    // A validator that was wrong: it refused every long_running_job.
    pair.0.config.max_job_timeout_secs = 0;
    let job = json!({"id": "long", "job_type": "long_running_job",
        "message": {"task_name": "t", "timeout": 1}});
    assert!(through(&pair, delivery("l", &job, None), t0())
        .await
        .is_empty());
    assert_eq!(ends(&pair), [("long".into(), JobStatus::Rejected, 1, None)]);
    // The limit is fixed; the same event, replayed, now passes validation.
    pair.0.config.max_job_timeout_secs = crate::job::DEFAULT_MAX_TIMEOUT_SECS;
    order(&store, "plain", vec![], None).await;
    let later = t0() + TimeDelta::minutes(5);
    assert!(through(&pair, delivery("p", &job, Some("plain")), later)
        .await
        .is_empty());
    assert_eq!(
        ends(&pair),
        [("long".into(), JobStatus::Rejected, 1, None)],
        "not run without --rerun rejected"
    );
    order(&store, "fix", vec![JobStatus::Rejected], None).await;
    let before = ends(&pair);
    assert!(through(&pair, delivery("f", &job, Some("fix")), later)
        .await
        .is_empty());
    assert_eq!(
        new_ends(&pair, &before),
        [("long".into(), JobStatus::Completed, 1, rerun("fix"))]
    );
}
