//! `job-generator replay`: sends the archived job events of a time window through the
//! pipeline again, as an EventBridge replay, and waits for it to finish.
//!
//! Before the replay starts, its order (which job ids, which ended statuses to run
//! again) is written to the job state table under the replay's name, so that the
//! ingester, which sees each replayed event with that name, knows what was asked
//! ([`jobs_core::store::replay`]). Jobs that ended are not run again unless their
//! status is in `--rerun`.

use aws_sdk_eventbridge::error::DisplayErrorContext;
use aws_sdk_eventbridge::primitives::DateTime as AwsTime;
use aws_sdk_eventbridge::types::{ReplayDestination, ReplayState};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use clap::Args;
use jobs_core::messages::JobStatus;
use jobs_core::store::{OperatorStore, ReplayOrder, Replays, RETENTION};
use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Start of the window: an RFC 3339 time (2026-12-01T10:00:00Z) or an age
    /// (90s, 30m, 2h, 1d: that long ago).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    from: DateTime<Utc>,
    /// End of the window, as --from; default: now.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    to: Option<DateTime<Utc>>,
    /// Only the events of these job ids (repeatable); the others are dropped by the
    /// ingester.
    #[arg(long = "job-id", value_name = "ID")]
    job_ids: Vec<String>,
    /// Run again the replayed jobs that ended with these statuses: failed, rejected
    /// (comma separated). Each ends once more, under a new attempt, once per replay.
    #[arg(long, value_name = "STATUSES", value_parser = parse_statuses)]
    rerun: Option<Statuses>,
    /// The replay's name (unique per account and region); default: jobs-<time>.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The archive to replay from.
    #[arg(long, default_value = "job-events", value_name = "NAME")]
    archive: String,
    /// The rule whose targets get the replayed events.
    #[arg(long, default_value = "ingester-event-rule", value_name = "NAME")]
    rule: String,
    /// Start the replay and return, without waiting for it to finish.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this many seconds (the replay goes on).
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    wait_secs: u64,
}

/// Reads `--from`/`--to`: RFC 3339, or an age with a unit (s, m, h, d).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time_at(s, Utc::now())
}

fn parse_time_at(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if s == "now" {
        return Ok(now);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let age = |n: &str, unit: i64| -> Option<DateTime<Utc>> {
        let n: i64 = n.parse().ok()?;
        now.checked_sub_signed(TimeDelta::try_seconds(n.checked_mul(unit)?)?)
    };
    let split = s.char_indices().last().map_or(0, |(i, _)| i);
    let (n, unit) = s.split_at(split);
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    (secs > 0).then(|| age(n, secs)).flatten().ok_or_else(|| {
        format!("expected an RFC 3339 time (2026-12-01T10:00:00Z) or an age such as 30m, got {s:?}")
    })
}

/// The statuses `--rerun` names (one argument, so clap holds it as one value).
#[derive(Debug, Clone, PartialEq)]
pub struct Statuses(pub Vec<JobStatus>);

/// Reads `--rerun`: a comma-separated list of `failed` and `rejected`.
pub fn parse_statuses(list: &str) -> Result<Statuses, String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let status = match part.to_ascii_lowercase().as_str() {
            "failed" => JobStatus::Failed,
            "rejected" => JobStatus::Rejected,
            _ => return Err(format!("expected failed and/or rejected, got {part:?}")),
        };
        if !out.contains(&status) {
            out.push(status);
        }
    }
    if out.is_empty() {
        return Err("expected failed and/or rejected".into());
    }
    Ok(Statuses(out))
}

/// The checked request: the window, and the order the ingester will read.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub order: ReplayOrder,
}

/// How far back a replay may reach: a day short of how long the state table keeps a
/// job's records. Events older than that would find their jobs' records gone, and
/// every job among them would run and end again.
pub fn oldest(now: DateTime<Utc>) -> DateTime<Utc> {
    now - RETENTION + TimeDelta::days(1)
}

/// Checks the arguments against each other, naming the flag at fault.
pub fn plan(args: &ReplayArgs, now: DateTime<Utc>) -> Result<Plan, String> {
    let to = args.to.unwrap_or(now).min(now);
    if args.from < oldest(now) {
        return Err(format!(
            "--from ({}) is older than {}: the job state table keeps records {} days, so \
             ended jobs from before then would run again",
            args.from.to_rfc3339_opts(SecondsFormat::Secs, true),
            oldest(now).to_rfc3339_opts(SecondsFormat::Secs, true),
            RETENTION.num_days()
        ));
    }
    if args.from >= to {
        return Err(format!(
            "--from ({}) must be before --to ({}, and no later than now)",
            args.from.to_rfc3339_opts(SecondsFormat::Secs, true),
            to.to_rfc3339_opts(SecondsFormat::Secs, true)
        ));
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("jobs-{}", now.format("%Y%m%dT%H%M%S%3f")));
    let job_ids = (!args.job_ids.is_empty()).then(|| args.job_ids.iter().cloned().collect());
    let order = ReplayOrder::new(
        &name,
        args.rerun.clone().map(|s| s.0).unwrap_or_default(),
        job_ids,
    )
    .map_err(|e| format!("--name/--rerun/--job-id: {e}"))?;
    Ok(Plan {
        from: args.from,
        to,
        order,
    })
}

