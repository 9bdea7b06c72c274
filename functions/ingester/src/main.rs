//! The `ingester` Lambda: wires configuration, AWS clients, logging and telemetry to
//! [`jobs_core::ingester`]. Clients are built once, before the first invocation.

use jobs_core::aws::{number_or, required, sdk_config, SnsTopic, SqsQueue};
use jobs_core::ingester::{Ingester, IngesterConfig};
use jobs_core::telemetry::Telemetry;
use jobs_core::Timestamp;
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let jobs_todo_url = required("JOBS_TODO_QUEUE_URL")?;
    let dead_letter_url = required("DEAD_LETTER_QUEUE_URL")?;
    let topic_arn = required("JOB_END_STATE_TOPIC_ARN")?;
    let max_receive_count = u32::try_from(number_or("MAX_RECEIVE_COUNT", 5)?).unwrap_or(u32::MAX);
    let telemetry = Telemetry::from_env("ingester")?;

    let sdk = sdk_config().await;
    let ingester = Ingester {
        jobs_todo: SqsQueue::new(&sdk, jobs_todo_url),
        dead_letters: SqsQueue::new(&sdk, dead_letter_url),
        topic: SnsTopic::new(&sdk, topic_arn),
        config: IngesterConfig { max_receive_count },
        telemetry: telemetry.instruments(),
    };
    let (ingester, telemetry) = (&ingester, &telemetry);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        let now = Timestamp::from(std::time::SystemTime::now());
        let response = telemetry
            .invoke(&event.context.request_id, |invocation| async move {
                ingester
                    .handle_invocation(event.payload, now, &invocation)
                    .await
            })
            .await;
        Ok::<_, Error>(response)
    }))
    .await
}
