//! The spans and metrics a job leaves behind, named after the OpenTelemetry
//! messaging and FaaS semantic conventions: `process <queue>` (CONSUMER) and
//! `send <queue>` (PRODUCER) per message, `execute <job_type>` for the work, one
//! invocation span per batch linking to every message, and the `job.end_states`
//! counter and `job.latency` histogram (seconds, event time to terminal state).
//!
//! The spans are `tracing` spans, exported by [`super::layer`]: each is opened with
//! no `tracing` parent and given its OpenTelemetry parent outright (a message's
//! context, or the span that caused it), so a trace follows the job, not the order
//! in which futures happen to be polled. Without telemetry no span is opened at all:
//! a [`JobSpan`] then only carries its parent's context on.
//!
//! The `job.type` of a metric is a closed set, one of the built-in kinds
//! ([`Registry::builtin`]) or
//! [`UNKNOWN_JOB_TYPE`] ([`metric_job_type`]), so whatever a producer writes mints no
//! new series; spans keep the text as sent.

use crate::kinds::Registry;
use crate::messages::JobStatus;
use crate::telemetry::propagation::trace_id_of;
use chrono::{DateTime, Utc};
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider};
use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::metrics::{Instrument, SdkMeterProvider, Stream};
use tracing::instrument::Instrumented;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Instrumentation scope of the pipeline's spans and metrics.
pub(super) const SCOPE: &str = "jobs-core";
/// `messaging.system` for SQS.
pub const AWS_SQS: &str = "aws_sqs";
/// The metrics' `job.type` for a job whose type is absent or not in the catalogue.
pub const UNKNOWN_JOB_TYPE: &str = "unknown";

/// The `job.type` metric attribute of a job type as sent: itself when the catalogue
/// knows it, [`UNKNOWN_JOB_TYPE`] otherwise (absent, empty, misspelt).
pub fn metric_job_type(job_type: Option<&str>) -> &'static str {
    job_type
        .and_then(|t| Registry::builtin().get(t))
        .map_or(UNKNOWN_JOB_TYPE, |kind| kind.name())
}

/// Every `job.type` a metric can carry.
fn metric_job_types() -> impl Iterator<Item = &'static str> {
    let builtin: Vec<&'static str> = Registry::builtin().names().collect();
    builtin.into_iter().chain([UNKNOWN_JOB_TYPE])
}

/// The attributes of one `job.end_states` (and `job.latency`) series.
fn end_state_attributes(job_type: &'static str, status: JobStatus) -> [KeyValue; 2] {
    [
        KeyValue::new("job.type", job_type),
        KeyValue::new("job.status", status.as_str()),
    ]
}

/// The name of the end-state counter.
const END_STATES: &str = "job.end_states";

/// `job.end_states` with room for its closed set of series (one per job type and
/// terminal status, four times over) instead of the SDK's default 2,000. The SDK
/// allocates a series table of that capacity per instrument up front; the zeros
/// written at start-up ([`zero_end_states`]) land at random in it, and in a
/// 2,000-series table each touches a new page (about 20 page faults at every cold
/// start). No series can fall into the overflow one: there are no more than a
/// quarter of the limit.
pub(crate) fn end_states_view(instrument: &Instrument) -> Option<Stream> {
    if instrument.name() != END_STATES {
        return None;
    }
    let series = metric_job_types().count() * JobStatus::TERMINAL.len();
    Stream::builder()
        .with_cardinality_limit(4 * series)
        .build()
        .ok()
}

fn end_states_counter(meter: &Meter) -> Counter<u64> {
    meter
        .u64_counter(END_STATES)
        .with_description("Jobs that reached a terminal state (COMPLETED, FAILED, REJECTED)")
        .build()
}

/// Adds 0 to every series `job.end_states` can have, so each exists, at 0, before
/// its first end state.
pub(crate) fn zero_end_states(mp: &SdkMeterProvider) {
    let end_states = end_states_counter(&mp.meter(SCOPE));
    for job_type in metric_job_types() {
        for status in JobStatus::TERMINAL {
            end_states.add(0, &end_state_attributes(job_type, status));
        }
    }
}

/// Facts about the current Lambda invocation, put on its spans.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// The Lambda request id (`faas.invocation_id`).
    pub request_id: String,
    /// The first invocation of the process (`faas.coldstart`).
    pub coldstart: bool,
}

/// Span and metric instruments; no-ops unless built from an enabled [`super::Telemetry`].
#[derive(Debug, Clone)]
pub struct Instruments {
    /// Whether spans are opened (telemetry is on); otherwise contexts only pass through.
    spans: bool,
    end_states: Counter<u64>,
    latency: Histogram<f64>,
    repeats: Counter<u64>,
    retries: Counter<u64>,
}

impl Default for Instruments {
    /// No-op instruments: nothing is recorded, but an incoming context still flows
    /// through (a no-op span carries its parent's context).
    fn default() -> Self {
        Instruments::from_parts(false, opentelemetry::global::meter(SCOPE))
    }
}

impl Instruments {
    pub(crate) fn new(mp: &SdkMeterProvider) -> Instruments {
        Instruments::from_parts(true, mp.meter(SCOPE))
    }

