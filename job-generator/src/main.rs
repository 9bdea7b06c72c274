//! `job-generator`: puts realistic job traffic, some of it malformed, on EventBridge
//! (source `jobs`, detail type `JobEvent`), or sends the jobs of a file.

use job_generator::catalog;
mod ops;
mod replay;
mod route;
mod send;

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use catalog::{next_job, CatalogConfig, Planned};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use jobs_core::telemetry::{propagation, Instruments, JobSpan, Telemetry};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use send::{send, EntryOutcome, EventSink, RetryPolicy, MAX_ENTRIES, PUT_EVENTS_RETRY};
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// Put job events on EventBridge: generated traffic (bursts with pauses, or a steady
/// rate) or the jobs of a file. Stops on time and reports what EventBridge accepted.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<ops::Command>,
    /// Run for this many minutes (fractions allowed). Default: 1, unless --count or --file is given.
    #[arg(long, value_name = "N")]
    minutes: Option<f64>,
    /// Stop after this many jobs.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Send at this steady rate (jobs per second) instead of bursts with random pauses.
    #[arg(long, value_name = "JOBS_PER_SEC")]
    rate: Option<f64>,
    /// Share of generated jobs drawn from the malformed catalogue (0 to 1).
    #[arg(long, default_value_t = 0.2, value_name = "RATIO")]
    malformed_ratio: f64,
    /// Share of valid jobs that fail their first two attempts (0 to 1). Needs
    /// FAULT_INJECTION=on in the processor; elsewhere they are ordinary jobs.
    #[arg(long, default_value_t = 0.0, value_name = "RATIO")]
    flaky_ratio: f64,
    /// Share of valid jobs that are sagas: a few steps (create account, workspace...),
    /// undone in reverse when one fails for good (0 to 1).
    #[arg(long, default_value_t = 0.2, value_name = "RATIO")]
    saga_ratio: f64,
    /// Spread valid jobs over N ordering keys (key-0 ... key-N-1): jobs sharing a key run
    /// one at a time, in the order the ingester forwarded them. 0: no keys.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keys: u32,
    /// Share of jobs sent a second time with the same id (0 to 1), as an at-least-once
    /// producer would; the pipeline must end each id once.
    #[arg(long, default_value_t = 0.0, value_name = "RATIO")]
    duplicate_ratio: f64,
    /// Seed for a reproducible run (same jobs, same ids, same pauses).
    #[arg(long)]
    seed: Option<u64>,
    /// Send the jobs in this file instead: one JSON job per line, or one JSON job.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Longest `timeout` of a generated long_running_job, in seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    max_job_seconds: u64,
    /// Pause between bursts, in seconds, as MIN..MAX.
    #[arg(long, default_value = "2..10", value_name = "MIN..MAX", value_parser = parse_range)]
    pause: (f64, f64),
    /// Jobs per burst, as MIN..MAX.
    #[arg(long, default_value = "1..5", value_name = "MIN..MAX", value_parser = parse_range)]
    burst: (f64, f64),
    /// EventBridge endpoint, e.g. http://127.0.0.1:4566 for an emulator.
    #[arg(long, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    endpoint_url: Option<String>,
    /// AWS region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
    /// Event bus name.
    #[arg(long, default_value = "default")]
    bus: String,
    /// Write one JSON line per job to this file: its id, event id and expected verdict.
    #[arg(long, value_name = "PATH")]
    manifest: Option<PathBuf>,
    /// Send even when no enabled rule on the bus routes `jobs` events to a target
    /// (EventBridge would accept the events and drop them).
    #[arg(long)]
    skip_route_check: bool,
}

fn parse_range(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected MIN..MAX, got {s:?}"))?;
    let a: f64 = a
        .trim()
        .parse()
        .map_err(|_| format!("MIN in {s:?} is not a number"))?;
    let b: f64 = b
        .trim()
        .parse()
        .map_err(|_| format!("MAX in {s:?} is not a number"))?;
    if a < 0.0 || b < a {
        return Err(format!("expected 0 <= MIN <= MAX, got {s:?}"));
    }
    Ok((a, b))
}

