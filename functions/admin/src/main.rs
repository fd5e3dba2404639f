//! The `admin` Lambda: key management, the audit trail and the usage report over every key
//! (`/v1/admin/*` of the shared router).
//! A function of its own so that only its role may create, change or delete keys; the chat
//! function serves every other route. Built once per container, over one AWS config.

use std::sync::Arc;

use gateway::backends::Backends;
use gateway::config::Config;
use gateway::http::Routes;
use gateway::lambda::ResponseMode;
use gateway::lambda::setup::env;
use gateway::state::Gateway;
use gateway::usage::dynamo::DynamoUsageStore;
use lambda_http::Error;

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_logging();
    let aws = gateway::tls::aws_config().load().await;
    // Key management never calls a model: the built-in models need no provider credentials, so
    // this function cannot read the provider secret. The file's server settings still apply.
    let mut config = Config::built_in(|_| None);
    if let Some(path) = env("GATEWAY_CONFIG") {
        config.server = Config::from_toml(&std::fs::read_to_string(&path)?)?.server;
    }
    let mut backends = Backends::aws(&aws)?;
    gateway::lambda::key_setup::manage_keys(&mut backends, &aws).await?;
    let mut gateway = Gateway::new(&config, backends, &env)?;
    // The usage report over every key (`GET /v1/admin/usage`).
    let usage = DynamoUsageStore::from_env(gateway::storage::dynamo::client(&aws))?;
    gateway.usage = Some(Arc::new(usage));
    // Answered the way the REST API's streaming integration invokes it.
    gateway::lambda::serve(Arc::new(gateway), ResponseMode::Auto, Routes::Admin).await
}