/// Writes the order, starts the replay and (unless `--no-wait`) follows it to its end.
/// The exit code: 0 completed (or started, with `--no-wait`), 1 failed, cancelled or
/// still running when the wait ran out.
pub async fn run<S: OperatorStore + Replays + ?Sized>(
    args: &ReplayArgs,
    events: &aws_sdk_eventbridge::Client,
    store: &S,
) -> Result<i32, String> {
    let now = Utc::now();
    let plan = plan(args, now)?;
    let name = plan.order.name.clone();
    let archive = events
        .describe_archive()
        .archive_name(&args.archive)
        .send()
        .await
        .map_err(|e| format!("archive {:?}: {}", args.archive, DisplayErrorContext(&e)))?;
    let (Some(archive_arn), Some(bus_arn)) = (archive.archive_arn(), archive.event_source_arn())
    else {
        return Err(format!(
            "archive {:?} has no ARN or source bus",
            args.archive
        ));
    };
    let bus = bus_arn.rsplit('/').next().unwrap_or("default");
    let rule = events
        .describe_rule()
        .name(&args.rule)
        .event_bus_name(bus)
        .send()
        .await
        .map_err(|e| format!("--rule {:?}: {}", args.rule, DisplayErrorContext(&e)))?;
    let rule_arn = rule.arn().unwrap_or_default().to_owned();
    order(store, &plan.order, now).await?;
    if to_recent(plan.to, now) {
        eprintln!(
            "note: EventBridge may take a few minutes to archive an event; events of the \
             last minutes before --to may not be replayed"
        );
    }
    let started = events
        .start_replay()
        .replay_name(&name)
        .event_source_arn(archive_arn)
        .event_start_time(aws_time(plan.from))
        .event_end_time(aws_time(plan.to))
        .destination(
            ReplayDestination::builder()
                .arn(bus_arn)
                .filter_arns(rule_arn)
                .build()
                .map_err(|e| e.to_string())?,
        )
        .send()
        .await;
    match started {
        Ok(_) => {}
        // Started already: this command run again after a lost answer.
        Err(e)
            if e.as_service_error()
                .is_some_and(|se| se.is_resource_already_exists_exception()) =>
        {
            eprintln!("replay {name} was started before; following it");
        }
        Err(e) => {
            return Err(format!(
                "cannot start replay {name}: {}",
                DisplayErrorContext(&e)
            ));
        }
    }
    eprintln!("{}", describe(&plan));
    if args.no_wait {
        println!("replay {name} started");
        return Ok(0);
    }
    follow(events, &name, Duration::from_secs(args.wait_secs)).await
}

/// Writes the order, or finds the same order written by an earlier run of this
/// command (whose replay may or may not have started); another order of that name is
/// an error.
async fn order<S: OperatorStore + Replays + ?Sized>(
    store: &S,
    order: &ReplayOrder,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let name = &order.name;
    let cannot =
        |e: jobs_core::ports::PortError| format!("cannot write the order of replay {name}: {e}");
    if store.record_replay(order, now).await.map_err(cannot)? {
        return Ok(());
    }
    match store.replay_order(name).await.map_err(cannot)? {
        Some(existing) if existing == *order => Ok(()),
        _ => Err(format!(
            "a replay named {name} was ordered already with other job ids or statuses: choose another --name"
        )),
    }
}

/// Whether `to` is within the minutes an event may take to reach the archive.
fn to_recent(to: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now - to < TimeDelta::minutes(5)
}

