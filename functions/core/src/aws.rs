//! The ports implemented on SQS and SNS, and the SDK clients behind them. Clients are
//! built once per process and shared by every invocation; the settings they need come
//! from [`crate::config`].

use crate::batching::Batching;
use crate::config::{ConfigError, TrustRoots, TRUST_ROOTS_VAR};
use crate::guard::{GuardConfig, Guarded};
use crate::messages::Notification;
use crate::ports::{MessageQueue, OutgoingMessage, PortError, Receipt, Topic};
use crate::record::notification_message;
use crate::store::dynamo::DynamoStore;
use async_trait::async_trait;
use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_config::{timeout::TimeoutConfig, BehaviorVersion, Region, SdkConfig};
use aws_sdk_sns::types::MessageAttributeValue as SnsAttribute;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider, TlsContext, TrustStore};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_types::config_bag::ConfigBag;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The certificate authorities of AWS service endpoints (Amazon Trust Services).
pub const AMAZON_ROOTS: &[u8] = include_bytes!("../certs/amazon-trust-services.pem");

/// The trust store `roots` names.
fn trust_store(roots: TrustRoots) -> TrustStore {
    match roots {
        TrustRoots::Amazon => TrustStore::empty().with_pem_certificate(AMAZON_ROOTS),
        TrustRoots::Native => TrustStore::default(),
    }
}

