//! The job state table on DynamoDB (`jobs`).
//!
//! One item per stage and job, keyed `pk = "<stage>#<job_id>"`. A claim is a conditional
//! `PutItem` that succeeds only for a new job, an expired lease, or the next attempt of a
//! job waiting for a retry, or this very claim sent again: the item holds the claim's
//! `claim_token` ([`crate::store::Claim::token`], unique per delivery), so the SDK's
//! retry of a claim whose answer was lost succeeds instead of finding the job held by
//! itself (an item written before tokens has none and behaves as before). When the
//! condition fails, the current item is read back and judged by
//! [`crate::store::decide`], the same rules the in-memory store follows.
//! `expires_at` (epoch seconds) is the table's TTL attribute.
//!
//! The writes of several jobs go together as PartiQL statements in one
//! `BatchExecuteStatement` (each statement billed like its single-item call): claims
//! as `INSERT`s, which only a new job passes (a job already in the table is then
//! claimed on its own, under the full rules), finishes and announcements as
//! conditional `UPDATE`s.

mod replay;
mod saga;

use crate::messages::{JobStatus, Stage};
use crate::ports::PortError;
use crate::store::outbox::{self, Outbox, Stranded, Take};
use crate::store::{
    after_refused_take, decide, decide_reopen, decide_stop, end_id, lost_claim, may_stop,
    resume_take, same_claim, stop_record, stop_take, Claim, ClaimOutcome, Finish, Forestalled,
    JobState, JobStore, Mark, Marked, OperatorStore, Progress, Release, Reopen, Reopened, Stop,
    RETENTION, STOP_ATTEMPT,
};
use crate::Timestamp;
use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeValue, BatchStatementErrorCodeEnum, BatchStatementRequest, BatchStatementResponse,
};
use aws_sdk_dynamodb::Client;
use chrono::{TimeZone, Utc};
use futures_util::future::join_all;
use serde_json::Value;
use std::collections::HashMap;

/// The table, addressed by name.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    /// The sparse index of unannounced ends ([`crate::store::outbox`]); only the
    /// relay reads it.
    outbox_index: Option<String>,
}

type Item = HashMap<String, AttributeValue>;

const BATCH_EXECUTE: &str = "BatchExecuteStatement";

