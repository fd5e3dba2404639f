//! Amazon Bedrock through the Converse and ConverseStream APIs of `aws-sdk-bedrockruntime` (and
//! InvokeModel for embeddings, in `embeddings.rs`),
//! translated to and from OpenAI's chat shapes: system prompts, content parts and images, tools
//! and tool results, stop reasons, usage, and the streaming event sequence. Requests are signed
//! with IAM credentials from the standard AWS chain (environment, profile, web identity, ECS or
//! instance role); there is no API key.

mod embeddings;
mod errors;
mod request;
mod response;
mod stream;
#[cfg(test)]
mod tests;

use std::time::Duration;

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::{Region, StalledStreamProtectionConfig};
use aws_sdk_bedrockruntime::operation::RequestId;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use tokio::sync::OnceCell;

use super::{ChatProvider, ChunkStream, ProviderError, ProviderErrorKind};
use crate::api::{ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse};
use crate::config::{ProviderConfig, Timeouts};
pub use embeddings::max_embedding_inputs;
use errors::call_error;
use request::to_converse_parts;
use response::from_converse_response;
use stream::{StreamTranslator, chunk_stream};

pub struct BedrockProvider {
    /// Built on first use: loading the AWS config (region, credential chain) is async.
    client: OnceCell<Client>,
    region: Option<String>,
    endpoint_url: Option<String>,
    timeouts: Timeouts,
}

impl BedrockProvider {
    pub fn new(config: &ProviderConfig) -> Self {
        Self {
            client: OnceCell::new(),
            region: config.region.clone(),
            endpoint_url: config.base_url.clone(),
            timeouts: config.timeouts,
        }
    }

    /// A provider over a test client, which should come from [`client_config`] so the SDK
    /// neither retries nor times out on its own.
    #[cfg(test)]
    fn with_client(client: Client, timeouts: Timeouts) -> Self {
        Self {
            client: OnceCell::new_with(Some(client)),
            region: None,
            endpoint_url: None,
            timeouts,
        }
    }

    async fn client(&self) -> Result<&Client, ProviderError> {
        self.client
            .get_or_try_init(|| async {
                let mut loader = crate::tls::aws_config();
                if let Some(region) = &self.region {
                    loader = loader.region(Region::new(region.clone()));
                }
                if let Some(url) = &self.endpoint_url {
                    loader = loader.endpoint_url(url.trim_end_matches('/'));
                }
                let sdk_config = loader.load().await;
                let config = client_config(
                    aws_sdk_bedrockruntime::config::Builder::from(&sdk_config),
                    &self.timeouts,
                )
                .build();
                if config.region().is_none() {
                    // A deployment problem like a bad credential: not retried, not the client's.
                    return Err(ProviderError::new(
                        ProviderErrorKind::Authentication,
                        "no AWS region: set `region` on the provider or AWS_REGION",
                    ));
                }
                Ok(Client::from_conf(config))
            })
            .await
    }
}

impl ChatProvider for BedrockProvider {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let parts = to_converse_parts(request)?;
        let client = self.client().await?;
        let call = client
            .converse()
            .model_id(&request.model)
            .set_system(parts.system)
            .set_messages(Some(parts.messages))
            .set_inference_config(parts.inference)
            .set_tool_config(parts.tools)
            .set_additional_model_request_fields(parts.additional)
            .send();
        // The answer arrives whole once generated: allow the first-byte wait plus a body read.
        let limit = self.timeouts.first_byte_ms + self.timeouts.idle_ms;
        let response = tokio::time::timeout(Duration::from_millis(limit), call)
            .await
            .map_err(|_| {
                ProviderError::new(
                    ProviderErrorKind::Timeout,
                    format!("no Converse response within {limit} ms"),
                )
            })?
            .map_err(call_error)?;
        let id = completion_id(response.request_id());
        from_converse_response(response, id, &request.model)
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let parts = to_converse_parts(request)?;
        let client = self.client().await?;
        let call = client
            .converse_stream()
            .model_id(&request.model)
            .set_system(parts.system)
            .set_messages(Some(parts.messages))
            .set_inference_config(parts.inference)
            .set_tool_config(parts.tools)
            .set_additional_model_request_fields(parts.additional)
            .send();
        let first_byte = self.timeouts.first_byte_ms;
        let response = tokio::time::timeout(Duration::from_millis(first_byte), call)
            .await
            .map_err(|_| {
                ProviderError::new(
                    ProviderErrorKind::Timeout,
                    format!("no response headers within {first_byte} ms"),
                )
            })?
            .map_err(call_error)?;
        let translator =
            StreamTranslator::new(completion_id(response.request_id()), &request.model);
        Ok(chunk_stream(
            response.stream,
            translator,
            Duration::from_millis(self.timeouts.idle_ms),
        ))
    }

    /// Titan Text Embeddings and Cohere Embed through InvokeModel (Converse has no embeddings).
    async fn embed(&self, request: &EmbeddingRequest) -> Result<EmbeddingResponse, ProviderError> {
        self.embed_invoke(request).await
    }
}

/// The SDK settings the gateway needs: no SDK retries (the router retries, falls back and keeps
/// the breaker), the provider's connect timeout, and no stalled-stream protection (the router's
/// `idle_ms` governs a quiet stream, and a model may think for longer than the SDK's grace).
fn client_config(
    builder: aws_sdk_bedrockruntime::config::Builder,
    timeouts: &Timeouts,
) -> aws_sdk_bedrockruntime::config::Builder {
    builder
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(timeouts.connect_ms))
                .build(),
        )
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
}

fn completion_id(request_id: Option<&str>) -> String {
    match request_id {
        Some(id) if !id.is_empty() => format!("chatcmpl-{id}"),
        _ => format!("chatcmpl-{:016x}", rand::random::<u64>()),
    }
}
