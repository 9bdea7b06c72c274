//! A saga's log and its steps' effects, in the job state table.
//!
//! Each step acts on a (simulated) service that honours an *idempotency key*, as real
//! payment and account APIs do: the saga sends the same key for a step however often
//! it is tried (`effect#<job>#<run>#<step>`), so a step repeated after a crash or a
//! lost answer finds its effect already there instead of doing it twice. Undoing uses
//! the same key: a compensation marks the effect undone, and when the effect is not
//! there yet it leaves a tombstone, so a late request of the step (the lost answer's,
//! still on its way) is refused instead of taking effect after its undo.
//!
//! The *log* (`saga#<job>`) is what the saga knows it did: how many steps of this
//! run are done, whether it is compensating, which compensations ran, and the latest
//! attempt that wrote it (an older attempt's delivery coming back after is dropped).
//! Only the job's claim holder writes it, and every write is conditional on the
//! version it read, so a write sent twice (the SDK's retry after a lost answer)
//! cannot apply twice.

use crate::messages::ErrorEntry;
use crate::ports::PortError;
use crate::Timestamp;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Where a saga's run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Running its steps, in order.
    Forward,
    /// A step failed for good: undoing the steps from `top` down.
    Compensating,
    /// Every compensation ran; the job ends `FAILED`.
    Compensated,
}

/// What a saga recorded of its run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaLog {
    /// The run: 1, then one more for each run an operator asked for after the saga
    /// ended compensated (a redrive, a replay's rerun). Part of the effects' keys.
    pub run: u32,
    /// Steps `0..done` of this run took effect, in order.
    pub done: u32,
    pub phase: Phase,
    /// While compensating: the highest step to undo, the one that failed (its effect
    /// may have landed with its answer lost).
    #[serde(default)]
    pub top: u32,
    /// Compensations done so far, from `top` down.
    #[serde(default)]
    pub undone: u32,
    /// The steps a compensation undid, in the order it did.
    #[serde(default)]
    pub undid: Vec<u32>,
    /// The failure that started the compensations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<ErrorEntry>,
    /// The attempt that finished compensating.
    #[serde(default)]
    pub ended_attempt: u32,
    /// The latest attempt that wrote the log: an older one coming back later is stale.
    #[serde(default)]
    pub attempt: u32,
}

impl SagaLog {
    /// A run's log before its first step.
    pub fn start(run: u32) -> SagaLog {
        SagaLog {
            run,
            done: 0,
            phase: Phase::Forward,
            top: 0,
            undone: 0,
            undid: Vec::new(),
            failure: None,
            ended_attempt: 0,
            attempt: 0,
        }
    }

    /// The steps still to undo, from the highest down.
    pub fn to_undo(&self) -> impl Iterator<Item = u32> {
        (0..=self.top).rev().skip(self.undone as usize)
    }
}

/// A log as read, with the version a write must name.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub log: SagaLog,
    /// 1 for the first write; a log not written yet is version 0.
    pub version: u64,
}

/// One step's effect: its idempotency key's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effect<'a> {
    pub job_id: &'a str,
    pub run: u32,
    pub step: u32,
    /// The action's name ([`crate::kinds::Action::name`]).
    pub action: &'a str,
    pub attempt: u32,
}

impl Effect<'_> {
    /// The idempotency key, and the effect's item in the table.
    pub fn key(&self) -> String {
        format!("effect#{}#{}#{}", self.job_id, self.run, self.step)
    }
}

/// What a step's request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It took effect now.
    Now,
    /// An earlier request with the key had (a retry after a crash or lost answer).
    Already,
    /// The key was compensated first: the step must not take effect.
    Refused,
}

/// What a compensation's request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// It undid the effect now.
    Undid,
    /// An earlier request with the key had undone it.
    AlreadyUndone,
    /// The step never took effect; the tombstone keeps it from taking effect later.
    NothingToUndo,
}

/// An effect as the (simulated) service keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectRecord {
    pub action: String,
    pub attempt: u32,
    /// When it took effect, in ns since the epoch; `None`: never (a tombstone).
    pub applied_ns: Option<i64>,
    /// Requests of the step under this key, the first included.
    pub calls: u32,
    pub compensation: Option<String>,
    pub compensated_ns: Option<i64>,
    /// Requests of the compensation under this key.
    pub undo_calls: u32,
}

/// The step's request, as the service decides it: refused once compensated, else
/// in effect from its first request on.
pub fn apply_to(record: &mut Option<EffectRecord>, effect: &Effect<'_>, now_ns: i64) -> Applied {
    if record.as_ref().is_some_and(|r| r.compensated_ns.is_some()) {
        return Applied::Refused;
    }
    let r = record.get_or_insert_with(EffectRecord::default);
    r.action = effect.action.to_owned();
    if r.applied_ns.is_none() {
        r.attempt = effect.attempt;
        r.applied_ns = Some(now_ns);
    }
    r.calls += 1;
    if r.calls == 1 {
        Applied::Now
    } else {
        Applied::Already
    }
}

