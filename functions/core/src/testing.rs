//! In-memory ports: they record what was sent and fail the way AWS fails, so handler
//! tests cover partial failures without an emulator.
//!
//! Like SQS and SNS, the queue and the topic refuse a batch call of more than
//! [`MAX_BATCH`] entries or more than [`MAX_BATCH_BYTES`] in total (whole), and an entry
//! over [`MAX_MESSAGE_BYTES`], with a character SQS does not allow
//! ([`crate::ports::sqs_allows`]: `InvalidMessageContents`) or with an empty attribute
//! value. The topic checks what SNS would deliver to an SQS subscriber. Each also has
//! [`Faults`]: refuse whole calls, lose the answer of a call that took effect, or be slow.

use crate::messages::{DeadLetter, EnrichedJob, Notification};
use crate::ports::{
    sqs_allows, Faults, MessageQueue, OutgoingMessage, PortError, Receipt, Topic, MAX_BATCH,
    MAX_BATCH_BYTES, MAX_MESSAGE_BYTES,
};
use crate::record::notification_message;
use crate::store::{Claim, ClaimOutcome, Finish, JobState, JobStore, Release};
use crate::Timestamp;
use async_trait::async_trait;
use std::sync::Mutex;

fn refused(operation: &'static str, message: impl Into<String>) -> PortError {
    PortError::Refused {
        operation,
        message: message.into(),
    }
}

/// Why SQS would refuse a whole batch call of these messages, if it would.
pub fn batch_refusal(messages: &[OutgoingMessage]) -> Option<String> {
    let total: usize = messages.iter().map(OutgoingMessage::size).sum();
    if messages.len() > MAX_BATCH {
        Some(format!(
            "TooManyEntriesInBatchRequest: {} entries, at most {MAX_BATCH}",
            messages.len()
        ))
    } else if total > MAX_BATCH_BYTES {
        Some(format!(
            "BatchRequestTooLong: {total} bytes in all, at most {MAX_BATCH_BYTES}"
        ))
    } else {
        None
    }
}

/// Why SQS would refuse this message, if it would.
pub fn message_refusal(m: &OutgoingMessage) -> Option<String> {
    if m.size() > MAX_MESSAGE_BYTES {
        return Some(format!(
            "MessageTooLong: {} bytes, at most {MAX_MESSAGE_BYTES}",
            m.size()
        ));
    }
    if m.body.is_empty() {
        return Some("InvalidParameterValue: the message body is empty".into());
    }
    if let Some(c) = m.body.chars().find(|c| !sqs_allows(*c)) {
        return Some(format!(
            "InvalidMessageContents: the body holds the character U+{:04X}",
            u32::from(c)
        ));
    }
    for (name, value) in &m.attributes {
        if value.is_empty() {
            return Some(format!(
                "InvalidParameterValue: message attribute {name} has an empty value"
            ));
        }
        if let Some(c) = value.chars().find(|c| !sqs_allows(*c)) {
            return Some(format!(
                "InvalidMessageContents: message attribute {name} holds the character U+{:04X}",
                u32::from(c)
            ));
        }
    }
    None
}

/// Why a FIFO queue would refuse this message, if it would: every message needs a
/// group and a deduplication id of SQS's alphabet, and none may have its own delay.
pub fn fifo_refusal(m: &OutgoingMessage) -> Option<String> {
    let Some(group) = &m.group else {
        return Some("MissingParameter: MessageGroupId is required for a FIFO queue".into());
    };
    let fits = |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
    if !fits(&group.group_id) || !fits(&group.deduplication_id) {
        return Some("InvalidParameterValue: MessageGroupId and MessageDeduplicationId must be 1 to 128 ASCII letters, digits or punctuation".into());
    }
    if m.delay_seconds != 0 {
        return Some(
            "InvalidParameterValue: a FIFO queue takes no per-message DelaySeconds".into(),
        );
    }
    None
}

/// A queue in memory. Messages whose body contains one of `refuse` are refused.
/// A FIFO one ([`MemoryQueue::fifo`]) refuses what SQS's FIFO queues refuse
/// ([`fifo_refusal`]) and accepts a repeated deduplication id without keeping it.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    pub fifo: bool,
    pub sent: Mutex<Vec<OutgoingMessage>>,
    /// Records made visible again early, as the handler asked.
    pub released: Mutex<Vec<Receipt>>,
    pub refuse: Mutex<Vec<String>>,
    /// The size of each batch call, refused ones included.
    pub batches: Mutex<Vec<usize>>,
    pub faults: Faults,
}

