//! Job state: what makes each stage's effects happen once over at-least-once delivery.
//!
//! Before a stage acts on a job it *claims* it with a conditional write keyed by stage
//! and job id. A claim holds a lease that ends shortly before the invocation's deadline,
//! so an attempt that crashed can be taken over once its lease ran out. The stage then
//! records the job's end (`finish`) and, once the end state is announced, marks it
//! (`announce`), so a re-delivery neither repeats the work nor the notification, and a
//! crash between the two only repeats the notification step.
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

use crate::messages::{ErrorEntry, JobStatus, Stage};
use crate::telemetry::propagation;
use crate::Timestamp;
use async_trait::async_trait;
use chrono::TimeDelta;
use futures_util::future::join_all;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::ports::{Faults, PortError};

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

/// How long finished records are kept. Long enough to catch any re-delivery: SQS keeps
/// messages 14 days at most.
pub const RETENTION: TimeDelta = TimeDelta::days(15);

/// The job state table.
#[async_trait]
pub trait JobStore: Send + Sync {
    async fn claim(&self, claim: &Claim<'_>, now: Timestamp) -> Result<ClaimOutcome, PortError>;

    /// Records the stage's end with the job, or that it goes back for another attempt
    /// (`Progress::Retrying`). Only the holder of attempt `attempt` may do so.
    async fn finish(
        &self,
        job_id: &str,
        stage: Stage,
        attempt: u32,
        progress: Progress,
        detail: Option<Value>,
        now: Timestamp,
    ) -> Result<(), PortError>;

    /// Records that the end state was announced.
    async fn announce(&self, job_id: &str, stage: Stage, now: Timestamp) -> Result<(), PortError>;

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
        join_all(finishes.iter().map(|f| {
            self.finish(
                &f.job_id,
                f.stage,
                f.attempt,
                f.progress,
                f.detail.clone(),
                f.now,
            )
        }))
        .await
    }

    /// Marks several jobs announced, as [`JobStore::announce`] does each.
    async fn announce_all(
        &self,
        jobs: &[(String, Stage)],
        now: Timestamp,
    ) -> Vec<Result<(), PortError>> {
        join_all(
            jobs.iter()
                .map(|(id, stage)| self.announce(id, *stage, now)),
        )
        .await
    }

