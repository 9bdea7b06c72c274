//! Job state: what makes each stage's effects happen once over at-least-once delivery.
//!
//! Before a stage ends a job it *claims* it with a conditional write keyed by stage
//! and job id: the processor every job it runs, the ingester only the jobs it rejects
//! (a valid job is forwarded without a record, and the processor's claim makes its
//! copies end once). A claim holds a lease that ends shortly before the invocation's deadline,
//! so an attempt that crashed can be taken over once its lease ran out. The stage then
//! records the job's end (`finish`) and marks what it did of the end ([`Mark`]): its
//! dead letter stored, the end announced. So a re-delivery repeats neither the work,
//! nor the letter, nor the notification, and a crash between two steps repeats only
//! the step it cut. Each mark lands only on the end it names, never on a later one.
//!
//! Each claim carries a token unique to its delivery ([`claim_token`]): a claim sent
//! again after its answer was lost finds its own write and is claimed, another delivery
//! of the same message is held, and a delivery whose claim call failed gives back
//! ([`JobStore::release`]) only a claim holding its own token.
//!
//! The claim also carries a fingerprint of the job's content (SHA-256, without the
//! trace context a sender may change between copies): a job id reused for different
//! content is a [`ClaimOutcome::Conflict`], not a silent skip. Records written before
//! the fingerprint changed format (16 hex digits of FNV-1a) are compared with the old
//! function, so a repeat of such a job is still recognised.

pub mod dynamo;
pub mod memory;
pub mod outbox;
pub mod replay;
pub mod saga;

use crate::messages::{ErrorEntry, JobStatus, Notification, Stage};
use crate::record::RecordMeta;
use crate::telemetry::propagation;
use crate::Timestamp;
use async_trait::async_trait;
use chrono::TimeDelta;
use futures_util::future::join_all;
pub use memory::MemoryStore;
pub use outbox::{Outbox, Stranded, Take};
pub use replay::{ReplayOrder, Replays, Rerun, Rerunning};
pub use saga::Sagas;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::ports::PortError;

/// Where a stage stands with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// An attempt holds the claim until its lease ends.
    InProgress,
    /// An attempt failed and the job was sent back for attempt `attempt + 1`.
    Retrying,
    /// The stage is done with the job: forwarded, or ended as this status.
    Done(Option<JobStatus>),
}

impl Progress {
    pub fn as_str(self) -> &'static str {
        match self {
            Progress::InProgress => "IN_PROGRESS",
            Progress::Retrying => "RETRYING",
            Progress::Done(None) => "FORWARDED",
            Progress::Done(Some(s)) => s.as_str(),
        }
    }

    pub fn parse(s: &str) -> Option<Progress> {
        Some(match s {
            "IN_PROGRESS" => Progress::InProgress,
            "RETRYING" => Progress::Retrying,
            "FORWARDED" => Progress::Done(None),
            "COMPLETED" => Progress::Done(Some(JobStatus::Completed)),
            "FAILED" => Progress::Done(Some(JobStatus::Failed)),
            "REJECTED" => Progress::Done(Some(JobStatus::Rejected)),
            _ => return None,
        })
    }
}

/// One stage's record of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    pub job_id: String,
    pub stage: Stage,
    pub progress: Progress,
    pub fingerprint: String,
    pub attempt: u32,
    pub lease_until: Timestamp,
    /// The SQS message id of the delivery holding the claim: its own re-delivery may
    /// resume an unannounced end while the lease lasts, a copy may not.
    pub holder: String,
    /// The claim token of the delivery holding the claim (see [`Claim::token`]);
    /// empty for records written before claims carried one.
    pub token: String,
    pub announced: bool,
    /// Whether the dead letter of the end it holds is stored ([`Marked::LetterStored`]):
    /// whoever announces the end later publishes without storing the letter again.
    pub letter_stored: bool,
    /// The result or the last error, for people looking at a job.
    pub detail: Option<Value>,
    pub updated_at: Timestamp,
    /// When the record may be deleted (DynamoDB TTL).
    pub expires_at: Timestamp,
}

