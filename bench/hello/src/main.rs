//! A hello-world Lambda on `lambda_runtime`, built with the same release profile and
//! runtime flavour as the pipeline's functions, so that `make bench` can report their
//! cold start as a ratio to the floor the runtime itself sets.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<_, Error>(event.payload)
    }))
    .await
}
