//! Operators at random moments, outages included: `dlq redrive` of one job or all
//! (the generator's own [`job_generator::dlq::redrive`], over the simulated queues and
//! table), replays with and without `--rerun` (the order written as the generator
//! writes it, then the archive delivered again under the replay's name), two replays
//! at once, and a validation setting tightened between deliveries.

use crate::producer::EventBridge;
use crate::sqs::{QueuePort, Sqs};
use crate::world::World;
use crate::Options;
use async_trait::async_trait;
use job_generator::dlq::{self, Destination, Held, Mailbox, OpsError, Selection};
use jobs_core::messages::{DeadLetter, JobStatus};
use jobs_core::ports::{MessageQueue, OutgoingMessage};
use jobs_core::store::{MemoryStore, OperatorStore, ReplayOrder};
use jobs_core::Timestamp;
use rand::Rng;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the operators did that the checker must know.
#[derive(Debug, Default)]
pub struct Actions {
    /// When the ingester's `MAX_JOB_TIMEOUT_SECONDS` was lowered, if it was.
    pub strict_from: Option<Timestamp>,
}

/// A dead-letter queue as `dlq` sees it, over the simulated SQS: every call goes
/// through the faults of the queue it touches, as the functions' calls do.
struct SimMailbox<'a> {
    sqs: &'a Arc<Sqs>,
    dlq: QueuePort,
}

fn ops_error(operation: &'static str, e: impl std::fmt::Display) -> OpsError {
    OpsError {
        operation,
        message: e.to_string(),
    }
}

impl SimMailbox<'_> {
    /// One call on the DLQ; an answer lost after the call took effect is an error.
    async fn on_dlq<R>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Sqs, &str) -> R,
    ) -> Result<R, OpsError> {
        self.dlq
            .call(operation, || f(self.sqs, self.dlq.queue))
            .await
            .map_err(|(e, _)| ops_error(operation, e))
    }
}

#[async_trait]
impl Mailbox for SimMailbox<'_> {
    async fn receive(&self) -> Result<Vec<Held>, OpsError> {
        let got = self
            .on_dlq("ReceiveMessage", |sqs, q| sqs.receive(q, 10))
            .await?;
        Ok(got
            .into_iter()
            .map(|d| Held {
                message_id: d.message.id.clone(),
                receipt: d.receipt,
                body: d.message.body,
                sent_at_ms: Some(d.message.sent_at.timestamp_millis()),
            })
            .collect())
    }

    async fn release(&self, held: &Held) -> Result<(), OpsError> {
        self.on_dlq("ChangeMessageVisibility", |sqs, q| {
            sqs.change_visibility(q, &held.receipt, 0)
        })
        .await
    }

    async fn delete(&self, held: &Held) -> Result<(), OpsError> {
        self.on_dlq("DeleteMessage", |sqs, q| {
            sqs.delete(q, &held.receipt);
        })
        .await
    }

    async fn send(
        &self,
        to: Destination,
        body: &str,
        attributes: &[(&'static str, String)],
    ) -> Result<(), OpsError> {
        let queue = match to {
            Destination::JobsTodo => "jobs-todo",
            Destination::Ingester => "ingester-queue",
        };
        let message = OutgoingMessage {
            body: body.to_owned(),
            attributes: attributes.to_vec(),
            delay_seconds: 0,
            group: None,
        };
        let port = QueuePort::new(self.sqs, queue);
        match port.send_batch(&[message]).await.pop() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(ops_error("send", e)),
            None => Err(ops_error("send", "no answer")),
        }
    }
}

