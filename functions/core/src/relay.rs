//! The outbox relay: announces the ends that were recorded and that nobody is left to
//! announce, without waiting for an SQS message that may never come back.
//!
//! A stage records a job's end before it announces it ([`crate::ending`]). If the
//! announcement fails, the stage's SQS message normally comes back and announces the
//! recorded end. When it does not (the record went to the DLQ after its last receive,
//! or an operator purged the queue), the end would stay unannounced. The relay runs on
//! a schedule and, for each such end whose holder's lease is over ([`Outbox::stranded`]),
//!
//! 1. takes it ([`Outbox::take`]): the lease moves to the relay's invocation, only if
//!    the record still is unannounced under the lease that was seen, so a late copy
//!    of the stage's message (which takes it the same way) and the relay never both
//!    announce it;
//! 2. stores its dead letter (kept in the record, [`crate::ending::recorded_detail`]),
//!    publishes its notification and marks it announced, as the stage would have
//!    ([`EndPorts::end`]).
//!
//! A relay that dies between 1 and 2 leaves the end taken until its own deadline; the
//! next sweep after that takes it again. What is left is the stage's own window: a
//! publish whose mark is lost is published again by the next taker.

use crate::ending::{EndPorts, Ending, Tracking, LETTER_FIELD, TRACE_FIELD};
use crate::messages::{DeadLetter, JobStatus, Notification, Stage, TraceContext};
use crate::ports::{MessageQueue, Topic};
use crate::record::RecordMeta;
use crate::store::outbox::{RELAY_HOLDER, SHARDS};
use crate::store::{claim_token, JobState, JobStore, Outbox, Take};
use crate::telemetry::instruments_prelude::*;
use crate::Timestamp;
use chrono::TimeDelta;
use futures_util::future::join_all;
use serde::Serialize;
use tracing::{info, warn};

/// How the relay sweeps.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// How long after a lease ended its end counts as stranded: covers the clocks of
    /// the stage and the relay disagreeing. The lease is the holder's invocation
    /// deadline, after which Lambda has stopped it.
    pub clock_skew: TimeDelta,
    /// The most index entries read per shard and pass.
    pub page: usize,
    /// Time kept back from the deadline: no pass starts with less left, so the last
    /// one can still announce what it took ([`RelayConfig::for_calls`]).
    pub reserve: TimeDelta,
}

/// The calls of one pass, one after another: read the index, take, store the dead
/// letters, publish, mark. Each may take up to the call timeout.
pub const PASS_CALLS: i32 = 5;

/// How many takes of a pass are in flight at once: a pass after an outage may find
/// thousands of ends, each take answering with its whole record.
pub const TAKES_AT_ONCE: usize = 25;

impl RelayConfig {
    /// The sweep for calls that each may take up to `call_timeout` (`CALL_TIMEOUT_MS`):
    /// a pass starts only with [`PASS_CALLS`] of them and a second left.
    pub fn for_calls(call_timeout: std::time::Duration) -> RelayConfig {
        let call = TimeDelta::from_std(call_timeout).unwrap_or(TimeDelta::seconds(5));
        RelayConfig {
            reserve: call * PASS_CALLS + TimeDelta::seconds(1),
            ..RelayConfig::default()
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            clock_skew: TimeDelta::seconds(30),
            page: 100,
            reserve: TimeDelta::seconds(26),
        }
    }
}

/// The relay's resources.
#[derive(Debug)]
pub struct Relay<Q, T, S> {
    pub dead_letters: Q,
    pub topic: T,
    pub store: S,
    pub config: RelayConfig,
    pub telemetry: Instruments,
}

/// What one sweep did, as its invocation answers (and logs).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Sweep {
    /// Stranded ends found in the index.
    pub found: usize,
    /// Of those, announced now.
    pub announced: usize,
    /// Taken by someone else, or announced, between the read and the take.
    pub taken_elsewhere: usize,
    /// Taken but not announced (a call failed): the next sweep after this
    /// invocation's deadline tries again.
    pub failed: usize,
    /// Shards whose index could not be read, and records whose end could not be read.
    pub errors: usize,
    /// Whether entries were left for the next sweep (the deadline came first).
    pub more: bool,
}

