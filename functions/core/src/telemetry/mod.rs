//! OpenTelemetry for the functions and the generator: the OTLP/HTTP exporters and
//! their per-invocation flush ([`Telemetry`]), the spans and metrics the handlers
//! record ([`Instruments`]), and W3C / X-Ray trace context on the wire
//! ([`propagation`]).
//!
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` is unset nothing is installed: the handlers
//! get no-op instruments, which still pass an incoming trace context through.
//! An `https://` collector is verified against the platform's trust roots plus the
//! CA certificates of `OTEL_EXPORTER_OTLP_CERTIFICATE`, loaded only then; a plain
//! `http://` one loads no certificates at all.
//! Exporting never fails a job: export errors are logged once per process, and a
//! flush is bounded in time.
//!
//! The handlers' spans are `tracing` spans; [`Telemetry::span_layer`] is the
//! `tracing-opentelemetry` layer that makes them this pipeline's spans, and the
//! process installs it under its log lines ([`crate::logging::init`]) or alone
//! ([`Telemetry::install`]).
//!
//! No background threads: ended spans wait in memory and metrics are read on demand,
//! and both are exported by [`Telemetry::flush`] on the caller's own runtime. A
//! Lambda must export before its invocation returns anyway (the process may be
//! frozen right after), and the SDK's batch processor, periodic reader and blocking
//! HTTP client cost three threads and about a millisecond of every cold start.
//!
//! Every series of `job.end_states` is exported at 0 before its first increment: the
//! pipeline's set-up adds 0 to each (job type, terminal status) pair and keeps that
//! collection as a baseline, which the process's first flush exports before the
//! current values. A series that first appears at 1 would be missed by Prometheus'
//! `increase()` and `rate()`.

mod instruments;
mod layer;
pub mod propagation;

pub use instruments::{
    metric_job_type, Instruments, Invocation, JobSpan, AWS_SQS, UNKNOWN_JOB_TYPE,
};
pub use layer::{
    exported, for_log_lines, SpanFilter, SpanLayer, LOG_SPAN_TARGET, TRACE_SPAN_TARGET,
};

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
/// A PEM file of CA certificates to trust for an `https://` collector, besides the
/// platform's. One HTTP client serves both signals, so the per-signal variants
/// (`OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`, ...) are not read.
pub const CERTIFICATE_VAR: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
/// The longest one OTLP request may take, in milliseconds.
const TIMEOUT_VAR: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// Full URLs of each signal's collector, overriding [`ENDPOINT_VAR`] plus its path.
const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const METRICS_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
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
    #[error("environment variable {var} names {path:?}, which cannot be used as CA certificates: {reason}")]
    Certificate {
        var: &'static str,
        path: String,
        reason: String,
    },
    #[error("cannot build the OTLP {signal} exporter: {source}")]
    Exporter {
        signal: &'static str,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Where and how the OTLP exporters send, from the standard `OTEL_EXPORTER_OTLP_*`
/// variables. The exporters still read the ones not named here themselves (headers,
/// compression).
#[derive(Debug, Clone, PartialEq, Eq)]
struct OtlpSettings {
    /// Full URLs: the per-signal variable as given, else the endpoint plus
    /// `/v1/traces` or `/v1/metrics`.
    traces: String,
    metrics: String,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), or our default: short, since
    /// every invocation waits for its flush.
    timeout: Duration,
    /// [`CERTIFICATE_VAR`]: the path of a PEM file.
    certificate: Option<String>,
}

impl OtlpSettings {
    /// The settings the variables describe (`var` looks one up), or `None` when
    /// [`ENDPOINT_VAR`] is unset: exporting is off.
    fn from(var: impl Fn(&str) -> Option<String>) -> Result<Option<OtlpSettings>, TelemetryError> {
        let set = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let Some(endpoint) = set(ENDPOINT_VAR) else {
            return Ok(None);
        };
        let base = endpoint.trim_end_matches('/');
        let timeout = match var(TIMEOUT_VAR) {
            Some(v) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .map(Duration::from_millis)
                .map_err(|_| TelemetryError::Timeout(v))?,
            _ => EXPORT_TIMEOUT,
        };
        Ok(Some(OtlpSettings {
            traces: set(TRACES_ENDPOINT_VAR).unwrap_or_else(|| format!("{base}/v1/traces")),
            metrics: set(METRICS_ENDPOINT_VAR).unwrap_or_else(|| format!("{base}/v1/metrics")),
            timeout,
            certificate: set(CERTIFICATE_VAR),
        }))
    }

    /// Whether either signal goes to an `https://` collector.
    fn https(&self) -> bool {
        [&self.traces, &self.metrics].iter().any(|url| {
            url.get(..8)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
        })
    }

