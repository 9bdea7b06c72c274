//! The `ingester` Lambda: wires configuration, AWS clients, logging and telemetry to
//! [`jobs_core::ingester`]. Clients are built once, before the first invocation, each
//! behind a timeout and a circuit breaker that outlive single invocations.

use jobs_core::aws::{guard_config, max_job_timeout, number_or, required, sdk_config, Clients};
use jobs_core::ingester::{Ingester, IngesterConfig};
use jobs_core::telemetry::Telemetry;
use jobs_core::Timestamp;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use std::time::SystemTime;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    jobs_core::logging::init();
    let source_url = required("INGESTER_QUEUE_URL")?;
    let jobs_todo_url = required("JOBS_TODO_QUEUE_URL")?;
    let dead_letter_url = required("DEAD_LETTER_QUEUE_URL")?;
    let topic_arn = required("JOB_END_STATE_TOPIC_ARN")?;
    let table = required("JOBS_TABLE")?;
    let max_receive_count = u32::try_from(number_or("MAX_RECEIVE_COUNT", 5)?).unwrap_or(u32::MAX);
    let max_job_timeout_secs = max_job_timeout()?;
    let guard = guard_config()?;
    let telemetry = Telemetry::from_env("ingester")?;

    let clients = Clients::new(&sdk_config().await?, guard);
    let ingester = Ingester {
        source: clients.queue(source_url, "ingester-queue"),
        jobs_todo: clients.queue(jobs_todo_url, "jobs-todo"),
        dead_letters: clients.queue(dead_letter_url, "dead-letter-queue"),
        topic: clients.topic(topic_arn),
        store: clients.store(table),
        config: IngesterConfig {
            max_receive_count,
            max_job_timeout_secs,
        },
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
