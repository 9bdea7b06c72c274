//! Replay orders and reruns on DynamoDB ([`crate::store::replay`]).
//!
//! An order is the item `replay#<name>`; a replay's mark on a job is the item
//! `replay#<name>#<job_id>`, one per job whatever the stage. A replay name has no `#`,
//! so neither key can be another's, nor a job record's (`<stage>#<job_id>`). Both
//! expire with the records.

use super::{
    expires_at, is_condition_failure, key, n, reopen_values, s, DynamoStore, Item, REOPEN,
    REOPEN_IF_SEEN,
};
use crate::messages::Stage;
use crate::ports::PortError;
use crate::store::replay::{
    decide_rerun, ReplayOrder, Replays, Rerun, RerunMark, RerunStep, Rerunning,
};
use crate::store::JobState;
use crate::Timestamp;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

fn order_key(name: &str) -> String {
    format!("replay#{name}")
}

fn mark_key(replay: &str, job_id: &str) -> String {
    format!("replay#{replay}#{job_id}")
}

impl DynamoStore {
    pub(super) async fn get_item(&self, pk: String) -> Result<Option<Item>, PortError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| PortError::from_sdk("GetItem", e))?;
        Ok(out.item)
    }

    /// Writes an order, only if none of that name exists: `false` if one does.
    pub(super) async fn put_order(
        &self,
        order: &ReplayOrder,
        now: Timestamp,
    ) -> Result<bool, PortError> {
        let text = serde_json::to_string(order).unwrap_or_default();
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(order_key(&order.name)))
            .item("order", s(text))
            .item("expires_at", n(expires_at(now)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(PortError::from_sdk("PutItem", e)),
        }
    }

    async fn mark(&self, rerun: &Rerun<'_>) -> Result<Option<RerunMark>, PortError> {
        let item = self.get_item(mark_key(rerun.replay, rerun.job_id)).await?;
        Ok(item.as_ref().map(mark_of))
    }

    /// The mark and the reopening in one transaction: both or neither. `false` when a
    /// condition failed (a mark exists, or the record changed since it was read).
    async fn reopen_marked(
        &self,
        rerun: &Rerun<'_>,
        seen: &JobState,
        mark: &RerunMark,
        now: Timestamp,
    ) -> Result<bool, PortError> {
        const OP: &str = "TransactWriteItems";
        let errors = serde_json::to_string(&mark.errors).unwrap_or_else(|_| "[]".into());
        let put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(mark_key(rerun.replay, rerun.job_id)))
            .item("stage", s(mark.stage.as_str()))
            .item("holder", s(&mark.holder))
            .item("below", n(mark.below))
            .item("errors", s(errors))
            .item("expires_at", n(expires_at(now)))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| refused(OP, &e))?;
        let mut values = reopen_values(mark.below, &mark.holder, seen, now);
        values.insert(":t".into(), AttributeValue::Bool(true));
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(key(rerun.stage, rerun.job_id)))
            .update_expression(REOPEN)
            // Only an end whose notification went out is taken back.
            .condition_expression(format!("{REOPEN_IF_SEEN} AND announced = :t"))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(|e| refused(OP, &e))?;
        let sent = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(TransactWriteItem::builder().update(update).build())
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_transaction_canceled_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(PortError::from_sdk(OP, e)),
        }
    }
}

fn refused(operation: &'static str, e: &impl std::fmt::Display) -> PortError {
    PortError::Refused {
        operation,
        message: e.to_string(),
    }
}

/// A mark as written; one whose stage cannot be read names the processor's, whose
/// answer ([`crate::store::replay`]) sends no copy on that it cannot account for.
fn mark_of(item: &Item) -> RerunMark {
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok());
    RerunMark {
        stage: text("stage")
            .and_then(|s| Stage::parse(s))
            .unwrap_or(Stage::Processor),
        holder: text("holder").cloned().unwrap_or_default(),
        below: item
            .get("below")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        errors: text("errors")
            .and_then(|e| serde_json::from_str(e).ok())
            .unwrap_or_default(),
    }
}

#[async_trait]
impl Replays for DynamoStore {
    async fn replay_order(&self, name: &str) -> Result<Option<ReplayOrder>, PortError> {
        let Some(item) = self.get_item(order_key(name)).await? else {
            return Ok(None);
        };
        let text = item.get("order").and_then(|v| v.as_s().ok());
        match text.map(|t| serde_json::from_str(t)) {
            Some(Ok(order)) => Ok(Some(order)),
            _ => Err(PortError::Refused {
                operation: "GetItem",
                message: format!("the order of replay {name} cannot be read"),
            }),
        }
    }

    async fn rerun(&self, rerun: &Rerun<'_>, now: Timestamp) -> Result<Rerunning, PortError> {
        // A transaction refused because the record moved on is read again and
        // decided anew; three rounds are plenty for a record only reruns and the
        // stage's own retries write.
        for _ in 0..3 {
            let mark = self.mark(rerun).await?;
            let current = self.read(rerun.job_id, rerun.stage).await?;
            match decide_rerun(current.as_ref(), mark.as_ref(), rerun) {
                RerunStep::Answer(answer) => return Ok(answer),
                RerunStep::Reopen { seen, mark } => {
                    if self.reopen_marked(rerun, &seen, &mark, now).await? {
                        return Ok(Rerunning::Rerun {
                            below: mark.below,
                            errors: mark.errors,
                        });
                    }
                }
            }
        }
        Err(PortError::Refused {
            operation: "TransactWriteItems",
            message: format!(
                "job {} kept changing while replay {} reopened it; try again",
                rerun.job_id, rerun.replay
            ),
        })
    }
}
