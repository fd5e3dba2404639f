//! The `ingest` function's events, told apart by shape:
//!
//! - EventBridge "Object Created" from S3 (what the stack routes for uploads under the ingest
//!   prefix): `detail.bucket.name`, `detail.object.key`;
//! - a classic S3 notification (`Records[].s3`), for buckets notifying the function directly;
//! - SQS records of the ingest queue (queued ingests), answered with `batchItemFailures`.
//!
//! Uploads are ingested from `{prefix}{tenant}/{collection}/{document id}` (prefix
//! `GATEWAY_INGEST_PREFIX`, default `ingest/`), `.txt` as text and `.md` / `.markdown` as
//! markdown; the document id is the path under the collection, extension included. Other keys
//! are skipped with a log line. The ingest is billed to the key that created the collection.

use std::sync::Arc;

use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};

use crate::error::ErrorKind;
use crate::files::FileBodies;
use crate::files::s3::S3Bodies;
use crate::ingest::api::{DocumentInput, MAX_DOCUMENT_BYTES};
use crate::pipeline::ingest::{JobOutcome, ingest_upload, process_job};
use crate::queue::Received;
use crate::state::Gateway;

/// What the ingest function works with: the gateway and an S3 client for uploaded objects.
pub struct IngestHandler {
    pub gateway: Arc<Gateway>,
    pub s3: aws_sdk_s3::Client,
}

/// An object an event names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub bucket: String,
    pub key: String,
    /// The size the event announced, when it did.
    pub size: Option<u64>,
}

/// What became of one upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    Ingested { document_id: String, status: String },
    Skipped(String),
}

/// Where an upload goes: (tenant, collection, document id, markdown?), or why it is skipped.
pub fn route_upload(prefix: &str, key: &str) -> Result<(String, String, String, bool), String> {
    let Some(rest) = key.strip_prefix(prefix) else {
        return Err(format!("not under the ingest prefix `{prefix}`"));
    };
    let mut parts = rest.splitn(3, '/');
    let (Some(tenant), Some(collection), Some(id)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("not of the form {prefix}{tenant}/{collection}/{document}".into());
    };
    if tenant.is_empty() || collection.is_empty() || id.is_empty() {
        return Err("not of the form {prefix}{tenant}/{collection}/{document}".into());
    }
    let lower = id.to_ascii_lowercase();
    let markdown = if lower.ends_with(".md") || lower.ends_with(".markdown") {
        true
    } else if lower.ends_with(".txt") {
        false
    } else {
        return Err("only .txt, .md and .markdown files are ingested".into());
    };
    Ok((
        tenant.to_owned(),
        collection.to_owned(),
        id.to_owned(),
        markdown,
    ))
}

