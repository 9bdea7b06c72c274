//! Ports that take their time, for tests near a deadline (paused tokio time): each
//! call of a [`Slow`] port waits `delay` and then asks the wrapped one.

use crate::messages::{Notification, Stage};
use crate::ports::{MessageQueue, OutgoingMessage, PortError, Topic};
use crate::state::{Claim, ClaimOutcome, JobStore, Progress, Release};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::Duration;

/// Ports whose every call takes `delay` (a claim two: the conditional write and
/// the read back), forwarding to in-memory ones.
#[derive(Debug)]
pub struct Slow<P> {
    pub inner: P,
    pub delay: Duration,
}

impl<P> Slow<P> {
    async fn wait(&self, calls: u32) {
        tokio::time::sleep(self.delay * calls).await;
    }
}

#[async_trait::async_trait]
impl<Q: MessageQueue> MessageQueue for Slow<Q> {
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PortError>> {
        self.wait(1).await;
        self.inner.send_batch(messages).await
    }
    async fn retry_later(&self, receipts: &[crate::ports::Receipt]) -> Result<(), PortError> {
        self.wait(1).await;
        self.inner.retry_later(receipts).await
    }
}

#[async_trait::async_trait]
impl<T: Topic> Topic for Slow<T> {
    async fn publish(&self, n: &Notification) -> Result<(), PortError> {
        self.wait(1).await;
        self.inner.publish(n).await
    }
}

#[async_trait::async_trait]
impl<S: JobStore> JobStore for Slow<S> {
    async fn claim(&self, c: &Claim<'_>, now: DateTime<Utc>) -> Result<ClaimOutcome, PortError> {
        self.wait(2).await;
        self.inner.claim(c, now).await
    }
    async fn finish(
        &self,
        job_id: &str,
        stage: Stage,
        attempt: u32,
        progress: Progress,
        detail: Option<Value>,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        self.wait(1).await;
        self.inner
            .finish(job_id, stage, attempt, progress, detail, now)
            .await
    }
    async fn announce(
        &self,
        job_id: &str,
        stage: Stage,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        self.wait(1).await;
        self.inner.announce(job_id, stage, now).await
    }
    async fn release(&self, release: &Release<'_>, now: DateTime<Utc>) -> Result<(), PortError> {
        self.wait(1).await;
        self.inner.release(release, now).await
    }
    async fn reopen(
        &self,
        reopen: &crate::state::Reopen<'_>,
        now: DateTime<Utc>,
    ) -> Result<crate::state::Reopened, PortError> {
        self.wait(1).await;
        self.inner.reopen(reopen, now).await
    }
    async fn get(&self, job_id: &str) -> Result<Vec<crate::state::JobState>, PortError> {
        self.wait(1).await;
        self.inner.get(job_id).await
    }
}