impl<Q: MessageQueue, T: Topic, S: JobStore + Outbox> Relay<Q, T, S> {
    /// One sweep: passes over every shard until none has stranded ends left, or the
    /// deadline is near. Whatever fails stays in the outbox for the next sweep.
    pub async fn sweep(
        &self,
        deadline: Timestamp,
        invocation: &Invocation,
        now: impl Fn() -> Timestamp,
    ) -> Sweep {
        let span = self.telemetry.sweep_span(invocation);
        let holder = format!("{RELAY_HOLDER}{}", invocation.request_id);
        let mut sweep = Sweep::default();
        let mut passes = 0;
        loop {
            let started = now();
            if deadline - started < self.config.reserve {
                if passes == 0 {
                    warn!(reserve_s = self.config.reserve.num_seconds(), "the relay's timeout leaves no time for a pass; raise it or lower CALL_TIMEOUT_MS");
                }
                sweep.more = passes > 0;
                break;
            }
            passes += 1;
            let full = self
                .pass(&mut sweep, &span, &holder, deadline, started)
                .await;
            if !full {
                break;
            }
        }
        span.set_attribute("relay.found", sweep.found as i64);
        span.set_attribute("relay.announced", sweep.announced as i64);
        if sweep.failed + sweep.errors > 0 {
            span.fail(
                "relay_incomplete",
                "some stranded ends are left for the next sweep",
            );
        }
        span.end();
        if sweep.found + sweep.errors > 0 {
            info!(
                found = sweep.found,
                announced = sweep.announced,
                taken_elsewhere = sweep.taken_elsewhere,
                failed = sweep.failed,
                errors = sweep.errors,
                "outbox swept"
            );
        }
        sweep
    }

    /// One pass over every shard; whether some shard had a full page (more to read).
    async fn pass(
        &self,
        sweep: &mut Sweep,
        span: &JobSpan,
        holder: &str,
        deadline: Timestamp,
        now: Timestamp,
    ) -> bool {
        let before = now - self.config.clock_skew;
        let reads = join_all((0..SHARDS).map(|s| self.store.stranded(s, before, self.config.page)));
        let mut entries = Vec::new();
        let mut full = false;
        for (shard, read) in reads.await.into_iter().enumerate() {
            match read {
                Ok(found) => {
                    full |= found.len() >= self.config.page;
                    entries.extend(found);
                }
                Err(e) => {
                    warn!(shard, error = %e, "could not read the outbox index");
                    sweep.errors += 1;
                }
            }
        }
        sweep.found += entries.len();
        let token = claim_token();
        let mut taken = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(TAKES_AT_ONCE) {
            let takes = chunk.iter().map(|entry| {
                let take = Take {
                    job_id: &entry.job_id,
                    stage: entry.stage,
                    seen: entry.lease_until,
                    until: deadline,
                    holder,
                    token: &token,
                };
                async move { self.store.take(&take, now).await }
            });
            taken.extend(join_all(takes).await);
        }
        let mut endings = Vec::new();
        for (entry, result) in entries.iter().zip(taken) {
            match result {
                Ok(Some(record)) => match relayed(&record, holder) {
                    Some(ending) => endings.push(ending),
                    None => {
                        warn!(job_id = %entry.job_id, "the recorded end cannot be read; left for an operator");
                        sweep.errors += 1;
                    }
                },
                Ok(None) => sweep.taken_elsewhere += 1,
                Err(e) => {
                    warn!(job_id = %entry.job_id, error = %e, "could not take the stranded end");
                    sweep.failed += 1;
                }
            }
        }
        let (announced, failed) = self.announce(endings, span, now).await;
        sweep.announced += announced;
        sweep.failed += failed;
        // A full page whose entries all failed would be read again at once: stop.
        full && announced > 0
    }

