//! Replays of archived job events, and the operator's *rerun* of the jobs among them
//! that had ended.
//!
//! A replayed event is a copy of one EventBridge accepted before, so a job that ended
//! is not run again: the claims see to that at either stage. An operator may ask for
//! the ended jobs of some statuses (`FAILED`, `REJECTED`) to run once more, after a
//! fix. The ask is a [`ReplayOrder`], written before the replay starts; the ingester
//! reads it when an event carries the replay's name (`replay-name`).
//!
//! A rerun happens once per replay and job, however often the replayed event is
//! delivered: one `TransactWriteItems` both puts the replay's *mark* for the job
//! (only if there is none) and reopens the ended record (only if it is still the end
//! that was read), as an operator's redrive reopens it. Once the mark exists no
//! delivery reopens the job again; a delivery that finds the rerun not yet claimed
//! sends it on, and the stage's claim runs one of its copies ([`after_mark`]). The job
//! then ends once more under the next attempt.

use crate::messages::{ErrorEntry, JobStatus, Stage};
use crate::ports::PortError;
use crate::store::{same_content, JobState, Progress};
use crate::Timestamp;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The longest replay name EventBridge accepts.
pub const MAX_NAME_CHARS: usize = 64;

/// At most this many job ids in one order: the order is one item, under DynamoDB's
/// 400 KB, with ids of up to 128 characters.
pub const MAX_JOB_IDS: usize = 2_000;

/// What an operator asked of a replay, beyond sending the events again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayOrder {
    pub name: String,
    /// The ended statuses to run again (`FAILED`, `REJECTED`); empty: none.
    #[serde(default)]
    pub rerun: Vec<JobStatus>,
    /// Only the events of these jobs are let through; `None`: every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_ids: Option<BTreeSet<String>>,
}

/// Why a replay order cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("the replay name must be 1 to {MAX_NAME_CHARS} of A-Z a-z 0-9 . - _, got {0:?}")]
    Name(String),
    #[error("only FAILED and REJECTED jobs can be run again, not {0}")]
    Rerun(&'static str),
    #[error("at most {MAX_JOB_IDS} job ids per replay, got {0}")]
    TooManyIds(usize),
}

impl ReplayOrder {
    /// An order, checked: a name EventBridge accepts, rerun statuses that are ends a
    /// job can be taken back from, and an id list that fits one item.
    pub fn new(
        name: &str,
        rerun: Vec<JobStatus>,
        job_ids: Option<BTreeSet<String>>,
    ) -> Result<ReplayOrder, OrderError> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || ".-_".contains(c);
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || !name.chars().all(ok_char) {
            return Err(OrderError::Name(name.to_owned()));
        }
        if let Some(s) = rerun
            .iter()
            .find(|s| !matches!(s, JobStatus::Failed | JobStatus::Rejected))
        {
            return Err(OrderError::Rerun(s.as_str()));
        }
        if let Some(n) = job_ids
            .as_ref()
            .map(BTreeSet::len)
            .filter(|n| *n > MAX_JOB_IDS)
        {
            return Err(OrderError::TooManyIds(n));
        }
        Ok(ReplayOrder {
            name: name.to_owned(),
            rerun,
            job_ids,
        })
    }

    /// Whether the replay lets this job's events through.
    pub fn includes(&self, job_id: &str) -> bool {
        self.job_ids.as_ref().is_none_or(|ids| ids.contains(job_id))
    }

    /// The statuses to run again that `stage` can have ended a job with.
    pub fn rerun_at(&self, stage: Stage) -> Vec<JobStatus> {
        self.rerun
            .iter()
            .copied()
            .filter(|s| stage == Stage::Processor || *s == JobStatus::Rejected)
            .collect()
    }
}

/// A replay's mark on one job: the rerun it started, and at which stage. One per
/// replay and job, whatever the stage, so a job whose end moved from one stage to the
/// other (rejected before, run now) is rerun once, not once per stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RerunMark {
    /// The stage whose end was reopened.
    pub stage: Stage,
    /// The SQS message id of the delivery that reopened the record (for operators).
    pub holder: String,
    /// The attempt the record was reopened at; the rerun claims the next one.
    pub below: u32,
    /// The error history of the end that was reopened.
    pub errors: Vec<ErrorEntry>,
}

/// A replayed event's request to look at (and perhaps reopen) its job's end.
#[derive(Debug, Clone)]
pub struct Rerun<'a> {
    pub replay: &'a str,
    pub job_id: &'a str,
    pub stage: Stage,
    pub fingerprint: &'a str,
    pub legacy_fingerprint: Option<&'a str>,
    /// The ended statuses to run again at this stage ([`ReplayOrder::rerun_at`]).
    pub statuses: &'a [JobStatus],
    /// The SQS message id of the replayed event's delivery.
    pub holder: &'a str,
}

