//! SQS as AWS runs it, in memory: standard queues deliver at least once (now and then
//! a second time while the first delivery is in flight) in no promised order; FIFO
//! queues deliver a group's messages in order, one in flight per group, and drop a
//! repeated deduplication id for five minutes. Every receive counts; a message
//! received `max_receive` times is moved to the queue's dead-letter queue on its next
//! receive. A receipt handle changes visibility or deletes only while it is valid.

use crate::world::{ServiceChaos, World};
use async_trait::async_trait;
use jobs_core::ports::{Faults, MessageQueue, OutgoingMessage, PortError, Receipt};
use jobs_core::testing::{batch_refusal, fifo_refusal, message_refusal};
use jobs_core::Timestamp;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One message in a queue.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub body: String,
    pub attributes: Vec<(&'static str, String)>,
    pub sent_at: Timestamp,
    pub visible_at: Timestamp,
    pub receives: u32,
    /// The receipt handles of its deliveries still valid.
    pub receipts: Vec<String>,
    pub group: Option<String>,
    pub seq: u64,
}

impl Message {
    fn in_flight(&self, now: Timestamp) -> bool {
        !self.receipts.is_empty() && self.visible_at > now
    }
}

/// One queue's settings and messages.
#[derive(Debug)]
pub struct Queue {
    pub name: &'static str,
    pub fifo: bool,
    pub visibility_secs: i64,
    /// `maxReceiveCount` and the dead-letter queue SQS moves to.
    pub redrive: Option<(u32, &'static str)>,
    pub messages: Vec<Message>,
    dedup: Vec<(String, Timestamp)>,
    /// Every message the queue ever accepted, for the checker (dead letters).
    pub accepted: Vec<Message>,
}

const RETENTION_DAYS: i64 = 14;

impl Queue {
    fn new(
        name: &'static str,
        visibility_secs: i64,
        redrive: Option<(u32, &'static str)>,
    ) -> Queue {
        Queue {
            name,
            fifo: name.ends_with(".fifo"),
            visibility_secs,
            redrive,
            messages: Vec::new(),
            dedup: Vec::new(),
            accepted: Vec::new(),
        }
    }
}

/// Every queue of the pipeline, as `pipeline.json` sets them.
#[derive(Debug)]
pub struct Sqs {
    pub queues: Mutex<BTreeMap<&'static str, Queue>>,
    next: Mutex<u64>,
    pub world: Arc<World>,
}

/// A delivered message, as a Lambda event record or an operator's receive has it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Message,
    pub receipt: String,
}

impl Sqs {
    pub fn new(world: Arc<World>) -> Arc<Sqs> {
        let queues = [
            Queue::new("ingester-queue", 180, Some((5, "dead-letter-queue"))),
            Queue::new("jobs-todo", 5400, Some((5, "dead-letter-queue"))),
            Queue::new("jobs-todo.fifo", 5400, Some((10, "dead-letter-queue.fifo"))),
            Queue::new("dead-letter-queue", 30, None),
            Queue::new("dead-letter-queue.fifo", 30, None),
        ];
        Arc::new(Sqs {
            queues: Mutex::new(queues.into_iter().map(|q| (q.name, q)).collect()),
            next: Mutex::new(0),
            world,
        })
    }

