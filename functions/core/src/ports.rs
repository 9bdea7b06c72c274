//! The AWS calls the handlers make, as small traits, so handler logic is tested
//! against in-memory implementations and runs unchanged against SQS and SNS.

use crate::messages::Notification;
use async_trait::async_trait;

/// A message to put on a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub body: String,
    /// String message attributes, for routing and for operators reading the queue.
    pub attributes: Vec<(&'static str, String)>,
    /// Seconds before the message becomes visible (SQS `DelaySeconds`, at most 900).
    pub delay_seconds: u32,
}

/// A failed call to a downstream service. Every variant is worth retrying later: the
/// record stays in its source queue, so nothing is lost by failing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("{operation} was refused: {message}")]
    Refused {
        operation: &'static str,
        message: String,
    },
    #[error("{operation} failed to reach the service: {message}")]
    Unreachable {
        operation: &'static str,
        message: String,
    },
}

/// A queue that accepts batches (`jobs-todo`, `dead-letter-queue`).
#[async_trait]
pub trait MessageQueue: Send + Sync {
    /// Sends up to [`MAX_BATCH`] messages. Returns one result per message, in order:
    /// a batch call can succeed for some entries and fail for others.
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PortError>>;

    /// The queue's name, for telemetry (`messaging.destination.name`).
    fn name(&self) -> &str {
        "unknown"
    }

    /// Makes received messages visible again after the given delays (SQS
    /// `ChangeMessageVisibility`), so that a record reported as a batch failure comes
    /// back soon instead of after the queue's whole visibility timeout. Best effort:
    /// if this fails, the visibility timeout still brings the record back.
    async fn retry_later(&self, _receipts: &[Receipt]) -> Result<(), PortError> {
        Ok(())
    }
}

/// A received message to make visible again after `delay_seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub receipt_handle: String,
    pub delay_seconds: u32,
}

/// How long a record that failed on its `receive_count`-th receive waits before SQS
/// offers it again: 15 s, then four times longer on each receive, at most 15 minutes,
/// so a dependency may be out for about 20 minutes before the queue's
/// `maxReceiveCount` (5) gives up on the record.
pub fn retry_later_delay(receive_count: u32) -> u32 {
    let grown = 15u64.saturating_mul(4u64.saturating_pow(receive_count.saturating_sub(1)));
    u32::try_from(grown.min(900)).unwrap_or(900)
}

/// The most messages one batch call takes (SQS `SendMessageBatch`).
pub const MAX_BATCH: usize = 10;

/// The end-state topic.
#[async_trait]
pub trait Topic: Send + Sync {
    async fn publish(&self, notification: &Notification) -> Result<(), PortError>;

    /// Publishes several notifications: one result per notification, in order. A
    /// topic that can publish in batches overrides this; by default they go one by
    /// one, concurrently.
    async fn publish_all(&self, notifications: &[Notification]) -> Vec<Result<(), PortError>> {
        futures_util::future::join_all(notifications.iter().map(|n| self.publish(n))).await
    }
}

/// Sends any number of messages in batches of [`MAX_BATCH`], all batches at once.
pub async fn send_all<Q: MessageQueue + ?Sized>(
    queue: &Q,
    messages: &[OutgoingMessage],
) -> Vec<Result<(), PortError>> {
    let batches = messages
        .chunks(MAX_BATCH)
        .map(|chunk| queue.send_batch(chunk));
    futures_util::future::join_all(batches)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_records_come_back_sooner_first_and_never_later_than_15_minutes() {
        let delays: Vec<u32> = (1..=6).map(retry_later_delay).collect();
        assert_eq!(delays, [15, 60, 240, 900, 900, 900]);
        assert_eq!(retry_later_delay(0), 15);
        assert_eq!(retry_later_delay(u32::MAX), 900);
    }
}