/// A request to act on a job.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub job_id: &'a str,
    pub stage: Stage,
    /// [`fingerprint`] of the job's content.
    pub fingerprint: &'a str,
    /// [`legacy_fingerprint`] of the same job, to recognise records written before
    /// [`fingerprint`] changed format; `None` when there are none to recognise.
    pub legacy_fingerprint: Option<&'a str>,
    pub attempt: u32,
    pub lease_until: Timestamp,
    /// The SQS message id of this delivery.
    pub holder: &'a str,
    /// This delivery's claim token (a [`claim_token`] made once per record and
    /// invocation), or `""` for none; the record keeps it as [`JobState::token`].
    /// With a token, a retry of this very claim (the SDK's, after a lost answer) finds
    /// the record holding it and is [`ClaimOutcome::Claimed`] again, while another
    /// delivery of the same message (another token) is still [`ClaimOutcome::Held`].
    /// No token matches nothing.
    pub token: &'a str,
    /// The error history the attempt runs with (`{"errors": [...]}`), kept in the record
    /// it writes: a keyed job's attempts are read back from its record
    /// ([`crate::processor`]'s `resume`), so a crash must not lose the ones before.
    pub history: Option<&'a Value>,
}

impl<'a> Claim<'a> {
    /// The claim of one delivery of a record (`meta`) on `job_id` at `stage`: it
    /// carries both fingerprints of the job's content and is held by the record's
    /// message id and claim token until `lease_until`.
    pub fn for_delivery(
        meta: &'a RecordMeta,
        job_id: &'a str,
        stage: Stage,
        attempt: u32,
        prints: &'a Fingerprints,
        lease_until: Timestamp,
    ) -> Claim<'a> {
        Claim {
            job_id,
            stage,
            fingerprint: &prints.current,
            legacy_fingerprint: Some(&prints.legacy),
            attempt,
            lease_until,
            holder: &meta.message_id,
            token: &meta.claim_token,
            history: None,
        }
    }
}

/// A job content's [`fingerprint`] and its [`legacy_fingerprint`]: what a request
/// compares with a record to tell the same job from a reused id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprints {
    pub current: String,
    pub legacy: String,
}

impl Fingerprints {
    pub fn of(job: &Value) -> Fingerprints {
        Fingerprints {
            current: fingerprint(job),
            legacy: legacy_fingerprint(job),
        }
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// Go ahead.
    Claimed,
    /// The stage already finished this job; `announced` says whether its end state
    /// went out (if not, announce it now, without doing the work again).
    Duplicate { progress: Progress, announced: bool },
    /// An earlier attempt still holds a live lease (it has not yet recorded that it
    /// handed over to this one): try again shortly.
    Busy { until: Timestamp },
    /// This very message came back while its own claim still runs: its earlier
    /// delivery gave the record back without releasing the claim, or SQS delivered it
    /// twice (the other delivery's claim carries another token, [`Claim::token`]). It is the
    /// job's only copy, so it must stay queued until `until`, never be dropped as
    /// [`ClaimOutcome::Stale`].
    Held { until: Timestamp },
    /// This delivery repeats an attempt that runs elsewhere, or one that a newer attempt
    /// superseded. The running attempt's own message stays queued until it ends, so this
    /// copy can be dropped without losing the job.
    Stale,
    /// The id was seen with different content.
    Conflict { fingerprint: String },
}

/// A stage's end of a job (or its hand-over to the next attempt) to record; see
/// [`JobStore::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub job_id: String,
    pub stage: Stage,
    pub attempt: u32,
    pub progress: Progress,
    pub detail: Option<Value>,
    pub now: Timestamp,
}

/// What a stage records of an end it acted on, so that no one repeats the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// The end's dead letter is stored, its announcement not yet made (the publish
    /// failed): the delivery or the relay that announces it later does not store it
    /// again (an SNS outage would otherwise store one more letter per retry).
    LetterStored,
    /// The end was announced: it leaves the outbox.
    Announced,
}