/// What a replayed event finds of its job at one stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Rerunning {
    /// No end of this content here: the event goes on as any delivery would.
    Open,
    /// Ended, and not to be run again: the event is a repeat.
    Ended(JobStatus),
    /// Ended with a status to run again, but not announced yet: its end goes out
    /// first (by its stage or the relay), so ask again later.
    Unannounced,
    /// Reopened for this replay (now, or by an earlier delivery whose rerun nobody has
    /// claimed yet): run the job as attempt `below + 1`, continuing the history its end
    /// had.
    Rerun { below: u32, errors: Vec<ErrorEntry> },
    /// This replay reopened the job, and its rerun is claimed: this copy is a repeat.
    Elsewhere,
}

/// What [`decide_rerun`] makes of the records it was given.
#[derive(Debug, Clone, PartialEq)]
pub enum RerunStep {
    Answer(Rerunning),
    /// Reopen `seen` (the end as read) at attempt `mark.below`, and mark it.
    Reopen {
        seen: JobState,
        mark: RerunMark,
    },
}

/// Decides a replayed event against its job's record at one stage and this replay's
/// mark on it, for every store alike.
pub fn decide_rerun(
    current: Option<&JobState>,
    mark: Option<&RerunMark>,
    rerun: &Rerun<'_>,
) -> RerunStep {
    if let Some(mark) = mark {
        return RerunStep::Answer(after_mark(current, mark, rerun.stage));
    }
    let Some(cur) = current
        .filter(|c| same_content(&c.fingerprint, rerun.fingerprint, rerun.legacy_fingerprint))
    else {
        return RerunStep::Answer(Rerunning::Open);
    };
    let Progress::Done(Some(status)) = cur.progress else {
        return RerunStep::Answer(Rerunning::Open);
    };
    if !rerun.statuses.contains(&status) {
        return RerunStep::Answer(Rerunning::Ended(status));
    }
    if !cur.announced {
        return RerunStep::Answer(Rerunning::Unannounced);
    }
    RerunStep::Reopen {
        seen: cur.clone(),
        mark: RerunMark {
            stage: rerun.stage,
            holder: rerun_holder(rerun.replay, rerun.holder),
            below: rerun_below(rerun.stage, cur.attempt),
            errors: recorded_errors(cur),
        },
    }
}

/// What a delivery makes of a job this replay reopened already, looking at `stage`'s
/// record (`current`).
///
/// - The processor's end was reopened: a rerun nobody has claimed yet (the record still
///   back at the mark's attempt) is sent again, and the processor's claim runs one of
///   any number of copies. Once claimed, the rerun is on its way and this copy is not
///   needed.
/// - The ingester's end was reopened: at the ingester's record, its own claim decides
///   between copies as for any rejection, so every delivery goes on to it. At the
///   processor's, a record means the rerun (now valid) was forwarded and claimed; none
///   yet, and the copy goes on to the ingester's record.
fn after_mark(current: Option<&JobState>, mark: &RerunMark, stage: Stage) -> Rerunning {
    let rerun = Rerunning::Rerun {
        below: mark.below,
        errors: mark.errors.clone(),
    };
    match (mark.stage, stage) {
        (Stage::Processor, Stage::Processor) => {
            let unclaimed = current
                .is_some_and(|c| c.progress == Progress::Retrying && c.attempt == mark.below);
            if unclaimed {
                rerun
            } else {
                Rerunning::Elsewhere
            }
        }
        (Stage::Ingester, Stage::Ingester) => rerun,
        (Stage::Ingester, Stage::Processor) if current.is_none() => Rerunning::Open,
        // The rerun went the other way (a rejection that passes now and ran, or a
        // processor end whose event is refused now): this copy is not needed.
        _ => Rerunning::Elsewhere,
    }
}

/// The attempt a rerun reopens a record at. The processor's attempts go on from the
/// end's; the ingester's claim is always attempt 1, so its record goes back to 0, as a
/// redrive leaves it.
fn rerun_below(stage: Stage, ended: u32) -> u32 {
    match stage {
        Stage::Processor => ended,
        Stage::Ingester => 0,
    }
}

/// The error history an end was recorded with (empty if it cannot be read).
fn recorded_errors(record: &JobState) -> Vec<ErrorEntry> {
    record
        .detail
        .as_ref()
        .and_then(|d| d.get("errors"))
        .and_then(|e| serde_json::from_value(e.clone()).ok())
        .unwrap_or_default()
}

/// The record as a rerun leaves it: back for the attempt after `below`, held by the
/// replayed event's delivery, out of the outbox (its end went out already).
pub fn reopened(record: &mut JobState, mark: &RerunMark, now: Timestamp) {
    record.progress = Progress::Retrying;
    record.attempt = mark.below;
    record.holder.clone_from(&mark.holder);
    record.announced = false;
    record.updated_at = now;
    record.expires_at = now + super::RETENTION;
}