    /// Announces the taken ends, each stage's with that stage's ending rules; the
    /// numbers announced and failed.
    async fn announce(
        &self,
        endings: Vec<(Stage, Ending, Option<TraceContext>)>,
        sweep: &JobSpan,
        now: Timestamp,
    ) -> (usize, usize) {
        let (ingester, processor): (Vec<_>, Vec<_>) = endings
            .into_iter()
            .partition(|(stage, ..)| *stage == Stage::Ingester);
        // Both stages' ends at once: a pass must fit in its reserve.
        let (a, b) = tokio::join!(
            self.announce_stage(Stage::Ingester, ingester, sweep, now),
            self.announce_stage(Stage::Processor, processor, sweep, now)
        );
        (a.0 + b.0, a.1 + b.1)
    }

    /// Announces one stage's taken ends with that stage's ending rules.
    async fn announce_stage(
        &self,
        stage: Stage,
        group: Vec<(Stage, Ending, Option<TraceContext>)>,
        sweep: &JobSpan,
        now: Timestamp,
    ) -> (usize, usize) {
        if group.is_empty() {
            return (0, 0);
        }
        let (spans, batch): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|(_, ending, trace)| {
                let span = self.relay_span(stage, &ending, trace.as_ref(), sweep);
                ((ending.meta.message_id.clone(), span), ending)
            })
            .unzip();
        let ports = EndPorts {
            stage,
            dead_letters: &self.dead_letters,
            topic: &self.topic,
            store: &self.store,
            telemetry: &self.telemetry,
        };
        let left = ports.end(batch, now).await;
        let (mut announced, mut failed) = (0, 0);
        for (id, span) in spans {
            if left.contains(&id) {
                span.fail("announce_failed", "left for the next sweep");
                failed += 1;
            } else {
                announced += 1;
            }
            span.end();
        }
        (announced, failed)
    }

    /// The span of one relayed end, in the job's trace when the record kept it.
    fn relay_span(
        &self,
        stage: Stage,
        ending: &Ending,
        trace: Option<&TraceContext>,
        sweep: &JobSpan,
    ) -> JobSpan {
        let n = &ending.notification;
        let parent = trace.and_then(propagation::from_trace_context);
        let span = self
            .telemetry
            .relay_span(stage.as_str(), &n.job_id, parent.as_ref(), sweep);
        span.set_job(&n.job_id, n.job_type.as_deref());
        span.set_status(n.status);
        span
    }
}

/// The ending a taken record announces: its stored notification, and its dead letter
/// for an end that did not complete. `None` if the record does not hold them.
fn relayed(record: &JobState, holder: &str) -> Option<(Stage, Ending, Option<TraceContext>)> {
    let detail = record.detail.as_ref()?;
    let notification: Notification = serde_json::from_value(detail.clone()).ok()?;
    if notification.job_id != record.job_id {
        return None;
    }
    let dead_letter = match notification.status {
        // Stored by the delivery whose publish failed: only the announcement is left.
        _ if record.letter_stored => None,
        JobStatus::Completed => None,
        _ => Some(serde_json::from_value::<DeadLetter>(detail.get(LETTER_FIELD)?.clone()).ok()?),
    };
    let trace = detail
        .get(TRACE_FIELD)
        .and_then(|t| serde_json::from_value::<TraceContext>(t.clone()).ok());
    let meta = RecordMeta::named(format!("{holder}/{}", stranded_key(record)));
    meta.identify(&record.job_id, None);
    let ending = Ending::new(meta, notification, dead_letter, Tracking::Recorded);
    Some((record.stage, ending, trace))
}

/// A record's key, `<stage>#<job id>`, unique among the relay's entries.
fn stranded_key(record: &JobState) -> String {
    format!("{}#{}", record.stage.as_str(), record.job_id)
}

#[cfg(test)]
mod tests;
