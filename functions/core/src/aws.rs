//! The ports implemented on SQS and SNS, and the functions' configuration from the
//! environment. Clients are built once per process and shared by every invocation.

use crate::batching::Batching;
use crate::dynamo::DynamoStore;
use crate::guard::{GuardConfig, Guarded};
use crate::messages::Notification;
use crate::ports::{MessageQueue, OutgoingMessage, PortError, Receipt, Topic};
use crate::record::notification_message;
use crate::retry::{RetryPolicy, SQS_MAX_DELAY};
use async_trait::async_trait;
use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_config::{timeout::TimeoutConfig, BehaviorVersion, Region, SdkConfig};
use aws_sdk_sns::types::MessageAttributeValue as SnsAttribute;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider, TlsContext, TrustStore};
use std::collections::HashMap;
use std::time::Duration;

/// The certificate authorities of AWS service endpoints (Amazon Trust Services).
pub const AMAZON_ROOTS: &[u8] = include_bytes!("../certs/amazon-trust-services.pem");

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

impl TrustRoots {
    pub fn from_env() -> Result<TrustRoots, ConfigError> {
        match std::env::var("TLS_TRUST_ROOTS") {
            Err(_) => Ok(TrustRoots::Amazon),
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "" | "amazon" => Ok(TrustRoots::Amazon),
                "native" => Ok(TrustRoots::Native),
                _ => Err(ConfigError::Invalid {
                    name: "TLS_TRUST_ROOTS",
                    expected: "amazon or native",
                    value: v,
                }),
            },
        }
    }

    fn store(self) -> TrustStore {
        match self {
            TrustRoots::Amazon => TrustStore::empty().with_pem_certificate(AMAZON_ROOTS),
            TrustRoots::Native => TrustStore::default(),
        }
    }
}

/// Loads the SDK configuration once, trusting the roots `TLS_TRUST_ROOTS` names.
/// `AWS_ENDPOINT_URL` (set by emulators) is honoured. Timeouts keep one slow call
/// from eating the whole invocation.
pub async fn sdk_config() -> Result<SdkConfig, ConfigError> {
    let roots = TrustRoots::from_env()?;
    let tls = TlsContext::builder()
        .with_trust_store(roots.store())
        .build()
        .map_err(|e| ConfigError::Invalid {
            name: "TLS_TRUST_ROOTS",
            expected: "a usable trust store",
            value: e.to_string(),
        })?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(tls)
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(15))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(timeouts);
    let given = LambdaGiven::from(|name: &str| std::env::var(name).ok());
    if let Some(region) = given.region {
        loader = loader.region(Region::new(region));
    }
    if given.credentials {
        loader = loader.credentials_provider(EnvironmentVariableCredentialsProvider::new());
    }
    Ok(loader.load().await)
}

/// What Lambda hands every function in its environment: its region and its role's
/// credentials. Naming their providers outright spares each cold start the default
/// chains (region from profile files and IMDS; credentials from profiles, web
/// identity with its own STS client, containers and IMDS), which would end at the
/// same variables anyway. Anywhere they are not set, the default chains run.
#[derive(Debug, PartialEq, Eq)]
struct LambdaGiven {
    region: Option<String>,
    credentials: bool,
}

impl LambdaGiven {
    fn from(var: impl Fn(&str) -> Option<String>) -> LambdaGiven {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        LambdaGiven {
            region: set("AWS_REGION"),
            credentials: set("AWS_ACCESS_KEY_ID").is_some()
                && set("AWS_SECRET_ACCESS_KEY").is_some(),
        }
    }
}

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

/// Reads a required environment variable.
pub fn required(name: &'static str) -> Result<String, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ConfigError::Missing(name)),
    }
}

/// Reads an optional whole-number environment variable.
pub fn number_or(name: &'static str, default: u64) -> Result<u64, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| ConfigError::Invalid {
            name,
            expected: "a whole number",
            value: v,
        }),
        _ => Ok(default),
    }
}

