//! OpenAI's Responses API (`/v1/responses`) as a front end over the chat pipeline: a request
//! (with the conversation of its `previous_response_id` chain) is translated into a chat request
//! and answered by `pipeline::chat::chat`, so keys, scopes, limits, budgets, cache, routing,
//! guards and spend are those of `/v1/chat/completions`; the answer becomes a Response object or
//! the Responses event sequence. With `store` (the default) and a configured store, the Response
//! is kept per tenant for `GET` / `DELETE /v1/responses/{id}` and for later turns.
//!
//! A stored document is `{"response": <the Response>, "input": [<this turn's input items>]}`:
//! `GET` answers its `response`; a later turn rebuilds the conversation by walking the
//! `previous_response_id` chain, each turn's input items then its output items, oldest first.
//! Earlier turns' `instructions` are not carried over, as OpenAI documents.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::handlers::{AuthorizedKey, body_error};
use super::messages::parse_request;
use super::openapi::OpenAiErrors;
use super::pipeline_events::{PipelineEvent, pipeline_events};
use crate::api::ChatCompletion;
use crate::api::responses::{
    EventWriter, ResponsesRequest, Untranslatable, new_id, response_from_completion,
    response_skeleton,
};
use crate::clock::now_secs;
use crate::error::ApiError;
use crate::pipeline::{self, RequestDeadline, json_response};
use crate::responses::{DEFAULT_RESPONSE_TTL_SECS, ResponseStore};
use crate::state::Gateway;

/// Most bytes of a pipeline answer read to translate it (the providers' own caps are lower).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// Most earlier turns a `previous_response_id` chain may hold.
pub const MAX_CONVERSATION_TURNS: usize = 100;
/// Most bytes of stored documents one conversation may read.
pub const MAX_CONVERSATION_BYTES: usize = 8 * 1024 * 1024;
/// Longest response id looked up (ours are 37 characters).
const MAX_ID_CHARS: usize = 128;
/// The longest wait for one store call.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// A stored turn, as `store_turn` writes it.
#[derive(Deserialize)]
struct StoredTurn {
    response: Value,
    #[serde(default)]
    input: Vec<Value>,
}

fn untranslatable(error: Untranslatable) -> ApiError {
    ApiError::bad_request(error.message).with_param(error.param)
}

/// The answer for an unknown id, another tenant's, an expired one and a malformed one alike,
/// so an id's existence in another tenant cannot be told.
fn response_not_found(id: &str) -> ApiError {
    let shown: String = id.chars().take(MAX_ID_CHARS).collect();
    ApiError::not_found(format!("Response with id '{shown}' not found.")).with_param("response_id")
}

/// Whether `id` can name a stored response (bounded, and safe as a storage key).
fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

async fn bounded<T>(
    call: impl Future<Output = Result<T, crate::error::StoreError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(STORE_TIMEOUT, call).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => Err(ApiError::unavailable(
            "The gateway's storage did not answer in time; try again shortly.",
        )),
    }
}