impl Marked {
    pub fn as_str(self) -> &'static str {
        match self {
            Marked::LetterStored => "letter_stored",
            Marked::Announced => "announced",
        }
    }
}

/// A mark on one end ([`JobStore::mark`]). It names the end it marks by its
/// notification id ([`end_id`]) and lands only while the record holds that end: an
/// announcer that was slow never marks the end a redrive or a rerun put in its place,
/// which would leave that end unannounced for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub job_id: String,
    pub stage: Stage,
    /// The marked end's [`crate::messages::Notification::notification_id`].
    pub end: String,
    pub what: Marked,
}

impl Mark {
    pub fn new(job_id: &str, stage: Stage, end: &str, what: Marked) -> Mark {
        Mark {
            job_id: job_id.to_owned(),
            stage,
            end: end.to_owned(),
            what,
        }
    }
}

/// The end a recorded detail holds: the notification id of the notification it is
/// ([`crate::ending::recorded_detail`]). `None` for a detail that is no notification.
pub fn end_id(detail: Option<&Value>) -> Option<String> {
    let notification: Notification = serde_json::from_value(detail?.clone()).ok()?;
    Some(notification.notification_id())
}

/// Whether `record` holds the end `mark` names. A recorded end whose detail is no
/// notification (written by hand, or before ends had ids) is taken to be it: nothing
/// tells them apart, and an end never marked would be announced again and again.
pub fn holds_end(record: &JobState, mark: &Mark) -> bool {
    matches!(record.progress, Progress::Done(Some(_)))
        && end_id(record.detail.as_ref()).is_none_or(|end| end == mark.end)
}

/// Applies `mark` to the record it names (which [`holds_end`] the mark's end).
pub fn apply_mark(record: &mut JobState, mark: &Mark, now: Timestamp) {
    match mark.what {
        Marked::LetterStored => record.letter_stored = true,
        Marked::Announced => record.announced = true,
    }
    record.updated_at = now;
    record.expires_at = now + RETENTION;
}

/// How long finished records are kept. Long enough to catch any re-delivery: SQS keeps
/// messages 14 days at most.
pub const RETENTION: TimeDelta = TimeDelta::days(15);

