//! Ending a job once: both stages end jobs the same way, in an order that makes a
//! re-delivery repeat at most the announcement, never the work.
//!
//! 1. record the end state in the job state table (with the notification as detail),
//! 2. store the dead letter, if the job did not complete,
//! 3. publish the notification,
//! 4. mark the record announced.
//!
//! A failure in 1 to 3 leaves the SQS record for a retry; the retry finds the recorded
//! end state (a [`crate::store::ClaimOutcome::Duplicate`] not yet announced) and resumes
//! at step 2 from the stored notification, without running the job again.

use crate::messages::{DeadLetter, JobStatus, Notification, Stage, TraceContext};
use crate::ports::{MessageQueue, PortError, Topic};
use crate::record::{deliver_dead_letters, publish_all, RecordMeta};
use crate::store::{Fingerprints, JobStore, Mark, Marked, Progress, Release, Stop};
use crate::telemetry::Instruments;
use crate::Timestamp;
use futures_util::future::join_all;
use serde_json::Value;
use tracing::warn;

/// What the state table knows of a job being ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracking {
    /// This attempt holds the claim: record the end state first.
    Finish { attempt: u32 },
    /// The end state was recorded by an earlier delivery that did not announce it.
    Recorded,
    /// The ingester recorded the end on the processor's record (a job it could not
    /// forward, [`crate::store::JobStore::stop`]): the mark goes there.
    Stopped,
    /// The job has no record of its own (unreadable, or its id belongs to other content).
    Untracked,
}

/// A job to end.
#[derive(Debug)]
pub struct Ending {
    pub meta: RecordMeta,
    pub notification: Notification,
    /// Stored before the announcement; `None` for a completed job.
    pub dead_letter: Option<DeadLetter>,
    pub tracking: Tracking,
    /// When the job's event happened, for the `job.latency` of its end.
    pub event_time: Option<String>,
    /// The context of the span that ended the job, kept with the recorded end so that
    /// whoever announces it later (the relay) does so in the job's trace.
    pub trace_context: Option<TraceContext>,
}

impl Ending {
    /// The ending of the record's job, announcing `notification`.
    pub fn new(
        meta: RecordMeta,
        notification: Notification,
        dead_letter: Option<DeadLetter>,
        tracking: Tracking,
    ) -> Ending {
        Ending {
            meta,
            notification,
            dead_letter,
            tracking,
            event_time: None,
            trace_context: None,
        }
    }
}

/// Where endings go, and the instruments that count them.
#[derive(Debug, Clone, Copy)]
pub struct EndPorts<'a, Q, T, S> {
    pub stage: Stage,
    pub dead_letters: &'a Q,
    pub topic: &'a T,
    pub store: &'a S,
    pub telemetry: &'a Instruments,
}

