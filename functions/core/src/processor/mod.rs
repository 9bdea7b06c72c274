//! The processor: reads enriched jobs from `jobs-todo`, claims each in the job state
//! table, executes it within the invocation's deadline, and ends it once: `COMPLETED`
//! announced, or `FAILED` dead-lettered with the error appended to its history.
//!
//! A retryable failure goes back to `jobs-todo` as the next attempt, delayed by the
//! retry policy's backoff, until the attempts are used up. A repeated delivery of a
//! job already handled is skipped (or only announced, if an earlier delivery recorded
//! the end but could not announce it).
//!
//! The records of a batch run concurrently, so a long job does not eat the deadline of
//! the others; each gets the whole remaining budget. Each record goes through
//! [`decide`] (read it, claim its job), [`execute`] (run a claimed job) and [`settle`]
//! (carry out the outcome), as soon as it can, not in step with the rest.

mod decide;
mod execute;
mod ordered;
mod saga;
mod settle;

use crate::ending::Ending;
use crate::kinds::Registry;
use crate::messages::ErrorCode;
use crate::messages::{DeadLetter, EnrichedJob};
use crate::ports::{MessageQueue, PortError, Topic};
use crate::record::{retry_soon, RecordMeta};
use crate::retry::RetryPolicy;
use crate::store::{JobStore, Sagas};
use crate::telemetry::instruments_prelude::*;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use std::time::Duration;
use tracing::Instrument;

/// Settings that change the processor's decisions.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// Time kept back from the Lambda deadline for the job's ending, which must fit in
    /// it whatever the job did: at least [`ending_reserve`] of the call timeout.
    pub deadline_margin: Duration,
    /// How failed attempts are retried.
    pub retry: RetryPolicy,
    /// Honour the `fault` a job asks for (demos and tests only).
    pub fault_injection: bool,
    /// The kinds of job run ([`Registry::builtin`] outside tests).
    pub kinds: Registry,
}

/// The most calls one ending makes: record the end, store the dead letter, publish,
/// mark announced (see [`crate::ending`]).
pub const ENDING_CALLS: u32 = 4;

/// Slack on top of the ending's calls, for the work between them.
pub const ENDING_SLACK: Duration = Duration::from_secs(1);

/// The least time an ending needs when each call may take up to `call_timeout`: the
/// smallest deadline margin that keeps a job sized to its budget from being cut off
/// mid-ending (and announced again after the visibility timeout).
pub fn ending_reserve(call_timeout: Duration) -> Duration {
    call_timeout.saturating_mul(ENDING_CALLS) + ENDING_SLACK
}

/// The longest wait before looking again at a job whose previous attempt has not yet
/// handed over: that hand-over takes milliseconds unless the attempt crashed.
const HAND_OVER_WAIT: Duration = Duration::from_secs(5);

/// The processor's downstream resources.
#[derive(Debug)]
pub struct Processor<Q, T, S> {
    /// The source queue, where retries go.
    pub jobs_todo: Q,
    /// The FIFO source queue of jobs with an `ordering_key`, whose records wait out
    /// their retries in place ([`ordered`]).
    pub jobs_todo_fifo: Q,
    pub dead_letters: Q,
    pub topic: T,
    pub store: S,
    pub config: ProcessorConfig,
    /// Spans and metrics (no-ops by default).
    pub telemetry: Instruments,
}

/// What every record of one invocation shares.
struct Batch<'a> {
    queue: &'a str,
    span: &'a JobSpan,
    invocation: &'a Invocation,
    /// The deadline, and the instant the invocation started at `now`.
    clock: (DateTime<Utc>, tokio::time::Instant),
    now: DateTime<Utc>,
}

/// A record that stays in SQS, and when it should come back: `None` for
/// [`crate::ports::retry_later_delay`] of its receive count.
struct Stay {
    message_id: String,
    after: Option<Duration>,
}

/// What a `jobs-todo` record holds.
enum Subject {
    /// A job to run.
    Job(EnrichedJob),
    /// A message that is not an enriched job (unparseable, or over the size the
    /// processor reads), as the `FAILED` dead letter it becomes, with the attempt its
    /// claim is taken under.
    Unreadable(DeadLetter, u32),
}

