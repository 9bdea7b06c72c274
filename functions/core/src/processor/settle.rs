//! Settling a record: carrying out its outcome (end the job, queue its next attempt,
//! look again later, or leave the record in SQS) and saying whether it stays in SQS.

use super::{forwarded_attributes, ordered, Outcome, Processor, Stay};
use crate::ending::{give_back, EndPorts, Ending};
use crate::messages::{EnrichedJob, ErrorCode, JobStatus, Stage};
use crate::ports::{send_all, MessageQueue, OutgoingMessage, Topic};
use crate::record::{enriched_message, RecordMeta};
use crate::store::{Finish, JobStore, Progress, Sagas};
use crate::telemetry::instruments_prelude::*;
use aws_lambda_events::sqs::SqsMessage;
use std::time::Duration;
use tracing::{info, warn};

impl<Q: MessageQueue, T: Topic, S: JobStore + Sagas> Processor<Q, T, S> {
    /// Carries out an outcome; says so if the record must stay in SQS.
    ///
    /// A FIFO record ([`ordered`]) is its job's only place in its group: its retries
    /// and deferrals wait in place, as the record itself, instead of going to the
    /// back of the group as new messages.
    pub(super) async fn settle(
        &self,
        outcome: Outcome,
        record: &SqsMessage,
        meta: RecordMeta,
        event_time: Option<String>,
        consumer: &JobSpan,
    ) -> Option<Stay> {
        let tel = &self.telemetry;
        let message_id = meta.message_id.clone();
        let in_place = ordered::group_of(record).is_some();
        let stays = match outcome {
            Outcome::End(ending) => !self.end(*ending, event_time, consumer).await,
            Outcome::Retry { next, delay, code } if in_place => {
                self.retry_in_place(&meta, *next, delay, code, consumer)
                    .await;
                return Some(Stay {
                    message_id,
                    after: Some(delay),
                });
            }
            Outcome::Retry { next, delay, code } => {
                !self.retry(&meta, *next, delay, code, consumer).await
            }
            Outcome::Defer(delay) if in_place => {
                return Some(Stay {
                    message_id,
                    after: Some(delay),
                })
            }
            Outcome::Defer(delay) => !self.defer(record, delay).await,
            Outcome::Repeat(reason) => {
                consumer.set_attribute("job.repeat", reason);
                tel.record_repeat("processor", reason);
                info!(reason, "repeated delivery skipped");
                false
            }
            Outcome::Unavailable(e) => {
                warn!(error = %e, "job state unavailable; SQS will retry");
                consumer.fail("state_unavailable", &e.to_string());
                true
            }
            Outcome::Held(until) => {
                warn!(%until, "an earlier delivery of this record still holds the job; SQS will retry");
                consumer.set_attribute("job.held_until", until.to_rfc3339());
                true
            }
        };
        stays.then_some(Stay {
            message_id,
            after: None,
        })
    }

    /// Ends the job; whether it is ended and announced (else its record stays in SQS).
    async fn end(
        &self,
        mut ending: Ending,
        event_time: Option<String>,
        consumer: &JobSpan,
    ) -> bool {
        let n = &ending.notification;
        let status = n.status;
        if let Some(last) = n.errors.last().filter(|_| status != JobStatus::Completed) {
            consumer.fail(last.code.as_str(), &last.message);
        }
        consumer.set_status(status);
        if let Some(dl) = ending.dead_letter.as_mut() {
            if let Some(tc) = propagation::to_trace_context(consumer.context()) {
                dl.trace_context = Some(tc);
            }
        }
        ending.event_time = event_time;
        ending.trace_context = propagation::to_trace_context(consumer.context());
        let ports = EndPorts {
            stage: Stage::Processor,
            dead_letters: &self.dead_letters,
            topic: &self.topic,
            store: &self.store,
            telemetry: &self.telemetry,
        };
        if !ports
            .end(vec![ending], crate::clock::now())
            .await
            .is_empty()
        {
            consumer.set_attribute("job.end_state_pending", true);
            return false;
        }
        true
    }

    /// Queues the next attempt, then hands the job over to it; whether it is queued.
    async fn retry(
        &self,
        meta: &RecordMeta,
        next: EnrichedJob,
        delay: Duration,
        code: ErrorCode,
        consumer: &JobSpan,
    ) -> bool {
        let mut message = enriched_message(&next);
        message.delay_seconds = u32::try_from(delay.as_secs()).unwrap_or(u32::MAX);
        consumer.fail(code.as_str(), "attempt failed; retrying");
        consumer.set_attribute("job.retry_delay_s", delay.as_secs() as i64);
        let attempt = next.attempt - 1;
        if let Some(Err(e)) = send_all(&self.jobs_todo, &[message]).await.pop() {
            warn!(job_id = %next.job_id, error = %e, "could not send the next attempt; SQS will retry");
            give_back(
                &self.store,
                Stage::Processor,
                &next.job_id,
                attempt,
                meta,
                crate::clock::now(),
            )
            .await;
            return false;
        }
        self.telemetry
            .record_retry(next.job_type.as_str(), code.as_str());
        info!(job_id = %next.job_id, next_attempt = next.attempt, delay_s = delay.as_secs(), "attempt failed; retrying");
        let detail = next
            .errors
            .last()
            .and_then(|e| serde_json::to_value(e).ok());
        // The next attempt is queued either way; if the hand-over was not recorded it
        // waits for this attempt's lease to end.
        let _ = self.hand_over(&next, detail).await;
        true
    }

    /// Records that the attempt before `next` handed the job over to it.
    pub(super) async fn hand_over(
        &self,
        next: &EnrichedJob,
        detail: Option<serde_json::Value>,
    ) -> Result<(), crate::ports::PortError> {
        let hand_over = Finish {
            job_id: next.job_id.clone(),
            stage: Stage::Processor,
            attempt: next.attempt - 1,
            progress: Progress::Retrying,
            detail,
            now: crate::clock::now(),
        };
        let recorded = self.store.finish(&hand_over).await;
        if let Err(e) = &recorded {
            warn!(job_id = %next.job_id, error = %e, "could not record the hand-over to the next attempt");
        }
        recorded
    }

    /// Sends the record again, unchanged, to be looked at after `delay`; whether sent.
    async fn defer(&self, record: &SqsMessage, delay: Duration) -> bool {
        let again = OutgoingMessage {
            body: record.body.clone().unwrap_or_default(),
            attributes: forwarded_attributes(record),
            delay_seconds: u32::try_from(delay.as_secs()).unwrap_or(1).max(1),
            group: None,
        };
        let sent = matches!(
            send_all(&self.jobs_todo, &[again]).await.pop(),
            Some(Ok(()))
        );
        if sent {
            info!(
                delay_s = delay.as_secs(),
                "previous attempt still holds the job; looking again later"
            );
        }
        sent
    }
}