fn describe(plan: &Plan) -> String {
    let o = &plan.order;
    let rerun = if o.rerun.is_empty() {
        "none".to_owned()
    } else {
        o.rerun
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let ids = o
        .job_ids
        .as_ref()
        .map_or("every job".to_owned(), |ids: &BTreeSet<String>| {
            format!("{} job id(s)", ids.len())
        });
    format!(
        "replay {}: events from {} to {}, {ids}, run again: {rerun}",
        o.name,
        plan.from.to_rfc3339_opts(SecondsFormat::Secs, true),
        plan.to.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

/// Polls the replay every two seconds, a line each time its state or progress moves.
async fn follow(
    events: &aws_sdk_eventbridge::Client,
    name: &str,
    wait: Duration,
) -> Result<i32, String> {
    let until = tokio::time::Instant::now() + wait;
    let mut last = String::new();
    loop {
        let out = events
            .describe_replay()
            .replay_name(name)
            .send()
            .await
            .map_err(|e| format!("replay {name}: {}", DisplayErrorContext(&e)))?;
        let state = out.state().cloned().unwrap_or(ReplayState::Starting);
        let progress = out
            .event_last_replayed_time()
            .map(|t| format!(", replayed up to {t}"))
            .unwrap_or_default();
        let line = format!("replay {name}: {}{progress}", state.as_str());
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        match state {
            ReplayState::Completed => {
                println!("replay {name} COMPLETED");
                return Ok(0);
            }
            ReplayState::Failed | ReplayState::Cancelled => {
                let why = out.state_reason().unwrap_or("no reason given");
                println!("replay {name} {}: {why}", state.as_str());
                return Ok(1);
            }
            _ if tokio::time::Instant::now() >= until => {
                println!(
                    "replay {name} still {} after {} s; it goes on",
                    state.as_str(),
                    wait.as_secs()
                );
                return Ok(1);
            }
            _ => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}

fn aws_time(t: DateTime<Utc>) -> AwsTime {
    AwsTime::from_millis(t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0)
            .single()
            .expect("time")
    }

    fn args(from: &str) -> ReplayArgs {
        ReplayArgs {
            from: parse_time_at(from, now()).expect("time"),
            to: None,
            job_ids: vec![],
            rerun: None,
            name: Some("r1".into()),
            archive: "job-events".into(),
            rule: "ingester-event-rule".into(),
            no_wait: false,
            wait_secs: 1,
        }
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReplayArgs,
    }

    #[test]
    fn the_command_line_reads_into_a_plan() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "replay",
            "--from",
            "2h",
            "--to",
            "30m",
            "--rerun",
            "failed,rejected",
            "--job-id",
            "a",
            "--job-id",
            "b",
            "--name",
            "fix-1",
        ])
        .expect("parsed");
        let p = plan(&cli.args, Utc::now()).expect("plan");
        assert_eq!(p.order.rerun, vec![JobStatus::Failed, JobStatus::Rejected]);
        assert_eq!(p.order.name, "fix-1");
        let span = p.to - p.from - TimeDelta::minutes(90);
        assert!(span.abs() < TimeDelta::seconds(1), "{span}");
        let bad = Cli::try_parse_from(["replay", "--from", "2h", "--rerun", "completed"])
            .expect_err("refused");
        assert!(bad.to_string().contains("--rerun"), "{bad}");
        assert!(
            Cli::try_parse_from(["replay"]).is_err(),
            "--from is required"
        );
    }

    #[test]
    fn times_are_rfc3339_or_an_age() {
        assert_eq!(
            parse_time_at("30m", now()),
            Ok(now() - TimeDelta::minutes(30))
        );
        assert_eq!(parse_time_at("2h", now()), Ok(now() - TimeDelta::hours(2)));
        assert_eq!(parse_time_at("now", now()), Ok(now()));
        assert_eq!(
            parse_time_at("2026-12-01T10:00:00+01:00", now()),
            Ok(Utc
                .with_ymd_and_hms(2026, 12, 1, 9, 0, 0)
                .single()
                .expect("t"))
        );
        for bad in [
            "",
            "m",
            "30",
            "30x",
            "-",
            "yesterday",
            "99999999999999999d",
            "3é",
        ] {
            assert!(parse_time_at(bad, now()).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_same_order_may_be_written_again_and_another_may_not() {
        let store = jobs_core::store::MemoryStore::default();
        let first = plan(&args("1h"), now()).expect("plan").order;
        order(&store, &first, now()).await.expect("written");
        order(&store, &first, now())
            .await
            .expect("the same order, written again");
        let mut other = args("1h");
        other.rerun = Some(Statuses(vec![JobStatus::Failed]));
        let other = plan(&other, now()).expect("plan").order;
        let refused = order(&store, &other, now()).await.expect_err("refused");
        assert!(refused.contains("--name"), "{refused}");
    }

    #[test]
    fn rerun_takes_failed_and_rejected_only() {
        assert_eq!(
            parse_statuses("failed, REJECTED,failed"),
            Ok(Statuses(vec![JobStatus::Failed, JobStatus::Rejected]))
        );
        assert!(parse_statuses("completed").is_err());
        assert!(parse_statuses(",").is_err());
    }

    #[test]
    fn a_plan_names_the_flag_at_fault() {
        let p = plan(&args("1h"), now()).expect("plan");
        assert_eq!((p.from, p.to), (now() - TimeDelta::hours(1), now()));
        assert_eq!(p.order.job_ids, None);

        let mut later = args("1h");
        later.to = Some(now() + TimeDelta::hours(1));
        assert_eq!(
            plan(&later, now()).expect("plan").to,
            now(),
            "--to is held to now"
        );

        let mut backwards = args("1h");
        backwards.to = Some(now() - TimeDelta::hours(2));
        assert!(plan(&backwards, now())
            .expect_err("backwards")
            .contains("--from"));

        let too_old = args("15d");
        assert!(plan(&too_old, now())
            .expect_err("too old")
            .contains("15 days"));
        assert!(plan(&args("13d"), now()).is_ok());

        let mut bad_name = args("1h");
        bad_name.name = Some("no spaces".into());
        assert!(plan(&bad_name, now())
            .expect_err("bad name")
            .contains("--name"));

        let mut some = args("1h");
        some.job_ids = vec!["a".into(), "b".into(), "a".into()];
        some.rerun = Some(Statuses(vec![JobStatus::Failed]));
        let order = plan(&some, now()).expect("plan").order;
        assert_eq!(order.job_ids.map(|ids| ids.len()), Some(2));
        assert_eq!(order.rerun, vec![JobStatus::Failed]);
    }
}
