//! THE router, for Lambda and the local server alike.
//!
//! Route table (every route but `/health` and `/openapi.json` needs a gateway key; on AWS each is an explicit path of
//! the API in `infra/template.yaml`, checked by `infra/contract.py`; the chat function serves
//! `Routes::DataPlane`, the admin function `Routes::Admin` (`/v1/admin/*`)):
//!
//! | method | path | handler |
//! |---|---|---|
//! | GET | `/health` | `handlers::health` (no key) |
//! | GET | `/openapi.json` | `openapi::openapi_json` (no key; the OpenAPI 3.1 document of this table) |
//! | GET | `/metrics` | `handlers::metrics` (`metrics` scope; `metrics_router` serves it keyless on its own listener) |
//! | GET | `/v1/models` | `handlers::list_models` (Anthropic's list shape when `anthropic-version` is sent) |
//! | POST | `/v1/chat/completions` | `handlers::chat_completions` -> `pipeline::chat` |
//! | POST | `/v1/messages` | `messages::create_message` -> translated -> `pipeline::chat` (`chat` scope) |
//! | POST | `/v1/messages/count_tokens` | `messages::count_tokens` (the prompt estimate limits reserve) |
//! | POST | `/v1/responses` | `responses::create_response` -> translated -> `pipeline::chat` (`chat` scope) |
//! | GET, DELETE | `/v1/responses/{id}` | `responses::get_response`, `responses::delete_response` (the key's tenant's stored responses) |
//! | POST | `/v1/embeddings` | `handlers::embeddings` -> `pipeline::embeddings` |
//! | POST, GET | `/v1/admin/keys` | `admin::create_key`, `admin::list_keys` |
//! | PATCH, DELETE | `/v1/admin/keys/{id}` | `admin::update_key`, `admin::revoke_key` |
//! | POST | `/v1/admin/keys/{id}/rotate` | `admin::rotate_key` (`{"grace_seconds": N}`) |
//! | GET | `/v1/admin/audit` | `admin::list_audit` (`?limit=N`) |
//! | GET | `/v1/admin/usage` | `usage::admin_usage` (`?key=&from=&to=&format=csv`; by key, day and model) |
//! | GET | `/v1/usage` | `usage::own_usage` (`usage` scope; `?from=&to=`; the calling key's by day and model) |
//! | POST, GET | `/v1/files` | `batch::create_file` (multipart), `batch::list_files` |
//! | GET, DELETE | `/v1/files/{id}` | `batch::get_file`, `batch::delete_file` |
//! | GET | `/v1/files/{id}/content` | `batch::file_content` |
//! | POST | `/v1/uploads` | `batch::create_upload` |
//! | POST | `/v1/uploads/{id}/parts` | `batch::add_upload_part` (multipart) |
//! | POST | `/v1/uploads/{id}/complete` | `batch::complete_upload` |
//! | POST | `/v1/uploads/{id}/cancel` | `batch::cancel_upload` |
//! | POST, GET | `/v1/batches` | `batch::create_batch`, `batch::list_batches` |
//! | GET | `/v1/batches/{id}` | `batch::get_batch` |
//! | POST | `/v1/batches/{id}/cancel` | `batch::cancel_batch` |
//! | GET | `/v1/batches/{id}/results` | `batch::batch_results` (JSONL; `?custom_id=`) |
//! | POST, GET | `/v1/collections` | `collections::create_collection`, `collections::list_collections` |
//! | GET, DELETE | `/v1/collections/{name}` | `collections::get_collection`, `collections::delete_collection` (its vectors too) |
//! | POST | `/v1/collections/{name}/documents` | `collections::add_documents` -> `pipeline::ingest` (202 + job when queued) |
//! | GET, DELETE | `/v1/collections/{name}/documents/{*id}` | `collections::get_document`, `collections::delete_document` |
//! | POST | `/v1/collections/{name}/query` | `collections::query` -> `pipeline::retrieve` |
//! | GET | `/v1/collections/{name}/jobs/{id}` | `collections::get_job` |
//!
//! Layers, outermost first: `request_id` (every response carries `x-request-id`; a tracing span
//! per request), `messages::anthropic_errors` (errors in Anthropic's shape on the Messages routes
//! and on an Anthropic client's model list), the body limit (`server.max_body_bytes`), then on
//! the keyed routes `request_line` (one line per request: EMF on Lambda, a `request` event
//! elsewhere; the Prometheus request metrics) and `authenticate` (the key, then the scope the
//! matched route needs, from the table in `scopes`).