impl MemoryQueue {
    pub fn fifo() -> MemoryQueue {
        MemoryQueue {
            fifo: true,
            ..MemoryQueue::default()
        }
    }

    /// Whether an accepted message repeats one kept already (same deduplication id).
    fn deduplicated(&self, m: &OutgoingMessage) -> bool {
        let Some(group) = m.group.as_ref().filter(|_| self.fifo) else {
            return false;
        };
        self.sent.lock().expect("lock").iter().any(|kept| {
            kept.group
                .as_ref()
                .is_some_and(|g| g.deduplication_id == group.deduplication_id)
        })
    }

    pub fn refusing(pattern: &str) -> MemoryQueue {
        let q = MemoryQueue::default();
        q.refuse.lock().expect("lock").push(pattern.to_owned());
        q
    }

    pub fn bodies(&self) -> Vec<String> {
        self.sent
            .lock()
            .expect("lock")
            .iter()
            .map(|m| m.body.clone())
            .collect()
    }

    pub fn jobs(&self) -> Vec<EnrichedJob> {
        self.bodies()
            .iter()
            .map(|b| serde_json::from_str(b).expect("an enriched job"))
            .collect()
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.bodies()
            .iter()
            .map(|b| serde_json::from_str(b).expect("a dead letter"))
            .collect()
    }
}

