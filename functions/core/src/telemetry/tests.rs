use super::tests_support::traced;
use super::*;
use crate::ingester::{Ingester, IngesterConfig};
use crate::messages::JobStatus;
use crate::processor::{Processor, ProcessorConfig};
use crate::testing::exporters::KeptPoint;
use crate::testing::exporters::{KeptMetrics, KeptSpans};
use crate::testing::{MemoryQueue, MemoryTopic};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::Value;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;

/// Variables as `from_vars` looks them up, without touching the process's own.
fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| vars.get(name).cloned()
}

fn settings(pairs: &[(&str, &str)]) -> Result<Option<OtlpSettings>, TelemetryError> {
    OtlpSettings::from(vars(pairs))
}

#[test]
fn exporting_is_off_without_an_endpoint() {
    assert_eq!(settings(&[]).ok(), Some(None));
    assert_eq!(settings(&[(ENDPOINT_VAR, " ")]).ok(), Some(None));
    let off = Telemetry::from_vars("test", vars(&[(TIMEOUT_VAR, "750")])).expect("off");
    assert!(!off.enabled());
}

#[test]
fn the_export_timeout_is_read_by_name() {
    let endpoint = (ENDPOINT_VAR, "http://collector:4318");
    let timeout = |pairs: &[(&str, &str)]| settings(pairs).map(|s| s.map(|s| s.timeout));
    assert_eq!(timeout(&[endpoint]).ok(), Some(Some(EXPORT_TIMEOUT)));
    assert_eq!(
        timeout(&[endpoint, (TIMEOUT_VAR, "750")]).ok(),
        Some(Some(Duration::from_millis(750)))
    );
    let err = timeout(&[endpoint, (TIMEOUT_VAR, "2s")]).expect_err("refused");
    assert!(
        err.to_string().contains("OTEL_EXPORTER_OTLP_TIMEOUT"),
        "{err}"
    );
}

#[test]
fn each_signal_goes_to_the_endpoint_plus_its_path_unless_named_outright() {
    let s = settings(&[(ENDPOINT_VAR, "https://collector:4318/")])
        .expect("valid")
        .expect("on");
    assert_eq!(s.traces, "https://collector:4318/v1/traces");
    assert_eq!(s.metrics, "https://collector:4318/v1/metrics");
    assert!(s.https());
    let s = settings(&[
        (ENDPOINT_VAR, "http://collector:4318"),
        (METRICS_ENDPOINT_VAR, "HTTPS://metrics.example/otlp"),
    ])
    .expect("valid")
    .expect("on");
    assert_eq!(s.traces, "http://collector:4318/v1/traces");
    assert_eq!(s.metrics, "HTTPS://metrics.example/otlp");
    assert!(s.https(), "one signal over HTTPS is enough");
    let s = settings(&[(ENDPOINT_VAR, "http://collector:4318")])
        .expect("valid")
        .expect("on");
    assert!(!s.https());
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
    let _spans = traced(&telemetry);
    let ingester = Ingester {
        source: MemoryQueue::default(),
        jobs_todo: MemoryQueue::default(),
        jobs_todo_fifo: MemoryQueue::fifo(),
        dead_letters: MemoryQueue::default(),
        topic: MemoryTopic::default(),
        store: crate::store::MemoryStore::default(),
        config: IngesterConfig {
            max_receive_count: 5,
            max_job_timeout_secs: crate::job::DEFAULT_MAX_TIMEOUT_SECS,
            kinds: crate::kinds::Registry::builtin(),
        },
        telemetry: telemetry.instruments(),
    };
    let event =
        serde_json::from_str(include_str!("../../fixtures/ingester-batch.json")).expect("fixture");
    let response = telemetry
        .invoke("req-1", |inv| {
            let ingester = &ingester;
            async move {
                ingester
                    .handle_invocation(event, now() + chrono::Duration::seconds(30), now(), &inv)
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
    let _spans = traced(&telemetry);
    let processor = Processor {
        jobs_todo: MemoryQueue::default(),
        jobs_todo_fifo: MemoryQueue::fifo(),
        dead_letters: MemoryQueue::default(),
        topic: MemoryTopic::default(),
        store: crate::store::MemoryStore::default(),
        config: ProcessorConfig {
            deadline_margin: std::time::Duration::from_secs(3),
            retry: crate::retry::RetryPolicy::default(),
            fault_injection: false,
            kinds: crate::kinds::Registry::builtin(),
        },
        telemetry: telemetry.instruments(),
    };
    let event: aws_lambda_events::sqs::SqsEvent =
        serde_json::from_str(include_str!("../../fixtures/processor-batch.json")).expect("fixture");
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
async fn answer_one<S>(conn: &mut tokio::io::BufReader<S>) -> std::io::Result<Option<String>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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
    conn.get_mut().flush().await?;
    let mut seen = request_line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    seen.push_str(&format!(" {content_type} {}", !body.is_empty()));
    Ok(Some(seen))
}

/// A collector on loopback, served by the caller's runtime: over TLS when given an
/// acceptor. Keeps each request it answered and counts the TLS handshakes that failed.
struct Collector {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    refused_handshakes: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let refused_handshakes = Arc::new(AtomicUsize::new(0));
        let (kept, refused) = (seen.clone(), refused_handshakes.clone());
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, refused, tls) = (kept.clone(), refused.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(tokio::io::BufReader::new(stream), &seen).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => serve(tokio::io::BufReader::new(stream), &seen).await,
                            Err(_) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                    }
                });
            }
        });
        Collector {
            addr,
            seen,
            refused_handshakes,
            server,
        }
    }

    /// What it answered, sorted, once stopped.
    fn stop(self) -> Vec<String> {
        self.server.abort();
        let mut seen = self.seen.lock().expect("lock").clone();
        seen.sort();
        seen
    }
}

