//! Each function's configuration, read once at init into typed structs.
//!
//! Everything is built by a pure `from_vars` over a lookup function, so tests hand it
//! a map and never touch the process environment, and the binaries call `from_env`.
//! A bad or missing value stops the function at init with a [`ConfigError`] naming
//! the variable: a typo must not quietly become a default in production.
//!
//! [`INGESTER_VARS`] and [`PROCESSOR_VARS`] list every variable each function reads,
//! split into those a deployment must set and those with a default.
//! `tests/test_drift.py` reads these lists from this file and checks that Terraform and
//! the embedded stack set every required one, and nothing the function would ignore.

use crate::guard::GuardConfig;
use crate::ingester::IngesterConfig;
use crate::processor::{ending_reserve, ProcessorConfig};
use crate::retry::{RetryPolicy, SQS_MAX_DELAY};
use std::time::Duration;

/// A configuration problem, naming the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    #[error("environment variable {name} must be {expected}, got {value:?}")]
    Invalid {
        name: &'static str,
        expected: &'static str,
        value: String,
    },
}

/// The variables a function reads: `required` has no default.
#[derive(Debug, Clone, Copy)]
pub struct FunctionVars {
    pub required: &'static [&'static str],
    pub optional: &'static [&'static str],
}

/// What every function reads besides its own settings: the downstream calls' guard,
/// the TLS roots, telemetry and logging (the platform's `AWS_*` aside).
pub const COMMON_OPTIONAL: &[&str] = &[
    "CALL_TIMEOUT_MS",
    "BREAKER_FAILURES",
    "BREAKER_OPEN_SECONDS",
    TRUST_ROOTS_VAR,
    crate::telemetry::ENDPOINT_VAR,
    crate::telemetry::CERTIFICATE_VAR,
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    crate::logging::RUST_LOG_VAR,
];

/// Every variable the ingester reads (with [`COMMON_OPTIONAL`]).
pub const INGESTER_VARS: FunctionVars = FunctionVars {
    required: &[
        "INGESTER_QUEUE_URL",
        "JOBS_TODO_QUEUE_URL",
        "JOBS_TODO_FIFO_QUEUE_URL",
        "DEAD_LETTER_QUEUE_URL",
        "JOB_END_STATE_TOPIC_ARN",
        "JOBS_TABLE",
        "MAX_RECEIVE_COUNT",
    ],
    optional: &[MAX_JOB_TIMEOUT_VAR],
};

/// Every variable the processor reads (with [`COMMON_OPTIONAL`]).
pub const PROCESSOR_VARS: FunctionVars = FunctionVars {
    required: &[
        "JOBS_TODO_QUEUE_URL",
        "JOBS_TODO_FIFO_QUEUE_URL",
        "DEAD_LETTER_QUEUE_URL",
        "JOB_END_STATE_TOPIC_ARN",
        "JOBS_TABLE",
    ],
    optional: &[
        "DEADLINE_MARGIN_MS",
        "MAX_ATTEMPTS",
        "RETRY_BASE_DELAY_SECONDS",
        "FAULT_INJECTION",
    ],
};

/// The outbox relay's variables: where stranded ends are found (the table and its
/// sparse `outbox` index) and where they go (the dead-letter queue and the topic).
pub const RELAY_VARS: FunctionVars = FunctionVars {
    required: &[
        "DEAD_LETTER_QUEUE_URL",
        "JOB_END_STATE_TOPIC_ARN",
        "JOBS_TABLE",
        "OUTBOX_INDEX",
    ],
    optional: &[],
};

/// The variable naming the TLS roots the AWS clients trust.
pub const TRUST_ROOTS_VAR: &str = "TLS_TRUST_ROOTS";

/// The variable holding the longest `long_running_job` timeout the ingester accepts.
pub const MAX_JOB_TIMEOUT_VAR: &str = "MAX_JOB_TIMEOUT_SECONDS";

/// Where both stages send: the next queue, the dead letters, the end states, the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downstream {
    pub jobs_todo_url: String,
    /// `jobs-todo.fifo`, for jobs with an `ordering_key`.
    pub jobs_todo_fifo_url: String,
    pub dead_letter_url: String,
    pub topic_arn: String,
    pub table: String,
}

/// Everything the ingester binary needs besides telemetry.
#[derive(Debug, Clone)]
pub struct IngesterSettings {
    pub source_url: String,
    pub downstream: Downstream,
    pub ingester: IngesterConfig,
    pub guard: GuardConfig,
    pub trust_roots: TrustRoots,
}

