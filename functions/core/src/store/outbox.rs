//! The job state table as the outbox: every end is recorded before it is announced,
//! so an end that is recorded and not announced is an entry waiting to go out.
//!
//! While the stage that recorded an end holds its lease (until its invocation's
//! deadline) it announces the end itself, or its own SQS message comes back and
//! does. Once the lease is over the end is *stranded*: nobody may be left to announce
//! it (the message went to the DLQ, or an operator purged it). The relay
//! ([`crate::relay`]) finds such ends through a sparse index and announces them.
//!
//! Whoever announces a recorded end after its lease first *takes* it
//! ([`Outbox::take`]): one conditional write that moves the lease to the taker, and
//! only if the record is still unannounced with the very lease that was seen. Two
//! takers (the relay, and a late SQS copy of the stage's message) cannot both pass it,
//! so an end is announced by one of them; the other finds it held and drops its turn.
//!
//! The index (`outbox`, hash `outbox`, range `lease_until`, keys only) holds only the
//! records that carry the `outbox` attribute: an end writes it, the announced mark and
//! a redrive's reopening remove it. Its value is one of [`SHARDS`] shards of the job id,
//! so that the index never has one hot partition key.

use crate::messages::Stage;
use crate::ports::PortError;
use crate::store::JobState;
use crate::Timestamp;
use async_trait::async_trait;

/// How many values the index's hash key takes. DynamoDB writes one index partition
/// key at up to 1,000 units a second; two index writes per job (the end puts the
/// entry, the mark removes it) would cap a single key at 500 jobs a second.
pub const SHARDS: u32 = 16;

/// The shard of a job's index entry: the same for every record of the job.
pub fn shard(job_id: &str) -> u32 {
    (crate::execute::fnv1a(&[job_id.as_bytes()]) % u64::from(SHARDS)) as u32
}

/// An index entry: a recorded, unannounced end whose lease ended at `lease_until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stranded {
    pub job_id: String,
    pub stage: Stage,
    pub lease_until: Timestamp,
}

/// A request to take over announcing a recorded end ([`Outbox::take`]).
#[derive(Debug, Clone, Copy)]
pub struct Take<'a> {
    pub job_id: &'a str,
    pub stage: Stage,
    /// The lease the taker saw end: the take passes only if the record still has it.
    pub seen: Timestamp,
    /// The taker's own lease: until then nobody else takes the end.
    pub until: Timestamp,
    /// Who takes it (a message id, or the relay's invocation) and its claim token.
    pub holder: &'a str,
    pub token: &'a str,
}

/// What the relay needs of the table, beyond the [`crate::store::JobStore`] calls.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Up to `limit` entries of `shard` whose lease ended before `before`, oldest lease
    /// first.
    async fn stranded(
        &self,
        shard: u32,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<Stranded>, PortError>;

    /// Takes over a recorded end: only if it is still unannounced and holds the lease
    /// `take.seen`. The record as taken, or `None` if someone else took it, or it was
    /// announced or reopened, since it was seen.
    async fn take(&self, take: &Take<'_>, now: Timestamp) -> Result<Option<JobState>, PortError>;
}

/// Whether `record` may be taken as `take` asks ([`Outbox::take`]), for every store: it
/// still holds the lease that was seen, or it holds this very take already (the same
/// call sent again after its answer was lost: a take is recognised by its token, never
/// empty).
pub fn may_take(record: &JobState, take: &Take<'_>) -> bool {
    let own = !take.token.is_empty()
        && record.holder == take.holder
        && record.token == take.token
        && record.lease_until == take.until;
    matches!(record.progress, crate::store::Progress::Done(Some(_)))
        && !record.announced
        && (record.lease_until == take.seen || own)
}

/// `record` after `take`, as every store writes it.
pub fn taken(record: &mut JobState, take: &Take<'_>, now: Timestamp) {
    record.lease_until = take.until;
    record.holder = take.holder.to_owned();
    record.token = take.token.to_owned();
    record.updated_at = now;
    record.expires_at = now + crate::store::RETENTION;
}

/// How the relay's takes name their holder: `relay:<invocation>`. A stage's delivery
/// that finds an end held so waits in SQS rather than being dropped as a copy, since
/// the relay has no message of its own that would come back if it failed.
pub const RELAY_HOLDER: &str = "relay:";

/// Whether an end is held by the relay ([`RELAY_HOLDER`]).
pub fn held_by_relay(record: &JobState) -> bool {
    record.holder.starts_with(RELAY_HOLDER)
}
