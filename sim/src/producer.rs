//! Producers and EventBridge.
//!
//! EventBridge accepts an event only if its detail is a JSON object (what
//! `MalformedDetail` refuses never enters the pipeline), keeps every accepted event
//! in the archive, and delivers it to `ingester-queue` at least once: now and then
//! twice, and while the queue refuses, again a minute later (the rule's retry
//! policy). A replay delivers archived events again, each carrying the replay's name.
//!
//! The producers send the generator's own catalogue (valid jobs of every kind, sagas,
//! flaky jobs, keyed jobs, realistic mistakes) plus what the catalogue does not:
//! jobs that always fail, sagas with a failing or crashing step, jobs without an
//! `id`, long jobs near the limit, details nested past the JSON parser's depth limit,
//! and re-sends of a job with a fresh trace context.

use crate::sqs::Sqs;
use crate::world::World;
use crate::Options;
use job_generator::catalog::{next_job, CatalogConfig};
use jobs_core::messages::JobStatus;
use jobs_core::ports::OutgoingMessage;
use jobs_core::Timestamp;
use rand::Rng;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One job a producer sent, with what the pipeline must make of it.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The id the producer knows: the detail's `id`, else the event's.
    pub job_id: String,
    /// Every event id that carried it (re-sends get new ones).
    pub event_ids: Vec<String>,
    pub detail: Value,
    /// The statuses its end may have.
    pub expect: Vec<JobStatus>,
    /// A `long_running_job` the strict setting would reject.
    pub strict_rejects: bool,
}

/// An accepted event in the archive.
#[derive(Debug, Clone)]
pub struct Archived {
    pub at: Timestamp,
    pub event: Value,
}

/// The default bus, its rule to `ingester-queue`, and the archive.
#[derive(Debug)]
pub struct EventBridge {
    world: Arc<World>,
    sqs: Arc<Sqs>,
    pub archive: Mutex<Vec<Archived>>,
    /// Deliveries due: (when, body).
    pending: Mutex<Vec<(Timestamp, String)>>,
    events: Mutex<u64>,
}

impl EventBridge {
    pub fn new(world: Arc<World>, sqs: Arc<Sqs>) -> EventBridge {
        EventBridge {
            world,
            sqs,
            archive: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            events: Mutex::new(0),
        }
    }

    /// `PutEvents` of one entry: the event id if accepted.
    pub fn put(&self, detail: &Value) -> Option<String> {
        if !detail.is_object() {
            return None;
        }
        let id = {
            let mut n = self.events.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            format!("evt-{:05}", *n)
        };
        let now = self.world.now();
        let event = json!({
            "version": "0",
            "id": id,
            "detail-type": "JobEvent",
            "source": "jobs",
            "account": "000000000000",
            "time": jobs_core::messages::rfc3339::format(&now),
            "region": "us-east-1",
            "resources": [],
            "detail": detail,
        });
        self.archive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Archived {
                at: now,
                event: event.clone(),
            });
        self.schedule(event.to_string(), now);
        if self.world.chance(self.world.rates.eb_twice) {
            let later =
                now + chrono::TimeDelta::milliseconds(self.world.draw(|r| r.random_range(0..5000)));
            self.world
                .note(format!("eventbridge will deliver {id} twice"));
            self.schedule(event.to_string(), later);
        }
        Some(id)
    }

    /// Delivers an archived event again as replay `name`.
    pub fn replay(&self, event: &Value, name: &str) {
        let mut event = event.clone();
        event["replay-name"] = json!(name);
        self.schedule(event.to_string(), self.world.now());
    }

    fn schedule(&self, body: String, at: Timestamp) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, body));
    }

    /// The rule's target delivery, until the schedule stops: due events go to
    /// `ingester-queue`; while that queue is out, a minute later.
    pub async fn deliver_all(&self) {
        while !self.world.stopped() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.world.now();
            let due: Vec<(Timestamp, String)> = {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                let (due, later) = pending.drain(..).partition(|(at, _)| *at <= now);
                *pending = later;
                due
            };
            for (_, body) in due {
                if self.world.out("sqs:ingester-queue") {
                    self.schedule(body, now + chrono::TimeDelta::seconds(60));
                    continue;
                }
                let message = OutgoingMessage {
                    body,
                    attributes: vec![],
                    delay_seconds: 0,
                    group: None,
                };
                self.sqs.enqueue("ingester-queue", &message);
            }
        }
    }
}

