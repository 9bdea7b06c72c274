//! `sim`: runs schedules of the simulated pipeline and checks each.
//!
//! `sim --seed N` replays one schedule and prints its trace when it fails;
//! `sim --seconds N` runs fresh seeds for N seconds; `sim --corpus FILE` runs the
//! regression seeds in FILE. The last line is always
//! `<N> schedules, <J> job lives, <V> violations`, and the exit code is 1 when V > 0.

use clap::Parser;
use sim::{run, Options, Outcome};
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    about = "Deterministic simulation of the job pipeline under faults and operators, with a checker of the invariant"
)]
struct Args {
    /// Replay exactly this schedule.
    #[arg(long)]
    seed: Option<u64>,
    /// Run fresh seeds for this many seconds of wall time.
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// Run the seeds listed in this file (one per line; `#` starts a comment).
    #[arg(long)]
    corpus: Option<std::path::PathBuf>,
    /// The first fresh seed (default: drawn from the clock, and printed).
    #[arg(long)]
    first_seed: Option<u64>,
    /// Jobs each schedule's producers send.
    #[arg(long, default_value_t = 40)]
    jobs: usize,
    /// Print the whole trace of every failing schedule, not only its last lines.
    #[arg(long)]
    trace: bool,
    /// Stop at the first failing schedule.
    #[arg(long)]
    fail_fast: bool,
    /// Schedules run side by side, one per thread (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let options = Options {
        jobs: args.jobs,
        ..Options::default()
    };
    let mut seeds: Vec<u64> = Vec::new();
    if let Some(seed) = args.seed {
        seeds.push(seed);
    }
    if let Some(path) = &args.corpus {
        match std::fs::read_to_string(path) {
            Ok(text) => seeds.extend(corpus(&text)),
            Err(e) => {
                eprintln!("sim: cannot read the corpus {}: {e}", path.display());
                return std::process::ExitCode::from(2);
            }
        }
    }
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let mut totals = Totals::default();
    if in_parallel(seeds.into_iter(), workers, &options, &args, &mut totals) {
        return totals.finish();
    }
    if args.seconds > 0 {
        let first = args.first_seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() * 1000)
        });
        println!("fresh seeds from {first}");
        let until = Instant::now() + Duration::from_secs(args.seconds);
        let fresh = (first..).take_while(move |_| Instant::now() < until);
        in_parallel(fresh, workers, &options, &args, &mut totals);
    }
    totals.finish()
}

/// Runs the seeds on `workers` threads (each schedule is deterministic on its own
/// thread: its clock and generator are its own), recording each outcome as it comes;
/// whether it stopped at a failure (`--fail-fast`).
fn in_parallel(
    seeds: impl Iterator<Item = u64> + Send,
    workers: usize,
    options: &Options,
    args: &Args,
    totals: &mut Totals,
) -> bool {
    let seeds = std::sync::Mutex::new(seeds);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<Outcome>();
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            let tx = tx.clone();
            let (seeds, stop) = (&seeds, &stop);
            scope.spawn(move || loop {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let next = seeds.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some(seed) = next else { return };
                if tx.send(run(seed, options)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let mut failed = false;
        for outcome in rx {
            if totals.record(outcome, args.trace) && args.fail_fast {
                failed = true;
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if totals.schedules % 25 == 0 {
                println!(
                    "  {} schedules, {} violations so far",
                    totals.schedules, totals.violations
                );
                let _ = std::io::stdout().flush();
            }
        }
        failed
    })
}

fn corpus(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split('#').next())
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[derive(Debug, Default)]
struct Totals {
    schedules: usize,
    lives: usize,
    copies: usize,
    letter_copies: usize,
    violations: usize,
}

impl Totals {
    /// Adds one schedule's outcome, printing a failing one; whether it failed.
    fn record(&mut self, outcome: Outcome, whole_trace: bool) -> bool {
        self.schedules += 1;
        self.lives += outcome.lives;
        self.copies += outcome.copies;
        self.letter_copies += outcome.letter_copies;
        self.violations += outcome.violations.len();
        if outcome.violations.is_empty() {
            return false;
        }
        println!(
            "seed {} FAILED ({} violations):",
            outcome.seed,
            outcome.violations.len()
        );
        for v in &outcome.violations {
            println!("  violation: {v}");
        }
        let from = if whole_trace {
            0
        } else {
            outcome.trace.len().saturating_sub(60)
        };
        println!(
            "  trace ({} events{}):",
            outcome.trace.len(),
            if from > 0 {
                ", the last 60; --trace for all"
            } else {
                ""
            }
        );
        for line in &outcome.trace[from..] {
            println!("    {line}");
        }
        println!("  replay it with: make sim SEED={}", outcome.seed);
        true
    }

    fn finish(&self) -> std::process::ExitCode {
        println!(
            "copies (same end, same notification_id): {} notifications, {} dead letters",
            self.copies, self.letter_copies
        );
        println!(
            "{} schedules, {} job lives, {} violations",
            self.schedules, self.lives, self.violations
        );
        if self.violations > 0 {
            std::process::ExitCode::FAILURE
        } else {
            std::process::ExitCode::SUCCESS
        }
    }
}
