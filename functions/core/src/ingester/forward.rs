//! Forwarding valid jobs to `jobs-todo` in batches, and what becomes of each record
//! whose forward failed: back to SQS, or, on its last receive, ended `FAILED` unless the
//! forward reached the processor after all ([`JobStore::stop`]). A forwarded
//! job has no ingester record, so there is no claim to give back when a forward fails.

use super::{Ingester, Run};
use crate::ending::{recorded, stop_of, Ending, Tracking};
use crate::job::ordering_key;
use crate::messages::{
    DeadLetter, EnrichedJob, ErrorCode, ErrorEntry, JobStatus, Notification, Stage,
};
use crate::ports::{send_all, MessageGroup, MessageQueue, OutgoingMessage, PortError, Topic};
use crate::record::{enriched_message, RecordMeta};
use crate::store::{Fingerprints, Forestalled, JobStore};
use crate::Timestamp;
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

/// A record's last receive whose forward failed, and the error.
type LastChance = (RecordMeta, EnrichedJob, PortError);

impl<Q: MessageQueue, T: Topic, S: JobStore + crate::store::Replays> Ingester<Q, T, S> {
    /// Sends every forward, then settles each record by its result. A last receive's
    /// end is announced by `deadline` or by the processor.
    pub(super) async fn forward(&self, run: &mut Run, deadline: Timestamp, now: Timestamp) {
        let forwards = std::mem::take(&mut run.forwards);
        let sent = self.send_forwards(&forwards).await;
        let mut last_chances = Vec::new();
        for ((meta, job, producer), result) in forwards.into_iter().zip(sent) {
            match result {
                Ok(()) => {
                    meta.log.in_scope(
                        || info!(job_id = %job.job_id, job_type = %job.job_type, "job forwarded"),
                    );
                }
                Err(e) => {
                    producer.fail(ErrorCode::ForwardFailed.as_str(), &e.to_string());
                    let last = meta.receive_count >= self.config.max_receive_count;
                    if last && !super::replay::is_rerun(&job) {
                        meta.log.in_scope(|| warn!(job_id = %job.job_id, error = %e, "forwarding failed on the last attempt; ending the job unless the processor has it"));
                        last_chances.push((meta, job, e));
                    } else {
                        retry_forward(run, meta, &job.job_id, &e);
                    }
                }
            }
            producer.end();
        }
        self.settle_last_chances(run, last_chances, deadline, now)
            .await;
    }

    /// The queue a job goes to: `jobs-todo.fifo` when it has an ordering key.
    pub(super) fn queue_for(&self, job: &EnrichedJob) -> &Q {
        match ordering_key(&job.job) {
            Some(_) => &self.jobs_todo_fifo,
            None => &self.jobs_todo,
        }
    }