#[async_trait]
impl MessageQueue for MemoryQueue {
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PortError>> {
        const OP: &str = "SendMessageBatch";
        self.batches.lock().expect("lock").push(messages.len());
        if let Err(e) = self.faults.enter(OP).await {
            return messages.iter().map(|_| Err(e.clone())).collect();
        }
        if let Some(why) = batch_refusal(messages) {
            return messages
                .iter()
                .map(|_| Err(refused(OP, why.clone())))
                .collect();
        }
        let refuse = self.refuse.lock().expect("lock").clone();
        let results: Vec<Result<(), PortError>> = messages
            .iter()
            .map(|m| {
                if refuse.iter().any(|p| m.body.contains(p.as_str())) {
                    Err(refused(OP, "refused by the test"))
                } else if let Some(why) =
                    message_refusal(m).or_else(|| self.fifo.then(|| fifo_refusal(m)).flatten())
                {
                    Err(refused(OP, why))
                } else {
                    if !self.deduplicated(m) {
                        self.sent.lock().expect("lock").push(m.clone());
                    }
                    Ok(())
                }
            })
            .collect();
        match self.faults.leave(OP) {
            Ok(()) => results,
            Err(e) => results.into_iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn retry_later(&self, receipts: &[Receipt]) -> Result<(), PortError> {
        self.faults.enter("ChangeMessageVisibilityBatch").await?;
        self.released
            .lock()
            .expect("lock")
            .extend_from_slice(receipts);
        self.faults.leave("ChangeMessageVisibilityBatch")
    }
}

/// A topic in memory. Notifications for a job id in `refuse` are refused.
#[derive(Debug, Default)]
pub struct MemoryTopic {
    pub published: Mutex<Vec<Notification>>,
    pub refuse: Mutex<Vec<String>>,
    /// The size of each batch call, refused ones included.
    pub batches: Mutex<Vec<usize>>,
    pub faults: Faults,
}

impl MemoryTopic {
    pub fn refusing(job_id: &str) -> MemoryTopic {
        let t = MemoryTopic::default();
        t.refuse.lock().expect("lock").push(job_id.to_owned());
        t
    }

    pub fn notifications(&self) -> Vec<Notification> {
        self.published.lock().expect("lock").clone()
    }

    /// Publishes one notification, or says why not; no faults.
    fn take(&self, operation: &'static str, n: &Notification) -> Result<(), PortError> {
        if self.refuse.lock().expect("lock").contains(&n.job_id) {
            return Err(refused(operation, "refused by the test"));
        }
        if let Some(why) = message_refusal(&notification_message(n)) {
            return Err(refused(operation, why));
        }
        self.published.lock().expect("lock").push(n.clone());
        Ok(())
    }
}

#[async_trait]
impl Topic for MemoryTopic {
    async fn publish_batch(&self, notifications: &[Notification]) -> Vec<Result<(), PortError>> {
        const OP: &str = "PublishBatch";
        self.batches.lock().expect("lock").push(notifications.len());
        if let Err(e) = self.faults.enter(OP).await {
            return notifications.iter().map(|_| Err(e.clone())).collect();
        }
        let wire: Vec<OutgoingMessage> = notifications.iter().map(notification_message).collect();
        if let Some(why) = batch_refusal(&wire) {
            return notifications
                .iter()
                .map(|_| Err(refused(OP, why.clone())))
                .collect();
        }
        let results: Vec<_> = notifications.iter().map(|n| self.take(OP, n)).collect();
        match self.faults.leave(OP) {
            Ok(()) => results,
            Err(e) => results.into_iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn publish(&self, notification: &Notification) -> Result<(), PortError> {
        self.faults.enter("Publish").await?;
        self.take("Publish", notification)?;
        self.faults.leave("Publish")
    }
}

/// A store whose claims are retried once, with the very same request, when they fail:
/// what the AWS SDK does with a `PutItem` or `BatchExecuteStatement` whose answer timed
/// out (it may have taken effect). Wrap a [`crate::store::MemoryStore`] whose faults
/// lose answers to see a claim find its own earlier write.
#[derive(Debug, Default)]
pub struct SdkRetry<S> {
    pub inner: S,
}

/// A rerun's transaction is sent again with the very same request when it fails.
#[async_trait]
impl<S: crate::store::Replays> crate::store::Replays for SdkRetry<S> {
    async fn replay_order(
        &self,
        name: &str,
    ) -> Result<Option<crate::store::ReplayOrder>, PortError> {
        self.inner.replay_order(name).await
    }

    async fn rerun(
        &self,
        rerun: &crate::store::Rerun<'_>,
        now: Timestamp,
    ) -> Result<crate::store::Rerunning, PortError> {
        match self.inner.rerun(rerun, now).await {
            Err(_) => self.inner.rerun(rerun, now).await,
            answered => answered,
        }
    }
}

/// A saga's calls are sent again with the very same request when they fail.
#[async_trait]
impl<S: crate::store::Sagas> crate::store::Sagas for SdkRetry<S> {
    async fn saga_log(
        &self,
        job_id: &str,
    ) -> Result<Option<crate::store::saga::Versioned>, PortError> {
        match self.inner.saga_log(job_id).await {
            Err(_) => self.inner.saga_log(job_id).await,
            answered => answered,
        }
    }

    async fn save_saga_log(
        &self,
        job_id: &str,
        log: &crate::store::saga::SagaLog,
        version: u64,
        now: Timestamp,
    ) -> Result<bool, PortError> {
        match self.inner.save_saga_log(job_id, log, version, now).await {
            Err(_) => self.inner.save_saga_log(job_id, log, version, now).await,
            answered => answered,
        }
    }

    async fn apply(
        &self,
        effect: &crate::store::saga::Effect<'_>,
        now: Timestamp,
    ) -> Result<crate::store::saga::Applied, PortError> {
        match self.inner.apply(effect, now).await {
            Err(_) => self.inner.apply(effect, now).await,
            answered => answered,
        }
    }

    async fn compensate(
        &self,
        effect: &crate::store::saga::Effect<'_>,
        compensation: &str,
        now: Timestamp,
    ) -> Result<crate::store::saga::Undo, PortError> {
        match self.inner.compensate(effect, compensation, now).await {
            Err(_) => self.inner.compensate(effect, compensation, now).await,
            answered => answered,
        }
    }
}

#[async_trait]
impl<S: JobStore> JobStore for SdkRetry<S> {
    async fn claim(&self, claim: &Claim<'_>, now: Timestamp) -> Result<ClaimOutcome, PortError> {
        match self.inner.claim(claim, now).await {
            Err(_) => self.inner.claim(claim, now).await,
            answered => answered,
        }
    }

    async fn claim_all(
        &self,
        claims: &[Claim<'_>],
        now: Timestamp,
    ) -> Vec<Result<ClaimOutcome, PortError>> {
        let first = self.inner.claim_all(claims, now).await;
        if first.iter().all(Result::is_ok) {
            return first;
        }
        // The SDK retries the whole call.
        self.inner.claim_all(claims, now).await
    }

    async fn finish(&self, finish: &Finish) -> Result<(), PortError> {
        self.inner.finish(finish).await
    }

    async fn mark(&self, mark: &crate::store::Mark, now: Timestamp) -> Result<(), PortError> {
        self.inner.mark(mark, now).await
    }

    async fn release(&self, release: &Release<'_>, now: Timestamp) -> Result<(), PortError> {
        self.inner.release(release, now).await
    }

    /// Sent again with the very same request when it fails, as the SDK does.
    async fn stop(
        &self,
        end: &crate::store::Stop<'_>,
    ) -> Result<crate::store::Forestalled, PortError> {
        match self.inner.stop(end).await {
            Err(_) => self.inner.stop(end).await,
            answered => answered,
        }
    }

    async fn get(&self, job_id: &str) -> Result<Vec<JobState>, PortError> {
        self.inner.get(job_id).await
    }
}

/// Span and metric exporters that keep what they are given, to check what an
/// invocation exported (and when).
pub mod exporters {
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
    use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
    use opentelemetry_sdk::metrics::Temporality;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    /// Keeps every exported span.
    #[derive(Debug, Clone, Default)]
    pub struct KeptSpans(pub Arc<Mutex<Vec<SpanData>>>);

    impl KeptSpans {
        pub fn spans(&self) -> Vec<SpanData> {
            self.0.lock().expect("lock").clone()
        }
    }

    impl SpanExporter for KeptSpans {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().expect("lock").extend(batch);
            Ok(())
        }
    }

    /// One exported data point of a `u64` counter.
    #[derive(Debug, Clone, PartialEq)]
    pub struct KeptPoint {
        pub metric: String,
        /// Sorted by key.
        pub attributes: Vec<(String, String)>,
        pub value: u64,
        /// When it was collected.
        pub time: SystemTime,
    }

    impl KeptPoint {
        /// The value of the attribute `key`, if the point has it.
        pub fn attribute(&self, key: &str) -> Option<&str> {
            self.attributes
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Keeps the names of exported metrics, and the counters' data points of each
    /// export.
    #[derive(Debug, Clone, Default)]
    pub struct KeptMetrics {
        names: Arc<Mutex<Vec<String>>>,
        exports: Arc<Mutex<Vec<Vec<KeptPoint>>>>,
    }

    impl KeptMetrics {
        pub fn names(&self) -> Vec<String> {
            self.names.lock().expect("lock").clone()
        }

        /// The counters' data points, one list per export call, oldest first.
        pub fn exports(&self) -> Vec<Vec<KeptPoint>> {
            self.exports.lock().expect("lock").clone()
        }
    }

    impl PushMetricExporter for KeptMetrics {
        async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
            let mut points = Vec::new();
            let mut names = self.names.lock().expect("lock");
            for scope in metrics.scope_metrics() {
                for metric in scope.metrics() {
                    names.push(metric.name().to_owned());
                    let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
                        continue;
                    };
                    for point in sum.data_points() {
                        let mut attributes: Vec<(String, String)> = point
                            .attributes()
                            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                            .collect();
                        attributes.sort();
                        points.push(KeptPoint {
                            metric: metric.name().to_owned(),
                            attributes,
                            value: point.value(),
                            time: sum.time(),
                        });
                    }
                }
            }
            self.exports.lock().expect("lock").push(points);
            Ok(())
        }

        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }

        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }

        fn temporality(&self) -> Temporality {
            Temporality::Cumulative
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{JobStatus, Stage};
    use crate::store::{Claim, ClaimOutcome, JobStore, MemoryStore};
    use std::time::Duration;

    fn message(body: &str) -> OutgoingMessage {
        OutgoingMessage {
            body: body.to_owned(),
            attributes: vec![("job_id", "job-1".into())],
            delay_seconds: 0,
            group: None,
        }
    }

    fn note(job_id: &str, result: &str) -> Notification {
        Notification {
            job_id: job_id.into(),
            job_type: None,
            status: JobStatus::Completed,
            stage: Stage::Processor,
            attempts: 1,
            errors: Vec::new(),
            result: Some(serde_json::Value::from(result)),
            replay: None,
            timestamp: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn the_queue_refuses_what_sqs_refuses() {
        let q = MemoryQueue::default();
        let eleven: Vec<_> = (0..11).map(|_| message("{}")).collect();
        assert!(q.send_batch(&eleven).await.iter().all(Result::is_err));
        let big = "x".repeat(MAX_MESSAGE_BYTES / 2);
        let too_much = [message(&big), message(&big)];
        let refused = q.send_batch(&too_much).await;
        assert!(refused.iter().all(|r| {
            matches!(r, Err(PortError::Refused { message, .. }) if message.starts_with("BatchRequestTooLong"))
        }));
        assert!(
            q.sent.lock().expect("lock").is_empty(),
            "a refused call takes no effect"
        );

        let mut empty_attribute = message("{}");
        empty_attribute.attributes[0].1.clear();
        let mixed = [
            message("{\"ok\":1}"),
            message("{\"bad\":\"\u{ffff}\"}"),
            empty_attribute,
            message(&"x".repeat(MAX_MESSAGE_BYTES + 1)),
        ];
        let results = q.send_batch(&mixed[..3]).await;
        assert!(results[0].is_ok());
        assert!(
            matches!(&results[1], Err(PortError::Refused { message, .. }) if message.starts_with("InvalidMessageContents")),
            "{results:?}"
        );
        assert!(results[2].is_err());
        assert!(
            q.send_batch(&mixed[3..]).await[0].is_err(),
            "one message over the limit"
        );
        assert_eq!(q.bodies(), ["{\"ok\":1}"]);
    }

    #[tokio::test]
    async fn a_refused_call_takes_no_effect_and_a_lost_answer_did() {
        let q = MemoryQueue::default();
        q.faults.refuse_calls(1);
        assert!(q.send_batch(&[message("{\"n\":1}")]).await[0].is_err());
        assert!(q.bodies().is_empty());
        q.faults.lose_answers(1);
        let lost = q.send_batch(&[message("{\"n\":2}")]).await;
        assert!(matches!(lost[0], Err(PortError::Unreachable { .. })));
        assert_eq!(
            q.bodies(),
            ["{\"n\":2}"],
            "sent although the caller got an error"
        );
        assert!(q.send_batch(&[message("{\"n\":3}")]).await[0].is_ok());

        let t = MemoryTopic::default();
        t.faults.lose_answers(1);
        assert!(t.publish(&note("job-1", "r")).await.is_err());
        assert_eq!(t.notifications().len(), 1);

        let store = MemoryStore::default();
        let at = chrono::Utc::now();
        let claim = Claim {
            job_id: "job-1",
            stage: Stage::Processor,
            fingerprint: "fp",
            legacy_fingerprint: None,
            attempt: 1,
            lease_until: at + chrono::TimeDelta::seconds(60),
            holder: "m1",
            token: "",
            history: None,
        };
        store.faults.lose_answers(1);
        assert!(store.claim(&claim, at).await.is_err());
        assert_eq!(store.get("job-1").await.expect("store").len(), 1, "written");
        store.faults.refuse_calls(1);
        let refused = store.claim_all(&[claim.clone(), claim.clone()], at).await;
        assert!(refused.iter().all(Result::is_err), "a batch refused whole");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_port_answers_late() {
        let q = MemoryQueue::default();
        q.faults.slow_down(Duration::from_secs(7));
        let started = tokio::time::Instant::now();
        assert!(q.send_batch(&[message("{}")]).await[0].is_ok());
        assert_eq!(started.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test]
    async fn the_topic_refuses_a_batch_too_large_in_all() {
        let t = MemoryTopic::default();
        let big = "x".repeat(MAX_BATCH_BYTES / 3);
        let notes: Vec<_> = (0..4).map(|i| note(&format!("job-{i}"), &big)).collect();
        assert!(t.publish_batch(&notes).await.iter().all(Result::is_err));
        assert!(t.notifications().is_empty());
        assert!(t.publish_batch(&notes[..2]).await.iter().all(Result::is_ok));
    }

    #[tokio::test]
    async fn a_snapshot_store_lets_two_claims_of_one_new_job_in_one_batch_through() {
        let store = MemoryStore::default();
        store
            .snapshot_batches
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let at = chrono::Utc::now();
        let claim = |holder| Claim {
            job_id: "job-1",
            stage: Stage::Ingester,
            fingerprint: "fp",
            legacy_fingerprint: None,
            attempt: 1,
            lease_until: at + chrono::TimeDelta::seconds(60),
            holder,
            token: "",
            history: None,
        };
        let answers = store.claim_all(&[claim("m1"), claim("m2")], at).await;
        assert_eq!(
            answers,
            [Ok(ClaimOutcome::Claimed), Ok(ClaimOutcome::Claimed)],
            "as the emulator answered"
        );
        assert_eq!(
            store.claim(&claim("m3"), at).await,
            Ok(ClaimOutcome::Stale),
            "single calls decide against the table as it is"
        );
    }
}

/// One store seen by several handlers at once (both stages of a test pipeline): every
/// call goes to the borrowed store, batch calls included.
#[derive(Debug)]
pub struct Shared<'a, S>(pub &'a S);

#[async_trait]
impl<S: crate::store::Replays> crate::store::Replays for Shared<'_, S> {
    async fn replay_order(
        &self,
        name: &str,
    ) -> Result<Option<crate::store::ReplayOrder>, PortError> {
        self.0.replay_order(name).await
    }

    async fn rerun(
        &self,
        rerun: &crate::store::Rerun<'_>,
        now: Timestamp,
    ) -> Result<crate::store::Rerunning, PortError> {
        self.0.rerun(rerun, now).await
    }
}

crate::delegate_sagas!([S: crate::store::Sagas] Shared<'_, S>, 0);

#[async_trait]
impl<S: JobStore> JobStore for Shared<'_, S> {
    async fn claim(&self, claim: &Claim<'_>, now: Timestamp) -> Result<ClaimOutcome, PortError> {
        self.0.claim(claim, now).await
    }

    async fn claim_all(
        &self,
        claims: &[Claim<'_>],
        now: Timestamp,
    ) -> Vec<Result<ClaimOutcome, PortError>> {
        self.0.claim_all(claims, now).await
    }

    async fn finish(&self, finish: &Finish) -> Result<(), PortError> {
        self.0.finish(finish).await
    }

    async fn finish_all(&self, finishes: &[crate::store::Finish]) -> Vec<Result<(), PortError>> {
        self.0.finish_all(finishes).await
    }

    async fn mark(&self, mark: &crate::store::Mark, now: Timestamp) -> Result<(), PortError> {
        self.0.mark(mark, now).await
    }

    async fn mark_all(
        &self,
        marks: &[crate::store::Mark],
        now: Timestamp,
    ) -> Vec<Result<(), PortError>> {
        self.0.mark_all(marks, now).await
    }

    async fn release(&self, release: &Release<'_>, now: Timestamp) -> Result<(), PortError> {
        self.0.release(release, now).await
    }

    async fn stop(
        &self,
        end: &crate::store::Stop<'_>,
    ) -> Result<crate::store::Forestalled, PortError> {
        self.0.stop(end).await
    }

    async fn get(&self, job_id: &str) -> Result<Vec<JobState>, PortError> {
        self.0.get(job_id).await
    }
}

#[async_trait]
impl<S: crate::store::Outbox> crate::store::Outbox for Shared<'_, S> {
    async fn stranded(
        &self,
        shard: u32,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<crate::store::Stranded>, PortError> {
        self.0.stranded(shard, before, limit).await
    }

    async fn take(
        &self,
        take: &crate::store::Take<'_>,
        now: Timestamp,
    ) -> Result<Option<JobState>, PortError> {
        self.0.take(take, now).await
    }
}

#[async_trait]
impl<T: Topic> Topic for Shared<'_, T> {
    async fn publish(&self, notification: &Notification) -> Result<(), PortError> {
        self.0.publish(notification).await
    }

    async fn publish_batch(&self, notifications: &[Notification]) -> Vec<Result<(), PortError>> {
        self.0.publish_batch(notifications).await
    }
}

#[async_trait]
impl<Q: MessageQueue> MessageQueue for Shared<'_, Q> {
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PortError>> {
        self.0.send_batch(messages).await
    }

    fn name(&self) -> &str {
        self.0.name()
    }

    async fn retry_later(&self, receipts: &[crate::ports::Receipt]) -> Result<(), PortError> {
        self.0.retry_later(receipts).await
    }
}
