//! Realistic jobs to send: the four good kinds with randomised fields, and a catalogue
//! of the malformed jobs real senders produce, each with the rejection it must earn.

use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::{json, Value};

/// A job to send, and what the pipeline should make of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub detail: Value,
    /// The rejection code the ingester must give, or `None` for a valid job.
    pub expected_rejection: Option<&'static str>,
}

impl Planned {
    pub fn job_id(&self) -> Option<&str> {
        self.detail.get("id").and_then(Value::as_str)
    }
}

/// Settings for generated jobs.
#[derive(Debug, Clone)]
pub struct CatalogConfig {
    /// Share of jobs drawn from the malformed catalogue, 0.0 to 1.0.
    pub malformed_ratio: f64,
    /// Longest `timeout` a generated `long_running_job` asks for, in seconds.
    pub max_job_seconds: u64,
    /// Share of valid jobs that ask to fail their first [`FLAKY_FAILURES`] attempts
    /// (honoured only where the processor enables fault injection).
    pub flaky_ratio: f64,
}

/// Attempts a flaky job fails before it succeeds.
pub const FLAKY_FAILURES: u32 = 2;

const REPORTS: &[&str] = &[
    "Sales Report",
    "Inventory Summary",
    "Churn Analysis",
    "Quarterly Revenue",
    "Ops Daily",
];
const FILTERS: &[&str] = &[
    "region=US",
    "region=EU, tier=gold",
    "year=2026; quarter=Q3",
    "channel=web",
    "vip",
];
const TABLES: &[&str] = &["users", "sessions", "audit_log", "orders", "events"];
const NAMES: &[&str] = &[
    "John Doe",
    "Ada Lovelace",
    "Grace Hopper",
    "Linus Torvalds",
    "Margaret Hamilton",
];
const TASKS: &[&str] = &[
    "Data Migration",
    "Reindex Search",
    "Backfill Metrics",
    "Rebuild Cache",
];

