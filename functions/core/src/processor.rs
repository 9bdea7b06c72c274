//! The processor: reads enriched jobs from `jobs-todo`, executes each one within the
//! invocation's deadline, announces `COMPLETED` jobs and dead-letters `FAILED` ones
//! with the error appended to their history.
//!
//! The records of a batch run concurrently, so a long job does not eat the deadline of
//! the others; each gets the whole remaining budget.

use crate::execute::execute;
use crate::job::parse_job;
use crate::messages::{
    job_type_attribute, DeadLetter, EnrichedJob, ErrorEntry, JobStatus, Notification, Stage,
};
use crate::ports::{MessageQueue, Topic};
use crate::record::{deliver_dead_letters, publish_all, raw_body, RecordMeta};
use crate::telemetry::instruments_prelude::*;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::Duration;
use tracing::{info, warn, Instrument};

/// Settings that change the processor's decisions.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// Time kept back from the Lambda deadline to dead-letter and announce a job that
    /// could not finish.
    pub deadline_margin: Duration,
}

/// The processor's downstream resources.
#[derive(Debug)]
pub struct Processor<Q, T> {
    pub dead_letters: Q,
    pub topic: T,
    pub config: ProcessorConfig,
    /// Spans and metrics (no-ops by default).
    pub telemetry: Instruments,
}

enum Outcome {
    Completed(Notification),
    Failed(DeadLetter),
}

