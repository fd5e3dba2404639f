//! The Files, Uploads and Batches routes: extract what the request carries and hand it to
//! `batch::files_api` / `batch::batches_api`, scoped to the key's tenant.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::multipart::MultipartError;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::handlers::{AuthorizedKey, body_error};
use super::openapi::{FileUpload, OpenAiErrors, UploadPart};
use crate::batch::batches_api::NewBatch;
use crate::batch::files_api::{self, CompleteUpload, NewUpload, not_configured};
use crate::batch::{BatchBackends, batches_api};
use crate::error::{ApiError, ErrorKind};
use crate::pipeline::parse_json;
use crate::state::Gateway;

fn backends(gateway: &Gateway) -> Result<&BatchBackends, ApiError> {
    gateway.batch.as_ref().ok_or_else(not_configured)
}

fn json(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(value) => (StatusCode::OK, axum::Json(value)).into_response(),
        Err(error) => error.into_response(),
    }
}

/// A multipart body that cannot be read: 413 when it outgrew the body limit, else 400.
fn multipart_error(error: MultipartError) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("The multipart body is too large: {}", error.body_text()),
        );
    }
    ApiError::bad_request(format!("The multipart body cannot be read: {error}"))
}

/// The fields of a multipart form the Files and Uploads APIs read: one file-like field and
/// plain text fields.
#[derive(Default)]
struct Form {
    data: Option<(Option<String>, Bytes)>,
    purpose: Option<String>,
}

async fn read_form(mut multipart: Multipart, file_field: &str) -> Result<Form, ApiError> {
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == file_field {
            let filename = field.file_name().map(str::to_owned);
            let bytes = field.bytes().await.map_err(multipart_error)?;
            form.data = Some((filename, bytes));
        } else if name == "purpose" {
            form.purpose = Some(field.text().await.map_err(multipart_error)?);
        }
    }
    Ok(form)
}

#[utoipa::path(
    post,
    path = "/v1/files",
    tag = "files",
    summary = "Upload a file (multipart: `file`, `purpose`)",
    request_body(content = FileUpload, content_type = "multipart/form-data"),
    responses((status = 200, description = "The file object", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs")), links(("GetFile" = (operation_id = "get_file", parameters(("id" = "$response.body#/id")))), ("DeleteFile" = (operation_id = "delete_file", parameters(("id" = "$response.body#/id")))), ("FileContent" = (operation_id = "file_content", parameters(("id" = "$response.body#/id")))))), OpenAiErrors),
)]
pub(crate) async fn create_file(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    json(
        async {
            let batch = backends(&gateway)?;
            let multipart = multipart.map_err(|e| {
                ApiError::bad_request(format!(
                    "Send the file as multipart/form-data with fields `file` and `purpose`: {e}"
                ))
            })?;
            let form = read_form(multipart, "file").await?;
            let (filename, body) = form.data.ok_or_else(|| {
                ApiError::bad_request("The form has no `file` field.").with_param("file")
            })?;
            let purpose = form.purpose.ok_or_else(|| {
                ApiError::bad_request("The form has no `purpose` field.").with_param("purpose")
            })?;
            let filename = filename.unwrap_or_else(|| "upload.jsonl".to_owned());
            files_api::create_file(batch, &key.tenant, &filename, &purpose, body).await
        }
        .await,
    )
}

