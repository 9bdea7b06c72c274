//! The ingester: reads EventBridge events from `ingester-queue`, validates each job,
//! forwards valid ones to `jobs-todo` enriched for the processor, and dead-letters
//! rejections with one `REJECTED` notification each.
//!
//! A valid job is forwarded without a state record of its own: however often it is
//! forwarded (an event delivered again, or published twice with the same job id), the
//! processor's claim runs it and ends it once, and rejects a job id reused for
//! different content as `job_id_reused`. A rejection is written as a stop on the
//! processor's record first ([`crate::store::Stop`]), so it is dead-lettered and
//! announced once, and never beside an end of the processor's.
//!
//! Only records whose downstream calls failed are reported as batch item failures,
//! so SQS retries them alone and the rest of the batch is neither lost nor repeated.
//!
//! A batch goes through four phases, each over every record: decide (triage, then a
//! rejection's claim: [`triage`], [`claim`]), open each record's spans, forward
//! ([`forward`]), and end. A record whose failure is known in one phase is made visible again before the
//! next one starts, not after the slowest record of the batch.

mod claim;
mod forward;
mod replay;
mod triage;

use crate::ending::{EndPorts, Ending, Tracking};
use crate::kinds::Registry;
use crate::messages::{DeadLetter, EnrichedJob, Notification, Stage};
use crate::ports::{MessageQueue, Topic};
use crate::record::{retry_soon, RecordMeta};
use crate::store::{JobStore, Replays};
use crate::telemetry::instruments_prelude::*;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::join_all;
use opentelemetry::Context;
use std::collections::HashMap;
use tracing::{info, warn};

pub(crate) use triage::source_queue;

/// Settings that change the ingester's decisions.
#[derive(Debug, Clone)]
pub struct IngesterConfig {
    /// The source queue's `maxReceiveCount`. On its last allowed receive a record that
    /// still cannot be forwarded is dead-lettered by the ingester itself, so it gets its
    /// notification and the DLQ keeps one shape.
    pub max_receive_count: u32,
    /// The longest `long_running_job` timeout accepted, in seconds
    /// (`MAX_JOB_TIMEOUT_SECONDS`, [`crate::config::IngesterSettings`]): what the processor
    /// can run within its function timeout.
    pub max_job_timeout_secs: u64,
    /// The kinds of job accepted ([`Registry::builtin`] outside tests).
    pub kinds: Registry,
}

/// The ingester's downstream resources.
#[derive(Debug)]
pub struct Ingester<Q, T, S> {
    /// `ingester-queue`, where failed records are made visible again early.
    pub source: Q,
    pub jobs_todo: Q,
    /// `jobs-todo.fifo`, where jobs with an `ordering_key` go ([`forward`]).
    pub jobs_todo_fifo: Q,
    pub dead_letters: Q,
    pub topic: T,
    pub store: S,
    pub config: IngesterConfig,
    /// Spans and metrics (no-ops by default).
    pub telemetry: Instruments,
}

/// What validation made of one record.
/// The event time rides along for the latency metric.
enum Verdict {
    Forward(EnrichedJob, Option<String>),
    Reject(DeadLetter, Option<String>),
}

/// What to do with one record, once its claim is known.
enum Action {
    Forward(EnrichedJob, Option<String>),
    End(DeadLetter, Tracking, Option<String>),
    /// A rejection recorded as a stop on the processor's record, with the notification
    /// recorded there.
    Stopped(DeadLetter, Notification, Option<String>),
    /// An earlier delivery recorded the end but did not announce it.
    Announce(Notification, Option<DeadLetter>, Tracking),
    /// Handled before, or being handled by another delivery.
    Repeat(String, &'static str),
    /// The claim could not be decided now; the record stays in SQS.
    Later(String, String),
}

/// A batch in flight: what each phase leaves for the next.
#[derive(Default)]
struct Run {
    response: SqsBatchResponse,
    /// Each record's consumer span and event time, by message id.
    spans: HashMap<String, (JobSpan, Option<String>)>,
    /// Records to forward, with their producer spans.
    forwards: Vec<(RecordMeta, EnrichedJob, JobSpan)>,
    endings: Vec<Ending>,
}

impl Run {
    /// The failures reported since `from`, as message ids.
    fn failed_since(&self, from: usize) -> Vec<&str> {
        self.response.batch_item_failures[from..]
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect()
    }

