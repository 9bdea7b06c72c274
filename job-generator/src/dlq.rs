//! `job-generator dlq ...`: look into the dead-letter queue and send jobs back.
//!
//! MiniStack has no `StartMessageMoveTask`, and a redrive here must also reopen each
//! job's state record, so messages are moved one by one: receive, reopen, send, and
//! delete only once the copy was accepted. A message that is not moved is made visible
//! again at the end of the run; a crash in between leaves it in the DLQ, where it
//! reappears after its visibility timeout. Nothing is lost; at worst a job is sent
//! twice, which its state record turns into one run.

use async_trait::async_trait;
use jobs_core::messages::{DeadLetter, JobStatus, Stage};
use jobs_core::record::enriched_message;
use jobs_core::redrive::{plan, Redrive, Stranded};
use jobs_core::store::{Fingerprints, OperatorStore, Reopen, Reopened, STOP_ATTEMPT};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;

/// A message held from the DLQ (invisible to others while we decide).
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub message_id: String,
    pub receipt: String,
    pub body: String,
    /// When SQS accepted the message (`SentTimestamp`, epoch milliseconds), if known.
    pub sent_at_ms: Option<i64>,
}

/// Where a redriven message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    JobsTodo,
    Ingester,
}

/// A failed queue call, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct OpsError {
    pub operation: &'static str,
    pub message: String,
}

/// The queue calls the operations need.
#[async_trait]
pub trait Mailbox {
    /// Receives up to 10 DLQ messages, hiding them for a while.
    async fn receive(&self) -> Result<Vec<Held>, OpsError>;
    /// Makes a held message visible again.
    async fn release(&self, held: &Held) -> Result<(), OpsError>;
    async fn delete(&self, held: &Held) -> Result<(), OpsError>;
    async fn send(
        &self,
        to: Destination,
        body: &str,
        attributes: &[(&'static str, String)],
    ) -> Result<(), OpsError>;
}

/// Which dead letters an operation acts on.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only these job ids; all when empty.
    pub job_ids: HashSet<String>,
    /// Stop after this many matching messages.
    pub max: usize,
}

impl Selection {
    fn matches(&self, letter: &Letter) -> bool {
        self.job_ids.is_empty() || letter.job_id().is_some_and(|id| self.job_ids.contains(id))
    }
}

/// A DLQ message as the operations see it.
#[derive(Debug)]
pub enum Letter {
    /// A dead letter a function wrote, with the job's error history.
    Dead(DeadLetter),
    /// A record SQS moved here after too many failed receives, as it was.
    Stranded(Stranded),
    /// Something else; left alone.
    Unknown,
}

impl Letter {
    pub fn of(body: &str) -> Letter {
        if let Ok(dl) = serde_json::from_str::<DeadLetter>(body) {
            return Letter::Dead(dl);
        }
        Stranded::of(body).map_or(Letter::Unknown, Letter::Stranded)
    }

    pub fn job_id(&self) -> Option<&str> {
        match self {
            Letter::Dead(dl) => Some(&dl.job_id),
            Letter::Stranded(s) => s.job_id(),
            Letter::Unknown => None,
        }
    }
}

/// What a redrive did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub moved: usize,
    pub kept: usize,
    pub skipped: usize,
    pub failed: usize,
    pub lines: Vec<String>,
}

impl Report {
    /// The letters this report decided on, whatever it did with each.
    pub fn matched(&self) -> usize {
        self.moved + self.kept + self.skipped + self.failed
    }

    /// Adds another queue's report to this one.
    pub fn absorb(&mut self, other: Report) {
        self.moved += other.moved;
        self.kept += other.kept;
        self.skipped += other.skipped;
        self.failed += other.failed;
        self.lines.extend(other.lines);
    }
}

/// Reads every DLQ message once (up to the selection's max matches), hands each match to
/// `act`, and releases whatever `act` did not consume. Messages seen twice in one run
/// (released ones can come back at once) are skipped by message id.
/// `before_ms`: act only on messages SQS accepted before then (epoch milliseconds);
/// later ones are held like unselected ones and put back at the end. A redrive passes
/// its own start: a job it sends back may be rejected or fail again within
/// milliseconds, and that new dead letter must wait for the next redrive, or one
/// command would redrive and announce the job again and again without end.
async fn sweep<M, F>(
    mailbox: &M,
    selection: &Selection,
    before_ms: Option<i64>,
    mut act: F,
) -> Result<(), OpsError>
where
    M: Mailbox + Sync,
    F: AsyncFnMut(&Held, Letter) -> Result<bool, OpsError>,
{
    let mut seen = HashSet::new();
    let mut to_release = Vec::new();
    let mut matched = 0;
    let outcome = async {
        'receive: loop {
            let batch = mailbox.receive().await?;
            let fresh: Vec<Held> = batch
                .into_iter()
                .filter(|h| seen.insert(h.message_id.clone()))
                .collect();
            if fresh.is_empty() {
                return Ok(());
            }
            for held in fresh {
                let letter = Letter::of(&held.body);
                let newer = before_ms.is_some_and(|t| held.sent_at_ms.is_none_or(|at| at >= t));
                if newer || !selection.matches(&letter) || matched >= selection.max {
                    to_release.push(held);
                    continue;
                }
                matched += 1;
                if !act(&held, letter).await? {
                    to_release.push(held);
                }
                if matched >= selection.max {
                    break 'receive Ok(());
                }
            }
        }
    }
    .await;
    for held in &to_release {
        mailbox.release(held).await?;
    }
    outcome
}

