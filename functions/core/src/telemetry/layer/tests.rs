//! The span layer: what reaches the exporter, with which parent, and what does not.

use super::super::{Instruments, Invocation, JobSpan, Telemetry, AWS_SQS};
use crate::logging::LogSettings;
use crate::record::RecordMeta;
use crate::testing::exporters::{KeptMetrics, KeptSpans};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _};
use opentelemetry::Context;
use opentelemetry_sdk::trace::SpanData;

fn kept() -> (Telemetry, KeptSpans) {
    let spans = KeptSpans::default();
    let telemetry = Telemetry::with_exporters("test", spans.clone(), KeptMetrics::default());
    (telemetry, spans)
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} among {:?}", names(spans)))
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}

fn keys(span: &SpanData) -> Vec<String> {
    let mut keys: Vec<_> = span
        .attributes
        .iter()
        .map(|kv| kv.key.to_string())
        .collect();
    keys.sort();
    keys
}

/// What a user of the crate would write inside a job's work.
#[tracing::instrument]
async fn render_page(page: u32) -> u32 {
    tokio::task::yield_now().await;
    page * 2
}

/// A processor's spans for one message: its invocation, its consumer span, and its
/// execute span, each ended as the handler ends them.
fn job_spans(instruments: &Instruments) -> (JobSpan, JobSpan, JobSpan) {
    let invocation = Invocation {
        request_id: "req-1".into(),
        coldstart: true,
    };
    let batch = instruments.batch_span("processor", "jobs-todo", &invocation, Vec::new(), 1);
    let consumer = instruments.consumer_span("jobs-todo", "m-1", None, &batch, &invocation);
    let execute = instruments.execute_span("job-1", "report_generation", &consumer);
    (batch, consumer, execute)
}

#[tokio::test(flavor = "current_thread")]
async fn an_instrumented_function_inside_a_jobs_execution_is_its_child() {
    let (telemetry, exported) = kept();
    let _layer = super::super::tests_support::traced(&telemetry);
    let (batch, consumer, execute) = job_spans(&telemetry.instruments());
    assert_eq!(execute.around(render_page(21)).await, 42);
    for span in [&execute, &consumer, &batch] {
        span.end();
    }
    telemetry.flush().await;

    let spans = exported.spans();
    assert_eq!(spans.len(), 4, "{:?}", names(&spans));
    let (run, page) = (
        named(&spans, "execute report_generation"),
        named(&spans, "render_page"),
    );
    assert_eq!(page.parent_span_id, run.span_context.span_id());
    assert_eq!(page.span_context.trace_id(), run.span_context.trace_id());
    assert_eq!(page.span_kind, SpanKind::Internal);
    // Only the function's own field: the layer adds no location, thread or timings.
    assert_eq!(keys(page), ["page"]);
}

/// The handlers' spans keep the names, kinds, attributes and links they had when
/// they were built with the OpenTelemetry API directly.
#[tokio::test(flavor = "current_thread")]
async fn the_handlers_spans_carry_exactly_their_own_attributes_and_links() {
    let (telemetry, exported) = kept();
    let _layer = super::super::tests_support::traced(&telemetry);
    let (batch, consumer, execute) = job_spans(&telemetry.instruments());
    let producer =
        telemetry
            .instruments()
            .producer_span(AWS_SQS, "dead-letter-queue", consumer.context());
    for span in [&producer, &execute, &consumer, &batch] {
        span.end();
    }
    telemetry.flush().await;
    let spans = exported.spans();

    let batch_span = named(&spans, "processor");
    assert_eq!(batch_span.span_kind, SpanKind::Consumer);
    assert_eq!(
        batch_span.parent_span_id,
        opentelemetry::trace::SpanId::INVALID
    );
    let process = named(&spans, "process jobs-todo");
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(
        keys(process),
        [
            "faas.coldstart",
            "faas.invocation_id",
            "faas.trigger",
            "messaging.destination.name",
            "messaging.message.id",
            "messaging.operation.name",
            "messaging.operation.type",
            "messaging.system",
        ]
    );
    let linked: Vec<_> = process
        .links
        .iter()
        .map(|l| l.span_context.clone())
        .collect();
    assert_eq!(linked, std::slice::from_ref(&batch_span.span_context));
    assert_ne!(
        process.span_context.trace_id(),
        batch_span.span_context.trace_id()
    );
    let send = named(&spans, "send dead-letter-queue");
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(send.parent_span_id, process.span_context.span_id());
    let run = named(&spans, "execute report_generation");
    assert_eq!(keys(run), ["job.id", "job.type"]);
    assert_eq!(run.parent_span_id, process.span_context.span_id());
}

