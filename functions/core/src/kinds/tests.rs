//! Helpers for the kinds' tests, and the proof that a kind is one file: a fifth kind
//! ([`fifth`]) validated, run and sampled with nothing else written for it.

use super::{Draw, Registry};
use crate::ingester::{Ingester, IngesterConfig};
use crate::job::{parse_job, parse_job_with, Job, Rejection};
use crate::messages::{ErrorCode, JobStatus};
use crate::processor::{Processor, ProcessorConfig};
use crate::retry::RetryPolicy;
use crate::store::MemoryStore;
use crate::telemetry::{Instruments, Telemetry};
use crate::testing::exporters::{KeptMetrics, KeptSpans};
use crate::testing::{MemoryQueue, MemoryTopic};
use aws_lambda_events::sqs::SqsEvent;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Duration;

mod fifth;

/// The instant the kinds' tests run at.
pub(crate) fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
        .expect("valid")
        .with_timezone(&Utc)
}

/// `detail` validated against the built-in kinds.
pub(crate) fn parse(detail: Value) -> Result<Job, Rejection> {
    parse_job(&detail, None)
}

/// A registry of the fifth kind alone, as a deployment that knew only it would have.
fn fifth_only() -> Registry {
    Registry::of(vec![&fifth::WordCount])
}

/// A reproducible [`Draw`]: a linear congruential generator.
struct Lcg(u64);

impl Draw for Lcg {
    fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        low + (self.0 >> 33) % (high.saturating_sub(low) + 1)
    }
}

/// An `ingester-queue` event carrying `details` as EventBridge events `evt-<i>`.
fn ingester_event(details: &[Value]) -> SqsEvent {
    let records: Vec<Value> = details
        .iter()
        .enumerate()
        .map(|(i, detail)| {
            let body = json!({"id": format!("evt-{i}"), "source": "jobs", "detail": detail});
            json!({"messageId": format!("m-{i}"), "receiptHandle": format!("rh-{i}"),
                   "body": body.to_string(), "attributes": {"ApproximateReceiveCount": "1"},
                   "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:ingester-queue"})
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).expect("event")
}

fn ingester(kinds: Registry) -> Ingester<MemoryQueue, MemoryTopic, MemoryStore> {
    Ingester {
        source: MemoryQueue::default(),
        jobs_todo: MemoryQueue::default(),
        jobs_todo_fifo: MemoryQueue::fifo(),
        dead_letters: MemoryQueue::default(),
        topic: MemoryTopic::default(),
        store: MemoryStore::default(),
        config: IngesterConfig {
            max_receive_count: 5,
            max_job_timeout_secs: crate::job::DEFAULT_MAX_TIMEOUT_SECS,
            kinds,
        },
        telemetry: Instruments::default(),
    }
}

fn processor(kinds: Registry) -> Processor<MemoryQueue, MemoryTopic, MemoryStore> {
    Processor {
        jobs_todo: MemoryQueue::default(),
        jobs_todo_fifo: MemoryQueue::fifo(),
        dead_letters: MemoryQueue::default(),
        topic: MemoryTopic::default(),
        store: MemoryStore::default(),
        config: ProcessorConfig {
            deadline_margin: Duration::from_secs(3),
            retry: RetryPolicy::default(),
            fault_injection: true,
            kinds,
        },
        telemetry: Instruments::default(),
    }
}

#[tokio::test]
async fn a_fifth_kind_is_validated_by_the_ingester_naming_the_field() {
    let ing = ingester(fifth_only());
    let details = [
        json!({"job_type": "word_count", "message": {"text": "a b a", "top": 1}}),
        json!({"job_type": "word_count", "message": {"text": "a b a", "top": 0}}),
        json!({"job_type": "word_count", "message": {"top": 1}}),
        // Built in, but not in this registry.
        json!({"job_type": "data_cleanup", "message": {"target_table": "t", "retention": 1}}),
    ];
    ing.handle(ingester_event(&details), now()).await;
    let forwarded = ing.jobs_todo.jobs();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].job_type.as_str(), "word_count");
    let errors: Vec<_> = ing
        .dead_letters
        .dead_letters()
        .into_iter()
        .map(|d| {
            (
                d.job_id,
                d.errors[0].code.clone(),
                d.errors[0].field.clone(),
                d.errors[0].message.clone(),
            )
        })
        .collect();
    let field = |f: &str| Some(f.to_owned());
    assert_eq!(
        errors,
        [
            (
                "evt-1".into(),
                ErrorCode::OutOfRange,
                field("message.top"),
                "message.top must be greater than 0, got 0".into()
            ),
            (
                "evt-2".into(),
                ErrorCode::MissingField,
                field("message.text"),
                "message.text is required for word_count".into()
            ),
            (
                "evt-3".into(),
                ErrorCode::UnknownJobType,
                field("job_type"),
                "unknown job_type \"data_cleanup\"; expected one of word_count".into()
            ),
        ]
    );
}

