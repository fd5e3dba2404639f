//! The `chat` Lambda: the shared router behind API Gateway (REST with response streaming, or HTTP
//! API), a Function URL or an ALB, over the AWS backends. Everything is built once per
//! container, before the first invocation, over one AWS config.

use gateway::http::Routes;
use gateway::lambda::ResponseMode;
use gateway::lambda::setup::{BatchPart, Setup, env};
use std::sync::Arc;

use gateway::usage::dynamo::DynamoUsageStore;
use lambda_http::Error;

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_logging();
    let mode = ResponseMode::from_env(env("GATEWAY_RESPONSE_MODE").as_deref())?;
    let aws = gateway::tls::aws_config().load().await;
    let mut setup = Setup::load(&aws, BatchPart::Included).await?;
    // Only this function answers `/v1/responses`: the workers need no responses table.
    let dynamo = gateway::storage::dynamo::client(&aws);
    setup.responses = gateway::responses::dynamo_store_from_env(&dynamo, env);
    // Usage reports of the calling key (the workers only write usage, at settlement).
    setup.usage = Some(Arc::new(DynamoUsageStore::from_env(dynamo)?));
    let gateway = setup.gateway()?;
    // Key management is the admin function's: this role cannot write keys.
    gateway::lambda::serve(gateway, mode, Routes::DataPlane).await
}
