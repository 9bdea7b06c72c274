//! Jobs with an `ordering_key`, read from `jobs-todo.fifo`: one at a time per key, in
//! the order the ingester forwarded them.
//!
//! SQS delivers a FIFO group's messages in order and holds the group back while one
//! of them is in flight, so the order holds as long as every job stays where SQS put
//! it until it ends. Three rules keep it there:
//!
//! - A batch's records of one group run one after another ([`Processor::in_groups`]),
//!   groups side by side. The first record that stays in SQS stops its group: it and
//!   every later record of the group are reported as failures (SQS deletes any record
//!   not reported, and a later job must not run before an earlier one ends). The later
//!   ones never ran, so they are made visible again at once; SQS still holds them back
//!   behind the first, which is in flight.
//! - A failed attempt waits in place: the record stays, invisible for the retry's
//!   backoff, instead of going to the back of the group as a new message. Its job's
//!   record says `RETRYING` with the whole error history ([`Processor::retry_in_place`]).
//! - The record's body always says attempt 1, so the attempt and the history it runs
//!   under come from the job's record ([`Processor::resume`]).

use super::{Batch, Processor};
use crate::messages::{EnrichedJob, ErrorCode, ErrorEntry, Stage};
use crate::ports::{MessageQueue, PortError, Receipt, Topic};
use crate::record::RecordMeta;
use crate::store::{same_content, Fingerprints, JobState, JobStore, Progress, Sagas};
use crate::telemetry::instruments_prelude::*;
use aws_lambda_events::sqs::SqsMessage;
use futures_util::future::join_all;
use std::time::Duration;
use tracing::{info, warn};

/// The FIFO group a record was delivered in (`MessageGroupId`, which Lambda puts in a
/// FIFO record's attributes); `None` for a standard queue's record.
pub(super) fn group_of(record: &SqsMessage) -> Option<&str> {
    record.attributes.get("MessageGroupId").map(String::as_str)
}

/// Makes a FIFO record visible again after `after` (at most SQS's 12 hours).
pub(super) async fn visible_after<Q: MessageQueue>(
    queue: &Q,
    record: &SqsMessage,
    after: Duration,
) {
    let Some(receipt_handle) = record.receipt_handle.clone() else {
        return;
    };
    let delay_seconds = u32::try_from(after.as_secs())
        .unwrap_or(u32::MAX)
        .min(43_200);
    let receipts = [Receipt {
        receipt_handle,
        delay_seconds,
    }];
    if let Err(e) = queue.retry_later(&receipts).await {
        warn!(error = %e, "could not set when the record comes back; the visibility timeout will");
    }
}

/// The error history a job's record keeps while it waits in place: the `errors` of
/// its detail ([`Processor::retry_in_place`] writes them, and an end's detail has them).
fn history(state: &JobState) -> Option<Vec<ErrorEntry>> {
    let errors = state.detail.as_ref()?.get("errors")?;
    serde_json::from_value(errors.clone()).ok()
}

/// The attempt a delivery of a job whose processor record is `state` runs under: the
/// one after a hand-over, else the record's own (the claim then decides whether that
/// attempt is this delivery's to take, done, or held elsewhere).
fn attempt_after(state: &JobState) -> u32 {
    match state.progress {
        Progress::Retrying => state.attempt.saturating_add(1),
        _ => state.attempt,
    }
}

impl<Q: MessageQueue, T: Topic, S: JobStore + Sagas> Processor<Q, T, S> {
    /// Runs a FIFO batch: each group's records in order, the groups side by side;
    /// the message ids that stay in SQS.
    pub(super) async fn in_groups(
        &self,
        records: Vec<(&SqsMessage, &Option<opentelemetry::Context>)>,
        at: &Batch<'_>,
    ) -> Vec<String> {
        let mut groups: Vec<(Option<&str>, Vec<_>)> = Vec::new();
        for (record, parent) in records {
            let group = group_of(record);
            match groups
                .iter_mut()
                .find(|(g, _)| group.is_some() && *g == group)
            {
                Some((_, members)) => members.push((record, parent)),
                None => groups.push((group, vec![(record, parent)])),
            }
        }
        let runs = groups
            .into_iter()
            .map(|(_, members)| self.in_order(members, at));
        join_all(runs).await.into_iter().flatten().collect()
    }

