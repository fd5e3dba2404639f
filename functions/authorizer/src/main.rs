//! The `authorizer` Lambda. Its handler arrives with the authorizer issue; until then every invocation fails
//! with a clear message instead of pretending to succeed.

use lambda_http::lambda_runtime::{self, Error, LambdaEvent, service_fn};
use serde_json::Value;

async fn handle(_event: LambdaEvent<Value>) -> Result<Value, Error> {
    Err("the authorizer function is not implemented yet".into())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_logging();
    lambda_runtime::run(service_fn(handle)).await
}