impl<Q: MessageQueue, T: Topic, S: JobStore> EndPorts<'_, Q, T, S> {
    /// Ends the jobs; returns the message ids of records that must stay in SQS. Every
    /// announced end is counted in `job.end_states` (and `job.latency`) here and
    /// nowhere else; one that stays in SQS is counted when a later delivery announces
    /// it. (A lost announce mark lets a duplicate announce, and count, once more.)
    pub async fn end(&self, endings: Vec<Ending>, now: Timestamp) -> Vec<String> {
        let counts: Vec<_> = endings.iter().map(EndCount::of).collect();
        let failed = self.end_each(endings, now).await;
        for count in counts.iter().filter(|c| !failed.contains(&c.message_id)) {
            count.record(self.telemetry);
        }
        failed
    }

    async fn end_each(&self, endings: Vec<Ending>, now: Timestamp) -> Vec<String> {
        let recorded = join_all(endings.iter().map(|e| self.record(e, now))).await;
        let mut failed = Vec::new();
        let mut letters = Vec::new();
        let mut completions = Vec::new();
        let mut marks = Vec::new();
        for (ending, result) in endings.into_iter().zip(recorded) {
            if let Err(e) = result {
                ending.meta.log.in_scope(|| {
                    warn!(job_id = %ending.notification.job_id, error = %e, "could not record the end state; SQS will retry");
                });
                if let Tracking::Finish { attempt } = ending.tracking {
                    let job_id = &ending.notification.job_id;
                    give_back(self.store, self.stage, job_id, attempt, &ending.meta, now).await;
                }
                failed.push(ending.meta.message_id);
                continue;
            }
            if let Some(stage) = self.marked_at(ending.tracking) {
                let end = ending.notification.notification_id();
                let job_id = &ending.notification.job_id;
                marks.push((ending.meta.message_id.clone(), job_id.clone(), stage, end));
            }
            match ending.dead_letter {
                Some(dl) => letters.push((ending.meta, dl, ending.notification)),
                None => completions.push((ending.meta, ending.notification)),
            }
        }
        let delivered = deliver_dead_letters(self.dead_letters, self.topic, letters).await;
        failed.extend(delivered.failed);
        failed.extend(publish_all(self.topic, completions).await);
        self.mark_all(marks, &failed, &delivered.letter_only, now)
            .await;
        failed
    }

    /// Marks each tracked end with what became of it: announced, or its letter stored
    /// while the publish failed (so its next delivery, or the relay, does not store it
    /// again). A mark that is never written (after the SDK's own retries) repeats the
    /// step it marks once more: the relay announces the end again after the lease
    /// (window 3), or its next delivery stores the letter again; failing the record
    /// would not help, its next delivery would do the same.
    async fn mark_all(
        &self,
        marks: Vec<(String, String, Stage, String)>,
        failed: &[String],
        letter_only: &[String],
        now: Timestamp,
    ) {
        let marks = marks
            .into_iter()
            .filter_map(|(message_id, job_id, stage, end)| {
                let what = if !failed.contains(&message_id) {
                    Marked::Announced
                } else if letter_only.contains(&message_id) {
                    Marked::LetterStored
                } else {
                    return None;
                };
                Some(Mark {
                    job_id,
                    stage,
                    end,
                    what,
                })
            });
        let calls = marks.map(|mark| async move {
            if let Err(e) = self.store.mark(&mark, now).await {
                warn!(job_id = %mark.job_id, mark = mark.what.as_str(), error = %e, "could not mark the end");
            }
        });
        join_all(calls).await;
    }

    /// The stage whose record an announced ending marks, if it has one.
    fn marked_at(&self, tracking: Tracking) -> Option<Stage> {
        match tracking {
            Tracking::Finish { .. } | Tracking::Recorded => Some(self.stage),
            Tracking::Stopped => Some(Stage::Processor),
            Tracking::Untracked => None,
        }
    }

    async fn record(&self, ending: &Ending, now: Timestamp) -> Result<(), PortError> {
        let Tracking::Finish { attempt } = ending.tracking else {
            return Ok(());
        };
        let n = &ending.notification;
        let detail = recorded_detail(ending);
        self.store
            .finish(&crate::store::Finish {
                job_id: n.job_id.clone(),
                stage: self.stage,
                attempt,
                progress: Progress::Done(Some(n.status)),
                detail,
                now,
            })
            .await
    }
}

/// The stop that records `ending` (a dead-lettered end) on the processor's record,
/// held by the ending's delivery until `lease_until` ([`JobStore::stop`]).
pub fn stop_of<'a>(
    ending: &'a Ending,
    prints: &'a Fingerprints,
    lease_until: Timestamp,
    now: Timestamp,
) -> Stop<'a> {
    Stop {
        job_id: &ending.notification.job_id,
        fingerprint: &prints.current,
        legacy_fingerprint: Some(&prints.legacy),
        holder: &ending.meta.message_id,
        token: &ending.meta.claim_token,
        lease_until,
        status: ending.notification.status,
        detail: recorded_detail(ending).unwrap_or_default(),
        now,
    }
}

/// What an end is recorded with: the notification, and what the relay needs to
/// announce it without the job's message ([`crate::relay`]): the dead letter to store
/// (`dead_letter`) and the trace to do it in (`trace_context`). Both are extra fields of
/// the notification's object, which readers of the notification ignore.
pub fn recorded_detail(ending: &Ending) -> Option<Value> {
    let mut detail = serde_json::to_value(&ending.notification).ok()?;
    let trace = ending
        .trace_context
        .as_ref()
        .or_else(|| ending.dead_letter.as_ref()?.trace_context.as_ref());
    if let Value::Object(fields) = &mut detail {
        if let Some(dl) = &ending.dead_letter {
            fields.insert(
                LETTER_FIELD.to_owned(),
                serde_json::to_value(dl).unwrap_or_default(),
            );
        }
        if let Some(tc) = trace {
            fields.insert(
                TRACE_FIELD.to_owned(),
                serde_json::to_value(tc).unwrap_or_default(),
            );
        }
    }
    Some(detail)
}

