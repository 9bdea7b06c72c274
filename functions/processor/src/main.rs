//! The `processor` Lambda: wires configuration, AWS clients, logging and telemetry
//! to [`jobs_core::processor`]. Clients are built once, before the first invocation,
//! each behind a timeout and a circuit breaker that outlive single invocations.

use jobs_core::aws::{sdk_config, Clients};
use jobs_core::config::ProcessorSettings;
use jobs_core::processor::Processor;
use jobs_core::telemetry::Telemetry;
use jobs_core::Timestamp;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use std::time::SystemTime;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let settings = ProcessorSettings::from_env()?;
    let telemetry = Telemetry::from_env("processor")?;
    // Spans are `tracing` spans: the span layer goes under the log lines.
    jobs_core::logging::init(telemetry.span_layer());
    if settings.processor.fault_injection {
        lambda_runtime::tracing::warn!("FAULT_INJECTION is on: jobs may ask to fail");
    }

    let clients = Clients::new(&sdk_config(settings.trust_roots).await?, settings.guard);
    let down = settings.downstream;
    let processor = Processor {
        jobs_todo: clients.queue(down.jobs_todo_url, "jobs-todo"),
        jobs_todo_fifo: clients.queue(down.jobs_todo_fifo_url, "jobs-todo.fifo"),
        dead_letters: clients.queue(down.dead_letter_url, "dead-letter-queue"),
        topic: clients.topic(down.topic_arn),
        store: clients.store(down.table),
        config: settings.processor,
        telemetry: telemetry.instruments(),
    };
    let (processor, telemetry) = (&processor, &telemetry);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        let now = Timestamp::from(SystemTime::now());
        let deadline = Timestamp::from(event.context.deadline());
        let response = telemetry
            .invoke(&event.context.request_id, |invocation| async move {
                processor
                    .handle_invocation(event.payload, deadline, now, &invocation)
                    .await
            })
            .await;
        Ok::<_, Error>(response)
    }))
    .await
}
