//! Replayed events (`replay-name` set): what the operator's [`ReplayOrder`] and the
//! job's records make of one before it is forwarded or claimed.
//!
//! A replayed event is a copy of one that came in before, so a job that ended is not
//! run again: it is a repeat here, without a forward (a valid job's end is the
//! processor's record; a job rejected before, even one that would pass now, is the
//! ingester's). A job that never ended goes on as any delivery would: that is what a
//! replay after an outage is for. The order may narrow the replay to some job ids and
//! ask for ends of some statuses to run again ([`crate::store::replay`]): a rerun of a
//! processor end is forwarded as the attempt after the end's, with its history; a
//! rerun of a rejection is validated again and claimed as a new end.

use super::{Action, Ingester, Verdict};
use crate::messages::{JobStatus, Replayed, Stage};
use crate::ports::{MessageQueue, Topic};
use crate::record::RecordMeta;
use crate::store::{Fingerprints, JobStore, ReplayOrder, Replays, Rerun, Rerunning};
use aws_lambda_events::sqs::SqsEvent;
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

/// The orders of the replays a batch's events came in, read once per batch: an
/// order, none (a replay started by hand), or why it could not be read.
pub(super) type Orders = HashMap<String, Result<Option<ReplayOrder>, String>>;

/// What a replayed event goes on as, or the action that settles it here.
type Followed = Result<Verdict, Action>;

impl<Q: MessageQueue, T: Topic, S: JobStore + Replays> Ingester<Q, T, S> {
    /// Reads the order of every replay the batch's events name.
    pub(super) async fn replay_orders(&self, event: &SqsEvent) -> Orders {
        let names: BTreeSet<String> = event
            .records
            .iter()
            .filter_map(|r| r.body.as_deref())
            // Most events are live: look for the field before reading the body twice.
            .filter(|body| body.contains("\"replay-name\""))
            .filter_map(|body| crate::messages::EventEnvelope::from_body(body)?.replay_name)
            .collect();
        let read = names.into_iter().map(|name| async move {
            let order = self.store.replay_order(&name).await;
            (name, order.map_err(|e| e.to_string()))
        });
        join_all(read).await.into_iter().collect()
    }

    /// A replayed verdict as the order and the job's records make it; any other
    /// verdict as it is.
    pub(super) async fn follow_replay(
        &self,
        verdict: Verdict,
        orders: &Orders,
        meta: &RecordMeta,
        now: DateTime<Utc>,
    ) -> Followed {
        let Some(name) = replay_of(&verdict).map(|r| r.name.clone()) else {
            return Ok(verdict);
        };
        let job_id = job_id_of(&verdict).to_owned();
        let order = match orders.get(&name) {
            Some(Ok(order)) => order.clone(),
            Some(Err(e)) => {
                let why = format!("the order of replay {name} cannot be read: {e}");
                return Err(Action::Later(job_id, why));
            }
            None => None,
        };
        if !names_its_job(&verdict) {
            return Err(Action::Repeat(job_id, "no_job_id"));
        }
        if order.as_ref().is_some_and(|o| !o.includes(&job_id)) {
            return Err(Action::Repeat(job_id, "not_replayed"));
        }
        let looker = Looker {
            ingester: self,
            replay: &name,
            order: order.as_ref(),
            meta,
            now,
        };
        match verdict {
            Verdict::Forward(job, t) => looker.forward(job, t).await,
            Verdict::Reject(dl, t) => looker.reject(dl, t).await,
        }
    }
}

/// One replayed event's look at its job's records.
struct Looker<'a, Q, T, S> {
    ingester: &'a Ingester<Q, T, S>,
    replay: &'a str,
    order: Option<&'a ReplayOrder>,
    meta: &'a RecordMeta,
    now: DateTime<Utc>,
}