    fn next_id(&self, prefix: &str) -> String {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        *next += 1;
        format!("{prefix}-{:06}", *next)
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<&'static str, Queue>) -> R) -> R {
        f(&mut self.queues.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts a message on `queue`, as an accepted send does; `None` when a FIFO queue
    /// dropped it as a repeat of its deduplication id.
    pub fn enqueue(&self, queue: &str, m: &OutgoingMessage) -> Option<String> {
        let now = self.world.now();
        let id = self.next_id("msg");
        self.with(|qs| {
            let q = qs.get_mut(queue)?;
            if let Some(group) = m.group.as_ref().filter(|_| q.fifo) {
                q.dedup
                    .retain(|(_, at)| now - *at < chrono::TimeDelta::minutes(5));
                if q.dedup.iter().any(|(d, _)| *d == group.deduplication_id) {
                    return None;
                }
                q.dedup.push((group.deduplication_id.clone(), now));
            }
            let seq = q.accepted.len() as u64;
            let message = Message {
                id: id.clone(),
                body: m.body.clone(),
                attributes: m.attributes.clone(),
                sent_at: now,
                visible_at: now + chrono::TimeDelta::seconds(i64::from(m.delay_seconds)),
                receives: 0,
                receipts: Vec::new(),
                group: m.group.as_ref().map(|g| g.group_id.clone()),
                seq,
            };
            q.accepted.push(message.clone());
            q.messages.push(message);
            Some(id)
        })
    }

    /// Receives up to `max` messages, as one `ReceiveMessage`: each made invisible for
    /// the queue's visibility timeout. Messages past `maxReceiveCount` go to the
    /// dead-letter queue instead, and messages past retention are dropped.
    pub fn receive(&self, queue: &str, max: usize) -> Vec<Delivery> {
        let now = self.world.now();
        let world = &self.world;
        let twice = world.rates.redeliver;
        let calm = world.calm();
        let mut moved = Vec::new();
        let got = self.with(|qs| {
            let Some(q) = qs.get_mut(queue) else {
                return Vec::new();
            };
            q.messages
                .retain(|m| now - m.sent_at < chrono::TimeDelta::days(RETENTION_DAYS));
            let mut picked: Vec<usize> = Vec::new();
            if q.fifo {
                let mut blocked: Vec<String> = Vec::new();
                for (i, m) in q.messages.iter().enumerate() {
                    let group = m.group.clone().unwrap_or_default();
                    if blocked.contains(&group) {
                        continue;
                    }
                    blocked.push(group);
                    if !m.in_flight(now) && m.visible_at <= now && picked.len() < max {
                        picked.push(i);
                    }
                }
            } else {
                let mut visible: Vec<usize> = (0..q.messages.len())
                    .filter(|&i| {
                        let m = &q.messages[i];
                        m.visible_at <= now
                            || (!calm && m.in_flight(now) && world.chance(twice / 20.0))
                    })
                    .collect();
                // No order is promised: take them in a drawn order.
                world.draw(|r| {
                    for i in (1..visible.len()).rev() {
                        visible.swap(i, r.random_range(0..=i));
                    }
                });
                visible.truncate(max);
                picked = visible;
                picked.sort_unstable();
            }
            let mut out = Vec::new();
            for &i in picked.iter().rev() {
                let m = &mut q.messages[i];
                if let Some((limit, dlq)) = q.redrive {
                    if m.receives >= limit {
                        let m = q.messages.remove(i);
                        moved.push((dlq, m));
                        continue;
                    }
                }
                m.receives += 1;
                m.visible_at = now + chrono::TimeDelta::seconds(q.visibility_secs);
                let receipt = format!("{}#{}", m.id, m.receives);
                m.receipts.push(receipt.clone());
                out.push(Delivery {
                    message: m.clone(),
                    receipt,
                });
            }
            for (dlq, m) in &moved {
                if let Some(d) = qs.get_mut(dlq) {
                    let mut kept = m.clone();
                    kept.receipts.clear();
                    kept.receives = 0;
                    kept.visible_at = now;
                    d.accepted.push(kept.clone());
                    d.messages.push(kept);
                }
            }
            out.reverse();
            out
        });
        for (dlq, m) in moved {
            self.world
                .note(format!("{queue}: {} moved to {dlq} (max receives)", m.id));
        }
        got
    }

    /// Deletes the message of a receipt, if the receipt is still valid.
    pub fn delete(&self, queue: &str, receipt: &str) -> bool {
        self.with(|qs| {
            let Some(q) = qs.get_mut(queue) else {
                return false;
            };
            let before = q.messages.len();
            q.messages
                .retain(|m| !m.receipts.iter().any(|r| r == receipt));
            q.messages.len() < before
        })
    }

    /// `ChangeMessageVisibility` for a valid receipt of a message in flight.
    pub fn change_visibility(&self, queue: &str, receipt: &str, secs: u32) {
        let now = self.world.now();
        self.with(|qs| {
            if let Some(m) = qs.get_mut(queue).and_then(|q| {
                q.messages
                    .iter_mut()
                    .find(|m| m.receipts.iter().any(|r| r == receipt))
            }) {
                m.visible_at = now + chrono::TimeDelta::seconds(i64::from(secs));
            }
        });
    }

    /// Messages in `queue` now, in flight or not.
    pub fn depth(&self, queue: &str) -> usize {
        self.with(|qs| qs.get(queue).map_or(0, |q| q.messages.len()))
    }

    pub fn messages(&self, queue: &str) -> Vec<Message> {
        self.with(|qs| qs.get(queue).map_or(Vec::new(), |q| q.messages.clone()))
    }

    pub fn accepted(&self, queue: &str) -> Vec<Message> {
        self.with(|qs| qs.get(queue).map_or(Vec::new(), |q| q.accepted.clone()))
    }
}

/// The Lambda event of a batch of deliveries from `queue`, as the event source
/// mapping hands it to the function.
pub fn lambda_event(queue: &str, deliveries: &[Delivery]) -> Value {
    let records: Vec<Value> = deliveries
        .iter()
        .map(|d| {
            let m = &d.message;
            let mut attributes = json!({
                "ApproximateReceiveCount": m.receives.to_string(),
                "SentTimestamp": m.sent_at.timestamp_millis().to_string(),
            });
            if let Some(g) = &m.group {
                attributes["MessageGroupId"] = json!(g);
                attributes["SequenceNumber"] = json!(format!("{:020}", m.seq));
            }
            let message_attributes: serde_json::Map<String, Value> = m
                .attributes
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        json!({"stringValue": v, "dataType": "String"}),
                    )
                })
                .collect();
            json!({
                "messageId": m.id,
                "receiptHandle": d.receipt,
                "body": m.body,
                "attributes": attributes,
                "messageAttributes": message_attributes,
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": format!("arn:aws:sqs:us-east-1:000000000000:{queue}"),
                "awsRegion": "us-east-1",
            })
        })
        .collect();
    json!({ "Records": records })
}