    fn from_parts(spans: bool, meter: Meter) -> Instruments {
        Instruments {
            spans,
            end_states: end_states_counter(&meter),
            latency: meter
                .f64_histogram("job.latency")
                .with_unit("s")
                .with_description("Time from the job's event to its terminal state")
                .with_boundaries(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                    900.0,
                ])
                .build(),
            repeats: meter
                .u64_counter("job.repeated_deliveries")
                .with_description(
                    "Deliveries of a job that a stage had already handled or was handling",
                )
                .build(),
            retries: meter
                .u64_counter("job.retries")
                .with_description("Failed attempts sent back to jobs-todo for another try")
                .build(),
        }
    }

    /// Counts a delivery skipped because it repeated work already done or under way.
    pub fn record_repeat(&self, stage: &'static str, reason: &'static str) {
        let attrs = [
            KeyValue::new("job.stage", stage),
            KeyValue::new("job.repeat", reason),
        ];
        self.repeats.add(1, &attrs);
    }

    /// Counts a failed attempt that will be tried again.
    pub fn record_retry(&self, job_type: &str, code: &str) {
        let attrs = [
            KeyValue::new("job.type", metric_job_type(Some(job_type))),
            KeyValue::new("error.type", code.to_owned()),
        ];
        self.retries.add(1, &attrs);
    }

    /// Opens a span with an explicit OpenTelemetry parent. Without telemetry, or
    /// when no [`super::SpanLayer`] is installed to export it, the span only carries
    /// `parent` on.
    fn start(
        &self,
        name: String,
        kind: SpanKind,
        attrs: Vec<KeyValue>,
        links: Vec<SpanContext>,
        parent: &Context,
    ) -> JobSpan {
        if !self.spans {
            return JobSpan::passing(parent);
        }
        let span = tracing::info_span!(
            target: super::TRACE_SPAN_TARGET,
            parent: None,
            "span",
            otel.name = name.as_str(),
            otel.kind = kind_name(&kind)
        );
        if span.set_parent(parent.clone()).is_err() {
            return JobSpan::passing(parent);
        }
        // Started now; its attributes and links then go to the OpenTelemetry span in
        // one call each, not one subscriber lookup per attribute.
        let cx = span.context();
        let started = cx.span();
        started.set_attributes(attrs);
        for link in links {
            started.add_link(link, Vec::new());
        }
        JobSpan { cx, span }
    }

    /// The invocation's span for a batch of SQS messages: a root CONSUMER span that
    /// links to each message's context (a batch cannot have many parents).
    pub fn batch_span(
        &self,
        function: &str,
        queue: &str,
        invocation: &Invocation,
        messages: Vec<SpanContext>,
        count: usize,
    ) -> JobSpan {
        let mut attrs = messaging(AWS_SQS, "process", queue);
        attrs.extend(faas(invocation));
        attrs.push(KeyValue::new("messaging.batch.message_count", count as i64));
        self.start(
            function.to_owned(),
            SpanKind::Consumer,
            attrs,
            messages,
            &Context::new(),
        )
    }

    /// `process <queue>` for one message: CONSUMER, a child of the message's context
    /// (a new trace when it has none), linked to the invocation's batch span.
    pub fn consumer_span(
        &self,
        queue: &str,
        message_id: &str,
        parent: Option<&Context>,
        batch: &JobSpan,
        invocation: &Invocation,
    ) -> JobSpan {
        let mut attrs = messaging(AWS_SQS, "process", queue);
        attrs.push(KeyValue::new("messaging.message.id", message_id.to_owned()));
        attrs.extend(faas(invocation));
        let batch_sc = batch.cx.span().span_context().clone();
        let links = if batch_sc.is_valid() {
            vec![batch_sc]
        } else {
            Vec::new()
        };
        let root = Context::new();
        self.start(
            format!("process {queue}"),
            SpanKind::Consumer,
            attrs,
            links,
            parent.unwrap_or(&root),
        )
    }

    /// `send <destination>`: PRODUCER, a child of `parent`. Its context is what the
    /// message carries on.
    pub fn producer_span(
        &self,
        system: &'static str,
        destination: &str,
        parent: &Context,
    ) -> JobSpan {
        self.start(
            format!("send {destination}"),
            SpanKind::Producer,
            messaging(system, "send", destination),
            Vec::new(),
            parent,
        )
    }

    /// `execute <job_type>`: the job's work, a child of its consumer span.
    pub fn execute_span(&self, job_id: &str, job_type: &str, parent: &JobSpan) -> JobSpan {
        let attrs = vec![
            KeyValue::new("job.id", job_id.to_owned()),
            KeyValue::new("job.type", job_type.to_owned()),
        ];
        self.start(
            format!("execute {job_type}"),
            SpanKind::Internal,
            attrs,
            Vec::new(),
            &parent.cx,
        )
    }

    /// `step <action>` or `compensate <compensation>` (`what`): one request of a
    /// saga's step `step` or of its compensation, a child of the job's `execute saga`.
    pub fn saga_span(&self, what: String, job_id: &str, step: u32, parent: &JobSpan) -> JobSpan {
        let attrs = vec![
            KeyValue::new("job.id", job_id.to_owned()),
            KeyValue::new("saga.step", i64::from(step)),
        ];
        self.start(what, SpanKind::Internal, attrs, Vec::new(), &parent.cx)
    }

    /// The relay's invocation: a root span for one sweep of the outbox, linking to
    /// every end it announced.
    pub fn sweep_span(&self, invocation: &Invocation) -> JobSpan {
        let mut attrs = faas(invocation);
        attrs[0] = KeyValue::new("faas.trigger", "timer");
        self.start(
            "relay".to_owned(),
            SpanKind::Internal,
            attrs,
            Vec::new(),
            &Context::new(),
        )
    }

    /// `relay <stage>`: the relay announcing one stranded end, in the job's own trace
    /// (a child of the span that ended the job, when the record kept its context),
    /// linked to the sweep.
    pub fn relay_span(
        &self,
        stage: &str,
        job_id: &str,
        parent: Option<&Context>,
        sweep: &JobSpan,
    ) -> JobSpan {
        let sweep_sc = sweep.span_context();
        let links = if sweep_sc.is_valid() {
            vec![sweep_sc]
        } else {
            Vec::new()
        };
        let root = Context::new();
        self.start(
            format!("relay {stage}"),
            SpanKind::Internal,
            vec![KeyValue::new("job.id", job_id.to_owned())],
            links,
            parent.unwrap_or(&root),
        )
    }

    /// Counts a terminal state and, when the event time is known, its latency, under
    /// the job's [`metric_job_type`].
    pub fn record_end_state(
        &self,
        job_type: Option<&str>,
        status: JobStatus,
        event_time: Option<&str>,
        now: DateTime<Utc>,
    ) {
        let attrs = end_state_attributes(metric_job_type(job_type), status);
        self.end_states.add(1, &attrs);
        let since = event_time
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| (now - t.with_timezone(&Utc)).num_milliseconds().max(0) as f64 / 1000.0);
        if let Some(secs) = since {
            self.latency.record(secs, &attrs);
        }
    }
}

