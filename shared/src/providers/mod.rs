//! Upstream providers, one file per kind, behind one enum so the hot path dispatches statically.

pub mod anthropic;
pub mod bedrock;
pub mod mock;
pub mod openai;
pub mod routing;
mod transport;

use std::time::Duration;

use futures_util::stream::BoxStream;
use http::StatusCode;

use crate::api::{ChatChunk, ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse};
use crate::config::{ConfigError, ProviderConfig, ProviderKind};
use crate::error::ApiError;

pub type ChunkStream = BoxStream<'static, Result<ChatChunk, ProviderError>>;

pub enum Provider {
    OpenAi(openai::OpenAiProvider),
    Anthropic(anthropic::AnthropicProvider),
    Bedrock(bedrock::BedrockProvider),
    Mock(mock::MockProvider),
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
        match self {
            Provider::OpenAi(p) => p.chat(request).await,
            Provider::Anthropic(p) => p.chat(request).await,
            Provider::Bedrock(p) => p.chat(request).await,
            Provider::Mock(p) => p.chat(request).await,
        }
    }

    /// A streamed chat completion as OpenAI chunks, whatever the provider's own format.
    pub async fn chat_stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        match self {
            Provider::OpenAi(p) => p.chat_stream(request).await,
            Provider::Anthropic(p) => p.chat_stream(request).await,
            Provider::Bedrock(p) => p.chat_stream(request).await,
            Provider::Mock(p) => p.chat_stream(request).await,
        }
    }

    pub async fn embed(
        &self,
        request: &EmbeddingRequest,
    ) -> Result<EmbeddingResponse, ProviderError> {
        match self {
            Provider::OpenAi(p) => p.embed(request).await,
            Provider::Anthropic(_) => Err(ProviderError::new(
                ProviderErrorKind::BadRequest,
                "Anthropic has no embeddings API; configure an embedding model on another provider",
            )),
            Provider::Bedrock(_) => Err(ProviderError::new(
                ProviderErrorKind::BadRequest,
                "Bedrock's Converse API has no embeddings; configure an embedding model on another provider",
            )),
            Provider::Mock(p) => p.embed(request).await,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// The request is wrong in a way a retry cannot fix.
    BadRequest,
    ContextLengthExceeded,
    ContentPolicy,
    /// The provider rejected the gateway's own credential: a deployment problem, not the client's.
    Authentication,
    NotFound,
    RateLimited,
    /// 5xx or overload.
    Server,
    Timeout,
    Connection,
    /// The provider answered something that is not its documented format.
    Protocol,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderError {
    pub kind: ProviderErrorKind,
    pub message: String,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub param: Option<String>,
    pub retry_after_secs: Option<u64>,
}

impl ProviderError {
    pub fn new(kind: ProviderErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
            code: None,
            param: None,
            retry_after_secs: None,
        }
    }

    /// Classifies an upstream HTTP error from its status and the fields of its error body.
    pub fn from_status(
        status: u16,
        message: String,
        code: Option<String>,
        param: Option<String>,
        retry_after_secs: Option<u64>,
    ) -> Self {
        let lower = message.to_ascii_lowercase();
        let code_is = |c: &str| code.as_deref() == Some(c);
        let kind = match status {
            401 | 403 => ProviderErrorKind::Authentication,
            404 => ProviderErrorKind::NotFound,
            408 => ProviderErrorKind::Timeout,
            429 => ProviderErrorKind::RateLimited,
            400..=499
                if code_is("context_length_exceeded")
                    || lower.contains("maximum context length")
                    || lower.contains("prompt is too long") =>
            {
                ProviderErrorKind::ContextLengthExceeded
            }
            400..=499
                if code_is("content_filter")
                    || code_is("content_policy_violation")
                    || lower.contains("content policy")
                    || lower.contains("content management policy") =>
            {
                ProviderErrorKind::ContentPolicy
            }
            400..=499 => ProviderErrorKind::BadRequest,
            _ => ProviderErrorKind::Server,
        };
        Self {
            kind,
            message,
            status: Some(status),
            code,
            param,
            retry_after_secs,
        }
    }

    /// Whether another attempt could succeed: rate limits, 5xx, timeouts and broken connections.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ProviderErrorKind::RateLimited
                | ProviderErrorKind::Server
                | ProviderErrorKind::Timeout
                | ProviderErrorKind::Connection
        )
    }

    /// The error as the client sees it. The client's own mistakes keep the provider's reason;
    /// the gateway's problems (credentials, outages, garbage) become 502/503/504.
    pub fn to_api_error(&self, provider: &str) -> ApiError {
        let upstream = |status, kind: &'static str, what: &str| {
            ApiError::new(
                status,
                kind,
                format!("provider `{provider}` {what}: {}", self.message),
            )
        };
        let mut error = match self.kind {
            ProviderErrorKind::BadRequest => ApiError::bad_request(self.message.clone()),
            ProviderErrorKind::ContextLengthExceeded => {
                ApiError::bad_request(self.message.clone()).with_code("context_length_exceeded")
            }
            ProviderErrorKind::ContentPolicy => {
                ApiError::bad_request(self.message.clone()).with_code("content_policy_violation")
            }
            ProviderErrorKind::RateLimited => ApiError::rate_limited(
                format!("provider `{provider}` is rate limiting: {}", self.message),
                self.retry_after_secs.unwrap_or(1),
            ),
            ProviderErrorKind::Authentication => upstream(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "rejected the gateway's credentials",
            ),
            ProviderErrorKind::NotFound => upstream(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "does not know the model",
            ),
            ProviderErrorKind::Server => upstream(StatusCode::BAD_GATEWAY, "api_error", "failed"),
            ProviderErrorKind::Connection => {
                upstream(StatusCode::BAD_GATEWAY, "api_error", "is unreachable")
            }
            ProviderErrorKind::Protocol => upstream(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "sent a malformed response",
            ),
            ProviderErrorKind::Timeout => {
                upstream(StatusCode::GATEWAY_TIMEOUT, "timeout", "timed out")
            }
        };
        if matches!(
            self.kind,
            ProviderErrorKind::BadRequest
                | ProviderErrorKind::ContextLengthExceeded
                | ProviderErrorKind::ContentPolicy
        ) {
            if let Some(code) = &self.code {
                error.code = Some(code.clone());
            }
            error.param.clone_from(&self.param);
        }
        error
    }
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ProviderError {}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_are_classified_by_status_and_code() {
        let ctx = ProviderError::from_status(
            400,
            "This model's maximum context length is 8192 tokens".into(),
            Some("context_length_exceeded".into()),
            Some("messages".into()),
            None,
        );
        assert_eq!(ctx.kind, ProviderErrorKind::ContextLengthExceeded);
        assert!(!ctx.is_retryable());
        let api = ctx.to_api_error("openai");
        assert_eq!(api.status, StatusCode::BAD_REQUEST);
        assert_eq!(api.code.as_deref(), Some("context_length_exceeded"));

        let limited = ProviderError::from_status(429, "slow".into(), None, None, Some(2));
        assert!(limited.is_retryable());
        assert_eq!(limited.to_api_error("p").retry_after_secs, Some(2));

        let auth = ProviderError::from_status(401, "bad key".into(), None, None, None);
        assert_eq!(auth.to_api_error("p").status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            ProviderError::from_status(503, "down".into(), None, None, None).kind,
            ProviderErrorKind::Server
        );
    }
}