fn pick<R: Rng>(rng: &mut R, from: &[&'static str]) -> &'static str {
    from.choose(rng).copied().unwrap_or_default()
}

/// Draws the next job. Every job gets an id, so its end state can be traced.
pub fn next_job<R: Rng>(rng: &mut R, config: &CatalogConfig) -> Planned {
    let id = format!("job-{:016x}", rng.random::<u64>());
    let mut planned = if rng.random_bool(config.malformed_ratio.clamp(0.0, 1.0)) {
        malformed(rng)
    } else {
        let mut detail = good(rng, config);
        if rng.random_bool(config.flaky_ratio.clamp(0.0, 1.0)) {
            detail["fault"] = json!({ "fail_attempts": FLAKY_FAILURES });
        }
        Planned {
            detail,
            expected_rejection: None,
        }
    };
    if let Value::Object(obj) = &mut planned.detail {
        obj.insert("id".into(), Value::String(id));
    }
    planned
}

fn good<R: Rng>(rng: &mut R, config: &CatalogConfig) -> Value {
    match rng.random_range(0..4) {
        0 => json!({"job_type": "report_generation",
                    "message": {"report_name": pick(rng, REPORTS), "filters": pick(rng, FILTERS)}}),
        // Retention starts at 1: the original generator sometimes drew an invalid 0.
        1 => json!({"job_type": "data_cleanup",
                    "message": {"target_table": pick(rng, TABLES), "retention": rng.random_range(1..=365)}}),
        2 => json!({"job_type": "user_onboarding",
                    "message": {"user_id": rng.random_range(10_000..100_000).to_string(),
                                "user_name": pick(rng, NAMES)}}),
        _ => json!({"job_type": "long_running_job",
                    "message": {"task_name": pick(rng, TASKS),
                                "timeout": rng.random_range(1..=config.max_job_seconds.max(1))}}),
    }
}

/// The malformed catalogue. The first two are the original demo's bad jobs.
fn malformed<R: Rng>(rng: &mut R) -> Planned {
    let (detail, code) = match rng.random_range(0..11) {
        0 => (
            json!({"job_type": "report_generation",
                     "message": {"target_table": "Sales Report", "filters": "region=US"}}),
            "missing_field",
        ),
        1 => (
            json!({"job_type": "does_not_exist",
                     "message": {"target_table": "users", "retention": 30}}),
            "unknown_job_type",
        ),
        2 => (
            json!({"job_type": "data_cleanup",
                     "message": {"target_table": "users", "retention": "30"}}),
            "wrong_type",
        ),
        3 => (
            json!({"job_type": "data_cleanup",
                     "message": {"target_table": "users", "retention": 0}}),
            "out_of_range",
        ),
        4 => (
            json!({"job_type": "data_cleanup",
                     "message": {"target_table": "users", "retention": 30.5}}),
            "wrong_type",
        ),
        5 => (
            json!({"job_type": "long_running_job",
                     "message": {"task_name": "Rebuild Cache", "timeout": -5}}),
            "out_of_range",
        ),
        6 => (
            json!({"job_type": "user_onboarding",
                     "message": {"user_id": "12345", "user_name": ""}}),
            "empty_string",
        ),
        7 => (json!({"job_type": "user_onboarding"}), "missing_field"),
        8 => (
            json!({"job_type": "user_onboarding", "message": null}),
            "missing_field",
        ),
        9 => (
            json!({"job_type": "Data_Cleanup",
                     "message": {"target_table": "users", "retention": 30}}),
            "unknown_job_type",
        ),
        // Not an object at all: real EventBridge refuses it at PutEvents.
        _ => (
            Value::String("report_generation for Sales Report".into()),
            "invalid_detail",
        ),
    };
    Planned {
        detail,
        expected_rejection: Some(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobs_core::job::parse_job;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn verdicts_match_the_pipelines_validator() {
        let mut rng = StdRng::seed_from_u64(7);
        let config = CatalogConfig {
            malformed_ratio: 0.5,
            max_job_seconds: 5,
            flaky_ratio: 0.3,
        };
        let (mut good, mut bad) = (0, 0);
        for _ in 0..2_000 {
            let planned = next_job(&mut rng, &config);
            match (parse_job(&planned.detail, None), planned.expected_rejection) {
                (Ok(_), None) => good += 1,
                (Err(r), Some(code)) => {
                    assert_eq!(r.code.as_str(), code, "{}", planned.detail);
                    bad += 1;
                }
                (verdict, expected) => {
                    panic!("{}: got {verdict:?}, expected {expected:?}", planned.detail)
                }
            }
        }
        assert!(good > 800 && bad > 800, "good {good}, bad {bad}");
    }

    #[test]
    fn flaky_jobs_are_valid_jobs_asking_for_a_fault() {
        let mut rng = StdRng::seed_from_u64(9);
        let config = CatalogConfig {
            malformed_ratio: 0.0,
            max_job_seconds: 5,
            flaky_ratio: 0.5,
        };
        let jobs: Vec<Planned> = (0..400).map(|_| next_job(&mut rng, &config)).collect();
        let flaky = jobs
            .iter()
            .filter(|p| p.detail.get("fault").is_some())
            .count();
        assert!((120..280).contains(&flaky), "{flaky} of 400 flaky");
        for p in &jobs {
            assert!(parse_job(&p.detail, None).is_ok(), "{}", p.detail);
            if p.detail.get("fault").is_some() {
                let fault = jobs_core::fault::Fault::of(&p.detail);
                assert_eq!(
                    fault,
                    Some(jobs_core::fault::Fault::FailFirst(FLAKY_FAILURES))
                );
            }
        }
    }

    #[test]
    fn a_seed_reproduces_the_run_and_ratio_zero_is_all_good() {
        let config = CatalogConfig {
            malformed_ratio: 0.0,
            max_job_seconds: 5,
            flaky_ratio: 0.0,
        };
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50)
                .map(|_| next_job(&mut rng, &config))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        assert!(run(3).iter().all(|p| p.expected_rejection.is_none()));
    }
}
