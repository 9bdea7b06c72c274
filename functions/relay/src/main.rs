//! The `relay` Lambda: wires configuration, AWS clients, logging and telemetry to
//! [`jobs_core::relay`]. Invoked on a schedule (the payload, a scheduled event, is not
//! read); each invocation sweeps the outbox once and answers with what it did.

use jobs_core::aws::{sdk_config, Clients};
use jobs_core::config::RelaySettings;
use jobs_core::relay::{Relay, RelayConfig};
use jobs_core::telemetry::Telemetry;
use jobs_core::Timestamp;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use std::time::SystemTime;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let settings = RelaySettings::from_env()?;
    let telemetry = Telemetry::from_env("relay")?;
    jobs_core::logging::init(telemetry.span_layer());

    let clients = Clients::new(&sdk_config(settings.trust_roots).await?, settings.guard);
    let relay = Relay {
        dead_letters: clients.queue(settings.dead_letter_url, "dead-letter-queue"),
        topic: clients.topic(settings.topic_arn),
        store: clients.outbox(settings.table, settings.outbox_index),
        config: RelayConfig::for_calls(settings.guard.call_timeout),
        telemetry: telemetry.instruments(),
    };
    let (relay, telemetry) = (&relay, &telemetry);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let deadline = Timestamp::from(event.context.deadline());
            let sweep = telemetry
                .invoke(&event.context.request_id, |invocation| async move {
                    let now = || Timestamp::from(SystemTime::now());
                    relay.sweep(deadline, &invocation, now).await
                })
                .await;
            Ok::<_, Error>(sweep)
        },
    ))
    .await
}
