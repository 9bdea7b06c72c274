use super::*;
use crate::record::RecordMeta;
use crate::telemetry::{Invocation, Telemetry};
use crate::testing::exporters::{KeptMetrics, KeptSpans};
use aws_lambda_events::sqs::SqsMessage;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing::Instrument as _;

fn settings(vars: &[(&str, &str)]) -> LogSettings {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    LogSettings::from(|name| vars.get(name).cloned())
}

#[test]
fn json_unless_the_lambda_environment_says_text() {
    assert!(settings(&[]).json, "unset: JSON");
    for json in ["JSON", "json", "", "xml"] {
        assert!(settings(&[(FORMAT_VAR, json)]).json, "{json:?}");
    }
    for text in ["Text", "text", "TEXT", " Text "] {
        assert!(!settings(&[(FORMAT_VAR, text)]).json, "{text:?}");
    }
}

#[test]
fn the_level_is_lambdas_then_rust_logs_then_info() {
    assert_eq!(settings(&[]).level, LevelFilter::INFO);
    assert_eq!(
        settings(&[(LEVEL_VAR, "DEBUG"), (RUST_LOG_VAR, "error")]).level,
        LevelFilter::DEBUG
    );
    let rust_log = settings(&[(RUST_LOG_VAR, "warn")]);
    assert_eq!(rust_log.level, LevelFilter::WARN);
    assert_eq!(rust_log.directives, "warn");
    // As lambda_runtime: a value that is not a level (FATAL, directives) is INFO.
    assert_eq!(settings(&[(LEVEL_VAR, "FATAL")]).level, LevelFilter::INFO);
    let directives = settings(&[(RUST_LOG_VAR, "jobs_core=debug,hyper=warn")]);
    assert_eq!(directives.level, LevelFilter::INFO);
    assert_eq!(directives.directives, "jobs_core=debug,hyper=warn");
}

/// A `MakeWriter` into memory.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Lines;

    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

/// Logs one warning inside a record's `job` span and its consumer span, the way the
/// handlers do, with telemetry on as the stack runs it.
fn log_in_a_job_span(settings: &LogSettings) -> String {
    let lines = Lines::default();
    let telemetry = Telemetry::with_exporters("test", KeptSpans::default(), KeptMetrics::default());
    let subscriber = settings.subscriber(lines.clone(), telemetry.span_layer());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    tracing::subscriber::with_default(subscriber, || {
        let mut record = SqsMessage::default();
        record.message_id = Some("m-1".into());
        let meta = RecordMeta::of(&record);
        meta.identify("job-1", Some("0af7651916cd43dd8448eb211c80319c"));
        let instruments = telemetry.instruments();
        let batch = instruments.batch_span("processor", "q", &Invocation::default(), Vec::new(), 1);
        let consumer = instruments.consumer_span("q", "m-1", None, &batch, &Invocation::default());
        let logged = consumer.around(async {
            tracing::debug!("not at INFO");
            tracing::warn!(attempt = 2, "attempt failed");
        });
        runtime.block_on(logged.instrument(meta.log.clone()));
    });
    let bytes = lines.0.lock().expect("lock").clone();
    String::from_utf8(bytes).expect("utf-8")
}

#[test]
fn a_json_line_carries_the_job_span_without_time_or_colour() {
    let out = log_in_a_job_span(&settings(&[]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["fields"]["message"], "attempt failed");
    assert_eq!(line["fields"]["attempt"], 2);
    assert_eq!(line["span"]["name"], "job");
    assert_eq!(line["span"]["job_id"], "job-1");
    assert_eq!(line["span"]["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(line["span"]["message_id"], "m-1");
    // The consumer span the line was logged in is the trace's, not the log's.
    let spans: Vec<_> = line["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .map(|s| &s["name"])
        .collect();
    assert_eq!(spans, ["job"], "{line}");
    assert!(line.get("timestamp").is_none(), "{line}");
    assert!(line.get("target").is_none(), "{line}");
}

#[test]
fn a_text_line_has_no_colour_codes() {
    let out = log_in_a_job_span(&settings(&[(FORMAT_VAR, "Text")]));
    assert!(out.contains("attempt failed"), "{out}");
    assert!(out.contains(r#"job_id="job-1""#), "{out}");
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(!out.trim_start().starts_with('{'), "{out}");
}

/// At `AWS_LAMBDA_LOG_LEVEL=WARN` the `job` span is below the level, yet a warning
/// still names its job and message.
#[test]
fn a_warning_names_its_job_whatever_the_level() {
    let out = log_in_a_job_span(&settings(&[(LEVEL_VAR, "WARN")]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_eq!(line["span"]["name"], "job", "{line}");
    assert_eq!(line["span"]["job_id"], "job-1");
    assert_eq!(line["span"]["message_id"], "m-1");
}
