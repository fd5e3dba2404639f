//! The admin routes (the `admin` scope, checked by the router): create, list, change, rotate and
//! revoke keys, and read the audit log they write.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::handlers::{AuthorizedKey, body_error};
use super::middleware::RequestId;
use super::openapi::OpenAiErrors;
use crate::clock::{now_millis, now_secs};
use crate::error::ApiError;
use crate::keys::audit::{self, AuditAction, AuditEntry, MAX_AUDIT_LIMIT};
use crate::keys::edge;
use crate::keys::{
    DEFAULT_ROTATION_GRACE_SECS, KeyChange, KeyRecord, NewKey, Scope, rotate_key as rotate,
};
use crate::pipeline::{json_response, parse_json, to_json_bytes};
use crate::state::Gateway;

/// Who asked for an admin action, for its audit entry.
struct Actor {
    key: Arc<KeyRecord>,
    request_id: Option<String>,
}

impl Actor {
    fn new(key: Arc<KeyRecord>, request_id: Option<Extension<RequestId>>) -> Self {
        let request_id =
            request_id.and_then(|Extension(RequestId(id))| id.to_str().ok().map(str::to_owned));
        Self { key, request_id }
    }

    /// Records an action already done (see `audit::record` for why a failed write does not fail
    /// the request).
    async fn audit(
        &self,
        gateway: &Gateway,
        action: AuditAction,
        target: &str,
        changes: Vec<&str>,
    ) {
        let entry = AuditEntry {
            at: now_millis(),
            actor_key_id: self.key.id.clone(),
            actor_tenant: self.key.tenant.clone(),
            action,
            target_key_id: target.to_owned(),
            changes: changes.into_iter().map(str::to_owned).collect(),
            request_id: self.request_id.clone(),
        };
        audit::record(gateway.audit.as_ref(), entry).await;
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
    summary = "Create a gateway key (`admin` scope); the secret is shown once",
    request_body(content = NewKey, content_type = "application/json"),
    responses((status = 201, description = "The key record and its secret", body = CreatedKey, headers(("x-request-id" = String, description = "The request's id, also in the logs")), links(("UpdateKey" = (operation_id = "update_key", parameters(("id" = "$response.body#/id")))), ("RotateKey" = (operation_id = "rotate_key", parameters(("id" = "$response.body#/id")))), ("RevokeKey" = (operation_id = "revoke_key", parameters(("id" = "$response.body#/id")))))), OpenAiErrors),
)]
pub(crate) async fn create_key(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    request_id: Option<Extension<RequestId>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let actor = Actor::new(key, request_id);
    let result = async {
        let new: NewKey = parse_json(&body.map_err(body_error)?)?;
        let fields = new.fields();
        let (secret, record) =
            edge::provision(gateway.auth.store().as_ref(), gateway.edge.as_ref(), new).await?;
        actor
            .audit(&gateway, AuditAction::Create, &record.id, fields)
            .await;
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
    /// The scopes the key holds, after its role's preset.
    effective_scopes: Vec<Scope>,
    spent_usd_this_month: Option<f64>,
}

#[utoipa::path(
    get,
    path = "/v1/admin/keys",
    tag = "admin",
    summary = "List the keys (`admin` scope)",
    responses((status = 200, description = "`{\"object\": \"list\", \"data\": [key records with spent_usd_this_month]}`", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn list_keys(State(gateway): State<Arc<Gateway>>) -> Response {
    let result = async {
        let records = gateway.auth.store().list().await.map_err(ApiError::from)?;
        let now = now_secs();
        let mut data = Vec::with_capacity(records.len());
        for record in records {
            let spent = gateway.limiter.spent_usd(&record.id, now).await.ok();
            data.push(KeyListEntry {
                effective_scopes: record.scopes(),
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
    summary = "Revoke a key (`admin` scope)",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "`{\"id\", \"revoked\": true}`", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn revoke_key(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    request_id: Option<Extension<RequestId>>,
    Path(id): Path<String>,
) -> Response {
    let actor = Actor::new(key, request_id);
    let result = async {
        let revoked = edge::revoke(gateway.auth.store().as_ref(), gateway.edge.as_ref(), &id).await;
        // Forgotten even if the edge cleanup failed: the key itself is revoked by then.
        gateway.auth.invalidate();
        if matches!(
            revoked,
            Ok(true) | Err(edge::ProvisionError::EdgeCleanup { .. })
        ) {
            actor
                .audit(&gateway, AuditAction::Revoke, &id, vec!["disabled"])
                .await;
        }
        if !revoked? {
            return Err(ApiError::not_found(format!("No key with id `{id}`.")));
        }
        let body = to_json_bytes(&serde_json::json!({"id": id, "revoked": true}))?;
        Ok(json_response(StatusCode::OK, body))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateRequest {
    #[serde(default)]
    grace_seconds: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RotatedKey {
    key: String,
    /// Until when (epoch seconds) the previous secret keeps working.
    previous_key_valid_until: u64,
    #[serde(flatten)]
    record: KeyRecord,
}

#[utoipa::path(
    post,
    path = "/v1/admin/keys/{id}/rotate",
    tag = "admin",
    summary = "A new secret for the same key (`admin` scope); the old one works for the grace period",
    params(("id" = String, Path, description = "The key's id")),
    request_body(content = RotateRequest, content_type = "application/json"),
    responses((status = 200, description = "The key record, its new secret and until when the old one works", body = RotatedKey, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn rotate_key(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    request_id: Option<Extension<RequestId>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let actor = Actor::new(key, request_id);
    let result = async {
        let body = body.map_err(body_error)?;
        let request: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
            RotateRequest::default()
        } else {
            parse_json(&body)?
        };
        let grace = request.grace_seconds.unwrap_or(DEFAULT_ROTATION_GRACE_SECS);
        let store = gateway.auth.store();
        match store.get_by_id(&id).await.map_err(ApiError::from)? {
            None => return Err(ApiError::not_found(format!("No key with id `{id}`."))),
            Some(record) if record.disabled => {
                return Err(ApiError::bad_request(format!(
                    "Key `{id}` is revoked; create a new key instead."
                )));
            }
            Some(_) => {}
        }
        let now = now_secs();
        let Some((secret, record)) = rotate(store.as_ref(), &id, grace, now).await? else {
            return Err(ApiError::not_found(format!("No key with id `{id}`.")));
        };
        gateway.auth.invalidate();
        actor
            .audit(&gateway, AuditAction::Rotate, &id, vec!["secret", "prefix"])
            .await;
        let body = to_json_bytes(&RotatedKey {
            key: secret,
            previous_key_valid_until: now.saturating_add(grace),
            record,
        })?;
        Ok(json_response(StatusCode::OK, body))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(
    patch,
    path = "/v1/admin/keys/{id}",
    tag = "admin",
    summary = "Change a key's name, models, scopes, role, limits, budget, expiry or guard (`admin` scope)",
    params(("id" = String, Path, description = "The key's id")),
    request_body(content = KeyChange, content_type = "application/json"),
    responses((status = 200, description = "The changed key record with its effective scopes", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn update_key(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    request_id: Option<Extension<RequestId>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let actor = Actor::new(key, request_id);
    let result = async {
        let change: KeyChange = parse_json(&body.map_err(body_error)?)?;
        let change = change.validate(now_secs())?;
        let fields = change.fields();
        if fields.is_empty() {
            return Err(ApiError::bad_request("The request changes nothing."));
        }
        let updated = gateway
            .auth
            .store()
            .update(&id, &|record| change.apply(record))
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found(format!("No key with id `{id}`.")))?;
        gateway.auth.invalidate();
        actor
            .audit(&gateway, AuditAction::Update, &id, fields)
            .await;
        let body = to_json_bytes(&KeyListEntry {
            effective_scopes: updated.scopes(),
            record: updated,
            spent_usd_this_month: None,
        })?;
        Ok(json_response(StatusCode::OK, body))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/admin/audit",
    tag = "admin",
    summary = "Admin actions, newest first: who created, revoked, rotated or changed which key (`admin` scope)",
    params(AuditQuery),
    responses((status = 200, description = "`{\"object\": \"list\", \"data\": [audit entries]}`", body = Object, headers(("x-request-id" = String, description = "The request's id, also in the logs"))), OpenAiErrors),
)]
pub(crate) async fn list_audit(
    State(gateway): State<Arc<Gateway>>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let Query(query) =
            query.map_err(|e| ApiError::bad_request(e.body_text()).with_param("limit"))?;
        let limit = query.limit.unwrap_or(100);
        if limit == 0 || limit > MAX_AUDIT_LIMIT {
            return Err(ApiError::bad_request(format!(
                "`limit` must be between 1 and {MAX_AUDIT_LIMIT}"
            ))
            .with_param("limit"));
        }
        let entries = gateway
            .audit
            .newest(limit, now_secs())
            .await
            .map_err(ApiError::from)?;
        let body = to_json_bytes(&serde_json::json!({"object": "list", "data": entries}))?;
        Ok(json_response(StatusCode::OK, body))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
