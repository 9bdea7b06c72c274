//! `tracing` spans as the pipeline's OpenTelemetry spans, through
//! `tracing-opentelemetry`.
//!
//! The handlers' spans are `tracing` spans. The layer [`span_layer`] builds turns
//! each into a span of the pipeline's own tracer provider, whose processor keeps it
//! in the bounded buffer until the invocation's flush: no exporter thread, nothing
//! sent behind the invocation's back. So a `#[tracing::instrument]` function called
//! while a job's `execute` span is entered reaches Jaeger as that span's child.
//!
//! Which `tracing` data becomes OpenTelemetry data ([`exported`]): the spans of the
//! pipeline's own crates at INFO or above, and nothing else.
//! - Not events: log lines stay log lines, and an `error!` logged inside a span does
//!   not turn that span's status into an error (the handlers set status themselves).
//! - Not a dependency's spans: the AWS SDK opens several per request, which would
//!   bury each job's trace and fill the buffer.
//! - Not the `job` log span ([`LOG_SPAN_TARGET`]): its fields exist for log lines,
//!   and as a span it would duplicate `process <queue>`.
//!
//! The layer adds no attributes of its own (no code location, thread, level,
//! target or busy/idle times), so a span carries exactly the attributes its
//! handler gives it.

use super::instruments::SCOPE;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Metadata;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::filter::{FilterFn, Filtered, LevelFilter};
use tracing_subscriber::{Layer, Registry};

/// The layer that exports the pipeline's `tracing` spans; what [`crate::logging`]
/// puts under its log lines.
pub type SpanLayer = Filtered<OpenTelemetryLayer<Registry, SdkTracer>, SpanFilter, Registry>;

/// [`exported`] as a per-layer filter: log lines keep their own level filter.
pub type SpanFilter = FilterFn<fn(&Metadata<'_>) -> bool>;

/// The target of the spans [`super::Instruments`] opens: exported, but kept out of
/// log lines ([`for_log_lines`]), where the `job` log span names the record instead.
pub const TRACE_SPAN_TARGET: &str = "jobs_core::trace";

/// The target of the `job` log span, which carries a record's ids on every log line
/// and is never exported.
pub const LOG_SPAN_TARGET: &str = "jobs_core::log";

/// The crates whose spans are the pipeline's (module paths, so `-` reads `_`).
const OWN_CRATES: [&str; 5] = [
    "jobs_core",
    "ingester",
    "processor",
    "relay",
    "job_generator",
];

/// Whether a callsite's data is exported: a span of one of [`OWN_CRATES`] at INFO or
/// above, other than the `job` log span.
pub fn exported(meta: &Metadata<'_>) -> bool {
    meta.is_span()
        && *meta.level() <= LevelFilter::INFO
        && meta.target() != LOG_SPAN_TARGET
        && OWN_CRATES.iter().any(|own| in_crate(meta.target(), own))
}

/// Whether a callsite belongs in log lines: anything but the spans
/// [`super::Instruments`] opens, whose fields are OpenTelemetry's (`otel.name`).
pub fn for_log_lines(meta: &Metadata<'_>) -> bool {
    meta.target() != TRACE_SPAN_TARGET
}

/// Whether `target` is `krate` or one of its modules.
fn in_crate(target: &str, krate: &str) -> bool {
    target
        .strip_prefix(krate)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// The layer for the given provider, adding nothing to the spans but what their
/// code gives them.
pub(super) fn span_layer(provider: &SdkTracerProvider) -> SpanLayer {
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SCOPE))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_level(false)
        .with_target(false)
        .with_filter(FilterFn::new(exported as fn(&Metadata<'_>) -> bool))
}

#[cfg(test)]
mod tests;