/// The recorded end's field holding its dead letter ([`recorded_detail`]).
pub const LETTER_FIELD: &str = "dead_letter";
/// The recorded end's field holding the trace context it was ended in.
pub const TRACE_FIELD: &str = "trace_context";

/// What the end-state metric needs of an ending, kept while the ending is consumed.
struct EndCount {
    message_id: String,
    job_type: Option<String>,
    status: JobStatus,
    event_time: Option<String>,
}

impl EndCount {
    fn of(ending: &Ending) -> EndCount {
        EndCount {
            message_id: ending.meta.message_id.clone(),
            job_type: ending.notification.job_type.clone(),
            status: ending.notification.status,
            event_time: ending.event_time.clone(),
        }
    }

    fn record(&self, telemetry: &Instruments) {
        let (job_type, at) = (self.job_type.as_deref(), self.event_time.as_deref());
        telemetry.record_end_state(job_type, self.status, at, crate::clock::now());
    }
}

/// Releases the claim of a record that goes back to SQS, so that its next delivery
/// takes the job at once instead of waiting for the lease to run out. If even this
/// fails, the next delivery finds the claim [`crate::store::ClaimOutcome::Held`] and
/// waits in SQS.
pub async fn give_back<S: JobStore>(
    store: &S,
    stage: Stage,
    job_id: &str,
    attempt: u32,
    meta: &RecordMeta,
    now: Timestamp,
) {
    let release = Release {
        job_id,
        stage,
        attempt,
        holder: &meta.message_id,
        token: &meta.claim_token,
    };
    if let Err(e) = store.release(&release, now).await {
        meta.log.in_scope(|| {
            warn!(job_id = %job_id, error = %e, "could not release the claim; the next delivery waits for its lease");
        });
    }
}