    /// Ends this attempt's lease early (at the epoch, so no clock can see it still
    /// running), so that its own message, given back to SQS after a failure, can claim
    /// the job again at once. Does nothing if the attempt no longer holds the job, or
    /// if `release.token` is given and the claim holding the job carries another
    /// (another delivery of the same message holds it); a release without a token
    /// checks only the message id.
    async fn release(&self, release: &Release<'_>, now: Timestamp) -> Result<(), PortError>;

    /// Lets a finished job be claimed again by any attempt above `reopen.below`: an
    /// operator redriving one dead letter. Only the end that letter was written for is
    /// reopened, and only once (see [`decide_reopen`]); the answer says what to do with
    /// the letter.
    async fn reopen(&self, reopen: &Reopen<'_>, now: Timestamp) -> Result<Reopened, PortError>;

    /// Ends, at the ingester, a job whose forward failed on its record's last receive,
    /// in one transaction with a stop for the processor, so the job cannot end twice if
    /// the forward did reach `jobs-todo` (its answer lost): see [`Unforwarded`].
    async fn end_unforwarded(&self, end: &Unforwarded<'_>) -> Result<Forestalled, PortError>;

    /// Every stage's record of a job, for operators.
    async fn get(&self, job_id: &str) -> Result<Vec<JobState>, PortError>;
}

/// The ingester's end of a job it could not forward on its record's last receive
/// ([`JobStore::end_unforwarded`]).
///
/// A failed forward may still have reached `jobs-todo` (the answer lost after SQS took
/// the message, or the call cut off by the invocation's end), so announcing `FAILED`
/// alone could contradict a `COMPLETED` from the processor later. So, in one
/// transaction, the ingester's record ends `FAILED` and the processor's record is
/// written as a *stop*: ended `FAILED` at attempt 0 with the same end, already
/// announced (the ingester announces it), so a forwarded copy that arrives later finds
/// the job ended and is dropped. The stop is written only if the processor has no
/// record of the job yet: if it has one, the forward reached it and the processor ends
/// the job ([`Forestalled::Taken`]). A redrive of the job's dead letter reopens both.
#[derive(Debug, Clone)]
pub struct Unforwarded<'a> {
    pub job_id: &'a str,
    /// [`fingerprint`] of the job's content, and its [`legacy_fingerprint`].
    pub fingerprint: &'a str,
    pub legacy_fingerprint: Option<&'a str>,
    /// The ingester's claim: the SQS message id and claim token of this delivery. The
    /// stop keeps them, so this very call sent again finds its own write.
    pub holder: &'a str,
    pub token: &'a str,
    /// The end (the `FAILED` notification), kept on both records.
    pub detail: Value,
    pub now: Timestamp,
}

/// What [`JobStore::end_unforwarded`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forestalled {
    /// Both records hold the `FAILED` end: announce it.
    Ended,
    /// The processor already has a record of the job (the forward reached it): the
    /// processor ends the job, and the ingester records the forward instead.
    Taken,
}

/// The attempt a processor stop ([`Unforwarded`]) is written at: below any real one.
pub const STOP_ATTEMPT: u32 = 0;

/// The processor's record an [`Unforwarded`] end writes.
pub fn stop_record(end: &Unforwarded<'_>) -> JobState {
    JobState {
        job_id: end.job_id.to_owned(),
        stage: Stage::Processor,
        progress: Progress::Done(Some(JobStatus::Failed)),
        fingerprint: end.fingerprint.to_owned(),
        attempt: STOP_ATTEMPT,
        lease_until: Timestamp::UNIX_EPOCH,
        holder: end.holder.to_owned(),
        token: end.token.to_owned(),
        announced: true,
        detail: Some(end.detail.clone()),
        updated_at: end.now,
        expires_at: end.now + RETENTION,
    }
}

/// Decides an [`Unforwarded`] end against the processor's record, when one exists
/// (the transaction wrote nothing): this very end's own stop (written by an earlier
/// send of the same call whose answer was lost) is [`Forestalled::Ended`]; any record
/// of the same job means the processor took it. A record of other content under the
/// id is no sign of this job: refused, so the record stays in SQS untouched.
pub fn decide_unforwarded(
    processor: &JobState,
    end: &Unforwarded<'_>,
) -> Result<Forestalled, PortError> {
    let own = !end.token.is_empty()
        && processor.attempt == STOP_ATTEMPT
        && processor.holder == end.holder
        && processor.token == end.token;
    if own {
        return Ok(Forestalled::Ended);
    }
    if same_content(
        &processor.fingerprint,
        end.fingerprint,
        end.legacy_fingerprint,
    ) {
        return Ok(Forestalled::Taken);
    }
    Err(PortError::Refused {
        operation: "TransactWriteItems",
        message: format!(
            "job {} has a processor record of other content (fingerprint {}); left for an operator",
            end.job_id, processor.fingerprint
        ),
    })
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
        return ClaimOutcome::Conflict {
            fingerprint: cur.fingerprint.clone(),
        };
    }
    match cur.progress {
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
    let digest = Sha256::digest(canonical.unwrap_or_default());
    digest.iter().fold(String::with_capacity(64), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
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
    hash.finalize()[..16]
        .iter()
        .fold(String::with_capacity(32), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
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
fn same_content(stored: &str, fingerprint: &str, legacy: Option<&str>) -> bool {
    stored == fingerprint || legacy.is_some_and(|legacy| is_legacy(stored) && stored == legacy)
}

/// The table in memory, for tests. Its [`Faults`] refuse calls, lose answers or slow
/// them down as DynamoDB can.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub records: Mutex<HashMap<(String, &'static str), JobState>>,
    /// While set, every call fails as if the table could not be reached.
    pub down: std::sync::atomic::AtomicBool,
    pub faults: Faults,
    /// While set, a batch call (`claim_all`, `finish_all`) decides each of its
    /// statements against the table as it was before the call and applies every one
    /// that passed, as the emulator did: two claims of one new job in one batch both
    /// succeed, and so do their two ends.
    pub snapshot_batches: std::sync::atomic::AtomicBool,
}

type Records = HashMap<(String, &'static str), JobState>;

impl MemoryStore {
    fn with<R>(
        &self,
        f: impl FnOnce(&mut Records) -> Result<R, PortError>,
    ) -> Result<R, PortError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PortError::Unreachable {
                operation: "job state",
                message: "the table is down (test)".into(),
            });
        }
        f(&mut self.records.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// One call: its faults, then `f`; a refusal `f` answers takes no effect.
    async fn call<R>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Records) -> Result<R, PortError>,
    ) -> Result<R, PortError> {
        self.faults.enter(operation).await?;
        let answer = self.with(f)?;
        self.faults.leave(operation)?;
        Ok(answer)
    }

    /// One batch call of `n` statements: its faults, then `f`, one answer per statement.
    async fn call_all<R>(
        &self,
        n: usize,
        f: impl FnOnce(&mut Records, bool) -> Vec<Result<R, PortError>>,
    ) -> Vec<Result<R, PortError>> {
        const OP: &str = "BatchExecuteStatement";
        let fail = |e: PortError| (0..n).map(|_| Err(e.clone())).collect();
        if let Err(e) = self.faults.enter(OP).await {
            return fail(e);
        }
        let snapshot = self
            .snapshot_batches
            .load(std::sync::atomic::Ordering::SeqCst);
        let answers = match self.with(|records| Ok(f(records, snapshot))) {
            Ok(answers) => answers,
            Err(e) => return fail(e),
        };
        match self.faults.leave(OP) {
            Ok(()) => answers,
            Err(e) => fail(e),
        }
    }
}

fn key_of(job_id: &str, stage: Stage) -> (String, &'static str) {
    (job_id.to_owned(), stage.as_str())
}

/// The record a successful claim writes.
fn claimed(claim: &Claim<'_>, now: Timestamp) -> JobState {
    JobState {
        job_id: claim.job_id.to_owned(),
        stage: claim.stage,
        progress: Progress::InProgress,
        fingerprint: claim.fingerprint.to_owned(),
        attempt: claim.attempt,
        lease_until: claim.lease_until,
        holder: claim.holder.to_owned(),
        token: claim.token.to_owned(),
        announced: false,
        detail: None,
        updated_at: now,
        expires_at: now + RETENTION,
    }
}

/// Whether attempt `attempt` still holds this record, so it may record its end.
fn holds(record: Option<&JobState>, attempt: u32) -> bool {
    record.is_some_and(|r| r.attempt == attempt && r.progress == Progress::InProgress)
}

fn apply_finish(record: &mut JobState, f: &Finish) {
    record.progress = f.progress;
    record.detail = f.detail.clone();
    record.updated_at = f.now;
    record.expires_at = f.now + RETENTION;
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn claim(&self, claim: &Claim<'_>, now: Timestamp) -> Result<ClaimOutcome, PortError> {
        self.call("PutItem", |records| {
            let key = key_of(claim.job_id, claim.stage);
            let outcome = decide(records.get(&key), claim, now);
            if outcome == ClaimOutcome::Claimed {
                records.insert(key, claimed(claim, now));
            }
            Ok(outcome)
        })
        .await
    }

    async fn claim_all(
        &self,
        claims: &[Claim<'_>],
        now: Timestamp,
    ) -> Vec<Result<ClaimOutcome, PortError>> {
        self.call_all(claims.len(), |records, snapshot| {
            let before = snapshot.then(|| records.clone());
            claims
                .iter()
                .map(|claim| {
                    let key = key_of(claim.job_id, claim.stage);
                    let outcome =
                        decide(before.as_ref().unwrap_or(&*records).get(&key), claim, now);
                    if outcome == ClaimOutcome::Claimed {
                        records.insert(key, claimed(claim, now));
                    }
                    Ok(outcome)
                })
                .collect()
        })
        .await
    }

    async fn finish(
        &self,
        job_id: &str,
        stage: Stage,
        attempt: u32,
        progress: Progress,
        detail: Option<Value>,
        now: Timestamp,
    ) -> Result<(), PortError> {
        let f = Finish {
            job_id: job_id.to_owned(),
            stage,
            attempt,
            progress,
            detail,
            now,
        };
        self.call("UpdateItem", |records| {
            match records.get_mut(&key_of(job_id, stage)) {
                Some(r) if holds(Some(r), attempt) => {
                    apply_finish(r, &f);
                    Ok(())
                }
                _ => Err(lost_claim("finish", job_id)),
            }
        })
        .await
    }

    async fn finish_all(&self, finishes: &[Finish]) -> Vec<Result<(), PortError>> {
        self.call_all(finishes.len(), |records, snapshot| {
            let before = snapshot.then(|| records.clone());
            finishes
                .iter()
                .map(|f| {
                    let key = key_of(&f.job_id, f.stage);
                    if !holds(before.as_ref().unwrap_or(&*records).get(&key), f.attempt) {
                        return Err(lost_claim("finish", &f.job_id));
                    }
                    match records.get_mut(&key) {
                        Some(r) => {
                            apply_finish(r, f);
                            Ok(())
                        }
                        None => Err(lost_claim("finish", &f.job_id)),
                    }
                })
                .collect()
        })
        .await
    }

    async fn announce(&self, job_id: &str, stage: Stage, now: Timestamp) -> Result<(), PortError> {
        self.call("UpdateItem", |records| {
            match records.get_mut(&key_of(job_id, stage)) {
                Some(r) => {
                    r.announced = true;
                    r.updated_at = now;
                    r.expires_at = now + RETENTION;
                    Ok(())
                }
                None => Err(lost_claim("announce", job_id)),
            }
        })
        .await
    }

    async fn announce_all(
        &self,
        jobs: &[(String, Stage)],
        now: Timestamp,
    ) -> Vec<Result<(), PortError>> {
        self.call_all(jobs.len(), |records, _| {
            jobs.iter()
                .map(
                    |(job_id, stage)| match records.get_mut(&key_of(job_id, *stage)) {
                        Some(r) => {
                            r.announced = true;
                            r.updated_at = now;
                            r.expires_at = now + RETENTION;
                            Ok(())
                        }
                        None => Err(lost_claim("announce", job_id)),
                    },
                )
                .collect()
        })
        .await
    }

    async fn release(&self, release: &Release<'_>, now: Timestamp) -> Result<(), PortError> {
        self.call("UpdateItem", |records| {
            if let Some(r) = records.get_mut(&key_of(release.job_id, release.stage)) {
                if r.progress == Progress::InProgress
                    && r.attempt == release.attempt
                    && r.holder == release.holder
                    && (release.token.is_empty() || r.token == release.token)
                {
                    r.lease_until = Timestamp::UNIX_EPOCH;
                    r.updated_at = now;
                    r.expires_at = now + RETENTION;
                }
            }
            Ok(())
        })
        .await
    }

    async fn reopen(&self, reopen: &Reopen<'_>, now: Timestamp) -> Result<Reopened, PortError> {
        self.call("UpdateItem", |records| {
            let key = key_of(reopen.job_id, reopen.stage);
            let decided = decide_reopen(records.get(&key), reopen);
            if decided == Reopened::Now {
                if let Some(r) = records.get_mut(&key) {
                    r.progress = Progress::Retrying;
                    r.attempt = reopen.below;
                    r.holder = reopen.by.to_owned();
                    r.announced = false;
                    r.updated_at = now;
                    r.expires_at = now + RETENTION;
                }
            }
            Ok(decided)
        })
        .await
    }

    async fn end_unforwarded(&self, end: &Unforwarded<'_>) -> Result<Forestalled, PortError> {
        self.call("TransactWriteItems", |records| {
            if let Some(processor) = records.get(&key_of(end.job_id, Stage::Processor)) {
                return decide_unforwarded(processor, end);
            }
            let Some(ingester) = records
                .get_mut(&key_of(end.job_id, Stage::Ingester))
                .filter(|r| holds(Some(&**r), 1))
            else {
                return Err(lost_claim("TransactWriteItems", end.job_id));
            };
            let failed = Finish {
                job_id: end.job_id.to_owned(),
                stage: Stage::Ingester,
                attempt: 1,
                progress: Progress::Done(Some(JobStatus::Failed)),
                detail: Some(end.detail.clone()),
                now: end.now,
            };
            apply_finish(ingester, &failed);
            records.insert(key_of(end.job_id, Stage::Processor), stop_record(end));
            Ok(Forestalled::Ended)
        })
        .await
    }

    async fn get(&self, job_id: &str) -> Result<Vec<JobState>, PortError> {
        self.call("Query", |records| {
            let mut found: Vec<JobState> = records
                .values()
                .filter(|r| r.job_id == job_id)
                .cloned()
                .collect();
            found.sort_by_key(|r| r.stage.as_str());
            Ok(found)
        })
        .await
    }
}

pub(crate) fn lost_claim(operation: &'static str, job_id: &str) -> PortError {
    PortError::Refused {
        operation,
        message: format!("job {job_id} is no longer held by this attempt"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    fn at(secs: i64) -> Timestamp {
        Utc.timestamp_opt(1_790_000_000 + secs, 0)
            .single()
            .expect("time")
    }

    fn claim<'a>(fp: &'a str, attempt: u32, lease: i64) -> Claim<'a> {
        Claim {
            job_id: "job-1",
            stage: Stage::Processor,
            fingerprint: fp,
            legacy_fingerprint: None,
            attempt,
            lease_until: at(lease),
            holder: "m1",
            token: "",
        }
    }

    /// Gives back attempt 1 of `job-1` at the processor.
    fn release<'a>(holder: &'a str, token: &'a str) -> Release<'a> {
        Release {
            job_id: "job-1",
            stage: Stage::Processor,
            attempt: 1,
            holder,
            token,
        }
    }

    #[tokio::test]
    async fn a_second_claim_of_a_finished_job_is_a_duplicate() {
        let store = MemoryStore::default();
        assert_eq!(
            store.claim(&claim("a", 1, 60), at(0)).await.expect("store"),
            ClaimOutcome::Claimed
        );
        let done = Progress::Done(Some(JobStatus::Completed));
        store
            .finish("job-1", Stage::Processor, 1, done, None, at(1))
            .await
            .expect("store");
        assert_eq!(
            store.claim(&claim("a", 1, 60), at(2)).await.expect("store"),
            ClaimOutcome::Duplicate {
                progress: done,
                announced: false
            }
        );
        store
            .announce("job-1", Stage::Processor, at(3))
            .await
            .expect("store");
        assert_eq!(
            store.claim(&claim("a", 1, 60), at(4)).await.expect("store"),
            ClaimOutcome::Duplicate {
                progress: done,
                announced: true
            }
        );
    }

    #[tokio::test]
    async fn an_unannounced_end_is_resumed_by_its_holder_or_after_the_lease() {
        let store = MemoryStore::default();
        store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
        let done = Progress::Done(Some(JobStatus::Completed));
        store
            .finish("job-1", Stage::Processor, 1, done, None, at(1))
            .await
            .expect("store");
        let copy = Claim {
            holder: "m2",
            ..claim("a", 1, 120)
        };
        assert_eq!(
            store.claim(&copy, at(2)).await.expect("store"),
            ClaimOutcome::Stale,
            "a copy must not announce while the holder may be announcing"
        );
        let resumed = ClaimOutcome::Duplicate {
            progress: done,
            announced: false,
        };
        assert_eq!(
            store
                .claim(&claim("a", 1, 120), at(2))
                .await
                .expect("store"),
            resumed,
            "the holder's own re-delivery resumes"
        );
        assert_eq!(
            store.claim(&copy, at(61)).await.expect("store"),
            resumed,
            "anyone resumes once the holder's lease ran out"
        );
    }

    #[tokio::test]
    async fn a_live_lease_keeps_others_out_and_an_expired_one_lets_them_in() {
        let store = MemoryStore::default();
        store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
        let copy = Claim {
            holder: "m2",
            ..claim("a", 1, 120)
        };
        assert_eq!(
            store.claim(&copy, at(30)).await.expect("store"),
            ClaimOutcome::Stale,
            "a copy of the running attempt"
        );
        assert_eq!(
            store
                .claim(&claim("a", 1, 120), at(30))
                .await
                .expect("store"),
            ClaimOutcome::Held { until: at(60) },
            "the running attempt's own message waits for its lease"
        );
        assert_eq!(
            store
                .claim(&claim("a", 2, 120), at(30))
                .await
                .expect("store"),
            ClaimOutcome::Busy { until: at(60) },
            "the next attempt waits for the running one to hand over"
        );
        assert_eq!(
            store
                .claim(&claim("a", 1, 120), at(61))
                .await
                .expect("store"),
            ClaimOutcome::Claimed
        );
    }

    #[tokio::test]
    async fn a_released_claim_is_taken_again_by_its_own_message_only() {
        let store = MemoryStore::default();
        store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
        store
            .release(&release("m9", ""), at(1))
            .await
            .expect("store");
        assert_eq!(
            store.claim(&claim("a", 1, 60), at(2)).await.expect("store"),
            ClaimOutcome::Held { until: at(60) },
            "another holder cannot release the claim"
        );
        store
            .release(&release("m1", ""), at(3))
            .await
            .expect("store");
        assert_eq!(
            store.claim(&claim("a", 1, 60), at(4)).await.expect("store"),
            ClaimOutcome::Claimed
        );
    }

    #[tokio::test]
    async fn a_claim_retried_with_its_own_token_is_claimed_and_another_delivery_held() {
        let store = MemoryStore::default();
        let mine = Claim {
            token: "t1",
            ..claim("a", 1, 60)
        };
        store.faults.lose_answers(1);
        assert!(store.claim(&mine, at(0)).await.is_err(), "answer lost");
        assert_eq!(
            store.claim(&mine, at(0)).await.expect("store"),
            ClaimOutcome::Claimed,
            "the same request again finds its own write"
        );
        let other = Claim {
            token: "t2",
            ..claim("a", 1, 120)
        };
        assert_eq!(
            store.claim(&other, at(1)).await.expect("store"),
            ClaimOutcome::Held { until: at(60) },
            "another delivery of the same message"
        );
        let untokened = claim("a", 1, 120);
        assert_eq!(
            store.claim(&untokened, at(1)).await.expect("store"),
            ClaimOutcome::Held { until: at(60) },
            "an empty token matches nothing"
        );
        store
            .release(&release("m1", "t2"), at(2))
            .await
            .expect("store");
        assert_eq!(
            store.claim(&other, at(3)).await.expect("store"),
            ClaimOutcome::Held { until: at(60) },
            "another delivery cannot give the claim back"
        );
        store
            .release(&release("m1", "t1"), at(4))
            .await
            .expect("store");
        assert_eq!(
            store.claim(&other, at(5)).await.expect("store"),
            ClaimOutcome::Claimed
        );
    }

    #[tokio::test]
    async fn a_batch_of_claims_retried_with_their_tokens_is_claimed() {
        let store = MemoryStore::default();
        let claims = [
            Claim {
                token: "t1",
                ..claim("a", 1, 60)
            },
            Claim {
                job_id: "job-2",
                holder: "m2",
                token: "t2",
                ..claim("a", 1, 60)
            },
        ];
        store.faults.lose_answers(1);
        let lost = store.claim_all(&claims, at(0)).await;
        assert!(lost.iter().all(Result::is_err));
        let again = store.claim_all(&claims, at(0)).await;
        assert_eq!(
            again,
            [Ok(ClaimOutcome::Claimed), Ok(ClaimOutcome::Claimed)]
        );
    }

    #[tokio::test]
    async fn a_retry_is_claimed_by_the_next_attempt_only() {
        let store = MemoryStore::default();
        store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
        store
            .finish(
                "job-1",
                Stage::Processor,
                1,
                Progress::Retrying,
                None,
                at(1),
            )
            .await
            .expect("store");
        assert_eq!(
            store.claim(&claim("a", 1, 60), at(2)).await.expect("store"),
            ClaimOutcome::Stale
        );
        assert_eq!(
            store.claim(&claim("a", 2, 60), at(3)).await.expect("store"),
            ClaimOutcome::Claimed
        );
    }

    #[tokio::test]
    async fn a_reopened_job_is_claimed_by_a_later_attempt_only() {
        let store = MemoryStore::default();
        store.claim(&claim("a", 3, 60), at(0)).await.expect("store");
        let failed = Progress::Done(Some(JobStatus::Failed));
        store
            .finish("job-1", Stage::Processor, 3, failed, None, at(1))
            .await
            .expect("store");
        let reopen = Reopen {
            job_id: "job-1",
            stage: Stage::Processor,
            fingerprint: "a",
            legacy_fingerprint: None,
            status: JobStatus::Failed,
            attempt: 3,
            last_error: None,
            below: 3,
            by: "dl-1",
        };
        assert_eq!(
            store.reopen(&reopen, at(2)).await.expect("store"),
            Reopened::Now
        );
        assert_eq!(
            store.claim(&claim("a", 3, 60), at(3)).await.expect("store"),
            ClaimOutcome::Stale
        );
        assert_eq!(
            store.claim(&claim("a", 4, 60), at(3)).await.expect("store"),
            ClaimOutcome::Claimed
        );
    }

    #[tokio::test]
    async fn every_write_that_changes_a_record_refreshes_its_expiry() {
        let store = MemoryStore::default();
        let expiry = || store.get("job-1");
        let expires = |t: i64| at(t) + RETENTION;
        store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
        store
            .release(&release("m1", ""), at(10))
            .await
            .expect("store");
        assert_eq!(expiry().await.expect("store")[0].expires_at, expires(10));
        store
            .claim(&claim("a", 1, 60), at(20))
            .await
            .expect("store");
        assert_eq!(expiry().await.expect("store")[0].expires_at, expires(20));
        let failed = Progress::Done(Some(JobStatus::Failed));
        store
            .finish("job-1", Stage::Processor, 1, failed, None, at(30))
            .await
            .expect("store");
        assert_eq!(expiry().await.expect("store")[0].expires_at, expires(30));
        store
            .announce("job-1", Stage::Processor, at(40))
            .await
            .expect("store");
        assert_eq!(expiry().await.expect("store")[0].expires_at, expires(40));
        let reopen = Reopen {
            job_id: "job-1",
            stage: Stage::Processor,
            fingerprint: "a",
            legacy_fingerprint: None,
            status: JobStatus::Failed,
            attempt: 1,
            last_error: None,
            below: 1,
            by: "dl-1",
        };
        store.reopen(&reopen, at(50)).await.expect("store");
        assert_eq!(expiry().await.expect("store")[0].expires_at, expires(50));
    }

    #[tokio::test]
    async fn reused_ids_with_other_content_conflict() {
        let store = MemoryStore::default();
        store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
        assert_eq!(
            store
                .claim(&claim("b", 1, 60), at(100))
                .await
                .expect("store"),
            ClaimOutcome::Conflict {
                fingerprint: "a".into()
            }
        );
    }

    #[tokio::test]
    async fn only_the_holder_may_finish() {
        let store = MemoryStore::default();
        store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
        let failed = Progress::Done(Some(JobStatus::Failed));
        assert!(store
            .finish("job-1", Stage::Processor, 2, failed, None, at(1))
            .await
            .is_err());
        assert!(store
            .finish("job-2", Stage::Processor, 1, failed, None, at(1))
            .await
            .is_err());
    }

    #[test]
    fn the_fingerprint_ignores_key_order_and_sees_content() {
        let a = fingerprint(&json!({"job_type": "x", "message": {"a": 1, "b": 2}}));
        let b = fingerprint(&json!({"message": {"b": 2, "a": 1}, "job_type": "x"}));
        let c = fingerprint(&json!({"job_type": "x", "message": {"a": 1, "b": 3}}));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_fingerprint_is_a_sha256_of_the_canonical_content() {
        // printf '%s' '{"job_type":"x","message":{"a":1}}' | sha256sum
        assert_eq!(
            fingerprint(&json!({"message": {"a": 1}, "job_type": "x"})),
            "3ab929ff8b86b571d6ff27ab1e850751a8f46132f11da30f892f15e4eef036e4"
        );
    }

    #[test]
    fn the_fingerprint_leaves_out_the_trace_context_a_sender_may_change() {
        let job = json!({"job_type": "x", "message": {"a": 1}});
        let mut nested = job.clone();
        nested["trace_context"] = json!({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "a=b"});
        let mut flat = job.clone();
        flat["traceparent"] = json!("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01");
        flat["tracestate"] = json!("c=d");
        assert_eq!(fingerprint(&nested), fingerprint(&job));
        assert_eq!(fingerprint(&flat), fingerprint(&job));
        let mut nested_message = job.clone();
        nested_message["message"]["traceparent"] = json!("x");
        assert_ne!(
            fingerprint(&nested_message),
            fingerprint(&job),
            "only the top-level fields"
        );
    }

    #[tokio::test]
    async fn a_record_with_the_old_fingerprint_is_compared_the_old_way() {
        let store = MemoryStore::default();
        let job = json!({"job_type": "x", "message": {"a": 1},
            "trace_context": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}});
        let (fp, old) = (fingerprint(&job), legacy_fingerprint(&job));
        assert!(is_legacy(&old) && !is_legacy(&fp), "{old} {fp}");
        // Written before the upgrade: the old function's fingerprint, ended and announced.
        store
            .claim(&claim(&old, 1, 60), at(0))
            .await
            .expect("store");
        let done = Progress::Done(Some(JobStatus::Completed));
        store
            .finish("job-1", Stage::Processor, 1, done, None, at(1))
            .await
            .expect("store");
        store
            .announce("job-1", Stage::Processor, at(2))
            .await
            .expect("store");
        let again = Claim {
            legacy_fingerprint: Some(&old),
            ..claim(&fp, 1, 60)
        };
        assert_eq!(
            store.claim(&again, at(3)).await.expect("store"),
            ClaimOutcome::Duplicate {
                progress: done,
                announced: true
            },
            "the same job, recognised by the old function"
        );
        let other = json!({"job_type": "x", "message": {"a": 2}});
        let (other_fp, other_old) = (fingerprint(&other), legacy_fingerprint(&other));
        let reused = Claim {
            legacy_fingerprint: Some(&other_old),
            ..claim(&other_fp, 1, 60)
        };
        assert_eq!(
            store.claim(&reused, at(4)).await.expect("store"),
            ClaimOutcome::Conflict { fingerprint: old },
            "other content under the id still conflicts"
        );
        // Only the old shape is read the old way: a stored value that is not 16 hex
        // digits must equal the new fingerprint.
        assert!(!is_legacy("0123456789abcdeg") && !is_legacy(&fp[..15]));
    }

    #[test]
    fn progress_round_trips_through_its_name() {
        for p in [
            Progress::InProgress,
            Progress::Retrying,
            Progress::Done(None),
            Progress::Done(Some(JobStatus::Completed)),
            Progress::Done(Some(JobStatus::Failed)),
            Progress::Done(Some(JobStatus::Rejected)),
        ] {
            assert_eq!(Progress::parse(p.as_str()), Some(p));
        }
    }

    /// The ingester's claim of `job-1`, on delivery `m1` with token `t1`.
    async fn claimed_at_the_ingester(store: &MemoryStore, fp: &str) {
        let mut c = claim(fp, 1, 60);
        c.stage = Stage::Ingester;
        c.token = "t1";
        assert_eq!(
            store.claim(&c, at(0)).await.expect("store"),
            ClaimOutcome::Claimed
        );
    }

    fn unforwarded<'a>(fp: &'a str, token: &'a str) -> Unforwarded<'a> {
        Unforwarded {
            job_id: "job-1",
            fingerprint: fp,
            legacy_fingerprint: None,
            holder: "m1",
            token,
            detail: json!({"status": "FAILED"}),
            now: at(1),
        }
    }

    #[tokio::test]
    async fn an_unforwarded_end_stops_the_processor_and_its_lost_answer_is_found_again() {
        let store = MemoryStore::default();
        claimed_at_the_ingester(&store, "a").await;
        store.faults.lose_answers(1);
        assert!(store
            .end_unforwarded(&unforwarded("a", "t1"))
            .await
            .is_err());
        // The SDK's retry finds its own stop, not a processor that took the job.
        let again = store.end_unforwarded(&unforwarded("a", "t1")).await;
        assert_eq!(again.expect("store"), Forestalled::Ended);
        let ended = Progress::Done(Some(JobStatus::Failed));
        let records = store.get("job-1").await.expect("store");
        assert_eq!(
            records
                .iter()
                .map(|r| (r.stage, r.progress, r.attempt))
                .collect::<Vec<_>>(),
            [
                (Stage::Ingester, ended, 1),
                (Stage::Processor, ended, STOP_ATTEMPT)
            ]
        );
        // A forwarded copy (attempt 1) finds the job ended and announced by the ingester.
        assert_eq!(
            store
                .claim(&claim("a", 1, 120), at(2))
                .await
                .expect("store"),
            ClaimOutcome::Duplicate {
                progress: ended,
                announced: true
            }
        );
    }

    #[tokio::test]
    async fn an_unforwarded_end_leaves_a_job_the_processor_holds_to_the_processor() {
        let store = MemoryStore::default();
        claimed_at_the_ingester(&store, "a").await;
        store.claim(&claim("a", 1, 60), at(0)).await.expect("store");
        let answer = store.end_unforwarded(&unforwarded("a", "t1")).await;
        assert_eq!(answer.expect("store"), Forestalled::Taken);
        let ingester = store.get("job-1").await.expect("store");
        assert_eq!(
            ingester[0].progress,
            Progress::InProgress,
            "untouched: {ingester:?}"
        );
        // Another content's processor record says nothing of this job: refused.
        let other = MemoryStore::default();
        claimed_at_the_ingester(&other, "a").await;
        other.claim(&claim("b", 1, 60), at(0)).await.expect("store");
        assert!(other
            .end_unforwarded(&unforwarded("a", "t1"))
            .await
            .is_err());
        // And an ingester attempt that no longer holds the job writes nothing.
        let lost = MemoryStore::default();
        assert!(lost.end_unforwarded(&unforwarded("a", "t1")).await.is_err());
        assert!(lost.get("job-1").await.expect("store").is_empty());
    }

    #[tokio::test]
    async fn a_redrive_of_the_unforwarded_letter_reopens_its_stop_once() {
        let store = MemoryStore::default();
        claimed_at_the_ingester(&store, "a").await;
        let mut end = unforwarded("a", "t1");
        let error = ErrorEntry {
            stage: Stage::Ingester,
            code: "forward_failed".into(),
            message: "lost".into(),
            field: None,
            attempt: 5,
            timestamp: at(1),
        };
        end.detail = json!({"errors": [error]});
        store.end_unforwarded(&end).await.expect("store");
        let reopen = Reopen {
            job_id: "job-1",
            stage: Stage::Processor,
            fingerprint: "a",
            legacy_fingerprint: None,
            status: JobStatus::Failed,
            attempt: STOP_ATTEMPT,
            last_error: Some(&error),
            below: STOP_ATTEMPT,
            by: "dl-1",
        };
        assert_eq!(
            store.reopen(&reopen, at(2)).await.expect("store"),
            Reopened::Now
        );
        assert_eq!(
            store.reopen(&reopen, at(3)).await.expect("store"),
            Reopened::Already
        );
        assert_eq!(
            store
                .claim(&claim("a", 1, 120), at(4))
                .await
                .expect("store"),
            ClaimOutcome::Claimed,
            "the redriven job runs"
        );
    }
}