/// One statement's answer within a `BatchExecuteStatement`: done, or refused with
/// its error code (which tells a failed condition from anything else).
fn statement_answer(r: &BatchStatementResponse) -> Statement {
    match r.error() {
        None => Statement::Done,
        Some(e) => {
            let code = e
                .code()
                .cloned()
                .unwrap_or_else(|| BatchStatementErrorCodeEnum::from("Unknown"));
            let message = format!(
                "{}: {}",
                code.as_str(),
                e.message().unwrap_or("no reason given")
            );
            Statement::Refused(
                code,
                PortError::Refused {
                    operation: BATCH_EXECUTE,
                    message,
                },
            )
        }
    }
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            outbox_index: None,
        }
    }

    /// The same table, with the outbox index the relay queries.
    pub fn with_outbox_index(self, index: impl Into<String>) -> Self {
        Self {
            outbox_index: Some(index.into()),
            ..self
        }
    }

    /// Runs PartiQL write statements, 25 to a `BatchExecuteStatement`, all batches at
    /// once; one result per statement, in order.
    async fn execute_all(&self, statements: Vec<(String, Vec<AttributeValue>)>) -> Vec<Statement> {
        let chunks = statements
            .chunks(MAX_STATEMENTS)
            .map(|chunk| self.execute_batch(chunk));
        join_all(chunks).await.into_iter().flatten().collect()
    }

    /// One `BatchExecuteStatement` of up to [`MAX_STATEMENTS`]: each statement's own
    /// answer, or the call's failure for every one of them.
    async fn execute_batch(&self, chunk: &[(String, Vec<AttributeValue>)]) -> Vec<Statement> {
        let every = |e: PortError| chunk.iter().map(|_| Statement::Failed(e.clone())).collect();
        let requests = chunk
            .iter()
            .map(|(sql, params)| {
                BatchStatementRequest::builder()
                    .statement(sql)
                    .set_parameters(Some(params.clone()))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>();
        let requests = match requests {
            Ok(r) => r,
            Err(e) => {
                return every(PortError::Refused {
                    operation: BATCH_EXECUTE,
                    message: e.to_string(),
                })
            }
        };
        let sent = self
            .client
            .batch_execute_statement()
            .set_statements(Some(requests))
            .send()
            .await;
        match sent {
            Ok(out) if out.responses().len() == chunk.len() => {
                out.responses().iter().map(statement_answer).collect()
            }
            Ok(out) => every(PortError::Refused {
                operation: BATCH_EXECUTE,
                message: format!(
                    "{} answers for {} statements",
                    out.responses().len(),
                    chunk.len()
                ),
            }),
            Err(e) => every(PortError::from_sdk(BATCH_EXECUTE, e)),
        }
    }

    /// Why the table refused `claim`'s conditional write: the current item, judged by
    /// the same rules the in-memory store follows.
    async fn judge_refused(
        &self,
        claim: &Claim<'_>,
        now: Timestamp,
    ) -> Result<ClaimOutcome, PortError> {
        let current = self.read(claim.job_id, claim.stage).await?;
        let outcome = match decide(current.as_ref(), claim, now) {
            // This claim's own write (a retry racing its first send).
            ClaimOutcome::Claimed if current.as_ref().is_some_and(|c| same_claim(c, claim)) => {
                ClaimOutcome::Claimed
            }
            // The item changed between the write and the read: let SQS retry.
            ClaimOutcome::Claimed => ClaimOutcome::Busy { until: now },
            other => other,
        };
        // An end to announce is taken over first, so the relay cannot announce it too.
        let Some(take) = resume_take(current.as_ref(), claim, &outcome) else {
            return Ok(outcome);
        };
        if self.take(&take, now).await?.is_some() {
            return Ok(outcome);
        }
        let current = self.read(claim.job_id, claim.stage).await?;
        Ok(after_refused_take(current.as_ref(), claim, now))
    }

    async fn read(&self, job_id: &str, stage: Stage) -> Result<Option<JobState>, PortError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(key(stage, job_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| PortError::from_sdk("GetItem", e))?;
        Ok(out.item.as_ref().and_then(from_item))
    }
}

/// The item a claim writes, attribute by attribute.
fn claim_fields(claim: &Claim<'_>, now: Timestamp) -> Vec<(&'static str, AttributeValue)> {
    let mut fields = vec![
        ("pk", s(key(claim.stage, claim.job_id))),
        ("job_id", s(claim.job_id)),
        ("stage", s(claim.stage.as_str())),
        ("progress", s(Progress::InProgress.as_str())),
        ("fingerprint", s(claim.fingerprint)),
        ("attempt", n(claim.attempt)),
        ("lease_until", n(claim.lease_until.timestamp_millis())),
        ("holder", s(claim.holder)),
        ("claim_token", s(claim.token)),
        ("announced", AttributeValue::Bool(false)),
        ("updated_ms", n(now.timestamp_millis())),
        ("expires_at", n(expires_at(now))),
    ];
    if let Some(history) = claim.history {
        fields.push(("detail", s(history.to_string())));
    }
    fields
}

/// `expires_at` (the TTL, epoch seconds) of a record changed at `now`: every write
/// that changes a record refreshes it, so records go [`RETENTION`] after their last change.
fn expires_at(now: Timestamp) -> i64 {
    (now + RETENTION).timestamp()
}

/// The most statements one `BatchExecuteStatement` takes.
const MAX_STATEMENTS: usize = 25;

/// How one statement of a batch went.
enum Statement {
    Done,
    /// Refused by the table, with the statement's own error code.
    Refused(BatchStatementErrorCodeEnum, PortError),
    /// The batch did not reach the table, or the answer could not be matched.
    Failed(PortError),
}

/// Splits `keys` into the first occurrence of each key and the repeats: a batch names
/// each item once, and a repeat is then decided against what the first one wrote.
fn firsts_and_repeats(keys: &[String]) -> (Vec<usize>, Vec<usize>) {
    let mut seen = std::collections::HashSet::new();
    (0..keys.len()).partition(|&i| seen.insert(&keys[i]))
}

fn key(stage: Stage, job_id: &str) -> String {
    format!("{}#{job_id}", stage.as_str())
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn is_condition_failure<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error()
        .and_then(ProvideErrorMetadata::code)
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

/// The item of `state`, as [`from_item`] reads it back.
fn to_item(state: &JobState) -> Item {
    let mut item: Item = [
        ("pk", s(key(state.stage, &state.job_id))),
        ("job_id", s(&state.job_id)),
        ("stage", s(state.stage.as_str())),
        ("progress", s(state.progress.as_str())),
        ("fingerprint", s(&state.fingerprint)),
        ("attempt", n(state.attempt)),
        ("lease_until", n(state.lease_until.timestamp_millis())),
        ("holder", s(&state.holder)),
        ("claim_token", s(&state.token)),
        ("announced", AttributeValue::Bool(state.announced)),
        ("updated_ms", n(state.updated_at.timestamp_millis())),
        ("expires_at", n(state.expires_at.timestamp())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(detail) = &state.detail {
        item.insert("detail".to_owned(), s(detail.to_string()));
    }
    if let Some(end) = is_end(state.progress)
        .then(|| end_id(state.detail.as_ref()))
        .flatten()
    {
        item.insert("end_id".to_owned(), s(end));
    }
    if state.letter_stored {
        item.insert("letter_stored".to_owned(), AttributeValue::Bool(true));
    }
    if is_end(state.progress) && !state.announced {
        item.insert("outbox".to_owned(), s(outbox_shard(&state.job_id)));
    }
    item
}

/// Whether a record at `progress` holds an end (and so, until announced, an outbox entry).
fn is_end(progress: Progress) -> bool {
    matches!(progress, Progress::Done(Some(_)))
}

/// The value of a job's `outbox` attribute: its shard of the index.
fn outbox_shard(job_id: &str) -> String {
    outbox::shard(job_id).to_string()
}

fn from_item(item: &Item) -> Option<JobState> {
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok());
    let number = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
    };
    let flag = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false)
    };
    let stage = Stage::parse(text("stage")?)?;
    Some(JobState {
        job_id: text("job_id")?.clone(),
        stage,
        progress: Progress::parse(text("progress")?)?,
        fingerprint: text("fingerprint")?.clone(),
        attempt: u32::try_from(number("attempt")?).ok()?,
        lease_until: Utc.timestamp_millis_opt(number("lease_until")?).single()?,
        holder: text("holder").cloned().unwrap_or_default(),
        // Written before claims carried a token: it matches no claim.
        token: text("claim_token").cloned().unwrap_or_default(),
        announced: flag("announced"),
        letter_stored: flag("letter_stored"),
        detail: text("detail").and_then(|d| serde_json::from_str(d).ok()),
        updated_at: Utc.timestamp_millis_opt(number("updated_ms")?).single()?,
        expires_at: Utc.timestamp_opt(number("expires_at")?, 0).single()?,
    })
}

