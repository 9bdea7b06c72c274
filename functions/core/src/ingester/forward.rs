//! Forwarding valid jobs to `jobs-todo` in batches, and what becomes of each record
//! whose forward failed: back to SQS, or, on its last receive, ended `FAILED` unless the
//! forward reached the processor after all ([`JobStore::end_unforwarded`]). A forwarded
//! job has no ingester record, so there is no claim to give back when a forward fails.

use super::{Ingester, Run};
use crate::ending::{recorded_detail, Ending, Tracking};
use crate::messages::{
    DeadLetter, EnrichedJob, ErrorCode, ErrorEntry, JobStatus, Notification, Stage,
};
use crate::ports::{send_all, MessageQueue, PortError, Topic};
use crate::record::{enriched_message, RecordMeta};
use crate::store::{Fingerprints, Forestalled, JobStore, Unforwarded};
use crate::Timestamp;
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use tracing::{info, warn};

/// A record's last receive whose forward failed, and the error.
type LastChance = (RecordMeta, EnrichedJob, PortError);

impl<Q: MessageQueue, T: Topic, S: JobStore + crate::store::Replays> Ingester<Q, T, S> {
    /// Sends every forward, then settles each record by its result. A last receive's
    /// end is announced by `deadline` or by the processor.
    pub(super) async fn forward(&self, run: &mut Run, deadline: Timestamp, now: Timestamp) {
        let forwards = std::mem::take(&mut run.forwards);
        let outgoing: Vec<_> = forwards
            .iter()
            .map(|(_, job, _)| enriched_message(job))
            .collect();
        let sent = send_all(&self.jobs_todo, &outgoing).await;
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
                .map(|(meta, job, e)| self.end_unforwarded(meta, job, e, deadline, now)),
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
                Ok((Forestalled::Taken, _)) => {
                    meta.log.in_scope(|| info!(job_id = %job_id, "the forward had reached jobs-todo: the processor has the job"));
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
    /// reached the processor after all ([`JobStore::end_unforwarded`]): the `FAILED`
    /// ending to announce, recorded already, or [`Forestalled::Taken`].
    async fn end_unforwarded(
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
        let end = Unforwarded {
            job_id: &job_id,
            fingerprint: &prints.current,
            legacy_fingerprint: Some(&prints.legacy),
            holder: &meta.message_id,
            token: &meta.claim_token,
            lease_until: deadline,
            detail: recorded_detail(&ending).unwrap_or_default(),
            now,
        };
        let decided = self.store.end_unforwarded(&end).await;
        let answer = decided.map(|d| (d, (d == Forestalled::Ended).then_some(ending)));
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