/// The job state table.
#[async_trait]
pub trait JobStore: Send + Sync {
    async fn claim(&self, claim: &Claim<'_>, now: Timestamp) -> Result<ClaimOutcome, PortError>;

    /// Records the stage's end with the job, or that it goes back for another attempt
    /// (`Progress::Retrying`). Only the holder of attempt `attempt` may do so.
    async fn finish(&self, finish: &Finish) -> Result<(), PortError>;

    /// Marks an end ([`Mark`]): only while the record still holds the end the mark
    /// names. A record that moved on (reopened, rerun) is left as it is, and that is no
    /// error: the mark's end is over.
    async fn mark(&self, mark: &Mark, now: Timestamp) -> Result<(), PortError>;

    /// Claims several jobs: one answer per claim, in order. A store that can write
    /// in batches overrides this; by default the claims go one by one, concurrently.
    async fn claim_all(
        &self,
        claims: &[Claim<'_>],
        now: Timestamp,
    ) -> Vec<Result<ClaimOutcome, PortError>> {
        join_all(claims.iter().map(|c| self.claim(c, now))).await
    }

    /// Records several ends, as [`JobStore::finish`] does each: one result per entry.
    async fn finish_all(&self, finishes: &[Finish]) -> Vec<Result<(), PortError>> {
        join_all(finishes.iter().map(|f| self.finish(f))).await
    }

    /// Marks several ends, as [`JobStore::mark`] does each.
    async fn mark_all(&self, marks: &[Mark], now: Timestamp) -> Vec<Result<(), PortError>> {
        join_all(marks.iter().map(|m| self.mark(m, now))).await
    }

    /// Ends this attempt's lease early (at the epoch, so no clock can see it still
    /// running), so that its own message, given back to SQS after a failure, can claim
    /// the job again at once. Does nothing if the attempt no longer holds the job, or
    /// if `release.token` is given and the claim holding the job carries another
    /// (another delivery of the same message holds it); a release without a token
    /// checks only the message id.
    async fn release(&self, release: &Release<'_>, now: Timestamp) -> Result<(), PortError>;

    /// Ends a job the ingester could not forward on its record's last receive, on the
    /// processor's record and only if the processor has none yet, so the job cannot end
    /// twice if the forward did reach `jobs-todo` (its answer lost): see [`Stop`].
    async fn stop(&self, end: &Stop<'_>) -> Result<Forestalled, PortError>;

    /// Every stage's record of a job, for operators.
    async fn get(&self, job_id: &str) -> Result<Vec<JobState>, PortError>;
}

/// An end the ingester records on the processor's record, a *stop* ([`JobStore::stop`]):
/// a job it rejected, or one it could not forward on its record's last receive.
///
/// The processor may hold the job already, or get a copy of it later: a failed forward
/// may still have reached `jobs-todo` (the answer lost after SQS took the message, or
/// the call cut off by the invocation's end), and a job's event may come again (a
/// re-send, a replay) after a copy of it was forwarded, and be rejected this time (a
/// setting tightened, a longer trace context past the size limit). Announcing the
/// ingester's end on a record of its own could then contradict the processor's. So
/// the end is written as the processor's record (ended at attempt 0), and only if the
/// processor has no record of the job yet (or only a stop an operator reopened): the
/// job's end is decided on one record. A forwarded copy that arrives later finds the
/// job ended. While the ingester's lease lasts the copy is dropped (the ingester is
/// announcing); after it, the copy announces the end if the ingester could not (its
/// record went to the DLQ). If the processor has a record, the processor ends the job
/// ([`Forestalled::Taken`]). A redrive of the stop's dead letter, or a replay's
/// rerun, reopens it.
#[derive(Debug, Clone)]
pub struct Stop<'a> {
    pub job_id: &'a str,
    /// [`fingerprint`] of the job's content, and its [`legacy_fingerprint`].
    pub fingerprint: &'a str,
    pub legacy_fingerprint: Option<&'a str>,
    /// The ingester's delivery: its SQS message id and claim token. The stop keeps
    /// them, so this very call sent again finds its own write.
    pub holder: &'a str,
    pub token: &'a str,
    /// Until when the ingester announces the end (its invocation's deadline): a
    /// forwarded copy arriving before then is dropped, not announced a second time.
    pub lease_until: Timestamp,
    /// The end: `REJECTED`, or `FAILED` for a job that could not be forwarded.
    pub status: JobStatus,
    /// The end's notification, as recorded ([`crate::ending::recorded_detail`]).
    pub detail: Value,
    pub now: Timestamp,
}

/// What [`JobStore::stop`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forestalled {
    /// The processor's record holds the ingester's end: announce it.
    Ended,
    /// The processor already has a record of the job (a copy reached it, or another
    /// delivery stopped it): the processor's record decides the job's end, and this
    /// delivery of the event is done.
    Taken,
    /// The processor's record holds this job's stop, recorded by another delivery of
    /// the same message, or by one whose lease ran out, and not announced: announce it
    /// from the record.
    Unannounced,
    /// The processor's record is of other content under the same id.
    OtherContent { fingerprint: String },
}

/// Whether a stop may be written over the processor's record as it is: none yet, a
/// stop an operator reopened (a redrive or a rerun) that nothing claimed since, or
/// the announced rejection of other content under the id (a rejection does not own
/// its id).
pub fn may_stop(current: Option<&JobState>, end: &Stop<'_>) -> bool {
    current.is_none_or(|r| {
        let reopened = r.progress == Progress::Retrying && r.attempt == STOP_ATTEMPT;
        let other = !same_content(&r.fingerprint, end.fingerprint, end.legacy_fingerprint);
        reopened || (is_rejection_stop(r) && r.announced && other)
    })
}

/// Whether `record` is a rejection's stop: the end of a job that never ran.
pub fn is_rejection_stop(record: &JobState) -> bool {
    record.attempt == STOP_ATTEMPT && record.progress == Progress::Done(Some(JobStatus::Rejected))
}

/// The attempt a processor stop ([`Stop`]) is written at: below any real one.
pub const STOP_ATTEMPT: u32 = 0;

/// The processor's record a [`Stop`] writes: not yet announced, and held by the
/// ingester's delivery until it has announced.
pub fn stop_record(end: &Stop<'_>) -> JobState {
    JobState {
        job_id: end.job_id.to_owned(),
        stage: Stage::Processor,
        progress: Progress::Done(Some(end.status)),
        fingerprint: end.fingerprint.to_owned(),
        attempt: STOP_ATTEMPT,
        lease_until: end.lease_until,
        holder: end.holder.to_owned(),
        token: end.token.to_owned(),
        announced: false,
        letter_stored: false,
        detail: Some(end.detail.clone()),
        updated_at: end.now,
        expires_at: end.now + RETENTION,
    }
}

/// Decides a [`Stop`] against the processor's record, when the stop may not be
/// written over it ([`may_stop`]): this very stop (written by an earlier send of the
/// same call whose answer was lost) is [`Forestalled::Ended`]; a stop of the same job
/// left unannounced by this message's earlier delivery, or by one whose lease ran out,
/// is [`Forestalled::Unannounced`]; any other record of the same job means the
/// processor, or another delivery's stop, has it; a record of other content under the
/// id is no sign of this job.
pub fn decide_stop(processor: &JobState, end: &Stop<'_>) -> Forestalled {
    let own = !end.token.is_empty()
        && processor.attempt == STOP_ATTEMPT
        && processor.holder == end.holder
        && processor.token == end.token;
    if own {
        return Forestalled::Ended;
    }
    if !same_content(
        &processor.fingerprint,
        end.fingerprint,
        end.legacy_fingerprint,
    ) {
        return Forestalled::OtherContent {
            fingerprint: processor.fingerprint.clone(),
        };
    }
    let stopped =
        processor.attempt == STOP_ATTEMPT && matches!(processor.progress, Progress::Done(Some(_)));
    let free = processor.holder == end.holder || processor.lease_until <= end.now;
    if stopped && !processor.announced && free {
        return Forestalled::Unannounced;
    }
    Forestalled::Taken
}

/// The take ([`Take`]) by which a stop's delivery that found the stop
/// [`Forestalled::Unannounced`] holds it while it announces it, as a claim's resume
/// does ([`resume_take`]): the relay, or another delivery, then leaves it alone, and
/// a relay taking it first makes this take fail (the end is the relay's to announce).
pub fn stop_take<'a>(processor: &JobState, end: &Stop<'a>) -> Take<'a> {
    Take {
        job_id: end.job_id,
        stage: Stage::Processor,
        seen: processor.lease_until,
        until: end.lease_until,
        holder: end.holder,
        token: end.token,
    }
}