/// What became of one record.
enum Outcome {
    /// The job ended (or its recorded end still needs announcing).
    End(Box<Ending>),
    /// The attempt failed and the job goes back to the queue as its next attempt.
    Retry {
        next: Box<EnrichedJob>,
        delay: Duration,
        code: ErrorCode,
    },
    /// The previous attempt has not handed over yet: look again after `delay`.
    Defer(Duration),
    /// Nothing to do: the delivery repeats work done or under way elsewhere.
    Repeat(&'static str),
    /// The state table could not be reached; the record stays in SQS.
    Unavailable(PortError),
    /// An earlier delivery of this very record holds the job until then; the record
    /// is the job's only copy, so it stays in SQS.
    Held(DateTime<Utc>),
}

impl<Q: MessageQueue, T: Topic, S: JobStore + Sagas> Processor<Q, T, S> {
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
        let queue = crate::ingester::source_queue(&event);
        let parents: Vec<_> = event.records.iter().map(incoming_context).collect();
        let links = parents
            .iter()
            .filter_map(|p| p.as_ref().map(|cx| cx.span().span_context().clone()))
            .collect();
        let batch = tel.batch_span("processor", &queue, invocation, links, parents.len());
        // `now` is when the invocation started; what each record spends before its job
        // runs (its claim) comes off that job's budget.
        let at = Batch {
            queue: &queue,
            span: &batch,
            invocation,
            clock: (deadline, tokio::time::Instant::now()),
            now,
        };
        // Each record ends its job as soon as it can, so a quick job is not held back
        // by a long one in the same batch; a FIFO group's records go one by one.
        let records: Vec<_> = event.records.iter().zip(parents.iter()).collect();
        let failed = if records.iter().any(|(r, _)| ordered::group_of(r).is_some()) {
            self.in_groups(records, &at).await
        } else {
            let runs = records
                .into_iter()
                .map(|(record, parent)| self.traced(record, parent.as_ref(), &at));
            futures_util::future::join_all(runs)
                .await
                .into_iter()
                .flatten()
                .collect()
        };
        let mut response = SqsBatchResponse::default();
        for id in failed {
            response.add_failure(id);
        }
        batch.end();
        response
    }

    /// One record in its `process <queue>` span (its log lines in its log span); its
    /// message id when it stays in SQS.
    async fn traced(
        &self,
        record: &SqsMessage,
        parent: Option<&opentelemetry::Context>,
        at: &Batch<'_>,
    ) -> Option<String> {
        let meta = RecordMeta::of(record);
        let log = meta.log.clone();
        let consumer = self.telemetry.consumer_span(
            at.queue,
            &meta.message_id,
            parent,
            at.span,
            at.invocation,
        );
        let traced = consumer.clone();
        let run = self.process(record, meta, consumer, at.clock, at.now);
        // The record's spans nest in its consumer span, its log lines in its log span.
        traced.around(run).instrument(log).await
    }

    /// One record, from its claim to its end; its message id when it goes back to SQS.
    async fn process(
        &self,
        record: &SqsMessage,
        meta: RecordMeta,
        consumer: JobSpan,
        clock: (DateTime<Utc>, tokio::time::Instant),
        now: DateTime<Utc>,
    ) -> Option<String> {
        let (outcome, event_time) = self.decide(record, &meta, clock, now, &consumer).await;
        let stays = self
            .settle(outcome, record, meta, event_time, &consumer)
            .await;
        // Back to SQS soon now, not once the batch's longest job is done.
        let failed = match stays {
            Some(Stay { message_id, after }) => {
                self.come_back(record, &message_id, after).await;
                Some(message_id)
            }
            None => None,
        };
        consumer.end();
        failed
    }

    /// Makes a record that stays in SQS visible again: after `after` (a FIFO record's
    /// retry, waiting in place), else after [`crate::ports::retry_later_delay`].
    async fn come_back(&self, record: &SqsMessage, message_id: &str, after: Option<Duration>) {
        let records = std::slice::from_ref(record);
        match (ordered::group_of(record), after) {
            (Some(_), Some(after)) => {
                ordered::visible_after(&self.jobs_todo_fifo, record, after).await
            }
            (Some(_), None) => retry_soon(&self.jobs_todo_fifo, records, &[message_id]).await,
            (None, _) => retry_soon(&self.jobs_todo, records, &[message_id]).await,
        }
    }
}

/// A reproducible stand-in for a random number in `[0, 1)`: jobs that failed together
/// still spread out (their ids differ), and a test can predict the delay.
fn jitter_unit(job_id: &str, attempt: u32) -> f64 {
    let h = crate::execute::fnv1a(&[job_id.as_bytes(), &attempt.to_le_bytes()]);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The string attributes of a record, to keep when it is sent again unchanged (a
/// `traceparent` only if it is valid).
fn forwarded_attributes(record: &SqsMessage) -> Vec<(&'static str, String)> {
    ["job_id", "job_type", "traceparent"]
        .into_iter()
        .filter_map(|name| {
            let value = record
                .message_attributes
                .get(name)?
                .string_value
                .as_deref()?;
            if name == "traceparent" && !propagation::valid_traceparent(value) {
                return None;
            }
            Some((name, crate::messages::attribute_value(value)))
        })
        .collect()
}

/// The context a `jobs-todo` record continues: its `traceparent` attribute or X-Ray
/// header, else the trace context in the enriched job itself.
fn incoming_context(record: &SqsMessage) -> Option<opentelemetry::Context> {
    propagation::from_record(record).or_else(|| {
        let job = EnrichedJob::from_body(record.body.as_deref()?).ok()?;
        propagation::from_trace_context(job.trace_context.as_ref()?)
    })
}

#[cfg(test)]
mod tests;
