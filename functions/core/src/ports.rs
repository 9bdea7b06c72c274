//! The AWS calls the handlers make, as small traits, so handler logic is tested
//! against in-memory implementations and runs unchanged against SQS and SNS; the
//! limits those services put on a call ([`MAX_BATCH`], [`MAX_MESSAGE_BYTES`],
//! [`sqs_allows`]) and the [`Faults`] the in-memory implementations can be given.

use crate::messages::Notification;
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// A message to put on a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub body: String,
    /// String message attributes, for routing and for operators reading the queue.
    pub attributes: Vec<(&'static str, String)>,
    /// Seconds before the message becomes visible (SQS `DelaySeconds`, at most 900).
    pub delay_seconds: u32,
    /// Its place in a FIFO queue; `None` on a standard queue.
    pub group: Option<MessageGroup>,
}

/// Where a message goes in a FIFO queue (`jobs-todo.fifo`): SQS delivers a group's
/// messages one at a time, in the order it accepted them, and drops a second message
/// with the same deduplication id within five minutes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageGroup {
    /// `MessageGroupId`: up to 128 ASCII letters, digits and punctuation.
    pub group_id: String,
    /// `MessageDeduplicationId`, of the same alphabet.
    pub deduplication_id: String,
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

/// The most messages one batch call takes (SQS `SendMessageBatch`, SNS `PublishBatch`).
pub const MAX_BATCH: usize = 10;

/// The largest message the pipeline sends, and the largest total of one batch call,
/// in bytes (body plus each attribute's name, type and value, as SQS counts them).
/// AWS takes 1 MiB for both since 2026 (SQS messages, `SendMessageBatch`,
/// `PublishBatch`), but the emulators still cap a message at 256 KiB, SNS caps one at
/// 256 KiB, and a pipeline that fits the smaller fits both. This is the one place the
/// limit lives: batches are split by it, and the in-memory fakes refuse by it.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The largest total payload of one `SendMessageBatch` or `PublishBatch` call.
pub const MAX_BATCH_BYTES: usize = MAX_MESSAGE_BYTES;

/// Whether SQS accepts `c` in a message body or string attribute value: `#x9 | #xA |
/// #xD | #x20–#xD7FF | #xE000–#xFFFD | #x10000–#x10FFFF`. It refuses anything else
/// (`InvalidMessageContents`), such as U+FFFE, U+FFFF and most C0 controls.
pub fn sqs_allows(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

impl OutgoingMessage {
    /// The message's size as SQS counts it against [`MAX_MESSAGE_BYTES`]: the body and
    /// every attribute's name, data type (`String`) and value.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(name, value)| name.len() + "String".len() + value.len())
                .sum::<usize>()
    }
}

/// The end-state topic.
#[async_trait]
pub trait Topic: Send + Sync {
    async fn publish(&self, notification: &Notification) -> Result<(), PortError>;

    /// Publishes notifications in one batch call (SNS `PublishBatch`): at most
    /// [`MAX_BATCH`] of them and [`MAX_BATCH_BYTES`] in all, as [`publish_batched`]
    /// splits them. One result per notification, in order. A topic that can publish
    /// in batches overrides this; by default they go one by one, concurrently.
    async fn publish_batch(&self, notifications: &[Notification]) -> Vec<Result<(), PortError>> {
        futures_util::future::join_all(notifications.iter().map(|n| self.publish(n))).await
    }
}

/// Splits messages of the given sizes, in order, into batches of at most [`MAX_BATCH`]
/// messages and [`MAX_BATCH_BYTES`] in all: the ranges of each batch. A message over
/// the limit on its own goes alone (the service refuses it; the messages the pipeline
/// builds stay under [`MAX_MESSAGE_BYTES`]).
pub fn batch_ranges(sizes: impl IntoIterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    let mut total = 0;
    for (i, size) in sizes.into_iter().enumerate() {
        match ranges.last_mut() {
            Some(last) if last.len() < MAX_BATCH && total + size <= MAX_BATCH_BYTES => {
                last.end = i + 1;
                total += size;
            }
            _ => {
                ranges.push(i..i + 1);
                total = size;
            }
        }
    }
    ranges
}

/// Sends any number of messages in batches that SQS takes ([`batch_ranges`]: by count
/// and by total size), all batches at once.
pub async fn send_all<Q: MessageQueue + ?Sized>(
    queue: &Q,
    messages: &[OutgoingMessage],
) -> Vec<Result<(), PortError>> {
    let sizes = messages.iter().map(OutgoingMessage::size);
    in_batches(sizes, |range| queue.send_batch(&messages[range])).await
}

/// Publishes any number of notifications in batches that SNS takes ([`batch_ranges`],
/// sized as [`crate::record::notification_message`] writes them), all batches at once.
pub async fn publish_batched<T: Topic + ?Sized>(
    topic: &T,
    notifications: &[Notification],
) -> Vec<Result<(), PortError>> {
    let sizes = notifications
        .iter()
        .map(|n| crate::record::notification_message(n).size());
    in_batches(sizes, |range| topic.publish_batch(&notifications[range])).await
}