/// Reads an optional on/off environment variable (`true`/`false`, `1`/`0`, `on`/`off`).
pub fn flag(name: &'static str) -> Result<bool, ConfigError> {
    match std::env::var(name) {
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "0" | "false" | "off" | "no" => Ok(false),
            "1" | "true" | "on" | "yes" => Ok(true),
            _ => Err(ConfigError::Invalid {
                name,
                expected: "true or false",
                value: v,
            }),
        },
        Err(_) => Ok(false),
    }
}

/// The retry policy from `MAX_ATTEMPTS` (default 3) and `RETRY_BASE_DELAY_SECONDS`
/// (default 2).
pub fn retry_policy() -> Result<RetryPolicy, ConfigError> {
    let max_attempts = number_or("MAX_ATTEMPTS", 3)?;
    let max_attempts = u32::try_from(max_attempts)
        .ok()
        .filter(|n| (1..=100).contains(n))
        .ok_or(ConfigError::Invalid {
            name: "MAX_ATTEMPTS",
            expected: "a whole number from 1 to 100",
            value: max_attempts.to_string(),
        })?;
    let base = number_or("RETRY_BASE_DELAY_SECONDS", 2)?;
    if base > SQS_MAX_DELAY.as_secs() {
        return Err(ConfigError::Invalid {
            name: "RETRY_BASE_DELAY_SECONDS",
            expected: "at most 900 (the longest SQS message delay)",
            value: base.to_string(),
        });
    }
    Ok(RetryPolicy {
        max_attempts,
        base_delay: Duration::from_secs(base),
        max_delay: SQS_MAX_DELAY,
    })
}

/// The longest `long_running_job` timeout the ingester accepts, in seconds, from
/// `MAX_JOB_TIMEOUT_SECONDS` (default [`crate::job::DEFAULT_MAX_TIMEOUT_SECS`], 879: the
/// processor's 900 s function timeout less its 3 s `DEADLINE_MARGIN_MS`). Set it to the
/// processor's `timeout_seconds` less its margin whenever either changes.
pub fn max_job_timeout() -> Result<u64, ConfigError> {
    max_job_timeout_from(std::env::var(MAX_JOB_TIMEOUT_VAR).ok())
}

/// The variable [`max_job_timeout`] reads.
pub const MAX_JOB_TIMEOUT_VAR: &str = "MAX_JOB_TIMEOUT_SECONDS";

fn max_job_timeout_from(value: Option<String>) -> Result<u64, ConfigError> {
    let invalid = |v: &str| ConfigError::Invalid {
        name: MAX_JOB_TIMEOUT_VAR,
        expected: "a whole number of seconds from 1 to 900",
        value: v.to_owned(),
    };
    match value {
        Some(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=900).contains(n))
            .ok_or_else(|| invalid(&v)),
        _ => Ok(crate::job::DEFAULT_MAX_TIMEOUT_SECS),
    }
}

/// Timeouts and breaker settings for every downstream call, from `CALL_TIMEOUT_MS`
/// (default 5000), `BREAKER_FAILURES` (default 5) and `BREAKER_OPEN_SECONDS` (default 10).
pub fn guard_config() -> Result<GuardConfig, ConfigError> {
    let defaults = GuardConfig::default();
    let failures = number_or("BREAKER_FAILURES", u64::from(defaults.failure_threshold))?;
    Ok(GuardConfig {
        call_timeout: Duration::from_millis(number_or(
            "CALL_TIMEOUT_MS",
            defaults.call_timeout.as_millis() as u64,
        )?),
        failure_threshold: u32::try_from(failures).ok().filter(|n| *n >= 1).ok_or(
            ConfigError::Invalid {
                name: "BREAKER_FAILURES",
                expected: "a whole number of at least 1",
                value: failures.to_string(),
            },
        )?,
        open_for: Duration::from_secs(number_or(
            "BREAKER_OPEN_SECONDS",
            defaults.open_for.as_secs(),
        )?),
    })
}

/// The processor's `DEADLINE_MARGIN_MS`: time kept back from the deadline for a job's
/// ending. By default just enough for one ending under `CALL_TIMEOUT_MS`
/// ([`crate::processor::ending_reserve`]); a margin below that is refused.
pub fn deadline_margin(guard: &GuardConfig) -> Result<Duration, ConfigError> {
    let least = crate::processor::ending_reserve(guard.call_timeout);
    let margin = Duration::from_millis(number_or(
        "DEADLINE_MARGIN_MS",
        u64::try_from(least.as_millis()).unwrap_or(u64::MAX),
    )?);
    check_deadline_margin(margin, guard.call_timeout)
}