/// A run that cannot go on: a message for the user (exit code 2).
#[derive(Debug)]
struct Failure(String);

fn fail<T>(msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(msg.into()))
}

struct EventBridge {
    client: aws_sdk_eventbridge::Client,
    bus: String,
}

impl EventSink for EventBridge {
    async fn put(&self, details: &[String]) -> Result<Vec<EntryOutcome>, String> {
        let entries = details
            .iter()
            .map(|d| {
                PutEventsRequestEntry::builder()
                    .source(route::SOURCE)
                    .detail_type("JobEvent")
                    .event_bus_name(&self.bus)
                    .detail(d)
                    .build()
            })
            .collect();
        let out = self
            .client
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| aws_sdk_eventbridge::error::DisplayErrorContext(&e).to_string())?;
        Ok(out
            .entries()
            .iter()
            .map(|e| match (e.event_id(), e.error_code()) {
                (Some(id), None) => EntryOutcome::Accepted {
                    event_id: id.to_owned(),
                },
                (_, code) => EntryOutcome::Refused {
                    code: code.unwrap_or("Unknown").to_owned(),
                    message: e.error_message().unwrap_or_default().to_owned(),
                },
            })
            .collect())
    }
}

/// Counters for the summary.
#[derive(Debug, Default)]
struct Totals {
    sent: u64,
    malformed: u64,
    refused: u64,
    retried: u64,
    unsent: u64,
}

impl Totals {
    /// The jobs given to EventBridge, whatever became of them.
    fn attempted(&self) -> u64 {
        self.sent + self.refused + self.unsent
    }
}

/// Where jobs come from.
enum Source {
    Generated {
        rng: Box<StdRng>,
        config: CatalogConfig,
        duplicate_ratio: f64,
        /// A job to send once more, right after itself.
        repeat: Option<Planned>,
    },
    File(std::vec::IntoIter<Planned>),
}

impl Source {
    fn next(&mut self) -> Option<Planned> {
        match self {
            Source::Generated {
                rng,
                config,
                duplicate_ratio,
                repeat,
            } => {
                if let Some(again) = repeat.take() {
                    return Some(again);
                }
                let job = next_job(rng, config);
                if rng.random_bool(*duplicate_ratio) {
                    *repeat = Some(job.clone());
                }
                Some(job)
            }
            Source::File(jobs) => jobs.next(),
        }
    }
}

/// Refuses to send into a bus where no rule would deliver the jobs.
async fn check_route(sink: &EventBridge) -> Result<(), Failure> {
    let bus = &sink.bus;
    match route::find(&sink.client, bus).await {
        Ok(route::Route::Found(_)) => Ok(()),
        Ok(route::Route::Unknown(why)) => {
            eprintln!(
                "job-generator: cannot list the rules of bus {bus:?} ({why}); sending anyway"
            );
            Ok(())
        }
        Ok(route::Route::Missing) => fail(format!(
            "no enabled rule on bus {bus:?} routes source {:?} to a target, so EventBridge would \
             accept the jobs and drop them: provision the pipeline first (make up, or docker \
             compose up -d and wait for the terraform service to exit), or pass --skip-route-check",
            route::SOURCE
        )),
        Err(e) => fail(format!("cannot list the rules of bus {bus:?}: {e}")),
    }
}

