//! The job state table in memory, for tests and tools: one mutex over a map, deciding
//! every claim by the same rules as DynamoDB ([`super::decide`]), with [`Faults`] that
//! refuse calls, lose answers or slow them down as DynamoDB can.

use super::*;
use crate::ports::Faults;
use std::collections::HashMap;
use std::sync::Mutex;

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
    /// Replay orders and marks ([`replay`]), apart from the job records.
    pub replays: Mutex<ReplayBook>,
    /// Sagas' logs and effects ([`saga`]).
    pub sagas: Mutex<SagaBook>,
    /// Every reopen that took effect ([`Reopened::Now`]), as (job id, stage), for a
    /// checker that counts a job's lives: each one owes the job one more end.
    pub reopened: Mutex<Vec<(String, Stage)>>,
    /// Every mark that landed, with when (the clock's time as it landed): for a checker that tells a dead letter
    /// stored twice because its mark was lost from one stored after its mark.
    pub marks: Mutex<Vec<(Mark, Timestamp)>>,
    /// Claims a batch judged against its snapshot granted, that the table as it was
    /// then would not have (a second copy of a job in one batch): each is a job held
    /// twice at once, which [`crate::batching`] is there to prevent.
    pub stale_claims: Mutex<Vec<(String, Stage)>>,
}

/// The saga items of the table: logs by job, effects by idempotency key.
#[derive(Debug, Default)]
pub struct SagaBook {
    pub logs: HashMap<String, saga::Versioned>,
    pub effects: HashMap<String, saga::EffectRecord>,
}

/// The replay items of the table: orders by name, marks by replay and job.
#[derive(Debug, Default)]
pub struct ReplayBook {
    pub orders: HashMap<String, replay::ReplayOrder>,
    pub marks: HashMap<(String, String), replay::RerunMark>,
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
        letter_stored: false,
        detail: claim.history.cloned(),
        updated_at: now,
        expires_at: now + RETENTION,
    }
}

/// One claim against `records` (decided against `before` if given, the table as it
/// was before a batch): written if claimed, and an unannounced end taken over
/// ([`resume_take`]) as DynamoDB's store does, or left to its taker ([`ClaimOutcome::Stale`]).
fn claim_one(
    records: &mut Records,
    before: Option<&Records>,
    claim: &Claim<'_>,
    now: Timestamp,
) -> ClaimOutcome {
    let key = key_of(claim.job_id, claim.stage);
    let outcome = decide(before.unwrap_or(records).get(&key), claim, now);
    if outcome == ClaimOutcome::Claimed {
        records.insert(key, claimed(claim, now));
        return outcome;
    }
    let Some(take) = resume_take(records.get(&key), claim, &outcome) else {
        return outcome;
    };
    match records.get_mut(&key) {
        Some(r) if outbox::may_take(r, &take) => {
            outbox::taken(r, &take, now);
            outcome
        }
        other => after_refused_take(other.as_deref(), claim, now),
    }
}

/// Whether attempt `attempt` still holds this record, so it may record its end.
fn holds(record: Option<&JobState>, attempt: u32) -> bool {
    record.is_some_and(|r| r.attempt == attempt && r.progress == Progress::InProgress)
}

impl MemoryStore {
    /// One mark, if its record still holds the mark's end ([`holds_end`]); logged in
    /// [`MemoryStore::marks`] when it lands.
    fn mark_one(&self, records: &mut Records, mark: &Mark, now: Timestamp) {
        let Some(record) = records.get_mut(&key_of(&mark.job_id, mark.stage)) else {
            return;
        };
        if holds_end(record, mark) {
            apply_mark(record, mark, now);
            // When it landed, not the `now` its caller started with.
            self.marks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((mark.clone(), crate::clock::now()));
        }
    }
}