/// The items of the conversation before this turn: each stored turn's input then output items,
/// oldest first, walking back from `previous_response_id`.
async fn conversation(
    gateway: &Gateway,
    tenant: &str,
    previous_response_id: &str,
) -> Result<Vec<Value>, ApiError> {
    let Some(store) = gateway.responses.as_deref() else {
        return Err(ApiError::bad_request(
            "`previous_response_id` needs stored responses, which this gateway does not have \
             configured; send the whole conversation in `input` instead.",
        )
        .with_param("previous_response_id"));
    };
    let mut turns = Vec::new();
    let mut bytes = 0usize;
    let mut next = Some(previous_response_id.to_owned());
    while let Some(id) = next {
        if turns.len() >= MAX_CONVERSATION_TURNS {
            return Err(ApiError::bad_request(format!(
                "The conversation of `previous_response_id` is longer than \
                 {MAX_CONVERSATION_TURNS} turns; start a new one with the context in `input`."
            ))
            .with_param("previous_response_id"));
        }
        let missing = || {
            ApiError::bad_request(format!("Previous response with id '{id}' not found."))
                .with_param("previous_response_id")
        };
        if !plausible_id(&id) {
            return Err(missing());
        }
        let Some(document) = bounded(store.get(tenant, &id)).await? else {
            return Err(missing());
        };
        bytes = bytes.saturating_add(document.len());
        if bytes > MAX_CONVERSATION_BYTES {
            return Err(ApiError::bad_request(format!(
                "The conversation of `previous_response_id` is over {MAX_CONVERSATION_BYTES} \
                 bytes; start a new one with the context in `input`."
            ))
            .with_param("previous_response_id"));
        }
        let turn: StoredTurn = serde_json::from_slice(&document).map_err(|e| {
            ApiError::internal(format!("stored response {id} is unreadable")).with_cause(e)
        })?;
        next = turn
            .response
            .get("previous_response_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        turns.push(turn);
    }
    let mut items = Vec::new();
    for turn in turns.into_iter().rev() {
        items.extend(turn.input);
        if let Some(Value::Array(output)) = turn.response.get("output") {
            items.extend(output.iter().cloned());
        }
    }
    Ok(items)
}

/// Where a finished Response is kept, if it is.
struct Keeper {
    store: Option<Arc<dyn ResponseStore>>,
    tenant: String,
    input: Vec<Value>,
}

impl Keeper {
    /// Stores `response` with this turn's input; false (and a warning in the log) when it
    /// could not be, which the Response then says with `"store": false`.
    async fn keep(&self, response: &Value) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let Some(id) = response.get("id").and_then(Value::as_str) else {
            return false;
        };
        let document = json!({"response": response, "input": self.input});
        let stored = match serde_json::to_vec(&document) {
            Ok(document) => {
                bounded(store.put(
                    &self.tenant,
                    id,
                    Bytes::from(document),
                    DEFAULT_RESPONSE_TTL_SECS,
                ))
                .await
            }
            Err(e) => Err(ApiError::internal(e.to_string())),
        };
        match stored {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(response_id = id, error = %error.message, "response not stored");
                false
            }
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/responses",
    tag = "responses",
    summary = "Create a response (OpenAI's Responses API, for any chat model)",
    request_body(content = ResponsesRequest, content_type = "application/json"),
    responses((status = 200, description = "The Response (JSON), or with `stream: true` the Responses server-sent event sequence (`response.created` ... `response.completed`)", content((Object = "application/json"), (String = "text/event-stream")), headers(("x-request-id" = String), ("x-gateway-cache" = String, description = "HIT, MISS or BYPASS"), ("x-gateway-provider" = String, description = "The provider that answered"), ("x-gateway-model" = String, description = "The model actually used"), ("x-gateway-cost-usd" = String, description = "The cost of the call"))), OpenAiErrors),
)]
pub(crate) async fn create_response(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    deadline: Option<Extension<RequestDeadline>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let deadline = deadline.map(|Extension(RequestDeadline(at))| at);
    let answer = async {
        let body = body.map_err(body_error)?;
        let request: ResponsesRequest = parse_request(&body)?;
        if let Some(refused) = request.refused_field() {
            return Err(untranslatable(refused));
        }
        let history = match request.previous_response_id.as_deref() {
            Some(previous) => conversation(&gateway, &key.tenant, previous).await?,
            None => Vec::new(),
        };
        let chat = request.to_chat_request(&history).map_err(untranslatable)?;
        let chat = serde_json::to_vec(&chat)
            .map_err(|e| ApiError::internal(format!("cannot encode the chat request: {e}")))?;
        let keeper = Keeper {
            store: gateway.responses.clone().filter(|_| request.wants_store()),
            tenant: key.tenant.clone(),
            input: request.input_items(),
        };
        let skeleton = response_skeleton(
            &request,
            &new_id("resp"),
            now_secs(),
            keeper.store.is_some(),
        );
        let response = pipeline::chat::chat(&gateway, &key, &headers, &chat, deadline).await?;
        as_responses(response, skeleton, keeper).await
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// The pipeline's answer in the Responses shape: a completion becomes a Response, a chunk
/// stream the Responses events. Headers (`x-gateway-*`) stay; errors are OpenAI's already.
async fn as_responses(
    response: Response,
    skeleton: Value,
    keeper: Keeper,
) -> Result<Response, ApiError> {
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
        let events = response_events(body, EventWriter::new(skeleton), keeper);
        return Ok(Response::from_parts(parts, Body::from_stream(events)));
    }
    let bytes = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the answer: {e}")))?;
    let completion: ChatCompletion = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::internal(format!("the answer is unreadable: {e}")))?;
    let mut answer = response_from_completion(skeleton, &completion);
    if keeper.store.is_some()
        && !keeper.keep(&answer).await
        && let Some(object) = answer.as_object_mut()
    {
        object.insert("store".to_owned(), json!(false));
    }
    let answer = pipeline::to_json_bytes(&answer)?;
    Ok(Response::from_parts(parts, Body::from(answer)))
}