/// Object keys in S3 events are URL-encoded, spaces as `+`.
fn decode_key(key: &str) -> String {
    percent_decode_str(&key.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn uploads_of(event: &Value) -> Result<Option<Vec<Upload>>, String> {
    if event.get("detail-type").and_then(Value::as_str) == Some("Object Created") {
        let detail = event.get("detail").cloned().unwrap_or_default();
        let bucket = detail
            .pointer("/bucket/name")
            .and_then(Value::as_str)
            .ok_or("an Object Created event without detail.bucket.name")?;
        let key = detail
            .pointer("/object/key")
            .and_then(Value::as_str)
            .ok_or("an Object Created event without detail.object.key")?;
        return Ok(Some(vec![Upload {
            bucket: bucket.to_owned(),
            key: decode_key(key),
            size: detail.pointer("/object/size").and_then(Value::as_u64),
        }]));
    }
    let is_s3 = event
        .pointer("/Records/0/eventSource")
        .and_then(Value::as_str)
        == Some("aws:s3");
    if !is_s3 {
        return Ok(None);
    }
    let event: S3Event =
        serde_json::from_value(event.clone()).map_err(|e| format!("not an S3 event: {e}"))?;
    let uploads = event
        .records
        .into_iter()
        .filter(|record| {
            record
                .event_name
                .as_deref()
                .is_none_or(|name| name.starts_with("ObjectCreated"))
        })
        .filter_map(|record| {
            let bucket = record.s3.bucket.name?;
            let key = match record.s3.object.url_decoded_key {
                Some(decoded) if !decoded.is_empty() => decoded,
                _ => decode_key(&record.s3.object.key?),
            };
            Some(Upload {
                bucket,
                key,
                size: record.s3.object.size.and_then(|s| u64::try_from(s).ok()),
            })
        })
        .collect();
    Ok(Some(uploads))
}

impl IngestHandler {
    /// Ingests one uploaded object. A client error (no such collection, a bad id, an object too
    /// large) skips it, logged; a failure that may pass (storage, the embedding provider) is an
    /// error, so the event is retried.
    pub async fn ingest_object(
        &self,
        upload: &Upload,
        deadline: tokio::time::Instant,
    ) -> Result<UploadOutcome, String> {
        let prefix = self
            .gateway
            .ingest
            .as_ref()
            .map_or("ingest/", |b| b.settings.upload_prefix.as_str());
        let (tenant, collection, id, markdown) = match route_upload(prefix, &upload.key) {
            Ok(route) => route,
            Err(reason) => {
                tracing::info!(key = upload.key, reason, "upload skipped");
                return Ok(UploadOutcome::Skipped(reason));
            }
        };
        if upload
            .size
            .is_some_and(|size| size > MAX_DOCUMENT_BYTES as u64)
        {
            let reason = format!("larger than the {MAX_DOCUMENT_BYTES} bytes a document may have");
            tracing::warn!(key = upload.key, reason, "upload skipped");
            return Ok(UploadOutcome::Skipped(reason));
        }
        let bodies = S3Bodies::new(self.s3.clone(), upload.bucket.clone());
        let Some(body) = bodies
            .get(&upload.key)
            .await
            .map_err(|e| format!("reading {}: {e}", upload.key))?
        else {
            let reason = "the object is gone".to_owned();
            tracing::info!(key = upload.key, reason, "upload skipped");
            return Ok(UploadOutcome::Skipped(reason));
        };
        let text = match String::from_utf8(body.to_vec()) {
            Ok(text) if text.len() <= MAX_DOCUMENT_BYTES => text,
            Ok(_) => {
                let reason =
                    format!("larger than the {MAX_DOCUMENT_BYTES} bytes a document may have");
                tracing::warn!(key = upload.key, reason, "upload skipped");
                return Ok(UploadOutcome::Skipped(reason));
            }
            Err(_) => {
                let reason = "not UTF-8 text".to_owned();
                tracing::warn!(key = upload.key, reason, "upload skipped");
                return Ok(UploadOutcome::Skipped(reason));
            }
        };
        let document = DocumentInput {
            id: id.clone(),
            text: (!markdown).then(|| text.clone()),
            markdown: markdown.then_some(text),
            metadata: Map::new(),
        };
        match ingest_upload(&self.gateway, &tenant, &collection, document, deadline).await {
            Ok(report) => {
                let status = serde_json::to_value(report.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                tracing::info!(
                    key = upload.key,
                    tenant,
                    collection,
                    document = id,
                    status,
                    chunks = report.chunks,
                    embedding_calls = report.embedding_calls,
                    "upload ingested"
                );
                Ok(UploadOutcome::Ingested {
                    document_id: id,
                    status,
                })
            }
            Err(error)
                if matches!(
                    error.kind,
                    ErrorKind::BadRequest
                        | ErrorKind::NotFound
                        | ErrorKind::Forbidden
                        | ErrorKind::PayloadTooLarge
                ) =>
            {
                tracing::warn!(key = upload.key, error = error.message, "upload skipped");
                Ok(UploadOutcome::Skipped(error.message))
            }
            Err(error) => Err(format!("ingesting {}: {}", upload.key, error.message)),
        }
    }
}

/// Handles one invocation (see the module doc for the shapes taken).
pub async fn handle_event(
    handler: &IngestHandler,
    event: Value,
    deadline: tokio::time::Instant,
) -> Result<Value, String> {
    if let Some(uploads) = uploads_of(&event)? {
        let mut ingested = Vec::new();
        let mut skipped = Vec::new();
        for upload in &uploads {
            match handler.ingest_object(upload, deadline).await? {
                UploadOutcome::Ingested {
                    document_id,
                    status,
                } => ingested.push(json!({"document_id": document_id, "status": status})),
                UploadOutcome::Skipped(reason) => {
                    skipped.push(json!({"key": upload.key, "reason": reason}));
                }
            }
        }
        return Ok(json!({"ingested": ingested, "skipped": skipped}));
    }
    if event.get("Records").is_some() {
        let event: SqsEvent =
            serde_json::from_value(event).map_err(|e| format!("not an SQS event: {e}"))?;
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let message = Received {
                handle: id.clone(),
                receive_count: record
                    .attributes
                    .get("ApproximateReceiveCount")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
                body: record.body.unwrap_or_default(),
            };
            if let JobOutcome::Retry(reason) =
                process_job(&handler.gateway, &message, deadline).await
            {
                tracing::warn!(message = id, reason, "ingest job left for redelivery");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
        }
        return serde_json::to_value(response).map_err(|e| e.to_string());
    }
    Err(
        "the ingest function takes S3 Object Created events (EventBridge or S3 notifications) \
         and SQS records of the ingest queue"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_route_by_prefix_tenant_collection_and_extension() {
        assert_eq!(
            route_upload("ingest/", "ingest/acme/handbook/guides/vpn.md"),
            Ok((
                "acme".into(),
                "handbook".into(),
                "guides/vpn.md".into(),
                true
            ))
        );
        assert_eq!(
            route_upload("ingest/", "ingest/acme/handbook/notes.txt").map(|r| r.3),
            Ok(false)
        );
        for skipped in [
            "other/acme/handbook/a.txt",
            "ingest/acme/handbook/image.png",
            "ingest/acme/a.txt",
            "ingest/acme//a.txt",
        ] {
            assert!(route_upload("ingest/", skipped).is_err(), "{skipped}");
        }
        assert_eq!(
            decode_key("ingest/a/b/Happy+Face%21.txt"),
            "ingest/a/b/Happy Face!.txt"
        );
    }

    #[test]
    fn both_s3_event_shapes_name_their_object() {
        let bridge = json!({
            "version": "0", "detail-type": "Object Created", "source": "aws.s3",
            "detail": {"bucket": {"name": "stack-bucket"},
                       "object": {"key": "ingest/t/c/a.md", "size": 12}}
        });
        assert_eq!(
            uploads_of(&bridge).unwrap().unwrap(),
            [Upload {
                bucket: "stack-bucket".into(),
                key: "ingest/t/c/a.md".into(),
                size: Some(12)
            }]
        );
        let scheduled = json!({"detail-type": "Scheduled Event", "detail": {}});
        assert_eq!(uploads_of(&scheduled).unwrap(), None);
        let sqs = json!({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]});
        assert_eq!(uploads_of(&sqs).unwrap(), None);
    }
}