fn read_jobs(path: &PathBuf) -> Result<Vec<Planned>, Failure> {
    let text = std::fs::read_to_string(path)
        .or_else(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    // A whole-file JSON value is one job (the original demo's files); otherwise JSON lines.
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return Ok(vec![Planned {
            detail: v,
            expected_rejection: None,
        }]);
    }
    let mut jobs = Vec::new();
    for (n, line) in std::io::Cursor::new(text).lines().enumerate() {
        let line = line.or_else(|e| fail(format!("{}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let detail = serde_json::from_str(&line).or_else(|e| {
            fail(format!(
                "{} line {}: not valid JSON: {e}",
                path.display(),
                n + 1
            ))
        })?;
        jobs.push(Planned {
            detail,
            expected_rejection: None,
        });
    }
    Ok(jobs)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = Args::parse();
    if let Some(command) = args.command.take() {
        std::process::exit(ops::run(command).await);
    }
    match run(args).await {
        Ok(totals) if totals.unsent > 0 => std::process::exit(1),
        Ok(_) => {}
        Err(Failure(msg)) => {
            eprintln!("job-generator: {msg}");
            std::process::exit(2);
        }
    }
}

async fn run(args: Args) -> Result<Totals, Failure> {
    check_args(&args)?;
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let source = source(&args, seed)?;
    let minutes = args
        .minutes
        .or((args.count.is_none() && args.file.is_none()).then_some(1.0));
    let started = Instant::now();
    let deadline = minutes.map(|m| started + Duration::from_secs_f64(m * 60.0));
    let sink = connect(&args).await;
    if !args.skip_route_check {
        check_route(&sink).await?;
    }
    let manifest = match &args.manifest {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p)
                .or_else(|e| fail(format!("cannot create {}: {e}", p.display())))?,
        )),
        None => None,
    };
    let telemetry = Telemetry::from_env("job-generator")
        .or_else(|e| fail(format!("cannot set up telemetry: {e}")))?;
    // The generator logs with eprintln!, not `tracing`: its spans need only the span layer.
    telemetry.install();
    let mut traffic = Traffic {
        instruments: telemetry.instruments(),
        progress: Progress::new(args.count, minutes),
        pacing_rng: StdRng::seed_from_u64(seed ^ 0x5eed),
        policy: PUT_EVENTS_RETRY,
        totals: Totals::default(),
        args: &args,
        source,
        sink,
        manifest,
        started,
        deadline,
    };
    traffic.run(&telemetry).await?;
    telemetry.shutdown().await;
    let totals = traffic.totals;
    print_summary(&totals, started.elapsed().as_secs_f64());
    Ok(totals)
}

/// Refuses ratios, rates and durations that make no sense, naming the flag.
fn check_args(args: &Args) -> Result<(), Failure> {
    for (flag, ratio) in [
        ("--malformed-ratio", args.malformed_ratio),
        ("--flaky-ratio", args.flaky_ratio),
        ("--saga-ratio", args.saga_ratio),
        ("--duplicate-ratio", args.duplicate_ratio),
    ] {
        if !(0.0..=1.0).contains(&ratio) {
            return fail(format!("{flag} must be between 0 and 1, got {ratio}"));
        }
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return fail("--rate must be a positive number of jobs per second");
    }
    if args.minutes.is_some_and(|m| !(m > 0.0 && m.is_finite())) {
        return fail("--minutes must be a positive number");
    }
    Ok(())
}

/// The jobs of `--file`, else the catalogue drawn from with `seed`.
fn source(args: &Args, seed: u64) -> Result<Source, Failure> {
    Ok(match &args.file {
        Some(path) => Source::File(read_jobs(path)?.into_iter()),
        None => Source::Generated {
            rng: Box::new(StdRng::seed_from_u64(seed)),
            config: CatalogConfig {
                malformed_ratio: args.malformed_ratio,
                max_job_seconds: args.max_job_seconds,
                flaky_ratio: args.flaky_ratio,
                saga_ratio: args.saga_ratio,
                keys: args.keys,
            },
            duplicate_ratio: args.duplicate_ratio,
            repeat: None,
        },
    })
}

/// The bus to send to.
async fn connect(args: &Args) -> EventBridge {
    let sdk = sdk_config(&args.region, args.endpoint_url.as_deref()).await;
    EventBridge {
        client: aws_sdk_eventbridge::Client::new(&sdk),
        bus: args.bus.clone(),
    }
}

/// The SDK's configuration for `region`, at `endpoint_url` when one is given; an
/// endpoint (an emulator) without credentials in the environment gets test ones.
async fn sdk_config(region: &str, endpoint_url: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()));
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            loader = loader.test_credentials();
        }
    }
    loader.load().await
}

fn print_summary(totals: &Totals, secs: f64) {
    println!(
        "sent {} jobs in {:.1} s ({:.2} jobs/s): {} valid, {} malformed; refused by EventBridge: {}; \
         entries retried: {}; unsent: {}",
        totals.sent,
        secs,
        totals.sent as f64 / secs.max(0.001),
        totals.sent - totals.malformed,
        totals.malformed,
        totals.refused,
        totals.retried,
        totals.unsent
    );
}