/// The operators of one schedule; what they did.
pub async fn operate(
    world: &World,
    sqs: &Arc<Sqs>,
    store: &MemoryStore,
    eb: &EventBridge,
    strict: &AtomicBool,
    options: &Options,
) -> Actions {
    let mut actions = Actions::default();
    let window = options.faults_for.as_millis() as u64;
    let count = world.draw(|r| r.random_range(0..=5));
    let mut plan: Vec<(u64, u32)> = (0..count)
        .map(|_| world.draw(|r| (r.random_range(window / 6..window), r.random_range(0..6))))
        .collect();
    plan.sort_unstable();
    let started = tokio::time::Instant::now();
    let mut replays = 0;
    for (at, what) in plan {
        tokio::time::sleep_until(started + Duration::from_millis(at)).await;
        match what {
            0 => {
                redrive(
                    world,
                    sqs,
                    store,
                    Selection {
                        max: usize::MAX,
                        ..Selection::default()
                    },
                )
                .await
            }
            1 => {
                let Some(job_id) = some_letter(world, sqs) else {
                    continue;
                };
                let selection = Selection {
                    job_ids: [job_id].into_iter().collect(),
                    max: usize::MAX,
                };
                redrive(world, sqs, store, selection).await;
            }
            2 | 3 => {
                replays += 1;
                replay(world, store, eb, &format!("replay-{replays}"), what == 3).await;
            }
            4 => {
                replays += 2;
                let (a, b) = (
                    format!("replay-{}", replays - 1),
                    format!("replay-{replays}"),
                );
                tokio::join!(
                    replay(world, store, eb, &a, true),
                    replay(world, store, eb, &b, world.chance(0.5))
                );
            }
            _ => {
                if actions.strict_from.is_none() {
                    world.note(format!(
                        "operator lowers MAX_JOB_TIMEOUT_SECONDS to {}",
                        crate::STRICT_JOB_TIMEOUT
                    ));
                    strict.store(true, Ordering::SeqCst);
                    actions.strict_from = Some(world.now());
                }
            }
        }
    }
    actions
}

/// The job id of a dead letter now in the DLQ, drawn.
fn some_letter(world: &World, sqs: &Sqs) -> Option<String> {
    let ids: Vec<String> = sqs
        .messages("dead-letter-queue")
        .iter()
        .filter_map(|m| serde_json::from_str::<DeadLetter>(&m.body).ok())
        .map(|dl| dl.job_id)
        .collect();
    (!ids.is_empty()).then(|| ids[world.draw(|r| r.random_range(0..ids.len()))].clone())
}

/// `dlq redrive` over both dead-letter queues, as `job-generator dlq redrive` runs it.
async fn redrive(world: &World, sqs: &Arc<Sqs>, store: &MemoryStore, selection: Selection) {
    world.note(format!("operator: dlq redrive {:?}", selection.job_ids));
    for dlq_name in ["dead-letter-queue", "dead-letter-queue.fifo"] {
        let mailbox = SimMailbox {
            sqs,
            dlq: QueuePort::new(sqs, dlq_name),
        };
        match dlq::redrive(&mailbox, store, &selection, false).await {
            Ok(report) => {
                for line in report.lines {
                    world.note(format!("  redrive: {line}"));
                }
            }
            Err(e) => world.note(format!("  redrive of {dlq_name} stopped: {e}")),
        }
    }
}

/// A replay of the whole archive so far under `name`; with `rerun`, the order runs
/// FAILED and REJECTED jobs again (sometimes only some jobs).
async fn replay(world: &World, store: &MemoryStore, eb: &EventBridge, name: &str, rerun: bool) {
    let archive = eb.archive.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let job_ids: Option<BTreeSet<String>> = world.chance(0.3).then(|| {
        archive
            .iter()
            .filter(|_| world.chance(0.3))
            .filter_map(|a| a.event["detail"]["id"].as_str().map(str::to_owned))
            .collect()
    });
    let statuses = if rerun {
        match world.draw(|r| r.random_range(0..3)) {
            0 => vec![JobStatus::Failed],
            1 => vec![JobStatus::Rejected],
            _ => vec![JobStatus::Failed, JobStatus::Rejected],
        }
    } else {
        vec![]
    };
    world.note(format!(
        "operator: replay {name} rerun {statuses:?} jobs {job_ids:?}"
    ));
    if !statuses.is_empty() || job_ids.is_some() {
        let order = ReplayOrder {
            name: name.to_owned(),
            rerun: statuses,
            job_ids,
        };
        match store.record_replay(&order, world.now()).await {
            Ok(true) => {}
            Ok(false) => {
                return world.note(format!("  replay {name}: an order of that name exists"))
            }
            Err(e) => return world.note(format!("  replay {name} not started: {e}")),
        }
    }
    for a in &archive {
        eb.replay(&a.event, name);
    }
}
