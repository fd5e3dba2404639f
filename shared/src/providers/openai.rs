//! Any OpenAI-compatible API (OpenAI, vLLM, Ollama, Groq, ...) and Azure OpenAI, whose only
//! differences are the deployment URL, the `api-version` query and the `api-key` header.

use futures_util::StreamExt;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use serde::Deserialize;

use super::transport;
use super::{ChunkStream, ProviderError, ProviderErrorKind};
use crate::api::{ChatChunk, ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse};
use crate::config::{ProviderConfig, ProviderKind, Timeouts};

pub struct OpenAiProvider {
    http: reqwest::Client,
    base_url: String,
    auth: Option<(HeaderName, HeaderValue)>,
    azure_api_version: Option<String>,
    timeouts: Timeouts,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    param: Option<String>,
}

fn parse_error(status: u16, body: &[u8], retry_after: Option<u64>) -> ProviderError {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => {
            let code = envelope.error.code.map(|c| match c {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
            ProviderError::from_status(
                status,
                envelope.error.message,
                code,
                envelope.error.param,
                retry_after,
            )
        }
        Err(_) => ProviderError::from_status(
            status,
            format!("HTTP {status}: {}", String::from_utf8_lossy(body)),
            None,
            None,
            retry_after,
        ),
    }
}

impl OpenAiProvider {
    pub fn new(
        http: reqwest::Client,
        base_url: String,
        api_key: Option<String>,
        config: &ProviderConfig,
    ) -> Result<Self, String> {
        let azure = config.kind == ProviderKind::Azure;
        let auth = match api_key {
            None => None,
            Some(key) => {
                let (name, value) = if azure {
                    (HeaderName::from_static("api-key"), key)
                } else {
                    (AUTHORIZATION, format!("Bearer {key}"))
                };
                let mut value = HeaderValue::from_str(&value)
                    .map_err(|_| "the credential contains characters not allowed in a header")?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        Ok(Self {
            http,
            base_url,
            auth,
            azure_api_version: if azure {
                config.api_version.clone()
            } else {
                None
            },
            timeouts: config.timeouts,
        })
    }

    fn url(&self, model: &str, operation: &str) -> String {
        match &self.azure_api_version {
            Some(version) => format!(
                "{}/openai/deployments/{model}/{operation}?api-version={version}",
                self.base_url
            ),
            None => format!("{}/{operation}", self.base_url),
        }
    }

    fn post(&self, url: String, body: Vec<u8>) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some((name, value)) = &self.auth {
            request = request.header(name.clone(), value.clone());
        }
        request
    }

    fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ProviderError> {
        serde_json::to_vec(value)
            .map_err(|e| ProviderError::new(ProviderErrorKind::BadRequest, e.to_string()))
    }

    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let url = self.url(&request.model, "chat/completions");
        let response = transport::send(
            self.post(url, Self::encode(request)?),
            &self.timeouts,
            parse_error,
        )
        .await?;
        let body = transport::read_body(response, &self.timeouts).await?;
        serde_json::from_slice(&body).map_err(|e| {
            ProviderError::new(
                ProviderErrorKind::Protocol,
                format!("invalid chat completion: {e}"),
            )
        })
    }

    pub async fn chat_stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let url = self.url(&request.model, "chat/completions");
        let response = transport::send(
            self.post(url, Self::encode(request)?),
            &self.timeouts,
            parse_error,
        )
        .await?;
        let events = transport::sse_events(response, &self.timeouts);
        let chunks = events
            .take_while(|event| {
                let done = matches!(event, Ok(e) if e.data.trim() == "[DONE]");
                std::future::ready(!done)
            })
            .filter_map(|event| {
                std::future::ready(match event {
                    Err(e) => Some(Err(e)),
                    Ok(event) if event.data.trim().is_empty() => None,
                    Ok(event) => Some(parse_chunk(&event.data)),
                })
            });
        Ok(chunks.boxed())
    }

    pub async fn embed(
        &self,
        request: &EmbeddingRequest,
    ) -> Result<EmbeddingResponse, ProviderError> {
        let url = self.url(&request.model, "embeddings");
        let response = transport::send(
            self.post(url, Self::encode(request)?),
            &self.timeouts,
            parse_error,
        )
        .await?;
        let body = transport::read_body(response, &self.timeouts).await?;
        serde_json::from_slice(&body).map_err(|e| {
            ProviderError::new(
                ProviderErrorKind::Protocol,
                format!("invalid embeddings response: {e}"),
            )
        })
    }
}

/// One `data:` payload of an OpenAI stream: a chunk, or an error object sent mid-stream.
fn parse_chunk(data: &str) -> Result<ChatChunk, ProviderError> {
    if let Ok(envelope) = serde_json::from_str::<ErrorEnvelope>(data) {
        return Err(ProviderError::new(
            ProviderErrorKind::Server,
            envelope.error.message,
        ));
    }
    serde_json::from_str(data).map_err(|e| {
        ProviderError::new(
            ProviderErrorKind::Protocol,
            format!("malformed stream chunk: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_codes_are_read() {
        let body = br#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let error = parse_error(400, body, None);
        assert_eq!(error.kind, ProviderErrorKind::ContextLengthExceeded);
        assert_eq!(error.param.as_deref(), Some("messages"));
    }

    #[test]
    fn non_json_error_bodies_keep_their_text() {
        let error = parse_error(502, b"Bad Gateway", None);
        assert_eq!(error.kind, ProviderErrorKind::Server);
        assert!(error.message.contains("Bad Gateway"));
    }

    #[test]
    fn stream_error_objects_become_errors() {
        assert!(parse_chunk(r#"{"error":{"message":"overloaded"}}"#).is_err());
        assert!(parse_chunk("{not json").is_err());
        let chunk = parse_chunk(
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#,
        )
        .unwrap();
        assert_eq!(chunk.choices[0].delta.content.as_deref(), Some("hi"));
    }
}