fn apply_finish(record: &mut JobState, f: &Finish) {
    record.progress = f.progress;
    record.letter_stored = false;
    record.detail = f.detail.clone();
    record.updated_at = f.now;
    record.expires_at = f.now + RETENTION;
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn claim(&self, claim: &Claim<'_>, now: Timestamp) -> Result<ClaimOutcome, PortError> {
        self.call("PutItem", |records| {
            Ok(claim_one(records, None, claim, now))
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
                    let live = decide(records.get(&key_of(claim.job_id, claim.stage)), claim, now);
                    let outcome = claim_one(records, before.as_ref(), claim, now);
                    if outcome == ClaimOutcome::Claimed && live != ClaimOutcome::Claimed {
                        self.stale_claims
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((claim.job_id.to_owned(), claim.stage));
                    }
                    Ok(outcome)
                })
                .collect()
        })
        .await
    }

    async fn finish(&self, finish: &Finish) -> Result<(), PortError> {
        let (f, job_id) = (finish, finish.job_id.as_str());
        self.call("UpdateItem", |records| {
            match records.get_mut(&key_of(job_id, f.stage)) {
                Some(r) if holds(Some(r), f.attempt) => {
                    apply_finish(r, f);
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

    async fn mark(&self, mark: &Mark, now: Timestamp) -> Result<(), PortError> {
        self.call("UpdateItem", |records| {
            self.mark_one(records, mark, now);
            Ok(())
        })
        .await
    }

    async fn mark_all(&self, marks: &[Mark], now: Timestamp) -> Vec<Result<(), PortError>> {
        self.call_all(marks.len(), |records, _| {
            marks
                .iter()
                .map(|m| {
                    self.mark_one(records, m, now);
                    Ok(())
                })
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

    async fn stop(&self, end: &Stop<'_>) -> Result<Forestalled, PortError> {
        self.call("PutItem", |records| {
            let key = key_of(end.job_id, Stage::Processor);
            if let Some(processor) = records.get_mut(&key).filter(|r| !may_stop(Some(r), end)) {
                let decided = decide_stop(processor, end);
                if decided != Forestalled::Unannounced {
                    return Ok(decided);
                }
                let take = stop_take(processor, end);
                if !outbox::may_take(processor, &take) {
                    return Ok(Forestalled::Taken);
                }
                outbox::taken(processor, &take, end.now);
                return Ok(decided);
            }
            records.insert(key, stop_record(end));
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

impl MemoryStore {
    fn sagas(&self) -> std::sync::MutexGuard<'_, SagaBook> {
        self.sagas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `f` over the effect kept under the key of `effect` (`None`: none yet), kept as
    /// `f` leaves it.
    fn with_effect<R>(
        &self,
        effect: &saga::Effect<'_>,
        f: impl FnOnce(&mut Option<saga::EffectRecord>) -> R,
    ) -> R {
        let mut book = self.sagas();
        let mut record = book.effects.remove(&effect.key());
        let answer = f(&mut record);
        if let Some(r) = record {
            book.effects.insert(effect.key(), r);
        }
        answer
    }

    /// The effect kept under `key`, if any (for tests).
    pub fn effect(&self, key: &str) -> Option<saga::EffectRecord> {
        self.sagas().effects.get(key).cloned()
    }

    fn book(&self) -> std::sync::MutexGuard<'_, ReplayBook> {
        self.replays.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl replay::Replays for MemoryStore {
    async fn replay_order(&self, name: &str) -> Result<Option<replay::ReplayOrder>, PortError> {
        self.call("GetItem", |_| Ok(self.book().orders.get(name).cloned()))
            .await
    }

    /// Decided and written under one lock, as DynamoDB's transaction is atomic.
    async fn rerun(
        &self,
        rerun: &replay::Rerun<'_>,
        now: Timestamp,
    ) -> Result<replay::Rerunning, PortError> {
        self.call("TransactWriteItems", |records| {
            let mut book = self.book();
            let mark_key = (rerun.replay.to_owned(), rerun.job_id.to_owned());
            let key = key_of(rerun.job_id, rerun.stage);
            let step = replay::decide_rerun(records.get(&key), book.marks.get(&mark_key), rerun);
            Ok(match step {
                replay::RerunStep::Answer(answer) => answer,
                replay::RerunStep::Reopen { mark, .. } => {
                    if let Some(r) = records.get_mut(&key) {
                        replay::reopened(r, &mark, now);
                    }
                    book.marks.insert(mark_key, mark.clone());
                    replay::Rerunning::Rerun {
                        below: mark.below,
                        errors: mark.errors,
                    }
                }
            })
        })
        .await
    }
}

/// Each call decided under one lock, as DynamoDB decides one item's write; the call
/// names are the faults' ([`Faults::only`]).
#[async_trait]
impl saga::Sagas for MemoryStore {
    async fn saga_log(&self, job_id: &str) -> Result<Option<saga::Versioned>, PortError> {
        self.call("GetItem saga", |_| {
            Ok(self.sagas().logs.get(job_id).cloned())
        })
        .await
    }

    async fn save_saga_log(
        &self,
        job_id: &str,
        log: &saga::SagaLog,
        version: u64,
        _: Timestamp,
    ) -> Result<bool, PortError> {
        self.call("PutItem saga", |_| {
            let mut book = self.sagas();
            let stored = book.logs.get(job_id).map_or(0, |v| v.version);
            if stored != version {
                return Ok(false);
            }
            // Kept as written, as DynamoDB keeps the JSON: times to the millisecond.
            let written = serde_json::to_string(log).unwrap_or_default();
            let next = saga::Versioned {
                log: serde_json::from_str(&written).unwrap_or_else(|_| log.clone()),
                version: version + 1,
            };
            book.logs.insert(job_id.to_owned(), next);
            Ok(true)
        })
        .await
    }

    async fn apply(
        &self,
        effect: &saga::Effect<'_>,
        now: Timestamp,
    ) -> Result<saga::Applied, PortError> {
        self.call("UpdateItem apply", |_| {
            Ok(self.with_effect(effect, |r| saga::apply_to(r, effect, saga::epoch_ns(now))))
        })
        .await
    }

    async fn compensate(
        &self,
        effect: &saga::Effect<'_>,
        compensation: &str,
        now: Timestamp,
    ) -> Result<saga::Undo, PortError> {
        self.call("UpdateItem compensate", |_| {
            Ok(self.with_effect(effect, |r| {
                saga::compensate_to(r, compensation, saga::epoch_ns(now))
            }))
        })
        .await
    }
}

#[async_trait]
impl OperatorStore for MemoryStore {
    async fn record_replay(
        &self,
        order: &replay::ReplayOrder,
        _now: Timestamp,
    ) -> Result<bool, PortError> {
        self.call("PutItem", |_| {
            let mut book = self.book();
            if book.orders.contains_key(&order.name) {
                return Ok(false);
            }
            book.orders.insert(order.name.clone(), order.clone());
            Ok(true)
        })
        .await
    }

    async fn reopen(&self, reopen: &Reopen<'_>, now: Timestamp) -> Result<Reopened, PortError> {
        self.call("UpdateItem", |records| {
            let key = key_of(reopen.job_id, reopen.stage);
            let decided = decide_reopen(records.get(&key), reopen);
            if decided == Reopened::Now {
                self.reopened
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((reopen.job_id.to_owned(), reopen.stage));
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
}

#[async_trait]
impl Outbox for MemoryStore {
    async fn stranded(
        &self,
        shard: u32,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<Stranded>, PortError> {
        self.call("Query", |records| {
            let mut found: Vec<Stranded> = records
                .values()
                .filter(|r| in_outbox(r) && outbox::shard(&r.job_id) == shard)
                .filter(|r| r.lease_until < before)
                .map(|r| Stranded {
                    job_id: r.job_id.clone(),
                    stage: r.stage,
                    lease_until: r.lease_until,
                })
                .collect();
            found.sort_by(|a, b| (a.lease_until, &a.job_id).cmp(&(b.lease_until, &b.job_id)));
            found.truncate(limit);
            Ok(found)
        })
        .await
    }

    async fn take(&self, take: &Take<'_>, now: Timestamp) -> Result<Option<JobState>, PortError> {
        self.call("UpdateItem", |records| {
            Ok(match records.get_mut(&key_of(take.job_id, take.stage)) {
                Some(r) if outbox::may_take(r, take) => {
                    outbox::taken(r, take, now);
                    Some(r.clone())
                }
                _ => None,
            })
        })
        .await
    }
}

/// Whether a record is an entry of the outbox index: an end recorded, not announced.
fn in_outbox(r: &JobState) -> bool {
    matches!(r.progress, Progress::Done(Some(_))) && !r.announced
}