#[tokio::test]
async fn a_fifth_kind_is_run_by_the_processor_and_its_faults_honoured() {
    let ing = ingester(fifth_only());
    let details = [
        json!({"job_type": "word_count", "message": {"text": "b a b c", "top": 2}}),
        json!({"job_type": "word_count", "message": {"text": "x", "top": 1},
               "fault": {"fail_always": true}}),
    ];
    ing.handle(ingester_event(&details), now()).await;
    let bodies: Vec<(String, String)> = ing
        .jobs_todo
        .bodies()
        .into_iter()
        .enumerate()
        .map(|(i, body)| (format!("t-{i}"), body))
        .collect();
    let proc = processor(fifth_only());
    let deadline = now() + chrono::Duration::seconds(60);
    proc.handle(todo_event(&bodies), deadline, now()).await;
    let ended = proc.topic.notifications();
    assert_eq!(ended.len(), 1, "the faulty job is retried, not ended");
    assert_eq!(ended[0].status, JobStatus::Completed);
    assert_eq!(ended[0].job_type.as_deref(), Some("word_count"));
    assert_eq!(
        ended[0].result,
        Some(json!({"words": 4, "top": ["b", "a"]}))
    );
    let retried = proc.jobs_todo.jobs();
    assert_eq!(retried.len(), 1);
    assert_eq!(
        (retried[0].attempt, retried[0].errors[0].code.clone()),
        (2, ErrorCode::InjectedFault)
    );

    // The built-in processor does not know the kind: the message is unreadable to it.
    let builtin = processor(Registry::builtin());
    builtin
        .handle(todo_event(&bodies[..1]), deadline, now())
        .await;
    let dead = builtin.dead_letters.dead_letters();
    assert_eq!(dead[0].errors[0].code, ErrorCode::InvalidMessage);
    assert!(
        dead[0].errors[0]
            .message
            .contains("unknown job_type `word_count`"),
        "{}",
        dead[0].errors[0].message
    );
}

#[test]
fn a_fifth_kind_is_sampled_for_the_generator() {
    let kinds = fifth_only();
    let mut draw = Lcg(7);
    for _ in 0..50 {
        let detail = kinds.sample(&mut draw, 5).expect("a kind to sample");
        assert_eq!(detail["job_type"], "word_count");
        assert!(parse_job_with(&kinds, &detail, None).is_ok(), "{detail}");
        let bad = kinds.sample_malformed(&mut draw);
        let r = parse_job_with(&kinds, &bad.detail, None).expect_err("malformed");
        assert_eq!(r.code, bad.code, "{}", bad.detail);
    }
    let malformed: Vec<Value> = (0..200)
        .map(|_| kinds.sample_malformed(&mut draw).detail)
        .collect();
    assert!(
        malformed.iter().any(|d| d["job_type"] == "word_count"),
        "the kind's own malformed job is drawn"
    );
}

/// A `jobs-todo` event carrying the given (message id, body) pairs.
/// The kind's own `#[tracing::instrument]` span reaches the exporter as a child of
/// the job's `execute` span, through the processor as it runs in the functions.
#[tokio::test(flavor = "current_thread")]
async fn a_fifth_kinds_own_span_is_a_child_of_its_execute_span() {
    let spans = KeptSpans::default();
    let telemetry = Telemetry::with_exporters("test", spans.clone(), KeptMetrics::default());
    let _layer = crate::telemetry::tests_support::traced(&telemetry);
    let ing = ingester(fifth_only());
    let detail = json!({"job_type": "word_count", "message": {"text": "b a b", "top": 1}});
    ing.handle(ingester_event(&[detail]), now()).await;
    let bodies = vec![("t-0".to_owned(), ing.jobs_todo.bodies().remove(0))];
    let proc = Processor {
        telemetry: telemetry.instruments(),
        ..processor(fifth_only())
    };
    let deadline = now() + chrono::Duration::seconds(60);
    proc.handle(todo_event(&bodies), deadline, now()).await;
    telemetry.flush().await;

    let exported = spans.spans();
    let find = |name: &str| {
        exported.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no {name:?} in {:?}",
                exported.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let (execute, tally) = (find("execute word_count"), find("tally"));
    assert_eq!(tally.parent_span_id, execute.span_context.span_id());
    assert_eq!(
        tally.span_context.trace_id(),
        execute.span_context.trace_id()
    );
    assert_eq!(
        execute.parent_span_id,
        find("process jobs-todo").span_context.span_id()
    );
}

fn todo_event(messages: &[(String, String)]) -> SqsEvent {
    let records: Vec<Value> = messages
        .iter()
        .map(|(id, body)| {
            json!({"messageId": id, "receiptHandle": format!("rh-{id}"), "body": body,
                   "attributes": {"ApproximateReceiveCount": "1"},
                   "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:jobs-todo"})
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).expect("event")
}
