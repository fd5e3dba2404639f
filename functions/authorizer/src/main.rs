//! The `authorizer` Lambda: API Gateway REQUEST authorizer for gateway keys. The decision logic is
//! `gateway::lambda::authorizer` (event and response shapes are documented there); this binary builds
//! the key store once per container from the environment (`GATEWAY_KEYS_TABLE`, ...,
//! `GATEWAY_KEY_CACHE_TTL_MS`) and hands each invocation to it.

use std::sync::Arc;

use gateway::lambda::authorizer::KeyAuthorizer;
use lambda_http::aws_lambda_events::apigw::ApiGatewayCustomAuthorizerRequestTypeRequest;
use lambda_http::lambda_runtime::{self, Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_logging();
    let authorizer = Arc::new(KeyAuthorizer::from_env().await?);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest>| {
            let authorizer = Arc::clone(&authorizer);
            async move { authorizer.handle(&event.payload).await }
        },
    ))
    .await
}
