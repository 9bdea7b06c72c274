//! OpenTelemetry for the functions and the generator: the OTLP/HTTP exporters and
//! their per-invocation flush ([`Telemetry`]), the spans and metrics the handlers
//! record ([`Instruments`]), and W3C / X-Ray trace context on the wire
//! ([`propagation`]).
//!
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` is unset nothing is installed: the handlers
//! get no-op instruments, which still pass an incoming trace context through.
//! Exporting never fails a job: export errors are logged once per process, and a
//! flush is bounded in time.
//!
//! No background threads: ended spans wait in memory and metrics are read on demand,
//! and both are exported by [`Telemetry::flush`] on the caller's own runtime. A
//! Lambda must export before its invocation returns anyway (the process may be
//! frozen right after), and the SDK's batch processor, periodic reader and blocking
//! HTTP client cost three threads and about a millisecond of every cold start.

mod instruments;
pub mod propagation;

pub use instruments::{Instruments, Invocation, JobSpan, AWS_SQS};

/// What the handlers use.
pub(crate) mod instruments_prelude {
    pub use super::instruments::{Instruments, Invocation, JobSpan, AWS_SQS};
    pub use super::propagation;
    pub use opentelemetry::trace::TraceContextExt;
}

use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use tracing::{debug, warn};

/// The variable that turns exporting on.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Longest one OTLP request may take, retries included, unless `OTEL_EXPORTER_OTLP_TIMEOUT` says otherwise.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest an invocation waits for its telemetry to be flushed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);
/// Ended spans kept for the next flush; beyond this they are counted and dropped, so
/// a flush that keeps failing cannot grow memory (an invocation of ten records
/// ends about forty).
const MAX_PENDING_SPANS: usize = 2048;
/// [`Telemetry::flush_if_due`] flushes once this many spans wait (well short of the
/// cap)...
const DUE_SPANS: usize = 512;
/// ...or once this long has passed since the last flush.
const DUE_EVERY: Duration = Duration::from_secs(2);

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

/// The process's telemetry pipeline, or nothing.
#[derive(Debug)]
pub struct Telemetry {
    pipeline: Option<Exporting>,
    cold: AtomicBool,
    flush_timeout: Duration,
}

/// Providers the instruments record into, what they have gathered since the last
/// flush, and where it goes.
#[derive(Debug)]
struct Exporting {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    pending: Arc<PendingSpans>,
    reader: Arc<ManualReader>,
    exporters: Box<dyn Export>,
    loss: LossReport,
    /// Exporters must not be called concurrently, so flushes take turns; the turn
    /// keeps when the last one started.
    turn: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Telemetry {
    /// No exporter at all: no-op instruments, nothing to flush.
    pub fn disabled() -> Telemetry {
        Telemetry {
            pipeline: None,
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
        Telemetry::otlp(service_name, None, export_timeout()?)
    }

    /// The OTLP exporters to `endpoint` (a base URL), or to where the exporters'
    /// own `OTEL_EXPORTER_OTLP_*` variables say when it is `None`.
    fn otlp(
        service_name: &'static str,
        endpoint: Option<&str>,
        timeout: Duration,
    ) -> Result<Telemetry, TelemetryError> {
        // One async client for both signals: it runs on the flushing task's runtime
        // and starts nothing until the first export.
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| TelemetryError::Client(e.to_string()))?;
        // A collector that does not answer costs one quick retry, not seconds per flush.
        let retry = opentelemetry_otlp::RetryPolicy::default()
            .with_max_retries(1)
            .with_initial_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(200))
            .with_max_jitter(Duration::from_millis(20));
        let mut spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client.clone())
            .with_protocol(Protocol::HttpBinary)
            .with_retry_policy(retry.clone())
            .with_timeout(timeout);
        let mut metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_retry_policy(retry)
            .with_timeout(timeout);
        if let Some(base) = endpoint {
            let base = base.trim_end_matches('/');
            spans = spans.with_endpoint(format!("{base}/v1/traces"));
            metrics = metrics.with_endpoint(format!("{base}/v1/metrics"));
        }
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

    /// Providers whose spans and metrics go to the given exporters (the OTLP ones,
    /// or keeping ones in tests) at each [`Telemetry::flush`].
    pub fn with_exporters<S, M>(service_name: &'static str, mut spans: S, metrics: M) -> Telemetry
    where
        S: SpanExporter + 'static,
        M: PushMetricExporter,
    {
        let resource = resource(service_name);
        spans.set_resource(&resource);
        let pending = Arc::new(PendingSpans::default());
        let tracer_provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(Gather(pending.clone()))
            .build();
        let reader = Arc::new(
            ManualReader::builder()
                .with_temporality(metrics.temporality())
                .build(),
        );
        let meter_provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(SharedReader(reader.clone()))
            .build();
        Telemetry {
            pipeline: Some(Exporting {
                tracer_provider,
                meter_provider,
                pending,
                reader,
                exporters: Box::new(Exporters { spans, metrics }),
                loss: LossReport::default(),
                turn: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            }),
            cold: AtomicBool::new(true),
            flush_timeout: FLUSH_TIMEOUT,
        }
    }

    /// Whether spans and metrics leave the process.
    pub fn enabled(&self) -> bool {
        self.pipeline.is_some()
    }

    /// The instruments the handlers record with: bound to this pipeline, or no-ops.
    pub fn instruments(&self) -> Instruments {
        match &self.pipeline {
            Some(p) => Instruments::new(&p.tracer_provider, &p.meter_provider),
            None => Instruments::default(),
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

    /// Spans ended since the last flush, waiting for the next one.
    fn pending_spans(&self) -> usize {
        self.pipeline.as_ref().map_or(0, |p| p.pending.len())
    }

    /// For a long-running process that ends spans between its own units of work (the
    /// generator): flushes when enough spans wait or enough time has passed, so a long
    /// run exports as it goes and never reaches the buffer's cap.
    pub async fn flush_if_due(&self) {
        let Some(pipeline) = &self.pipeline else {
            return;
        };
        let due =
            self.pending_spans() >= DUE_SPANS || pipeline.turn.lock().await.elapsed() >= DUE_EVERY;
        if due {
            self.flush().await;
        }
    }

    /// Exports every span ended and every metric recorded so far (Lambda may freeze
    /// the process as soon as the invocation returns). Bounded in time and never
    /// failing: what does not make it is reported once per process and dropped.
    pub async fn flush(&self) {
        let Some(pipeline) = &self.pipeline else {
            return;
        };
        let mut turn = pipeline.turn.lock().await;
        *turn = tokio::time::Instant::now();
        if tokio::time::timeout(self.flush_timeout, pipeline.export())
            .await
            .is_err()
        {
            pipeline.loss.note(
                "traces and metrics",
                0,
                &Err(OTelSdkError::Timeout(self.flush_timeout)),
            );
        }
    }

    /// Flushes and stops the providers: for a process that is about to exit.
    pub async fn shutdown(self) {
        self.flush().await;
        if let Some(p) = self.pipeline {
            let _ = p.tracer_provider.shutdown();
            let _ = p.meter_provider.shutdown();
        }
    }
}

impl Exporting {
    async fn export(&self) {
        let spans = self.pending.take();
        let dropped = self.pending.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let e = OTelSdkError::InternalFailure(format!(
                "{dropped} spans dropped: more than {MAX_PENDING_SPANS} waited for a flush"
            ));
            self.loss.note("traces", 0, &Err(e));
        }
        let mut metrics = ResourceMetrics::default();
        let collected = self.reader.collect(&mut metrics);
        let spans = async {
            if !spans.is_empty() {
                let items = spans.len();
                let result = self.exporters.spans(spans).await;
                self.loss.note("traces", items, &result);
            }
        };
        let metrics = async {
            match collected {
                Ok(()) if metrics.scope_metrics().next().is_some() => {
                    let result = self.exporters.metrics(&metrics).await;
                    self.loss.note("metrics", 1, &result);
                }
                Ok(()) => {}
                Err(e) => debug!(error = %e, "metrics not collected"),
            }
        };
        futures_util::future::join(spans, metrics).await;
    }
}

/// Ended spans since the last flush, and how many did not fit.
#[derive(Debug, Default)]
struct PendingSpans {
    spans: Mutex<Vec<SpanData>>,
    dropped: AtomicU64,
}

impl PendingSpans {
    /// The waiting spans, leaving room for as many again: each invocation ends about
    /// as many as the last, and the buffer need not grow from empty every time.
    fn take(&self) -> Vec<SpanData> {
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        let room = Vec::with_capacity(spans.len());
        std::mem::replace(&mut *spans, room)
    }

    fn len(&self) -> usize {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The span processor: keeps each ended span for the next flush.
#[derive(Debug)]
struct Gather(Arc<PendingSpans>);

impl SpanProcessor for Gather {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let mut spans = self.0.spans.lock().unwrap_or_else(PoisonError::into_inner);
        if spans.len() < MAX_PENDING_SPANS {
            spans.push(span);
        } else {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Exporting is async and belongs to [`Telemetry::flush`]; the SDK's own
    /// (blocking) flush has nothing to do here.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The meter provider owns its readers; this lets [`Exporting`] read the same one.
#[derive(Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// Both exporters behind one object-safe face, so [`Telemetry`] needs no type
/// parameters.
#[async_trait::async_trait]
trait Export: Send + Sync + std::fmt::Debug {
    async fn spans(&self, batch: Vec<SpanData>) -> OTelSdkResult;
    async fn metrics(&self, metrics: &ResourceMetrics) -> OTelSdkResult;
}

struct Exporters<S, M> {
    spans: S,
    metrics: M,
}

impl<S, M> std::fmt::Debug for Exporters<S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporters")
    }
}

#[async_trait::async_trait]
impl<S: SpanExporter, M: PushMetricExporter> Export for Exporters<S, M> {
    async fn spans(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.spans.export(batch).await
    }

    async fn metrics(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        self.metrics.export(metrics).await
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
/// the logs with one line per flush.
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
    /// resolves, its spans and metrics have already been exported, and nothing
    /// deadlocked.
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

    fn end_spans(telemetry: &Telemetry, n: usize) {
        use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
        let pipeline = telemetry.pipeline.as_ref().expect("enabled");
        let tracer = pipeline.tracer_provider.tracer("test");
        for _ in 0..n {
            tracer.start("work").end();
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn spans_beyond_the_cap_are_counted_and_dropped_not_kept() {
        let (telemetry, spans, _) = kept();
        end_spans(&telemetry, MAX_PENDING_SPANS + 7);
        assert_eq!(telemetry.pending_spans(), MAX_PENDING_SPANS);
        telemetry.flush().await;
        assert_eq!(spans.spans().len(), MAX_PENDING_SPANS);
        assert_eq!(telemetry.pending_spans(), 0);
        let pipeline = telemetry.pipeline.as_ref().expect("enabled");
        assert_eq!(pipeline.pending.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(pipeline.loss.failures.load(Ordering::Relaxed), 1);
        // Room again once flushed.
        end_spans(&telemetry, 3);
        telemetry.flush().await;
        assert_eq!(spans.spans().len(), MAX_PENDING_SPANS + 3);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_long_run_flushes_when_enough_spans_wait_or_enough_time_passed() {
        let (telemetry, spans, _) = kept();
        end_spans(&telemetry, DUE_SPANS - 1);
        telemetry.flush_if_due().await;
        assert_eq!(telemetry.pending_spans(), DUE_SPANS - 1, "neither due yet");
        end_spans(&telemetry, 1);
        telemetry.flush_if_due().await;
        assert_eq!(spans.spans().len(), DUE_SPANS, "enough spans waited");
        end_spans(&telemetry, 3);
        tokio::time::advance(DUE_EVERY - Duration::from_millis(1)).await;
        telemetry.flush_if_due().await;
        assert_eq!(telemetry.pending_spans(), 3, "not due yet");
        tokio::time::advance(Duration::from_millis(1)).await;
        telemetry.flush_if_due().await;
        assert_eq!(spans.spans().len(), DUE_SPANS + 3, "enough time passed");
    }

    /// A span exporter whose collector never answers.
    #[derive(Debug)]
    struct Stalled;

    impl SpanExporter for Stalled {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            std::future::pending().await
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_stalled_collector_costs_each_flush_its_bound_and_no_more() {
        let telemetry = Telemetry::with_exporters("test", Stalled, KeptMetrics::default());
        end_spans(&telemetry, 5);
        let started = tokio::time::Instant::now();
        telemetry.flush().await;
        assert_eq!(started.elapsed(), FLUSH_TIMEOUT);
        // The stalled spans are given up, not retried forever or kept.
        assert_eq!(telemetry.pending_spans(), 0);
        let pipeline = telemetry.pipeline.as_ref().expect("enabled");
        assert_eq!(pipeline.loss.failures.load(Ordering::Relaxed), 1);
        end_spans(&telemetry, 1);
        telemetry.flush().await;
        assert_eq!(started.elapsed(), FLUSH_TIMEOUT * 2);
    }

    /// Reads one HTTP/1.1 request (headers and a `content-length` body) and answers 200.
    async fn answer_one(
        conn: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    ) -> std::io::Result<Option<String>> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let mut request_line = String::new();
        if conn.read_line(&mut request_line).await? == 0 {
            return Ok(None);
        }
        let mut length = 0;
        let mut content_type = String::new();
        loop {
            let mut header = String::new();
            conn.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "content-type" => content_type = value.trim().to_owned(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        conn.read_exact(&mut body).await?;
        conn.get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await?;
        let mut seen = request_line
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        seen.push_str(&format!(" {content_type} {}", !body.is_empty()));
        Ok(Some(seen))
    }

    /// The real OTLP exporters, on the one-worker runtime the functions use, to a
    /// collector on loopback served by that same runtime: a flush that needed
    /// another thread, or blocked this one, would never be answered.
    #[tokio::test(flavor = "current_thread")]
    async fn the_otlp_exporters_send_both_signals_from_the_callers_runtime() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let server = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let mut conn = tokio::io::BufReader::new(stream);
                        while let Ok(Some(request)) = answer_one(&mut conn).await {
                            seen.lock().expect("lock").push(request);
                        }
                    });
                }
            })
        };
        let telemetry = Telemetry::otlp(
            "test",
            Some(&format!("http://{addr}/")),
            Duration::from_secs(2),
        )
        .expect("exporters");
        let instruments = telemetry.instruments();
        instruments
            .producer_span(AWS_SQS, "jobs-todo", &Context::new())
            .end();
        instruments.record_retry("echo", "timeout");
        telemetry.flush().await;
        server.abort();

        let mut seen = seen.lock().expect("lock").clone();
        seen.sort();
        assert_eq!(
            seen,
            [
                "POST /v1/metrics application/x-protobuf true",
                "POST /v1/traces application/x-protobuf true",
            ]
        );
        let pipeline = telemetry.pipeline.as_ref().expect("enabled");
        assert_eq!(pipeline.loss.failures.load(Ordering::Relaxed), 0);
    }
}