struct Translation<S> {
    events: S,
    writer: EventWriter,
    keeper: Keeper,
}

/// The pipeline's SSE body (OpenAI chunks, `[DONE]`, or an error event) as the Responses
/// events; at `[DONE]` the Response is stored before it is announced.
fn response_events(
    body: Body,
    writer: EventWriter,
    keeper: Keeper,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let state = Translation {
        events: Box::pin(pipeline_events(body)),
        writer,
        keeper,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        if state.writer.finished {
            return None;
        }
        let events = match state.events.next().await? {
            PipelineEvent::Chunk(chunk) => state.writer.chunk(&chunk),
            PipelineEvent::Done => {
                let mut events = state.writer.close();
                if state.keeper.store.is_some() && !state.keeper.keep(state.writer.response()).await
                {
                    state.writer.set_stored(false);
                }
                events.push_str(&state.writer.completed());
                events
            }
            PipelineEvent::Failed { status, message } => state.writer.error(status, &message),
        };
        Some((Ok(Bytes::from(events)), state))
    })
}

/// The stored document of `id` for the key's tenant, or the same 404 for every id it cannot
/// read.
async fn stored(gateway: &Gateway, tenant: &str, id: &str) -> Result<StoredTurn, ApiError> {
    let store = match gateway.responses.as_deref() {
        Some(store) if plausible_id(id) => store,
        _ => return Err(response_not_found(id)),
    };
    let Some(document) = bounded(store.get(tenant, id)).await? else {
        return Err(response_not_found(id));
    };
    serde_json::from_slice(&document).map_err(|e| {
        ApiError::internal(format!("stored response {id} is unreadable")).with_cause(e)
    })
}

#[utoipa::path(
    get,
    path = "/v1/responses/{id}",
    tag = "responses",
    summary = "A stored response (the key's tenant's)",
    params(("id" = String, Path, description = "The response id (`resp_...`)")),
    responses((status = 200, description = "The Response", body = Object, headers(("x-request-id" = String))), (status = 404, description = "No such response for this tenant (unknown, expired, deleted or another tenant's)", body = crate::error::ErrorBody), OpenAiErrors),
)]
pub(crate) async fn get_response(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(id): Path<String>,
) -> Response {
    let answer = async {
        let turn = stored(&gateway, &key.tenant, &id).await?;
        Ok::<_, ApiError>(json_response(
            StatusCode::OK,
            pipeline::to_json_bytes(&turn.response)?,
        ))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(
    delete,
    path = "/v1/responses/{id}",
    tag = "responses",
    summary = "Delete a stored response (the key's tenant's)",
    params(("id" = String, Path, description = "The response id (`resp_...`)")),
    responses((status = 200, description = "Deleted: `{\"id\": ..., \"object\": \"response\", \"deleted\": true}`", body = Object, headers(("x-request-id" = String))), (status = 404, description = "No such response for this tenant (unknown, expired, deleted or another tenant's)", body = crate::error::ErrorBody), OpenAiErrors),
)]
pub(crate) async fn delete_response(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(id): Path<String>,
) -> Response {
    let answer = async {
        let store = match gateway.responses.as_deref() {
            Some(store) if plausible_id(&id) => store,
            _ => return Err(response_not_found(&id)),
        };
        if !bounded(store.delete(&key.tenant, &id)).await? {
            return Err(response_not_found(&id));
        }
        let deleted = json!({"id": id, "object": "response", "deleted": true});
        Ok::<_, ApiError>(json_response(
            StatusCode::OK,
            pipeline::to_json_bytes(&deleted)?,
        ))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_safe_ids_reach_the_store() {
        assert!(plausible_id(&new_id("resp")));
        assert!(plausible_id("resp_abc-DEF"));
        assert!(!plausible_id(""));
        assert!(!plausible_id("resp_1#other"));
        assert!(!plausible_id("../resp"));
        assert!(!plausible_id(&"a".repeat(MAX_ID_CHARS + 1)));
    }
}