    fn consumer(&self, meta: &RecordMeta) -> Option<&JobSpan> {
        self.spans.get(&meta.message_id).map(|s| &s.0)
    }
}

impl<Q: MessageQueue, T: Topic, S: JobStore + Replays> Ingester<Q, T, S> {
    /// Handles a batch outside any Lambda invocation (tests, tools), as if the
    /// invocation had the function's 30 s.
    pub async fn handle(&self, event: SqsEvent, now: DateTime<Utc>) -> SqsBatchResponse {
        let deadline = now + TimeDelta::seconds(30);
        self.handle_invocation(event, deadline, now, &Invocation::default())
            .await
    }

    /// Handles a batch: one `process <queue>` span per record, continuing the job's
    /// trace, and a `send jobs-todo` span whose context the forwarded job carries.
    /// Claims taken now hold until `deadline`.
    pub async fn handle_invocation(
        &self,
        event: SqsEvent,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
        invocation: &Invocation,
    ) -> SqsBatchResponse {
        let queue = source_queue(&event);
        let decided = self.decide_all(&event, deadline, now).await;
        let links = decided
            .iter()
            .filter_map(|(_, _, p)| p.as_ref().map(|cx| cx.span().span_context().clone()))
            .collect();
        let tel = &self.telemetry;
        let batch = tel.batch_span("ingester", &queue, invocation, links, decided.len());
        let mut run = Run::default();
        for (meta, action, parent) in decided {
            let consumer = tel.consumer_span(
                &queue,
                &meta.message_id,
                parent.as_ref(),
                &batch,
                invocation,
            );
            self.open(&mut run, meta, action, consumer);
        }
        // Records whose claim could not be decided go back to SQS now, without
        // waiting for the forwards and endings of the rest; and so on after each phase.
        retry_soon(&self.source, &event.records, &run.failed_since(0)).await;
        let released = run.response.batch_item_failures.len();
        self.forward(&mut run, deadline, now).await;
        retry_soon(&self.source, &event.records, &run.failed_since(released)).await;
        let released = run.response.batch_item_failures.len();
        self.end_all(&mut run, now).await;
        for (consumer, _) in run.spans.values() {
            consumer.end();
        }
        retry_soon(&self.source, &event.records, &run.failed_since(released)).await;
        batch.end();
        run.response
    }