    /// The one async client for both signals. It runs on the flushing task's runtime
    /// and starts nothing until the first export. Trust roots are loaded only for
    /// HTTPS: the platform's, plus [`CERTIFICATE_VAR`]'s when set.
    fn client(&self) -> Result<reqwest::Client, TelemetryError> {
        let client = reqwest::Client::builder().timeout(self.timeout);
        if !self.https() {
            // An empty trust store: building it reads no certificates.
            return client
                .tls_certs_only(Vec::new())
                .build()
                .map_err(|e| TelemetryError::Client(causes(&e)));
        }
        let Some(path) = &self.certificate else {
            return client
                .build()
                .map_err(|e| TelemetryError::Client(causes(&e)));
        };
        let unusable = |reason: String| TelemetryError::Certificate {
            var: CERTIFICATE_VAR,
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| unusable(e.to_string()))?;
        let certificates =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| unusable(causes(&e)))?;
        if certificates.is_empty() {
            return Err(unusable("it holds no PEM certificate".into()));
        }
        // The certificates' contents are checked here, as trust anchors.
        client
            .tls_certs_merge(certificates)
            .build()
            .map_err(|e| unusable(causes(&e)))
    }
}

/// An error and its sources, one after another (reqwest's own message is only its
/// kind, such as "builder error").
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
    /// The collection taken at set-up, with every series of `job.end_states` at 0,
    /// until the first flush exports it ahead of the current values.
    baseline: Mutex<Option<ResourceMetrics>>,
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

    /// OTLP over HTTP/protobuf to `OTEL_EXPORTER_OTLP_ENDPOINT` (plus `/v1/traces`
    /// and `/v1/metrics`), or [`Telemetry::disabled`] when it is unset.
    pub fn from_env(service_name: &'static str) -> Result<Telemetry, TelemetryError> {
        Telemetry::from_vars(service_name, |name| std::env::var(name).ok())
    }

    /// [`Telemetry::from_env`] with the variables looked up by `var`.
    fn from_vars(
        service_name: &'static str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Telemetry, TelemetryError> {
        match OtlpSettings::from(var)? {
            Some(settings) => Telemetry::otlp(service_name, &settings),
            None => Ok(Telemetry::disabled()),
        }
    }

    /// The OTLP exporters the settings describe.
    fn otlp(
        service_name: &'static str,
        settings: &OtlpSettings,
    ) -> Result<Telemetry, TelemetryError> {
        let client = settings.client()?;
        let timeout = settings.timeout;
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
            .with_timeout(timeout)
            .with_endpoint(&settings.traces)
            .build()
            .map_err(|source| TelemetryError::Exporter {
                signal: "trace",
                source,
            })?;
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_retry_policy(retry)
            .with_timeout(timeout)
            .with_endpoint(&settings.metrics)
            .build()
            .map_err(|source| TelemetryError::Exporter {
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
            .with_view(instruments::end_states_view)
            .build();
        instruments::zero_end_states(&meter_provider);
        let mut baseline = ResourceMetrics::default();
        let baseline = match reader.collect(&mut baseline) {
            Ok(()) => Some(baseline),
            Err(e) => {
                debug!(error = %e, "no baseline of zeros collected");
                None
            }
        };
        Telemetry {
            pipeline: Some(Exporting {
                tracer_provider,
                meter_provider,
                pending,
                reader,
                baseline: Mutex::new(baseline),
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
            Some(p) => Instruments::new(&p.meter_provider),
            None => Instruments::default(),
        }
    }

    /// The `tracing` layer that exports the pipeline's spans through this pipeline,
    /// or `None` when telemetry is off. The handlers' spans reach the exporter only
    /// through it: put it in the process's subscriber.
    pub fn span_layer(&self) -> Option<SpanLayer> {
        self.pipeline
            .as_ref()
            .map(|p| layer::span_layer(&p.tracer_provider))
    }

    /// Makes [`Telemetry::span_layer`] the process's whole `tracing` subscriber: for a
    /// process that does not log through `tracing` (the generator). A subscriber
    /// already installed is kept, and then `false` is returned.
    pub fn install(&self) -> bool {
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry().with(self.span_layer());
        tracing::subscriber::set_global_default(subscriber).is_ok()
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
        let baseline = self
            .baseline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
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
            // Exporters take one call at a time: the zeros first, then what followed.
            if let Some(baseline) = baseline {
                let result = self.exporters.metrics(&baseline).await;
                self.loss.note("metrics", 1, &result);
            }
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
mod tests;

#[cfg(test)]
pub(crate) mod tests_support {
    use super::Telemetry;

    /// Installs `telemetry`'s span layer for this thread, as the functions' `main`s
    /// do for the process: without it no span reaches the exporter.
    pub(crate) fn traced(telemetry: &Telemetry) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry().with(telemetry.span_layer());
        tracing::subscriber::set_default(subscriber)
    }
}