/// The compensation's request: undone from its first request on, a tombstone when
/// the step never took effect.
pub fn compensate_to(record: &mut Option<EffectRecord>, compensation: &str, now_ns: i64) -> Undo {
    let r = record.get_or_insert_with(EffectRecord::default);
    r.compensation = Some(compensation.to_owned());
    r.compensated_ns.get_or_insert(now_ns);
    r.undo_calls += 1;
    undo_answer(r.applied_ns.is_some(), r.undo_calls)
}

/// The answer to a compensation that found the effect applied (or not) and counted
/// `undo_calls` requests with this one.
pub fn undo_answer(applied: bool, undo_calls: u32) -> Undo {
    match (applied, undo_calls) {
        (false, _) => Undo::NothingToUndo,
        (true, 1) => Undo::Undid,
        (true, _) => Undo::AlreadyUndone,
    }
}

/// Sagas' logs and effects.
#[async_trait]
pub trait Sagas: Send + Sync {
    /// The job's saga log (strongly consistent), `None` before its first write.
    async fn saga_log(&self, job_id: &str) -> Result<Option<Versioned>, PortError>;

    /// Writes `log` as version `version + 1`, only if the stored one is still
    /// `version` (0: none stored). `false` when it is not, as when this very write
    /// was sent twice.
    async fn save_saga_log(
        &self,
        job_id: &str,
        log: &SagaLog,
        version: u64,
        now: Timestamp,
    ) -> Result<bool, PortError>;

    /// Sends the step's request to its service under its idempotency key.
    async fn apply(&self, effect: &Effect<'_>, now: Timestamp) -> Result<Applied, PortError>;

    /// Sends the compensation's request under the step's idempotency key.
    async fn compensate(
        &self,
        effect: &Effect<'_>,
        compensation: &str,
        now: Timestamp,
    ) -> Result<Undo, PortError>;
}

/// Implements [`Sagas`] for a wrapper by handing every call to the store in `$field`
/// (`impl<S: Sagas> for Wrapper<S>, inner`): for wrappers that add nothing to a
/// saga's calls, one at a time and in order as they are.
#[macro_export]
macro_rules! delegate_sagas {
    ([$($generics:tt)*] $wrapper:ty, $field:tt) => {
        #[async_trait::async_trait]
        impl<$($generics)*> $crate::store::Sagas for $wrapper {
            async fn saga_log(
                &self,
                job_id: &str,
            ) -> Result<Option<$crate::store::saga::Versioned>, $crate::ports::PortError> {
                self.$field.saga_log(job_id).await
            }

            async fn save_saga_log(
                &self,
                job_id: &str,
                log: &$crate::store::saga::SagaLog,
                version: u64,
                now: $crate::Timestamp,
            ) -> Result<bool, $crate::ports::PortError> {
                self.$field.save_saga_log(job_id, log, version, now).await
            }

            async fn apply(
                &self,
                effect: &$crate::store::saga::Effect<'_>,
                now: $crate::Timestamp,
            ) -> Result<$crate::store::saga::Applied, $crate::ports::PortError> {
                self.$field.apply(effect, now).await
            }

            async fn compensate(
                &self,
                effect: &$crate::store::saga::Effect<'_>,
                compensation: &str,
                now: $crate::Timestamp,
            ) -> Result<$crate::store::saga::Undo, $crate::ports::PortError> {
                self.$field.compensate(effect, compensation, now).await
            }
        }
    };
}

/// Nanoseconds since the epoch: the effects' times, fine enough to order steps that
/// are a network call apart.
pub fn epoch_ns(now: Timestamp) -> i64 {
    now.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effect(step: u32) -> Effect<'static> {
        Effect {
            job_id: "j",
            run: 1,
            step,
            action: "create_account",
            attempt: 1,
        }
    }

    #[test]
    fn a_step_sent_again_under_its_key_takes_effect_once() {
        let mut r = None;
        assert_eq!(apply_to(&mut r, &effect(0), 10), Applied::Now);
        assert_eq!(apply_to(&mut r, &effect(0), 20), Applied::Already);
        let r = r.expect("kept");
        assert_eq!((r.applied_ns, r.calls), (Some(10), 2));
    }

    #[test]
    fn a_compensation_first_refuses_the_step_later() {
        let mut r = None;
        assert_eq!(
            compensate_to(&mut r, "delete_account", 10),
            Undo::NothingToUndo
        );
        assert_eq!(apply_to(&mut r, &effect(0), 20), Applied::Refused);
        assert_eq!(r.expect("kept").applied_ns, None);
    }

    #[test]
    fn a_compensation_sent_again_undoes_once() {
        let mut r = None;
        apply_to(&mut r, &effect(0), 10);
        assert_eq!(compensate_to(&mut r, "delete_account", 20), Undo::Undid);
        assert_eq!(
            compensate_to(&mut r, "delete_account", 30),
            Undo::AlreadyUndone
        );
        assert_eq!(r.expect("kept").compensated_ns, Some(20));
    }

    #[test]
    fn compensations_go_from_the_top_down_and_resume() {
        let mut log = SagaLog::start(1);
        log.top = 2;
        assert_eq!(log.to_undo().collect::<Vec<_>>(), [2, 1, 0]);
        log.undone = 2;
        assert_eq!(log.to_undo().collect::<Vec<_>>(), [0]);
    }
}
