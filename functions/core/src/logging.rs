//! The functions' log lines: JSON unless Lambda's logging controls ask for text.
//!
//! `lambda_runtime::tracing::init_default_subscriber` writes JSON only when
//! `AWS_LAMBDA_LOG_FORMAT=JSON`. AWS sets that variable from the function's logging
//! configuration, but an emulator may not (MiniStack does not turn Terraform's
//! `logging_config { log_format = "JSON" }` into it), and those functions would log
//! plain text. Here JSON is the default and `Text` is the exception. Everything else
//! is what `init_default_subscriber` does: the level from `AWS_LAMBDA_LOG_LEVEL`, else
//! `RUST_LOG`, else `INFO`; `RUST_LOG`'s directives on top; no timestamps (the log
//! service adds its own); no target. ANSI colours are off (the workspace's
//! `tracing-subscriber` has the `ansi` feature, which would otherwise turn them on
//! for text lines).
//!
//! Under the log lines sits the telemetry's span layer ([`crate::telemetry::SpanLayer`])
//! when telemetry is on. The level filter is the log lines' own (a per-layer
//! filter), so `AWS_LAMBDA_LOG_LEVEL=WARN` quiets the logs without closing the
//! spans the traces are made of. The spans the telemetry opens stay out of the log
//! lines: there the `job` log span names the record, at every level (a `WARN` line
//! still carries its `job_id`).
//!
//! The fields of the span a line is logged in (the `job` span's `job_id`,
//! `trace_id` and `message_id`, see [`crate::record`]) come with every JSON line as
//! `span` and `spans`, as before.

use crate::telemetry::{for_log_lines, SpanLayer, LOG_SPAN_TARGET};
use tracing::{Metadata, Subscriber};
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, FilterFn, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::Layer as _;

/// Lambda's log format variable (`JSON` or `Text`).
pub const FORMAT_VAR: &str = "AWS_LAMBDA_LOG_FORMAT";
/// Lambda's log level variable; it takes precedence over `RUST_LOG`.
pub const LEVEL_VAR: &str = "AWS_LAMBDA_LOG_LEVEL";
/// The `tracing` directives variable.
pub const RUST_LOG_VAR: &str = "RUST_LOG";

/// How the process logs, as the variables say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// One JSON object per line; plain text when `false`.
    pub json: bool,
    /// The level of every target no directive names.
    pub level: LevelFilter,
    /// `RUST_LOG`'s directives (empty when unset), parsed leniently as `tracing` does.
    pub directives: String,
}

impl LogSettings {
    /// The settings the variables describe; `var` looks one up (`None` when unset).
    pub fn from(var: impl Fn(&str) -> Option<String>) -> LogSettings {
        let json = !var(FORMAT_VAR).is_some_and(|v| v.trim().eq_ignore_ascii_case("text"));
        // As lambda_runtime: a level that does not parse is INFO.
        let level = var(LEVEL_VAR)
            .or_else(|| var(RUST_LOG_VAR))
            .map_or(Ok(LevelFilter::INFO), |v| v.parse())
            .unwrap_or(LevelFilter::INFO);
        LogSettings {
            json,
            level,
            directives: var(RUST_LOG_VAR).unwrap_or_default(),
        }
    }

    /// The subscriber these settings describe, writing to `writer`, over `spans`
    /// when given.
    pub fn subscriber<W>(
        &self,
        writer: W,
        spans: Option<SpanLayer>,
    ) -> Box<dyn Subscriber + Send + Sync>
    where
        W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
    {
        let filter = EnvFilter::builder()
            .with_default_directive(self.level.into())
            .parse_lossy(&self.directives)
            // The `job` log span at any level: a WARN line still names its job.
            .or(FilterFn::new(is_log_span as fn(&Metadata<'_>) -> bool))
            .and(FilterFn::new(for_log_lines as fn(&Metadata<'_>) -> bool));
        let lines = tracing_subscriber::fmt::layer()
            .with_target(false)
            .without_time()
            .with_ansi(false)
            .with_writer(writer);
        let under = tracing_subscriber::registry().with(spans);
        if self.json {
            Box::new(under.with(lines.json().with_filter(filter)))
        } else {
            Box::new(under.with(lines.with_filter(filter)))
        }
    }
}

/// The `job` log span, which carries a record's ids onto its log lines: enabled for
/// log lines whatever their level, so that a warning or an error at `WARN` still says
/// which job and message it is about.
fn is_log_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && meta.target() == LOG_SPAN_TARGET
}

/// Logging for a Lambda function, from its environment, to stdout, over the
/// telemetry's span layer when telemetry is on: call it in `main` as soon as the
/// telemetry is built. A subscriber already installed is kept.
pub fn init(spans: Option<SpanLayer>) {
    let settings = LogSettings::from(|name| std::env::var(name).ok());
    let _already_installed =
        tracing::subscriber::set_global_default(settings.subscriber(std::io::stdout, spans));
}

#[cfg(test)]
mod tests;
