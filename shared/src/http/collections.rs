//! The collections routes: extract what the request carries and hand it to `pipeline::ingest`
//! and `pipeline::retrieve`, scoped to the key's tenant.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::handlers::{AuthorizedKey, body_error};
use super::openapi::OpenAiErrors;
use crate::error::ApiError;
use crate::ingest::api::{AddDocuments, CreateCollection, DEFAULT_TOP_K, QueryRequest};
use crate::pipeline::ingest::{self, REQUEST_TIME, deadline_within};
use crate::pipeline::retrieve::retrieve;
use crate::pipeline::{RequestDeadline, X_GATEWAY_CACHE, parse_json};
use crate::state::Gateway;
use crate::vectors::MetadataFilter;

fn json(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(value) => (StatusCode::OK, axum::Json(value)).into_response(),
        Err(error) => error.into_response(),
    }
}

fn deadline(front: Option<Extension<RequestDeadline>>) -> tokio::time::Instant {
    deadline_within(REQUEST_TIME, front.map(|Extension(RequestDeadline(at))| at))
}

#[utoipa::path(
    post,
    path = "/v1/collections",
    tag = "collections",
    summary = "Create a collection",
    request_body(content = CreateCollection, content_type = "application/json"),
    responses((status = 200, description = "The collection object", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs")), links(("GetCollection" = (operation_id = "get_collection", parameters(("name" = "$response.body#/name")))), ("DeleteCollection" = (operation_id = "delete_collection", parameters(("name" = "$response.body#/name")))), ("AddDocuments" = (operation_id = "add_documents", parameters(("name" = "$response.body#/name")))), ("Query" = (operation_id = "query", parameters(("name" = "$response.body#/name")))))), OpenAiErrors),
)]
pub(crate) async fn create_collection(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    json(
        async {
            let body = body.map_err(body_error)?;
            let request: CreateCollection = parse_json(&body)?;
            ingest::create_collection(&gateway, &key, request).await
        }
        .await,
    )
}

#[utoipa::path(
    get,
    path = "/v1/collections",
    tag = "collections",
    summary = "List collections",
    responses((status = 200, description = "A list of collection objects", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn list_collections(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
) -> Response {
    json(ingest::list_collections(&gateway, &key).await)
}

#[utoipa::path(
    get,
    path = "/v1/collections/{name}",
    tag = "collections",
    summary = "A collection object",
    params(("name" = String, Path, description = "The collection's name")),
    responses((status = 200, description = "The collection object", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn get_collection(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(name): Path<String>,
) -> Response {
    json(ingest::get_collection(&gateway, &key, &name).await)
}

#[utoipa::path(
    delete,
    path = "/v1/collections/{name}",
    tag = "collections",
    summary = "Delete a collection and its vectors",
    params(("name" = String, Path, description = "The collection's name")),
    responses((status = 200, description = "`{\"id\", \"deleted\": true}`", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn delete_collection(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(name): Path<String>,
) -> Response {
    json(ingest::delete_collection(&gateway, &key, &name).await)
}

#[utoipa::path(
    post,
    path = "/v1/collections/{name}/documents",
    tag = "collections",
    summary = "Add or replace documents (chunked and embedded)",
    params(("name" = String, Path, description = "The collection's name")),
    request_body(content = AddDocuments, content_type = "application/json"),
    responses((status = 200, description = "What each document became", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs")), links(("GetDocument" = (operation_id = "get_document", parameters(("name" = "$request.path.name"), ("id" = "$request.body#/documents/0/id")))), ("DeleteDocument" = (operation_id = "delete_document", parameters(("name" = "$request.path.name"), ("id" = "$request.body#/documents/0/id")))))), (status = 202, description = "Queued: the ingest job", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs")), links(("GetJob" = (operation_id = "get_job", parameters(("name" = "$request.path.name"), ("id" = "$response.body#/id")))))), OpenAiErrors),
)]
pub(crate) async fn add_documents(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    front: Option<Extension<RequestDeadline>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = body.map_err(body_error)?;
        let request: AddDocuments = parse_json(&body)?;
        ingest::add_documents(&gateway, &key, &name, request, deadline(front)).await
    }
    .await;
    match result {
        Ok((status, value)) => (status, axum::Json(value)).into_response(),
        Err(error) => error.into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/v1/collections/{name}/documents/{id}",
    tag = "collections",
    summary = "A document object",
    params(("name" = String, Path, description = "The collection's name"), ("id" = String, Path, description = "The document's id (may contain `/`)")),
    responses((status = 200, description = "The document object", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn get_document(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    json(ingest::get_document(&gateway, &key, &name, &id).await)
}

#[utoipa::path(
    delete,
    path = "/v1/collections/{name}/documents/{id}",
    tag = "collections",
    summary = "Delete a document and its chunks",
    params(("name" = String, Path, description = "The collection's name"), ("id" = String, Path, description = "The document's id (may contain `/`)")),
    responses((status = 200, description = "`{\"id\", \"deleted\": true}`", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn delete_document(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    json(ingest::delete_document(&gateway, &key, &name, &id).await)
}

#[utoipa::path(
    get,
    path = "/v1/collections/{name}/jobs/{id}",
    tag = "collections",
    summary = "An ingest job",
    params(("name" = String, Path, description = "The collection's name"), ("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The ingest job object", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn get_job(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    json(ingest::get_job(&gateway, &key, &name, &id).await)
}

/// `POST /v1/collections/{c}/query`; `x-gateway-cache` says whether the retrieval cache
/// answered.
#[utoipa::path(
    post,
    path = "/v1/collections/{name}/query",
    tag = "collections",
    summary = "Retrieve the chunks nearest a query",
    params(("name" = String, Path, description = "The collection's name")),
    request_body(content = QueryRequest, content_type = "application/json"),
    responses((status = 200, description = "The nearest chunks", body = Object, headers(("x-request-id" = String), ("x-gateway-cache" = String, description = "HIT or MISS: whether the retrieval cache answered"))), OpenAiErrors),
)]
pub(crate) async fn query(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    front: Option<Extension<RequestDeadline>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = body.map_err(body_error)?;
        let request: QueryRequest = parse_json(&body)?;
        let filter = request
            .filter
            .as_ref()
            .filter(|f| !f.is_null())
            .map(|f| {
                MetadataFilter::parse(f).map_err(|e| {
                    ApiError::bad_request(format!("`filter`: {e}")).with_param("filter")
                })
            })
            .transpose()?;
        retrieve(
            &gateway,
            &key,
            &name,
            &request.query,
            request.top_k.unwrap_or(DEFAULT_TOP_K),
            filter.as_ref(),
            deadline(front),
        )
        .await
    }
    .await;
    match result {
        Ok(retrieval) => {
            let body = json!({
                "object": "list",
                "collection": retrieval.collection,
                "collection_version": retrieval.collection_version,
                "data": retrieval.chunks,
            });
            let mut response = (StatusCode::OK, axum::Json(body)).into_response();
            response.headers_mut().insert(
                X_GATEWAY_CACHE.clone(),
                HeaderValue::from_static(if retrieval.cached { "HIT" } else { "MISS" }),
            );
            response
        }
        Err(error) => error.into_response(),
    }
}
