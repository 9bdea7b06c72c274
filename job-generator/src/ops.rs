//! The operator subcommands: `job-generator dlq list|redrive`, `job-generator replay` and
//! `job-generator job <id>`.

use clap::{Args, Subcommand};
use job_generator::dlq::{self, Selection, SqsMailbox};
use jobs_core::store::dynamo::DynamoStore;
use jobs_core::store::JobStore;
use std::collections::HashSet;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Look into the dead-letter queue, or send jobs from it back into the pipeline.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        #[command(flatten)]
        target: Target,
    },
    /// Send the archived job events of a time window through the pipeline again.
    /// Jobs that ended are not run again, unless --rerun names their status.
    Replay {
        #[command(flatten)]
        args: crate::replay::ReplayArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Show one job's state records and any dead letters it left.
    Job {
        /// The job id.
        job_id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Print the dead letters with their error histories; the queue is left as it was.
    List {
        /// Only these job ids (repeatable).
        #[arg(long = "job-id", value_name = "ID")]
        job_ids: Vec<String>,
        /// At most this many dead letters.
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
    /// Send dead letters back: processor failures to jobs-todo as their next attempt,
    /// rejections to the ingester queue to be validated again.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["job_ids", "all"])))]
    Redrive {
        /// Only these job ids (repeatable).
        #[arg(long = "job-id", value_name = "ID")]
        job_ids: Vec<String>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "job_ids")]
        all: bool,
        /// Say what would be sent where, and send nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many dead letters.
        #[arg(long, default_value_t = usize::MAX, hide_default_value = true)]
        max: usize,
    },
}

/// Where the pipeline runs. Global, so these may follow `dlq`'s action too.
#[derive(Debug, Args)]
pub struct Target {
    /// AWS endpoint, e.g. http://127.0.0.1:4566 for an emulator.
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    endpoint_url: Option<String>,
    /// AWS region.
    #[arg(long, global = true, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
    /// A dead-letter queue to read (repeatable). By default both: the shared one, which
    /// holds every dead letter and what SQS moved out of the standard queues, and the
    /// FIFO one, which holds what SQS moved out of jobs-todo.fifo.
    #[arg(
        long = "dead-letter-queue",
        global = true,
        value_name = "NAME",
        default_values_t = [String::from("dead-letter-queue"), String::from("dead-letter-queue.fifo")]
    )]
    dead_letter_queues: Vec<String>,
    /// Where processor failures and stranded jobs are redriven to.
    #[arg(long, global = true, default_value = "jobs-todo", value_name = "NAME")]
    jobs_todo_queue: String,
    /// Where rejections and stranded events are redriven to.
    #[arg(
        long,
        global = true,
        default_value = "ingester-queue",
        value_name = "NAME"
    )]
    ingester_queue: String,
    /// The job state table.
    #[arg(long, global = true, default_value = "jobs", value_name = "NAME")]
    table: String,
}

impl Target {
    async fn sdk(&self) -> aws_config::SdkConfig {
        crate::sdk_config(&self.region, self.endpoint_url.as_deref()).await
    }

    /// One mailbox per dead-letter queue, each looked up before any is read, so a
    /// misspelt name fails the command before it moves anything.
    async fn mailboxes(&self, sdk: &aws_config::SdkConfig) -> Result<Vec<SqsMailbox>, String> {
        let client = aws_sdk_sqs::Client::new(sdk);
        let mut mailboxes = Vec::new();
        for dlq in &self.dead_letter_queues {
            let mailbox = SqsMailbox::connect(
                client.clone(),
                dlq,
                &self.jobs_todo_queue,
                &self.ingester_queue,
            )
            .await
            .map_err(|e| format!("{e} (--dead-letter-queue {dlq})"))?;
            mailboxes.push(mailbox);
        }
        Ok(mailboxes)
    }
}

/// Runs a subcommand; returns the exit code (0 done, 1 something left undone, 2 error).
pub async fn run(command: Command) -> i32 {
    match execute(command).await {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("job-generator: {msg}");
            2
        }
    }
}

async fn execute(command: Command) -> Result<i32, String> {
    match command {
        Command::Dlq { action, target } => {
            let sdk = target.sdk().await;
            let mailboxes = target.mailboxes(&sdk).await?;
            match action {
                DlqAction::List { job_ids, max } => {
                    let selection = Selection {
                        job_ids: job_ids.into_iter().collect(),
                        max,
                    };
                    list(&mailboxes, &selection).await
                }
                DlqAction::Redrive {
                    job_ids,
                    all: _,
                    dry_run,
                    max,
                } => {
                    let selection = Selection {
                        job_ids: job_ids.into_iter().collect::<HashSet<_>>(),
                        max,
                    };
                    let store =
                        DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &target.table);
                    redrive(&mailboxes, &store, &selection, dry_run).await
                }
            }
        }
        Command::Replay { args, target } => {
            let sdk = target.sdk().await;
            let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &target.table);
            let events = aws_sdk_eventbridge::Client::new(&sdk);
            crate::replay::run(&args, &events, &store).await
        }
        Command::Job { job_id, target } => show_job(job_id, &target).await,
    }
}

