//! The route handlers: extract what the request carries and hand it to the pipeline.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::openapi::OpenAiErrors;
use crate::api::{
    ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse, ModelEntry, ModelList,
};
use crate::error::{ApiError, BodyTimeout, ErrorKind};
use crate::keys::KeyRecord;
use crate::pipeline::{self, RequestDeadline};
use crate::state::Gateway;
use crate::telemetry::METRICS;

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Liveness (no key)",
    security(),
    responses((status = 200, description = "Up", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// The metrics name every model, provider and deployment, and tell traffic and spend: on the
/// main listener only keys with the `metrics` scope see them.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics (`metrics` scope)",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        METRICS.render(),
    )
}

pub(crate) fn body_error(rejection: BytesRejection) -> ApiError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(error) = cause {
        if let Some(timeout) = error.downcast_ref::<BodyTimeout>() {
            return ApiError::from(*timeout);
        }
        cause = error.source();
    }
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(ErrorKind::PayloadTooLarge, "Request body too large.")
        }
        _ => ApiError::bad_request(rejection.body_text()),
    }
}

#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    summary = "The models this key may use (in Anthropic's list shape when `anthropic-version` is sent)",
    responses((status = 200, description = "The model list", body = ModelList, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn list_models(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    headers: HeaderMap,
) -> Response {
    let models = gateway.models.iter().filter(|m| key.allows_model(m.name()));
    if headers.contains_key(super::messages::ANTHROPIC_VERSION) {
        let names = models.map(|m| m.name());
        return axum::Json(crate::api::messages::model_list(names, gateway.started_at))
            .into_response();
    }
    let data = models
        .map(|m| ModelEntry {
            id: m.name().to_owned(),
            object: "model",
            created: gateway.started_at,
            owned_by: m.owned_by().to_owned(),
        })
        .collect();
    axum::Json(ModelList {
        object: "list",
        data,
    })
    .into_response()
}

/// The pipeline's response, or its error in OpenAI's shape.
async fn answer(work: impl Future<Output = Result<Response, ApiError>>) -> Response {
    work.await.unwrap_or_else(IntoResponse::into_response)
}

/// A key already authenticated in front of the router (on AWS, by the API Gateway authorizer,
/// whose verdict the Lambda adapter attaches); the router then trusts it instead of looking
/// the bearer key up again.
#[derive(Debug, Clone)]
pub struct AuthorizedKey(pub Arc<KeyRecord>);

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "chat",
    summary = "Create a chat completion",
    request_body(content = ChatRequest, content_type = "application/json"),
    responses((status = 200, description = "The answer (JSON), or with `stream: true` a server-sent event stream of `chat.completion.chunk` objects ending with `data: [DONE]`", content((ChatCompletion = "application/json"), (String = "text/event-stream")), headers(("x-request-id" = String), ("x-gateway-cache" = String, description = "HIT, MISS or BYPASS"), ("x-gateway-provider" = String, description = "The provider that answered"), ("x-gateway-model" = String, description = "The model actually used"), ("x-gateway-cost-usd" = String, description = "The cost of the call"))), OpenAiErrors),
)]
pub(crate) async fn chat_completions(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    deadline: Option<Extension<RequestDeadline>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let deadline = deadline.map(|Extension(RequestDeadline(at))| at);
    answer(async {
        let body = body.map_err(body_error)?;
        pipeline::chat::chat(&gateway, &key, &headers, &body, deadline).await
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "embeddings",
    summary = "Create embeddings",
    request_body(content = EmbeddingRequest, content_type = "application/json"),
    responses((status = 200, description = "The vectors", body = EmbeddingResponse, headers(("x-request-id" = String), ("x-gateway-cache" = String, description = "HIT, MISS or BYPASS"), ("x-gateway-provider" = String, description = "The provider that answered"), ("x-gateway-model" = String, description = "The model actually used"), ("x-gateway-cost-usd" = String, description = "The cost of the call"))), OpenAiErrors),
)]
pub(crate) async fn embeddings(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    deadline: Option<Extension<RequestDeadline>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let deadline = deadline.map(|Extension(RequestDeadline(at))| at);
    answer(async {
        let body = body.map_err(body_error)?;
        pipeline::embeddings::embed(&gateway, &key, &headers, &body, deadline).await
    })
    .await
}