/// What only operators do to the job state table, apart from what the functions do:
/// the functions' stores (behind their breakers and batching) do not offer it at all.
#[async_trait]
pub trait OperatorStore: JobStore {
    /// Lets a finished job be claimed again by any attempt above `reopen.below`: an
    /// operator redriving one dead letter. Only the end that letter was written for is
    /// reopened, and only once (see [`decide_reopen`]); the answer says what to do with
    /// the letter.
    async fn reopen(&self, reopen: &Reopen<'_>, now: Timestamp) -> Result<Reopened, PortError>;

    /// Writes a replay's order ([`ReplayOrder`]) before the replay starts, only if
    /// none of that name exists: `false` if one does.
    async fn record_replay(&self, order: &ReplayOrder, now: Timestamp) -> Result<bool, PortError>;
}

/// Decides a claim against the current record. Shared by every store so the rules
/// live in one place: the DynamoDB store uses it after its conditional write failed.
pub fn decide(current: Option<&JobState>, claim: &Claim<'_>, now: Timestamp) -> ClaimOutcome {
    let Some(cur) = current else {
        return ClaimOutcome::Claimed;
    };
    if !same_content(
        &cur.fingerprint,
        claim.fingerprint,
        claim.legacy_fingerprint,
    ) {
        // A rejection does not own its id: a job of other content may take it, once
        // the rejection was announced (its announcer may still need the record).
        if is_rejection_stop(cur) {
            return if cur.announced {
                ClaimOutcome::Claimed
            } else {
                ClaimOutcome::Busy {
                    until: cur.lease_until.max(now),
                }
            };
        }
        return ClaimOutcome::Conflict {
            fingerprint: cur.fingerprint.clone(),
        };
    }
    match cur.progress {
        // The relay is announcing it: it has no message that would come back if it
        // failed, so this one stays in SQS until the relay's lease is over.
        Progress::Done(_)
            if !cur.announced
                && cur.lease_until > now
                && cur.holder != claim.holder
                && outbox::held_by_relay(cur) =>
        {
            ClaimOutcome::Held {
                until: cur.lease_until,
            }
        }
        // The holder may be announcing right now; if it fails, its own message comes
        // back and resumes, and if it crashed, its lease runs out.
        Progress::Done(_)
            if !cur.announced && cur.lease_until > now && cur.holder != claim.holder =>
        {
            ClaimOutcome::Stale
        }
        Progress::Done(_) => ClaimOutcome::Duplicate {
            progress: cur.progress,
            announced: cur.announced,
        },
        Progress::InProgress if cur.lease_until <= now => ClaimOutcome::Claimed,
        // This very claim again (the SDK's retry after a lost answer): the record
        // holds its own write. Another delivery of the message has another token.
        Progress::InProgress if same_claim(cur, claim) => ClaimOutcome::Claimed,
        Progress::InProgress if claim.attempt > cur.attempt => ClaimOutcome::Busy {
            until: cur.lease_until,
        },
        Progress::InProgress if cur.holder == claim.holder => ClaimOutcome::Held {
            until: cur.lease_until,
        },
        Progress::InProgress => ClaimOutcome::Stale,
        Progress::Retrying if claim.attempt > cur.attempt => ClaimOutcome::Claimed,
        Progress::Retrying => ClaimOutcome::Stale,
    }
}

/// Whether `cur` is the record `claim` itself wrote: the same delivery's token (never
/// empty: records written before tokens match no claim), message id and attempt.
pub fn same_claim(cur: &JobState, claim: &Claim<'_>) -> bool {
    !claim.token.is_empty()
        && cur.token == claim.token
        && cur.holder == claim.holder
        && cur.attempt == claim.attempt
        && cur.progress == Progress::InProgress
}

/// The take a claim makes of an end recorded but not announced before it announces
/// it ([`ClaimOutcome::Duplicate`] not announced): the lease moves to this delivery,
/// so the relay ([`outbox`]) leaves the end alone while the delivery announces it, and
/// a relay already announcing it makes the take fail. `None` for any other answer.
pub fn resume_take<'a>(
    current: Option<&JobState>,
    claim: &Claim<'a>,
    outcome: &ClaimOutcome,
) -> Option<Take<'a>> {
    let cur = current?;
    let ClaimOutcome::Duplicate {
        progress: Progress::Done(Some(_)),
        announced: false,
    } = outcome
    else {
        return None;
    };
    Some(Take {
        job_id: claim.job_id,
        stage: claim.stage,
        seen: cur.lease_until,
        until: claim.lease_until,
        holder: claim.holder,
        token: claim.token,
    })
}

