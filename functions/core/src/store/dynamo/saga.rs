//! Sagas on DynamoDB ([`crate::store::saga`]).
//!
//! A saga's log is the item `saga#<job_id>` (the log as JSON, and its version); a
//! step's effect is the item `effect#<job_id>#<run>#<step>`, which stands in for the
//! service the step acts on. A job id has no `#` at its start and a stage name is
//! neither `saga` nor `effect`, so neither key can be a job record's. Both expire with
//! the records.
//!
//! Each effect request is one `UpdateItem` that counts itself (`calls`,
//! `undo_calls`) and keeps the first time it took effect (`if_not_exists`), so the
//! same request twice changes nothing but its count; a step's request is refused,
//! by its condition, once the key was compensated.

use super::{expires_at, is_condition_failure, n, s, DynamoStore, Item};
use crate::ports::PortError;
use crate::store::saga::{epoch_ns, undo_answer, Applied, Effect, SagaLog, Sagas, Undo, Versioned};
use crate::Timestamp;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;

fn log_key(job_id: &str) -> String {
    format!("saga#{job_id}")
}

/// The step's request: in effect from the first, counted each time; refused after
/// its compensation.
pub(crate) const APPLY: &str = "SET #action = :action, #step = :step, \
     #attempt = if_not_exists(#attempt, :attempt), \
     #applied_ns = if_not_exists(#applied_ns, :ns), #expires_at = :expires \
     ADD #calls :one";
const APPLY_IF: &str = "attribute_not_exists(#compensated_ns)";

/// The compensation's request: undone from the first, counted each time; on a key
/// never applied it is the tombstone that refuses the step later.
pub(crate) const COMPENSATE: &str = "SET #compensation = :compensation, \
     #compensated_ns = if_not_exists(#compensated_ns, :ns), #expires_at = :expires \
     ADD #undo_calls :one";

/// The attribute names [`APPLY`] and its condition use.
const APPLY_NAMES: [&str; 7] = [
    "action",
    "step",
    "attempt",
    "applied_ns",
    "calls",
    "compensated_ns",
    "expires_at",
];

/// The attribute names [`COMPENSATE`] uses.
const COMPENSATE_NAMES: [&str; 4] = ["compensation", "compensated_ns", "undo_calls", "expires_at"];

fn number(item: &Item, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

impl DynamoStore {
    /// An `UpdateItem` of the effect's item with `expression` and `values`, answering
    /// the item as it is after.
    async fn update_effect(
        &self,
        effect: &Effect<'_>,
        (expression, names): (&str, &[&str]),
        condition: Option<&str>,
        values: Vec<(&str, aws_sdk_dynamodb::types::AttributeValue)>,
    ) -> Result<Result<Item, ()>, PortError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(effect.key()))
            .update_expression(expression)
            .set_condition_expression(condition.map(str::to_owned))
            .return_values(ReturnValue::AllNew);
        // Only the names an expression uses may be given: each expression's own list.
        for name in names {
            update = update.expression_attribute_names(format!("#{name}"), *name);
        }
        for (name, value) in values {
            update = update.expression_attribute_values(name, value);
        }
        match update.send().await {
            Ok(out) => Ok(Ok(out.attributes.unwrap_or_default())),
            Err(e) if is_condition_failure(&e) => Ok(Err(())),
            Err(e) => Err(PortError::from_sdk("UpdateItem", e)),
        }
    }
}

#[async_trait]
impl Sagas for DynamoStore {
    async fn saga_log(&self, job_id: &str) -> Result<Option<Versioned>, PortError> {
        let Some(item) = self.get_item(log_key(job_id)).await? else {
            return Ok(None);
        };
        let log = item.get("log").and_then(|v| v.as_s().ok());
        let version = number(&item, "version").and_then(|v| u64::try_from(v).ok());
        match (log.map(|t| serde_json::from_str::<SagaLog>(t)), version) {
            (Some(Ok(log)), Some(version)) => Ok(Some(Versioned { log, version })),
            _ => Err(PortError::Refused {
                operation: "GetItem",
                message: format!("the saga log of job {job_id} cannot be read"),
            }),
        }
    }

    async fn save_saga_log(
        &self,
        job_id: &str,
        log: &SagaLog,
        version: u64,
        now: Timestamp,
    ) -> Result<bool, PortError> {
        let text = serde_json::to_string(log).unwrap_or_default();
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(log_key(job_id)))
            .item("log", s(text))
            .item("version", n(version + 1))
            .item("expires_at", n(expires_at(now)));
        let put = if version == 0 {
            put.condition_expression("attribute_not_exists(pk)")
        } else {
            put.condition_expression("#version = :read")
                .expression_attribute_names("#version", "version")
                .expression_attribute_values(":read", n(version))
        };
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(PortError::from_sdk("PutItem", e)),
        }
    }

    async fn apply(&self, effect: &Effect<'_>, now: Timestamp) -> Result<Applied, PortError> {
        let values = vec![
            (":action", s(effect.action)),
            (":step", n(effect.step)),
            (":attempt", n(effect.attempt)),
            (":ns", n(epoch_ns(now))),
            (":expires", n(expires_at(now))),
            (":one", n(1)),
        ];
        let after = self
            .update_effect(effect, (APPLY, &APPLY_NAMES), Some(APPLY_IF), values)
            .await?;
        Ok(match after {
            Err(()) => Applied::Refused,
            Ok(item) if number(&item, "calls") == Some(1) => Applied::Now,
            Ok(_) => Applied::Already,
        })
    }

    async fn compensate(
        &self,
        effect: &Effect<'_>,
        compensation: &str,
        now: Timestamp,
    ) -> Result<Undo, PortError> {
        let values = vec![
            (":compensation", s(compensation)),
            (":ns", n(epoch_ns(now))),
            (":expires", n(expires_at(now))),
            (":one", n(1)),
        ];
        let item = self
            .update_effect(effect, (COMPENSATE, &COMPENSATE_NAMES), None, values)
            .await?
            .unwrap_or_default();
        let calls = number(&item, "undo_calls").and_then(|c| u32::try_from(c).ok());
        Ok(undo_answer(
            item.contains_key("applied_ns"),
            calls.unwrap_or(1),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn placeholders(expressions: &[&str]) -> BTreeSet<String> {
        expressions
            .iter()
            .flat_map(|e| e.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '#')))
            .filter_map(|w| w.strip_prefix('#'))
            .map(str::to_owned)
            .collect()
    }

    /// DynamoDB refuses a request naming an attribute its expressions do not use, and
    /// one using a name it does not give.
    #[test]
    fn each_expression_is_given_exactly_the_names_it_uses() {
        let given = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
        assert_eq!(placeholders(&[APPLY, APPLY_IF]), given(&APPLY_NAMES));
        assert_eq!(placeholders(&[COMPENSATE]), given(&COMPENSATE_NAMES));
    }
}