/// The query string, or a 400 in OpenAI's shape (axum's own rejection is plain text).
fn list_query(query: Result<Query<ListQuery>, QueryRejection>) -> Result<ListQuery, ApiError> {
    query
        .map(|Query(query)| query)
        .map_err(|e| ApiError::bad_request(format!("Invalid query string: {}", e.body_text())))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
    purpose: Option<String>,
    custom_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/files",
    tag = "files",
    summary = "List files",
    params(("after" = Option<String>, Query, description = "Start after this id"), ("limit" = Option<usize>, Query, description = "Page size"), ("purpose" = Option<String>, Query, description = "Only files with this purpose")),
    responses((status = 200, description = "A list of file objects", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn list_files(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    json(
        async {
            let batch = backends(&gateway)?;
            let query = list_query(query)?;
            files_api::list_files(
                batch,
                &key.tenant,
                query.after.as_deref(),
                query.limit,
                query.purpose.as_deref(),
            )
            .await
        }
        .await,
    )
}

#[utoipa::path(
    get,
    path = "/v1/files/{id}",
    tag = "files",
    summary = "A file object",
    params(("id" = String, Path, description = "The file's id")),
    responses((status = 200, description = "The file object", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn get_file(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(id): Path<String>,
) -> Response {
    json(async { files_api::get_file(backends(&gateway)?, &key.tenant, &id).await }.await)
}

#[utoipa::path(
    delete,
    path = "/v1/files/{id}",
    tag = "files",
    summary = "Delete a file",
    params(("id" = String, Path, description = "The file's id")),
    responses((status = 200, description = "`{\"id\", \"deleted\": true}`", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn delete_file(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(id): Path<String>,
) -> Response {
    json(async { files_api::delete_file(backends(&gateway)?, &key.tenant, &id).await }.await)
}

#[utoipa::path(
    get,
    path = "/v1/files/{id}/content",
    tag = "files",
    summary = "A file's bytes",
    params(("id" = String, Path, description = "The file's id")),
    responses((status = 200, description = "The file's content", content_type = "application/octet-stream", body = String, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn file_content(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(id): Path<String>,
) -> Response {
    let result = async { files_api::file_content(backends(&gateway)?, &key.tenant, &id).await };
    match result.await {
        Ok(body) => ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response(),
        Err(error) => error.into_response(),
    }
}

#[utoipa::path(
    post,
    path = "/v1/uploads",
    tag = "files",
    summary = "Start a multi-part upload",
    request_body(content = NewUpload, content_type = "application/json"),
    responses((status = 200, description = "The upload object", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs")), links(("AddUploadPart" = (operation_id = "add_upload_part", parameters(("id" = "$response.body#/id")))), ("CompleteUpload" = (operation_id = "complete_upload", parameters(("id" = "$response.body#/id")))), ("CancelUpload" = (operation_id = "cancel_upload", parameters(("id" = "$response.body#/id")))))), OpenAiErrors),
)]
pub(crate) async fn create_upload(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    json(
        async {
            let batch = backends(&gateway)?;
            let new: NewUpload = parse_json(&body.map_err(body_error)?)?;
            files_api::create_upload(batch, &key.tenant, new).await
        }
        .await,
    )
}

#[utoipa::path(
    post,
    path = "/v1/uploads/{id}/parts",
    tag = "files",
    summary = "Add a part (multipart: `data`)",
    params(("id" = String, Path, description = "The upload's id")),
    request_body(content = UploadPart, content_type = "multipart/form-data"),
    responses((status = 200, description = "The part object", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn add_upload_part(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(id): Path<String>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    json(
        async {
            let batch = backends(&gateway)?;
            let multipart = multipart.map_err(|e| {
                ApiError::bad_request(format!(
                    "Send the part as multipart/form-data with the field `data`: {e}"
                ))
            })?;
            let form = read_form(multipart, "data").await?;
            let (_, data) = form.data.ok_or_else(|| {
                ApiError::bad_request("The form has no `data` field.").with_param("data")
            })?;
            files_api::add_part(batch, &key.tenant, &id, data).await
        }
        .await,
    )
}

#[utoipa::path(
    post,
    path = "/v1/uploads/{id}/complete",
    tag = "files",
    summary = "Complete an upload: its parts become a file",
    params(("id" = String, Path, description = "The upload's id")),
    request_body(content = CompleteUpload, content_type = "application/json"),
    responses((status = 200, description = "The upload object with its file", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn complete_upload(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    json(
        async {
            let batch = backends(&gateway)?;
            let complete: CompleteUpload = parse_json(&body.map_err(body_error)?)?;
            files_api::complete_upload(batch, &key.tenant, &id, complete).await
        }
        .await,
    )
}

#[utoipa::path(
    post,
    path = "/v1/uploads/{id}/cancel",
    tag = "files",
    summary = "Cancel an upload",
    params(("id" = String, Path, description = "The upload's id")),
    responses((status = 200, description = "The upload object", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn cancel_upload(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(id): Path<String>,
) -> Response {
    json(async { files_api::cancel_upload(backends(&gateway)?, &key.tenant, &id).await }.await)
}

#[utoipa::path(
    post,
    path = "/v1/batches",
    tag = "batches",
    summary = "Create a batch from an uploaded JSONL file",
    request_body(content = NewBatch, content_type = "application/json"),
    responses((status = 200, description = "The batch object", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs")), links(("GetBatch" = (operation_id = "get_batch", parameters(("id" = "$response.body#/id")))), ("CancelBatch" = (operation_id = "cancel_batch", parameters(("id" = "$response.body#/id")))), ("BatchResults" = (operation_id = "batch_results", parameters(("id" = "$response.body#/id")))))), OpenAiErrors),
)]
pub(crate) async fn create_batch(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    json(
        async {
            let batch = backends(&gateway)?;
            let new: batches_api::NewBatch = parse_json(&body.map_err(body_error)?)?;
            batches_api::create_batch(batch, &key, new).await
        }
        .await,
    )
}

#[utoipa::path(
    get,
    path = "/v1/batches/{id}",
    tag = "batches",
    summary = "A batch object",
    params(("id" = String, Path, description = "The batch's id")),
    responses((status = 200, description = "The batch object", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn get_batch(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(id): Path<String>,
) -> Response {
    json(async { batches_api::get_batch(backends(&gateway)?, &key.tenant, &id).await }.await)
}

#[utoipa::path(
    get,
    path = "/v1/batches",
    tag = "batches",
    summary = "List batches",
    params(("after" = Option<String>, Query, description = "Start after this id"), ("limit" = Option<usize>, Query, description = "Page size")),
    responses((status = 200, description = "A list of batch objects", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn list_batches(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    json(
        async {
            let query = list_query(query)?;
            batches_api::list_batches(
                backends(&gateway)?,
                &key.tenant,
                query.after.as_deref(),
                query.limit,
            )
            .await
        }
        .await,
    )
}

#[utoipa::path(
    post,
    path = "/v1/batches/{id}/cancel",
    tag = "batches",
    summary = "Cancel a batch",
    params(("id" = String, Path, description = "The batch's id")),
    responses((status = 200, description = "The batch object", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn cancel_batch(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(id): Path<String>,
) -> Response {
    json(async { batches_api::cancel_batch(backends(&gateway)?, &key.tenant, &id).await }.await)
}

#[utoipa::path(
    get,
    path = "/v1/batches/{id}/results",
    tag = "batches",
    summary = "A batch's results as JSONL",
    params(("id" = String, Path, description = "The batch's id"), ("custom_id" = Option<String>, Query, description = "Only the result with this custom_id")),
    responses((status = 200, description = "One result object per line", content_type = "application/jsonl", body = String, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn batch_results(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(id): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let query = list_query(query)?;
        batches_api::results(
            backends(&gateway)?,
            &key.tenant,
            &id,
            query.custom_id.as_deref(),
        )
        .await
    };
    match result.await {
        Ok(text) => ([(header::CONTENT_TYPE, "application/jsonl")], text).into_response(),
        Err(error) => error.into_response(),
    }
}