    /// Sends every forward to its queue, both queues at once: one result per forward.
    async fn send_forwards(
        &self,
        forwards: &[(RecordMeta, EnrichedJob, crate::telemetry::JobSpan)],
    ) -> Vec<Result<(), PortError>> {
        let (keyed, plain): (Vec<usize>, Vec<usize>) =
            (0..forwards.len()).partition(|&i| ordering_key(&forwards[i].1.job).is_some());
        let plain_messages: Vec<_> = plain
            .iter()
            .map(|&i| enriched_message(&forwards[i].1))
            .collect();
        let keyed_messages: Vec<_> = keyed
            .iter()
            .map(|&i| ordered_message(&forwards[i].1, &forwards[i].0))
            .collect();
        let (plain_sent, keyed_sent) = futures_util::future::join(
            send_all(&self.jobs_todo, &plain_messages),
            send_in_order(&self.jobs_todo_fifo, &keyed_messages),
        )
        .await;
        let mut sent: Vec<Option<Result<(), PortError>>> = vec![None; forwards.len()];
        for (i, result) in plain
            .into_iter()
            .chain(keyed)
            .zip(plain_sent.into_iter().chain(keyed_sent))
        {
            sent[i] = Some(result);
        }
        sent.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(held_back())))
            .collect()
    }

    /// Ends the last receives whose forward failed, all at once: each as `FAILED`, as a
    /// forward when the processor has the job, or back to SQS when it cannot be decided.
    async fn settle_last_chances(
        &self,
        run: &mut Run,
        last_chances: Vec<LastChance>,
        deadline: Timestamp,
        now: Timestamp,
    ) {
        let decided = join_all(
            last_chances
                .into_iter()
                .map(|(meta, job, e)| self.stop(meta, job, e, deadline, now)),
        )
        .await;
        for (meta, job_id, decision) in decided {
            match decision {
                Ok((Forestalled::Ended, ending)) => {
                    if let Some(c) = run.consumer(&meta) {
                        let (code, message) = ending_error(&ending);
                        c.fail(code, message);
                        c.set_status(JobStatus::Failed);
                    }
                    run.endings.extend(ending);
                }
                Ok((Forestalled::Taken | Forestalled::Unannounced, _)) => {
                    meta.log.in_scope(|| info!(job_id = %job_id, "the forward had reached jobs-todo: the processor has the job"));
                }
                // Not this job's record: left in SQS, and in the DLQ, for an operator.
                Ok((Forestalled::OtherContent { fingerprint }, _)) => {
                    meta.log.in_scope(|| warn!(job_id = %job_id, fingerprint = %fingerprint, "the job id names a processor record of other content; SQS keeps the event for an operator"));
                    if let Some(c) = run.consumer(&meta) {
                        c.fail(
                            "job_id_reused",
                            "the processor's record of this id is of other content",
                        );
                    }
                    run.response.add_failure(meta.message_id);
                }
                Err(e) => {
                    meta.log.in_scope(|| warn!(job_id = %job_id, error = %e, "could not end the unforwarded job; SQS keeps it"));
                    if let Some(c) = run.consumer(&meta) {
                        c.fail("state_unavailable", &e.to_string());
                    }
                    run.response.add_failure(meta.message_id);
                }
            }
        }
    }

    /// Ends a job whose forward failed on its record's last receive, unless the forward
    /// reached the processor after all ([`JobStore::stop`]): the `FAILED`
    /// ending to announce, recorded already, or [`Forestalled::Taken`].
    async fn stop(
        &self,
        meta: RecordMeta,
        job: EnrichedJob,
        error: PortError,
        deadline: Timestamp,
        now: Timestamp,
    ) -> (
        RecordMeta,
        String,
        Result<(Forestalled, Option<Ending>), PortError>,
    ) {
        let job_id = job.job_id.clone();
        let prints = Fingerprints::of(&job.job);
        let letter = forward_failed(job, &meta, &error, now);
        let notification = Notification::for_dead_letter(&letter, now);
        let ending = Ending::new(meta.clone(), notification, Some(letter), Tracking::Stopped);
        let decided = self
            .store
            .stop(&stop_of(&ending, &prints, deadline, now))
            .await;
        let answer = match decided {
            Ok(Forestalled::Ended) => Ok((Forestalled::Ended, Some(ending))),
            // This message's own stop, left unannounced by its earlier delivery.
            Ok(Forestalled::Unannounced) => {
                let job = ending
                    .dead_letter
                    .as_ref()
                    .map(|dl| dl.job.clone())
                    .unwrap_or_default();
                match recorded(&self.store, Stage::Processor, &job_id, &job, None).await {
                    Ok(Some((n, letter))) => {
                        let again = Ending::new(meta.clone(), n, letter, Tracking::Stopped);
                        Ok((Forestalled::Ended, Some(again)))
                    }
                    Ok(None) => Ok((Forestalled::Taken, None)),
                    Err(e) => Err(e),
                }
            }
            other => other.map(|d| (d, None)),
        };
        (meta, job_id, answer)
    }
}

/// The code and message of an ending's last error, for its span.
fn ending_error(ending: &Option<Ending>) -> (&str, &str) {
    ending
        .as_ref()
        .and_then(|e| e.notification.errors.last())
        .map_or((ErrorCode::ForwardFailed.as_str(), ""), |e| {
            (e.code.as_str(), e.message.as_str())
        })
}

