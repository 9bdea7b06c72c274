//! OpenTelemetry for the functions and the generator: the OTLP/HTTP exporters and
//! their per-invocation flush ([`Telemetry`]), the spans and metrics the handlers
//! record ([`Instruments`]), and W3C / X-Ray trace context on the wire
//! ([`propagation`]).
//!
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` is unset nothing is installed: the handlers
//! get no-op instruments, which still pass an incoming trace context through.
//! Exporting never fails a job: export errors are logged once per process, and a
//! flush is bounded in time.

mod instruments;
pub mod propagation;

pub use instruments::{Instruments, Invocation, JobSpan, AWS_SQS};

/// What the handlers use.
pub(crate) mod instruments_prelude {
    pub use super::instruments::{Instruments, Invocation, JobSpan, AWS_SQS};
    pub use super::propagation;
    pub use opentelemetry::trace::TraceContextExt;
}

use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// The variable that turns exporting on.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Longest one OTLP request may take, retries included, unless `OTEL_EXPORTER_OTLP_TIMEOUT` says otherwise.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest an invocation waits for its telemetry to be flushed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Telemetry that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("environment variable OTEL_EXPORTER_OTLP_TIMEOUT must be a whole number of milliseconds, got {0:?}")]
    Timeout(String),
    #[error("cannot build the OTLP HTTP client: {0}")]
    Client(String),
    #[error("cannot build the OTLP {signal} exporter: {source}")]
    Exporter {
        signal: &'static str,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), or our default: short, since every
/// invocation waits for its flush.
fn export_timeout() -> Result<Duration, TelemetryError> {
    match std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| TelemetryError::Timeout(v)),
        _ => Ok(EXPORT_TIMEOUT),
    }
}

/// The process's telemetry pipeline: tracer and meter providers, or nothing.
#[derive(Debug)]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    cold: AtomicBool,
    flush_timeout: Duration,
}

impl Telemetry {
    /// No exporter at all: no-op instruments, nothing to flush.
    pub fn disabled() -> Telemetry {
        Telemetry {
            tracer_provider: None,
            meter_provider: None,
            cold: AtomicBool::new(true),
            flush_timeout: FLUSH_TIMEOUT,
        }
    }

    /// OTLP over HTTP/protobuf to `OTEL_EXPORTER_OTLP_ENDPOINT` (the exporter adds
    /// `/v1/traces` and `/v1/metrics`), or [`Telemetry::disabled`] when it is unset.
    pub fn from_env(service_name: &'static str) -> Result<Telemetry, TelemetryError> {
        if std::env::var(ENDPOINT_VAR).map_or(true, |v| v.trim().is_empty()) {
            return Ok(Telemetry::disabled());
        }
        let timeout = export_timeout()?;
        // One HTTP client for both signals: each blocking client is a thread with its
        // own runtime, started and waited for during init.
        let client = std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .build()
        })
        .join()
        .map_err(|_| TelemetryError::Client("its thread panicked".into()))?
        .map_err(|e| TelemetryError::Client(e.to_string()))?;
        // A collector that does not answer costs one quick retry, not seconds per flush.
        let retry = opentelemetry_otlp::RetryPolicy::default()
            .with_max_retries(1)
            .with_initial_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(200))
            .with_max_jitter(Duration::from_millis(20));
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client.clone())
            .with_protocol(Protocol::HttpBinary)
            .with_retry_policy(retry.clone())
            .with_timeout(timeout);
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_retry_policy(retry)
            .with_timeout(timeout);
        let spans = spans.build().map_err(|source| TelemetryError::Exporter {
            signal: "trace",
            source,
        })?;
        let metrics = metrics.build().map_err(|source| TelemetryError::Exporter {
            signal: "metric",
            source,
        })?;
        Ok(Telemetry::with_exporters(service_name, spans, metrics))
    }

    /// Batch span processor and a periodic metric reader over the given exporters
    /// (the OTLP ones, or counting ones in tests). Both run on their own OS threads,
    /// so exporting never needs the caller's async runtime.
    pub fn with_exporters<S, M>(service_name: &'static str, spans: S, metrics: M) -> Telemetry
    where
        S: SpanExporter + 'static,
        M: PushMetricExporter,
    {
        let resource = resource(service_name);
        let loss = Arc::new(LossReport::default());
        let tracer_provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_batch_exporter(Reporting {
                signal: "traces",
                inner: spans,
                loss: loss.clone(),
            })
            .build();
        // Flushed after every invocation; the interval only matters for a long one.
        let reader = PeriodicReader::builder(Reporting {
            signal: "metrics",
            inner: metrics,
            loss,
        })
        .with_interval(Duration::from_secs(60))
        .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();
        Telemetry {
            tracer_provider: Some(tracer_provider),
            meter_provider: Some(meter_provider),
            cold: AtomicBool::new(true),
            flush_timeout: FLUSH_TIMEOUT,
        }
    }

    /// Whether spans and metrics leave the process.
    pub fn enabled(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// The instruments the handlers record with: bound to this pipeline, or no-ops.
    pub fn instruments(&self) -> Instruments {
        match (&self.tracer_provider, &self.meter_provider) {
            (Some(tp), Some(mp)) => Instruments::new(tp, mp),
            _ => Instruments::default(),
        }
    }

    /// Facts about one invocation for its spans; the first one of the process is the cold start.
    pub fn invocation(&self, request_id: &str) -> Invocation {
        Invocation {
            request_id: request_id.to_owned(),
            coldstart: self.cold.swap(false, Ordering::Relaxed),
        }
    }

    /// Runs one invocation's handler with its [`Invocation`] facts, then flushes its
    /// telemetry before returning: what the Lambda mains wrap their handlers in.
    pub async fn invoke<F, Fut, R>(&self, request_id: &str, handler: F) -> R
    where
        F: FnOnce(Invocation) -> Fut,
        Fut: std::future::Future<Output = R>,
    {
        let result = handler(self.invocation(request_id)).await;
        self.flush().await;
        result
    }

    /// Exports every span ended and every metric recorded so far, before the
    /// invocation returns (Lambda may freeze the process right after). The blocking
    /// flush runs on tokio's blocking pool, so the (one-worker) runtime keeps
    /// running; it is abandoned after a bound, never failing the invocation.
    pub async fn flush(&self) {
        if !self.enabled() {
            return;
        }
        let tp = self.tracer_provider.clone();
        let mp = self.meter_provider.clone();
        let flush = tokio::task::spawn_blocking(move || {
            if let Some(tp) = tp {
                if let Err(e) = tp.force_flush() {
                    debug!(error = %e, "trace flush incomplete");
                }
            }
            if let Some(mp) = mp {
                if let Err(e) = mp.force_flush() {
                    debug!(error = %e, "metric flush incomplete");
                }
            }
        });
        if tokio::time::timeout(self.flush_timeout, flush)
            .await
            .is_err()
        {
            debug!(
                timeout_ms = self.flush_timeout.as_millis() as u64,
                "telemetry flush timed out"
            );
        }
    }

    /// Flushes and stops the exporters: for a process that is about to exit.
    pub async fn shutdown(self) {
        self.flush().await;
        let Telemetry {
            tracer_provider,
            meter_provider,
            ..
        } = self;
        let stop = tokio::task::spawn_blocking(move || {
            if let Some(tp) = tracer_provider {
                let _ = tp.shutdown_with_timeout(FLUSH_TIMEOUT);
            }
            if let Some(mp) = meter_provider {
                let _ = mp.shutdown_with_timeout(FLUSH_TIMEOUT);
            }
        });
        let _ = tokio::time::timeout(FLUSH_TIMEOUT * 2, stop).await;
    }
}

/// The process's resource: who emits (service, function, instance), from the
/// Lambda environment where there is one.
fn resource(service_name: &'static str) -> Resource {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut attrs = vec![KeyValue::new("cloud.provider", "aws")];
    if let Some(region) = env("AWS_REGION") {
        attrs.push(KeyValue::new("cloud.region", region));
    }
    if let Some(name) = env("AWS_LAMBDA_FUNCTION_NAME") {
        attrs.push(KeyValue::new("cloud.platform", "aws_lambda"));
        attrs.push(KeyValue::new("faas.name", name));
    }
    if let Some(version) = env("AWS_LAMBDA_FUNCTION_VERSION") {
        attrs.push(KeyValue::new("faas.version", version));
    }
    if let Some(mb) = env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").and_then(|m| m.parse::<i64>().ok()) {
        attrs.push(KeyValue::new("faas.max_memory", mb * 1024 * 1024));
    }
    // Each warm worker is its own metric series (cumulative counters per process).
    let instance = env("AWS_LAMBDA_LOG_STREAM_NAME").unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{}-{nanos:08x}", std::process::id())
    });
    attrs.push(KeyValue::new("faas.instance", instance.clone()));
    attrs.push(KeyValue::new("service.instance.id", instance));
    Resource::builder()
        .with_service_name(service_name)
        .with_attributes(attrs)
        .build()
}

/// Export failures, reported once per process: a missing collector must not flood
/// the logs with one line per batch.
#[derive(Debug, Default)]
struct LossReport {
    reported: AtomicBool,
    failures: AtomicU64,
}

impl LossReport {
    fn note(&self, signal: &'static str, items: usize, result: &OTelSdkResult) {
        let Err(e) = result else { return };
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.reported.swap(true, Ordering::Relaxed) {
            warn!(signal, items, error = %e,
                "telemetry export failed; telemetry is being dropped (jobs are unaffected; \
                 reported once per process)");
        } else {
            debug!(signal, items, failures, error = %e, "telemetry export failed again");
        }
    }
}

/// An exporter that reports its failures through [`LossReport`].
#[derive(Debug)]
struct Reporting<E> {
    signal: &'static str,
    inner: E,
    loss: Arc<LossReport>,
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let items = batch.len();
        let result = self.inner.export(batch).await;
        self.loss.note(self.signal, items, &result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Reporting<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.loss.note(self.signal, 1, &result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingester::{Ingester, IngesterConfig};
    use crate::processor::{Processor, ProcessorConfig};
    use crate::testing::exporters::{KeptMetrics, KeptSpans};
    use crate::testing::{MemoryQueue, MemoryTopic};
    use opentelemetry::trace::{SpanKind, Status};
    use opentelemetry::Value;

    #[test]
    fn the_export_timeout_is_read_by_name() {
        // The only test touching this variable: it is process-wide.
        std::env::remove_var("OTEL_EXPORTER_OTLP_TIMEOUT");
        assert_eq!(export_timeout().ok(), Some(EXPORT_TIMEOUT));
        std::env::set_var("OTEL_EXPORTER_OTLP_TIMEOUT", "750");
        assert_eq!(export_timeout().ok(), Some(Duration::from_millis(750)));
        std::env::set_var("OTEL_EXPORTER_OTLP_TIMEOUT", "2s");
        let err = export_timeout().expect_err("refused");
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_TIMEOUT"),
            "{err}"
        );
        std::env::remove_var("OTEL_EXPORTER_OTLP_TIMEOUT");
    }

    fn attr(span: &SpanData, key: &str) -> Option<Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    }

    fn kept() -> (Telemetry, KeptSpans, KeptMetrics) {
        let (spans, metrics) = (KeptSpans::default(), KeptMetrics::default());
        let telemetry = Telemetry::with_exporters("test", spans.clone(), metrics.clone());
        (telemetry, spans, metrics)
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:01Z")
            .expect("valid")
            .with_timezone(&chrono::Utc)
    }

    /// On the one-worker runtime the functions use: when the invocation's future
    /// resolves, its spans and metrics have already been exported (the batch
    /// processor alone would wait 5 s), and nothing deadlocked.
    #[tokio::test(flavor = "current_thread")]
    async fn an_invocation_is_exported_before_it_returns() {
        let (telemetry, spans, metrics) = kept();
        let ingester = Ingester {
            source: MemoryQueue::default(),
            jobs_todo: MemoryQueue::default(),
            dead_letters: MemoryQueue::default(),
            topic: MemoryTopic::default(),
            store: crate::state::MemoryStore::default(),
            config: IngesterConfig {
                max_receive_count: 5,
            },
            telemetry: telemetry.instruments(),
        };
        let event = serde_json::from_str(include_str!("../../fixtures/ingester-batch.json"))
            .expect("fixture");
        let response = telemetry
            .invoke("req-1", |inv| {
                let ingester = &ingester;
                async move {
                    ingester
                        .handle_invocation(
                            event,
                            now() + chrono::Duration::seconds(30),
                            now(),
                            &inv,
                        )
                        .await
                }
            })
            .await;
        assert!(response.batch_item_failures.is_empty());

        let exported = spans.spans();
        let consumers: Vec<_> = exported
            .iter()
            .filter(|s| s.name == "process ingester-queue")
            .collect();
        assert_eq!(consumers.len(), 10, "one consumer span per record");
        assert!(consumers.iter().all(|s| s.span_kind == SpanKind::Consumer
            && attr(s, "faas.invocation_id") == Some("req-1".into())
            && attr(s, "faas.coldstart") == Some(true.into())
            && attr(s, "messaging.system") == Some("aws_sqs".into())));
        let rejected = consumers
            .iter()
            .filter(|s| matches!(s.status, Status::Error { .. }))
            .count();
        assert_eq!(rejected, 5);

        // Every forwarded job carries its `send` span's context, a child of its consumer span.
        let producers: Vec<_> = exported
            .iter()
            .filter(|s| s.span_kind == SpanKind::Producer)
            .collect();
        assert_eq!(producers.len(), 5);
        for job in ingester.jobs_todo.jobs() {
            let tp = job
                .trace_context
                .expect("forwarded jobs carry trace context")
                .traceparent;
            let producer = producers
                .iter()
                .find(|p| tp.contains(&p.span_context.span_id().to_string()))
                .expect("the carried context is a send span");
            let consumer = consumers
                .iter()
                .find(|c| c.span_context.span_id() == producer.parent_span_id)
                .expect("the send span's parent is the consumer span");
            assert_eq!(attr(consumer, "job.id"), Some(job.job_id.clone().into()));
        }
        let batch = exported
            .iter()
            .find(|s| s.name == "ingester")
            .expect("invocation span");
        assert_eq!(
            attr(batch, "messaging.batch.message_count"),
            Some(10i64.into())
        );
        assert!(metrics.names().contains(&"job.end_states".to_owned()));
        assert!(metrics.names().contains(&"job.latency".to_owned()));

        // The next invocation of the process is warm.
        assert!(!telemetry.invocation("req-2").coldstart);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_failed_job_keeps_its_trace_with_an_error() {
        let (telemetry, spans, _) = kept();
        let processor = Processor {
            jobs_todo: MemoryQueue::default(),
            dead_letters: MemoryQueue::default(),
            topic: MemoryTopic::default(),
            store: crate::state::MemoryStore::default(),
            config: ProcessorConfig {
                deadline_margin: std::time::Duration::from_secs(3),
                retry: crate::retry::RetryPolicy::default(),
                fault_injection: false,
            },
            telemetry: telemetry.instruments(),
        };
        let event: aws_lambda_events::sqs::SqsEvent =
            serde_json::from_str(include_str!("../../fixtures/processor-batch.json"))
                .expect("fixture");
        let deadline = now() + chrono::Duration::seconds(60);
        telemetry
            .invoke("req-1", |inv| {
                let processor = &processor;
                async move {
                    processor
                        .handle_invocation(event, deadline, now(), &inv)
                        .await
                }
            })
            .await;
        let exported = spans.spans();
        let long = exported
            .iter()
            .find(|s| s.name == "process jobs-todo" && attr(s, "job.id") == Some("job-long".into()))
            .expect("consumer span of the long job");
        assert!(
            matches!(long.status, Status::Error { .. }),
            "{:?}",
            long.status
        );
        assert_eq!(attr(long, "error.type"), Some("deadline_exceeded".into()));
        let execute = exported
            .iter()
            .find(|s| s.name == "execute long_running_job")
            .expect("execute span");
        assert_eq!(execute.parent_span_id, long.span_context.span_id());
        assert_eq!(
            execute.span_context.trace_id(),
            long.span_context.trace_id()
        );
        let dead = processor.dead_letters.dead_letters();
        let dl = dead
            .iter()
            .find(|d| d.job_id == "job-long")
            .expect("dead letter");
        let tc = dl
            .trace_context
            .as_ref()
            .expect("the dead letter keeps the trace");
        assert!(tc
            .traceparent
            .contains(&long.span_context.trace_id().to_string()));
    }
}
