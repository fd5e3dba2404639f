//! Upstream providers, one file or folder per kind, each implementing [`ChatProvider`], behind
//! one enum so the hot path dispatches statically.

pub mod anthropic;
pub mod bedrock;
mod error;
mod messages;
pub mod mock;
pub mod openai;
mod redact;
#[cfg(test)]
mod translation_properties;
mod transport;

use std::time::Duration;

use futures_util::stream::BoxStream;

use crate::api::{ChatChunk, ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse};
use crate::config::{ConfigError, ProviderConfig, ProviderKind};
pub use error::{ErrorSource, ProviderError, ProviderErrorKind};

pub type ChunkStream = BoxStream<'static, Result<ChatChunk, ProviderError>>;

/// What every provider kind offers, whatever its wire format: the compiler checks each kind
/// against it, and [`Provider`] dispatches to them without boxing.
pub trait ChatProvider {
    /// A non-streamed chat completion; `request.model` is already the upstream model name.
    fn chat(
        &self,
        request: &ChatRequest,
    ) -> impl Future<Output = Result<ChatCompletion, ProviderError>> + Send;

    /// A streamed chat completion as OpenAI chunks, whatever the provider's own format.
    fn chat_stream(
        &self,
        request: &ChatRequest,
    ) -> impl Future<Output = Result<ChunkStream, ProviderError>> + Send;

    /// Embeddings; a kind without an embeddings API refuses with a bad request naming it.
    fn embed(
        &self,
        request: &EmbeddingRequest,
    ) -> impl Future<Output = Result<EmbeddingResponse, ProviderError>> + Send;
}

pub enum Provider {
    OpenAi(openai::OpenAiProvider),
    Anthropic(anthropic::AnthropicProvider),
    Bedrock(bedrock::BedrockProvider),
    Mock(mock::MockProvider),
}

/// Calls the same method on whichever provider it is and awaits it. Bedrock's futures (the AWS
/// SDK's) are about 12 KB, four times the others': awaited in place they would size every future
/// that awaits a provider call (the attempt loop, the chat pipeline, the handler), and the
/// handler's future is moved once per request whatever the provider. Boxed, they cost a Bedrock
/// call one allocation instead.
macro_rules! dispatch {
    ($provider:expr, $inner:ident => $call:expr) => {
        match $provider {
            Provider::OpenAi($inner) => $call.await,
            Provider::Anthropic($inner) => $call.await,
            Provider::Bedrock($inner) => Box::pin($call).await,
            Provider::Mock($inner) => $call.await,
        }
    };
}

impl Provider {
    /// Builds a provider from its config, reading its credential from the environment variable
    /// the config names.
    pub fn from_config(
        name: &str,
        config: &ProviderConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let api_key = match &config.api_key_env {
            Some(var) => match env(var) {
                Some(value) if !value.is_empty() => Some(value),
                _ => {
                    return Err(ConfigError::new(
                        format!("providers.{name}.api_key_env"),
                        format!("environment variable `{var}` is not set"),
                    ));
                }
            },
            None => None,
        };
        let http = transport::client(&config.timeouts).map_err(|e| {
            ConfigError::new(
                format!("providers.{name}"),
                format!("cannot build HTTP client: {e}"),
            )
        })?;
        let base_url = config
            .base_url
            .clone()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned();
        Ok(match config.kind {
            ProviderKind::Openai | ProviderKind::Azure => Provider::OpenAi(
                openai::OpenAiProvider::new(http, base_url, api_key, config)
                    .map_err(|e| ConfigError::new(format!("providers.{name}.api_key_env"), e))?,
            ),
            ProviderKind::Anthropic => Provider::Anthropic(
                anthropic::AnthropicProvider::new(http, base_url, api_key, config)
                    .map_err(|e| ConfigError::new(format!("providers.{name}.api_key_env"), e))?,
            ),
            ProviderKind::Bedrock => Provider::Bedrock(bedrock::BedrockProvider::new(config)),
            ProviderKind::Mock => Provider::Mock(mock::MockProvider::new(
                Duration::from_millis(config.latency_ms),
                Duration::from_millis(config.chunk_delay_ms),
            )),
        })
    }

    /// A non-streamed chat completion; `request.model` is already the upstream model name.
    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        dispatch!(self, provider => provider.chat(request))
    }

    /// A streamed chat completion as OpenAI chunks, whatever the provider's own format.
    pub async fn chat_stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        dispatch!(self, provider => provider.chat_stream(request))
    }

    pub async fn embed(
        &self,
        request: &EmbeddingRequest,
    ) -> Result<EmbeddingResponse, ProviderError> {
        dispatch!(self, provider => provider.embed(request))
    }

    /// The most inputs one embeddings call to `upstream_model` may carry.
    pub fn max_embedding_inputs(&self, upstream_model: &str) -> usize {
        match self {
            Provider::Bedrock(_) => bedrock::max_embedding_inputs(upstream_model),
            Provider::OpenAi(_) | Provider::Anthropic(_) | Provider::Mock(_) => {
                crate::api::MAX_EMBEDDING_INPUTS
            }
        }
    }
}