/// Refuses a margin that cannot hold one ending of calls that may each take
/// `call_timeout`, naming both variables.
pub fn check_deadline_margin(
    margin: Duration,
    call_timeout: Duration,
) -> Result<Duration, ConfigError> {
    let least = crate::processor::ending_reserve(call_timeout);
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

/// One client per AWS service, built once at start-up and shared by every port of that
/// service, each port behind its own timeout and circuit breaker.
#[derive(Debug, Clone)]
pub struct Clients {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    guard: GuardConfig,
}

impl Clients {
    pub fn new(sdk: &SdkConfig, guard: GuardConfig) -> Clients {
        Clients {
            sqs: aws_sdk_sqs::Client::new(sdk),
            sns: aws_sdk_sns::Client::new(sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            guard,
        }
    }

    /// The queue at `url`; `name` is what errors and logs call it.
    pub fn queue(&self, url: String, name: &'static str) -> Guarded<SqsQueue> {
        Guarded::new(SqsQueue::new(self.sqs.clone(), url), name, self.guard)
    }

    /// The end-state topic: notifications of concurrent records go out together.
    pub fn topic(&self, arn: String) -> Batching<Guarded<SnsTopic>> {
        let topic = SnsTopic::new(self.sns.clone(), arn);
        Batching::new(Guarded::new(topic, "job-end-state-topic", self.guard))
    }

    /// The job state table: the writes of concurrent records go together, each batch
    /// under one timeout and breaker.
    pub fn store(&self, table: String) -> Batching<Guarded<DynamoStore>> {
        let store = DynamoStore::new(self.dynamodb.clone(), table);
        Batching::new(Guarded::new(store, "job state table", self.guard))
    }
}

/// An SQS queue, addressed by URL.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> SqsQueue {
        SqsQueue { client, url }
    }
}

fn sdk_failure<E, R>(operation: &'static str, e: aws_sdk_sqs::error::SdkError<E, R>) -> PortError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_sqs::error::{DisplayErrorContext, SdkError};
    let unreachable = matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_));
    let message = DisplayErrorContext(&e).to_string();
    if unreachable {
        PortError::Unreachable { operation, message }
    } else {
        PortError::Refused { operation, message }
    }
}