impl<Q: MessageQueue, T: Topic, S: JobStore + Replays> Looker<'_, Q, T, S> {
    /// A valid job: repeated if it ended at either stage (unless rerun), forwarded
    /// as the rerun's attempt if the processor's end is reopened.
    async fn forward(&self, mut job: crate::messages::EnrichedJob, t: Option<String>) -> Followed {
        let id = job.job_id.clone();
        match self.look(Stage::Processor, &id, &job.job, all).await {
            Ok(Rerunning::Open) => {}
            Ok(Rerunning::Rerun { below, errors }) => {
                job.attempt = below.saturating_add(1);
                job.errors = errors;
                mark_rerun(&mut job.replay);
                return Ok(Verdict::Forward(job, t));
            }
            Ok(other) => return Err(settled(id, &other)),
            Err(e) => return Err(Action::Later(id, e)),
        }
        // Rejected before, and valid now (the validator was fixed, say).
        match self.look(Stage::Ingester, &id, &job.job, all).await {
            Ok(Rerunning::Open) => Ok(Verdict::Forward(job, t)),
            Ok(Rerunning::Rerun { .. }) => {
                mark_rerun(&mut job.replay);
                Ok(Verdict::Forward(job, t))
            }
            Ok(other) => Err(settled(id, &other)),
            Err(e) => Err(Action::Later(id, e)),
        }
    }

    /// A rejection: a repeat if the job ended at the processor (it was valid when it
    /// came: a rule that refuses it now must not end it twice, so no processor end is
    /// rerun from here but a rejection: the ingester's own, stopped there, or the
    /// processor's). Else ended as any other, after a rerun reopened its earlier
    /// rejection (the stop, or the claim of an older ingester record, then makes it a
    /// new end) or with that end still there (found a duplicate, or announced if it
    /// went unannounced).
    async fn reject(&self, mut dl: crate::messages::DeadLetter, t: Option<String>) -> Followed {
        let id = dl.job_id.clone();
        let rejections = |s: &JobStatus| *s == JobStatus::Rejected;
        match self.look(Stage::Processor, &id, &dl.job, rejections).await {
            Ok(Rerunning::Open) => {}
            Ok(Rerunning::Rerun { .. }) => {
                mark_rerun(&mut dl.replay);
                return Ok(Verdict::Reject(dl, t));
            }
            Ok(Rerunning::Ended(_)) => return Err(Action::Repeat(id, "duplicate")),
            Ok(other) => return Err(settled(id, &other)),
            Err(e) => return Err(Action::Later(id, e)),
        }
        match self.look(Stage::Ingester, &id, &dl.job, all).await {
            Ok(Rerunning::Open | Rerunning::Ended(_)) => Ok(Verdict::Reject(dl, t)),
            Ok(Rerunning::Rerun { .. }) => {
                mark_rerun(&mut dl.replay);
                Ok(Verdict::Reject(dl, t))
            }
            Ok(other) => Err(settled(id, &other)),
            Err(e) => Err(Action::Later(id, e)),
        }
    }

    /// This job's end at `stage`, reopened if the order asks for its status and
    /// `rerun` lets it.
    async fn look(
        &self,
        stage: Stage,
        job_id: &str,
        content: &Value,
        rerun: impl Fn(&JobStatus) -> bool,
    ) -> Result<Rerunning, String> {
        let mut statuses = self.order.map(|o| o.rerun_at(stage)).unwrap_or_default();
        statuses.retain(|s| rerun(s));
        let prints = Fingerprints::of(content);
        let rerun = Rerun {
            replay: self.replay,
            job_id,
            stage,
            fingerprint: &prints.current,
            legacy_fingerprint: Some(&prints.legacy),
            statuses: &statuses,
            holder: &self.meta.message_id,
        };
        self.ingester
            .store
            .rerun(&rerun, self.now)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Every status an order asks to rerun.
fn all(_: &JobStatus) -> bool {
    true
}

/// The action for an answer that settles a replayed event here.
fn settled(job_id: String, answer: &Rerunning) -> Action {
    match answer {
        Rerunning::Unannounced => Action::Later(
            job_id,
            "its end is not announced yet; the rerun waits for it".into(),
        ),
        Rerunning::Elsewhere => Action::Repeat(job_id, "rerun_elsewhere"),
        // `Ended`; `Open` and `Rerun` never come here.
        _ => Action::Repeat(job_id, "duplicate"),
    }
}

fn mark_rerun(replay: &mut Option<Replayed>) {
    if let Some(r) = replay {
        r.rerun = true;
    }
}

fn replay_of(verdict: &Verdict) -> Option<&Replayed> {
    match verdict {
        Verdict::Forward(job, _) => job.replay.as_ref(),
        Verdict::Reject(dl, _) => dl.replay.as_ref(),
    }
}

/// Whether the job carries its own id. A job without one is known by its event's id,
/// and AWS does not promise that a replayed event keeps it: such a job could not be
/// told from its earlier run, so its replayed event is dropped rather than risk
/// running it twice.
fn names_its_job(verdict: &Verdict) -> bool {
    let (content, id) = match verdict {
        Verdict::Forward(job, _) => (&job.job, &job.job_id),
        Verdict::Reject(dl, _) => (&dl.job, &dl.job_id),
    };
    content.get("id").and_then(Value::as_str) == Some(id.as_str())
}

fn job_id_of(verdict: &Verdict) -> &str {
    match verdict {
        Verdict::Forward(job, _) => &job.job_id,
        Verdict::Reject(dl, _) => &dl.job_id,
    }
}

/// Whether a forward carries a rerun. A rerun's forward that cannot be made stays in
/// SQS (and, after its last receive, in the DLQ, from where `dlq redrive` sends it
/// on): ended as unforwarded it would find the reopened processor record and be taken
/// for forwarded, and the rerun would never run.
pub(super) fn is_rerun(job: &crate::messages::EnrichedJob) -> bool {
    job.replay.as_ref().is_some_and(|r| r.rerun)
}

#[cfg(test)]
mod tests;
