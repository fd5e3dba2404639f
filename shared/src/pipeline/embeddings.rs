//! The embeddings pipeline: validate and bound the request, select the model, admit, call the
//! provider through the attempt loop, and answer in the encoding the client asked for.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;

use super::settlement::Settlement;
use super::{
    X_GATEWAY_COST, X_GATEWAY_MODEL, X_GATEWAY_PROVIDER, authorize_model, json_response,
    parse_json, set_header, to_json_bytes,
};
use crate::api::{EmbeddingRequest, EncodingFormat, Usage};
use crate::clock::now_secs;
use crate::config::ModelKind;
use crate::error::ApiError;
use crate::keys::KeyRecord;
use crate::limits::Estimate;
use crate::routing;
use crate::state::Gateway;

pub(crate) async fn embed(
    gateway: &Gateway,
    key: &KeyRecord,
    body: &[u8],
    invocation_deadline: Option<tokio::time::Instant>,
) -> Result<Response, ApiError> {
    let now = now_secs();
    let mut request: EmbeddingRequest = parse_json(body)?;
    request.validate()?;
    let requested = authorize_model(gateway, key, &request.model, ModelKind::Embedding)?;
    let model = routing::select_embedding(&gateway.models, key, requested)?;
    if let Some(asked) = request.dimensions
        && asked > model.max_dimensions
    {
        return Err(ApiError::bad_request(format!(
            "`dimensions` is too large: {asked}. Model `{}` supports at most {}.",
            model.name, model.max_dimensions
        ))
        .with_param("dimensions"));
    }
    let tokens = request.input.estimate_tokens();
    let reservation = gateway
        .limiter
        .acquire(
            key,
            Estimate {
                tokens,
                cost_usd: model.price.cost_usd(tokens, 0),
            },
            now,
        )
        .await
        .map_err(|e| e.to_api_error())?;
    let settlement = Settlement::new(gateway, reservation, model.price);
    let format = request.encoding_format.unwrap_or(EncodingFormat::Float);
    let total = tokio::time::Instant::now()
        + Duration::from_millis(model.deployments.first().timeouts.total_ms);
    let deadline = invocation_deadline.map_or(total, |at| at.min(total));
    let mut attempt = routing::EmbeddingAttempt {
        request: &mut request,
    };
    let answer = routing::execute(
        &gateway.models,
        &gateway.routing,
        key,
        model,
        None,
        &mut attempt,
        deadline,
    )
    .await?;
    let mut response = answer.outcome;
    for item in &mut response.data {
        let vector = std::mem::replace(
            &mut item.embedding,
            crate::api::EmbeddingVector::Float(Vec::new()),
        );
        item.embedding = vector.into_format(format)?;
    }
    let usage = Usage::new(response.usage.prompt_tokens, 0);
    let cost = settlement.finish(usage, answer.model.price, &answer.model.name);
    let mut http_response = json_response(StatusCode::OK, to_json_bytes(&response)?);
    set_header(
        &mut http_response,
        &X_GATEWAY_PROVIDER,
        &answer.deployment.provider_name,
    );
    set_header(&mut http_response, &X_GATEWAY_MODEL, &answer.model.name);
    set_header(&mut http_response, &X_GATEWAY_COST, &format!("{cost:.8}"));
    Ok(http_response)
}
