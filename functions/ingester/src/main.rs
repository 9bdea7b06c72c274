//! The `ingester` Lambda: wires configuration, AWS clients, logging and telemetry to
//! [`jobs_core::ingester`]. Clients are built once, before the first invocation, each
//! behind a timeout and a circuit breaker that outlive single invocations.

use jobs_core::aws::{guard_config, number_or, required, sdk_config, SnsTopic, SqsQueue};
use jobs_core::dynamo::DynamoStore;
use jobs_core::guard::Guarded;
use jobs_core::ingester::{Ingester, IngesterConfig};
use jobs_core::telemetry::Telemetry;
use jobs_core::Timestamp;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use std::time::SystemTime;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let source_url = required("INGESTER_QUEUE_URL")?;
    let jobs_todo_url = required("JOBS_TODO_QUEUE_URL")?;
    let dead_letter_url = required("DEAD_LETTER_QUEUE_URL")?;
    let topic_arn = required("JOB_END_STATE_TOPIC_ARN")?;
    let table = required("JOBS_TABLE")?;
    let max_receive_count = u32::try_from(number_or("MAX_RECEIVE_COUNT", 5)?).unwrap_or(u32::MAX);
    let guard = guard_config()?;
    let telemetry = Telemetry::from_env("ingester")?;

    let sdk = sdk_config().await;
    let store = DynamoStore::from_sdk(&sdk, table);
    let ingester = Ingester {
        source: Guarded::new(SqsQueue::new(&sdk, source_url), "ingester-queue", guard),
        jobs_todo: Guarded::new(SqsQueue::new(&sdk, jobs_todo_url), "jobs-todo", guard),
        dead_letters: Guarded::new(
            SqsQueue::new(&sdk, dead_letter_url),
            "dead-letter-queue",
            guard,
        ),
        topic: Guarded::new(SnsTopic::new(&sdk, topic_arn), "job-end-state-topic", guard),
        store: Guarded::new(store, "job state table", guard),
        config: IngesterConfig { max_receive_count },
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
