//! OpenAI's Files API (`/v1/files`) and Uploads API (`/v1/uploads`) over the batch store and the
//! file bodies. Files belong to the tenant of the key that made them: another tenant's key gets
//! 404. A file posted whole is bounded by the request size the front takes (about 6 MB through
//! API Gateway and Lambda); larger files, up to OpenAI's 200 MB, arrive as upload parts, each its
//! own request, and `complete` joins them by reference (no copy).

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Value, json};

use super::input::check_jsonl;
use super::store::{FileRecord, UploadPart, UploadRecord, UploadStatus};
use super::{BatchBackends, MAX_FILE_BYTES, new_id};
use crate::clock::now_secs;
use crate::error::{ApiError, ErrorKind};
use crate::files::{file_key, part_key};

/// Purposes the gateway takes: batch input only.
pub const PURPOSE_BATCH: &str = "batch";
pub const PURPOSE_BATCH_OUTPUT: &str = "batch_output";
/// An upload must complete within an hour, as OpenAI's.
const UPLOAD_LIFETIME_SECS: u64 = 3600;
/// Parts of one upload, at most (a 200 MB file in parts of at least 64 KiB).
const MAX_PARTS: usize = 4096;
const MAX_FILENAME_LEN: usize = 512;

pub fn file_json(file: &FileRecord) -> Value {
    json!({
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": file.created_at,
        "expires_at": file.expires_at,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": null,
    })
}

fn upload_json(upload: &UploadRecord, file: Option<&FileRecord>) -> Value {
    json!({
        "id": upload.id,
        "object": "upload",
        "bytes": upload.bytes,
        "created_at": upload.created_at,
        "expires_at": upload.expires_at,
        "filename": upload.filename,
        "purpose": upload.purpose,
        "status": upload.status,
        "file": file.map(file_json),
    })
}

fn check_purpose(purpose: &str) -> Result<(), ApiError> {
    if purpose == PURPOSE_BATCH {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Purpose `{purpose}` is not supported: this gateway stores files for `batch` only."
        ))
        .with_param("purpose"))
    }
}

fn check_filename(filename: &str) -> Result<(), ApiError> {
    if filename.is_empty() || filename.len() > MAX_FILENAME_LEN {
        return Err(ApiError::bad_request(format!(
            "The file name must have 1 to {MAX_FILENAME_LEN} characters."
        ))
        .with_param("filename"));
    }
    Ok(())
}

fn file_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("No such File object: {id}")).with_param("file_id")
}

/// `POST /v1/files`: stores a JSONL batch input posted whole.
pub async fn create_file(
    batch: &BatchBackends,
    tenant: &str,
    filename: &str,
    purpose: &str,
    body: Bytes,
) -> Result<Value, ApiError> {
    check_purpose(purpose)?;
    check_filename(filename)?;
    check_jsonl(&body)?;
    let id = new_id("file-");
    let object = file_key(&id);
    let bytes = body.len() as u64;
    batch.bodies.put(&object, body).await?;
    let file = FileRecord {
        id,
        tenant: tenant.to_owned(),
        purpose: purpose.to_owned(),
        filename: filename.to_owned(),
        bytes,
        created_at: now_secs(),
        expires_at: None,
        objects: vec![object],
    };
    batch.store.put_file(&file).await?;
    Ok(file_json(&file))
}

pub async fn get_file(batch: &BatchBackends, tenant: &str, id: &str) -> Result<Value, ApiError> {
    let file = batch
        .store
        .get_file(tenant, id)
        .await?
        .ok_or_else(|| file_not_found(id))?;
    Ok(file_json(&file))
}

/// `GET /v1/files`: newest first, `limit` (1 to 10,000, default 10,000 as OpenAI) after the
/// cursor `after`, optionally one purpose.
pub async fn list_files(
    batch: &BatchBackends,
    tenant: &str,
    after: Option<&str>,
    limit: Option<usize>,
    purpose: Option<&str>,
) -> Result<Value, ApiError> {
    let limit = limit.unwrap_or(10_000);
    if !(1..=10_000).contains(&limit) {
        return Err(
            ApiError::bad_request("`limit` must be between 1 and 10000.").with_param("limit"),
        );
    }
    let mut data = Vec::new();
    let mut cursor = after.map(str::to_owned);
    let mut has_more = false;
    // A purpose filter may skip records: page on until the page is full or the list ends.
    loop {
        let page = batch
            .store
            .list_files(tenant, cursor.as_deref(), limit + 1)
            .await?;
        let ended = page.len() <= limit;
        cursor = page.last().map(|f| f.id.clone());
        for file in page {
            if purpose.is_some_and(|p| p != file.purpose) {
                continue;
            }
            if data.len() == limit {
                has_more = true;
                break;
            }
            data.push(file);
        }
        if has_more || ended || cursor.is_none() {
            break;
        }
    }
    Ok(json!({
        "object": "list",
        "data": data.iter().map(file_json).collect::<Vec<_>>(),
        "first_id": data.first().map(|f| f.id.clone()),
        "last_id": data.last().map(|f| f.id.clone()),
        "has_more": has_more,
    }))
}

