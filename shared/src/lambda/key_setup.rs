//! The admin function's key management at start-up: keys created through the admin API get an
//! API Gateway key in their tier's usage plan, and `GATEWAY_ADMIN_KEY` is made an admin key.
//! Apart from `setup`, so the functions that only read keys reach none of it.

use std::sync::Arc;

use lambda_http::Error;

use super::setup::env;
use crate::backends::Backends;
use crate::clock::now_secs;
use crate::keys::edge::{ApiGatewayEdgeKeys, ensure_admin_key, parse_usage_plan_ids};

pub async fn manage_keys(
    backends: &mut Backends,
    aws: &aws_config::SdkConfig,
) -> Result<(), Error> {
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
    Ok(())
}
