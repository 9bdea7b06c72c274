//! Claiming a record's job in the job state table, and what the claim's answer makes of
//! the record: forward it, end it, announce a recorded end, skip a repeat, or leave it
//! in SQS for later.

use super::triage::reject;
use super::{Action, Ingester, Verdict};
use crate::ending::{give_back, recorded, Tracking};
use crate::job::{ErrorCode, Rejection};
use crate::messages::Stage;
use crate::ports::{MessageQueue, Topic};
use crate::record::RecordMeta;
use crate::store::{Claim, ClaimOutcome, Fingerprints, JobStore, Progress};
use chrono::{DateTime, Utc};

impl<Q: MessageQueue, T: Topic, S: JobStore> Ingester<Q, T, S> {
    /// Claims the record's job and decides what to do with it.
    pub(super) async fn claim(
        &self,
        verdict: Verdict,
        meta: &RecordMeta,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Action {
        let (job_id, content, trace_context) = match &verdict {
            Verdict::Forward(job, _) => (&job.job_id, &job.job, job.trace_context.as_ref()),
            Verdict::Reject(dl, _) => (&dl.job_id, &dl.job, dl.trace_context.as_ref()),
        };
        let prints = Fingerprints::of(content);
        let claim = Claim::for_delivery(meta, job_id, Stage::Ingester, 1, &prints, deadline);
        let outcome = match self.store.claim(&claim, now).await {
            Ok(outcome) => outcome,
            Err(e) => {
                // The claim may have taken effect with its answer lost: give it back
                // (only if it holds this delivery's token), so the next delivery takes
                // the job at once instead of waiting for the lease.
                give_back(&self.store, Stage::Ingester, job_id, 1, meta, now).await;
                return Action::Later(job_id.clone(), e.to_string());
            }
        };
        match outcome {
            ClaimOutcome::Claimed => match verdict {
                Verdict::Forward(job, t) => Action::Forward(job, t),
                Verdict::Reject(dl, t) => Action::End(dl, Tracking::Finish { attempt: 1 }, t),
            },
            ClaimOutcome::Duplicate {
                progress: Progress::Done(Some(_)),
                announced: false,
            } => match recorded(&self.store, Stage::Ingester, job_id, content, trace_context).await
            {
                Ok(Some((n, dl))) => Action::Announce(n, dl),
                Ok(None) => Action::Repeat(job_id.clone(), "duplicate"),
                Err(e) => Action::Later(job_id.clone(), e.to_string()),
            },
            ClaimOutcome::Duplicate { .. } => Action::Repeat(job_id.clone(), "duplicate"),
            ClaimOutcome::Stale => Action::Repeat(job_id.clone(), "stale"),
            ClaimOutcome::Busy { until } => Action::Later(
                job_id.clone(),
                format!("another delivery holds the job until {until}"),
            ),
            ClaimOutcome::Held { until } => Action::Later(
                job_id.clone(),
                format!("an earlier delivery of this record holds the job until {until}"),
            ),
            // Another job owns the id; this one is rejected without touching its record.
            ClaimOutcome::Conflict { fingerprint } => {
                id_reused(verdict, &fingerprint, &prints.current, meta, now)
            }
        }
    }
}

/// The verdict on a job whose id another job's record holds: a job that would have
/// been forwarded is rejected instead, and neither ending touches that record.
fn id_reused(
    verdict: Verdict,
    theirs: &str,
    ours: &str,
    meta: &RecordMeta,
    now: DateTime<Utc>,
) -> Action {
    match verdict {
        Verdict::Forward(job, t) => {
            let rejection = Rejection::new(
                ErrorCode::IdReused,
                Some("id"),
                format!(
                    "id {} was already used for a job with different content (fingerprint {theirs}, this one {ours}); send it with a new id",
                    job.job_id
                ),
            );
            let dl = reject(job.job_id, job.trace_context, job.job, rejection, meta, now);
            Action::End(dl, Tracking::Untracked, t)
        }
        Verdict::Reject(dl, t) => Action::End(dl, Tracking::Untracked, t),
    }
}
