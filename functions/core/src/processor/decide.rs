//! Deciding a record: read it (an enriched job, or a body that is not one), claim its
//! job, and turn the claim's answer into an [`Outcome`].

use super::execute::{end_untracked, rejection, unreadable};
use super::{Outcome, Processor, Subject, HAND_OVER_WAIT};
use crate::ending::{give_back, recorded, Ending, Tracking};
use crate::job::ordering_key;
use crate::kinds::Registry;
use crate::messages::{EnrichedJob, ErrorCode, Notification, Stage};
use crate::ports::{MessageQueue, Topic};
use crate::record::RecordMeta;
use crate::store::{Claim, ClaimOutcome, Fingerprints, JobStore, Sagas};
use crate::telemetry::instruments_prelude::*;
use aws_lambda_events::sqs::SqsMessage;
use chrono::{DateTime, Utc};
use std::time::Duration;
use tracing::warn;

impl<Q: MessageQueue, T: Topic, S: JobStore + Sagas> Processor<Q, T, S> {
    /// Decides one record; returns its outcome and the job's event time (for latency).
    /// `clock` is the deadline and the instant the invocation started at `now`.
    pub(super) async fn decide(
        &self,
        record: &SqsMessage,
        meta: &RecordMeta,
        clock: (DateTime<Utc>, tokio::time::Instant),
        now: DateTime<Utc>,
        consumer: &JobSpan,
    ) -> (Outcome, Option<String>) {
        let mut subject = read(record, meta, &self.config.kinds, consumer);
        if let Subject::Job(job) = &mut subject {
            if let Err(e) = self.resume_keyed(record, job, consumer).await {
                return (Outcome::Unavailable(e), job.event_time.clone());
            }
        }
        let (job_id, content, attempt) = subject.key();
        let prints = Fingerprints::of(content);
        let history = match &subject {
            Subject::Job(job) if attempt > 1 && !job.errors.is_empty() => {
                Some(serde_json::json!({ "errors": job.errors }))
            }
            _ => None,
        };
        let claim = Claim {
            history: history.as_ref(),
            ..Claim::for_delivery(meta, job_id, Stage::Processor, attempt, &prints, clock.0)
        };
        let outcome = match self.store.claim(&claim, now).await {
            Err(e) => {
                // The claim may have taken effect with its answer lost: give it back
                // (only if it holds this delivery's token), so the record's next
                // delivery takes the job at once instead of waiting for the lease.
                give_back(&self.store, Stage::Processor, job_id, attempt, meta, now).await;
                Outcome::Unavailable(e)
            }
            Ok(ClaimOutcome::Claimed) => self.claimed(&subject, meta, clock, now, consumer).await,
            Ok(answer) => {
                self.not_claimed(answer, &subject, meta, &prints.current, now)
                    .await
            }
        };
        let event_time = match &subject {
            Subject::Job(job) => job.event_time.clone(),
            Subject::Unreadable(..) => None,
        };
        (outcome, event_time)
    }

    /// Reads the attempt a keyed job is at from its record ([`Processor::resume`]): its
    /// body may say attempt 1 whatever attempt it is at, on `jobs-todo.fifo` always, and
    /// as a record SQS stranded there that an operator redrove to `jobs-todo`.
    async fn resume_keyed(
        &self,
        record: &SqsMessage,
        job: &mut EnrichedJob,
        consumer: &JobSpan,
    ) -> Result<(), crate::ports::PortError> {
        let group = super::ordered::group_of(record);
        if let Some(group) = group {
            consumer.set_attribute("job.ordering_group", group.to_owned());
            if let Some(seq) = record.attributes.get("SequenceNumber") {
                consumer.set_attribute("job.sequence_number", seq.clone());
            }
        }
        if group.is_none() && ordering_key(&job.job).is_none() {
            return Ok(());
        }
        self.resume(job).await?;
        consumer.set_attribute("job.attempt", i64::from(job.attempt));
        Ok(())
    }