/// A run in progress: where the jobs come from and go, and what has happened so far.
struct Traffic<'a> {
    args: &'a Args,
    source: Source,
    sink: EventBridge,
    manifest: Option<std::io::BufWriter<std::fs::File>>,
    instruments: Instruments,
    progress: Progress,
    /// Draws burst sizes, pauses and retry jitter, apart from the jobs' own draws so
    /// that a seed gives the same jobs whatever the pacing.
    pacing_rng: StdRng,
    policy: RetryPolicy,
    totals: Totals,
    started: Instant,
    deadline: Option<Instant>,
}

impl Traffic<'_> {
    /// Sends batch after batch until the jobs, the time or the user run out, then
    /// flushes the manifest.
    async fn run(&mut self, telemetry: &Telemetry) -> Result<(), Failure> {
        let stop = tokio::signal::ctrl_c();
        tokio::pin!(stop);
        loop {
            let mut batch: Vec<Planned> = (0..self.batch_size())
                .map_while(|_| self.source.next())
                .collect();
            if batch.is_empty() {
                break;
            }
            self.send(&mut batch).await?;
            self.progress.update(&self.totals, self.started);
            telemetry.flush_if_due().await;
            let pause = self.pause();
            let wake = self
                .deadline
                .map_or(Instant::now() + pause, |d| d.min(Instant::now() + pause));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = &mut stop => { self.progress.println("interrupted".into()); break; }
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        if let Some(m) = self.manifest.as_mut() {
            m.flush()
                .or_else(|e| fail(format!("cannot write the manifest: {e}")))?;
        }
        self.progress.finish();
        Ok(())
    }

    /// How many jobs the next batch takes: what the rate owes (at least one, at most
    /// five batches' worth), a whole batch from a file, else a random burst; never more
    /// than `--count` leaves.
    fn batch_size(&mut self) -> u64 {
        let args = self.args;
        let done = self.totals.attempted();
        let due = match args.rate {
            Some(rate) => {
                let owed = (self.started.elapsed().as_secs_f64() * rate).floor() as u64 + 1;
                owed.saturating_sub(done).clamp(1, 5 * MAX_ENTRIES as u64)
            }
            None if args.file.is_some() => MAX_ENTRIES as u64,
            None => self
                .pacing_rng
                .random_range(args.burst.0..=args.burst.1)
                .round()
                .max(1.0) as u64,
        };
        let room = args.count.map_or(due, |c| c.saturating_sub(done));
        due.min(room)
    }

    /// Sends one batch and counts, reports and records what became of each job.
    async fn send(&mut self, batch: &mut [Planned]) -> Result<(), Failure> {
        // One PRODUCER span per job, each the root of the job's trace; its context
        // travels in the detail (EventBridge keeps no headers).
        let spans: Vec<JobSpan> = batch
            .iter_mut()
            .map(|p| producer_span(&self.instruments, &self.args.bus, p))
            .collect();
        let details: Vec<String> = batch.iter().map(|p| p.detail.to_string()).collect();
        let report = send(
            &self.sink,
            &details,
            &self.policy,
            self.deadline,
            &mut self.pacing_rng,
        )
        .await;
        let totals = &mut self.totals;
        totals.retried += report.retried;
        for (i, event_id) in &report.accepted {
            totals.sent += 1;
            totals.malformed += u64::from(batch[*i].expected_rejection.is_some());
            spans[*i].set_attribute("messaging.message.id", event_id.clone());
            if batch[*i].job_id().is_none() {
                spans[*i].set_job(event_id, None);
            }
            record(
                &mut self.manifest,
                &batch[*i],
                Some(event_id),
                "sent",
                &spans[*i],
            )?;
        }
        for (i, why) in &report.refused {
            totals.refused += 1;
            spans[*i].fail("refused", why);
            self.progress
                .println(format!("refused by EventBridge: {why}"));
            record(&mut self.manifest, &batch[*i], None, "refused", &spans[*i])?;
        }
        for (i, why) in &report.unsent {
            totals.unsent += 1;
            spans[*i].fail("unsent", why);
            self.progress.println(format!("not sent: {why}"));
            record(&mut self.manifest, &batch[*i], None, "unsent", &spans[*i])?;
        }
        spans.iter().for_each(JobSpan::end);
        Ok(())
    }

    /// How long to wait before the next batch: until the rate is owed one again, none
    /// between the batches of a file, else a random pause.
    fn pause(&mut self) -> Duration {
        let args = self.args;
        match args.rate {
            Some(rate) => {
                let next_due = self.totals.attempted() as f64 / rate;
                let elapsed = self.started.elapsed().as_secs_f64();
                Duration::from_secs_f64((next_due - elapsed).max(0.0))
            }
            None if args.file.is_some() => Duration::ZERO,
            None => {
                Duration::from_secs_f64(self.pacing_rng.random_range(args.pause.0..=args.pause.1))
            }
        }
    }
}