/// Everything the processor binary needs besides telemetry.
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    pub downstream: Downstream,
    pub processor: ProcessorConfig,
    pub guard: GuardConfig,
    pub trust_roots: TrustRoots,
}

/// Which certificate authorities the AWS clients trust, from `TLS_TRUST_ROOTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustRoots {
    /// Amazon Trust Services only (the default): every AWS endpoint chains to these
    /// five, and parsing them costs microseconds where the platform store of ~150
    /// certificates cost about 2 ms of each cold start.
    Amazon,
    /// The platform's store, for an endpoint signed by anyone else.
    Native,
}

/// The process environment, as a lookup.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl IngesterSettings {
    pub fn from_env() -> Result<IngesterSettings, ConfigError> {
        IngesterSettings::from_vars(&process_env)
    }

    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars(var);
        let max_receive_count = vars.number_in(
            "MAX_RECEIVE_COUNT",
            None,
            1..=1000,
            "a whole number from 1 to 1000 (the queue's maxReceiveCount)",
        )?;
        let max_job_timeout_secs = vars.number_in(
            MAX_JOB_TIMEOUT_VAR,
            Some(crate::job::DEFAULT_MAX_TIMEOUT_SECS),
            1..=900,
            "a whole number of seconds from 1 to 900",
        )?;
        Ok(IngesterSettings {
            source_url: vars.required("INGESTER_QUEUE_URL")?,
            downstream: Downstream::from(&vars)?,
            ingester: IngesterConfig {
                max_receive_count: u32::try_from(max_receive_count).unwrap_or(u32::MAX),
                max_job_timeout_secs,
                kinds: crate::kinds::Registry::builtin(),
            },
            guard: guard(&vars)?,
            trust_roots: trust_roots(&vars)?,
        })
    }
}

impl ProcessorSettings {
    pub fn from_env() -> Result<ProcessorSettings, ConfigError> {
        ProcessorSettings::from_vars(&process_env)
    }

    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars(var);
        let guard = guard(&vars)?;
        Ok(ProcessorSettings {
            downstream: Downstream::from(&vars)?,
            processor: ProcessorConfig {
                deadline_margin: deadline_margin(&vars, &guard)?,
                retry: retry_policy(&vars)?,
                fault_injection: vars.flag("FAULT_INJECTION")?,
                kinds: crate::kinds::Registry::builtin(),
            },
            guard,
            trust_roots: trust_roots(&vars)?,
        })
    }
}

/// The relay's settings ([`RELAY_VARS`]).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub dead_letter_url: String,
    pub topic_arn: String,
    pub table: String,
    /// The job state table's sparse index of unannounced ends.
    pub outbox_index: String,
    pub guard: GuardConfig,
    pub trust_roots: TrustRoots,
}

impl RelaySettings {
    pub fn from_env() -> Result<RelaySettings, ConfigError> {
        RelaySettings::from_vars(&process_env)
    }

    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars(var);
        Ok(RelaySettings {
            dead_letter_url: vars.required("DEAD_LETTER_QUEUE_URL")?,
            topic_arn: vars.required("JOB_END_STATE_TOPIC_ARN")?,
            table: vars.required("JOBS_TABLE")?,
            outbox_index: vars.required("OUTBOX_INDEX")?,
            guard: guard(&vars)?,
            trust_roots: trust_roots(&vars)?,
        })
    }
}

impl Downstream {
    fn from(vars: &Vars<'_>) -> Result<Downstream, ConfigError> {
        Ok(Downstream {
            jobs_todo_url: vars.required("JOBS_TODO_QUEUE_URL")?,
            jobs_todo_fifo_url: vars.required("JOBS_TODO_FIFO_QUEUE_URL")?,
            dead_letter_url: vars.required("DEAD_LETTER_QUEUE_URL")?,
            topic_arn: vars.required("JOB_END_STATE_TOPIC_ARN")?,
            table: vars.required("JOBS_TABLE")?,
        })
    }
}

/// A lookup with the readers every setting shares; a blank value counts as unset.
struct Vars<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.get(name).ok_or(ConfigError::Missing(name))
    }

    fn number_or(&self, name: &'static str, default: u64) -> Result<u64, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
                name,
                expected: "a whole number",
                value: v,
            }),
        }
    }

    /// A whole number in `range` (`expected` says which, for the error); `default:
    /// None` makes it required.
    fn number_in(
        &self,
        name: &'static str,
        default: Option<u64>,
        range: std::ops::RangeInclusive<u64>,
        expected: &'static str,
    ) -> Result<u64, ConfigError> {
        let value = match default {
            Some(d) => self.number_or(name, d),
            None => self.required(name).and_then(|_| self.number_or(name, 0)),
        }?;
        if range.contains(&value) {
            return Ok(value);
        }
        Err(ConfigError::Invalid {
            name,
            expected,
            value: value.to_string(),
        })
    }

    /// `true`/`false`, `1`/`0`, `on`/`off`, `yes`/`no`; unset is off.
    fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        let Some(v) = self.get(name) else {
            return Ok(false);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "0" | "false" | "off" | "no" => Ok(false),
            "1" | "true" | "on" | "yes" => Ok(true),
            _ => Err(ConfigError::Invalid {
                name,
                expected: "true or false",
                value: v,
            }),
        }
    }
}