/// Sends `options.jobs` jobs at random moments of the fault window, and some of them
/// again; what was sent, for the checker.
pub async fn produce(world: &World, eb: &EventBridge, options: &Options) -> Vec<Sent> {
    let config = CatalogConfig {
        malformed_ratio: world.draw(|r| r.random_range(0.0..0.3)),
        max_job_seconds: 600,
        flaky_ratio: world.draw(|r| r.random_range(0.0..0.3)),
        saga_ratio: world.draw(|r| r.random_range(0.0..0.4)),
        keys: world.draw(|r| {
            if r.random_bool(0.4) {
                r.random_range(1..4)
            } else {
                0
            }
        }),
    };
    world.note(format!("plan: catalogue {config:?}"));
    let window = options.faults_for.as_millis() as u64;
    let mut plan: Vec<(u64, usize)> = (0..options.jobs)
        .map(|i| (world.draw(|r| r.random_range(0..window * 2 / 3)), i))
        .collect();
    plan.sort_unstable();
    let mut sent: Vec<Sent> = Vec::new();
    let mut resends: Vec<(u64, usize)> = Vec::new();
    let started = tokio::time::Instant::now();
    for (at, _) in plan {
        tokio::time::sleep_until(started + Duration::from_millis(at)).await;
        let job = draw_job(world, &config);
        let Some(event_id) = eb.put(&job.detail) else {
            continue;
        };
        let job_id = job.id.clone().unwrap_or_else(|| event_id.clone());
        world.note(format!(
            "producer sent {job_id} as {event_id}: {}",
            job.detail
        ));
        if job.id.is_some() && job.resend && world.chance(0.15) {
            let when = world.draw(|r| r.random_range(at..window));
            resends.push((when, sent.len()));
        }
        sent.push(Sent {
            job_id,
            event_ids: vec![event_id],
            detail: job.detail,
            expect: job.expect,
            strict_rejects: job.strict_rejects,
        });
    }
    resends.sort_unstable();
    for (at, i) in resends {
        tokio::time::sleep_until(started + Duration::from_millis(at)).await;
        let mut detail = sent[i].detail.clone();
        detail["trace_context"] = json!({"traceparent": traceparent(world)});
        if let Some(event_id) = eb.put(&detail) {
            world.note(format!("producer re-sent {} as {event_id}", sent[i].job_id));
            sent[i].event_ids.push(event_id);
        }
    }
    sent
}

/// A job to send: its detail, its own id if it has one, and its oracle.
struct Drawn {
    detail: Value,
    id: Option<String>,
    expect: Vec<JobStatus>,
    strict_rejects: bool,
    /// Whether a producer may send it again (only valid jobs are re-sent).
    resend: bool,
}

fn draw_job(world: &World, config: &CatalogConfig) -> Drawn {
    let planned = world.draw(|r| next_job(r, config));
    let mut detail = planned.detail;
    let extra = world.draw(|r| r.random_range(0..100));
    let rejected = planned.expected_rejection.is_some();
    if !rejected {
        detail["trace_context"] = json!({"traceparent": traceparent(world)});
        match extra {
            0..=5 => detail["fault"] = json!({"fail_always": true}),
            6..=8 => detail["fault"] = json!({"fail_attempts": 3}),
            9..=14 if detail["job_type"] == "saga" => {
                let steps = detail["message"]["steps"].as_array().map_or(1, Vec::len);
                let step = world.draw(|r| r.random_range(0..steps));
                detail["fault"] = match world.draw(|r| r.random_range(0..3)) {
                    0 => json!({"step": step, "fail_always": true}),
                    1 => json!({"step": step, "fail_attempts": 2}),
                    _ => json!({"step": step, "crash": true}),
                };
            }
            15..=20 => {
                let seconds = world.draw(|r| r.random_range(200..=800));
                detail = json!({
                    "id": detail["id"],
                    "job_type": "long_running_job",
                    "message": {"task_name": "migration", "timeout": seconds},
                    "trace_context": detail["trace_context"],
                });
            }
            21..=24 => {
                if let Value::Object(o) = &mut detail {
                    o.remove("id");
                }
            }
            _ => {}
        }
    }
    if extra == 99 {
        // Valid JSON that EventBridge accepts, nested past the parser's depth limit.
        let mut deep = json!("bottom");
        for _ in 0..200 {
            deep = json!([deep]);
        }
        detail = json!({"id": detail["id"], "job_type": "report_generation",
            "message": {"report_name": "deep", "filters": deep}});
    }
    let expect = oracle(&detail, rejected || extra == 99);
    let strict_rejects = detail["job_type"] == "long_running_job"
        && detail["message"]["timeout"]
            .as_u64()
            .is_some_and(|t| t > crate::STRICT_JOB_TIMEOUT);
    let id = detail.get("id").and_then(Value::as_str).map(str::to_owned);
    Drawn {
        resend: !rejected && extra != 99,
        detail,
        id,
        expect,
        strict_rejects,
    }
}

/// The end a job must have, from the job and its fault plan alone.
fn oracle(detail: &Value, rejected: bool) -> Vec<JobStatus> {
    if rejected {
        return vec![JobStatus::Rejected];
    }
    let fault = &detail["fault"];
    let fails = fault["fail_always"] == json!(true)
        || fault["fail_attempts"]
            .as_u64()
            .is_some_and(|n| n >= u64::from(jobs_core::retry::RetryPolicy::default().max_attempts));
    vec![if fails {
        JobStatus::Failed
    } else {
        JobStatus::Completed
    }]
}

fn traceparent(world: &World) -> String {
    let (trace, span): (u128, u64) = world.draw(|r| (r.random(), r.random()));
    format!("00-{:032x}-{:016x}-01", trace | 1, span | 1)
}