#[async_trait]
impl JobStore for DynamoStore {
    async fn claim(&self, claim: &Claim<'_>, now: Timestamp) -> Result<ClaimOutcome, PortError> {
        let item: Item = claim_fields(claim, now)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            // The last line is this very claim sent again (the SDK retries a call whose
            // answer was lost): the item holds its own token, so the retry succeeds
            // with the same values. An item without a token (written before tokens)
            // never matches it.
            .condition_expression(
                "attribute_not_exists(pk) OR ((fingerprint = :fp OR fingerprint = :legacy_fp) AND \
                 ((progress = :in_progress AND lease_until <= :now) OR \
                  (progress = :retrying AND attempt < :attempt) OR \
                  (progress = :in_progress AND attempt = :attempt AND holder = :holder AND \
                   claim_token = :token))) OR \
                 (progress = :rejected AND attempt = :stop AND announced = :t AND \
                  fingerprint <> :fp AND fingerprint <> :legacy_fp)",
            )
            // An announced rejection of other content does not own the id
            // (`store::decide`).
            .expression_attribute_values(":rejected", s(JobStatus::Rejected.as_str()))
            .expression_attribute_values(":stop", n(STOP_ATTEMPT))
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":holder", s(claim.holder))
            // No token (none given) must match no item: no token is ever `-`.
            .expression_attribute_values(
                ":token",
                s(if claim.token.is_empty() {
                    "-"
                } else {
                    claim.token
                }),
            )
            .expression_attribute_values(":fp", s(claim.fingerprint))
            // A record written before the fingerprint changed format is taken over
            // like any other once its lease ended (see `store::is_legacy`).
            .expression_attribute_values(
                ":legacy_fp",
                s(claim.legacy_fingerprint.unwrap_or(claim.fingerprint)),
            )
            .expression_attribute_values(":in_progress", s(Progress::InProgress.as_str()))
            .expression_attribute_values(":retrying", s(Progress::Retrying.as_str()))
            .expression_attribute_values(":now", n(now.timestamp_millis()))
            .expression_attribute_values(":attempt", n(claim.attempt))
            .send()
            .await;
        match put {
            Ok(_) => Ok(ClaimOutcome::Claimed),
            Err(e) if is_condition_failure(&e) => self.judge_refused(claim, now).await,
            Err(e) => Err(PortError::from_sdk("PutItem", e)),
        }
    }

    /// New jobs are written by one `INSERT` each, batched; a job already in the table
    /// (an `INSERT` refused as `DuplicateItem`) is then claimed on its own, under the
    /// full rules.
    async fn claim_all(
        &self,
        claims: &[Claim<'_>],
        now: Timestamp,
    ) -> Vec<Result<ClaimOutcome, PortError>> {
        let keys: Vec<String> = claims.iter().map(|c| key(c.stage, c.job_id)).collect();
        let (firsts, repeats) = firsts_and_repeats(&keys);
        let statements = firsts
            .iter()
            .map(|&i| {
                let fields = claim_fields(&claims[i], now);
                let names: Vec<String> = fields.iter().map(|(k, _)| format!("'{k}': ?")).collect();
                let sql = format!(
                    "INSERT INTO \"{}\" VALUE {{{}}}",
                    self.table,
                    names.join(", ")
                );
                (sql, fields.into_iter().map(|(_, v)| v).collect())
            })
            .collect();
        let inserted = self.execute_all(statements).await;
        let mut answers: Vec<Option<Result<ClaimOutcome, PortError>>> =
            claims.iter().map(|_| None).collect();
        let mut one_by_one = repeats;
        for (&i, result) in firsts.iter().zip(inserted) {
            match result {
                Statement::Done => answers[i] = Some(Ok(ClaimOutcome::Claimed)),
                Statement::Refused(BatchStatementErrorCodeEnum::DuplicateItem, _) => {
                    one_by_one.push(i)
                }
                Statement::Refused(_, e) | Statement::Failed(e) => answers[i] = Some(Err(e)),
            }
        }
        one_by_one.sort_unstable();
        for i in one_by_one {
            answers[i] = Some(self.claim(&claims[i], now).await);
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(lost_claim("claim", "?"))))
            .collect()
    }

    async fn finish_all(&self, finishes: &[Finish]) -> Vec<Result<(), PortError>> {
        let keys: Vec<String> = finishes.iter().map(|f| key(f.stage, &f.job_id)).collect();
        // A repeat of a job in the same batch cannot hold it too: it stays a lost claim.
        let (firsts, _) = firsts_and_repeats(&keys);
        // An end enters the outbox index, named by its id for the marks; a hand-over to
        // the next attempt does not.
        let sql = |end: bool| {
            format!(
                "UPDATE \"{}\" SET \"progress\" = ? SET \"detail\" = ? SET \"updated_ms\" = ? \
                 SET \"expires_at\" = ?{} WHERE \"pk\" = ? AND \"attempt\" = ? AND \"progress\" = ?",
                self.table,
                if end { " SET \"outbox\" = ? SET \"end_id\" = ?" } else { "" }
            )
        };
        let statements = firsts
            .iter()
            .map(|&i| {
                let f = &finishes[i];
                let detail = f
                    .detail
                    .as_ref()
                    .map_or_else(|| "null".to_owned(), Value::to_string);
                let end = is_end(f.progress);
                let mut params = vec![
                    s(f.progress.as_str()),
                    s(detail),
                    n(f.now.timestamp_millis()),
                    n(expires_at(f.now)),
                ];
                if end {
                    params.push(s(outbox_shard(&f.job_id)));
                    params.push(s(end_id(f.detail.as_ref()).unwrap_or_default()));
                }
                params.extend([
                    s(keys[i].clone()),
                    n(f.attempt),
                    s(Progress::InProgress.as_str()),
                ]);
                (sql(end), params)
            })
            .collect();
        let updated = self.execute_all(statements).await;
        let mut results: Vec<Result<(), PortError>> = finishes
            .iter()
            .map(|f| Err(lost_claim("finish", &f.job_id)))
            .collect();
        for (&i, result) in firsts.iter().zip(updated) {
            results[i] = match result {
                Statement::Done => Ok(()),
                Statement::Refused(BatchStatementErrorCodeEnum::ConditionalCheckFailed, _) => {
                    Err(lost_claim("UpdateItem", &finishes[i].job_id))
                }
                Statement::Refused(_, e) | Statement::Failed(e) => Err(e),
            };
        }
        results
    }

    /// One PartiQL `UPDATE` per mark, on the end it names (`end_id`). A statement
    /// whose condition failed is marked again one by one ([`JobStore::mark`]): the
    /// record may be one written before ends had ids, or its end may be over.
    async fn mark_all(&self, marks: &[Mark], now: Timestamp) -> Vec<Result<(), PortError>> {
        let keys: Vec<String> = marks.iter().map(|m| key(m.stage, &m.job_id)).collect();
        let (firsts, _) = firsts_and_repeats(&keys);
        let statements = firsts
            .iter()
            .map(|&i| {
                let mut params = vec![
                    AttributeValue::Bool(true),
                    n(now.timestamp_millis()),
                    n(expires_at(now)),
                    s(keys[i].clone()),
                    s(&marks[i].end),
                ];
                params.extend(ENDS.map(|status| s(status.as_str())));
                (self.mark_statement(marks[i].what), params)
            })
            .collect();
        let marked = self.execute_all(statements).await;
        let mut results: Vec<Result<(), PortError>> = marks.iter().map(|_| Ok(())).collect();
        let mut again = Vec::new();
        for (&i, result) in firsts.iter().zip(marked) {
            match result {
                Statement::Done => {}
                Statement::Refused(BatchStatementErrorCodeEnum::ConditionalCheckFailed, _) => {
                    again.push(i);
                }
                Statement::Refused(_, e) | Statement::Failed(e) => results[i] = Err(e),
            }
        }
        let singles = join_all(again.iter().map(|&i| self.mark(&marks[i], now))).await;
        for (i, result) in again.into_iter().zip(singles) {
            results[i] = result;
        }
        // A repeat in the batch was marked by its first; a second mark of another kind
        // on the same end goes on its own.
        let (_, repeats) = firsts_and_repeats(&keys);
        for i in repeats {
            results[i] = self.mark(&marks[i], now).await;
        }
        results
    }

    async fn finish(&self, finish: &Finish) -> Result<(), PortError> {
        let Finish {
            ref job_id,
            stage,
            attempt,
            progress,
            ref detail,
            now,
        } = *finish;
        let end = end_id(detail.as_ref()).unwrap_or_default();
        let detail = detail
            .as_ref()
            .map_or_else(|| "null".to_owned(), Value::to_string);
        // An end enters the outbox index, named by its id for the marks; a hand-over to
        // the next attempt does not.
        let (expression, shard) = if is_end(progress) {
            (
                "SET progress = :p, detail = :d, updated_ms = :u, expires_at = :x, outbox = :o, end_id = :e",
                Some(HashMap::from([
                    (":o".to_owned(), s(outbox_shard(job_id))),
                    (":e".to_owned(), s(end)),
                ])),
            )
        } else {
            (
                "SET progress = :p, detail = :d, updated_ms = :u, expires_at = :x",
                None,
            )
        };
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(key(stage, job_id)))
            .update_expression(expression)
            .set_expression_attribute_values(shard)
            .condition_expression("attempt = :attempt AND progress = :in_progress")
            .expression_attribute_values(":p", s(progress.as_str()))
            .expression_attribute_values(":d", s(detail))
            .expression_attribute_values(":u", n(now.timestamp_millis()))
            .expression_attribute_values(":x", n(expires_at(now)))
            .expression_attribute_values(":attempt", n(attempt))
            .expression_attribute_values(":in_progress", s(Progress::InProgress.as_str()))
            .send()
            .await;
        match update {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Err(lost_claim("UpdateItem", job_id)),
            Err(e) => Err(PortError::from_sdk("UpdateItem", e)),
        }
    }

    async fn mark(&self, mark: &Mark, now: Timestamp) -> Result<(), PortError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(key(mark.stage, &mark.job_id)))
            .update_expression(mark_expression(mark.what))
            .condition_expression(MARK_IF_END)
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":u", n(now.timestamp_millis()))
            .expression_attribute_values(":x", n(expires_at(now)))
            .expression_attribute_values(":end", s(&mark.end))
            .expression_attribute_values(":c", s(ENDS[0].as_str()))
            .expression_attribute_values(":fl", s(ENDS[1].as_str()))
            .expression_attribute_values(":r", s(ENDS[2].as_str()))
            .send()
            .await;
        match update {
            // The record no longer holds the mark's end: nothing of it is left to mark.
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(PortError::from_sdk("UpdateItem", e)),
        }
    }

    async fn release(&self, release: &Release<'_>, now: Timestamp) -> Result<(), PortError> {
        let Release {
            job_id,
            stage,
            attempt,
            holder,
            token,
        } = *release;
        let mut condition =
            "progress = :in_progress AND attempt = :attempt AND holder = :holder".to_owned();
        if !token.is_empty() {
            condition.push_str(" AND claim_token = :token");
        }
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(key(stage, job_id)))
            .update_expression("SET lease_until = :expired, updated_ms = :now, expires_at = :x")
            .condition_expression(condition)
            .set_expression_attribute_values(
                (!token.is_empty()).then(|| HashMap::from([(":token".to_owned(), s(token))])),
            )
            .expression_attribute_values(":expired", n(0))
            .expression_attribute_values(":now", n(now.timestamp_millis()))
            .expression_attribute_values(":x", n(expires_at(now)))
            .expression_attribute_values(":in_progress", s(Progress::InProgress.as_str()))
            .expression_attribute_values(":attempt", n(attempt))
            .expression_attribute_values(":holder", s(holder))
            .send()
            .await;
        match update {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()), // no longer ours: nothing to release
            Err(e) => Err(PortError::from_sdk("UpdateItem", e)),
        }
    }

    /// One conditional `PutItem` of the processor's stop, while the processor has no
    /// record of the job. If the condition fails, the processor's record says why: the
    /// stop this very call wrote before its answer was lost (the SDK's retry), or the
    /// processor's own record of the job.
    async fn stop(&self, end: &Stop<'_>) -> Result<Forestalled, PortError> {
        const OP: &str = "PutItem";
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(&stop_record(end))))
            // None yet, a stop an operator reopened, or the announced rejection of
            // other content (`store::may_stop`).
            .condition_expression(
                "attribute_not_exists(pk) OR (progress = :retrying AND attempt = :stop) OR \
                 (progress = :rejected AND attempt = :stop AND announced = :t AND \
                  fingerprint <> :fp AND fingerprint <> :legacy_fp)",
            )
            .expression_attribute_values(":retrying", s(Progress::Retrying.as_str()))
            .expression_attribute_values(":rejected", s(JobStatus::Rejected.as_str()))
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":fp", s(end.fingerprint))
            .expression_attribute_values(
                ":legacy_fp",
                s(end.legacy_fingerprint.unwrap_or(end.fingerprint)),
            )
            .expression_attribute_values(":stop", n(STOP_ATTEMPT))
            .send()
            .await;
        match put {
            Ok(_) => Ok(Forestalled::Ended),
            Err(e) if is_condition_failure(&e) => {
                match self.read(end.job_id, Stage::Processor).await? {
                    Some(processor) if !may_stop(Some(&processor), end) => {
                        match decide_stop(&processor, end) {
                            // Held while this delivery announces it, unless taken first.
                            Forestalled::Unannounced => {
                                let take = stop_take(&processor, end);
                                Ok(match self.take(&take, end.now).await? {
                                    Some(_) => Forestalled::Unannounced,
                                    None => Forestalled::Taken,
                                })
                            }
                            other => Ok(other),
                        }
                    }
                    // Deleted (its TTL) or reopened in between: decided on a retry.
                    _ => Err(lost_claim(OP, end.job_id)),
                }
            }
            Err(e) => Err(PortError::from_sdk(OP, e)),
        }
    }

    async fn get(&self, job_id: &str) -> Result<Vec<JobState>, PortError> {
        let mut found = Vec::new();
        for stage in [Stage::Ingester, Stage::Processor] {
            found.extend(self.read(job_id, stage).await?);
        }
        Ok(found)
    }
}

