//! What becomes of a record once triaged: a valid job is forwarded as it is; a
//! rejection ends as a stop on the processor's record ([`crate::store::Stop`]), so a
//! job has one record that decides its end whichever stage ends it. A rejection of a
//! job the ingester has a record of (written before rejections were stops) is claimed
//! there, and the claim's answer makes of it an end, the announcement of a recorded
//! end, a skipped repeat, or a record left in SQS.
//!
//! Why a forward needs no record: a job forwarded twice (an event delivered again, or
//! sent again by its producer) is claimed by the processor under the same rules, so it
//! still runs and ends once, and a reused id is caught there. Writing an ingester
//! record for it would cost two writes per job for no guarantee the processor does not
//! give already.

use super::{Action, Ingester, Verdict};
use crate::ending::{give_back, recorded, stop_of, Ending, Tracking};
use crate::messages::{DeadLetter, Notification, Stage};
use crate::ports::{MessageQueue, Topic};
use crate::record::RecordMeta;
use crate::store::{Claim, ClaimOutcome, Fingerprints, Forestalled, JobStore, Progress};
use chrono::{DateTime, Utc};

impl<Q: MessageQueue, T: Topic, S: JobStore + crate::store::Replays> Ingester<Q, T, S> {
    /// Decides what to do with a record by its verdict: a valid job is forwarded
    /// without a record of its own (the processor's claim makes it run and end once,
    /// however often it is forwarded); a rejection is ended as a stop.
    pub(super) async fn claim(
        &self,
        verdict: Verdict,
        meta: &RecordMeta,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Action {
        let (dl, event_time) = match verdict {
            Verdict::Forward(job, t) => return Action::Forward(job, t),
            Verdict::Reject(dl, t) => (dl, t),
        };
        // A rejection ends on the processor's record, as a stop, unless the ingester
        // has a record of the job: one written before rejections were stops.
        match self.store.get(&dl.job_id).await {
            Ok(records) if !records.iter().any(|r| r.stage == Stage::Ingester) => {
                self.reject_as_stop(dl, event_time, meta, deadline, now)
                    .await
            }
            Ok(_) => self.claim_own(dl, event_time, meta, deadline, now).await,
            Err(e) => Action::Later(dl.job_id, e.to_string()),
        }
    }

    /// Ends a rejection as a stop on the processor's record ([`crate::store::Stop`]):
    /// so it cannot end a job the processor has, or one a copy of reaches it later.
    async fn reject_as_stop(
        &self,
        dl: DeadLetter,
        event_time: Option<String>,
        meta: &RecordMeta,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Action {
        let job_id = dl.job_id.clone();
        let notification = Notification::for_dead_letter(&dl, now);
        let prints = Fingerprints::of(&dl.job);
        let ending = Ending::new(
            meta.clone(),
            notification,
            Some(dl.clone()),
            Tracking::Stopped,
        );
        let stopped = self
            .store
            .stop(&stop_of(&ending, &prints, deadline, now))
            .await;
        let notification = ending.notification;
        match stopped {
            Ok(Forestalled::Ended) => Action::Stopped(dl, notification, event_time),
            Ok(Forestalled::Unannounced) => {
                self.announce_recorded(Stage::Processor, &dl, Tracking::Stopped)
                    .await
            }
            Ok(Forestalled::Taken) => Action::Repeat(job_id, "duplicate"),
            // Another job owns the id: this rejection ends without touching its record.
            Ok(Forestalled::OtherContent { .. }) => {
                Action::End(dl, Tracking::Untracked, event_time)
            }
            Err(e) => Action::Later(job_id, e.to_string()),
        }
    }

    /// A rejection claimed on the ingester's own record, as rejections were before
    /// they were stops: a job rejected then ends on the record it has.
    async fn claim_own(
        &self,
        dl: DeadLetter,
        event_time: Option<String>,
        meta: &RecordMeta,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Action {
        let prints = Fingerprints::of(&dl.job);
        let claim = Claim::for_delivery(meta, &dl.job_id, Stage::Ingester, 1, &prints, deadline);
        let outcome = match self.store.claim(&claim, now).await {
            Ok(outcome) => outcome,
            Err(e) => {
                // The claim may have taken effect with its answer lost: give it back
                // (only if it holds this delivery's token), so the next delivery takes
                // the job at once instead of waiting for the lease.
                give_back(&self.store, Stage::Ingester, &dl.job_id, 1, meta, now).await;
                return Action::Later(dl.job_id, e.to_string());
            }
        };
        let job_id = dl.job_id.clone();
        match outcome {
            ClaimOutcome::Claimed => Action::End(dl, Tracking::Finish { attempt: 1 }, event_time),
            ClaimOutcome::Duplicate {
                progress: Progress::Done(Some(_)),
                announced: false,
            } => {
                self.announce_recorded(Stage::Ingester, &dl, Tracking::Recorded)
                    .await
            }
            ClaimOutcome::Duplicate { .. } => Action::Repeat(job_id, "duplicate"),
            ClaimOutcome::Stale => Action::Repeat(job_id, "stale"),
            ClaimOutcome::Busy { until } => Action::Later(
                job_id,
                format!("another delivery holds the job until {until}"),
            ),
            ClaimOutcome::Held { until } => Action::Later(
                job_id,
                format!("an earlier delivery of this record holds the job until {until}"),
            ),
            // Another job owns the id: this rejection ends without touching its record.
            ClaimOutcome::Conflict { .. } => Action::End(dl, Tracking::Untracked, event_time),
        }
    }

    /// The end `stage`'s record holds for the rejection `dl`, recorded by an earlier
    /// delivery and not announced: announced now, marked as `tracking` says.
    async fn announce_recorded(&self, stage: Stage, dl: &DeadLetter, tracking: Tracking) -> Action {
        let job_id = dl.job_id.clone();
        let trace_context = dl.trace_context.as_ref();
        match recorded(&self.store, stage, &job_id, &dl.job, trace_context).await {
            Ok(Some((n, letter))) => Action::Announce(n, letter, tracking),
            Ok(None) => Action::Repeat(job_id, "duplicate"),
            Err(e) => Action::Later(job_id, e.to_string()),
        }
    }
}
