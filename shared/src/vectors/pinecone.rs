//! One Pinecone index over its data-plane HTTP API (no vendor SDK): a gateway namespace is a
//! Pinecone namespace (the namespace digest), the chunk text rides in the metadata under `text`,
//! and filters are sent as they are written (Pinecone's filter language is the one
//! [`MetadataFilter`] parses). Pinecone serverless cannot delete by metadata filter: documents
//! are deleted by the chunk ids the gateway records for them, in batches of Pinecone's limit.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{
    MAX_TOP_K, MetadataFilter, Namespace, VectorHit, VectorRecord, VectorStore, prepared,
    query_vector,
};
use crate::error::StoreError;

/// Pinecone's cap on ids per delete and vectors per upsert.
const MAX_IDS_PER_REQUEST: usize = 1000;
/// Vectors per upsert: Pinecone also caps a request at 2 MB, which 100 vectors of 4,096
/// dimensions and their metadata stay under.
const MAX_VECTORS_PER_UPSERT: usize = 100;
/// Largest response read: `MAX_TOP_K` matches with their metadata and text.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
const API_VERSION: &str = "2025-01";
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct PineconeVectorStore {
    http: reqwest::Client,
    /// The index's host, `https://<index>-<project>.svc.<region>.pinecone.io`.
    host: String,
    api_key: String,
    dimensions: u32,
    /// What errors name: the collection's backend, never the host.
    label: String,
}

impl PineconeVectorStore {
    pub fn new(host: String, api_key: String, dimensions: u32, label: String) -> Self {
        Self {
            http: crate::tls::http_client(),
            host: host.trim_end_matches('/').to_owned(),
            api_key,
            dimensions,
            label,
        }
    }

    fn failed(&self, what: &str) -> StoreError {
        StoreError::Backend(format!("{} (Pinecone): {what}", self.label))
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, StoreError> {
        let request = self
            .http
            .post(format!("{}{path}", self.host))
            .header("Api-Key", &self.api_key)
            .header("X-Pinecone-API-Version", API_VERSION)
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(TIMEOUT);
        let mut response = request
            .send()
            .await
            .map_err(|e| self.failed(&format!("request failed ({})", kind(&e))))?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.failed(&format!("reading the answer failed ({})", kind(&e))))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(self.failed("answer larger than expected"));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status == reqwest::StatusCode::BAD_REQUEST {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            return Err(StoreError::Invalid(format!(
                "{} (Pinecone) refused the request: {message}",
                self.label
            )));
        }
        if !status.is_success() {
            return Err(self.failed(&format!("answered HTTP {}", status.as_u16())));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|_| self.failed("answer is not JSON"))
    }
}

/// What went wrong with a request, without its URL.
fn kind(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "transport error"
    }
}

#[async_trait::async_trait]
impl VectorStore for PineconeVectorStore {
    fn fixed_dimensions(&self) -> Option<u32> {
        Some(self.dimensions)
    }

    async fn put(
        &self,
        namespace: &Namespace,
        records: Vec<VectorRecord>,
    ) -> Result<(), StoreError> {
        let records = prepared(records, Some(self.dimensions as usize))?;
        for batch in records.chunks(MAX_VECTORS_PER_UPSERT) {
            let vectors: Vec<Value> = batch
                .iter()
                .map(|record| {
                    let mut metadata = record.metadata.clone();
                    metadata.insert("text".into(), Value::String(record.text.clone()));
                    json!({"id": record.key, "values": record.vector, "metadata": metadata})
                })
                .collect();
            self.call(
                "/vectors/upsert",
                json!({"namespace": namespace.digest(), "vectors": vectors}),
            )
            .await?;
        }
        Ok(())
    }

    async fn delete(&self, namespace: &Namespace, keys: &[String]) -> Result<(), StoreError> {
        for ids in keys.chunks(MAX_IDS_PER_REQUEST) {
            self.call(
                "/vectors/delete",
                json!({"namespace": namespace.digest(), "ids": ids}),
            )
            .await?;
        }
        Ok(())
    }

    async fn query(
        &self,
        namespace: &Namespace,
        vector: &[f32],
        top_k: usize,
        filter: Option<&MetadataFilter>,
    ) -> Result<Vec<VectorHit>, StoreError> {
        let vector = query_vector(vector, top_k, Some(self.dimensions as usize))?;
        if top_k == 0 {
            return Ok(Vec::new());
        }
        let mut body = json!({
            "namespace": namespace.digest(),
            "vector": vector,
            "topK": top_k.min(MAX_TOP_K),
            "includeMetadata": true,
            "includeValues": false,
        });
        if let (Some(filter), Some(fields)) = (filter, body.as_object_mut()) {
            fields.insert("filter".into(), filter.to_json());
        }
        let answer = self.call("/query", body).await?;
        let matches = answer
            .get("matches")
            .and_then(Value::as_array)
            .ok_or_else(|| self.failed("answer has no matches"))?;
        let mut hits = Vec::with_capacity(matches.len().min(top_k));
        for found in matches.iter().take(top_k) {
            let (Some(key), Some(score)) = (
                found.get("id").and_then(Value::as_str),
                found.get("score").and_then(Value::as_f64),
            ) else {
                return Err(self.failed("a match has no id or score"));
            };
            let mut metadata: Map<String, Value> = found
                .get("metadata")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let text = match metadata.remove("text") {
                Some(Value::String(text)) => text,
                _ => String::new(),
            };
            hits.push(VectorHit {
                key: key.to_owned(),
                score: score as f32,
                text,
                metadata,
            });
        }
        Ok(hits)
    }
}
