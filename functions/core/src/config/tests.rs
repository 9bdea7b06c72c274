use super::*;
use std::collections::HashMap;

/// A lookup over `pairs` only: no test reads or changes the process environment.
fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

const DOWNSTREAM: &[(&str, &str)] = &[
    ("JOBS_TODO_QUEUE_URL", "http://q/jobs-todo"),
    ("JOBS_TODO_FIFO_QUEUE_URL", "http://q/jobs-todo.fifo"),
    ("DEAD_LETTER_QUEUE_URL", "http://q/dlq"),
    ("JOB_END_STATE_TOPIC_ARN", "arn:aws:sns:us-east-1:1:t"),
    ("JOBS_TABLE", "jobs"),
];

fn ingester_vars(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut all = DOWNSTREAM.to_vec();
    all.push(("INGESTER_QUEUE_URL", "http://q/ingester"));
    all.push(("MAX_RECEIVE_COUNT", "5"));
    all.extend_from_slice(extra);
    all
}

fn error_of(result: Result<impl std::fmt::Debug, ConfigError>) -> String {
    result.expect_err("refused").to_string()
}

#[test]
fn the_ingester_reads_its_settings_with_their_defaults() {
    let s = IngesterSettings::from_vars(&vars(&ingester_vars(&[]))).expect("valid");
    assert_eq!(s.source_url, "http://q/ingester");
    assert_eq!(s.downstream.table, "jobs");
    assert_eq!(s.ingester.max_receive_count, 5);
    assert_eq!(s.ingester.max_job_timeout_secs, 879);
    assert_eq!(s.trust_roots, TrustRoots::Amazon);
    assert_eq!(s.guard.call_timeout, Duration::from_secs(5));
}

#[test]
fn every_required_variable_is_named_when_missing() {
    for name in INGESTER_VARS.required {
        let all: Vec<_> = ingester_vars(&[])
            .into_iter()
            .filter(|(k, _)| k != name)
            .collect();
        let err = error_of(IngesterSettings::from_vars(&vars(&all)));
        assert!(err.contains(name), "{name}: {err}");
    }
    for name in PROCESSOR_VARS.required {
        let all: Vec<_> = DOWNSTREAM
            .iter()
            .copied()
            .filter(|(k, _)| k != name)
            .collect();
        let err = error_of(ProcessorSettings::from_vars(&vars(&all)));
        assert!(err.contains(name), "{name}: {err}");
    }
}

#[test]
fn a_bad_receive_count_is_refused_not_capped() {
    for bad in ["0", "1001", "99999999999", "five", "-1"] {
        let all = ingester_vars(&[("MAX_RECEIVE_COUNT", bad)]);
        // The later entry wins in the map.
        let err = error_of(IngesterSettings::from_vars(&vars(&all)));
        assert!(err.contains("MAX_RECEIVE_COUNT"), "{bad}: {err}");
    }
}

#[test]
fn the_job_timeout_limit_is_read_by_name_with_its_default() {
    let read = |v: &'static str| {
        IngesterSettings::from_vars(&vars(&ingester_vars(&[(MAX_JOB_TIMEOUT_VAR, v)])))
            .map(|s| s.ingester.max_job_timeout_secs)
    };
    assert_eq!(read(" ").ok(), Some(879));
    assert_eq!(read("600").ok(), Some(600));
    for bad in ["0", "901", "ten", "-5"] {
        assert!(error_of(read(bad)).contains(MAX_JOB_TIMEOUT_VAR), "{bad}");
    }
}

#[test]
fn the_trust_roots_setting_is_read_by_name() {
    let read = |v: &'static str| {
        IngesterSettings::from_vars(&vars(&ingester_vars(&[(TRUST_ROOTS_VAR, v)])))
            .map(|s| s.trust_roots)
    };
    assert_eq!(read("Native").ok(), Some(TrustRoots::Native));
    assert_eq!(read("amazon").ok(), Some(TrustRoots::Amazon));
    assert!(error_of(read("mozilla")).contains(TRUST_ROOTS_VAR));
}

#[test]
fn the_processor_reads_its_policy_and_refuses_what_aws_would() {
    let read = |extra: &[(&'static str, &'static str)]| {
        let mut all = DOWNSTREAM.to_vec();
        all.extend_from_slice(extra);
        ProcessorSettings::from_vars(&vars(&all))
    };
    let s = read(&[]).expect("valid");
    assert_eq!(s.processor.retry.max_attempts, 3);
    assert_eq!(s.processor.retry.base_delay, Duration::from_secs(2));
    assert!(!s.processor.fault_injection);
    // The default margin is just enough for one ending.
    assert_eq!(
        s.processor.deadline_margin,
        ending_reserve(s.guard.call_timeout)
    );
    assert!(
        read(&[("FAULT_INJECTION", "yes")])
            .expect("valid")
            .processor
            .fault_injection
    );
    for (name, bad) in [
        ("MAX_ATTEMPTS", "0"),
        ("MAX_ATTEMPTS", "101"),
        ("RETRY_BASE_DELAY_SECONDS", "901"),
        ("FAULT_INJECTION", "maybe"),
        ("BREAKER_FAILURES", "0"),
        ("CALL_TIMEOUT_MS", "soon"),
    ] {
        let err = error_of(read(&[(name, bad)]));
        assert!(err.contains(name), "{name}={bad}: {err}");
    }
}

#[test]
fn a_deadline_margin_that_cannot_hold_one_ending_is_refused_naming_both_variables() {
    let five = Duration::from_secs(5);
    let text = check_deadline_margin(Duration::from_secs(3), five)
        .expect_err("refused")
        .to_string();
    assert!(
        text.contains("DEADLINE_MARGIN_MS") && text.contains("CALL_TIMEOUT_MS=5000"),
        "{text}"
    );
    assert_eq!(
        check_deadline_margin(Duration::from_secs(21), five).ok(),
        Some(Duration::from_secs(21))
    );
    let mut all = DOWNSTREAM.to_vec();
    all.push(("DEADLINE_MARGIN_MS", "3000"));
    assert!(error_of(ProcessorSettings::from_vars(&vars(&all))).contains("DEADLINE_MARGIN_MS"));
}

const RELAY: &[(&str, &str)] = &[
    ("DEAD_LETTER_QUEUE_URL", "http://q/dlq"),
    ("JOB_END_STATE_TOPIC_ARN", "arn:aws:sns:us-east-1:1:t"),
    ("JOBS_TABLE", "jobs"),
    ("OUTBOX_INDEX", "outbox"),
];

#[test]
fn the_relay_reads_its_settings_and_names_each_missing_one() {
    let s = RelaySettings::from_vars(&vars(RELAY)).expect("valid");
    assert_eq!(
        (s.table.as_str(), s.outbox_index.as_str()),
        ("jobs", "outbox")
    );
    assert_eq!(s.guard.call_timeout, Duration::from_secs(5));
    for name in RELAY_VARS.required {
        let all: Vec<_> = RELAY.iter().copied().filter(|(k, _)| k != name).collect();
        let err = error_of(RelaySettings::from_vars(&vars(&all)));
        assert!(err.contains(name), "{name}: {err}");
    }
    let mut bad = RELAY.to_vec();
    bad.push(("CALL_TIMEOUT_MS", "soon"));
    assert!(error_of(RelaySettings::from_vars(&vars(&bad))).contains("CALL_TIMEOUT_MS"));
}