fn trust_roots(vars: &Vars<'_>) -> Result<TrustRoots, ConfigError> {
    let Some(v) = vars.get(TRUST_ROOTS_VAR) else {
        return Ok(TrustRoots::Amazon);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "amazon" => Ok(TrustRoots::Amazon),
        "native" => Ok(TrustRoots::Native),
        _ => Err(ConfigError::Invalid {
            name: TRUST_ROOTS_VAR,
            expected: "amazon or native",
            value: v,
        }),
    }
}

/// Timeouts and breaker settings for every downstream call, from `CALL_TIMEOUT_MS`
/// (default 5000), `BREAKER_FAILURES` (default 5) and `BREAKER_OPEN_SECONDS` (default 10).
fn guard(vars: &Vars<'_>) -> Result<GuardConfig, ConfigError> {
    let defaults = GuardConfig::default();
    let timeout_ms = u64::try_from(defaults.call_timeout.as_millis()).unwrap_or(u64::MAX);
    let failures = vars.number_in(
        "BREAKER_FAILURES",
        Some(u64::from(defaults.failure_threshold)),
        1..=u64::from(u32::MAX),
        "a whole number of at least 1",
    )?;
    Ok(GuardConfig {
        call_timeout: Duration::from_millis(vars.number_or("CALL_TIMEOUT_MS", timeout_ms)?),
        failure_threshold: u32::try_from(failures).unwrap_or(u32::MAX),
        open_for: Duration::from_secs(
            vars.number_or("BREAKER_OPEN_SECONDS", defaults.open_for.as_secs())?,
        ),
    })
}

/// The retry policy from `MAX_ATTEMPTS` (default 3) and `RETRY_BASE_DELAY_SECONDS`
/// (default 2).
fn retry_policy(vars: &Vars<'_>) -> Result<RetryPolicy, ConfigError> {
    let max_attempts = vars.number_in(
        "MAX_ATTEMPTS",
        Some(3),
        1..=100,
        "a whole number from 1 to 100",
    )?;
    let base = vars.number_in(
        "RETRY_BASE_DELAY_SECONDS",
        Some(2),
        0..=SQS_MAX_DELAY.as_secs(),
        "at most 900 (the longest SQS message delay)",
    )?;
    Ok(RetryPolicy {
        max_attempts: u32::try_from(max_attempts).unwrap_or(100),
        base_delay: Duration::from_secs(base),
        max_delay: SQS_MAX_DELAY,
    })
}

/// The processor's `DEADLINE_MARGIN_MS`: time kept back from the deadline for a job's
/// ending. By default just enough for one ending under `CALL_TIMEOUT_MS`
/// ([`ending_reserve`]); a margin below that is refused.
fn deadline_margin(vars: &Vars<'_>, guard: &GuardConfig) -> Result<Duration, ConfigError> {
    let least = ending_reserve(guard.call_timeout);
    let least_ms = u64::try_from(least.as_millis()).unwrap_or(u64::MAX);
    let margin = Duration::from_millis(vars.number_or("DEADLINE_MARGIN_MS", least_ms)?);
    check_deadline_margin(margin, guard.call_timeout)
}

/// Refuses a margin that cannot hold one ending of calls that may each take
/// `call_timeout`, naming both variables.
pub fn check_deadline_margin(
    margin: Duration,
    call_timeout: Duration,
) -> Result<Duration, ConfigError> {
    let least = ending_reserve(call_timeout);
    if margin < least {
        return Err(ConfigError::Invalid {
            name: "DEADLINE_MARGIN_MS",
            expected: "at least 4 x CALL_TIMEOUT_MS + 1000 (an ending's four calls: end state, dead letter, publish, mark)",
            value: format!(
                "{} with CALL_TIMEOUT_MS={}, which needs {}",
                margin.as_millis(),
                call_timeout.as_millis(),
                least.as_millis()
            ),
        });
    }
    Ok(margin)
}

#[cfg(test)]
mod tests;
