//! The vector store: chunks' embeddings by tenant and collection, queried by cosine similarity
//! with an optional metadata filter. Two implementations behind `VectorStore`: `embedded` (exact
//! search over an in-memory copy of a SQLite table, for the local run) and `s3` (one Amazon S3
//! Vectors index, collections kept apart by filterable metadata).
//!
//! Collections the config names can live in a vendor's database instead: `pinecone` (one
//! Pinecone index) and `weaviate` (one Weaviate class), both over their HTTP APIs.
//!
//! All stores normalise vectors to unit length, so a score is the cosine similarity whatever
//! the length of the vectors given.

pub mod embedded;
mod filter;
pub mod pinecone;
pub mod s3;
pub mod weaviate;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::StoreError;

pub use filter::{
    MAX_FIELD_NAME_CHARS, MAX_FILTER_CONDITIONS, MAX_FILTER_DEPTH, MAX_FILTER_STRING_BYTES,
    MetadataFilter, RESERVED_METADATA_KEYS,
};

/// Most hits one query returns (S3 Vectors' cap on `topK`).
pub const MAX_TOP_K: usize = 100;
/// Most dimensions a vector may have (S3 Vectors' cap).
pub const MAX_DIMENSIONS: usize = 4096;
/// Longest key: S3 Vectors takes 1,024 characters, and the namespace prefix goes in front.
pub const MAX_KEY_BYTES: usize = 512;

/// Which tenant's collection a vector belongs to; implementations isolate namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    pub tenant: String,
    pub collection: String,
}