/// A file's body: its objects joined.
pub async fn read_body(batch: &BatchBackends, file: &FileRecord) -> Result<Bytes, ApiError> {
    if let [only] = file.objects.as_slice() {
        return batch
            .bodies
            .get(only)
            .await?
            .ok_or_else(|| ApiError::internal(format!("the body of file {} is missing", file.id)));
    }
    let capacity = usize::try_from(file.bytes.min(MAX_FILE_BYTES)).unwrap_or(0);
    let mut body = BytesMut::with_capacity(capacity);
    for object in &file.objects {
        let part =
            batch.bodies.get(object).await?.ok_or_else(|| {
                ApiError::internal(format!("a part of file {} is missing", file.id))
            })?;
        body.extend_from_slice(&part);
    }
    Ok(body.freeze())
}

pub async fn file_content(
    batch: &BatchBackends,
    tenant: &str,
    id: &str,
) -> Result<Bytes, ApiError> {
    let file = batch
        .store
        .get_file(tenant, id)
        .await?
        .ok_or_else(|| file_not_found(id))?;
    read_body(batch, &file).await
}

pub async fn delete_file(batch: &BatchBackends, tenant: &str, id: &str) -> Result<Value, ApiError> {
    let file = batch
        .store
        .get_file(tenant, id)
        .await?
        .ok_or_else(|| file_not_found(id))?;
    if !batch.store.delete_file(tenant, id).await? {
        return Err(file_not_found(id));
    }
    for object in &file.objects {
        if let Err(error) = batch.bodies.delete(object).await {
            tracing::warn!(%error, file = id, "deleting a file body failed; it stays orphaned");
        }
    }
    Ok(json!({"id": id, "object": "file", "deleted": true}))
}