/// Rebuilds the ending an earlier delivery recorded but did not announce, from the
/// notification stored as the record's detail, with its dead letter unless the record
/// says it is stored ([`crate::store::Marked::LetterStored`]). `job` and `trace_context` come from the
/// message at hand, which carries the same content (the fingerprints matched).
pub async fn recorded<S: JobStore>(
    store: &S,
    stage: Stage,
    job_id: &str,
    job: &Value,
    trace_context: Option<&TraceContext>,
) -> Result<Option<(Notification, Option<DeadLetter>)>, PortError> {
    let records = store.get(job_id).await?;
    let Some((stored, letter_stored)) = records
        .into_iter()
        .find(|r| r.stage == stage)
        .and_then(|r| Some((r.detail?, r.letter_stored)))
        .and_then(|(d, letter_stored)| {
            Some((
                serde_json::from_value::<Notification>(d).ok()?,
                letter_stored,
            ))
        })
    else {
        return Ok(None);
    };
    // A letter stored by the delivery that could not publish is not stored again.
    let dead_letter = (stored.status != JobStatus::Completed && !letter_stored)
        .then(|| DeadLetter::for_notification(&stored, trace_context.cloned(), job.clone()));
    Ok(Some((stored, dead_letter)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::ErrorEntry;
    use crate::store::{Claim, ClaimOutcome, MemoryStore};
    use crate::testing::{MemoryQueue, MemoryTopic};
    use aws_lambda_events::sqs::SqsMessage;
    use chrono::DateTime;

    fn at(secs: i64) -> Timestamp {
        DateTime::from_timestamp(1_795_000_000 + secs, 0).expect("valid")
    }

    fn meta(id: &str) -> RecordMeta {
        let record: SqsMessage =
            serde_json::from_value(serde_json::json!({ "messageId": id })).expect("record");
        RecordMeta::of(&record)
    }

    fn failed_note(job_id: &str) -> Notification {
        let error = ErrorEntry::new(
            Stage::Processor,
            "injected_fault".into(),
            "asked to fail",
            3,
            at(0),
        );
        let job_type = Some("report_generation".into());
        let job = serde_json::json!({"job_type": "report_generation"});
        let dl = DeadLetter::new(job_id.into(), job_type, JobStatus::Failed, error, job);
        Notification::for_dead_letter(&dl, at(0))
    }

    async fn claimed(store: &MemoryStore, job_id: &str) {
        let claim = Claim {
            job_id,
            stage: Stage::Processor,
            fingerprint: "fp",
            legacy_fingerprint: None,
            attempt: 3,
            lease_until: at(60),
            holder: "m1",
            token: "",
            history: None,
        };
        assert_eq!(
            store.claim(&claim, at(0)).await.expect("store"),
            ClaimOutcome::Claimed
        );
    }

    #[tokio::test]
    async fn an_unannounced_end_is_resumed_from_the_record_without_the_work() {
        let store = MemoryStore::default();
        claimed(&store, "job-1").await;
        let note = failed_note("job-1");
        let job = serde_json::json!({"job_type": "report_generation"});
        let dl = DeadLetter::for_notification(&note, None, job);
        // The topic is down: the end is recorded, the record stays in SQS.
        let (dlq, down) = (MemoryQueue::default(), MemoryTopic::refusing("job-1"));
        let ports = EndPorts {
            stage: Stage::Processor,
            dead_letters: &dlq,
            topic: &down,
            store: &store,
            telemetry: &Instruments::default(),
        };
        let ending = Ending::new(
            meta("m1"),
            note.clone(),
            Some(dl.clone()),
            Tracking::Finish { attempt: 3 },
        );
        assert_eq!(ports.end(vec![ending], at(1)).await, ["m1"]);
        let state = store.get("job-1").await.expect("store");
        assert!(!state[0].announced);
        assert!(
            state[0].letter_stored,
            "the letter went out before the publish failed"
        );
        assert_eq!(dlq.dead_letters().len(), 1);

        // The re-delivery finds the end recorded and announces it from the record,
        // without storing its letter a second time.
        let again = recorded(&store, Stage::Processor, "job-1", &dl.job, None)
            .await
            .expect("store")
            .expect("recorded");
        assert_eq!(again.0.errors, note.errors);
        assert!(again.1.is_none(), "the letter is stored already");
        let up = MemoryTopic::default();
        let ports = EndPorts {
            topic: &up,
            ..ports
        };
        let ending = Ending::new(meta("m1"), again.0, again.1, Tracking::Recorded);
        assert!(ports.end(vec![ending], at(2)).await.is_empty());
        assert_eq!(up.notifications().len(), 1);
        assert_eq!(
            up.notifications()[0].notification_id(),
            note.notification_id()
        );
        assert_eq!(
            up.notifications()[0].timestamp,
            note.timestamp,
            "the end as recorded, not rebuilt at the re-delivery: every copy says the same"
        );
        assert!(store.get("job-1").await.expect("store")[0].announced);
        assert_eq!(dlq.dead_letters().len(), 1, "one letter for the one end");
    }

    #[tokio::test]
    async fn a_letter_that_could_not_be_stored_is_stored_by_the_next_delivery() {
        let store = MemoryStore::default();
        claimed(&store, "job-1").await;
        let note = failed_note("job-1");
        let job = serde_json::json!({"job_type": "report_generation"});
        let dl = DeadLetter::for_notification(&note, None, job);
        let (down, topic) = (MemoryQueue::refusing("job-1"), MemoryTopic::default());
        let ports = EndPorts {
            stage: Stage::Processor,
            dead_letters: &down,
            topic: &topic,
            store: &store,
            telemetry: &Instruments::default(),
        };
        let ending = Ending::new(
            meta("m1"),
            note,
            Some(dl.clone()),
            Tracking::Finish { attempt: 3 },
        );
        assert_eq!(ports.end(vec![ending], at(1)).await, ["m1"]);
        let state = store.get("job-1").await.expect("store");
        assert!(!state[0].letter_stored && !state[0].announced);
        assert!(
            topic.notifications().is_empty(),
            "no announcement before its letter"
        );
        let again = recorded(&store, Stage::Processor, "job-1", &dl.job, None)
            .await
            .expect("store")
            .expect("recorded");
        assert_eq!(
            again.1.map(|d| d.attempts),
            Some(3),
            "the letter is rebuilt"
        );
    }

    #[tokio::test]
    async fn a_mark_lands_only_on_the_end_it_names() {
        let store = MemoryStore::default();
        claimed(&store, "job-1").await;
        let note = failed_note("job-1");
        let (dlq, topic) = (MemoryQueue::default(), MemoryTopic::default());
        let ports = EndPorts {
            stage: Stage::Processor,
            dead_letters: &dlq,
            topic: &topic,
            store: &store,
            telemetry: &Instruments::default(),
        };
        ports
            .record(
                &Ending::new(
                    meta("m1"),
                    note.clone(),
                    None,
                    Tracking::Finish { attempt: 3 },
                ),
                at(1),
            )
            .await
            .expect("recorded");
        // An announcer of another end of the job (one a redrive replaced) marks nothing.
        let other = Mark::new("job-1", Stage::Processor, "another-end", Marked::Announced);
        store.mark(&other, at(2)).await.expect("store");
        assert!(!store.get("job-1").await.expect("store")[0].announced);
        let own = Mark::new(
            "job-1",
            Stage::Processor,
            &note.notification_id(),
            Marked::Announced,
        );
        store.mark(&own, at(3)).await.expect("store");
        assert!(store.get("job-1").await.expect("store")[0].announced);
    }

    #[tokio::test]
    async fn an_end_that_cannot_be_recorded_is_not_announced() {
        let store = MemoryStore::default(); // never claimed: finish is refused
        let (dlq, topic) = (MemoryQueue::default(), MemoryTopic::default());
        let ports = EndPorts {
            stage: Stage::Processor,
            dead_letters: &dlq,
            topic: &topic,
            store: &store,
            telemetry: &Instruments::default(),
        };
        let ending = Ending::new(
            meta("m1"),
            failed_note("job-9"),
            None,
            Tracking::Finish { attempt: 1 },
        );
        assert_eq!(ports.end(vec![ending], at(1)).await, ["m1"]);
        assert!(topic.notifications().is_empty());
    }

    /// `job.end_states` counts an end when it is announced, once: not while its
    /// record stays in SQS, and then on the delivery that does announce it.
    #[tokio::test]
    async fn an_end_is_counted_once_it_is_announced_and_not_while_it_stays_in_sqs() {
        use crate::telemetry::Telemetry;
        use crate::testing::exporters::{KeptMetrics, KeptSpans};
        let metrics = KeptMetrics::default();
        let telemetry = Telemetry::with_exporters("test", KeptSpans::default(), metrics.clone());
        let counted = || async {
            telemetry.flush().await;
            let last = metrics.exports().pop().unwrap_or_default();
            last.iter()
                .filter(|p| p.metric == "job.end_states")
                .filter(|p| p.attribute("job.status") == Some("FAILED"))
                .filter(|p| p.attribute("job.type") == Some("report_generation"))
                .map(|p| p.value)
                .sum::<u64>()
        };
        let (store, dlq, down) = (
            MemoryStore::default(),
            MemoryQueue::default(),
            MemoryTopic::refusing("job-1"),
        );
        let instruments = telemetry.instruments();
        let ports = EndPorts {
            stage: Stage::Processor,
            dead_letters: &dlq,
            topic: &down,
            store: &store,
            telemetry: &instruments,
        };
        let ending =
            |m: &str, job: &str| Ending::new(meta(m), failed_note(job), None, Tracking::Untracked);
        let stays = ports.end(vec![ending("m1", "job-1"), ending("m2", "job-2")], at(1));
        assert_eq!(stays.await, ["m1"]);
        assert_eq!(counted().await, 1, "only the announced end");
        let up = MemoryTopic::default();
        let ports = EndPorts {
            topic: &up,
            ..ports
        };
        assert!(ports
            .end(vec![ending("m1", "job-1")], at(2))
            .await
            .is_empty());
        assert_eq!(counted().await, 2, "the stranded end, once announced");
    }
}
