//! Per-job CPU cost of the pure code on each hop, for `make bench`: what the ingester
//! and the processor spend on one job besides waiting for AWS.
//!
//! `cargo bench -p jobs-core --bench per_job`; `bench/run.py` reads the estimates.

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion};
use jobs_core::job::{parse_job, parse_job_with};
use jobs_core::kinds::Registry;
use jobs_core::messages::{EnrichedJob, EventEnvelope, JobStatus, Notification};
use jobs_core::record::enriched_message;
use jobs_core::store::Fingerprints;
use jobs_core::telemetry::{Invocation, Telemetry, AWS_SQS};
use jobs_core::testing::exporters::KeptMetrics;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::hint::black_box;
use tracing_subscriber::layer::SubscriberExt as _;

/// An SQS body as the rule delivers it: an EventBridge event around a typical job.
const BODY: &str = r#"{"version":"0","id":"6a7e8feb-b491-4cf7-a9f1-bf3703467718","detail-type":"JobEvent","source":"jobs","account":"000000000000","time":"2026-11-23T10:00:00Z","region":"us-east-1","resources":[],"detail":{"id":"job-5f0c2a9e41d7b3c8","job_type":"report_generation","message":{"report_name":"Quarterly Sales","filters":"region=EU, tier=gold, year=2026"},"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}"#;

fn enriched() -> EnrichedJob {
    let envelope = EventEnvelope::from_body(BODY).expect("a valid body");
    let job = parse_job(&envelope.detail, Some(BODY.len())).expect("a valid job");
    EnrichedJob {
        job_id: job.id.unwrap_or_default(),
        job_type: job.spec.job_type().into(),
        status: JobStatus::New,
        received_at: Utc::now(),
        event_time: envelope.time,
        attempt: 1,
        trace_context: None,
        errors: Vec::new(),
        replay: None,
        job: envelope.detail,
    }
}

fn per_job(c: &mut Criterion) {
    c.bench_function("ingester: read and validate a job", |b| {
        b.iter(|| {
            let envelope = EventEnvelope::from_body(black_box(BODY)).expect("valid");
            black_box(parse_job(&envelope.detail, Some(BODY.len())).expect("valid"))
        })
    });
    let job = enriched();
    c.bench_function("ingester: build the enriched message", |b| {
        b.iter(|| black_box(enriched_message(black_box(&job))))
    });
    let body = enriched_message(&job).body;
    let kinds = Registry::builtin();
    c.bench_function("processor: read and re-validate it", |b| {
        b.iter(|| {
            let job = EnrichedJob::from_body_in(black_box(&body), &kinds).expect("valid");
            black_box(parse_job_with(&kinds, &job.job, None).expect("valid"))
        })
    });
    // The ingester claims only rejections, so a valid job is fingerprinted once, by
    // the processor's claim (both formats: `Fingerprints::of`).
    c.bench_function("processor: fingerprints for the claim", |b| {
        b.iter(|| black_box(Fingerprints::of(black_box(&job.job))))
    });
    let result = serde_json::json!({"report": "Quarterly Sales", "rows": 4711, "checksum": "00f067aa0ba902b7"});
    c.bench_function("processor: build the notification", |b| {
        b.iter(|| {
            let n = Notification::completed(&job, result.clone(), Utc::now());
            black_box(serde_json::to_string(&n).expect("serializes"))
        })
    });
}

/// Spans that are dropped once exported, so that a long run measures the export
/// path, not a growing buffer.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

/// A processed job's four spans (its invocation's, `process`, `execute`, `send`),
/// as `tracing` spans through the span layer into the pipeline's buffer, with a
/// flush every 256 jobs as a warm function's invocations would do.
fn spans_per_job(c: &mut Criterion) {
    let telemetry = Telemetry::with_exporters("bench", Discard, KeptMetrics::default());
    let subscriber = tracing_subscriber::registry().with(telemetry.span_layer());
    let _installed = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let instruments = telemetry.instruments();
    let invocation = Invocation::default();
    c.bench_function(
        "processor: a job's spans through tracing-opentelemetry",
        |b| {
            b.iter_custom(|iters| {
                let started = std::time::Instant::now();
                for i in 0..iters {
                    let batch = instruments.batch_span(
                        "processor",
                        "jobs-todo",
                        &invocation,
                        Vec::new(),
                        1,
                    );
                    let consumer =
                        instruments.consumer_span("jobs-todo", "m-1", None, &batch, &invocation);
                    let execute = instruments.execute_span("job-1", "report_generation", &consumer);
                    let send =
                        instruments.producer_span(AWS_SQS, "dead-letter-queue", consumer.context());
                    for span in [&send, &execute, &consumer, &batch] {
                        span.end();
                    }
                    if i % 256 == 255 {
                        runtime.block_on(telemetry.flush());
                    }
                }
                started.elapsed()
            })
        },
    );
}

criterion_group!(benches, per_job, spans_per_job);
criterion_main!(benches);
