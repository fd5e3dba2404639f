//! OpenAI's Batches API (`/v1/batches`): create (records the batch and enqueues one `expand`
//! message, never the lines themselves: Lambda freezes when the response ends), read, list
//! (newest first, cursor `after`), cancel, and the gateway's own `results` (the records so far,
//! for batches and for jobs enqueued straight to the queue).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::files_api::PURPOSE_BATCH;
use super::input::ENDPOINTS;
use super::messages::{MESSAGE_VERSION, Message};
use super::store::{BatchRecord, BatchStatus, Counts};
use super::{BatchBackends, new_id};
use crate::clock::now_secs;
use crate::error::{ApiError, ErrorKind};
use crate::keys::KeyRecord;

/// The one completion window OpenAI offers.
pub const COMPLETION_WINDOW: &str = "24h";
const WINDOW_SECS: u64 = 24 * 3600;
const MAX_METADATA_PAIRS: usize = 16;

pub fn batch_json(batch: &BatchRecord, counts: Counts) -> Value {
    let errors = (!batch.errors.is_empty()).then(|| {
        json!({
            "object": "list",
            "data": batch.errors,
        })
    });
    let total = if batch.direct {
        counts.done()
    } else {
        batch.total
    };
    json!({
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": batch.created_at,
        "in_progress_at": batch.in_progress_at,
        "expires_at": batch.expires_at,
        "finalizing_at": batch.finalizing_at,
        "completed_at": batch.completed_at,
        "failed_at": batch.failed_at,
        "expired_at": batch.expired_at,
        "cancelling_at": batch.cancelling_at,
        "cancelled_at": batch.cancelled_at,
        "request_counts": {
            "total": total,
            "completed": counts.completed,
            "failed": counts.failed,
        },
        "metadata": batch.metadata,
    })
}

/// The `endpoint`s a batch can run (`input::ENDPOINTS`; documented only).
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "documents a string field's values; never built")]
pub(crate) enum BatchEndpoint {
    #[schema(rename = "/v1/chat/completions")]
    ChatCompletions,
    #[schema(rename = "/v1/embeddings")]
    Embeddings,
}

/// The only `completion_window` a batch takes (`COMPLETION_WINDOW`; documented
/// only).
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "documents a string field's values; never built")]
pub(crate) enum CompletionWindow {
    #[schema(rename = "24h")]
    Day,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBatch {
    pub input_file_id: String,
    #[schema(value_type = BatchEndpoint)]
    pub endpoint: String,
    #[schema(value_type = CompletionWindow)]
    pub completion_window: String,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub output_expires_after: Option<Value>,
}

fn batch_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("No such batch: {id}")).with_param("batch_id")
}

/// `POST /v1/batches`.
pub async fn create_batch(
    batch: &BatchBackends,
    key: &KeyRecord,
    new: NewBatch,
) -> Result<Value, ApiError> {
    if !ENDPOINTS.contains(&new.endpoint.as_str()) {
        return Err(ApiError::bad_request(format!(
            "Endpoint `{}` is not supported for batches; use one of {}.",
            new.endpoint,
            ENDPOINTS.join(", ")
        ))
        .with_param("endpoint"));
    }
    if new.completion_window != COMPLETION_WINDOW {
        return Err(ApiError::bad_request(format!(
            "`completion_window` must be `{COMPLETION_WINDOW}`."
        ))
        .with_param("completion_window"));
    }
    if let Some(metadata) = &new.metadata
        && (metadata.len() > MAX_METADATA_PAIRS
            || metadata.iter().any(|(k, v)| k.len() > 64 || v.len() > 512))
    {
        return Err(ApiError::bad_request(
            "`metadata` takes at most 16 pairs, keys of up to 64 and values of up to 512 characters.",
        )
        .with_param("metadata"));
    }
    let file = batch
        .store
        .get_file(&key.tenant, &new.input_file_id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("No such File object: {}", new.input_file_id))
                .with_param("input_file_id")
        })?;
    if file.purpose != PURPOSE_BATCH {
        return Err(ApiError::bad_request(format!(
            "File {} has purpose `{}`; a batch input needs purpose `batch`.",
            file.id, file.purpose
        ))
        .with_param("input_file_id"));
    }
    let now = now_secs();
    let record = BatchRecord {
        id: new_id("batch_"),
        tenant: key.tenant.clone(),
        key_id: key.id.clone(),
        endpoint: new.endpoint,
        input_file_id: Some(file.id),
        completion_window: new.completion_window,
        status: BatchStatus::Validating,
        created_at: now,
        expires_at: now + WINDOW_SECS,
        in_progress_at: None,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        output_file_id: None,
        error_file_id: None,
        errors: Vec::new(),
        metadata: new.metadata,
        total: 0,
        expanded: 0,
        direct: false,
        version: 0,
    };
    batch.store.create_batch(&record).await?;
    let expand = Message::Expand {
        version: MESSAGE_VERSION,
        tenant: record.tenant.clone(),
        batch_id: record.id.clone(),
    };
    if let Err(error) = batch.queue.send(&[expand.to_json()], 0).await {
        // Nothing will ever expand it: fail it now rather than leave it validating.
        let mut failed = record.clone();
        failed.status = BatchStatus::Failed;
        failed.failed_at = Some(now_secs());
        failed.version = record.version + 1;
        let _ = batch.store.update_batch(&failed).await;
        return Err(ApiError::unavailable(
            "The batch queue is unavailable; the batch was not started. Try again shortly.",
        )
        .with_cause(error));
    }
    Ok(batch_json(&record, Counts::default()))
}