/// Starts the `send <bus>` span for a job and writes its context into the detail as
/// `trace_context` (only into a JSON object: other details cannot carry it). A
/// detail that already carries a context continues that trace.
fn producer_span(instruments: &Instruments, bus: &str, planned: &mut Planned) -> JobSpan {
    let parent = propagation::detail_trace_context(&planned.detail)
        .and_then(|tc| propagation::from_trace_context(&tc))
        .unwrap_or_default();
    let span = instruments.producer_span(EVENTBRIDGE, bus, &parent);
    let job_type = planned.detail.get("job_type").and_then(Value::as_str);
    match (planned.job_id(), job_type) {
        (Some(id), _) => span.set_job(id, job_type),
        (None, Some(t)) => span.set_attribute("job.type", t.to_owned()),
        (None, None) => {}
    }
    if let (Some(tc), Value::Object(detail)) = (
        propagation::to_trace_context(span.context()),
        &mut planned.detail,
    ) {
        detail.insert("trace_context".into(), json!(tc));
    }
    span
}

/// `messaging.system` for EventBridge (the conventions name none).
const EVENTBRIDGE: &str = "aws_eventbridge";

fn record(
    manifest: &mut Option<std::io::BufWriter<std::fs::File>>,
    planned: &Planned,
    event_id: Option<&String>,
    outcome: &str,
    span: &JobSpan,
) -> Result<(), Failure> {
    let Some(m) = manifest else { return Ok(()) };
    let line = json!({
        "trace_id": span.trace_id(),
        "job_id": planned.job_id().map(str::to_owned).or_else(|| event_id.cloned()),
        "event_id": event_id,
        "job_type": planned.detail.get("job_type"),
        "expected_rejection": planned.expected_rejection,
        "outcome": outcome,
        "detail": planned.detail,
    });
    writeln!(m, "{line}").or_else(|e| fail(format!("cannot write the manifest: {e}")))
}

/// A progress bar on a terminal; a plain line every ten seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    /// The bar counts jobs (with --count), else seconds of the run.
    by_jobs: bool,
    last_line: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(count: Option<u64>, minutes: Option<f64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match (count, minutes) {
                (Some(n), _) => ProgressBar::new(n),
                (None, Some(m)) => ProgressBar::new((m * 60.0).ceil() as u64),
                (None, None) => ProgressBar::no_length(),
            };
            let template = if count.is_some() {
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} jobs {msg}"
            } else {
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} s {msg}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            by_jobs: count.is_some(),
            last_line: std::cell::Cell::new(Instant::now()),
        }
    }

    fn update(&self, t: &Totals, started: Instant) {
        let msg = format!(
            "sent {} ({} malformed), refused {}, retried {}",
            t.sent, t.malformed, t.refused, t.retried
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(if self.by_jobs {
                    t.sent + t.refused + t.unsent
                } else {
                    started.elapsed().as_secs()
                });
                bar.set_message(msg);
            }
            None if self.last_line.get().elapsed() >= Duration::from_secs(10) => {
                self.last_line.set(Instant::now());
                eprintln!("[{:>5.0} s] {msg}", started.elapsed().as_secs_f64());
            }
            None => {}
        }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