pub mod admin;
pub mod batch;
pub mod collections;
pub mod handlers;
pub mod messages;
pub mod middleware;
pub mod openapi;
mod pipeline_events;
pub mod responses;
pub mod scopes;
pub mod server;
pub mod usage;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use admin::{create_key, list_audit, list_keys, revoke_key, rotate_key, update_key};
use handlers::{chat_completions, embeddings, health, list_models, metrics};
use middleware::{authenticate, declared_length, request_id, request_line};

use crate::error::{ApiError, ErrorKind};
use crate::state::Gateway;

pub use handlers::AuthorizedKey;

/// Which routes a process answers. The local server and the tests answer all of them; on AWS the
/// data plane and key management are two functions with a role each, so the chat function's role
/// cannot create, change or delete keys (`infra/template.yaml`, checked by `infra/contract.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    All,
    /// Everything but `/v1/admin/*` (the chat function).
    DataPlane,
    /// `/v1/admin/*` only (the admin function).
    Admin,
}

/// Every route: the local server and the tests.
pub fn router(gateway: Arc<Gateway>) -> Router {
    router_for(gateway, Routes::All)
}

pub fn router_for(gateway: Arc<Gateway>, routes: Routes) -> Router {
    let max_body = gateway.max_body_bytes;
    let (public, keyed) = match routes {
        Routes::All => (public_routes(), data_plane_routes().merge(admin_routes())),
        Routes::DataPlane => (public_routes(), data_plane_routes()),
        Routes::Admin => (Router::new(), admin_routes()),
    };
    let authenticated = keyed
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&gateway),
            authenticate,
        ))
        .route_layer(axum::middleware::from_fn(request_line));
    public
        .merge(authenticated)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            max_body,
            declared_length,
        ))
        .layer(axum::middleware::from_fn(messages::anthropic_errors))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(gateway)
}

/// The routes that need no key.
fn public_routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi::openapi_json))
}

/// Key management and the audit trail: the only routes that write keys.
fn admin_routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/v1/admin/keys", post(create_key).get(list_keys))
        .route(
            "/v1/admin/keys/{id}",
            axum::routing::patch(update_key).delete(revoke_key),
        )
        .route("/v1/admin/keys/{id}/rotate", post(rotate_key))
        .route("/v1/admin/audit", get(list_audit))
        .route("/v1/admin/usage", get(usage::admin_usage))
}

fn data_plane_routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(messages::create_message))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/responses", post(responses::create_response))
        .route(
            "/v1/responses/{id}",
            get(responses::get_response).delete(responses::delete_response),
        )
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/usage", get(usage::own_usage))
        .route("/v1/files", post(batch::create_file).get(batch::list_files))
        .route(
            "/v1/files/{id}",
            get(batch::get_file).delete(batch::delete_file),
        )
        .route("/v1/files/{id}/content", get(batch::file_content))
        .route("/v1/uploads", post(batch::create_upload))
        .route("/v1/uploads/{id}/parts", post(batch::add_upload_part))
        .route("/v1/uploads/{id}/complete", post(batch::complete_upload))
        .route("/v1/uploads/{id}/cancel", post(batch::cancel_upload))
        .route(
            "/v1/batches",
            post(batch::create_batch).get(batch::list_batches),
        )
        .route("/v1/batches/{id}", get(batch::get_batch))
        .route("/v1/batches/{id}/cancel", post(batch::cancel_batch))
        .route("/v1/batches/{id}/results", get(batch::batch_results))
        .route(
            "/v1/collections",
            post(collections::create_collection).get(collections::list_collections),
        )
        .route(
            "/v1/collections/{name}",
            get(collections::get_collection).delete(collections::delete_collection),
        )
        .route(
            "/v1/collections/{name}/documents",
            post(collections::add_documents),
        )
        .route(
            "/v1/collections/{name}/documents/{*id}",
            get(collections::get_document).delete(collections::delete_document),
        )
        .route("/v1/collections/{name}/query", post(collections::query))
        .route(
            "/v1/collections/{name}/jobs/{id}",
            get(collections::get_job),
        )
        .route("/metrics", get(metrics))
}

/// `/metrics` alone and without a key, for a listener of its own on a private network (the
/// local server's `server.metrics_listen`); the main router's `/metrics` needs an admin key.
pub fn metrics_router() -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
}

async fn not_found() -> ApiError {
    ApiError::not_found("Unknown route. This gateway serves the OpenAI API under /v1.")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        "Method not allowed on this route.",
    )
}
