//! The collections API's requests, their bounds and validation, and the objects it answers
//! with (OpenAI-style: an `object` type, lists as `{"object": "list", "data": [...]}`).
//!
//! Collection names and document ids end up in vector keys and object keys, so both are held to
//! a small character set here, once.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::ingest::chunking::ChunkSettings;
use crate::ingest::store::{CollectionRecord, DocumentFormat, DocumentRecord, IngestJob};

pub const MAX_NAME_BYTES: usize = 64;
pub const MAX_DOCUMENT_ID_BYTES: usize = 256;
/// Documents one `POST .../documents` may carry.
pub const MAX_DOCUMENTS_PER_CALL: usize = 100;
/// The largest document text (an upload to the bucket is held to it too).
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// Metadata travels with every chunk (S3 Vectors takes 2 KB of filterable metadata per vector).
pub const MAX_METADATA_BYTES: usize = 1024;
pub const MAX_METADATA_KEYS: usize = 16;
pub const MAX_QUERY_BYTES: usize = 8 * 1024;
/// `top_k` when the request names none.
pub const DEFAULT_TOP_K: usize = 4;
/// The metadata field every chunk carries with its document's id (filterable; reserved).
pub const DOCUMENT_ID_FIELD: &str = "document_id";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCollection {
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub name: String,
    #[schema(min_length = 1)]
    pub embedding_model: String,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub dimensions: Option<u32>,
    #[serde(default)]
    pub chunking: Option<ChunkSettings>,
    #[schema(value_type = Option<Object>)]
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DocumentInput {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub markdown: Option<String>,
    #[schema(value_type = Object)]
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

impl DocumentInput {
    /// The text and its format (validated: exactly one is set).
    pub fn content(&self) -> (&str, DocumentFormat) {
        match (&self.text, &self.markdown) {
            (_, Some(markdown)) => (markdown, DocumentFormat::Markdown),
            (Some(text), None) => (text, DocumentFormat::Text),
            (None, None) => ("", DocumentFormat::Text),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDocuments {
    pub documents: Vec<DocumentInput>,
    /// Go through the queue whatever the size (answered 202 with the job).
    #[serde(default, rename = "async")]
    pub queued: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Not blank; at most 8 KiB (2048 characters always fit).
    #[schema(pattern = "\\S", max_length = 2048)]
    pub query: String,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub filter: Option<Value>,
}

/// A collection name: 1 to 64 of `[a-z0-9_-]`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid collection name `{}`: use 1 to {MAX_NAME_BYTES} lowercase letters, digits, \
             `_` or `-`, starting with a letter or digit.",
            name.escape_debug()
        ))
        .with_param("name"))
    }
}

/// A document id: 1 to 256 bytes of `[A-Za-z0-9._-]` segments joined by `/` (a path under the
/// collection), no segment empty, `.` or `..`.
pub fn validate_document_id(id: &str) -> Result<(), ApiError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_DOCUMENT_ID_BYTES
        && id.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        });
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid document id `{}`: use 1 to {MAX_DOCUMENT_ID_BYTES} bytes of letters, \
             digits, `.`, `_`, `-`, in segments joined by `/`.",
            id.escape_debug()
        ))
        .with_param("id"))
    }
}

/// Metadata a chunk can carry and a filter can match: strings, numbers, booleans, and arrays of
/// strings, under at most 16 keys of `[A-Za-z0-9_]`, 1 KiB as JSON.
pub fn validate_metadata(metadata: &Map<String, Value>, param: &str) -> Result<(), ApiError> {
    let bad = |message: String| Err(ApiError::bad_request(message).with_param(param));
    if metadata.len() > MAX_METADATA_KEYS {
        return bad(format!(
            "`{param}` has {} keys; at most {MAX_METADATA_KEYS} are allowed.",
            metadata.len()
        ));
    }
    for (name, value) in metadata {
        let name_ok = !name.is_empty()
            && name.len() <= MAX_NAME_BYTES
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return bad(format!(
                "`{param}` key `{}` is not 1 to {MAX_NAME_BYTES} letters, digits or `_`.",
                name.escape_debug()
            ));
        }
        if name == DOCUMENT_ID_FIELD {
            return bad(format!(
                "`{param}` may not set `{DOCUMENT_ID_FIELD}`: the gateway sets it."
            ));
        }
        let value_ok = match value {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => true,
            Value::Array(items) => items.iter().all(Value::is_string),
            Value::Null | Value::Object(_) => false,
        };
        if !value_ok {
            return bad(format!(
                "`{param}.{name}` must be a string, number, boolean or array of strings."
            ));
        }
    }
    let bytes = serde_json::to_string(metadata).map_or(usize::MAX, |json| json.len());
    if bytes > MAX_METADATA_BYTES {
        return bad(format!(
            "`{param}` takes {bytes} bytes as JSON; at most {MAX_METADATA_BYTES} are allowed."
        ));
    }
    Ok(())
}