/// What a mark writes ([`JobStore::mark`]): the announced mark takes the end out of
/// the outbox index. The ingester's grant on processor records lists exactly the
/// attributes these write and [`MARK_IF_END`] names (terraform/iam.tf).
pub(crate) const MARK_ANNOUNCED: &str =
    "SET announced = :t, updated_ms = :u, expires_at = :x REMOVE outbox";
pub(crate) const MARK_LETTER_STORED: &str =
    "SET letter_stored = :t, updated_ms = :u, expires_at = :x";

/// A mark lands only on the end it names; a record from before ends had ids
/// (no `end_id`) is taken to hold it, as [`crate::store::holds_end`] does.
pub(crate) const MARK_IF_END: &str =
    "progress IN (:c, :fl, :r) AND (end_id = :end OR attribute_not_exists(end_id))";

/// The progress of a record holding an end, as [`MARK_IF_END`] lists them.
const ENDS: [JobStatus; 3] = [JobStatus::Completed, JobStatus::Failed, JobStatus::Rejected];

fn mark_expression(what: Marked) -> &'static str {
    match what {
        Marked::Announced => MARK_ANNOUNCED,
        Marked::LetterStored => MARK_LETTER_STORED,
    }
}

impl DynamoStore {
    /// The batched form of a mark: the same writes as [`mark_expression`], on the
    /// end the record holds by id only (a record without one is marked one by one).
    fn mark_statement(&self, what: Marked) -> String {
        let set = match what {
            Marked::Announced => {
                "SET \"announced\" = ? SET \"updated_ms\" = ? SET \"expires_at\" = ? REMOVE \"outbox\""
            }
            Marked::LetterStored => {
                "SET \"letter_stored\" = ? SET \"updated_ms\" = ? SET \"expires_at\" = ?"
            }
        };
        format!(
            "UPDATE \"{}\" {set} WHERE \"pk\" = ? AND \"end_id\" = ? AND \"progress\" IN [?, ?, ?]",
            self.table
        )
    }
}

