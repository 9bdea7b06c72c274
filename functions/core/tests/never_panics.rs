//! Property tests: no input makes parsing or the ingester panic, and every rejection
//! explains itself. Arbitrary JSON values and arbitrary SQS bodies are tried.

use jobs_core::ingester::{Ingester, IngesterConfig};
use jobs_core::job::parse_job;
use jobs_core::kinds::Registry;
use jobs_core::messages::{EnrichedJob, EventEnvelope};
use jobs_core::processor::{Processor, ProcessorConfig};
use jobs_core::retry::RetryPolicy;
use jobs_core::store::MemoryStore;
use jobs_core::testing::{MemoryQueue, MemoryTopic};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::time::Duration;

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,8}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Details shaped like jobs, with arbitrary field values: these reach the deep checks.
fn job_like() -> impl Strategy<Value = Value> {
    let job_type = prop_oneof![
        prop::sample::select(Registry::builtin().names().collect::<Vec<_>>())
            .prop_map(|t| json!(t)),
        any_json(),
    ];
    let fields = [
        "report_name",
        "filters",
        "target_table",
        "retention",
        "user_id",
        "user_name",
        "task_name",
        "timeout",
    ];
    let message = prop::collection::vec((prop::sample::select(fields.to_vec()), any_json()), 0..6)
        .prop_map(|kv| {
            Value::Object(
                kv.into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect::<Map<_, _>>(),
            )
        });
    (
        job_type,
        prop::option::of(message),
        prop::option::of(any_json()),
    )
        .prop_map(|(t, m, id)| {
            let mut o = Map::new();
            o.insert("job_type".into(), t);
            if let Some(m) = m {
                o.insert("message".into(), m);
            }
            if let Some(id) = id {
                o.insert("id".into(), id);
            }
            Value::Object(o)
        })
}

/// Records that repeat an earlier one: the same usable id with the same content. The
/// ingester ends those once; every other record has its own end.
fn repeats(details: &[Value]) -> usize {
    let mut seen = HashSet::new();
    details
        .iter()
        .filter_map(|d| {
            let id = d.get("id")?.as_str()?;
            let usable = (1..=jobs_core::job::MAX_ID_CHARS).contains(&id.chars().count())
                && !id.chars().any(char::is_control);
            usable.then(|| (id.to_owned(), d.to_string()))
        })
        .filter(|key| !seen.insert(key.clone()))
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn parsing_any_detail_gives_a_job_or_a_reason(detail in prop_oneof![any_json(), job_like()]) {
        if let Err(r) = parse_job(&detail, None) {
            prop_assert!(!r.message.is_empty());
        }
    }

    #[test]
    fn any_body_is_read_or_refused_without_panicking(body in ".{0,200}") {
        let _ = EventEnvelope::from_body(&body);
        if let Err(e) = EnrichedJob::from_body(&body) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn the_ingester_ends_every_record_somewhere(details in prop::collection::vec(prop_oneof![any_json(), job_like()], 1..12)) {
        let records: Vec<Value> = details
            .iter()
            .enumerate()
            .map(|(i, d)| json!({"messageId": format!("m{i}"), "body": json!({"id": format!("e{i}"), "detail": d}).to_string()}))
            .collect();
        let event = serde_json::from_value(json!({"Records": records})).expect("event");
        let ingester = Ingester {
            source: MemoryQueue::default(),
            jobs_todo: MemoryQueue::default(),
            jobs_todo_fifo: MemoryQueue::fifo(),
            dead_letters: MemoryQueue::default(),
            topic: MemoryTopic::default(),
            store: MemoryStore::default(),
            config: IngesterConfig {
                max_receive_count: 5,
                max_job_timeout_secs: jobs_core::job::DEFAULT_MAX_TIMEOUT_SECS,
                kinds: jobs_core::kinds::Registry::builtin(),
            },
            telemetry: Default::default(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let response = runtime.block_on(ingester.handle(event, chrono::Utc::now()));
        prop_assert!(response.batch_item_failures.is_empty());
        // Conservation: each record is forwarded or dead-lettered (and announced), never both.
        let forwarded = ingester.jobs_todo.jobs().len();
        let dead = ingester.dead_letters.dead_letters();
        prop_assert_eq!(forwarded + dead.len(), details.len() - repeats(&details));
        prop_assert_eq!(ingester.topic.notifications().len(), dead.len());
        prop_assert!(dead.iter().all(|d| !d.errors.is_empty() && !d.errors[0].message.is_empty()));
    }

    #[test]
    fn the_processor_ends_every_record_once(jobs in prop::collection::vec(enriched_like(), 1..12)) {
        let records: Vec<Value> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| {
                let mut body = j.clone();
                body["job_id"] = json!(format!("j{i}"));
                json!({"messageId": format!("m{i}"), "body": body.to_string()})
            })
            .collect();
        let event = serde_json::from_value(json!({"Records": records})).expect("event");
        let processor = Processor {
            jobs_todo: MemoryQueue::default(),
            jobs_todo_fifo: MemoryQueue::fifo(),
            dead_letters: MemoryQueue::default(),
            topic: MemoryTopic::default(),
            store: MemoryStore::default(),
            config: ProcessorConfig {
                deadline_margin: Duration::from_secs(3),
                retry: RetryPolicy::default(),
                fault_injection: false,
                kinds: jobs_core::kinds::Registry::builtin(),
            },
            telemetry: Default::default(),
        };
        // Paused time: a long job's sleep passes at once.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let now = chrono::Utc::now();
        let deadline = now + chrono::Duration::seconds(60);
        let response = runtime.block_on(processor.handle(event, deadline, now));
        prop_assert!(response.batch_item_failures.is_empty());
        // Without fault injection nothing is retried: each record ends once, announced.
        prop_assert!(processor.jobs_todo.bodies().is_empty());
        let mut ended: Vec<String> = processor.topic.notifications().into_iter().map(|n| n.job_id).collect();
        ended.sort();
        let mut expected: Vec<String> = (0..jobs.len()).map(|i| format!("j{i}")).collect();
        expected.sort();
        prop_assert_eq!(ended, expected);
        let dead = processor.dead_letters.dead_letters();
        prop_assert!(dead.iter().all(|d| d.errors.last().is_some_and(|e| !matches!(e.code, jobs_core::messages::ErrorCode::Other(_)) && !e.message.is_empty())));
    }
}

/// Bodies shaped like enriched jobs, with arbitrary values where the processor reads.
fn enriched_like() -> impl Strategy<Value = Value> {
    let attempt = prop_oneof![(1u32..6).prop_map(|a| json!(a)), any_json()];
    let errors = prop_oneof![Just(json!([])), any_json()];
    (
        prop_oneof![job_like(), any_json()],
        attempt,
        errors,
        prop::option::of(any_json()),
    )
        .prop_map(|(job, attempt, errors, job_type)| {
            let job_type =
                job_type.unwrap_or_else(|| job.get("job_type").cloned().unwrap_or(Value::Null));
            json!({"job_type": job_type, "status": "NEW", "received_at": "2026-11-22T10:00:00Z",
                "attempt": attempt, "errors": errors, "job": job})
        })
}