impl Namespace {
    /// A fixed-length digest of the tenant and collection (32 hex digits): what the S3 Vectors
    /// store prefixes keys with and filters on. The separator keeps `("a", "bc")` and
    /// `("ab", "c")` apart.
    pub fn digest(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(self.tenant.as_bytes());
        hash.update([0u8]);
        hash.update(self.collection.as_bytes());
        let digest = hash.finalize();
        hex::encode(digest.get(..16).unwrap_or_default())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VectorRecord {
    pub key: String,
    pub vector: Vec<f32>,
    pub text: String,
    /// Filterable metadata (string, number, bool, or arrays of strings).
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    pub key: String,
    /// cosine similarity, higher is closer
    pub score: f32,
    pub text: String,
    pub metadata: Map<String, Value>,
}

#[async_trait::async_trait]
pub trait VectorStore: Send + Sync {
    /// The one dimension every vector must have (an S3 Vectors index), or None (embedded: any,
    /// but fixed per namespace by its first vector).
    fn fixed_dimensions(&self) -> Option<u32>;
    /// Upserts by key within the namespace.
    async fn put(
        &self,
        namespace: &Namespace,
        records: Vec<VectorRecord>,
    ) -> Result<(), StoreError>;
    async fn delete(&self, namespace: &Namespace, keys: &[String]) -> Result<(), StoreError>;
    /// Best first, at most `top_k` (<= MAX_TOP_K).
    async fn query(
        &self,
        namespace: &Namespace,
        vector: &[f32],
        top_k: usize,
        filter: Option<&MetadataFilter>,
    ) -> Result<Vec<VectorHit>, StoreError>;
    /// The dimension the vectors of collection `name` must have, if fixed.
    fn collection_dimensions(&self, _name: &str) -> Option<u32> {
        self.fixed_dimensions()
    }
}

/// Collections named in the config in a store of their own (`[vectors.pinecone.<name>]`,
/// `[vectors.weaviate.<name>]`), the others in the default store.
pub struct CollectionStores {
    default: Arc<dyn VectorStore>,
    by_collection: HashMap<String, Arc<dyn VectorStore>>,
}

impl CollectionStores {
    pub fn new(
        default: Arc<dyn VectorStore>,
        by_collection: HashMap<String, Arc<dyn VectorStore>>,
    ) -> Self {
        Self {
            default,
            by_collection,
        }
    }

    /// `default`, with the collections `[vectors]` names in their vendor's store; API keys are
    /// read from the environment (`env`).
    pub fn configured(
        config: &crate::config::VectorsConfig,
        default: Arc<dyn VectorStore>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Arc<dyn VectorStore>, String> {
        if config.pinecone.is_empty() && config.weaviate.is_empty() {
            return Ok(default);
        }
        let api_key = |vendor: &str, name: &str, variable: &str| {
            env(variable)
                .filter(|key| !key.trim().is_empty())
                .ok_or_else(|| {
                    format!("vectors.{vendor}.{name}: the API key variable {variable} is not set")
                })
        };
        let mut by_collection: HashMap<String, Arc<dyn VectorStore>> = HashMap::new();
        for (name, index) in &config.pinecone {
            let store = pinecone::PineconeVectorStore::new(
                index.host.clone(),
                api_key("pinecone", name, &index.api_key_env)?,
                index.dimensions,
                format!("collection {name}"),
            );
            by_collection.insert(name.clone(), Arc::new(store));
        }
        for (name, class) in &config.weaviate {
            let store = weaviate::WeaviateVectorStore::new(
                class.url.clone(),
                class.class.clone(),
                api_key("weaviate", name, &class.api_key_env)?,
                class.dimensions,
                format!("collection {name}"),
            );
            by_collection.insert(name.clone(), Arc::new(store));
        }
        Ok(Arc::new(Self::new(default, by_collection)))
    }

    fn store(&self, collection: &str) -> &Arc<dyn VectorStore> {
        self.by_collection.get(collection).unwrap_or(&self.default)
    }
}

#[async_trait::async_trait]
impl VectorStore for CollectionStores {
    fn fixed_dimensions(&self) -> Option<u32> {
        self.default.fixed_dimensions()
    }
    fn collection_dimensions(&self, name: &str) -> Option<u32> {
        self.store(name).collection_dimensions(name)
    }
    async fn put(
        &self,
        namespace: &Namespace,
        records: Vec<VectorRecord>,
    ) -> Result<(), StoreError> {
        self.store(&namespace.collection)
            .put(namespace, records)
            .await
    }
    async fn delete(&self, namespace: &Namespace, keys: &[String]) -> Result<(), StoreError> {
        self.store(&namespace.collection)
            .delete(namespace, keys)
            .await
    }
    async fn query(
        &self,
        namespace: &Namespace,
        vector: &[f32],
        top_k: usize,
        filter: Option<&MetadataFilter>,
    ) -> Result<Vec<VectorHit>, StoreError> {
        self.store(&namespace.collection)
            .query(namespace, vector, top_k, filter)
            .await
    }
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::Invalid(message.into())
}

pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(invalid("a vector key must not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "vector key is longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}

pub(crate) fn check_top_k(top_k: usize) -> Result<(), StoreError> {
    if top_k > MAX_TOP_K {
        return Err(invalid(format!(
            "top_k is {top_k}; at most {MAX_TOP_K} results can be asked for"
        )));
    }
    Ok(())
}

/// The vector scaled to unit length; its dimension bounded, its values finite, and not zero
/// (a zero vector has no direction to compare).
pub(crate) fn normalised(vector: &[f32], what: &str) -> Result<Vec<f32>, StoreError> {
    if vector.is_empty() || vector.len() > MAX_DIMENSIONS {
        return Err(invalid(format!(
            "{what} has {} dimensions; expected 1 to {MAX_DIMENSIONS}",
            vector.len()
        )));
    }
    if vector.iter().any(|x| !x.is_finite()) {
        return Err(invalid(format!(
            "{what} has a value that is not a finite number"
        )));
    }
    let norm = vector
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(invalid(format!("{what} has no direction (all zeros)")));
    }
    Ok(vector
        .iter()
        .map(|x| (f64::from(*x) / norm) as f32)
        .collect())
}

/// A query's inputs checked as every store needs them: `top_k` within `MAX_TOP_K`, and the
/// vector of the dimension the store expects (when it fixes one), scaled to unit length.
pub(crate) fn query_vector(
    vector: &[f32],
    top_k: usize,
    dimensions: Option<usize>,
) -> Result<Vec<f32>, StoreError> {
    check_top_k(top_k)?;
    if let Some(expected) = dimensions
        && vector.len() != expected
    {
        return Err(dimension_mismatch(expected, vector.len()));
    }
    normalised(vector, "the query vector")
}

/// Metadata values a filter can compare: strings, numbers, booleans and arrays of strings; keys
/// other than the stores' own.
pub(crate) fn check_metadata(key: &str, metadata: &Map<String, Value>) -> Result<(), StoreError> {
    for (name, value) in metadata {
        if RESERVED_METADATA_KEYS.contains(&name.as_str()) {
            return Err(invalid(format!(
                "vector `{key}`: metadata field `{name}` is reserved"
            )));
        }
        let valid = match value {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => true,
            Value::Array(items) => items.iter().all(Value::is_string),
            Value::Null | Value::Object(_) => false,
        };
        if !valid {
            return Err(invalid(format!(
                "vector `{key}`: metadata field `{name}` must be a string, number, boolean or \
                 array of strings"
            )));
        }
    }
    Ok(())
}

/// A record checked and its vector normalised; every vector of one call must share a dimension.
pub(crate) fn prepared(
    records: Vec<VectorRecord>,
    dimensions: Option<usize>,
) -> Result<Vec<VectorRecord>, StoreError> {
    let mut dimensions = dimensions;
    records
        .into_iter()
        .map(|mut record| {
            check_key(&record.key)?;
            check_metadata(&record.key, &record.metadata)?;
            let expected = *dimensions.get_or_insert(record.vector.len());
            if record.vector.len() != expected {
                return Err(dimension_mismatch(expected, record.vector.len()));
            }
            record.vector = normalised(&record.vector, &format!("vector `{}`", record.key))?;
            Ok(record)
        })
        .collect()
}

pub(crate) fn dimension_mismatch(expected: usize, given: usize) -> StoreError {
    invalid(format!(
        "the collection's vectors have {expected} dimensions; this vector has {given} (embed \
         with the model the collection was built with)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(key: &str, vector: Vec<f32>, metadata: Value) -> VectorRecord {
        VectorRecord {
            key: key.into(),
            vector,
            text: String::new(),
            metadata: metadata.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn namespaces_digest_apart_and_the_same_each_time() {
        let ns = |t: &str, c: &str| Namespace {
            tenant: t.into(),
            collection: c.into(),
        };
        assert_eq!(ns("a", "bc").digest(), ns("a", "bc").digest());
        assert_ne!(ns("a", "bc").digest(), ns("ab", "c").digest());
        assert_eq!(ns("a", "bc").digest().len(), 32);
    }

    #[test]
    fn records_are_normalised_and_checked() {
        let ok = prepared(
            vec![record("a", vec![3.0, 4.0], json!({"tags": ["x"], "n": 1}))],
            None,
        )
        .unwrap();
        assert_eq!(ok[0].vector, vec![0.6, 0.8]);

        let error = |records, dims| prepared(records, dims).unwrap_err().to_string();
        assert!(error(vec![record("a", vec![0.0, 0.0], json!({}))], None).contains("all zeros"));
        assert!(error(vec![record("a", vec![f32::NAN], json!({}))], None).contains("finite"));
        assert!(error(vec![record("a", vec![], json!({}))], None).contains("0 dimensions"));
        assert!(error(vec![record("", vec![1.0], json!({}))], None).contains("empty"));
        assert!(error(vec![record(&"k".repeat(513), vec![1.0], json!({}))], None).contains("512"));
        assert!(
            error(vec![record("a", vec![1.0], json!({"text": "x"}))], None).contains("reserved")
        );
        assert!(error(vec![record("a", vec![1.0], json!({"m": {"x": 1}}))], None).contains("`m`"));
        assert!(error(vec![record("a", vec![1.0], json!({"m": [1]}))], None).contains("`m`"));
        assert!(
            error(vec![record("a", vec![1.0, 2.0], json!({}))], Some(3)).contains("3 dimensions")
        );
        let mixed = vec![
            record("a", vec![1.0], json!({})),
            record("b", vec![1.0, 1.0], json!({})),
        ];
        assert!(error(mixed, None).contains("1 dimensions; this vector has 2"));
        assert!(check_top_k(101).is_err() && check_top_k(100).is_ok());
    }
}
