//! What the `chat`, `batch` and `ingest` functions build the same way, once per container:
//! provider credentials from the secret, the config, the AWS backends with the batch backends (not
//! for the ingest function), the collections and the vector store the stack names. Key management
//! (`key_setup`) is the admin function's alone.

use std::collections::HashMap;
use std::sync::Arc;

use lambda_http::Error;

use crate::backends::Backends;
use crate::batch::BatchBackends;
use crate::config::Config;
use crate::ingest::backends::IngestBackends;
use crate::responses::ResponseStore;
use crate::state::Gateway;
use crate::usage::UsageStore;
use crate::vectors::s3::S3VectorStore;
use crate::vectors::{CollectionStores, VectorStore};

pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Whether a function serves batch jobs: the router and the batch worker do, the ingest function
/// does not (it never reads the batch table or queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPart {
    Included,
    Left,
}

/// The parts a function's gateway is built from.
pub struct Setup {
    pub config: Config,
    pub backends: Backends,
    pub batch: Option<BatchBackends>,
    pub ingest: Option<IngestBackends>,
    pub vectors: Option<Arc<dyn VectorStore>>,
    /// Stored Responses API objects: set by the chat function only (the workers answer no
    /// `/v1/responses`).
    pub responses: Option<Arc<dyn ResponseStore>>,
    /// Usage reports: set by the chat function only (the workers serve no report).
    pub usage: Option<Arc<dyn UsageStore>>,
    /// Provider credentials from the secret (the environment is consulted after them).
    credentials: HashMap<String, String>,
}

impl Setup {
    /// Reads the secret and the config, and builds the AWS backends (with the batch backends
    /// when `GATEWAY_BATCH_TABLE`, `GATEWAY_BUCKET` and `GATEWAY_BATCH_QUEUE_URL` are set, the
    /// collections when `GATEWAY_COLLECTIONS_TABLE` is, and the S3 Vectors store when
    /// `GATEWAY_VECTOR_BUCKET`, `GATEWAY_VECTOR_INDEX` and `GATEWAY_VECTOR_DIMENSION` are, with
    /// the collections `[vectors]` puts in Pinecone or Weaviate in front of it).
    pub async fn load(aws: &aws_config::SdkConfig, batch_part: BatchPart) -> Result<Self, Error> {
        let credentials = match env("GATEWAY_PROVIDER_SECRET_ARN") {
            Some(arn) => crate::config::secrets::provider_credentials(aws, &arn).await?,
            None => HashMap::new(),
        };
        let lookup = |name: &str| credentials.get(name).cloned().or_else(|| env(name));
        let config = match env("GATEWAY_CONFIG") {
            Some(path) => Config::from_toml(&std::fs::read_to_string(&path)?)?,
            None => Config::built_in(lookup),
        };
        let backends = Backends::aws(aws)?;
        let dynamo = crate::storage::dynamo::client(aws);
        let batch = match batch_part {
            BatchPart::Included => BatchBackends::aws(aws, &dynamo, env)?,
            BatchPart::Left => None,
        };
        let ingest = IngestBackends::aws(aws, &dynamo, env)?;
        let vectors = vector_store(aws, &config, lookup)?;
        Ok(Self {
            config,
            backends,
            batch,
            ingest,
            vectors,
            responses: None,
            usage: None,
            credentials,
        })
    }

    pub fn gateway(self) -> Result<Arc<Gateway>, Error> {
        let credentials = self.credentials;
        let lookup = move |name: &str| credentials.get(name).cloned().or_else(|| env(name));
        let mut gateway = Gateway::new(&self.config, self.backends, &lookup)?;
        gateway.batch = self.batch;
        gateway.ingest = self.ingest;
        gateway.vectors = self.vectors;
        gateway.responses = self.responses;
        gateway.usage = self.usage;
        Ok(Arc::new(gateway))
    }
}

/// The stack's S3 Vectors store (when `GATEWAY_VECTOR_BUCKET`, `GATEWAY_VECTOR_INDEX` and
/// `GATEWAY_VECTOR_DIMENSION` are set), with the collections `[vectors]` puts in Pinecone or
/// Weaviate in front of it; their API keys are looked up like the providers' (the secret first).
pub fn vector_store(
    aws: &aws_config::SdkConfig,
    config: &Config,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<Arc<dyn VectorStore>>, String> {
    let vendor_collections =
        !config.vectors.pinecone.is_empty() || !config.vectors.weaviate.is_empty();
    match S3VectorStore::from_lookup(aws, &lookup)? {
        Some(store) => {
            CollectionStores::configured(&config.vectors, Arc::new(store), lookup).map(Some)
        }
        None if vendor_collections => {
            Err("the config names Pinecone or Weaviate collections, but \
             the function has no vector store (GATEWAY_VECTOR_BUCKET, GATEWAY_VECTOR_INDEX and \
             GATEWAY_VECTOR_DIMENSION)"
                .into())
        }
        None => Ok(None),
    }
}