async fn serve<S>(mut conn: tokio::io::BufReader<S>, seen: &Mutex<Vec<String>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Ok(Some(request)) = answer_one(&mut conn).await {
        seen.lock().expect("lock").push(request);
    }
}

/// One span and one metric through the pipeline, then a flush.
async fn record_and_flush(telemetry: &Telemetry) {
    let _spans = traced(telemetry);
    let instruments = telemetry.instruments();
    instruments
        .producer_span(AWS_SQS, "jobs-todo", &Context::new())
        .end();
    instruments.record_retry("echo", "timeout");
    telemetry.flush().await;
}

fn export_failures(telemetry: &Telemetry) -> u64 {
    let pipeline = telemetry.pipeline.as_ref().expect("enabled");
    pipeline.loss.failures.load(Ordering::Relaxed)
}

/// What a process's first flush sends: metrics twice (the baseline of zeros, then
/// the current values) and traces once.
const BOTH_SIGNALS: [&str; 3] = [
    "POST /v1/metrics application/x-protobuf true",
    "POST /v1/metrics application/x-protobuf true",
    "POST /v1/traces application/x-protobuf true",
];

/// The real OTLP exporters, on the one-worker runtime the functions use, to a
/// collector on loopback served by that same runtime: a flush that needed
/// another thread, or blocked this one, would never be answered.
#[tokio::test(flavor = "current_thread")]
async fn the_otlp_exporters_send_both_signals_from_the_callers_runtime() {
    let collector = Collector::start(None).await;
    let endpoint = format!("http://{}/", collector.addr);
    // Plain HTTP loads no certificates, so a certificate file is not even read.
    let telemetry = Telemetry::from_vars(
        "test",
        vars(&[
            (ENDPOINT_VAR, &endpoint),
            (CERTIFICATE_VAR, "/nonexistent/ca.pem"),
        ]),
    )
    .expect("exporters");
    record_and_flush(&telemetry).await;
    assert_eq!(collector.stop(), BOTH_SIGNALS);
    assert_eq!(export_failures(&telemetry), 0);
}