/// Loads the SDK configuration once, trusting `roots` (`TLS_TRUST_ROOTS`).
/// `AWS_ENDPOINT_URL` (set by emulators) is honoured. Timeouts keep one slow call
/// from eating the whole invocation.
pub async fn sdk_config(roots: TrustRoots) -> Result<SdkConfig, ConfigError> {
    let tls = TlsContext::builder()
        .with_trust_store(trust_store(roots))
        .build()
        .map_err(|e| ConfigError::Invalid {
            name: TRUST_ROOTS_VAR,
            expected: "a usable trust store",
            value: e.to_string(),
        })?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(tls)
        .build_https();
    let http = SharedHttpClient::new(ValidatedOnce::new(http));
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

/// The SDK's HTTPS client, whose start-up check runs for the first client built on it
/// only. That check (`validate_base_client_config`) builds a whole TLS connector, trust
/// store decoded and all, and throws it away, so that a broken TLS set-up fails at
/// start-up rather than at the first call; the SQS, SNS and DynamoDB clients share one
/// TLS set-up, so one check covers all three (two of three connector builds saved at
/// every cold start). Connectors for calls are built and cached by the inner client as
/// before.
#[derive(Debug)]
struct ValidatedOnce {
    inner: SharedHttpClient,
    validated: AtomicBool,
}

impl ValidatedOnce {
    fn new(inner: SharedHttpClient) -> ValidatedOnce {
        ValidatedOnce {
            inner,
            validated: AtomicBool::new(false),
        }
    }
}

impl HttpClient for ValidatedOnce {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.inner.http_connector(settings, components)
    }

    fn validate_base_client_config(
        &self,
        components: &RuntimeComponentsBuilder,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        if self.validated.load(Ordering::Acquire) {
            return Ok(());
        }
        self.inner.validate_base_client_config(components, cfg)?;
        self.validated.store(true, Ordering::Release);
        Ok(())
    }

    fn validate_final_config(
        &self,
        components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.inner.validate_final_config(components, cfg)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.inner.connector_metadata()
    }
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

    /// The queue at `url`; `name` is what errors and logs call it. The messages and
    /// visibility changes of concurrent records go together.
    pub fn queue(&self, url: String, name: &'static str) -> Batching<Guarded<SqsQueue>> {
        let queue = SqsQueue::new(self.sqs.clone(), url);
        Batching::new(Guarded::new(queue, name, self.guard))
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

    /// The job state table with its outbox index, for the relay.
    pub fn outbox(&self, table: String, index: String) -> Batching<Guarded<DynamoStore>> {
        let store = DynamoStore::new(self.dynamodb.clone(), table).with_outbox_index(index);
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

impl PortError {
    /// The one rule for every AWS service: a call that got no usable answer (no
    /// connection, a timeout, an answer that could not be read) is `Unreachable`, and
    /// may have taken effect; a call the service answered with an error, or one that
    /// could not even be built, is `Refused`, with the service's code and message.
    /// The circuit breaker and the lost-answer handling rely on exactly this split.
    pub fn from_sdk<E, R>(
        operation: &'static str,
        e: aws_sdk_sqs::error::SdkError<E, R>,
    ) -> PortError
    where
        E: std::error::Error + aws_sdk_sqs::error::ProvideErrorMetadata + 'static,
        R: std::fmt::Debug,
    {
        use aws_sdk_sqs::error::{DisplayErrorContext, SdkError};
        match &e {
            SdkError::DispatchFailure(_)
            | SdkError::TimeoutError(_)
            | SdkError::ResponseError(_) => PortError::Unreachable {
                operation,
                message: DisplayErrorContext(&e).to_string(),
            },
            SdkError::ServiceError(service) => {
                let err = service.err();
                let message = match (err.code(), err.message()) {
                    (Some(code), Some(text)) => format!("{code}: {text}"),
                    (Some(code), None) => code.to_owned(),
                    (None, Some(text)) => text.to_owned(),
                    (None, None) => DisplayErrorContext(&e).to_string(),
                };
                PortError::Refused { operation, message }
            }
            _ => PortError::Refused {
                operation,
                message: DisplayErrorContext(&e).to_string(),
            },
        }
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
        // An entry is sent only once SQS acknowledges it: anything not listed as
        // successful counts as failed.
        let mut results = unacknowledged(messages.len(), OP, "SQS");
        let entries = sqs_entries(messages, &mut results, OP);
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
                let err = PortError::from_sdk(OP, e);
                messages.iter().map(|_| Err(err.clone())).collect()
            }
        }
    }

    /// Every chunk is sent, even after one failed (a stale receipt in one chunk must
    /// not keep the records of the next from coming back early); the first failure is
    /// the answer.
    async fn retry_later(&self, receipts: &[Receipt]) -> Result<(), PortError> {
        let chunks = receipts.chunks(crate::ports::MAX_BATCH);
        let results = futures_util::future::join_all(chunks.map(|c| self.change_visibility(c)));
        results.await.into_iter().collect()
    }
}

impl SqsQueue {
    /// One `ChangeMessageVisibilityBatch` of at most ten receipts.
    async fn change_visibility(&self, chunk: &[Receipt]) -> Result<(), PortError> {
        use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry as Entry;
        const OP: &str = "ChangeMessageVisibilityBatch";
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
            .map_err(|e| PortError::from_sdk(OP, e))?;
        match out.failed().first() {
            Some(failed) => Err(PortError::Refused {
                operation: OP,
                message: format!(
                    "{} of {} not changed: {}",
                    out.failed().len(),
                    chunk.len(),
                    failed.message().unwrap_or(failed.code())
                ),
            }),
            None => Ok(()),
        }
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

/// The results of a batch call before its answer: every entry refused as not
/// acknowledged by `service`, until [`settle_entries`] reads what it acknowledged.
fn unacknowledged(
    count: usize,
    operation: &'static str,
    service: &str,
) -> Vec<Result<(), PortError>> {
    (0..count)
        .map(|_| {
            Err(PortError::Refused {
                operation,
                message: format!("not acknowledged by {service}"),
            })
        })
        .collect()
}

/// The `SendMessageBatch` entries of `messages`, each with its index as its id; the
/// `results` slot of a message SQS would not take says why.
fn sqs_entries(
    messages: &[OutgoingMessage],
    results: &mut [Result<(), PortError>],
    operation: &'static str,
) -> Vec<SendMessageBatchRequestEntry> {
    let refused = |message: String| Err(PortError::Refused { operation, message });
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
        if let Some(group) = &m.group {
            entry = entry
                .message_group_id(&group.group_id)
                .message_deduplication_id(&group.deduplication_id);
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
    entries
}

/// The `PublishBatch` entries of `notifications`, each with its index as its id; the
/// `results` slot of a notification SNS would not take says why.
fn sns_entries(
    notifications: &[Notification],
    results: &mut [Result<(), PortError>],
    operation: &'static str,
) -> Vec<aws_sdk_sns::types::PublishBatchRequestEntry> {
    let mut entries = Vec::with_capacity(notifications.len());
    for (i, n) in notifications.iter().enumerate() {
        let entry = sns_message(n, operation).and_then(|(message, attributes)| {
            aws_sdk_sns::types::PublishBatchRequestEntry::builder()
                .id(i.to_string())
                .message(message)
                .set_message_attributes(Some(attributes))
                .build()
                .map_err(|e| PortError::Refused {
                    operation,
                    message: e.to_string(),
                })
        });
        match entry {
            Ok(entry) => entries.push(entry),
            Err(e) => results[i] = Err(e),
        }
    }
    entries
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
            .map_err(|e| PortError::from_sdk(OP, e))
    }

    /// One `PublishBatch` call ([`crate::ports::publish_batched`] keeps it within
    /// [`crate::ports::MAX_BATCH`] entries and [`crate::ports::MAX_BATCH_BYTES`]). A
    /// notification is published only once SNS acknowledges it: anything not listed as
    /// successful fails.
    async fn publish_batch(&self, notifications: &[Notification]) -> Vec<Result<(), PortError>> {
        const OP: &str = "PublishBatch";
        let mut results = unacknowledged(notifications.len(), OP, "SNS");
        let entries = sns_entries(notifications, &mut results, OP);
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
                let e = PortError::from_sdk(OP, e);
                notifications.iter().map(|_| Err(e.clone())).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_error_maps_by_one_rule_that_tells_no_answer_from_a_refusal() {
        use aws_sdk_dynamodb::error::{ErrorMetadata, SdkError};
        use aws_sdk_dynamodb::operation::put_item::PutItemError;
        type E = SdkError<PutItemError, ()>;
        let throttled = PutItemError::generic(
            ErrorMetadata::builder()
                .code("ThrottlingException")
                .message("Rate exceeded")
                .build(),
        );
        let refused = PortError::from_sdk("PutItem", E::service_error(throttled, ()));
        assert_eq!(
            refused,
            PortError::Refused {
                operation: "PutItem",
                message: "ThrottlingException: Rate exceeded".into()
            }
        );
        // No usable answer: the call may have taken effect.
        for lost in [E::timeout_error("slow"), E::response_error("garbled", ())] {
            let e = PortError::from_sdk("PutItem", lost);
            assert!(matches!(e, PortError::Unreachable { .. }), "{e:?}");
        }
        let unbuilt = PortError::from_sdk("PutItem", E::construction_failure("no key"));
        assert!(matches!(unbuilt, PortError::Refused { .. }), "{unbuilt:?}");
    }
    /// An HTTP client that counts the start-up checks it is asked for.
    #[derive(Debug, Default)]
    struct Counting(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl HttpClient for Counting {
        fn http_connector(
            &self,
            _: &HttpConnectorSettings,
            _: &RuntimeComponents,
        ) -> SharedHttpConnector {
            unreachable!("no call is made")
        }

        fn validate_base_client_config(
            &self,
            _: &RuntimeComponentsBuilder,
            _: &ConfigBag,
        ) -> Result<(), BoxError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn three_sdk_clients_check_the_shared_https_client_once() {
        let checks = std::sync::Arc::default();
        let counting = Counting(std::sync::Arc::clone(&checks));
        let http = SharedHttpClient::new(ValidatedOnce::new(SharedHttpClient::new(counting)));
        let sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .http_client(http)
            .build();
        let _clients = Clients::new(&sdk, GuardConfig::default());
        assert_eq!(checks.load(Ordering::SeqCst), 1);
    }

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
