//! The request phases behind every route, independent of the front that received the request
//! (the local server or a Lambda event): authorize, select, admit, cache, route, relay, settle.
//! They return `http` responses, the type both fronts speak.

pub mod batch;
pub mod chat;
pub mod embeddings;
pub mod guard;
pub mod ingest;
pub(crate) mod pii;
pub mod rag;
pub mod relay;
pub mod retrieve;
pub mod semantic;
pub mod settlement;
pub mod sse;
pub mod validate;

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::ModelKind;
use crate::error::ApiError;
use crate::keys::KeyRecord;
use crate::routing::{Deployment, Model, Selection, ServedModel};
use crate::state::Gateway;

/// Output tokens reserved against TPM and budget when a request sets no `max_tokens`.
pub(crate) const DEFAULT_RESERVED_OUTPUT_TOKENS: u64 = 1024;

/// `x-gateway-cache` of an answer served from the cache.
pub(crate) const CACHE_HIT: &str = "HIT";

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_GATEWAY_CACHE: HeaderName = HeaderName::from_static("x-gateway-cache");
pub(crate) static X_GATEWAY_PROVIDER: HeaderName = HeaderName::from_static("x-gateway-provider");
pub(crate) static X_GATEWAY_MODEL: HeaderName = HeaderName::from_static("x-gateway-model");
pub(crate) static X_GATEWAY_COST: HeaderName = HeaderName::from_static("x-gateway-cost-usd");
pub(crate) static X_GATEWAY_ROUTE: HeaderName = HeaderName::from_static("x-gateway-route");
pub(crate) static X_GATEWAY_CONTEXT: HeaderName = HeaderName::from_static("x-gateway-context");
/// The prompt-injection rules a request tripped under the `flag` policy.
pub(crate) static X_GATEWAY_GUARD: HeaderName = HeaderName::from_static("x-gateway-guard");

/// How long the provider took (to its answer, or to a stream's first token); the rest of the
/// time to the response headers is the gateway's own overhead.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamTime(pub(crate) Duration);

pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let message = if e.is_syntax() || e.is_eof() {
            format!("The request body is not valid JSON: {e}")
        } else {
            format!("Invalid request: {e}")
        };
        ApiError::bad_request(message)
    })
}

pub(crate) fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn to_json_bytes<T: Serialize>(value: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("cannot encode response: {e}")))
}

pub(crate) fn set_header(response: &mut Response, name: &HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name.clone(), value);
    }
}

/// Checks that the key may use the model and that the model is of the kind the route serves.
pub(crate) fn authorize_model<'g>(
    gateway: &'g Gateway,
    key: &KeyRecord,
    model: &str,
    kind: ModelKind,
) -> Result<&'g Model, ApiError> {
    let route = gateway.models.model(model)?;
    if !key.allows_model(model) {
        return Err(ApiError::forbidden(format!(
            "This API key is not allowed to use model `{model}`."
        ))
        .with_code("model_not_allowed")
        .with_param("model"));
    }
    if route.kind() != kind {
        let expected = match kind {
            ModelKind::Chat => "chat",
            ModelKind::Embedding => "embedding",
        };
        return Err(
            ApiError::bad_request(format!("Model `{model}` is not a {expected} model."))
                .with_param("model"),
        );
    }
    Ok(route)
}

/// The latest moment a request may still be worked on, set by an entrypoint that has one (on
/// Lambda, the invocation's deadline); provider calls and streams stop before it.
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline(pub tokio::time::Instant);

pub(crate) fn gateway_headers(
    response: &mut Response,
    cache: &'static str,
    route: &ServedModel,
    deployment: &Deployment,
    selection: &Selection<'_>,
) {
    response
        .headers_mut()
        .insert(X_GATEWAY_CACHE.clone(), HeaderValue::from_static(cache));
    set_header(response, &X_GATEWAY_PROVIDER, &deployment.provider_name);
    set_header(response, &X_GATEWAY_MODEL, &route.name);
    if let Some(routed) = &selection.routed {
        set_header(response, &X_GATEWAY_ROUTE, routed);
    }
    if let Some(context) = &selection.context {
        set_header(response, &X_GATEWAY_CONTEXT, context);
    }
}
