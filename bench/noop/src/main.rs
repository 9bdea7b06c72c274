//! The pipeline's two hops with nothing in them, for `make bench`'s throughput floor.
//! Deployed as both `ingester` and `processor` (it reads which from
//! `AWS_LAMBDA_FUNCTION_NAME`): the ingester passes each job's id on to `jobs-todo`,
//! the processor announces it `COMPLETED`, each a batch call per invocation, as the
//! real functions make them. No validation, no state table, no telemetry,
//! so a run through these measures what the emulator allows, not what the code costs.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sns::types::PublishBatchRequestEntry;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

enum Hop {
    Ingester {
        sqs: aws_sdk_sqs::Client,
        jobs_todo: String,
    },
    Processor {
        sns: aws_sdk_sns::Client,
        topic: String,
    },
}

fn env(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

/// The job id an SQS body carries: an EventBridge event's `detail.id`, or `job_id`.
fn job_id(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v.pointer("/detail/id")
        .or_else(|| v.get("job_id"))
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned()
}

async fn handle(hop: &Hop, event: SqsEvent) -> Result<SqsBatchResponse, Error> {
    let ids: Vec<String> = event
        .records
        .iter()
        .map(|r| job_id(r.body.as_deref().unwrap_or_default()))
        .collect();
    match hop {
        Hop::Ingester { sqs, jobs_todo } => {
            let entries = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(json!({ "job_id": id }).to_string())
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !entries.is_empty() {
                sqs.send_message_batch()
                    .queue_url(jobs_todo)
                    .set_entries(Some(entries))
                    .send()
                    .await?;
            }
        }
        Hop::Processor { sns, topic } => {
            let entries = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let note = json!({
                        "job_id": id,
                        "status": "COMPLETED",
                        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    });
                    PublishBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message(note.to_string())
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !entries.is_empty() {
                sns.publish_batch()
                    .topic_arn(topic)
                    .set_publish_batch_request_entries(Some(entries))
                    .send()
                    .await?;
            }
        }
    }
    Ok(SqsBatchResponse::default())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let hop = match env("AWS_LAMBDA_FUNCTION_NAME")?.as_str() {
        "ingester" => Hop::Ingester {
            sqs: aws_sdk_sqs::Client::new(&sdk),
            jobs_todo: env("JOBS_TODO_QUEUE_URL")?,
        },
        _ => Hop::Processor {
            sns: aws_sdk_sns::Client::new(&sdk),
            topic: env("JOB_END_STATE_TOPIC_ARN")?,
        },
    };
    let hop = &hop;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        handle(hop, event.payload).await
    }))
    .await
}
