//! The `ingest` Lambda: S3 uploads under the ingest prefix (EventBridge "Object Created" or S3
//! notifications) and the ingest queue's SQS records, through `gateway::lambda::ingest`. Built
//! once per container, over one AWS config.

use std::sync::Arc;
use std::time::Duration;

use gateway::lambda::ingest::{IngestHandler, handle_event};
use gateway::lambda::setup::{BatchPart, Setup};
use lambda_http::lambda_runtime::{self, Error, LambdaEvent, service_fn};
use serde_json::Value;

/// Kept back from the invocation deadline to answer before Lambda stops the function.
const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_logging();
    let aws = gateway::tls::aws_config().load().await;
    let gateway = Setup::load(&aws, BatchPart::Left).await?.gateway()?;
    if gateway.ingest.is_none() {
        return Err("the ingest function needs GATEWAY_COLLECTIONS_TABLE".into());
    }
    let handler = Arc::new(IngestHandler {
        gateway,
        s3: gateway::files::s3::client(&aws),
    });
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let handler = Arc::clone(&handler);
        async move {
            let left = Duration::from_millis(
                event
                    .context
                    .deadline
                    .saturating_sub(gateway::clock::now_millis()),
            );
            let deadline = tokio::time::Instant::now() + left.saturating_sub(DEADLINE_MARGIN);
            let result = handle_event(&handler, event.payload, deadline).await;
            handler.gateway.background.idle().await;
            result.map_err(Error::from)
        }
    }))
    .await
}