/// One queue as the handlers and operators see it ([`MessageQueue`]): every call goes
/// through the [`Faults`] of its service, decided by the schedule's seed, exactly as
/// the in-memory topic's and table's calls do.
#[derive(Debug, Clone)]
pub struct QueuePort {
    pub sqs: Arc<Sqs>,
    pub queue: &'static str,
    pub faults: Arc<Faults>,
}

impl QueuePort {
    pub fn new(sqs: &Arc<Sqs>, queue: &'static str) -> QueuePort {
        let service = match queue {
            "jobs-todo" | "jobs-todo.fifo" => "sqs:jobs-todo",
            "dead-letter-queue" | "dead-letter-queue.fifo" => "sqs:dead-letter-queue",
            _ => "sqs:ingester-queue",
        };
        let faults = Faults::default();
        faults.set_chaos(Arc::new(ServiceChaos {
            world: Arc::clone(&sqs.world),
            service,
        }));
        QueuePort {
            sqs: Arc::clone(sqs),
            queue,
            faults: Arc::new(faults),
        }
    }

    /// A call of `operation`: its faults, then `f`, whose effect stays even when the
    /// answer is lost.
    pub async fn call<R>(
        &self,
        operation: &'static str,
        f: impl FnOnce() -> R,
    ) -> Result<R, (PortError, Option<R>)> {
        self.faults.enter(operation).await.map_err(|e| (e, None))?;
        let answer = f();
        match self.faults.leave(operation) {
            Ok(()) => Ok(answer),
            Err(e) => Err((e, Some(answer))),
        }
    }
}

#[async_trait]
impl MessageQueue for QueuePort {
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PortError>> {
        const OP: &str = "SendMessageBatch";
        let refuse = |why: String| PortError::Refused {
            operation: OP,
            message: why,
        };
        let fifo = self.queue.ends_with(".fifo");
        let sent = self
            .call(OP, || {
                if let Some(why) = batch_refusal(messages) {
                    return messages.iter().map(|_| Err(refuse(why.clone()))).collect();
                }
                messages
                    .iter()
                    .map(|m| {
                        let why =
                            message_refusal(m).or_else(|| fifo.then(|| fifo_refusal(m)).flatten());
                        if let Some(why) = why {
                            return Err(refuse(why));
                        }
                        let id = self.sqs.enqueue(self.queue, m);
                        self.sqs.world.note(format!(
                            "{} accepted {}{}",
                            self.queue,
                            id.as_deref().unwrap_or("(deduplicated)"),
                            describe(&m.body)
                        ));
                        Ok(())
                    })
                    .collect::<Vec<Result<(), PortError>>>()
            })
            .await;
        match sent {
            Ok(results) => results,
            // What was stored stays stored: the stage, not knowing, stores such a
            // letter again (window 6), which the checker tells from a repeat.
            Err((e, _)) => messages.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    fn name(&self) -> &str {
        self.queue
    }

    async fn retry_later(&self, receipts: &[Receipt]) -> Result<(), PortError> {
        self.call("ChangeMessageVisibilityBatch", || {
            for r in receipts {
                self.sqs
                    .change_visibility(self.queue, &r.receipt_handle, r.delay_seconds);
            }
        })
        .await
        .map_err(|(e, _)| e)
    }
}

/// A short description of a message body for the trace: its job id and status.
pub fn describe(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return String::new();
    };
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let id = field("job_id")
        .or_else(|| {
            v.pointer("/detail/id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .or_else(|| field("id"))
        .unwrap_or_default();
    let status = field("status").unwrap_or_default();
    let attempt = v
        .get("attempt")
        .or_else(|| v.get("attempts"))
        .and_then(Value::as_u64)
        .map(|a| format!(" attempt {a}"))
        .unwrap_or_default();
    format!(" [{id} {status}{attempt}]")
}