/// Calls `batch` for each range [`batch_ranges`] makes of items of `sizes`, all at
/// once; one result per item, in order.
async fn in_batches<F, Fut>(
    sizes: impl IntoIterator<Item = usize>,
    batch: F,
) -> Vec<Result<(), PortError>>
where
    F: FnMut(std::ops::Range<usize>) -> Fut,
    Fut: std::future::Future<Output = Vec<Result<(), PortError>>>,
{
    let batches = batch_ranges(sizes).into_iter().map(batch);
    futures_util::future::join_all(batches)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// How an in-memory port misbehaves, in the ways AWS calls fail; a test may change it
/// at any time. The memory queue, topic and store each carry one.
#[derive(Debug, Default)]
pub struct Faults {
    refused: AtomicUsize,
    lost: AtomicUsize,
    delay_ms: AtomicU64,
    only: std::sync::Mutex<Option<&'static str>>,
    chaos: std::sync::Mutex<Option<std::sync::Arc<dyn Chaos>>>,
}

/// Decides the fault of every call as it is made, for a simulation that draws them
/// from a seeded generator (see the `sim` crate): asked once when a call starts and
/// once when a call that took effect answers.
pub trait Chaos: Send + Sync + std::fmt::Debug {
    /// What happens to a call of `operation` before it can take effect.
    fn before(&self, operation: &'static str) -> Before;
    /// Whether the answer of a call of `operation` that took effect is lost.
    fn lose_answer(&self, operation: &'static str) -> bool;
}

/// What [`Chaos::before`] does to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Before {
    /// The call goes through.
    Pass,
    /// The call waits this long first (past the caller's timeout, it never lands).
    Slow(Duration),
    /// The call is refused whole, with this message (throttled, out, failing).
    Refuse(String),
}

impl Faults {
    /// From now on, faults strike only calls of `operation` (for example
    /// `TransactWriteItems`); the port's other calls go through untouched.
    pub fn only(&self, operation: &'static str) {
        *self.only.lock().unwrap_or_else(|e| e.into_inner()) = Some(operation);
    }

    fn strikes(&self, operation: &str) -> bool {
        self.only
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|only| only == operation)
    }

    /// Refuses the next `n` calls whole, as a throttled or failing service does:
    /// nothing of them takes effect.
    pub fn refuse_calls(&self, n: usize) {
        self.refused.store(n, Ordering::SeqCst);
    }

    /// Lets the next `n` calls take effect but answers each with an error, as when the
    /// answer is lost (a timeout after the service accepted the call).
    pub fn lose_answers(&self, n: usize) {
        self.lost.store(n, Ordering::SeqCst);
    }

    /// Makes every call take `by` before it answers (tokio time, so a test with paused
    /// time passes it at once).
    pub fn slow_down(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// From now on, `chaos` decides a fault for every call, on top of the others.
    pub fn set_chaos(&self, chaos: std::sync::Arc<dyn Chaos>) {
        *self.chaos.lock().unwrap_or_else(|e| e.into_inner()) = Some(chaos);
    }

    fn chaos(&self) -> Option<std::sync::Arc<dyn Chaos>> {
        self.chaos.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every call starts here: it waits out the delay, then fails if refused whole.
    pub async fn enter(&self, operation: &'static str) -> Result<(), PortError> {
        if let Some(chaos) = self.chaos() {
            match chaos.before(operation) {
                Before::Pass => {}
                Before::Slow(by) => tokio::time::sleep(by).await,
                Before::Refuse(message) => return Err(PortError::Refused { operation, message }),
            }
        }
        if !self.strikes(operation) {
            return Ok(());
        }
        let ms = self.delay_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if take_one(&self.refused) {
            return Err(PortError::Refused {
                operation,
                message: "ServiceUnavailable: the call was refused whole (test)".into(),
            });
        }
        Ok(())
    }

    /// A call that took effect ends here: it fails if its answer is to be lost.
    pub fn leave(&self, operation: &'static str) -> Result<(), PortError> {
        let chaos_loses = self.chaos().is_some_and(|c| c.lose_answer(operation));
        if chaos_loses || (self.strikes(operation) && take_one(&self.lost)) {
            return Err(PortError::Unreachable {
                operation,
                message: "the call took effect but its answer was lost (test)".into(),
            });
        }
        Ok(())
    }
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_split_by_count_and_by_total_size() {
        assert_eq!(batch_ranges([10; 23]), [0..10, 10..20, 20..23]);
        let half = MAX_BATCH_BYTES / 2;
        assert_eq!(
            batch_ranges([half, half, 1, half + 1, MAX_BATCH_BYTES + 5, 3]),
            [0..2, 2..4, 4..5, 5..6],
            "a message over the limit goes alone"
        );
        assert!(batch_ranges([]).is_empty());
    }

    #[test]
    fn failed_records_come_back_sooner_first_and_never_later_than_15_minutes() {
        let delays: Vec<u32> = (1..=6).map(retry_later_delay).collect();
        assert_eq!(delays, [15, 60, 240, 900, 900, 900]);
        assert_eq!(retry_later_delay(0), 15);
        assert_eq!(retry_later_delay(u32::MAX), 900);
    }
}