pub async fn get_batch(batch: &BatchBackends, tenant: &str, id: &str) -> Result<Value, ApiError> {
    let (record, counts) = batch
        .store
        .get_batch(tenant, id)
        .await?
        .ok_or_else(|| batch_not_found(id))?;
    Ok(batch_json(&record, counts))
}

/// `GET /v1/batches`: newest first, `limit` 1 to 100 (default 20), after the cursor `after`.
pub async fn list_batches(
    batch: &BatchBackends,
    tenant: &str,
    after: Option<&str>,
    limit: Option<usize>,
) -> Result<Value, ApiError> {
    let limit = limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 100.").with_param("limit"));
    }
    let mut page = batch.store.list_batches(tenant, after, limit + 1).await?;
    let has_more = page.len() > limit;
    page.truncate(limit);
    Ok(json!({
        "object": "list",
        "data": page.iter().map(|(b, c)| batch_json(b, *c)).collect::<Vec<_>>(),
        "first_id": page.first().map(|(b, _)| b.id.clone()),
        "last_id": page.last().map(|(b, _)| b.id.clone()),
        "has_more": has_more,
    }))
}

/// `POST /v1/batches/{id}/cancel`: the batch becomes `cancelling`; items not yet run are
/// recorded as cancelled, and it ends `cancelled` with the results it has.
pub async fn cancel_batch(
    batch: &BatchBackends,
    tenant: &str,
    id: &str,
) -> Result<Value, ApiError> {
    for _ in 0..8 {
        let (mut record, counts) = batch
            .store
            .get_batch(tenant, id)
            .await?
            .ok_or_else(|| batch_not_found(id))?;
        match record.status {
            BatchStatus::Validating | BatchStatus::InProgress => {}
            BatchStatus::Cancelling | BatchStatus::Cancelled => {
                return Ok(batch_json(&record, counts));
            }
            other => {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!(
                        "Cannot cancel a batch with status `{}`.",
                        serde_json::to_value(other)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        record.status = BatchStatus::Cancelling;
        record.cancelling_at = Some(now_secs());
        record.version += 1;
        if batch.store.update_batch(&record).await? {
            return Ok(batch_json(&record, counts));
        }
    }
    Err(ApiError::unavailable(
        "The batch is changing too often to cancel right now; try again.",
    ))
}

/// `GET /v1/batches/{id}/results`: the JSONL records written so far (output and error records
/// alike), in input order, or the one of `custom_id`.
pub async fn results(
    batch: &BatchBackends,
    tenant: &str,
    id: &str,
    custom_id: Option<&str>,
) -> Result<String, ApiError> {
    batch
        .store
        .get_batch(tenant, id)
        .await?
        .ok_or_else(|| batch_not_found(id))?;
    let mut results = match custom_id {
        Some(custom_id) => batch
            .store
            .get_result(id, custom_id)
            .await?
            .into_iter()
            .collect(),
        None => batch.store.results(id).await?,
    };
    results.sort_by(|a, b| {
        a.line
            .cmp(&b.line)
            .then_with(|| a.custom_id.cmp(&b.custom_id))
    });
    let mut text = String::new();
    for result in results {
        text.push_str(&result.record);
        text.push('\n');
    }
    Ok(text)
}