/// `dlq list`: the letters on stdout, their count per queue on stderr.
async fn list(mailboxes: &[SqsMailbox], selection: &Selection) -> Result<i32, String> {
    let mut counts = Vec::new();
    let mut selection = selection.clone();
    for mailbox in mailboxes {
        if selection.max == 0 {
            break;
        }
        let lines = dlq::list(mailbox, &selection)
            .await
            .map_err(|e| e.to_string())?;
        for line in &lines {
            println!("{line}");
        }
        selection.max = selection.max.saturating_sub(lines.len());
        counts.push(format!("{} in {}", lines.len(), mailbox.name));
    }
    eprintln!("dead letter(s): {}", counts.join(", "));
    Ok(0)
}

/// `dlq redrive`: a line per letter, the tally on stderr; 1 when a letter could not
/// be moved.
async fn redrive(
    mailboxes: &[SqsMailbox],
    store: &DynamoStore,
    selection: &Selection,
    dry_run: bool,
) -> Result<i32, String> {
    let mut report = dlq::Report::default();
    let mut selection = selection.clone();
    for mailbox in mailboxes {
        if selection.max == 0 {
            break;
        }
        let one = dlq::redrive(mailbox, store, &selection, dry_run)
            .await
            .map_err(|e| format!("{e} (in {})", mailbox.name))?;
        for line in &one.lines {
            println!("{}", dlq::printable(line));
        }
        selection.max = selection.max.saturating_sub(one.matched());
        report.absorb(one);
    }
    let verb = if dry_run { "would move" } else { "moved" };
    eprintln!(
        "{verb} {}, kept {}, skipped {}, failed {}",
        report.moved, report.kept, report.skipped, report.failed
    );
    Ok(i32::from(report.failed > 0))
}

/// `job <id>`: the job's state records, then the dead letters it left.
async fn show_job(job_id: String, target: &Target) -> Result<i32, String> {
    let sdk = target.sdk().await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &target.table);
    let states = store.get(&job_id).await.map_err(|e| e.to_string())?;
    if states.is_empty() {
        println!(
            "{}: no state recorded (never claimed, or expired)",
            dlq::printable(&job_id)
        );
    }
    for s in &states {
        println!(
            "{}  {}: {}  attempt {}  announced {}  updated {}",
            dlq::printable(&job_id),
            s.stage.as_str(),
            s.progress.as_str(),
            s.attempt,
            s.announced,
            jobs_core::messages::rfc3339::format(&s.updated_at)
        );
        if let Some(detail) = &s.detail {
            println!("    {}", dlq::printable(&detail.to_string()));
        }
    }
    let selection = Selection {
        job_ids: [job_id].into(),
        max: usize::MAX,
    };
    for mailbox in target.mailboxes(&sdk).await? {
        for line in dlq::list(&mailbox, &selection)
            .await
            .map_err(|e| e.to_string())?
        {
            println!("dead letter: {line}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The subcommands as a command line parses them.
    #[derive(Debug, Parser)]
    struct Line {
        #[command(subcommand)]
        command: Command,
    }

    fn dead_letter_queues(args: &[&str]) -> Vec<String> {
        let line =
            Line::try_parse_from(std::iter::once("job-generator").chain(args.iter().copied()))
                .expect("parses");
        match line.command {
            Command::Dlq { target, .. } => target.dead_letter_queues,
            other => panic!("not dlq: {other:?}"),
        }
    }

    #[test]
    fn dlq_reads_both_dead_letter_queues_unless_told_which() {
        // A keyed job's record that SQS gave up on is in the FIFO one: an operator's
        // `dlq redrive --all` must find it too.
        assert_eq!(
            dead_letter_queues(&["dlq", "redrive", "--all"]),
            ["dead-letter-queue", "dead-letter-queue.fifo"]
        );
        assert_eq!(
            dead_letter_queues(&[
                "dlq",
                "list",
                "--dead-letter-queue",
                "dead-letter-queue.fifo"
            ]),
            ["dead-letter-queue.fifo"]
        );
        // Global: the option may come before the action or after it, and repeats.
        assert_eq!(
            dead_letter_queues(&["dlq", "--dead-letter-queue", "a", "redrive", "--all"]),
            ["a"]
        );
        assert_eq!(
            dead_letter_queues(&[
                "dlq",
                "redrive",
                "--all",
                "--dead-letter-queue",
                "a",
                "--dead-letter-queue",
                "b"
            ]),
            ["a", "b"]
        );
    }
}
