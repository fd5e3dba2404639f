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
        Ok(())
    }
}