fn forward_failed(
    job: EnrichedJob,
    meta: &RecordMeta,
    error: &PortError,
    now: DateTime<Utc>,
) -> DeadLetter {
    let error = ErrorEntry::new(
        Stage::Ingester,
        ErrorCode::ForwardFailed,
        format!("could not forward the job to jobs-todo: {error}"),
        meta.receive_count,
        now,
    );
    DeadLetter::failed(job, error)
}

/// The `jobs-todo.fifo` message for a job with an ordering key: its group is the key
/// ([`fifo_group`]), and its deduplication id names this delivery of the event, so a
/// send repeated after a lost answer is dropped by SQS while a replay goes through.
fn ordered_message(job: &EnrichedJob, meta: &RecordMeta) -> OutgoingMessage {
    let mut message = enriched_message(job);
    let key = ordering_key(&job.job).unwrap_or_default();
    let dedup = Sha256::digest(format!("{}\n{}", meta.message_id, job.job_id));
    message.group = Some(MessageGroup {
        group_id: fifo_group(key),
        deduplication_id: dedup.iter().map(|b| format!("{b:02x}")).collect(),
    });
    message
}

/// The `MessageGroupId` of an ordering key: the key itself when SQS takes it (ASCII
/// letters, digits and punctuation), else `key-` and the SHA-256 of the key, so any
/// key an `id` may be has a group of its own (two keys sharing a group would only
/// run one at a time together).
pub fn fifo_group(key: &str) -> String {
    if key.bytes().all(|b| b.is_ascii_graphic()) && key.len() <= 128 {
        return key.to_owned();
    }
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("key-{hex}")
}

/// Sends FIFO messages so that a group's later message is sent only once the one
/// before it was accepted: in rounds, the first message of each group, then the
/// second, and so on. A message whose predecessor failed is not sent (it fails as
/// held back), so SQS never holds a group's later job ahead of an earlier one that
/// the ingester will send again.
pub async fn send_in_order<Q: MessageQueue + ?Sized>(
    queue: &Q,
    messages: &[OutgoingMessage],
) -> Vec<Result<(), PortError>> {
    let group = |i: usize| messages[i].group.as_ref().map(|g| g.group_id.as_str());
    let mut results: Vec<Option<Result<(), PortError>>> = vec![None; messages.len()];
    let mut pending: Vec<usize> = (0..messages.len()).collect();
    while !pending.is_empty() {
        let mut round = Vec::new();
        let mut later = Vec::new();
        for i in pending {
            let blocked = results[..i]
                .iter()
                .enumerate()
                .any(|(j, r)| group(j) == group(i) && matches!(r, Some(Err(_))));
            let waiting = round
                .iter()
                .chain(&later)
                .any(|&j: &usize| group(j) == group(i));
            if blocked {
                results[i] = Some(Err(held_back()));
            } else if waiting {
                later.push(i);
            } else {
                round.push(i);
            }
        }
        let batch: Vec<OutgoingMessage> = round.iter().map(|&i| messages[i].clone()).collect();
        for (i, result) in round.into_iter().zip(send_all(queue, &batch).await) {
            results[i] = Some(result);
        }
        pending = later;
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(held_back())))
        .collect()
}

/// A message not sent because an earlier one of its group failed.
fn held_back() -> PortError {
    PortError::Refused {
        operation: "SendMessageBatch",
        message: "held back: an earlier job with the same ordering_key was not forwarded".into(),
    }
}

/// A failed forward with receives left: SQS retries the record.
fn retry_forward(run: &mut Run, meta: RecordMeta, job_id: &str, e: &PortError) {
    meta.log
        .in_scope(|| warn!(job_id = %job_id, error = %e, "forwarding failed; SQS will retry"));
    if let Some(c) = run.consumer(&meta) {
        c.fail(
            ErrorCode::ForwardFailed.as_str(),
            &format!("{e}; SQS will retry"),
        );
    }
    run.response.add_failure(meta.message_id);
}