/// Text from a message, safe to print on a terminal: control characters (C0 with ESC,
/// DEL, C1), bidirectional controls, line and paragraph separators and invisible
/// formatting characters are shown escaped (`\n`, `\u{202e}`), so a dead letter cannot
/// move the cursor, reorder what follows or fake a line of its own.
pub fn printable(text: &str) -> Cow<'_, str> {
    fn hidden(c: char) -> bool {
        c.is_control()
            || matches!(
                c,
                '\u{061c}'
                    | '\u{200b}'..='\u{200f}'
                    | '\u{2028}'..='\u{202e}'
                    | '\u{2060}'..='\u{2069}'
                    | '\u{feff}'
            )
    }
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if hidden(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One line per dead letter: id, status, stage, attempts and the error history, every
/// field [`printable`].
pub async fn list<M: Mailbox + Sync>(
    mailbox: &M,
    selection: &Selection,
) -> Result<Vec<String>, OpsError> {
    let mut lines = Vec::new();
    sweep(
        mailbox,
        selection,
        None,
        async |held: &Held, letter: Letter| {
            lines.push(match letter {
                Letter::Dead(dl) => describe(&dl),
                Letter::Stranded(Stranded::Job(job)) => format!(
                    "{}  STRANDED in jobs-todo  {}  attempt {}  (moved here by SQS after repeated failed receives; a redrive sends it back as it is)",
                    printable(&job.job_id), job.job_type, job.attempt
                ),
                Letter::Stranded(Stranded::Event { job_id }) => format!(
                    "{}  STRANDED in ingester-queue  (an event moved here by SQS before it was validated; a redrive sends it back as it is)",
                    printable(job_id.as_deref().unwrap_or(&held.message_id))
                ),
                Letter::Unknown => format!(
                    "{}  (not a dead letter of this pipeline: {} bytes)",
                    printable(&held.message_id),
                    held.body.len()
                ),
            });
            Ok(false)
        },
    )
    .await?;
    Ok(lines)
}

fn describe(dl: &DeadLetter) -> String {
    let mut line = format!(
        "{}  {} at {}  {}  attempts {}",
        printable(&dl.job_id),
        dl.status.as_str(),
        dl.stage.as_str(),
        printable(dl.job_type.as_deref().unwrap_or("-")),
        dl.attempts
    );
    for e in &dl.errors {
        let field = e
            .field
            .as_deref()
            .map(|f| format!(" [{}]", printable(f)))
            .unwrap_or_default();
        let _ = write!(
            line,
            "\n    #{} {} {} {}{field}: {}",
            e.attempt,
            jobs_core::messages::rfc3339::format(&e.timestamp),
            e.stage.as_str(),
            printable(e.code.as_str()),
            printable(&e.message)
        );
    }
    line
}

/// Why a dead letter was not sent.
enum Skip {
    /// A stale copy of an end already reopened: delete it.
    Delete(String),
    /// Not this job's record, or a state no redrive explains: leave it in the DLQ.
    Keep(String),
}

impl Destination {
    /// The queue's name, as the report says it.
    fn queue_name(self) -> &'static str {
        match self {
            Destination::JobsTodo => "jobs-todo",
            Destination::Ingester => "ingester-queue",
        }
    }
}

/// Where one letter goes, and which end of which state record to reopen first.
struct Move {
    job_id: String,
    to: Destination,
    message: jobs_core::ports::OutgoingMessage,
    reopen: Option<EndToReopen>,
}

/// The end a dead letter was written for: the processor's record holds the letter's
/// attempt, the ingester's attempt 1.
struct EndToReopen {
    letter: DeadLetter,
    stage: Stage,
    attempt: u32,
    below: u32,
}

/// Sends the selected dead letters back; with `dry_run`, only says what it would do.
///
/// Each letter reopens only the end it was written for ([`jobs_core::store::decide_reopen`]):
/// a second copy of one letter, or a letter whose redrive was interrupted after the
/// copy was sent, finds its end reopened already and is deleted unsent (the job then
/// has no letter left but those of its own later ends); a letter whose id now names
/// other content is kept.
pub async fn redrive<M, S>(
    mailbox: &M,
    store: &S,
    selection: &Selection,
    dry_run: bool,
) -> Result<Report, OpsError>
where
    M: Mailbox + Sync,
    S: OperatorStore + ?Sized,
{
    let mut report = Report::default();
    let now = jobs_core::clock::now();
    let started = Some(now.timestamp_millis());
    sweep(
        mailbox,
        selection,
        started,
        async |held: &Held, letter: Letter| {
            let mv = match plan_move(held, letter, now) {
                Ok(mv) => mv,
                Err(kept) => {
                    report.kept += 1;
                    report.lines.push(kept);
                    return Ok(false);
                }
            };
            let target = mv.to.queue_name();
            if dry_run {
                report
                    .lines
                    .push(format!("{}: would go to {target}", mv.job_id));
                report.moved += 1;
                return Ok(false);
            }
            let sent = async {
                if let Some(end) = &mv.reopen {
                    if let Some(skip) =
                        reopen(store, end, &mv.job_id, &held.message_id, now).await?
                    {
                        return Ok(Some(skip));
                    }
                }
                mailbox
                    .send(mv.to, &mv.message.body, &mv.message.attributes)
                    .await
                    .map(|()| None)
            }
            .await;
            settle(mailbox, held, &mut report, &mv.job_id, target, sent).await
        },
    )
    .await?;
    Ok(report)
}

