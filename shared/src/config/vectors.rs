//! `[vectors]`: collections kept in a vendor's vector database instead of the default store
//! (the embedded index, or S3 Vectors on AWS), by collection name.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorsConfig {
    /// `[vectors.pinecone.<collection>]`: the collection of that name (in every tenant, each in a
    /// Pinecone namespace of its own) is kept in this Pinecone index.
    #[serde(default)]
    pub pinecone: BTreeMap<String, PineconeIndexConfig>,
    /// `[vectors.weaviate.<collection>]`: the collection of that name (every tenant's, told apart
    /// by a namespace property) is kept in this Weaviate class.
    #[serde(default)]
    pub weaviate: BTreeMap<String, WeaviateClassConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeaviateClassConfig {
    /// The instance's base URL (`https://<cluster>.weaviate.cloud`, or a self-hosted one).
    pub url: String,
    /// The class (collection) the chunks go in, e.g. `Handbook`.
    pub class: String,
    /// The environment variable holding the API key, sent as `Authorization: Bearer`.
    pub api_key_env: String,
    /// The dimension of the class's vectors: collections kept in it embed to this size.
    pub dimensions: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PineconeIndexConfig {
    /// The index's host, as Pinecone's console or `describe_index` shows it.
    pub host: String,
    /// The environment variable holding the API key.
    pub api_key_env: String,
    /// The index's dimension: collections kept in it embed to this size.
    pub dimensions: u32,
}

impl VectorsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (collection, index) in &self.pinecone {
            let field = |f: &str| format!("vectors.pinecone.{collection}.{f}");
            if !(index.host.starts_with("https://") || index.host.starts_with("http://")) {
                return Err(ConfigError::new(field("host"), "must be an http(s) URL"));
            }
            if index.api_key_env.trim().is_empty() {
                return Err(ConfigError::new(
                    field("api_key_env"),
                    "must name an environment variable",
                ));
            }
            if index.dimensions == 0 || index.dimensions as usize > crate::vectors::MAX_DIMENSIONS {
                return Err(ConfigError::new(
                    field("dimensions"),
                    format!("must be between 1 and {}", crate::vectors::MAX_DIMENSIONS),
                ));
            }
        }
        for (collection, class) in &self.weaviate {
            let field = |f: &str| format!("vectors.weaviate.{collection}.{f}");
            if self.pinecone.contains_key(collection) {
                return Err(ConfigError::new(
                    field("class"),
                    "the collection is also configured for Pinecone",
                ));
            }
            if !(class.url.starts_with("https://") || class.url.starts_with("http://")) {
                return Err(ConfigError::new(field("url"), "must be an http(s) URL"));
            }
            if !crate::vectors::weaviate::is_class_name(&class.class) {
                return Err(ConfigError::new(
                    field("class"),
                    "must be a Weaviate class name: a capital letter, then letters, digits or _",
                ));
            }
            if class.api_key_env.trim().is_empty() {
                return Err(ConfigError::new(
                    field("api_key_env"),
                    "must name an environment variable",
                ));
            }
            if class.dimensions == 0 || class.dimensions as usize > crate::vectors::MAX_DIMENSIONS {
                return Err(ConfigError::new(
                    field("dimensions"),
                    format!("must be between 1 and {}", crate::vectors::MAX_DIMENSIONS),
                ));
            }
        }
        Ok(())
    }
}
