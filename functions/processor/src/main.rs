//! The `processor` Lambda: wires configuration, AWS clients, logging and telemetry
//! to [`jobs_core::processor`]. Clients are built once, before the first invocation,
//! each behind a timeout and a circuit breaker that outlive single invocations.

use jobs_core::aws::{
    deadline_margin, flag, guard_config, required, retry_policy, sdk_config, Clients,
};
use jobs_core::processor::{Processor, ProcessorConfig};
use jobs_core::telemetry::Telemetry;
use jobs_core::Timestamp;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use std::time::SystemTime;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    jobs_core::logging::init();
    let jobs_todo_url = required("JOBS_TODO_QUEUE_URL")?;
    let dead_letter_url = required("DEAD_LETTER_QUEUE_URL")?;
    let topic_arn = required("JOB_END_STATE_TOPIC_ARN")?;
    let table = required("JOBS_TABLE")?;
    let guard = guard_config()?;
    let config = ProcessorConfig {
        deadline_margin: deadline_margin(&guard)?,
        retry: retry_policy()?,
        fault_injection: flag("FAULT_INJECTION")?,
    };
    let telemetry = Telemetry::from_env("processor")?;
    if config.fault_injection {
        lambda_runtime::tracing::warn!("FAULT_INJECTION is on: jobs may ask to fail");
    }

    let clients = Clients::new(&sdk_config().await?, guard);
    let processor = Processor {
        jobs_todo: clients.queue(jobs_todo_url, "jobs-todo"),
        dead_letters: clients.queue(dead_letter_url, "dead-letter-queue"),
        topic: clients.topic(topic_arn),
        store: clients.store(table),
        config,
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
