//! The `chat` Lambda: the shared router behind API Gateway (REST with response streaming, or HTTP
//! API), a Function URL or an ALB, over the DynamoDB backends. Everything is built once per
//! container, before the first invocation, over one AWS config.

use std::collections::HashMap;
use std::sync::Arc;

use gateway::clock::now_secs;
use gateway::config::Config;
use gateway::keys::edge::{ApiGatewayEdgeKeys, ensure_admin_key, parse_usage_plan_ids};
use gateway::lambda::ResponseMode;
use gateway::state::Gateway;
use lambda_http::Error;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Credentials from the provider secret, then the environment.
fn credentials(secret: HashMap<String, String>) -> impl Fn(&str) -> Option<String> {
    move |name| secret.get(name).cloned().or_else(|| env(name))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_logging();
    let mode = ResponseMode::from_env(env("GATEWAY_RESPONSE_MODE").as_deref())?;
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let secret = match env("GATEWAY_PROVIDER_SECRET_ARN") {
        Some(arn) => gateway::config::secrets::provider_credentials(&aws, &arn).await?,
        None => HashMap::new(),
    };
    let lookup = credentials(secret);
    let config = match env("GATEWAY_CONFIG") {
        Some(path) => Config::from_toml(&std::fs::read_to_string(&path)?)?,
        None => Config::built_in(&lookup),
    };
    let mut backends = gateway::backends::Backends::aws(&aws)?;
    // Keys created through the admin API get an API Gateway key in their tier's usage plan.
    if let Some(plans) = env("GATEWAY_USAGE_PLAN_IDS") {
        backends.edge = Arc::new(ApiGatewayEdgeKeys::from_sdk_config(
            &aws,
            parse_usage_plan_ids(&plans)?,
        ));
    }
    if let Some(admin) = env("GATEWAY_ADMIN_KEY") {
        ensure_admin_key(
            backends.keys.as_ref(),
            backends.edge.as_ref(),
            &admin,
            now_secs(),
        )
        .await?;
    }
    let gateway = Arc::new(Gateway::new(&config, backends, &lookup)?);
    gateway::lambda::serve(gateway, mode).await
}