    /// Triage and claim for every record at once; each with the trace context its job
    /// carries (or its message attributes do).
    async fn decide_all(
        &self,
        event: &SqsEvent,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Vec<(RecordMeta, Action, Option<Context>)> {
        let orders = &self.replay_orders(event).await;
        let decided = event.records.iter().map(|record| async move {
            let meta = RecordMeta::of(record);
            let verdict = triage::triage(record, &meta, &self.config, now);
            let action = match self.follow_replay(verdict, orders, &meta, now).await {
                Ok(verdict) => self.claim(verdict, &meta, deadline, now).await,
                Err(settled) => settled,
            };
            let parent = trace_parent(&action, record);
            (meta, action, parent)
        });
        join_all(decided).await
    }

    /// Opens a record's spans and files it under the phase that handles it next.
    fn open(&self, run: &mut Run, meta: RecordMeta, action: Action, consumer: JobSpan) {
        let tel = &self.telemetry;
        match action {
            Action::Forward(mut job, event_time) => {
                consumer.set_job(&job.job_id, Some(job.job_type.as_str()));
                meta.identify(&job.job_id, consumer.trace_id().as_deref());
                let queue = self.queue_for(&job);
                let producer = tel.producer_span(AWS_SQS, queue.name(), consumer.context());
                producer.set_job(&job.job_id, Some(job.job_type.as_str()));
                if let Some(tc) = propagation::to_trace_context(producer.context()) {
                    job.trace_context = Some(tc);
                }
                run.spans
                    .insert(meta.message_id.clone(), (consumer, event_time));
                run.forwards.push((meta, job, producer));
            }
            Action::End(dl, tracking, event_time) => {
                let ending = open_ending(&consumer, meta, dl, None, tracking);
                run.spans
                    .insert(ending.meta.message_id.clone(), (consumer, event_time));
                run.endings.push(ending);
            }
            Action::Stopped(dl, notification, event_time) => {
                let ending =
                    open_ending(&consumer, meta, dl, Some(notification), Tracking::Stopped);
                run.spans
                    .insert(ending.meta.message_id.clone(), (consumer, event_time));
                run.endings.push(ending);
            }
            Action::Announce(notification, dead_letter, tracking) => {
                consumer.set_job(&notification.job_id, notification.job_type.as_deref());
                consumer.set_status(notification.status);
                meta.identify(&notification.job_id, consumer.trace_id().as_deref());
                run.spans.insert(meta.message_id.clone(), (consumer, None));
                run.endings
                    .push(Ending::new(meta, notification, dead_letter, tracking));
            }
            Action::Repeat(job_id, reason) => {
                consumer.set_job(&job_id, None);
                consumer.set_attribute("job.repeat", reason);
                meta.identify(&job_id, consumer.trace_id().as_deref());
                tel.record_repeat("ingester", reason);
                meta.log
                    .in_scope(|| info!(reason, "repeated delivery skipped"));
                consumer.end();
            }
            Action::Later(job_id, why) => {
                consumer.set_job(&job_id, None);
                meta.identify(&job_id, consumer.trace_id().as_deref());
                consumer.fail("state_unavailable", &why);
                meta.log
                    .in_scope(|| warn!(error = %why, "job state unavailable; SQS will retry"));
                consumer.end();
                run.response.add_failure(meta.message_id);
            }
        }
    }

    /// Ends every record that ends here (rejections, recorded ends, unforwarded jobs).
    async fn end_all(&self, run: &mut Run, now: DateTime<Utc>) {
        let mut endings = std::mem::take(&mut run.endings);
        for ending in &mut endings {
            let known = run.spans.get(&ending.meta.message_id);
            ending.event_time = known.and_then(|(_, event_time)| event_time.clone());
        }
        let ports = EndPorts {
            stage: Stage::Ingester,
            dead_letters: &self.dead_letters,
            topic: &self.topic,
            store: &self.store,
            telemetry: &self.telemetry,
        };
        for id in ports.end(endings, now).await {
            if let Some((consumer, _)) = run.spans.get(&id) {
                consumer.set_attribute("job.end_state_pending", true);
            }
            run.response.add_failure(id);
        }
    }
}

/// The trace a record continues: the context its job carries, else its message's.
fn trace_parent(action: &Action, record: &SqsMessage) -> Option<Context> {
    let carried = match action {
        Action::Forward(job, _) => job.trace_context.as_ref(),
        Action::End(dl, ..) | Action::Stopped(dl, ..) | Action::Announce(_, Some(dl), _) => {
            dl.trace_context.as_ref()
        }
        _ => None,
    };
    carried
        .and_then(propagation::from_trace_context)
        .or_else(|| propagation::from_record(record))
}

/// A rejection's ending, its span marked with the error and its dead letter carrying
/// the span's context; announcing `recorded`, the notification its stop recorded, if
/// it has one.
fn open_ending(
    consumer: &JobSpan,
    meta: RecordMeta,
    mut dl: DeadLetter,
    recorded: Option<Notification>,
    tracking: Tracking,
) -> Ending {
    consumer.set_job(&dl.job_id, dl.job_type.as_deref());
    meta.identify(&dl.job_id, consumer.trace_id().as_deref());
    let last = dl
        .errors
        .last()
        .map(|e| (e.code.as_str(), e.message.as_str()));
    consumer.fail(last.map_or("rejected", |l| l.0), last.map_or("", |l| l.1));
    consumer.set_status(dl.status);
    if let Some(tc) = propagation::to_trace_context(consumer.context()) {
        dl.trace_context = Some(tc);
    }
    meta.log
        .in_scope(|| info!(job_id = %dl.job_id, code = dl.last_error_code(), "job rejected"));
    let notification =
        recorded.unwrap_or_else(|| Notification::for_dead_letter(&dl, crate::clock::now()));
    Ending::new(meta, notification, Some(dl), tracking)
}

#[cfg(test)]
mod tests;
