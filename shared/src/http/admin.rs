//! The admin routes: create, list and revoke keys (admin keys only).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::handlers::{AuthorizedKey, body_error};
use crate::clock::now_secs;
use crate::error::{ApiError, ErrorBody};
use crate::keys::edge;
use crate::keys::{KeyRecord, NewKey};
use crate::pipeline::{json_response, parse_json, to_json_bytes};
use crate::state::Gateway;

pub(crate) fn require_admin(key: &KeyRecord) -> Result<(), ApiError> {
    if key.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("This route needs an admin key."))
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedKey {
    key: String,
    #[serde(flatten)]
    record: KeyRecord,
}

#[utoipa::path(
    post,
    path = "/v1/admin/keys",
    tag = "admin",
    summary = "Create a gateway key (admin key); the secret is shown once",
    request_body(content = NewKey, content_type = "application/json"),
    responses((status = 201, description = "The key record and its secret", body = CreatedKey, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), (status = "4XX", description = "Refused: OpenAI's error shape", body = ErrorBody), (status = "5XX", description = "Failed upstream or in the gateway: OpenAI's error shape", body = ErrorBody)),
)]
pub(crate) async fn create_key(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        require_admin(&key)?;
        let new: NewKey = parse_json(&body.map_err(body_error)?)?;
        let (secret, record) =
            edge::provision(gateway.auth.store().as_ref(), gateway.edge.as_ref(), new).await?;
        let body = to_json_bytes(&CreatedKey {
            key: secret,
            record,
        })?;
        Ok::<_, ApiError>(json_response(StatusCode::CREATED, body))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Serialize)]
pub(crate) struct KeyListEntry {
    #[serde(flatten)]
    record: KeyRecord,
    spent_usd_this_month: Option<f64>,
}

#[utoipa::path(
    get,
    path = "/v1/admin/keys",
    tag = "admin",
    summary = "List the keys (admin key)",
    responses((status = 200, description = "`{\"object\": \"list\", \"data\": [key records with spent_usd_this_month]}`", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), (status = "4XX", description = "Refused: OpenAI's error shape", body = ErrorBody), (status = "5XX", description = "Failed upstream or in the gateway: OpenAI's error shape", body = ErrorBody)),
)]
pub(crate) async fn list_keys(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
) -> Response {
    let result = async {
        require_admin(&key)?;
        let records = gateway.auth.store().list().await.map_err(ApiError::from)?;
        let now = now_secs();
        let mut data = Vec::with_capacity(records.len());
        for record in records {
            let spent = gateway.limiter.spent_usd(&record.id, now).await.ok();
            data.push(KeyListEntry {
                record,
                spent_usd_this_month: spent,
            });
        }
        let body = to_json_bytes(&serde_json::json!({"object": "list", "data": data}))?;
        Ok::<_, ApiError>(json_response(StatusCode::OK, body))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(
    delete,
    path = "/v1/admin/keys/{id}",
    tag = "admin",
    summary = "Revoke a key (admin key)",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "`{\"id\", \"revoked\": true}`", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), (status = "4XX", description = "Refused: OpenAI's error shape", body = ErrorBody), (status = "5XX", description = "Failed upstream or in the gateway: OpenAI's error shape", body = ErrorBody)),
)]
pub(crate) async fn revoke_key(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        require_admin(&key)?;
        let revoked = edge::revoke(gateway.auth.store().as_ref(), gateway.edge.as_ref(), &id).await;
        // Forgotten even if the edge cleanup failed: the key itself is revoked by then.
        gateway.auth.invalidate();
        if !revoked? {
            return Err(ApiError::not_found(format!("No key with id `{id}`.")));
        }
        let body = to_json_bytes(&serde_json::json!({"id": id, "revoked": true}))?;
        Ok(json_response(StatusCode::OK, body))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