impl<Q: MessageQueue, T: Topic> Processor<Q, T> {
    /// Handles a batch outside any Lambda invocation (tests, tools). `deadline` is
    /// when the invocation is cut off.
    pub async fn handle(
        &self,
        event: SqsEvent,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> SqsBatchResponse {
        self.handle_invocation(event, deadline, now, &Invocation::default())
            .await
    }

    /// Handles a batch: per record a `process <queue>` span continuing the job's
    /// trace, with an `execute <job_type>` child around the work.
    pub async fn handle_invocation(
        &self,
        event: SqsEvent,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
        invocation: &Invocation,
    ) -> SqsBatchResponse {
        let tel = &self.telemetry;
        let budget = (deadline - now)
            .to_std()
            .unwrap_or_default()
            .saturating_sub(self.config.deadline_margin);
        let queue = crate::ingester::source_queue(&event);
        let parents: Vec<_> = event.records.iter().map(incoming_context).collect();
        let links = parents
            .iter()
            .filter_map(|p| p.as_ref().map(|cx| cx.span().span_context().clone()))
            .collect();
        let batch = tel.batch_span("processor", &queue, invocation, links, parents.len());
        // Each record announces its own outcome as soon as it is known, so a quick
        // job is not held back by a long one in the same batch.
        let runs = event.records.iter().zip(&parents).map(|(record, parent)| {
            let meta = RecordMeta::of(record);
            let log = meta.log.clone();
            let consumer = tel.consumer_span(
                &queue,
                &meta.message_id,
                parent.as_ref(),
                &batch,
                invocation,
            );
            async move {
                let (outcome, event_time) =
                    process(record, &meta, budget, now, tel, &consumer).await;
                let (job_type, status, failed) = match outcome {
                    Outcome::Completed(n) => {
                        let job_type = n.job_type.clone();
                        consumer.set_status(JobStatus::Completed);
                        let failed = publish_all(&self.topic, vec![(meta, n)]).await;
                        (job_type, JobStatus::Completed, failed)
                    }
                    Outcome::Failed(mut dl) => {
                        let last = dl
                            .errors
                            .last()
                            .map(|e| (e.code.clone(), e.message.clone()));
                        let (code, message) = last.unwrap_or_default();
                        consumer.fail(&code, &message);
                        consumer.set_status(JobStatus::Failed);
                        if let Some(tc) = propagation::to_trace_context(consumer.context()) {
                            dl.trace_context = Some(tc);
                        }
                        let job_type = dl.job_type.clone();
                        let failed = deliver_dead_letters(
                            &self.dead_letters,
                            &self.topic,
                            vec![(meta, dl)],
                            Utc::now(),
                        )
                        .await;
                        (job_type, JobStatus::Failed, failed)
                    }
                };
                if failed.is_empty() {
                    tel.record_end_state(
                        job_type_attribute(job_type.as_deref()),
                        status,
                        event_time.as_deref(),
                        Utc::now(),
                    );
                } else {
                    consumer.set_attribute("job.end_state_pending", true);
                }
                consumer.end();
                failed
            }
            .instrument(log)
        });
        let mut response = SqsBatchResponse::default();
        for id in futures_util::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
        {
            response.add_failure(id);
        }
        batch.end();
        response
    }
}

/// The context a `jobs-todo` record continues: its `traceparent` attribute or X-Ray
/// header, else the trace context in the enriched job itself.
fn incoming_context(record: &SqsMessage) -> Option<opentelemetry::Context> {
    propagation::from_record(record).or_else(|| {
        let job = EnrichedJob::from_body(record.body.as_deref()?).ok()?;
        propagation::from_trace_context(job.trace_context.as_ref()?)
    })
}

/// Runs one record; returns its outcome and the job's event time (for latency).
async fn process(
    record: &SqsMessage,
    meta: &RecordMeta,
    budget: Duration,
    now: DateTime<Utc>,
    tel: &Instruments,
    consumer: &JobSpan,
) -> (Outcome, Option<String>) {
    let body = record.body.as_deref().unwrap_or_default();
    let job = match EnrichedJob::from_body(body) {
        Ok(job) => job,
        Err(e) => {
            let dl = unreadable(body, meta, &e.to_string());
            consumer.set_job(&dl.job_id, dl.job_type.as_deref());
            meta.identify(&dl.job_id, consumer.trace_id().as_deref());
            warn!(message_id = %meta.message_id, error = %e, "unreadable message on jobs-todo");
            return (Outcome::Failed(dl), None);
        }
    };
    consumer.set_job(&job.job_id, Some(job.job_type.as_str()));
    meta.identify(&job.job_id, consumer.trace_id().as_deref());
    let event_time = job.event_time.clone();
    (
        run(&job, meta, budget, now, tel, consumer).await,
        event_time,
    )
}

async fn run(
    job: &EnrichedJob,
    meta: &RecordMeta,
    budget: Duration,
    now: DateTime<Utc>,
    tel: &Instruments,
    consumer: &JobSpan,
) -> Outcome {
    let attempts = job
        .attempt
        .saturating_add(meta.receive_count.saturating_sub(1));
    let failure = |code: &str, message: String, field: Option<String>| {
        let mut errors = job.errors.clone();
        errors.push(ErrorEntry {
            stage: Stage::Processor,
            code: code.to_owned(),
            message,
            field,
            attempt: attempts,
            timestamp: Utc::now(),
        });
        DeadLetter {
            job_id: job.job_id.clone(),
            job_type: Some(job.job_type.as_str().to_owned()),
            status: JobStatus::Failed,
            stage: Stage::Processor,
            attempts,
            errors,
            trace_context: job.trace_context.clone(),
            job: job.job.clone(),
        }
    };

    // The ingester validated the job; validating again guards against a message that
    // was altered or hand-written onto the queue.
    let spec = match parse_job(&job.job, None) {
        Ok(valid) if valid.spec.job_type() == job.job_type => valid.spec,
        Ok(valid) => {
            let msg = format!(
                "job_type is {} but the envelope says {}",
                valid.spec.job_type(),
                job.job_type
            );
            return Outcome::Failed(failure("invalid_message", msg, Some("job_type".into())));
        }
        Err(r) => return Outcome::Failed(failure(r.code.as_str(), r.message, r.field)),
    };

    let span = tel.execute_span(&job.job_id, job.job_type.as_str(), consumer);
    let result = execute(&spec, budget, now).await;
    if let Err(e) = &result {
        span.fail(e.code(), &e.to_string());
    }
    span.end();
    match result {
        Ok(result) => {
            info!(job_id = %job.job_id, job_type = %job.job_type, "job completed");
            Outcome::Completed(Notification {
                job_id: job.job_id.clone(),
                job_type: Some(job.job_type.as_str().to_owned()),
                status: JobStatus::Completed,
                stage: Stage::Processor,
                attempts,
                errors: job.errors.clone(),
                result: Some(result),
                timestamp: Utc::now(),
            })
        }
        Err(e) => {
            warn!(job_id = %job.job_id, code = e.code(), error = %e, "job failed");
            Outcome::Failed(failure(e.code(), e.to_string(), None))
        }
    }
}

/// A `jobs-todo` body that is not an enriched job: dead-letter it as it came.
fn unreadable(body: &str, meta: &RecordMeta, reason: &str) -> DeadLetter {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let field = |name: &str| parsed.as_ref()?.get(name)?.as_str().map(str::to_owned);
    DeadLetter {
        job_id: field("job_id").unwrap_or_else(|| meta.message_id.clone()),
        job_type: field("job_type"),
        status: JobStatus::Failed,
        stage: Stage::Processor,
        attempts: meta.receive_count,
        errors: vec![ErrorEntry {
            stage: Stage::Processor,
            code: "invalid_message".into(),
            message: reason.to_owned(),
            field: None,
            attempt: meta.receive_count,
            timestamp: Utc::now(),
        }],
        trace_context: None,
        job: parsed
            .and_then(|p| p.get("job").cloned())
            .unwrap_or_else(|| raw_body(body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MemoryQueue, MemoryTopic};

    fn batch() -> SqsEvent {
        serde_json::from_str(include_str!("../fixtures/processor-batch.json")).expect("fixture")
    }

    fn processor(topic: MemoryTopic) -> Processor<MemoryQueue, MemoryTopic> {
        Processor {
            dead_letters: MemoryQueue::default(),
            topic,
            config: ProcessorConfig {
                deadline_margin: Duration::from_secs(3),
            },
            telemetry: Instruments::default(),
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_000_000 + secs, 0).expect("valid")
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
    async fn an_unannounced_completion_is_retried() {
        let p = processor(MemoryTopic::refusing("job-report"));
        let response = p.handle(batch(), at(60), at(0)).await;
        let failed: Vec<_> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        assert_eq!(failed, ["msg-0000"]);
    }

    #[tokio::test]
    async fn a_job_whose_envelope_disagrees_is_not_executed() {
        let body = serde_json::json!({"job_id":"j","job_type":"data_cleanup","status":"NEW",
            "received_at":"2026-11-22T10:00:00Z","attempt":1,
            "job":{"job_type":"user_onboarding","message":{"user_id":"1","user_name":"A"}}});
        let event: SqsEvent = serde_json::from_value(serde_json::json!({"Records":[
            {"messageId":"m","body":body.to_string(),"attributes":{"ApproximateReceiveCount":"2"}}]}))
        .expect("event");
        let p = processor(MemoryTopic::default());
        p.handle(event, at(60), at(0)).await;
        let dead = p.dead_letters.dead_letters();
        assert_eq!(
            (dead[0].last_error_code(), dead[0].attempts),
            ("invalid_message", 2)
        );
    }
}
