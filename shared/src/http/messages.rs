//! Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`, and `/v1/models` for
//! clients that send `anthropic-version`) as a front end over the chat pipeline: the request is
//! translated into a chat request and answered by `pipeline::chat::chat`, so keys, scopes, limits,
//! budgets, cache, routing, guards and spend are those of `/v1/chat/completions`; the answer and
//! every error are translated back into Anthropic's shapes.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::handlers::{AuthorizedKey, body_error};
use super::pipeline_events::{PipelineEvent, pipeline_events};
use crate::api::messages::{
    ClientHeaders, CountTokensRequest, CountTokensResponse, EventWriter, MessageResponse,
    MessagesRequest, Untranslatable, error_body, message_from_completion,
};
use crate::api::{ChatCompletion, ChatRequest};
use crate::config::ModelKind;
use crate::error::ApiError;
use crate::pipeline::{self, RequestDeadline, authorize_model, json_response, parse_json};
use crate::state::Gateway;

/// The header Anthropic's clients send with every request.
pub(crate) const ANTHROPIC_VERSION: &str = "anthropic-version";
/// The header naming the beta features a client opts into.
const ANTHROPIC_BETA: &str = "anthropic-beta";

/// Most bytes of a pipeline answer read to translate it (the providers' own caps are lower).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// Most bytes of an error body read to reword it.
const MAX_ERROR_BYTES: usize = 1024 * 1024;

/// A Messages (or Responses) API body, refused with the path of the field at fault.
pub(crate) fn parse_request<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            return parse_json::<T>(body)
                .err()
                .unwrap_or_else(|| ApiError::bad_request(inner.to_string()));
        }
        ApiError::bad_request(format!("Invalid request: `{path}`: {inner}")).with_param(path)
    })
}

fn untranslatable(error: Untranslatable) -> ApiError {
    ApiError::bad_request(error.message).with_param(error.param)
}

/// The client's `anthropic-version` and `anthropic-beta`, for Anthropic upstreams.
fn client_headers(headers: &HeaderMap) -> ClientHeaders {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    ClientHeaders {
        version: text(ANTHROPIC_VERSION),
        beta: text(ANTHROPIC_BETA),
    }
}

/// The chat request body the pipeline answers for a Messages request.
fn chat_body(request: &MessagesRequest, headers: &HeaderMap) -> Result<Vec<u8>, ApiError> {
    let chat = request
        .to_chat_request(&client_headers(headers))
        .map_err(untranslatable)?;
    serde_json::to_vec(&chat)
        .map_err(|e| ApiError::internal(format!("cannot encode the chat request: {e}")))
}

#[utoipa::path(
    post,
    path = "/v1/messages",
    tag = "messages",
    summary = "Create a message (Anthropic's Messages API, for any chat model)",
    request_body(content = MessagesRequest, content_type = "application/json"),
    responses((status = 200, description = "The Message (JSON), or with `stream: true` Anthropic's server-sent event sequence (`message_start` ... `message_stop`)", content((MessageResponse = "application/json"), (String = "text/event-stream")), headers(("x-request-id" = String), ("x-gateway-cache" = String, description = "HIT, MISS or BYPASS"), ("x-gateway-provider" = String, description = "The provider that answered"), ("x-gateway-model" = String, description = "The model actually used"), ("x-gateway-cost-usd" = String, description = "The cost of the call"))), (status = "4XX", description = "Refused: Anthropic's error shape", body = Object), (status = "5XX", description = "Failed upstream or in the gateway: Anthropic's error shape", body = Object)),
)]
pub(crate) async fn create_message(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    deadline: Option<Extension<RequestDeadline>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let deadline = deadline.map(|Extension(RequestDeadline(at))| at);
    let answer = async {
        let body = body.map_err(body_error)?;
        let request: MessagesRequest = parse_request(&body)?;
        let chat = chat_body(&request, &headers)?;
        let response = pipeline::chat::chat(&gateway, &key, &headers, &chat, deadline).await?;
        as_message(response).await
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// The pipeline's answer in Anthropic's shape: a completion becomes a Message, a chunk stream
/// Anthropic's events. Headers (`x-gateway-*`) stay.
async fn as_message(response: Response) -> Result<Response, ApiError> {
    if !response.status().is_success() {
        return Ok(response);
    }
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    if streamed {
        return Ok(Response::from_parts(
            parts,
            Body::from_stream(anthropic_events(body)),
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the answer: {e}")))?;
    let completion: ChatCompletion = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::internal(format!("the answer is unreadable: {e}")))?;
    let message = pipeline::to_json_bytes(&message_from_completion(&completion))?;
    Ok(Response::from_parts(parts, Body::from(message)))
}

/// The pipeline's SSE body (OpenAI chunks, `[DONE]`, or an error event) as Anthropic's events.
fn anthropic_events(body: Body) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    pipeline_events(body).scan(EventWriter::default(), |writer, event| {
        if writer.finished {
            return futures_util::future::ready(None);
        }
        let events = match event {
            PipelineEvent::Chunk(chunk) => writer.chunk(&chunk),
            PipelineEvent::Done => writer.end(),
            PipelineEvent::Failed { status, message } => writer.error(status, &message),
        };
        futures_util::future::ready(Some(Ok(Bytes::from(events))))
    })
}

#[utoipa::path(
    post,
    path = "/v1/messages/count_tokens",
    tag = "messages",
    summary = "Count a Messages request's input tokens (the gateway's estimate, the one its limits reserve)",
    request_body(content = CountTokensRequest, content_type = "application/json"),
    responses((status = 200, description = "The count", body = CountTokensResponse, headers(("x-request-id" = String))), (status = "4XX", description = "Refused: Anthropic's error shape", body = Object), (status = "5XX", description = "Failed in the gateway: Anthropic's error shape", body = Object)),
)]
pub(crate) async fn count_tokens(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let count = || {
        let body = body.map_err(body_error)?;
        let request: CountTokensRequest = parse_request(&body)?;
        authorize_model(&gateway, &key, &request.model, ModelKind::Chat)?;
        let chat = request.to_chat_request().map_err(untranslatable)?;
        let chat: ChatRequest = serde_json::from_value(chat)
            .map_err(|e| ApiError::bad_request(format!("Invalid request: {e}")))?;
        let counted = CountTokensResponse {
            input_tokens: chat.estimate_prompt_tokens(),
        };
        Ok::<_, ApiError>(json_response(
            StatusCode::OK,
            pipeline::to_json_bytes(&counted)?,
        ))
    };
    count().unwrap_or_else(IntoResponse::into_response)
}

/// Whether a request is answered in Anthropic's shapes: the Messages routes always, the model
/// list when the client says it speaks Anthropic's API.
pub(crate) fn speaks_anthropic(request: &Request) -> bool {
    request.uri().path().starts_with("/v1/messages")
        || (request.uri().path() == "/v1/models"
            && request.headers().contains_key(ANTHROPIC_VERSION))
}

/// Rewords the errors of Anthropic-shaped requests (the key check, scopes, limits, the body
/// limit, the pipeline's own) from OpenAI's shape into Anthropic's, keeping status and headers.
pub(crate) async fn anthropic_errors(request: Request, next: Next) -> Response {
    if !speaks_anthropic(&request) {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let message = match axum::body::to_bytes(body, MAX_ERROR_BYTES).await {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
        Err(_) => "The request failed.".to_owned(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let body = error_body(status.as_u16(), &message).to_string();
    Response::from_parts(parts, Body::from(body))
}
