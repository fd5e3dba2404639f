//! The `chat` Lambda: the shared router behind API Gateway (REST with response streaming, or HTTP
//! API), a Function URL or an ALB, over the DynamoDB backends. Everything is built once per
//! container, before the first invocation.

use std::sync::Arc;

use gateway::config::Config;
use gateway::gateway::Gateway;
use gateway::lambda::ResponseMode;
use lambda_http::Error;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_logging();
    let config = match env("GATEWAY_CONFIG") {
        Some(path) => Config::from_toml(&std::fs::read_to_string(&path)?)?,
        None => Config::built_in(env),
    };
    let backends = gateway::store::dynamo::backends_from_env().await?;
    let gateway = Arc::new(Gateway::new(&config, backends, &env)?);
    let mode = ResponseMode::from_env(env("GATEWAY_RESPONSE_MODE").as_deref())?;
    gateway::lambda::serve(gateway, mode).await
}