    /// One group's records, one after another until one stays in SQS; the ids of it
    /// and of every record after it.
    async fn in_order(
        &self,
        members: Vec<(&SqsMessage, &Option<opentelemetry::Context>)>,
        at: &Batch<'_>,
    ) -> Vec<String> {
        let mut stays = Vec::new();
        let mut behind = Vec::new();
        for (record, parent) in members {
            if !stays.is_empty() {
                behind.push(record.clone());
                continue;
            }
            stays.extend(self.traced(record, parent.as_ref(), at).await);
        }
        if !behind.is_empty() {
            info!(
                records = behind.len(),
                "an earlier job of the ordering key stays in SQS; the jobs behind it wait"
            );
            let receipts: Vec<Receipt> = behind
                .iter()
                .filter_map(|r| {
                    Some(Receipt {
                        receipt_handle: r.receipt_handle.clone()?,
                        delay_seconds: 0,
                    })
                })
                .collect();
            if let Err(e) = self.jobs_todo_fifo.retry_later(&receipts).await {
                warn!(error = %e, "could not return the waiting records at once; the visibility timeout will");
            }
        }
        stays.extend(behind.into_iter().filter_map(|r| r.message_id));
        stays
    }

    /// Sets the attempt and the history a FIFO record's job runs under from its
    /// processor record: the body was written once, by the ingester, for attempt 1.
    /// A record of other content leaves the job as it is (its claim is refused as a
    /// reused id).
    pub(super) async fn resume(&self, job: &mut EnrichedJob) -> Result<(), PortError> {
        let states = self.store.get(&job.job_id).await?;
        let Some(state) = states.iter().find(|s| s.stage == Stage::Processor) else {
            return Ok(());
        };
        let prints = Fingerprints::of(&job.job);
        if !same_content(&state.fingerprint, &prints.current, Some(&prints.legacy)) {
            return Ok(());
        }
        // Reopened by a replay's rerun: that rerun's own copy runs it, not this one.
        if crate::store::replay::rerun_of_another(state, job.replay.as_ref()) {
            return Ok(());
        }
        let attempt = attempt_after(state);
        if attempt > job.attempt {
            job.attempt = attempt;
            if let Some(errors) = history(state) {
                job.errors = errors;
            }
        }
        Ok(())
    }

    /// A failed attempt of a FIFO record's job: its record hands over to the next
    /// attempt with the whole history, and the record itself stays in SQS for the
    /// backoff. If the hand-over is not recorded, the claim is given back, so the
    /// record's next delivery runs this attempt again rather than wait for its lease.
    pub(super) async fn retry_in_place(
        &self,
        meta: &RecordMeta,
        next: EnrichedJob,
        delay: Duration,
        code: ErrorCode,
        consumer: &JobSpan,
    ) {
        consumer.fail(code.as_str(), "attempt failed; retrying in place");
        consumer.set_attribute("job.retry_delay_s", delay.as_secs() as i64);
        let detail = serde_json::json!({ "errors": next.errors });
        if self.hand_over(&next, Some(detail)).await.is_err() {
            let attempt = next.attempt - 1;
            crate::ending::give_back(
                &self.store,
                Stage::Processor,
                &next.job_id,
                attempt,
                meta,
                crate::clock::now(),
            )
            .await;
            return;
        }
        self.telemetry
            .record_retry(next.job_type.as_str(), code.as_str());
        info!(job_id = %next.job_id, next_attempt = next.attempt, delay_s = delay.as_secs(), "attempt failed; retrying in place");
    }
}

#[cfg(test)]
mod tests;
