//! Retrieval for a key: embed the query through `embed_texts` (embedding cache, router, spend
//! billed to the key), query the vectors of the tenant's collection, and answer with chunks,
//! their documents and scores.
//!
//! Results are cached in the response cache's store under their own key domain, keyed by tenant,
//! collection, the collection's version, query, `top_k` and filter, for a short TTL: an identical
//! query on an unchanged collection is answered without embedding or querying, and any write to
//! the collection raises its version, so entries made before it are never read again.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::embeddings::embed_texts;
use super::ingest::{backends, collection};
use crate::error::{ApiError, ErrorKind};
use crate::ingest::api::{DOCUMENT_ID_FIELD, MAX_QUERY_BYTES};
use crate::keys::KeyRecord;
use crate::state::Gateway;
use crate::vectors::{MAX_TOP_K, MetadataFilter, Namespace};

/// Domain tag of retrieval entries in the cache store (other domains hash other tags).
const CACHE_DOMAIN: &str = "retrieval-v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievedChunk {
    pub document_id: String,
    pub chunk_id: String,
    pub score: f32,
    pub text: String,
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retrieval {
    pub collection: String,
    pub collection_version: u64,
    pub chunks: Vec<RetrievedChunk>,
    /// Served from the retrieval result cache.
    pub cached: bool,
}

/// The cache key of a retrieval: every part length-prefixed, so no two tuples share a key.
fn cache_key(
    tenant: &str,
    collection: &str,
    version: u64,
    query: &str,
    top_k: usize,
    filter: Option<&MetadataFilter>,
) -> [u8; 32] {
    let filter = filter.map(|f| f.to_json().to_string()).unwrap_or_default();
    let mut hasher = Sha256::new();
    for part in [
        CACHE_DOMAIN,
        tenant,
        collection,
        &version.to_string(),
        &top_k.to_string(),
        &filter,
        query,
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// Retrieves the `top_k` chunks of the tenant's `collection` closest to `query`; 404 (OpenAI's
/// shape) for a collection the tenant lacks.
pub async fn retrieve(
    gateway: &Gateway,
    key: &KeyRecord,
    collection_name: &str,
    query: &str,
    top_k: usize,
    filter: Option<&MetadataFilter>,
    deadline: tokio::time::Instant,
) -> Result<Retrieval, ApiError> {
    let backends = backends(gateway)?;
    let collection = collection(backends, &key.tenant, collection_name).await?;
    if !(1..=MAX_TOP_K).contains(&top_k) {
        return Err(ApiError::bad_request(format!(
            "`top_k` is {top_k}; it must be between 1 and {MAX_TOP_K}."
        ))
        .with_param("top_k"));
    }
    if query.trim().is_empty() {
        return Err(ApiError::bad_request("`query` is empty.").with_param("query"));
    }
    if query.len() > MAX_QUERY_BYTES {
        return Err(ApiError::bad_request(format!(
            "`query` has {} bytes; at most {MAX_QUERY_BYTES} are allowed.",
            query.len()
        ))
        .with_param("query"));
    }
    let vectors = gateway.vectors.as_deref().ok_or_else(|| {
        ApiError::unavailable("Collections need a vector store, and none is configured.")
    })?;
    let ttl_s = backends.settings.retrieval_cache_ttl_s;
    let cache_key = cache_key(
        &key.tenant,
        &collection.name,
        collection.version,
        query,
        top_k,
        filter,
    );
    let store = gateway.cache.store();
    if ttl_s > 0 {
        match store.get(&cache_key).await {
            Ok(Some(body)) => match serde_json::from_slice::<Vec<RetrievedChunk>>(&body) {
                Ok(chunks) => {
                    return Ok(Retrieval {
                        collection: collection.name,
                        collection_version: collection.version,
                        chunks,
                        cached: true,
                    });
                }
                Err(error) => tracing::warn!(%error, "unreadable retrieval cache entry"),
            },
            Ok(None) => {}
            Err(error) => crate::telemetry::cache_store_failed(&error),
        }
    }
    let embedded = embed_texts(
        gateway,
        key,
        &collection.embedding_model,
        &[query.to_owned()],
        collection.dimensions,
        deadline,
    )
    .await?;
    let vector = embedded.vectors.into_iter().next().ok_or_else(|| {
        ApiError::new(
            ErrorKind::BadGateway,
            "The embedding model returned no vector for the query.",
        )
    })?;
    let namespace = Namespace {
        tenant: key.tenant.clone(),
        collection: collection.name.clone(),
    };
    let hits = vectors.query(&namespace, &vector, top_k, filter).await?;
    let chunks: Vec<RetrievedChunk> = hits
        .into_iter()
        .take(top_k)
        .map(|hit| {
            let mut metadata = hit.metadata;
            let document_id = match metadata.remove(DOCUMENT_ID_FIELD) {
                Some(Value::String(id)) => id,
                // Keys are `{document}#...`: the document is what comes before the `#`.
                _ => hit.key.split('#').next().unwrap_or_default().to_owned(),
            };
            RetrievedChunk {
                document_id,
                chunk_id: hit.key,
                score: hit.score,
                text: hit.text,
                metadata,
            }
        })
        .collect();
    if ttl_s > 0 {
        match serde_json::to_vec(&chunks) {
            Ok(body) => {
                if let Err(error) = store.put(&cache_key, body.into(), ttl_s).await {
                    crate::telemetry::cache_store_failed(&error);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot encode a retrieval for the cache"),
        }
    }
    Ok(Retrieval {
        collection: collection.name,
        collection_version: collection.version,
        chunks,
        cached: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_changes_with_every_part() {
        let base = cache_key("t", "c", 1, "q", 4, None);
        assert_eq!(base, cache_key("t", "c", 1, "q", 4, None));
        for other in [
            cache_key("u", "c", 1, "q", 4, None),
            cache_key("t", "d", 1, "q", 4, None),
            cache_key("t", "c", 2, "q", 4, None),
            cache_key("t", "c", 1, "r", 4, None),
            cache_key("t", "c", 1, "q", 5, None),
        ] {
            assert_ne!(base, other);
        }
    }
}
