//! The operator subcommands: `job-generator dlq list|redrive`, `job-generator replay` and
//! `job-generator job <id>`.

use crate::dlq::{self, Selection, SqsMailbox};
use clap::{Args, Subcommand};
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

/// Where the pipeline runs.
#[derive(Debug, Args)]
pub struct Target {
    /// AWS endpoint, e.g. http://127.0.0.1:4566 for an emulator.
    #[arg(long, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    endpoint_url: Option<String>,
    /// AWS region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
    #[arg(long, default_value = "dead-letter-queue", value_name = "NAME")]
    dead_letter_queue: String,
    #[arg(long, default_value = "jobs-todo", value_name = "NAME")]
    jobs_todo_queue: String,
    #[arg(long, default_value = "ingester-queue", value_name = "NAME")]
    ingester_queue: String,
    /// The job state table.
    #[arg(long, default_value = "jobs", value_name = "NAME")]
    table: String,
}

impl Target {
    async fn sdk(&self) -> aws_config::SdkConfig {
        crate::sdk_config(&self.region, self.endpoint_url.as_deref()).await
    }

    async fn mailbox(&self, sdk: &aws_config::SdkConfig) -> Result<SqsMailbox, String> {
        SqsMailbox::connect(
            aws_sdk_sqs::Client::new(sdk),
            &self.dead_letter_queue,
            &self.jobs_todo_queue,
            &self.ingester_queue,
        )
        .await
        .map_err(|e| e.to_string())
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
            let mailbox = target.mailbox(&sdk).await?;
            match action {
                DlqAction::List { job_ids, max } => {
                    let selection = Selection {
                        job_ids: job_ids.into_iter().collect(),
                        max,
                    };
                    list(&mailbox, &selection).await
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
                    redrive(&mailbox, &store, &selection, dry_run).await
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

/// `dlq list`: the letters on stdout, their count on stderr.
async fn list(mailbox: &SqsMailbox, selection: &Selection) -> Result<i32, String> {
    let lines = dlq::list(mailbox, selection)
        .await
        .map_err(|e| e.to_string())?;
    for line in &lines {
        println!("{line}");
    }
    eprintln!("{} dead letter(s)", lines.len());
    Ok(0)
}

/// `dlq redrive`: a line per letter, the tally on stderr; 1 when a letter could not
/// be moved.
async fn redrive(
    mailbox: &SqsMailbox,
    store: &DynamoStore,
    selection: &Selection,
    dry_run: bool,
) -> Result<i32, String> {
    let report = dlq::redrive(mailbox, store, selection, dry_run)
        .await
        .map_err(|e| e.to_string())?;
    for line in &report.lines {
        println!("{}", dlq::printable(line));
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
    let mailbox = target.mailbox(&sdk).await?;
    let selection = Selection {
        job_ids: [job_id].into(),
        max: usize::MAX,
    };
    for line in dlq::list(&mailbox, &selection)
        .await
        .map_err(|e| e.to_string())?
    {
        println!("dead letter: {line}");
    }
    Ok(0)
}