/// The purposes a stored file may have (`PURPOSE_BATCH`; documented only).
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "documents a string field's values; never built")]
pub(crate) enum FilePurpose {
    /// A JSONL input of the Batches API.
    #[schema(rename = "batch")]
    Batch,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUpload {
    #[schema(minimum = 1, maximum = 209_715_200)]
    pub bytes: u64,
    #[schema(min_length = 1, max_length = 128)]
    pub filename: String,
    pub mime_type: String,
    #[schema(value_type = FilePurpose)]
    pub purpose: String,
    #[serde(default)]
    pub expires_after: Option<Value>,
}

/// `POST /v1/uploads`.
pub async fn create_upload(
    batch: &BatchBackends,
    tenant: &str,
    new: NewUpload,
) -> Result<Value, ApiError> {
    check_purpose(&new.purpose)?;
    check_filename(&new.filename)?;
    if new.bytes == 0 || new.bytes > MAX_FILE_BYTES {
        return Err(ApiError::bad_request(format!(
            "`bytes` must be between 1 and {MAX_FILE_BYTES} for a batch file."
        ))
        .with_param("bytes"));
    }
    let now = now_secs();
    let upload = UploadRecord {
        id: new_id("upload_"),
        tenant: tenant.to_owned(),
        filename: new.filename,
        purpose: new.purpose,
        mime_type: new.mime_type,
        bytes: new.bytes,
        created_at: now,
        expires_at: now + UPLOAD_LIFETIME_SECS,
        status: UploadStatus::Pending,
        file_id: None,
    };
    batch.store.put_upload(&upload).await?;
    Ok(upload_json(&upload, None))
}

async fn pending_upload(
    batch: &BatchBackends,
    tenant: &str,
    id: &str,
) -> Result<UploadRecord, ApiError> {
    let upload = batch
        .store
        .get_upload(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("No such Upload: {id}")))?;
    if upload.status != UploadStatus::Pending {
        return Err(ApiError::bad_request(format!(
            "Upload {id} is {}, not pending.",
            serde_json::to_value(upload.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        )));
    }
    if upload.expires_at <= now_secs() {
        return Err(ApiError::bad_request(format!("Upload {id} has expired.")));
    }
    Ok(upload)
}

/// `POST /v1/uploads/{id}/parts`.
pub async fn add_part(
    batch: &BatchBackends,
    tenant: &str,
    upload_id: &str,
    data: Bytes,
) -> Result<Value, ApiError> {
    let upload = pending_upload(batch, tenant, upload_id).await?;
    if data.is_empty() || data.len() as u64 > upload.bytes {
        return Err(ApiError::bad_request(
            "A part must have at least one byte and no more than the upload's `bytes`.",
        )
        .with_param("data"));
    }
    let part = UploadPart {
        id: new_id("part_"),
        upload_id: upload.id.clone(),
        bytes: data.len() as u64,
        created_at: now_secs(),
        object: String::new(),
    };
    let part = UploadPart {
        object: part_key(&upload.id, &part.id),
        ..part
    };
    batch.bodies.put(&part.object, data).await?;
    batch.store.put_upload_part(&part).await?;
    Ok(json!({
        "id": part.id,
        "object": "upload.part",
        "created_at": part.created_at,
        "upload_id": part.upload_id,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CompleteUpload {
    pub part_ids: Vec<String>,
    #[serde(default)]
    pub md5: Option<String>,
}

/// `POST /v1/uploads/{id}/complete`: the parts, in the order given, become a file.
pub async fn complete_upload(
    batch: &BatchBackends,
    tenant: &str,
    upload_id: &str,
    complete: CompleteUpload,
) -> Result<Value, ApiError> {
    let mut upload = pending_upload(batch, tenant, upload_id).await?;
    if complete.part_ids.is_empty() || complete.part_ids.len() > MAX_PARTS {
        return Err(
            ApiError::bad_request(format!("`part_ids` must list 1 to {MAX_PARTS} parts."))
                .with_param("part_ids"),
        );
    }
    let parts = batch.store.upload_parts(&upload.id).await?;
    let mut objects = Vec::with_capacity(complete.part_ids.len());
    let mut total: u64 = 0;
    for id in &complete.part_ids {
        let part = parts.iter().find(|p| &p.id == id).ok_or_else(|| {
            ApiError::bad_request(format!("Part {id} does not belong to upload {upload_id}."))
                .with_param("part_ids")
        })?;
        if objects.contains(&part.object) {
            return Err(
                ApiError::bad_request(format!("Part {id} is listed twice.")).with_param("part_ids")
            );
        }
        total += part.bytes;
        objects.push(part.object.clone());
    }
    if total != upload.bytes {
        return Err(ApiError::bad_request(format!(
            "The parts add up to {total} bytes; the upload was created for {}.",
            upload.bytes
        ))
        .with_param("part_ids"));
    }
    let file = FileRecord {
        id: new_id("file-"),
        tenant: tenant.to_owned(),
        purpose: upload.purpose.clone(),
        filename: upload.filename.clone(),
        bytes: total,
        created_at: now_secs(),
        expires_at: None,
        objects,
    };
    let body = read_body(batch, &file).await?;
    if let Some(expected) = complete.md5.as_deref().filter(|m| !m.is_empty()) {
        use md5::Digest;
        let actual = hex::encode(md5::Md5::digest(&body));
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(ApiError::bad_request(format!(
                "The parts' MD5 is {actual}, not the `md5` given ({expected})."
            ))
            .with_param("md5"));
        }
    }
    check_jsonl(&body)?;
    batch.store.put_file(&file).await?;
    upload.status = UploadStatus::Completed;
    upload.file_id = Some(file.id.clone());
    batch.store.put_upload(&upload).await?;
    Ok(upload_json(&upload, Some(&file)))
}

/// `POST /v1/uploads/{id}/cancel`.
pub async fn cancel_upload(
    batch: &BatchBackends,
    tenant: &str,
    upload_id: &str,
) -> Result<Value, ApiError> {
    let mut upload = pending_upload(batch, tenant, upload_id).await?;
    upload.status = UploadStatus::Cancelled;
    batch.store.put_upload(&upload).await?;
    for part in batch.store.upload_parts(&upload.id).await? {
        if let Err(error) = batch.bodies.delete(&part.object).await {
            tracing::warn!(%error, upload = upload_id, "deleting an upload part failed");
        }
    }
    Ok(upload_json(&upload, None))
}

/// The error for a route whose batch backends are not configured.
pub fn not_configured() -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "Batch jobs are not enabled on this gateway (no batch table, bucket and queue configured).",
    )
}
