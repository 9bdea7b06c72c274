//! The `processor` Lambda: wires configuration, AWS clients, logging and telemetry
//! to [`jobs_core::processor`]. Clients are built once, before the first invocation.

use jobs_core::aws::{number_or, required, sdk_config, SnsTopic, SqsQueue};
use jobs_core::processor::{Processor, ProcessorConfig};
use jobs_core::telemetry::Telemetry;
use jobs_core::Timestamp;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use std::time::{Duration, SystemTime};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let dead_letter_url = required("DEAD_LETTER_QUEUE_URL")?;
    let topic_arn = required("JOB_END_STATE_TOPIC_ARN")?;
    let deadline_margin = Duration::from_millis(number_or("DEADLINE_MARGIN_MS", 3000)?);
    let telemetry = Telemetry::from_env("processor")?;

    let sdk = sdk_config().await;
    let processor = Processor {
        dead_letters: SqsQueue::new(&sdk, dead_letter_url),
        topic: SnsTopic::new(&sdk, topic_arn),
        config: ProcessorConfig { deadline_margin },
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