/// Log lines, the `job` log span and a dependency's spans stay out of the traces,
/// and an `error!` does not mark the span it is logged in.
#[tokio::test(flavor = "current_thread")]
async fn only_the_pipelines_own_spans_are_exported() {
    let (telemetry, exported) = kept();
    let _layer = super::super::tests_support::traced(&telemetry);
    let (batch, consumer, execute) = job_spans(&telemetry.instruments());
    execute
        .around(async {
            tracing::error!("a log line, not a span event");
            let meta = RecordMeta::of(&aws_lambda_events::sqs::SqsMessage::default());
            let _log = meta.log.enter();
            let _sdk =
                tracing::info_span!(target: "aws_smithy_runtime::client", "invoke").entered();
            let _detail = tracing::debug_span!("a debug span").entered();
        })
        .await;
    for span in [&execute, &consumer, &batch] {
        span.end();
    }
    telemetry.flush().await;

    let spans = exported.spans();
    assert_eq!(
        names(&spans),
        [
            "execute report_generation",
            "process jobs-todo",
            "processor"
        ]
    );
    let run = named(&spans, "execute report_generation");
    assert!(run.events.is_empty(), "{:?}", run.events);
    assert_eq!(run.status, Status::Unset);
}

/// A quieter log level (`AWS_LAMBDA_LOG_LEVEL=ERROR`) filters log lines only: the
/// spans under them are still exported, through the subscriber the functions install.
#[tokio::test(flavor = "current_thread")]
async fn spans_are_exported_whatever_the_log_level() {
    let (telemetry, exported) = kept();
    let settings =
        LogSettings::from(|name| (name == crate::logging::LEVEL_VAR).then(|| "ERROR".into()));
    let subscriber = settings.subscriber(std::io::sink, telemetry.span_layer());
    let _layer = tracing::subscriber::set_default(subscriber);
    let (batch, consumer, execute) = job_spans(&telemetry.instruments());
    execute.around(render_page(1)).await;
    for span in [&execute, &consumer, &batch] {
        span.end();
    }
    telemetry.flush().await;
    assert_eq!(exported.spans().len(), 4, "{:?}", names(&exported.spans()));
}

/// Without telemetry no span is opened, and a context only passes through: what is
/// propagated is the incoming one, and ending or marking the pass-through span does
/// not touch the span it came from.
#[tokio::test(flavor = "current_thread")]
async fn without_telemetry_contexts_pass_through_untouched() {
    let (telemetry, exported) = kept();
    let _layer = super::super::tests_support::traced(&telemetry);
    let parent =
        telemetry
            .instruments()
            .execute_span("job-1", "x", &job_spans(&telemetry.instruments()).1);
    let off = Instruments::default();
    let send = off.producer_span(AWS_SQS, "jobs-todo", parent.context());
    assert_eq!(send.span_context(), parent.span_context());
    send.fail("boom", "not on the parent");
    send.end();
    assert!(
        parent.context().span().is_recording(),
        "the parent is still open"
    );
    parent.end();
    telemetry.flush().await;
    let run = named(&exported.spans(), "execute x").clone();
    assert_eq!(run.status, Status::Unset);
    let none = off.producer_span(AWS_SQS, "jobs-todo", &Context::new());
    assert!(!none.span_context().is_valid());
}
