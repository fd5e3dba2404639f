//! The `batch` Lambda: SQS records of the batch queue (expand a batch, run its items through the
//! same pipeline as the chat path, write the output files) and the scheduled sweep. Built once
//! per container, over one AWS config.

use std::sync::Arc;

use gateway::batch::worker::Worker;
use gateway::lambda::setup::{BatchPart, Setup};
use gateway::pipeline::batch::PipelineRunner;
use lambda_http::lambda_runtime::{self, Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_logging();
    let aws = gateway::tls::aws_config().load().await;
    let gateway = Setup::load(&aws, BatchPart::Included).await?.gateway()?;
    let batch = gateway.batch.clone().ok_or(
        "the batch function needs GATEWAY_BATCH_TABLE, GATEWAY_BUCKET and GATEWAY_BATCH_QUEUE_URL",
    )?;
    let keys = Arc::clone(gateway.auth.store());
    let worker = Arc::new(Worker::new(batch, keys, Arc::new(PipelineRunner(gateway))));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let worker = Arc::clone(&worker);
        async move {
            gateway::lambda::batch::handle_event(&worker, event.payload)
                .await
                .map_err(Error::from)
        }
    }))
    .await
}