/// What a claim whose take ([`resume_take`]) was refused makes of the record as it is
/// now: someone else took the end (the relay's hold keeps this delivery in SQS, a
/// stage's drops it), or it was announced meanwhile. A record still to announce, which
/// the take should have got, is looked at again later: the delivery is never dropped on
/// a refusal it cannot explain.
pub fn after_refused_take(
    current: Option<&JobState>,
    claim: &Claim<'_>,
    now: Timestamp,
) -> ClaimOutcome {
    match decide(current, claim, now) {
        ClaimOutcome::Duplicate {
            announced: false, ..
        }
        | ClaimOutcome::Claimed => ClaimOutcome::Busy { until: now },
        other => other,
    }
}

/// A request to end one attempt's lease early ([`JobStore::release`]).
#[derive(Debug, Clone, Copy)]
pub struct Release<'a> {
    pub job_id: &'a str,
    pub stage: Stage,
    pub attempt: u32,
    /// The SQS message id of the delivery giving the claim back.
    pub holder: &'a str,
    /// Its claim token ([`Claim::token`]): only a claim holding it is given back.
    /// `""` checks only the message id.
    pub token: &'a str,
}

/// An operator's request to reopen the end one dead letter was written for.
#[derive(Debug, Clone)]
pub struct Reopen<'a> {
    pub job_id: &'a str,
    pub stage: Stage,
    /// The fingerprint of the letter's job: a record of other content is not its job's.
    pub fingerprint: &'a str,
    /// Its [`legacy_fingerprint`], for records written before the format changed.
    pub legacy_fingerprint: Option<&'a str>,
    /// The end the letter reports, and the attempt the record holds at that end.
    pub status: JobStatus,
    pub attempt: u32,
    /// The letter's last error: it tells this end from a later one of the same attempt
    /// (the ingester's attempt is always 1).
    pub last_error: Option<&'a ErrorEntry>,
    /// The attempt the reopened record is left at; the redriven copy claims above it.
    pub below: u32,
    /// The SQS message id of the dead letter, kept as the reopened record's holder so
    /// a rerun of the same letter's redrive can tell its own reopening from another's.
    pub by: &'a str,
}