/// A certificate authority and a certificate it signed for 127.0.0.1: the collector's.
struct TestPki {
    ca_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TestPki {
    fn new() -> TestPki {
        use tokio_rustls::rustls;
        let mut ca = rcgen::CertificateParams::new(Vec::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "jobs-core test CA");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("server params")
            .signed_by(&key, &issuer)
            .expect("server certificate");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .expect("server config");
        TestPki {
            ca_pem: ca_cert.pem(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }
    }
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn with(contents: &str) -> TempFile {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("jobs-core-{}-{nanos}.pem", std::process::id()));
        std::fs::write(&path, contents).expect("write the temporary file");
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Over HTTPS to a collector whose certificate chains to the CA of
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`: both signals arrive, through TLS.
#[tokio::test(flavor = "current_thread")]
async fn the_otlp_exporters_send_over_https_to_a_collector_the_certificate_file_trusts() {
    let pki = TestPki::new();
    let ca = TempFile::with(&pki.ca_pem);
    let collector = Collector::start(Some(pki.acceptor.clone())).await;
    let endpoint = format!("https://{}", collector.addr);
    let telemetry = Telemetry::from_vars(
        "test",
        vars(&[(ENDPOINT_VAR, &endpoint), (CERTIFICATE_VAR, ca.path())]),
    )
    .expect("exporters");
    record_and_flush(&telemetry).await;
    let refused = collector.refused_handshakes.load(Ordering::Relaxed);
    assert_eq!(collector.stop(), BOTH_SIGNALS);
    assert_eq!(refused, 0);
    assert_eq!(export_failures(&telemetry), 0);
}

/// The same collector without the certificate variable: the platform's roots do not
/// include the test CA, so the client refuses the handshake and nothing is sent.
#[tokio::test(flavor = "current_thread")]
async fn without_the_certificate_file_an_untrusted_collector_is_refused() {
    let pki = TestPki::new();
    let collector = Collector::start(Some(pki.acceptor.clone())).await;
    let endpoint = format!("https://{}", collector.addr);
    let telemetry =
        Telemetry::from_vars("test", vars(&[(ENDPOINT_VAR, &endpoint)])).expect("exporters");
    record_and_flush(&telemetry).await;
    let refused = collector.refused_handshakes.load(Ordering::Relaxed);
    assert_eq!(collector.stop(), Vec::<String>::new());
    assert!(refused >= 1, "the client reached the collector");
    assert!(export_failures(&telemetry) >= 1);
}

fn certificate_error(path: &str) -> String {
    let err = Telemetry::from_vars(
        "test",
        vars(&[
            (ENDPOINT_VAR, "https://collector.example:4318"),
            (CERTIFICATE_VAR, path),
        ]),
    )
    .expect_err("refused at set-up");
    assert!(
        matches!(
            err,
            TelemetryError::Certificate {
                var: CERTIFICATE_VAR,
                ..
            }
        ),
        "{err:?}"
    );
    err.to_string()
}

#[test]
fn an_unusable_certificate_file_stops_set_up_naming_the_variable_and_the_path() {
    let missing = "/nonexistent/jobs-core-ca.pem";
    let err = certificate_error(missing);
    assert!(err.contains("OTEL_EXPORTER_OTLP_CERTIFICATE"), "{err}");
    assert!(err.contains(missing), "{err}");

    let not_pem = TempFile::with("not a certificate\n");
    let err = certificate_error(not_pem.path());
    assert!(err.contains("OTEL_EXPORTER_OTLP_CERTIFICATE"), "{err}");
    assert!(err.contains(not_pem.path()), "{err}");
    assert!(err.contains("no PEM certificate"), "{err}");

    let not_a_certificate = TempFile::with(
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
    );
    let err = certificate_error(not_a_certificate.path());
    assert!(err.contains(not_a_certificate.path()), "{err}");
}

/// The points of `job.end_states` in one export, by (job.type, job.status).
fn end_states(export: &[KeptPoint]) -> HashMap<(String, String), &KeptPoint> {
    export
        .iter()
        .filter(|p| p.metric == "job.end_states")
        .map(|p| {
            let key = |k| p.attribute(k).unwrap_or_default().to_owned();
            ((key("job.type"), key("job.status")), p)
        })
        .collect()
}

/// Every (job.type, job.status) series `job.end_states` can have.
fn closed_set() -> Vec<(String, String)> {
    let builtin = crate::kinds::Registry::builtin();
    let types = builtin.names().chain([UNKNOWN_JOB_TYPE]);
    types
        .flat_map(|t| JobStatus::TERMINAL.map(|s| (t.to_owned(), s.as_str().to_owned())))
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn every_end_state_series_is_exported_at_zero_before_its_first_increment() {
    let (telemetry, _, metrics) = kept();
    let instruments = telemetry.instruments();
    instruments.record_end_state(Some("data_cleanup"), JobStatus::Completed, None, now());
    instruments.record_end_state(None, JobStatus::Rejected, None, now());
    telemetry.flush().await;

    let exports = metrics.exports();
    assert_eq!(exports.len(), 2, "the baseline, then the current values");
    let first = end_states(&exports[0]);
    for series in closed_set() {
        let point = first
            .get(&series)
            .unwrap_or_else(|| panic!("{series:?} missing"));
        assert_eq!(point.value, 0, "{series:?}");
    }
    assert_eq!(
        first.len(),
        closed_set().len(),
        "nothing outside the closed set"
    );

    let last = end_states(exports.last().expect("exported"));
    let ones: Vec<_> = last.iter().filter(|(_, p)| p.value == 1).collect();
    assert_eq!(ones.len(), 2);
    for (series, one) in ones {
        let earlier = exports[..exports.len() - 1]
            .iter()
            .filter_map(|e| end_states(e).get(series).map(|p| (*p).clone()))
            .find(|p| p.value == 0)
            .unwrap_or_else(|| panic!("{series:?} was not exported at 0 first"));
        assert!(earlier.time <= one.time, "{series:?}");
    }

    // Later flushes export only the current collection.
    instruments.record_end_state(Some("data_cleanup"), JobStatus::Completed, None, now());
    telemetry.flush().await;
    let exports = metrics.exports();
    assert_eq!(exports.len(), 3);
    let key = ("data_cleanup".to_owned(), "COMPLETED".to_owned());
    assert_eq!(end_states(&exports[2])[&key].value, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_job_type_outside_the_catalogue_is_counted_as_unknown() {
    let (telemetry, _, metrics) = kept();
    let instruments = telemetry.instruments();
    instruments.record_end_state(Some("does_not_exist"), JobStatus::Rejected, None, now());
    telemetry.flush().await;
    let exports = metrics.exports();
    let last = end_states(exports.last().expect("exported"));
    let unknown = (UNKNOWN_JOB_TYPE.to_owned(), "REJECTED".to_owned());
    assert_eq!(last[&unknown].value, 1);
    assert!(last.keys().all(|(t, _)| t != "does_not_exist"), "{last:?}");
}

#[test]
fn the_metric_job_type_is_a_catalogue_type_or_unknown() {
    assert_eq!(metric_job_type(Some("data_cleanup")), "data_cleanup");
    for outside in [None, Some(""), Some("does_not_exist"), Some("Data_Cleanup")] {
        assert_eq!(metric_job_type(outside), UNKNOWN_JOB_TYPE, "{outside:?}");
    }
}