#[async_trait]
impl MessageQueue for SqsQueue {
    /// The last segment of the queue URL.
    fn name(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or(&self.url)
    }

    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PortError>> {
        const OP: &str = "SendMessageBatch";
        let refused = |message: String| {
            Err(PortError::Refused {
                operation: OP,
                message,
            })
        };
        // An entry is sent only once SQS acknowledges it: anything not listed as
        // successful counts as failed.
        let mut results: Vec<Result<(), PortError>> = messages
            .iter()
            .map(|_| refused("not acknowledged by SQS".into()))
            .collect();
        let mut entries = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(&m.body);
            if m.delay_seconds > 0 {
                let delay = m
                    .delay_seconds
                    .min(crate::retry::SQS_MAX_DELAY.as_secs() as u32);
                entry = entry.delay_seconds(i32::try_from(delay).unwrap_or(900));
            }
            for (name, value) in &m.attributes {
                let attr = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build();
                match attr {
                    Ok(attr) => entry = entry.message_attributes(*name, attr),
                    Err(e) => results[i] = refused(e.to_string()),
                }
            }
            match entry.build() {
                Ok(entry) => entries.push(entry),
                Err(e) => results[i] = refused(e.to_string()),
            }
        }
        if entries.is_empty() {
            return results;
        }
        match self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                let acknowledged = out.successful().iter().map(|ok| ok.id());
                let failed = out.failed().iter().map(|f| (f.id(), f.code(), f.message()));
                settle_entries(&mut results, OP, acknowledged, failed);
                results
            }
            Err(e) => {
                let err = sdk_failure(OP, e);
                messages.iter().map(|_| Err(err.clone())).collect()
            }
        }
    }

    async fn retry_later(&self, receipts: &[Receipt]) -> Result<(), PortError> {
        use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry as Entry;
        const OP: &str = "ChangeMessageVisibilityBatch";
        for chunk in receipts.chunks(crate::ports::MAX_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    Entry::builder()
                        .id(i.to_string())
                        .receipt_handle(&r.receipt_handle)
                        .visibility_timeout(i32::try_from(r.delay_seconds).unwrap_or(900))
                        .build()
                        .map_err(|e| PortError::Refused {
                            operation: OP,
                            message: e.to_string(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_failure(OP, e))?;
            if let Some(failed) = out.failed().first() {
                return Err(PortError::Refused {
                    operation: OP,
                    message: format!(
                        "{} of {} not changed: {}",
                        out.failed().len(),
                        chunk.len(),
                        failed.message().unwrap_or(failed.code())
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The SNS end-state topic, addressed by ARN.
#[derive(Debug, Clone)]
pub struct SnsTopic {
    client: aws_sdk_sns::Client,
    arn: String,
}

impl SnsTopic {
    pub fn new(client: aws_sdk_sns::Client, arn: String) -> SnsTopic {
        SnsTopic { client, arn }
    }
}

/// Marks the entries of a batch call that the service acknowledged or refused, by the
/// ids (entry indexes) it echoes back. An entry it does not mention keeps its error:
/// nothing counts as sent without an acknowledgement.
fn settle_entries<'a>(
    results: &mut [Result<(), PortError>],
    operation: &'static str,
    acknowledged: impl Iterator<Item = &'a str>,
    refused: impl Iterator<Item = (&'a str, &'a str, Option<&'a str>)>,
) {
    let count = results.len();
    let slot = |id: &str| id.parse::<usize>().ok().filter(|i| *i < count);
    for id in acknowledged {
        if let Some(i) = slot(id) {
            results[i] = Ok(());
        }
    }
    for (id, code, message) in refused {
        if let Some(i) = slot(id) {
            let why = message.unwrap_or("no reason given");
            results[i] = Err(PortError::Refused {
                operation,
                message: format!("{code}: {why}"),
            });
        }
    }
}

/// A notification as SNS takes it: its message and its routing attributes (for
/// subscription filter policies), as [`notification_message`] writes them.
fn sns_message(
    n: &Notification,
    operation: &'static str,
) -> Result<(String, HashMap<String, SnsAttribute>), PortError> {
    let message = notification_message(n);
    let attributes = message
        .attributes
        .into_iter()
        .map(|(name, value)| {
            SnsAttribute::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map(|v| (name.to_owned(), v))
                .map_err(|e| PortError::Refused {
                    operation,
                    message: e.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;
    Ok((message.body, attributes))
}

fn sns_failure<E, R>(operation: &'static str, e: aws_sdk_sns::error::SdkError<E, R>) -> PortError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_sns::error::{DisplayErrorContext, SdkError};
    let message = DisplayErrorContext(&e).to_string();
    match e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            PortError::Unreachable { operation, message }
        }
        _ => PortError::Refused { operation, message },
    }
}

#[async_trait]
impl Topic for SnsTopic {
    async fn publish(&self, notification: &Notification) -> Result<(), PortError> {
        const OP: &str = "Publish";
        let (message, attributes) = sns_message(notification, OP)?;
        self.client
            .publish()
            .topic_arn(&self.arn)
            .message(message)
            .set_message_attributes(Some(attributes))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sns_failure(OP, e))
    }

    /// One `PublishBatch` call ([`crate::ports::publish_batched`] keeps it within
    /// [`crate::ports::MAX_BATCH`] entries and [`crate::ports::MAX_BATCH_BYTES`]). A
    /// notification is published only once SNS acknowledges it: anything not listed as
    /// successful fails.
    async fn publish_batch(&self, notifications: &[Notification]) -> Vec<Result<(), PortError>> {
        use aws_sdk_sns::types::PublishBatchRequestEntry;
        const OP: &str = "PublishBatch";
        let mut results: Vec<Result<(), PortError>> = notifications
            .iter()
            .map(|_| {
                Err(PortError::Refused {
                    operation: OP,
                    message: "not acknowledged by SNS".into(),
                })
            })
            .collect();
        let mut entries = Vec::with_capacity(notifications.len());
        for (i, n) in notifications.iter().enumerate() {
            let entry = sns_message(n, OP).and_then(|(message, attributes)| {
                PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(message)
                    .set_message_attributes(Some(attributes))
                    .build()
                    .map_err(|e| PortError::Refused {
                        operation: OP,
                        message: e.to_string(),
                    })
            });
            match entry {
                Ok(entry) => entries.push(entry),
                Err(e) => results[i] = Err(e),
            }
        }
        if entries.is_empty() {
            return results;
        }
        let sent = self
            .client
            .publish_batch()
            .topic_arn(&self.arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await;
        match sent {
            Ok(out) => {
                let acknowledged = out.successful().iter().filter_map(|ok| ok.id());
                let failed = out.failed().iter().map(|f| (f.id(), f.code(), f.message()));
                settle_entries(&mut results, OP, acknowledged, failed);
                results
            }
            Err(e) => {
                let e = sns_failure(OP, e);
                notifications.iter().map(|_| Err(e.clone())).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    #[test]
    fn the_amazon_roots_are_five_readable_certificates() {
        let certs = CertificateDer::pem_slice_iter(AMAZON_ROOTS)
            .collect::<Result<Vec<_>, _>>()
            .expect("valid PEM");
        assert_eq!(certs.len(), 5);
        // A DER certificate is a SEQUENCE with a two-byte length: 0x30 0x82.
        assert!(certs.iter().all(|c| c.as_ref().starts_with(&[0x30, 0x82])));
    }

    #[test]
    fn a_deadline_margin_that_cannot_hold_one_ending_is_refused_naming_both_variables() {
        let five = Duration::from_secs(5);
        let err = check_deadline_margin(Duration::from_secs(3), five).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("DEADLINE_MARGIN_MS") && text.contains("CALL_TIMEOUT_MS=5000"),
            "{text}"
        );
        assert_eq!(
            check_deadline_margin(Duration::from_secs(21), five).ok(),
            Some(Duration::from_secs(21))
        );
        // The default is just enough.
        let guard = GuardConfig::default();
        std::env::remove_var("DEADLINE_MARGIN_MS");
        assert_eq!(
            deadline_margin(&guard).ok(),
            Some(crate::processor::ending_reserve(guard.call_timeout))
        );
    }

    #[test]
    fn the_trust_roots_setting_is_read_by_name() {
        // One test for every case: the variable is process-wide.
        std::env::remove_var("TLS_TRUST_ROOTS");
        assert_eq!(TrustRoots::from_env().ok(), Some(TrustRoots::Amazon));
        std::env::set_var("TLS_TRUST_ROOTS", "Native");
        assert_eq!(TrustRoots::from_env().ok(), Some(TrustRoots::Native));
        std::env::set_var("TLS_TRUST_ROOTS", "mozilla");
        let err = TrustRoots::from_env().expect_err("refused");
        assert!(err.to_string().contains("TLS_TRUST_ROOTS"), "{err}");
        std::env::remove_var("TLS_TRUST_ROOTS");
    }

    #[test]
    fn the_job_timeout_limit_is_read_by_name_with_its_default() {
        assert_eq!(max_job_timeout_from(None).ok(), Some(879));
        assert_eq!(max_job_timeout_from(Some(" ".into())).ok(), Some(879));
        assert_eq!(max_job_timeout_from(Some("600".into())).ok(), Some(600));
        for bad in ["0", "901", "ten", "-5"] {
            let err = max_job_timeout_from(Some(bad.into())).expect_err(bad);
            assert!(err.to_string().contains("MAX_JOB_TIMEOUT_SECONDS"), "{err}");
        }
    }

    #[test]
    fn only_a_complete_lambda_environment_skips_the_default_chains() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let lambda = LambdaGiven::from(env(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ]));
        assert_eq!(
            lambda,
            LambdaGiven {
                region: Some("eu-west-1".into()),
                credentials: true
            }
        );
        // A key without its secret, or blank values, leave it to the default chains.
        let partial = LambdaGiven::from(env(&[
            ("AWS_REGION", " "),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ]));
        assert_eq!(
            partial,
            LambdaGiven {
                region: None,
                credentials: false
            }
        );
    }
}