/// What a [`Reopen`] found, and so what becomes of the dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reopened {
    /// The record held the letter's end and is reopened now: send the copy, then
    /// delete the letter.
    Now,
    /// This letter's own earlier redrive reopened the record and nothing claimed it
    /// since, so its copy may never have gone out: send it again (the claim makes one
    /// run of two copies), then delete the letter.
    Already,
    /// The job has no record (its letter was written without one): send the copy.
    NoRecord,
    /// The end this letter was written for was reopened already (by another copy of
    /// it, or an earlier redrive whose delete was lost), and the job ran or runs again:
    /// the letter is a stale copy. Delete it without sending: the job's current end,
    /// if any, has its own letter.
    Stale(String),
    /// The record does not belong to this letter (another job's content holds the id),
    /// or is in a state no redrive explains: keep the letter, touch nothing.
    Keep(String),
}

/// Decides a reopen against the current record, for every store alike.
pub fn decide_reopen(current: Option<&JobState>, reopen: &Reopen<'_>) -> Reopened {
    let Some(cur) = current else {
        return Reopened::NoRecord;
    };
    if !same_content(
        &cur.fingerprint,
        reopen.fingerprint,
        reopen.legacy_fingerprint,
    ) {
        return Reopened::Keep(format!(
            "job {} now names other content (fingerprint {}, the letter's {}); send it again with a new id",
            reopen.job_id, cur.fingerprint, reopen.fingerprint
        ));
    }
    let stored_last_error = cur
        .detail
        .as_ref()
        .and_then(|d| d.get("errors"))
        .and_then(|e| serde_json::from_value::<Vec<ErrorEntry>>(e.clone()).ok())
        .map(|mut errors| errors.pop());
    // A detail that cannot be read says nothing against the letter.
    let same_end = stored_last_error.is_none_or(|last| last.as_ref() == reopen.last_error);
    if cur.progress == Progress::Done(Some(reopen.status)) && cur.attempt == reopen.attempt {
        // Its announcement is still to come (a publish failing, the relay's next
        // sweep): reopened now, that end would never be announced, and its letter
        // would stand for an end no one heard of. The letter waits for it.
        if same_end && !cur.announced {
            return Reopened::Keep(format!(
                "job {} ended {} but its end is not announced yet; redrive it once it is",
                reopen.job_id,
                reopen.status.as_str()
            ));
        }
        if same_end {
            return Reopened::Now;
        }
        if reopen.stage == Stage::Processor {
            return Reopened::Keep(format!(
                "job {} ended {} at attempt {} with another error than this letter's",
                reopen.job_id,
                reopen.status.as_str(),
                reopen.attempt
            ));
        }
    }
    if cur.progress == Progress::Retrying && cur.attempt == reopen.below && cur.holder == reopen.by
    {
        return Reopened::Already;
    }
    // A tracked end is recorded before its letter is stored, and only a reopen takes a
    // record out of its end: anything else means the job moved on since this letter.
    if cur.attempt < reopen.attempt && reopen.stage == Stage::Processor {
        return Reopened::Keep(format!(
            "job {} is at attempt {}, before this letter's attempt {}",
            reopen.job_id, cur.attempt, reopen.attempt
        ));
    }
    Reopened::Stale(format!(
        "job {} was redriven already and is now {} at attempt {}",
        reopen.job_id,
        cur.progress.as_str(),
        cur.attempt
    ))
}