/// How an operator's redrive, and a replay's rerun, reopen an end: back for the
/// attempts after `:below`, held by `:by`, unannounced and out of the outbox index (the
/// reopened job is not an end to announce). The ingester's grant on processor records
/// lists exactly the attributes this writes (terraform/iam.tf).
pub(crate) const REOPEN: &str = "SET progress = :retrying, attempt = :below, holder = :by, \
     announced = :f, updated_ms = :u, expires_at = :x REMOVE outbox";

/// A reopening applies only to the end as it was read.
const REOPEN_IF_SEEN: &str =
    "progress = :done AND attempt = :ended AND fingerprint = :fp AND updated_ms = :seen";

/// The values [`REOPEN`] and [`REOPEN_IF_SEEN`] name.
fn reopen_values(below: u32, by: &str, seen: &JobState, now: Timestamp) -> Item {
    [
        (":retrying", s(Progress::Retrying.as_str())),
        (":below", n(below)),
        (":by", s(by)),
        (":f", AttributeValue::Bool(false)),
        (":u", n(now.timestamp_millis())),
        (":x", n(expires_at(now))),
        (":done", s(seen.progress.as_str())),
        (":ended", n(seen.attempt)),
        (":fp", s(&seen.fingerprint)),
        (":seen", n(seen.updated_at.timestamp_millis())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[async_trait]
impl OperatorStore for DynamoStore {
    /// Reads the record, decides by [`decide_reopen`], and writes only if the item is
    /// still the one read (same `updated_ms`, progress and attempt); if it changed in
    /// between, decides again on what it became.
    async fn record_replay(
        &self,
        order: &crate::store::ReplayOrder,
        now: Timestamp,
    ) -> Result<bool, PortError> {
        self.put_order(order, now).await
    }

    async fn reopen(&self, reopen: &Reopen<'_>, now: Timestamp) -> Result<Reopened, PortError> {
        for _ in 0..3 {
            let current = self.read(reopen.job_id, reopen.stage).await?;
            let decided = decide_reopen(current.as_ref(), reopen);
            let (Reopened::Now, Some(seen)) = (&decided, current) else {
                return Ok(decided);
            };
            let update = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(key(reopen.stage, reopen.job_id)))
                .update_expression(REOPEN)
                .condition_expression(REOPEN_IF_SEEN)
                .set_expression_attribute_values(Some(reopen_values(
                    reopen.below,
                    reopen.by,
                    &seen,
                    now,
                )))
                .send()
                .await;
            match update {
                Ok(_) => return Ok(Reopened::Now),
                Err(e) if is_condition_failure(&e) => continue, // changed since the read
                Err(e) => return Err(PortError::from_sdk("UpdateItem", e)),
            }
        }
        Err(PortError::Refused {
            operation: "UpdateItem",
            message: format!(
                "job {} kept changing while it was being reopened; try again",
                reopen.job_id
            ),
        })
    }
}

#[async_trait]
impl Outbox for DynamoStore {
    /// A `Query` of the index: keys only, so each entry costs a few bytes of a read unit.
    async fn stranded(
        &self,
        shard: u32,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<Stranded>, PortError> {
        const OP: &str = "Query";
        let Some(index) = &self.outbox_index else {
            return Err(PortError::Refused {
                operation: OP,
                message: "this store was built without the outbox index (OUTBOX_INDEX)".into(),
            });
        };
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression("outbox = :shard AND lease_until < :before")
            .expression_attribute_values(":shard", s(shard.to_string()))
            .expression_attribute_values(":before", n(before.timestamp_millis()))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| PortError::from_sdk(OP, e))?;
        Ok(out.items().iter().filter_map(stranded_of).collect())
    }

    /// A conditional `UpdateItem` that moves the lease, returning the whole record.
    async fn take(&self, take: &Take<'_>, now: Timestamp) -> Result<Option<JobState>, PortError> {
        const OP: &str = "UpdateItem";
        let ended = crate::messages::JobStatus::TERMINAL;
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(key(take.stage, take.job_id)))
            .update_expression(
                "SET lease_until = :until, holder = :holder, claim_token = :token, \
                 updated_ms = :u, expires_at = :x",
            )
            // The last line is this very take sent again after its answer was lost (the
            // SDK's retry): the record holds its own token and lease.
            .condition_expression(
                "announced = :f AND progress IN (:c, :fl, :r) AND (lease_until = :seen OR \
                 (holder = :holder AND claim_token = :token AND lease_until = :until))",
            )
            .expression_attribute_values(":x", n(expires_at(now)))
            .expression_attribute_values(":until", n(take.until.timestamp_millis()))
            .expression_attribute_values(":holder", s(take.holder))
            // No token matches no record: no token is ever `-`.
            .expression_attribute_values(
                ":token",
                s(if take.token.is_empty() {
                    "-"
                } else {
                    take.token
                }),
            )
            .expression_attribute_values(":u", n(now.timestamp_millis()))
            .expression_attribute_values(":f", AttributeValue::Bool(false))
            .expression_attribute_values(":seen", n(take.seen.timestamp_millis()))
            .expression_attribute_values(":c", s(ended[0].as_str()))
            .expression_attribute_values(":fl", s(ended[1].as_str()))
            .expression_attribute_values(":r", s(ended[2].as_str()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        match update {
            Ok(out) => Ok(out.attributes.as_ref().and_then(from_item)),
            Err(e) if is_condition_failure(&e) => Ok(None),
            Err(e) => Err(PortError::from_sdk(OP, e)),
        }
    }
}

/// An index entry's keys (`pk`, `lease_until`) as a [`Stranded`] end.
fn stranded_of(item: &Item) -> Option<Stranded> {
    let pk = item.get("pk")?.as_s().ok()?;
    let (stage, job_id) = pk.split_once('#')?;
    let stage = Stage::parse(stage)?;
    let millis = item.get("lease_until")?.as_n().ok()?.parse::<i64>().ok()?;
    Some(Stranded {
        job_id: job_id.to_owned(),
        stage,
        lease_until: Utc.timestamp_millis_opt(millis).single()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_reads_back_into_the_state_it_was_written_from() {
        let now = Utc
            .timestamp_millis_opt(1_790_000_000_123)
            .single()
            .expect("time");
        let item: Item = [
            ("pk", s("processor#job-1")),
            ("job_id", s("job-1")),
            ("stage", s("processor")),
            ("progress", s("COMPLETED")),
            ("fingerprint", s("abc")),
            ("attempt", n(2)),
            ("lease_until", n(now.timestamp_millis())),
            ("announced", AttributeValue::Bool(true)),
            ("detail", s(r#"{"rows":3}"#)),
            ("updated_ms", n(now.timestamp_millis())),
            ("expires_at", n((now + RETENTION).timestamp())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let state = from_item(&item).expect("a state");
        assert_eq!(
            state.progress,
            Progress::Done(Some(crate::messages::JobStatus::Completed))
        );
        assert_eq!(
            (state.attempt, state.announced, state.lease_until),
            (2, true, now)
        );
        assert_eq!(state.detail, Some(serde_json::json!({"rows": 3})));
    }

    /// Keeps the body of every request and stops it before it leaves the machine.
    #[derive(Debug, Default, Clone)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>);

    impl aws_sdk_dynamodb::config::Intercept for Captured {
        fn name(&self) -> &'static str {
            "captured"
        }
        fn read_before_transmit(
            &self,
            context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<
                '_,
            >,
            _: &aws_sdk_dynamodb::config::RuntimeComponents,
            _: &mut aws_sdk_dynamodb::config::ConfigBag,
        ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
            let body = context.request().body().bytes().unwrap_or_default();
            let json = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
            self.0.lock().expect("lock").push(json);
            Err("captured, not sent".into())
        }
    }

    fn captured_store() -> (DynamoStore, Captured) {
        let captured = Captured::default();
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::for_tests())
            .endpoint_url("http://127.0.0.1:9")
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
            .interceptor(captured.clone())
            .build();
        (
            DynamoStore::new(Client::from_conf(config), "jobs"),
            captured,
        )
    }

    #[tokio::test]
    async fn every_write_that_changes_a_record_sets_its_expiry_from_now() {
        let (store, captured) = captured_store();
        let now = Utc
            .timestamp_millis_opt(1_790_000_000_123)
            .single()
            .expect("time");
        let expiry = (now + RETENTION).timestamp().to_string();
        let done = Progress::Done(Some(crate::messages::JobStatus::Completed));
        let _ = store
            .finish(&crate::store::Finish {
                job_id: "job-1".into(),
                stage: Stage::Processor,
                attempt: 1,
                progress: done,
                detail: None,
                now,
            })
            .await;
        let _ = store
            .mark(
                &Mark::new("job-1", Stage::Processor, "e1", Marked::Announced),
                now,
            )
            .await;
        let release = Release {
            job_id: "job-1",
            stage: Stage::Processor,
            attempt: 1,
            holder: "m1",
            token: "",
        };
        let _ = store.release(&release, now).await;
        let finish = Finish {
            job_id: "job-2".into(),
            stage: Stage::Processor,
            attempt: 1,
            progress: done,
            detail: None,
            now,
        };
        let _ = store.finish_all(&[finish]).await;
        let _ = store
            .mark_all(
                &[Mark::new(
                    "job-2",
                    Stage::Processor,
                    "e2",
                    Marked::Announced,
                )],
                now,
            )
            .await;
        let requests = captured.0.lock().expect("lock").clone();
        assert_eq!(requests.len(), 5, "{requests:?}");
        for single in &requests[..3] {
            let expression = single["UpdateExpression"].as_str().unwrap_or_default();
            assert!(expression.contains("expires_at = :x"), "{single}");
            assert_eq!(
                single["ExpressionAttributeValues"][":x"]["N"], expiry,
                "{single}"
            );
        }
        for batch in &requests[3..] {
            let statement = &batch["Statements"][0];
            let sql = statement["Statement"].as_str().unwrap_or_default();
            assert!(sql.contains("SET \"expires_at\" = ?"), "{batch}");
            let params = statement["Parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(params.iter().any(|p| p["N"] == expiry), "{batch}");
        }
    }

    #[tokio::test]
    async fn claims_carry_their_token_and_a_retry_of_the_same_claim_passes_the_condition() {
        let (store, captured) = captured_store();
        let now = Utc
            .timestamp_millis_opt(1_790_000_000_123)
            .single()
            .expect("time");
        let claim = Claim {
            job_id: "job-1",
            stage: Stage::Processor,
            fingerprint: "fp",
            legacy_fingerprint: None,
            attempt: 1,
            lease_until: now,
            holder: "m1",
            token: "t1",
            history: None,
        };
        let _ = store.claim(&claim, now).await;
        let _ = store.claim_all(std::slice::from_ref(&claim), now).await;
        let release = Release {
            job_id: "job-1",
            stage: Stage::Processor,
            attempt: 1,
            holder: "m1",
            token: "t1",
        };
        let _ = store.release(&release, now).await;
        let requests = captured.0.lock().expect("lock").clone();
        assert_eq!(requests.len(), 3, "{requests:?}");
        let put = &requests[0];
        assert_eq!(put["Item"]["claim_token"]["S"], "t1", "{put}");
        let condition = put["ConditionExpression"].as_str().unwrap_or_default();
        assert!(
            condition.contains("holder = :holder AND claim_token = :token"),
            "{condition}"
        );
        assert_eq!(put["ExpressionAttributeValues"][":token"]["S"], "t1");
        let insert = &requests[1]["Statements"][0];
        assert!(
            insert["Statement"]
                .as_str()
                .unwrap_or_default()
                .contains("'claim_token': ?"),
            "{insert}"
        );
        let release = &requests[2];
        assert!(
            release["ConditionExpression"]
                .as_str()
                .unwrap_or_default()
                .contains("claim_token = :token"),
            "{release}"
        );
        assert_eq!(release["ExpressionAttributeValues"][":token"]["S"], "t1");
        // An item written before tokens reads back with none, which no claim matches.
        let old: Item = [
            ("pk", s("processor#job-1")),
            ("job_id", s("job-1")),
            ("stage", s("processor")),
            ("progress", s("IN_PROGRESS")),
            ("fingerprint", s("fp")),
            ("attempt", n(1)),
            ("lease_until", n(now.timestamp_millis() + 60_000)),
            ("holder", s("m1")),
            ("updated_ms", n(now.timestamp_millis())),
            ("expires_at", n((now + RETENTION).timestamp())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let state = from_item(&old).expect("a state");
        assert_eq!(state.token, "");
        assert_eq!(
            decide(Some(&state), &claim, now),
            ClaimOutcome::Held {
                until: state.lease_until
            },
            "as before tokens"
        );
    }

    /// The outbox index holds an end until it is announced: the end writes `outbox`,
    /// a hand-over to the next attempt does not, the mark and a reopening remove it.
    #[tokio::test]
    async fn an_end_enters_the_outbox_index_and_its_mark_takes_it_out() {
        let (store, captured) = captured_store();
        let now = Utc
            .timestamp_millis_opt(1_790_000_000_123)
            .single()
            .expect("time");
        let finish = |progress| Finish {
            job_id: "job-1".into(),
            stage: Stage::Processor,
            attempt: 1,
            progress,
            detail: None,
            now,
        };
        let done = Progress::Done(Some(crate::messages::JobStatus::Completed));
        let _ = store.finish(&finish(done)).await;
        let _ = store.finish(&finish(Progress::Retrying)).await;
        let other = Finish {
            job_id: "job-2".into(),
            ..finish(Progress::Retrying)
        };
        let _ = store.finish_all(&[finish(done), other]).await;
        let _ = store
            .mark(
                &Mark::new("job-1", Stage::Processor, "e1", Marked::Announced),
                now,
            )
            .await;
        let _ = store
            .mark_all(
                &[Mark::new(
                    "job-1",
                    Stage::Processor,
                    "e1",
                    Marked::Announced,
                )],
                now,
            )
            .await;
        let requests = captured.0.lock().expect("lock").clone();
        let expression = |r: &Value| {
            r["UpdateExpression"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let shard = outbox_shard("job-1");
        assert!(
            expression(&requests[0]).contains("outbox = :o"),
            "{}",
            requests[0]
        );
        assert_eq!(requests[0]["ExpressionAttributeValues"][":o"]["S"], shard);
        assert!(
            !expression(&requests[1]).contains("outbox"),
            "{}",
            requests[1]
        );
        let statements = requests[2]["Statements"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let sql = |s: &Value| s["Statement"].as_str().unwrap_or_default().to_owned();
        assert!(
            sql(&statements[0]).contains("SET \"outbox\" = ?"),
            "{}",
            statements[0]
        );
        assert!(statements[0]["Parameters"]
            .as_array()
            .is_some_and(|p| p.iter().any(|v| v["S"] == shard)));
        assert!(!sql(&statements[1]).contains("outbox"), "{}", statements[1]);
        assert!(
            expression(&requests[3]).ends_with("REMOVE outbox"),
            "{}",
            requests[3]
        );
        let mark = sql(&requests[4]["Statements"][0]);
        assert!(mark.contains("REMOVE \"outbox\""), "{mark}");
    }

    /// The relay's two calls as DynamoDB receives them: the index's query, and a take
    /// that passes on the lease it saw or on its own earlier write, never otherwise.
    #[tokio::test]
    async fn the_relay_queries_the_index_and_takes_only_the_lease_it_saw_or_its_own() {
        let (store, captured) = captured_store();
        let store = store.with_outbox_index("outbox");
        let now = Utc
            .timestamp_millis_opt(1_790_000_000_123)
            .single()
            .expect("time");
        let _ = store.stranded(7, now, 100).await;
        let take = Take {
            job_id: "job-1",
            stage: Stage::Processor,
            seen: now - chrono::TimeDelta::seconds(90),
            until: now + chrono::TimeDelta::seconds(60),
            holder: "relay:r1",
            token: "t1",
        };
        let _ = store.take(&take, now).await;
        let requests = captured.0.lock().expect("lock").clone();
        let query = &requests[0];
        assert_eq!(query["IndexName"], "outbox", "{query}");
        assert_eq!(
            query["KeyConditionExpression"],
            "outbox = :shard AND lease_until < :before"
        );
        assert_eq!(query["ExpressionAttributeValues"][":shard"]["S"], "7");
        assert_eq!(query["Limit"], 100);
        assert!(
            query.get("ConsistentRead").is_none(),
            "a global index has no consistent reads"
        );
        let update = &requests[1];
        let condition = update["ConditionExpression"].as_str().unwrap_or_default();
        assert!(condition.contains("announced = :f"), "{condition}");
        assert!(condition.contains("lease_until = :seen OR"), "{condition}");
        assert!(
            condition
                .contains("holder = :holder AND claim_token = :token AND lease_until = :until"),
            "{condition}"
        );
        let values = &update["ExpressionAttributeValues"];
        assert_eq!(
            values[":seen"]["N"],
            take.seen.timestamp_millis().to_string()
        );
        assert_eq!(values[":token"]["S"], "t1");
        assert_eq!(update["ReturnValues"], "ALL_NEW");
        // Without the index, the store refuses to sweep rather than scan.
        let (plain, _) = captured_store();
        assert!(plain.stranded(0, now, 1).await.is_err());
    }

    #[test]
    fn an_item_missing_a_field_is_not_a_state() {
        let item: Item = [("pk", s("processor#job-1")), ("stage", s("processor"))]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert!(from_item(&item).is_none());
    }
}
