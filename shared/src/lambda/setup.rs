//! What the `chat` and `batch` functions build the same way, once per container: provider
//! credentials from the secret, the config, the AWS backends (with the batch backends when the
//! stack configures them) and the admin key.

use std::collections::HashMap;
use std::sync::Arc;

use lambda_http::Error;

use crate::backends::Backends;
use crate::clock::now_secs;
use crate::config::Config;
use crate::keys::edge::{ApiGatewayEdgeKeys, ensure_admin_key, parse_usage_plan_ids};
use crate::state::Gateway;

pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The gateway over the AWS backends, configured from the environment the template sets.
pub async fn gateway_from_env(aws: &aws_config::SdkConfig) -> Result<Arc<Gateway>, Error> {
    let secret = match env("GATEWAY_PROVIDER_SECRET_ARN") {
        Some(arn) => crate::config::secrets::provider_credentials(aws, &arn).await?,
        None => HashMap::new(),
    };
    // Credentials from the provider secret, then the environment.
    let lookup = move |name: &str| secret.get(name).cloned().or_else(|| env(name));
    let config = match env("GATEWAY_CONFIG") {
        Some(path) => Config::from_toml(&std::fs::read_to_string(&path)?)?,
        None => Config::built_in(&lookup),
    };
    let mut backends = Backends::aws(aws)?;
    // Keys created through the admin API get an API Gateway key in their tier's usage plan.
    if let Some(plans) = env("GATEWAY_USAGE_PLAN_IDS") {
        backends.edge = Arc::new(ApiGatewayEdgeKeys::from_sdk_config(
            aws,
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
    Ok(Arc::new(Gateway::new(&config, backends, &lookup)?))
}