/// Checks a batch of documents: count, ids (unique), one of `text` / `markdown`, size, metadata.
pub fn validate_documents(documents: &[DocumentInput]) -> Result<(), ApiError> {
    if documents.is_empty() {
        return Err(ApiError::bad_request("`documents` is empty.").with_param("documents"));
    }
    if documents.len() > MAX_DOCUMENTS_PER_CALL {
        return Err(ApiError::bad_request(format!(
            "`documents` has {} entries; at most {MAX_DOCUMENTS_PER_CALL} are allowed per call.",
            documents.len()
        ))
        .with_param("documents"));
    }
    let mut seen = HashSet::with_capacity(documents.len());
    for document in documents {
        validate_document_id(&document.id)?;
        if !seen.insert(document.id.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Document `{}` appears twice in `documents`.",
                document.id
            ))
            .with_param("documents"));
        }
        let text = match (&document.text, &document.markdown) {
            (Some(text), None) | (None, Some(text)) => text,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "Document `{}` needs exactly one of `text` and `markdown`.",
                    document.id
                ))
                .with_param("documents"));
            }
        };
        if text.trim().is_empty() {
            return Err(
                ApiError::bad_request(format!("Document `{}` has no text.", document.id))
                    .with_param("documents"),
            );
        }
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(ApiError::bad_request(format!(
                "Document `{}` has {} bytes; at most {MAX_DOCUMENT_BYTES} are allowed.",
                document.id,
                text.len()
            ))
            .with_param("documents"));
        }
        validate_metadata(&document.metadata, "metadata")?;
    }
    Ok(())
}

pub fn collection_object(collection: &CollectionRecord) -> Value {
    json!({
        "object": "collection",
        "id": collection.name,
        "name": collection.name,
        "embedding_model": collection.embedding_model,
        "dimensions": collection.dimensions,
        "chunking": collection.chunking,
        "metadata": collection.metadata,
        "created_at": collection.created_at,
        "version": collection.version,
        "document_count": collection.document_count,
        "chunk_count": collection.chunk_count,
    })
}

pub fn document_object(collection: &str, document: &DocumentRecord) -> Value {
    json!({
        "object": "collection.document",
        "id": document.id,
        "collection": collection,
        "format": document.format,
        "content_sha256": document.content_sha256,
        "chunk_ids": document.chunk_ids,
        "metadata": document.metadata,
        "bytes": document.bytes,
        "updated_at": document.updated_at,
    })
}

pub fn job_object(job: &IngestJob) -> Value {
    json!({
        "object": "collection.ingest_job",
        "id": job.id,
        "collection": job.collection,
        "status": job.status,
        "documents": job.documents,
        "counts": job.counts,
        "error": job.error,
        "created_at": job.created_at,
        "completed_at": job.completed_at,
    })
}

pub fn list(data: Vec<Value>) -> Value {
    json!({"object": "list", "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_that_reach_keys_and_paths_are_held_to_a_small_charset() {
        assert!(validate_name("handbook-2024_v1").is_ok());
        for bad in ["", "Handbook", "-lead", "a/b", "a#b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_document_id("guides/setup.md").is_ok());
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "a#1",
            "tail/",
            &"x".repeat(257),
        ] {
            assert!(validate_document_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_is_bounded_and_flat() {
        let ok = json!({"team": "infra", "year": 2024, "tags": ["a", "b"], "public": true});
        assert!(validate_metadata(ok.as_object().unwrap(), "metadata").is_ok());
        for bad in [
            json!({"nested": {"a": 1}}),
            json!({"document_id": "x"}),
            json!({"bad key": "x"}),
            json!({"long": "x".repeat(2000)}),
            json!({"mixed": ["a", 1]}),
        ] {
            assert!(
                validate_metadata(bad.as_object().unwrap(), "metadata").is_err(),
                "{bad}"
            );
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;
        use crate::api::parse_properties::{any_body, any_json, assert_client_error};
        use crate::pipeline::parse_json;

        fn add_documents(body: &[u8]) -> Result<AddDocuments, ApiError> {
            let request: AddDocuments = parse_json(body)?;
            validate_documents(&request.documents)?;
            Ok(request)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn document_bodies_parse_or_get_a_4xx(
                body in any_body(),
                documents in prop::collection::vec(any_json(), 0..4),
            ) {
                assert_client_error(add_documents(&body))?;
                let body = json!({"documents": documents});
                assert_client_error(add_documents(&serde_json::to_vec(&body).unwrap_or_default()))?;
                assert_client_error(parse_json::<CreateCollection>(&serde_json::to_vec(&documents).unwrap_or_default()))?;
                assert_client_error(parse_json::<QueryRequest>(&serde_json::to_vec(&documents).unwrap_or_default()))?;
            }
        }
    }
}