/// The holder a rerun leaves on the record it reopens: the replay's name and the
/// delivery that reopened it. Only that replay's rerun may run it: a keyed job's plain
/// copy, which reads its attempt from the record ([`crate::processor`]), must not
/// carry out another replay's rerun under its own name.
pub fn rerun_holder(replay: &str, message_id: &str) -> String {
    format!("{RERUN_HOLDER}{replay}:{message_id}")
}

/// What a rerun's holder starts with ([`rerun_holder`]).
pub const RERUN_HOLDER: &str = "rerun:";

/// Whether `record` was reopened by a replay's rerun, and may be run only by that
/// replay's rerun (`replay`: the name and rerun flag of the copy at hand).
pub fn rerun_of_another(record: &JobState, replay: Option<&crate::messages::Replayed>) -> bool {
    let Some(name) = record
        .holder
        .strip_prefix(RERUN_HOLDER)
        .and_then(|rest| rest.split_once(':'))
        .map(|(name, _)| name)
    else {
        return false;
    };
    record.progress == Progress::Retrying && !replay.is_some_and(|r| r.rerun && r.name == name)
}

/// What the ingester needs of the table to follow a replay.
#[async_trait]
pub trait Replays: Send + Sync {
    /// The operator's order for the replay `name`; `None` if it wrote none (a replay
    /// started by hand: its events are let through, and nothing is run again).
    async fn replay_order(&self, name: &str) -> Result<Option<ReplayOrder>, PortError>;

    /// Looks at a replayed event's job at one stage and reopens its end when the
    /// order asks to run it again ([`decide_rerun`]): once per replay and job.
    async fn rerun(&self, rerun: &Rerun<'_>, now: Timestamp) -> Result<Rerunning, PortError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_names_only_what_eventbridge_and_a_rerun_accept() {
        assert!(ReplayOrder::new("fix-2026.12_01", vec![JobStatus::Failed], None).is_ok());
        for bad in ["", "has space", "slash/", &"x".repeat(65)] {
            assert_eq!(
                ReplayOrder::new(bad, vec![], None),
                Err(OrderError::Name(bad.to_owned()))
            );
        }
        assert_eq!(
            ReplayOrder::new("r", vec![JobStatus::Completed], None),
            Err(OrderError::Rerun("COMPLETED"))
        );
        let many = (0..=MAX_JOB_IDS).map(|i| i.to_string()).collect();
        assert_eq!(
            ReplayOrder::new("r", vec![], Some(many)),
            Err(OrderError::TooManyIds(MAX_JOB_IDS + 1))
        );
    }

    #[test]
    fn a_record_reopened_by_a_rerun_is_that_rerun_s_only() {
        let record = JobState {
            job_id: "job-k".into(),
            stage: Stage::Processor,
            progress: Progress::Retrying,
            fingerprint: "fp".into(),
            attempt: 2,
            lease_until: crate::Timestamp::UNIX_EPOCH,
            holder: rerun_holder("replay-b", "msg:1"),
            token: String::new(),
            announced: false,
            letter_stored: false,
            detail: None,
            updated_at: crate::Timestamp::UNIX_EPOCH,
            expires_at: crate::Timestamp::UNIX_EPOCH,
        };
        let replayed = |name: &str, rerun| crate::messages::Replayed {
            name: name.into(),
            rerun,
        };
        assert!(!rerun_of_another(
            &record,
            Some(&replayed("replay-b", true))
        ));
        assert!(
            rerun_of_another(&record, Some(&replayed("replay-b", false))),
            "a plain copy (sequence 8)"
        );
        assert!(
            rerun_of_another(&record, Some(&replayed("replay-a", true))),
            "another replay's rerun"
        );
        assert!(rerun_of_another(&record, None), "the live event");
        let in_place = JobState {
            holder: "fifo-msg-1".into(),
            ..record
        };
        assert!(
            !rerun_of_another(&in_place, None),
            "the processor's own retry in place"
        );
    }

    #[test]
    fn the_ingester_reruns_only_rejections() {
        let order =
            ReplayOrder::new("r", vec![JobStatus::Failed, JobStatus::Rejected], None).expect("ok");
        assert_eq!(order.rerun_at(Stage::Ingester), vec![JobStatus::Rejected]);
        assert_eq!(order.rerun_at(Stage::Processor).len(), 2);
        assert!(order.includes("any"));
        let some = ReplayOrder::new("r", vec![], Some(["a".to_owned()].into())).expect("ok");
        assert!(some.includes("a") && !some.includes("b"));
    }
}