fn messaging(system: &'static str, operation: &'static str, destination: &str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("messaging.system", system),
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("messaging.operation.name", operation),
        KeyValue::new("messaging.destination.name", destination.to_owned()),
    ]
}

/// A span kind as `tracing-opentelemetry`'s `otel.kind` field spells it.
fn kind_name(kind: &SpanKind) -> &'static str {
    match kind {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}

fn faas(invocation: &Invocation) -> Vec<KeyValue> {
    vec![
        KeyValue::new("faas.trigger", "pubsub"),
        KeyValue::new("faas.invocation_id", invocation.request_id.clone()),
        KeyValue::new("faas.coldstart", invocation.coldstart),
    ]
}

/// A started span, as the context it makes current for its children.
#[derive(Debug, Clone)]
pub struct JobSpan {
    /// The span's OpenTelemetry context (its parent's, as a non-recording span, when
    /// no span was opened).
    cx: Context,
    /// The `tracing` span behind it ([`tracing::Span::none`] when none was opened).
    span: tracing::Span,
}

impl JobSpan {
    /// No span of its own: carries `parent`'s span context on, and records nothing,
    /// so ending it or setting its attributes never touches the parent.
    fn passing(parent: &Context) -> JobSpan {
        JobSpan {
            cx: parent.with_remote_span_context(parent.span().span_context().clone()),
            span: tracing::Span::none(),
        }
    }

    /// Runs `work` inside this span: the spans `work` opens (a
    /// `#[tracing::instrument]` function, say) are its children.
    pub fn around<F: std::future::Future>(&self, work: F) -> Instrumented<F> {
        work.instrument(self.span.clone())
    }

    /// The context to parent children on and to propagate.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// The span's trace id, when it has a valid context.
    pub fn trace_id(&self) -> Option<String> {
        trace_id_of(&self.cx)
    }

    /// The span's context, to link to.
    pub fn span_context(&self) -> SpanContext {
        self.cx.span().span_context().clone()
    }

    /// Names the job the span is about.
    pub fn set_job(&self, job_id: &str, job_type: Option<&str>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("job.id", job_id.to_owned()));
        if let Some(t) = job_type {
            span.set_attribute(KeyValue::new("job.type", t.to_owned()));
        }
    }

    /// Sets any attribute (e.g. `messaging.message.id` once known).
    pub fn set_attribute(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }

    /// The job's terminal status, as `job.status`.
    pub fn set_status(&self, status: JobStatus) {
        self.set_attribute("job.status", status.as_str());
    }

    /// Marks the span failed: status error with the message, `error.type` = code.
    pub fn fail(&self, code: &str, message: &str) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("error.type", code.to_owned()));
        span.set_status(Status::error(format!("{code}: {message}")));
    }

    /// Ends the span now, so the next flush exports it, even while the `tracing`
    /// span behind it is still referenced (its close then ends nothing more).
    pub fn end(&self) {
        self.cx.span().end();
    }
}
