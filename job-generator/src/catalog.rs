//! Realistic jobs to send: valid jobs of every kind the registry knows, with
//! randomised fields, and the malformed jobs real senders produce, each with the
//! rejection it must earn. The samples are each kind's own ([`jobs_core::kinds`]).

use jobs_core::kinds::{Draw, JobKind, Registry, SagaKind};
use jobs_core::messages::ErrorCode;
use rand::Rng;
use serde_json::{json, Value};

/// A job to send, and what the pipeline should make of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub detail: Value,
    /// The rejection code the ingester must give, or `None` for a valid job.
    pub expected_rejection: Option<ErrorCode>,
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
    /// Share of valid jobs that are sagas, where the registry knows them.
    pub saga_ratio: f64,
    /// Ordering keys to spread valid jobs over (`key-0` ... ): jobs sharing one run one
    /// at a time, in order. 0 sends no keys.
    pub keys: u32,
}

/// Attempts a flaky job fails before it succeeds.
pub const FLAKY_FAILURES: u32 = 2;

/// The generator's random numbers, as the kinds draw them.
struct RngDraw<'a, R>(&'a mut R);

impl<R: Rng> Draw for RngDraw<'_, R> {
    fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0.random_range(low..=high.max(low))
    }
}

/// Draws the next job, valid ones of a built-in kind ([`next_job_of`]).
pub fn next_job<R: Rng>(rng: &mut R, config: &CatalogConfig) -> Planned {
    next_job_of(&Registry::builtin(), rng, config)
}

/// Draws the next job, valid ones of a kind in `kinds`. Every job gets an id, so its
/// end state can be traced.
pub fn next_job_of<R: Rng>(kinds: &Registry, rng: &mut R, config: &CatalogConfig) -> Planned {
    let id = format!("job-{:016x}", rng.random::<u64>());
    let good = if rng.random_bool(config.malformed_ratio.clamp(0.0, 1.0)) {
        None
    } else {
        valid(kinds, rng, config)
    };
    let mut planned = match good {
        Some(mut detail) => {
            if rng.random_bool(config.flaky_ratio.clamp(0.0, 1.0)) {
                detail["fault"] = json!({ "fail_attempts": FLAKY_FAILURES });
            }
            if config.keys > 0 {
                let key = rng.random_range(0..config.keys);
                detail["ordering_key"] = json!(format!("key-{key}"));
            }
            Planned {
                detail,
                expected_rejection: None,
            }
        }
        None => {
            let bad = kinds.sample_malformed(&mut RngDraw(rng));
            Planned {
                detail: bad.detail,
                expected_rejection: Some(bad.code),
            }
        }
    };
    if let Value::Object(obj) = &mut planned.detail {
        obj.insert("id".into(), Value::String(id));
    }
    planned
}

/// A valid job: a saga for `saga_ratio` of them, else one of the other kinds.
fn valid<R: Rng>(kinds: &Registry, rng: &mut R, config: &CatalogConfig) -> Option<Value> {
    let saga = kinds.get(SagaKind::NAME);
    let draw = &mut RngDraw(rng);
    match saga {
        Some(kind) if draw.0.random_bool(config.saga_ratio.clamp(0.0, 1.0)) => Some(
            json!({"job_type": kind.name(), "message": kind.sample(draw, config.max_job_seconds)}),
        ),
        Some(_) => kinds
            .without(SagaKind::NAME)
            .sample(draw, config.max_job_seconds)
            .or_else(|| kinds.sample(draw, config.max_job_seconds)),
        None => kinds.sample(draw, config.max_job_seconds),
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
            saga_ratio: 0.2,
            keys: 0,
        };
        let (mut good, mut bad) = (0, 0);
        for _ in 0..2_000 {
            let planned = next_job(&mut rng, &config);
            match (parse_job(&planned.detail, None), planned.expected_rejection) {
                (Ok(_), None) => good += 1,
                (Err(r), Some(code)) => {
                    assert_eq!(r.code, code, "{}", planned.detail);
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
            saga_ratio: 0.2,
            keys: 0,
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
            saga_ratio: 0.2,
            keys: 0,
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

    #[test]
    fn the_catalogue_draws_every_kind_and_the_original_malformed_cases() {
        let mut rng = StdRng::seed_from_u64(11);
        let config = CatalogConfig {
            malformed_ratio: 0.5,
            max_job_seconds: 5,
            flaky_ratio: 0.0,
            saga_ratio: 0.2,
            keys: 0,
        };
        let mut kinds = std::collections::BTreeMap::<String, u32>::new();
        let mut malformed = std::collections::BTreeSet::new();
        for _ in 0..4_000 {
            let mut planned = next_job(&mut rng, &config);
            if let Value::Object(obj) = &mut planned.detail {
                obj.remove("id");
            }
            match planned.expected_rejection {
                None => {
                    *kinds
                        .entry(planned.detail["job_type"].to_string())
                        .or_default() += 1
                }
                Some(_) => {
                    malformed.insert(planned.detail.to_string());
                }
            }
        }
        assert_eq!(kinds.len(), 5, "{kinds:?}");
        assert!(kinds.values().all(|n| (320..480).contains(n)), "{kinds:?}");
        assert_eq!(malformed.len(), 14, "{malformed:?}");
    }

    #[test]
    fn the_saga_ratio_is_the_share_of_sagas_among_valid_jobs() {
        for (ratio, expected) in [(0.0, 0..1), (0.5, 400..600), (1.0, 1000..1001)] {
            let mut rng = StdRng::seed_from_u64(3);
            let config = CatalogConfig {
                malformed_ratio: 0.0,
                max_job_seconds: 5,
                flaky_ratio: 0.0,
                saga_ratio: ratio,
                keys: 0,
            };
            let sagas = (0..1000)
                .map(|_| next_job(&mut rng, &config))
                .filter(|p| p.detail["job_type"] == "saga")
                .inspect(|p| assert_eq!(parse_job(&p.detail, None).err(), None))
                .count();
            assert!(expected.contains(&sagas), "{ratio}: {sagas}");
        }
    }

    #[test]
    fn only_the_registrys_kinds_are_sent() {
        let mut rng = StdRng::seed_from_u64(5);
        let config = CatalogConfig {
            malformed_ratio: 0.0,
            max_job_seconds: 5,
            flaky_ratio: 0.0,
            saga_ratio: 0.2,
            keys: 0,
        };
        let kinds = Registry::of(vec![&jobs_core::kinds::DataCleanup]);
        for _ in 0..100 {
            let planned = next_job_of(&kinds, &mut rng, &config);
            assert_eq!(planned.detail["job_type"], "data_cleanup");
        }
    }

    #[test]
    fn keys_spread_valid_jobs_over_that_many_ordering_keys() {
        let mut rng = StdRng::seed_from_u64(11);
        let config = CatalogConfig {
            malformed_ratio: 0.3,
            max_job_seconds: 5,
            flaky_ratio: 0.0,
            saga_ratio: 0.2,
            keys: 3,
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let planned = next_job(&mut rng, &config);
            let key = planned.detail.get("ordering_key").and_then(Value::as_str);
            match planned.expected_rejection {
                None => {
                    let job = parse_job(&planned.detail, None).expect("valid");
                    assert_eq!(job.ordering_key.as_deref(), key);
                    seen.insert(key.expect("every valid job has a key").to_owned());
                }
                Some(_) => assert_eq!(key, None, "malformed jobs carry no key"),
            }
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["key-0", "key-1", "key-2"]
        );
    }
}