    /// A claimed record: run its job, or end an unreadable one like any job, so a
    /// redelivery finds it ended instead of announcing it again.
    async fn claimed(
        &self,
        subject: &Subject,
        meta: &RecordMeta,
        clock: (DateTime<Utc>, tokio::time::Instant),
        now: DateTime<Utc>,
        consumer: &JobSpan,
    ) -> Outcome {
        match subject {
            Subject::Job(job) => self.run(job, meta, clock, now, consumer).await,
            Subject::Unreadable(dl, attempt) => Outcome::End(Box::new(Ending::new(
                meta.clone(),
                Notification::for_dead_letter(dl, crate::clock::now()),
                Some(dl.clone()),
                Tracking::Finish { attempt: *attempt },
            ))),
        }
    }

    /// What a claim that did not go ahead makes of the record.
    async fn not_claimed(
        &self,
        answer: ClaimOutcome,
        subject: &Subject,
        meta: &RecordMeta,
        fp: &str,
        now: DateTime<Utc>,
    ) -> Outcome {
        match answer {
            // `Claimed` is the caller's; it never comes here.
            ClaimOutcome::Claimed
            | ClaimOutcome::Duplicate {
                announced: true, ..
            } => Outcome::Repeat("duplicate"),
            ClaimOutcome::Duplicate { .. } => self.announce_recorded(subject, meta).await,
            ClaimOutcome::Stale => Outcome::Repeat("stale"),
            ClaimOutcome::Busy { until } => {
                let left = (until - now).to_std().unwrap_or_default();
                Outcome::Defer(left.clamp(Duration::from_secs(1), HAND_OVER_WAIT))
            }
            // Not a copy: this message is the job's only one, so it stays in SQS.
            ClaimOutcome::Held { until } => Outcome::Held(until),
            ClaimOutcome::Conflict { fingerprint } => match subject {
                Subject::Job(job) => {
                    let message = format!(
                        "job_id {} was already used for a job with different content (fingerprint {fingerprint}, this one {fp}); send it with a new id",
                        job.job_id
                    );
                    warn!(job_id = %job.job_id, "job id reused for different content");
                    let letter = rejection(job, ErrorCode::IdReused, message, Some("id".into()));
                    end_untracked(meta, letter)
                }
                // It names a job it is not: end it without touching that job's record.
                Subject::Unreadable(dl, _) => end_untracked(meta, dl.clone()),
            },
        }
    }

    /// An end an earlier delivery recorded but did not announce: announce it now.
    async fn announce_recorded(&self, subject: &Subject, meta: &RecordMeta) -> Outcome {
        let (job_id, content, _) = subject.key();
        let trace_context = match subject {
            Subject::Job(job) => job.trace_context.as_ref(),
            Subject::Unreadable(..) => None,
        };
        let found = recorded(
            &self.store,
            Stage::Processor,
            job_id,
            content,
            trace_context,
        )
        .await;
        match found {
            Ok(Some((notification, dead_letter))) => Outcome::End(Box::new(Ending::new(
                meta.clone(),
                notification,
                dead_letter,
                Tracking::Recorded,
            ))),
            Ok(None) => Outcome::Repeat("duplicate"),
            Err(e) => Outcome::Unavailable(e),
        }
    }
}

/// What a `jobs-todo` record holds, its span and log line told which job it is.
fn read(record: &SqsMessage, meta: &RecordMeta, kinds: &Registry, consumer: &JobSpan) -> Subject {
    let body = record.body.as_deref().unwrap_or_default();
    match EnrichedJob::from_body_in(body, kinds) {
        Ok(job) => {
            consumer.set_job(&job.job_id, Some(job.job_type.as_str()));
            consumer.set_attribute("job.attempt", i64::from(job.attempt));
            meta.identify(&job.job_id, consumer.trace_id().as_deref());
            Subject::Job(job)
        }
        Err(e) => {
            let (dl, attempt) = unreadable(body, meta, &e.to_string());
            consumer.set_job(&dl.job_id, dl.job_type.as_deref());
            meta.identify(&dl.job_id, consumer.trace_id().as_deref());
            warn!(message_id = %meta.message_id, error = %e, "unreadable message on jobs-todo");
            Subject::Unreadable(dl, attempt)
        }
    }
}

impl Subject {
    /// The job id, content and attempt its claim is taken under.
    fn key(&self) -> (&str, &serde_json::Value, u32) {
        match self {
            Subject::Job(job) => (&job.job_id, &job.job, job.attempt),
            Subject::Unreadable(dl, attempt) => (&dl.job_id, &dl.job, *attempt),
        }
    }
}
