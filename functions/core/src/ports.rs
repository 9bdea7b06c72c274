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
}

/// The most messages one batch call takes (SQS `SendMessageBatch`).
pub const MAX_BATCH: usize = 10;

/// The end-state topic.
#[async_trait]
pub trait Topic: Send + Sync {
    async fn publish(&self, notification: &Notification) -> Result<(), PortError>;
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