/// A job's content fingerprint: SHA-256, as 64 hex digits, of its canonical JSON (keys
/// sorted), without the transport fields a sender may change between copies of one job
/// (the trace context, [`propagation::DETAIL_FIELDS`]). Only the content decides
/// whether a second event with the same id is the same job or a reused id.
pub fn fingerprint(job: &Value) -> String {
    let canonical = match job {
        Value::Object(fields) => {
            let content: std::collections::BTreeMap<&String, &Value> = fields
                .iter()
                .filter(|(k, _)| !propagation::DETAIL_FIELDS.contains(&k.as_str()))
                .collect();
            serde_json::to_vec(&content)
        }
        other => serde_json::to_vec(other),
    };
    crate::messages::hex(&Sha256::digest(canonical.unwrap_or_default()))
}

/// A new claim token (see [`Claim::token`]): 32 hex digits, unique to one claim attempt
/// (the process, a counter, the clock and the standard library's random hash keys,
/// through SHA-256), so two deliveries of one message, even in two sandboxes at once,
/// never share one.
pub fn claim_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static MADE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut hash = Sha256::new();
    hash.update(std::process::id().to_le_bytes());
    hash.update(MADE.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hash.update(nanos.to_le_bytes());
    hash.update(random.to_le_bytes());
    crate::messages::hex(&hash.finalize()[..16])
}

/// The fingerprint records written before SHA-256 carry: FNV-1a over the whole detail
/// (trace context included), 16 hex digits. Such records live out their 15 days in the
/// table; [`decide`] compares them with this.
pub fn legacy_fingerprint(job: &Value) -> String {
    let canonical = serde_json::to_vec(job).unwrap_or_default();
    format!("{:016x}", crate::execute::fnv1a(&[&canonical]))
}

/// Whether a stored fingerprint is in the old format: 16 hex digits, where
/// [`fingerprint`] gives 64. A length is no proof of a format, so only this exact shape
/// is read as old; anything else is compared as it is.
pub fn is_legacy(stored: &str) -> bool {
    stored.len() == 16 && stored.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a record's fingerprint names the same content as the claim: equal, or an
/// old-format one equal to the claim's [`legacy_fingerprint`]. A copy re-sent with a
/// fresh trace context still conflicts with an old-format record (the old function
/// hashed the trace context too); that lasts only as long as such records do.
pub(crate) fn same_content(stored: &str, fingerprint: &str, legacy: Option<&str>) -> bool {
    stored == fingerprint || legacy.is_some_and(|legacy| is_legacy(stored) && stored == legacy)
}

pub(crate) fn lost_claim(operation: &'static str, job_id: &str) -> PortError {
    PortError::Refused {
        operation,
        message: format!("job {job_id} is no longer held by this attempt"),
    }
}

#[cfg(test)]
mod tests;
