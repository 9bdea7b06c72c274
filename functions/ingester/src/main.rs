//! The `ingester` Lambda: wires configuration, AWS clients, logging and telemetry to
//! [`jobs_core::ingester`]. Clients are built once, before the first invocation, each
//! behind a timeout and a circuit breaker that outlive single invocations.

use jobs_core::aws::{sdk_config, Clients};
use jobs_core::config::IngesterSettings;
use jobs_core::ingester::Ingester;
use jobs_core::telemetry::Telemetry;
use jobs_core::Timestamp;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use std::time::SystemTime;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let settings = IngesterSettings::from_env()?;
    let telemetry = Telemetry::from_env("ingester")?;
    // Spans are `tracing` spans: the span layer goes under the log lines.
    jobs_core::logging::init(telemetry.span_layer());

    let clients = Clients::new(&sdk_config(settings.trust_roots).await?, settings.guard);
    let down = settings.downstream;
    let ingester = Ingester {
        source: clients.queue(settings.source_url, "ingester-queue"),
        jobs_todo: clients.queue(down.jobs_todo_url, "jobs-todo"),
        jobs_todo_fifo: clients.queue(down.jobs_todo_fifo_url, "jobs-todo.fifo"),
        dead_letters: clients.queue(down.dead_letter_url, "dead-letter-queue"),
        topic: clients.topic(down.topic_arn),
        store: clients.store(down.table),
        config: settings.ingester,
        telemetry: telemetry.instruments(),
    };
    let (ingester, telemetry) = (&ingester, &telemetry);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        let now = Timestamp::from(SystemTime::now());
        let deadline = Timestamp::from(event.context.deadline());
        let response = telemetry
            .invoke(&event.context.request_id, |invocation| async move {
                ingester
                    .handle_invocation(event.payload, deadline, now, &invocation)
                    .await
            })
            .await;
        Ok::<_, Error>(response)
    }))
    .await
}