/// What to send where for `letter`; the report's line when it is kept instead.
fn plan_move(
    held: &Held,
    letter: Letter,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Move, String> {
    let raw = |body: String| jobs_core::ports::OutgoingMessage {
        body,
        attributes: vec![],
        delay_seconds: 0,
        group: None,
    };
    let reopen = |letter, stage, attempt, below| {
        Some(EndToReopen {
            letter,
            stage,
            attempt,
            below,
        })
    };
    Ok(match letter {
        Letter::Dead(dl) => match plan(&dl, now) {
            Redrive::JobsTodo(job) => Move {
                job_id: dl.job_id.clone(),
                to: Destination::JobsTodo,
                message: enriched_message(&job),
                reopen: reopen(dl, Stage::Processor, job.attempt - 1, job.attempt - 1),
            },
            Redrive::Ingester(event) => Move {
                job_id: dl.job_id.clone(),
                to: Destination::Ingester,
                message: raw(jobs_core::messages::sqs_safe_json(event.to_string())),
                reopen: reopen(dl, Stage::Ingester, 1, 0),
            },
            Redrive::Keep(why) => return Err(format!("{}: kept, {why}", dl.job_id)),
        },
        // The job never ended, so there is no end to reopen: its own claim
        // (lease long expired) lets it run on.
        Letter::Stranded(Stranded::Job(job)) => Move {
            job_id: job.job_id.clone(),
            to: Destination::JobsTodo,
            message: enriched_message(&job),
            reopen: None,
        },
        Letter::Stranded(Stranded::Event { job_id }) => Move {
            job_id: job_id.unwrap_or_else(|| held.message_id.clone()),
            to: Destination::Ingester,
            message: raw(held.body.clone()),
            reopen: None,
        },
        Letter::Unknown => {
            return Err(format!(
                "{}: kept, not a dead letter of this pipeline",
                held.message_id
            ))
        }
    })
}

/// Reopens the end `end` names, by the DLQ message `by`; why not to send the letter
/// when that end is not its own to reopen.
async fn reopen<S: OperatorStore + ?Sized>(
    store: &S,
    end: &EndToReopen,
    job_id: &str,
    by: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Skip>, OpsError> {
    let dl = &end.letter;
    let prints = Fingerprints::of(&dl.job);
    let request = Reopen {
        job_id,
        stage: end.stage,
        fingerprint: &prints.current,
        legacy_fingerprint: Some(&prints.legacy),
        status: dl.status,
        attempt: end.attempt,
        last_error: dl.errors.last(),
        below: end.below,
        by,
    };
    let reopened = store.reopen(&request, now).await.map_err(|e| OpsError {
        operation: "reopen job state",
        message: e.to_string(),
    })?;
    match &reopened {
        Reopened::Now | Reopened::Already | Reopened::NoRecord => {}
        Reopened::Stale(why) => return Ok(Some(Skip::Delete(why.clone()))),
        Reopened::Keep(why) => return Ok(Some(Skip::Keep(why.clone()))),
    }
    // The ingester ends a job it rejects, or could not forward, on the processor's
    // record (a stop, `JobStore::stop`): reopen that stop too, or the redriven job
    // would be dropped there. A stop taken over since means the job ran since, and a
    // letter with no ingester record then is a stale copy; no stop at all, a letter
    // written before stops existed.
    if !is_stopped(end) {
        return Ok(None);
    }
    let stop = Reopen {
        stage: Stage::Processor,
        attempt: STOP_ATTEMPT,
        below: STOP_ATTEMPT,
        ..request
    };
    let at_stop = store.reopen(&stop, now).await.map_err(|e| OpsError {
        operation: "reopen the processor's stop",
        message: e.to_string(),
    })?;
    match at_stop {
        Reopened::Keep(why) => Ok(Some(Skip::Keep(why))),
        Reopened::Stale(why) if reopened == Reopened::NoRecord => Ok(Some(Skip::Delete(why))),
        _ => Ok(None),
    }
}

/// Whether the ingester's end a letter reports was recorded as a stop on the
/// processor's record: a rejection, or a job it could not forward.
fn is_stopped(end: &EndToReopen) -> bool {
    end.stage == Stage::Ingester
        && (end.letter.status == JobStatus::Rejected
            || end.letter.last_error_code() == "forward_failed")
}

/// Deletes, keeps or leaves the held letter by what became of its move, and reports
/// it; whether the letter was consumed.
async fn settle<M: Mailbox + Sync>(
    mailbox: &M,
    held: &Held,
    report: &mut Report,
    job_id: &str,
    target: &str,
    sent: Result<Option<Skip>, OpsError>,
) -> Result<bool, OpsError> {
    match sent {
        // A stale copy: its end was reopened already and the job ran or runs on,
        // so the job keeps exactly the letters of its own ends.
        Ok(Some(Skip::Delete(why))) => {
            mailbox.delete(held).await?;
            report.skipped += 1;
            report.lines.push(format!(
                "{job_id}: skipped and deleted as a stale copy, {why}"
            ));
            Ok(true)
        }
        Ok(Some(Skip::Keep(why))) => {
            report.kept += 1;
            report.lines.push(format!("{job_id}: kept, {why}"));
            Ok(false)
        }
        Ok(None) => {
            // Only now that the copy is accepted may the original go.
            mailbox.delete(held).await?;
            report.moved += 1;
            report.lines.push(format!("{job_id}: sent to {target}"));
            Ok(true)
        }
        Err(e) => {
            report.failed += 1;
            report.lines.push(format!("{job_id}: left in the DLQ, {e}"));
            Ok(false)
        }
    }
}

/// The mailbox on SQS: the DLQ and the two queues redrives go to, by URL.
#[derive(Debug)]
pub struct SqsMailbox {
    pub client: aws_sdk_sqs::Client,
    /// The dead-letter queue's name, as reports say it.
    pub name: String,
    pub dead_letters: String,
    pub jobs_todo: String,
    pub ingester: String,
}

/// How long received DLQ messages stay hidden while a run decides about them.
const HOLD_SECS: i32 = 120;

fn sqs_error<E: std::error::Error + 'static, R: std::fmt::Debug>(
    operation: &'static str,
) -> impl Fn(aws_sdk_sqs::error::SdkError<E, R>) -> OpsError {
    move |e| OpsError {
        operation,
        message: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
    }
}

impl SqsMailbox {
    /// Looks the queues up by name.
    pub async fn connect(
        client: aws_sdk_sqs::Client,
        dead_letters: &str,
        jobs_todo: &str,
        ingester: &str,
    ) -> Result<SqsMailbox, OpsError> {
        let url = async |name: &str| {
            client
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(sqs_error("GetQueueUrl"))?
                .queue_url
                .ok_or_else(|| OpsError {
                    operation: "GetQueueUrl",
                    message: format!("no URL for queue {name}"),
                })
        };
        Ok(SqsMailbox {
            name: dead_letters.to_owned(),
            dead_letters: url(dead_letters).await?,
            jobs_todo: url(jobs_todo).await?,
            ingester: url(ingester).await?,
            client,
        })
    }
}

#[async_trait]
impl Mailbox for SqsMailbox {
    async fn receive(&self) -> Result<Vec<Held>, OpsError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.dead_letters)
            .max_number_of_messages(10)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp,
            )
            .visibility_timeout(HOLD_SECS)
            .wait_time_seconds(1)
            .send()
            .await
            .map_err(sqs_error("ReceiveMessage"))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let sent_at_ms = m
                    .attributes
                    .as_ref()
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp)
                    })
                    .and_then(|t| t.parse().ok());
                Some(Held {
                    message_id: m.message_id?,
                    receipt: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                    sent_at_ms,
                })
            })
            .collect())
    }

    async fn release(&self, held: &Held) -> Result<(), OpsError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.dead_letters)
            .receipt_handle(&held.receipt)
            .visibility_timeout(0)
            .send()
            .await
            .map(|_| ())
            .map_err(sqs_error("ChangeMessageVisibility"))
    }

    async fn delete(&self, held: &Held) -> Result<(), OpsError> {
        self.client
            .delete_message()
            .queue_url(&self.dead_letters)
            .receipt_handle(&held.receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(sqs_error("DeleteMessage"))
    }

    async fn send(
        &self,
        to: Destination,
        body: &str,
        attributes: &[(&'static str, String)],
    ) -> Result<(), OpsError> {
        let url = match to {
            Destination::JobsTodo => &self.jobs_todo,
            Destination::Ingester => &self.ingester,
        };
        let mut send = self.client.send_message().queue_url(url).message_body(body);
        for (name, value) in attributes {
            let attr = aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| OpsError {
                    operation: "SendMessage",
                    message: e.to_string(),
                })?;
            send = send.message_attributes(*name, attr);
        }
        send.send()
            .await
            .map(|_| ())
            .map_err(sqs_error("SendMessage"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobs_core::messages::{EnrichedJob, ErrorEntry, JobStatus};
    use jobs_core::record::dead_letter_message;
    use jobs_core::store::{
        Claim, ClaimOutcome, Forestalled, JobState, JobStore, Mark, Marked, MemoryStore, Progress,
    };

    fn body_of(dl: &DeadLetter) -> String {
        dead_letter_message(dl).body
    }
    use serde_json::json;
    use std::sync::Mutex;

    /// A DLQ in memory that logs every call in order.
    #[derive(Default)]
    struct FakeQueues {
        dlq: Mutex<Vec<Held>>,
        hidden: Mutex<Vec<Held>>,
        log: Mutex<Vec<String>>,
        sent: Mutex<Vec<(Destination, String)>>,
        refuse_sends: bool,
    }

    impl FakeQueues {
        fn with(letters: &[DeadLetter]) -> Self {
            let q = FakeQueues::default();
            *q.dlq.lock().expect("lock") = letters
                .iter()
                .enumerate()
                .map(|(i, dl)| Held {
                    message_id: format!("m{i}"),
                    receipt: format!("r{i}"),
                    body: body_of(dl),
                    sent_at_ms: Some(0),
                })
                .collect();
            q
        }
        fn log(&self) -> Vec<String> {
            self.log.lock().expect("lock").clone()
        }
        fn depth(&self) -> usize {
            self.dlq.lock().expect("lock").len() + self.hidden.lock().expect("lock").len()
        }
    }

    #[async_trait]
    impl Mailbox for FakeQueues {
        async fn receive(&self) -> Result<Vec<Held>, OpsError> {
            let mut dlq = self.dlq.lock().expect("lock");
            let n = dlq.len().min(10);
            let batch: Vec<Held> = dlq.drain(..n).collect();
            self.hidden
                .lock()
                .expect("lock")
                .extend(batch.iter().cloned());
            Ok(batch)
        }
        async fn release(&self, held: &Held) -> Result<(), OpsError> {
            self.log
                .lock()
                .expect("lock")
                .push(format!("release {}", held.message_id));
            let mut hidden = self.hidden.lock().expect("lock");
            if let Some(pos) = hidden.iter().position(|h| h.receipt == held.receipt) {
                let h = hidden.remove(pos);
                self.dlq.lock().expect("lock").push(h);
            }
            Ok(())
        }
        async fn delete(&self, held: &Held) -> Result<(), OpsError> {
            self.log
                .lock()
                .expect("lock")
                .push(format!("delete {}", held.message_id));
            self.hidden
                .lock()
                .expect("lock")
                .retain(|h| h.receipt != held.receipt);
            Ok(())
        }
        async fn send(
            &self,
            to: Destination,
            body: &str,
            _: &[(&'static str, String)],
        ) -> Result<(), OpsError> {
            self.log.lock().expect("lock").push(format!("send {to:?}"));
            if self.refuse_sends {
                return Err(OpsError {
                    operation: "SendMessage",
                    message: "refused".into(),
                });
            }
            self.sent.lock().expect("lock").push((to, body.to_owned()));
            Ok(())
        }
    }

    fn letter(id: &str, stage: Stage) -> DeadLetter {
        let status = if stage == Stage::Processor {
            JobStatus::Failed
        } else {
            JobStatus::Rejected
        };
        let now = chrono::Utc::now();
        let error = ErrorEntry::new(stage, "injected".into(), "failed on purpose", 3, now);
        let job =
            json!({"job_type": "user_onboarding", "message": {"user_id": "1", "user_name": "A"}});
        let job_type = Some("user_onboarding".into());
        DeadLetter::new(id.into(), job_type, status, error, job)
    }

    fn all() -> Selection {
        Selection {
            job_ids: HashSet::new(),
            max: usize::MAX,
        }
    }

    #[tokio::test]
    async fn every_letter_goes_to_its_stage_and_is_deleted_only_after_the_copy_is_sent() {
        let letters: Vec<DeadLetter> = (0..12)
            .map(|i| {
                letter(
                    &format!("job-{i}"),
                    if i % 3 == 0 {
                        Stage::Ingester
                    } else {
                        Stage::Processor
                    },
                )
            })
            .collect();
        let q = FakeQueues::with(&letters);
        let report = redrive(&q, &MemoryStore::default(), &all(), false)
            .await
            .expect("redrive");
        assert_eq!((report.moved, report.failed, q.depth()), (12, 0, 0));
        let sent = q.sent.lock().expect("lock").clone();
        assert_eq!(
            sent.iter()
                .filter(|(d, _)| *d == Destination::Ingester)
                .count(),
            4
        );
        let (_, body) = sent
            .iter()
            .find(|(d, _)| *d == Destination::JobsTodo)
            .expect("one to jobs-todo");
        let job = EnrichedJob::from_body(body).expect("an enriched job");
        assert_eq!((job.attempt, job.errors.len()), (4, 1));
        let log = q.log();
        for (i, entry) in log.iter().enumerate() {
            if entry.starts_with("delete") {
                assert!(
                    log[i - 1].starts_with("send"),
                    "delete before send: {log:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn stranded_records_go_back_unchanged_and_can_be_chosen_by_job_id() {
        let job = json!({"job_id": "job-s", "job_type": "user_onboarding", "status": "NEW",
            "received_at": "2026-11-23T10:00:00Z", "attempt": 2, "errors": [],
            "job": {"job_type": "user_onboarding", "message": {"user_id": "1", "user_name": "A"}}})
        .to_string();
        let event = json!({"id": "evt-1", "source": "jobs",
            "detail": {"id": "job-e", "job_type": "user_onboarding"}})
        .to_string();
        let q = FakeQueues::default();
        *q.dlq.lock().expect("lock") = [(0, &job), (1, &event), (2, &"junk".to_owned())]
            .into_iter()
            .map(|(i, body)| Held {
                message_id: format!("m{i}"),
                receipt: format!("r{i}"),
                body: body.clone(),
                sent_at_ms: Some(0),
            })
            .collect();
        let listed = list(&q, &all()).await.expect("list");
        assert!(
            listed[0].starts_with("job-s  STRANDED in jobs-todo"),
            "{listed:?}"
        );
        assert!(
            listed[1].starts_with("job-e  STRANDED in ingester-queue"),
            "{listed:?}"
        );

        let only_e = Selection {
            job_ids: ["job-e".to_owned()].into(),
            max: usize::MAX,
        };
        let store = MemoryStore::default();
        let report = redrive(&q, &store, &only_e, false).await.expect("redrive");
        assert_eq!((report.moved, report.kept), (1, 0));
        let report = redrive(&q, &store, &all(), false).await.expect("redrive");
        assert_eq!(
            (report.moved, report.kept, q.depth()),
            (1, 1, 1),
            "junk stays"
        );
        let sent = q.sent.lock().expect("lock").clone();
        assert_eq!(
            sent,
            [
                (Destination::Ingester, event),
                (Destination::JobsTodo, {
                    let back = EnrichedJob::from_body(&job).expect("job");
                    enriched_message(&back).body
                })
            ]
        );
        let back = EnrichedJob::from_body(&sent[1].1).expect("an enriched job");
        assert_eq!(back.attempt, 2, "a stranded job keeps its attempt");
    }

    #[tokio::test]
    async fn a_refused_send_leaves_the_letter_in_the_dlq() {
        let q = FakeQueues {
            refuse_sends: true,
            ..FakeQueues::with(&[letter("job-1", Stage::Processor)])
        };
        let report = redrive(&q, &MemoryStore::default(), &all(), false)
            .await
            .expect("redrive");
        assert_eq!((report.moved, report.failed, q.depth()), (0, 1, 1));
        assert!(!q.log().iter().any(|l| l.starts_with("delete")));
    }

    #[tokio::test]
    async fn a_dry_run_moves_nothing_and_releases_everything() {
        let q = FakeQueues::with(&[
            letter("job-1", Stage::Processor),
            letter("job-2", Stage::Ingester),
        ]);
        let report = redrive(&q, &MemoryStore::default(), &all(), true)
            .await
            .expect("redrive");
        assert_eq!(report.moved, 2, "counts what it would move");
        assert!(q.sent.lock().expect("lock").is_empty());
        assert_eq!(q.dlq.lock().expect("lock").len(), 2, "all visible again");
    }

    #[tokio::test]
    async fn only_the_selected_jobs_move() {
        let q = FakeQueues::with(&[
            letter("job-1", Stage::Processor),
            letter("job-2", Stage::Processor),
        ]);
        let selection = Selection {
            job_ids: ["job-2".to_owned()].into(),
            max: usize::MAX,
        };
        let report = redrive(&q, &MemoryStore::default(), &selection, false)
            .await
            .expect("redrive");
        assert_eq!(report.moved, 1);
        let left = q.dlq.lock().expect("lock").clone();
        assert_eq!(left.len(), 1);
        assert!(left[0].body.contains("job-1"));
    }

    /// Records in `store` the end `dl` was written for, as the stage that wrote it
    /// would have: claimed, ended with the notification as detail, announced.
    async fn ended(store: &MemoryStore, dl: &DeadLetter, holder: &str) {
        let attempt = if dl.stage == Stage::Processor {
            dl.attempts
        } else {
            1
        };
        let now = chrono::Utc::now();
        claim(store, dl, attempt, holder).await;
        let note = jobs_core::messages::Notification::for_dead_letter(dl, now);
        store
            .finish(&jobs_core::store::Finish {
                job_id: dl.job_id.clone(),
                stage: dl.stage,
                attempt,
                progress: Progress::Done(Some(dl.status)),
                detail: serde_json::to_value(&note).ok(),
                now,
            })
            .await
            .expect("finish");
        let mark = Mark::new(
            &dl.job_id,
            dl.stage,
            &note.notification_id(),
            Marked::Announced,
        );
        store.mark(&mark, now).await.expect("announce");
    }

    /// Claims `dl`'s job at `attempt` for `holder`, as a delivery of it would.
    async fn claim(store: &MemoryStore, dl: &DeadLetter, attempt: u32, holder: &str) {
        let fp = jobs_core::store::fingerprint(&dl.job);
        let claim = Claim {
            job_id: &dl.job_id,
            stage: dl.stage,
            fingerprint: &fp,
            legacy_fingerprint: None,
            attempt,
            lease_until: chrono::Utc::now() + chrono::TimeDelta::minutes(15),
            holder,
            token: "",
            history: None,
        };
        assert_eq!(
            store
                .claim(&claim, chrono::Utc::now())
                .await
                .expect("claim"),
            ClaimOutcome::Claimed
        );
    }

    fn record(store: &MemoryStore, dl: &DeadLetter) -> JobState {
        store
            .records
            .lock()
            .expect("lock")
            .get(&(dl.job_id.clone(), dl.stage.as_str()))
            .cloned()
            .expect("a record")
    }

    fn sent(q: &FakeQueues) -> usize {
        q.sent.lock().expect("lock").len()
    }

    /// Puts a letter back in the DLQ under message id `id`: a redrive that sent the
    /// copy but whose delete was lost, or a second copy of one dead letter.
    fn put_back(q: &FakeQueues, id: &str, dl: &DeadLetter) {
        q.dlq.lock().expect("lock").push(Held {
            message_id: id.into(),
            receipt: format!("r-{id}-{}", q.log().len()),
            body: body_of(dl),
            sent_at_ms: Some(0),
        });
    }

    #[tokio::test]
    async fn a_second_redrive_of_a_letter_whose_job_completed_neither_reopens_nor_reruns() {
        let dl = letter("job-1", Stage::Processor);
        let store = MemoryStore::default();
        ended(&store, &dl, "m-run-3").await;
        let q = FakeQueues::with(std::slice::from_ref(&dl));
        let report = redrive(&q, &store, &all(), false).await.expect("redrive");
        assert_eq!((report.moved, sent(&q)), (1, 1));
        // The redriven attempt 4 runs and completes; the delete of the letter was lost.
        claim(&store, &dl, 4, "m-run-4").await;
        let now = chrono::Utc::now();
        let done = Progress::Done(Some(JobStatus::Completed));
        store
            .finish(&jobs_core::store::Finish {
                job_id: "job-1".into(),
                stage: Stage::Processor,
                attempt: 4,
                progress: done,
                detail: None,
                now,
            })
            .await
            .expect("finish");
        let mark = Mark::new("job-1", Stage::Processor, "", Marked::Announced);
        store.mark(&mark, now).await.expect("announce");
        put_back(&q, "m0", &dl);

        let report = redrive(&q, &store, &all(), false).await.expect("redrive");
        let after = record(&store, &dl);
        assert_eq!(
            (after.progress, after.attempt, after.announced),
            (done, 4, true),
            "the completed job is left alone: {:?}",
            report.lines
        );
        assert_eq!(sent(&q), 1, "nothing sent again: {:?}", report.lines);
        assert_eq!(
            q.depth(),
            0,
            "the stale copy is deleted: {:?}",
            report.lines
        );
        assert_eq!((report.moved, report.skipped), (0, 1));
    }

    #[tokio::test]
    async fn two_dead_letters_of_one_job_redrive_it_once() {
        let dl = letter("job-1", Stage::Processor);
        let store = MemoryStore::default();
        ended(&store, &dl, "m-run-3").await;
        let q = FakeQueues::with(&[dl.clone(), dl.clone()]);
        let report = redrive(&q, &store, &all(), false).await.expect("redrive");
        assert_eq!(sent(&q), 1, "one copy sent: {:?}", report.lines);
        assert_eq!(q.depth(), 0, "both letters gone: {:?}", report.lines);
        assert_eq!((report.moved, report.skipped), (1, 1));
        let after = record(&store, &dl);
        assert_eq!((after.progress, after.attempt), (Progress::Retrying, 3));
    }

    #[tokio::test]
    async fn a_redrive_while_the_redriven_attempt_runs_does_not_overwrite_its_claim() {
        let dl = letter("job-1", Stage::Processor);
        let store = MemoryStore::default();
        ended(&store, &dl, "m-run-3").await;
        let q = FakeQueues::with(std::slice::from_ref(&dl));
        redrive(&q, &store, &all(), false).await.expect("redrive");
        claim(&store, &dl, 4, "m-run-4").await;
        let running = record(&store, &dl);
        put_back(&q, "m0", &dl);
        put_back(&q, "m1", &dl);

        let report = redrive(&q, &store, &all(), false).await.expect("redrive");
        assert_eq!(record(&store, &dl), running, "{:?}", report.lines);
        assert_eq!(sent(&q), 1, "{:?}", report.lines);
        assert_eq!(q.depth(), 0, "{:?}", report.lines);
    }

    #[tokio::test]
    async fn a_stale_rejection_is_told_apart_from_the_rejection_after_its_redrive() {
        let first = letter("job-1", Stage::Ingester);
        let store = MemoryStore::default();
        ended(&store, &first, "e-1").await;
        let q = FakeQueues::with(std::slice::from_ref(&first));
        redrive(&q, &store, &all(), false).await.expect("redrive");
        // The ingester rejects the redriven event again: a new end, a new letter.
        let mut second = first.clone();
        second.errors[0].timestamp += chrono::TimeDelta::seconds(5);
        second.errors[0].message = "still failing".into();
        ended(&store, &second, "e-2").await;
        put_back(&q, "m0", &first);
        put_back(&q, "m1", &second);

        let report = redrive(&q, &store, &all(), false).await.expect("redrive");
        assert_eq!(
            (report.moved, report.skipped, sent(&q), q.depth()),
            (1, 1, 2, 0),
            "{:?}",
            report.lines
        );
        assert!(
            report.lines.iter().any(|l| l.starts_with("job-1: sent")),
            "{:?}",
            report.lines
        );
        let after = record(&store, &second);
        assert_eq!(after.progress, Progress::Retrying);
    }

    #[tokio::test]
    async fn a_letter_whose_id_now_belongs_to_other_content_is_kept_and_reopens_nothing() {
        let dl = letter("job-1", Stage::Processor);
        let mut other = dl.clone();
        other.job =
            json!({"job_type": "user_onboarding", "message": {"user_id": "2", "user_name": "B"}});
        other.status = JobStatus::Completed;
        let store = MemoryStore::default();
        ended(&store, &other, "m-other").await;
        let before = record(&store, &other);
        let q = FakeQueues::with(std::slice::from_ref(&dl));
        let report = redrive(&q, &store, &all(), false).await.expect("redrive");
        assert_eq!(record(&store, &other), before, "{:?}", report.lines);
        assert_eq!((sent(&q), q.depth(), report.kept), (0, 1, 1));
    }

    #[tokio::test]
    async fn a_redrive_whose_send_failed_sends_when_run_again() {
        let dl = letter("job-1", Stage::Processor);
        let store = MemoryStore::default();
        ended(&store, &dl, "m-run-3").await;
        let refusing = FakeQueues {
            refuse_sends: true,
            ..FakeQueues::with(std::slice::from_ref(&dl))
        };
        let report = redrive(&refusing, &store, &all(), false)
            .await
            .expect("redrive");
        assert_eq!(report.failed, 1);
        // The record was reopened for this letter, but no copy went out.
        let q = FakeQueues::with(std::slice::from_ref(&dl));
        let report = redrive(&q, &store, &all(), false).await.expect("redrive");
        assert_eq!(
            (report.moved, sent(&q), q.depth()),
            (1, 1, 0),
            "{:?}",
            report.lines
        );
    }

    #[tokio::test]
    async fn listing_shows_characters_that_could_rewrite_the_screen_escaped() {
        let mut dl = letter("job-\u{202e}gpj.exe", Stage::Processor);
        dl.job_type = Some("type\u{1b}[2J".into());
        dl.errors[0].code = "code\u{7}".into();
        dl.errors[0].field = Some("f\u{2066}".into());
        dl.errors[0].message = "one\u{2028}two\u{2029}three\nfour\u{85}\u{9b}31m".into();
        let stranded = json!({"id": "evt-\u{2069}", "source": "jobs",
            "detail": {"id": "job-\u{200f}\r", "job_type": "x"}})
        .to_string();
        let q = FakeQueues::with(&[dl]);
        q.dlq.lock().expect("lock").push(Held {
            message_id: "m-\u{202a}".into(),
            receipt: "r-s".into(),
            body: stranded,
            sent_at_ms: Some(0),
        });
        let lines = list(&q, &all()).await.expect("list");
        let text = lines.join("\n");
        for raw in [
            '\u{202e}', '\u{1b}', '\u{7}', '\u{2066}', '\u{2028}', '\u{2029}', '\u{85}', '\u{9b}',
            '\u{200f}', '\r',
        ] {
            assert!(
                !text.contains(raw),
                "U+{:04X} printed raw: {text:?}",
                u32::from(raw)
            );
        }
        assert!(
            lines[0].starts_with("job-\\u{202e}gpj.exe  FAILED"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("type\\u{1b}[2J"), "{}", lines[0]);
        assert!(
            lines[0].contains("one\\u{2028}two\\u{2029}three\\nfour"),
            "{}",
            lines[0]
        );
        assert_eq!(
            lines[0].matches('\n').count(),
            1,
            "only the line break before the history: {:?}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("job-\\u{200f}\\r  STRANDED"),
            "{}",
            lines[1]
        );
    }

    #[tokio::test]
    async fn listing_shows_the_history_and_leaves_the_queue_as_it_was() {
        let q = FakeQueues::with(&[letter("job-1", Stage::Processor)]);
        let lines = list(&q, &all()).await.expect("list");
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("job-1  FAILED at processor") && lines[0].contains("injected"),
            "{}",
            lines[0]
        );
        assert_eq!(q.dlq.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn a_redrive_of_a_job_the_ingester_could_not_forward_lets_the_processor_run_it() {
        let mut dl = letter("job-1", Stage::Ingester);
        dl.status = JobStatus::Failed;
        dl.errors[0].code = "forward_failed".into();
        let store = MemoryStore::default();
        let fp = jobs_core::store::fingerprint(&dl.job);
        let note = jobs_core::messages::Notification::for_dead_letter(&dl, chrono::Utc::now());
        let end = jobs_core::store::Stop {
            job_id: "job-1",
            fingerprint: &fp,
            legacy_fingerprint: None,
            holder: "m-5",
            token: "t-5",
            lease_until: chrono::Utc::now(),
            status: JobStatus::Failed,
            detail: serde_json::to_value(&note).expect("json"),
            now: chrono::Utc::now(),
        };
        store.stop(&end).await.expect("ended");
        let q = FakeQueues::with(std::slice::from_ref(&dl));
        // Not announced yet: the letter waits, and nothing is reopened.
        let report = redrive(&q, &store, &all(), false).await.expect("redrive");
        assert_eq!(
            (report.moved, report.kept, sent(&q)),
            (0, 1, 0),
            "{:?}",
            report.lines
        );
        let mark = Mark::new(
            "job-1",
            Stage::Processor,
            &note.notification_id(),
            Marked::Announced,
        );
        store
            .mark(&mark, chrono::Utc::now())
            .await
            .expect("announce");
        let report = redrive(&q, &store, &all(), false).await.expect("redrive");
        assert_eq!((report.moved, sent(&q)), (1, 1), "{:?}", report.lines);
        // Its forward fails again on the last receive (jobs-todo still refuses): the
        // reopened stop is stopped again, a new end, not taken for a forward that got
        // through (sequence 1).
        let again = jobs_core::store::Stop {
            holder: "m-6",
            token: "t-6",
            ..end.clone()
        };
        assert_eq!(store.stop(&again).await.expect("stop"), Forestalled::Ended);
        // As a second redrive reads its letter: from the DLQ's JSON.
        let dl: DeadLetter =
            serde_json::from_str(&serde_json::to_string(&dl).expect("json")).expect("letter");
        let reopened = Reopen {
            job_id: "job-1",
            stage: Stage::Processor,
            fingerprint: &fp,
            legacy_fingerprint: None,
            status: JobStatus::Failed,
            attempt: STOP_ATTEMPT,
            last_error: dl.errors.last(),
            below: STOP_ATTEMPT,
            by: "dl-again",
        };
        store
            .mark(&mark, chrono::Utc::now())
            .await
            .expect("announce");
        assert_eq!(
            store
                .reopen(&reopened, chrono::Utc::now())
                .await
                .expect("reopen"),
            Reopened::Now
        );
        // The redriven event is forwarded again; its copy on jobs-todo must run.
        let processor = Claim {
            job_id: "job-1",
            stage: Stage::Processor,
            fingerprint: &fp,
            legacy_fingerprint: None,
            attempt: 1,
            lease_until: chrono::Utc::now() + chrono::TimeDelta::minutes(15),
            holder: "todo-1",
            token: "",
            history: None,
        };
        let outcome = store
            .claim(&processor, chrono::Utc::now())
            .await
            .expect("claim");
        assert_eq!(outcome, ClaimOutcome::Claimed, "{:?}", report.lines);
    }

    /// A mailbox whose every redriven copy is rejected again at once, as the ingester
    /// does with a job nothing was fixed in: the job ends anew and a new dead letter,
    /// sent now, lands in the DLQ while the redrive is still sweeping it.
    struct Bouncing<'a> {
        q: FakeQueues,
        store: &'a MemoryStore,
        again: DeadLetter,
    }

    #[async_trait]
    impl Mailbox for Bouncing<'_> {
        async fn receive(&self) -> Result<Vec<Held>, OpsError> {
            self.q.receive().await
        }
        async fn release(&self, held: &Held) -> Result<(), OpsError> {
            self.q.release(held).await
        }
        async fn delete(&self, held: &Held) -> Result<(), OpsError> {
            self.q.delete(held).await
        }
        async fn send(
            &self,
            to: Destination,
            body: &str,
            attributes: &[(&'static str, String)],
        ) -> Result<(), OpsError> {
            self.q.send(to, body, attributes).await?;
            let n = sent(&self.q);
            if n <= 5 {
                ended(self.store, &self.again, &format!("e-again-{n}")).await;
                self.q.dlq.lock().expect("lock").push(Held {
                    message_id: format!("again-{n}"),
                    receipt: format!("r-again-{n}"),
                    body: body_of(&self.again),
                    sent_at_ms: Some(chrono::Utc::now().timestamp_millis()),
                });
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_letter_written_while_the_redrive_runs_waits_for_the_next_one() {
        let first = letter("job-1", Stage::Ingester);
        let store = MemoryStore::default();
        ended(&store, &first, "e-1").await;
        let mut again = first.clone();
        again.errors[0].message = "still failing".into();
        let mailbox = Bouncing {
            q: FakeQueues::with(std::slice::from_ref(&first)),
            store: &store,
            again,
        };
        let report = redrive(&mailbox, &store, &all(), false)
            .await
            .expect("redrive");
        assert_eq!(
            sent(&mailbox.q),
            1,
            "redriven again within one command: {:?}",
            report.lines
        );
        assert_eq!((report.moved, report.skipped), (1, 0), "{:?}", report.lines);
        // The new letter is left for the next redrive, and it is the only one.
        let left: Vec<String> = mailbox
            .q
            .dlq
            .lock()
            .expect("lock")
            .iter()
            .map(|h| h.message_id.clone())
            .collect();
        assert_eq!(left, ["again-1"]);
    }
}
