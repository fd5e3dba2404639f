//! Any OpenAI-compatible API (OpenAI, vLLM, Ollama, Groq, ...) and Azure OpenAI, whose only
//! differences are the deployment URL, the `api-version` query and the `api-key` header.

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use serde::Deserialize;

use super::transport;
use super::{ChatProvider, ChunkStream, ProviderError, ProviderErrorKind};
use std::borrow::Cow;

use super::messages::CACHE_CONTROL;
use crate::api::{
    ChatChunk, ChatCompletion, ChatRequest, Content, EmbeddingRequest, EmbeddingResponse, Role,
};
use crate::config::{ProviderConfig, ProviderKind, Timeouts};

pub struct OpenAiProvider {
    http: reqwest::Client,
    base_url: String,
    auth: Option<(HeaderName, HeaderValue)>,
    azure_api_version: Option<String>,
    timeouts: Timeouts,
    /// The chat and embeddings URLs, parsed once (they do not depend on the model but on Azure).
    chat_url: Option<reqwest::Url>,
    embeddings_url: Option<reqwest::Url>,
}

/// A request URL, parsed already or still text (a text URL that does not parse fails the request
/// as it always did).
enum Endpoint {
    Parsed(reqwest::Url),
    Text(String),
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
        Err(_) => ProviderError::from_unparsed_body(status, body, retry_after),
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
        let fixed_url = |operation: &str| {
            (!azure)
                .then(|| reqwest::Url::parse(&format!("{base_url}/{operation}")).ok())
                .flatten()
        };
        Ok(Self {
            chat_url: fixed_url("chat/completions"),
            embeddings_url: fixed_url("embeddings"),
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

    /// The URL of an operation: parsed once at start-up unless it names the (Azure) model.
    fn endpoint(&self, model: &str, operation: &str) -> Endpoint {
        let fixed = match operation {
            "chat/completions" => self.chat_url.as_ref(),
            "embeddings" => self.embeddings_url.as_ref(),
            _ => None,
        };
        match fixed {
            Some(url) => Endpoint::Parsed(url.clone()),
            None => Endpoint::Text(self.url(model, operation)),
        }
    }

    fn post(&self, url: Endpoint, body: Vec<u8>) -> reqwest::RequestBuilder {
        let request = match url {
            Endpoint::Parsed(url) => self.http.post(url),
            Endpoint::Text(url) => self.http.post(url),
        };
        let mut request = request
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
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
}

impl ChatProvider for OpenAiProvider {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let url = self.endpoint(&request.model, "chat/completions");
        let response = transport::send(
            self.post(url, Self::encode(&*without_anthropic_parts(request)?)?),
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

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let url = self.endpoint(&request.model, "chat/completions");
        let response = transport::send(
            self.post(url, Self::encode(&*without_anthropic_parts(request)?)?),
            &self.timeouts,
            parse_error,
        )
        .await?;
        let events = transport::sse_data(response, &self.timeouts);
        let chunks = events
            .take_while(|data| {
                let done = matches!(data, Ok(d) if d.trim_ascii() == b"[DONE]");
                std::future::ready(!done)
            })
            .filter_map(|data| {
                std::future::ready(match data {
                    Err(e) => Some(Err(e)),
                    Ok(data) if data.trim_ascii().is_empty() => None,
                    Ok(data) => Some(parse_chunk(data)),
                })
            });
        Ok(chunks.boxed())
    }

    async fn embed(&self, request: &EmbeddingRequest) -> Result<EmbeddingResponse, ProviderError> {
        let url = self.endpoint(&request.model, "embeddings");
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

/// One `data:` payload of an OpenAI stream: a chunk, or an error object sent mid-stream. A chunk
/// keeps its text (when it is one line), which the relay forwards instead of serialising it again.
/// The request without what only Anthropic's API takes, which a Messages client may have sent:
/// its settings, thinking blocks and cache breakpoints are dropped; documents and tool results
/// with images, which OpenAI's API cannot take, are refused naming the block.
fn without_anthropic_parts(request: &ChatRequest) -> Result<Cow<'_, ChatRequest>, ProviderError> {
    if request.anthropic.is_none() {
        return Ok(Cow::Borrowed(request));
    }
    let refuse = |what: &str| {
        ProviderError::new(
            ProviderErrorKind::BadRequest,
            format!("{what} are not supported by this model's provider (OpenAI's API)"),
        )
        .with_param("messages")
    };
    let mut request = request.clone();
    request.anthropic = None;
    for tool in request.tools.iter_mut().flatten() {
        tool.extra.remove(CACHE_CONTROL);
    }
    for message in &mut request.messages {
        message.extra.remove(CACHE_CONTROL);
        let Some(Content::Parts(parts)) = &mut message.content else {
            continue;
        };
        if parts.iter().any(|part| part.kind == "document") {
            return Err(refuse("`document` content blocks"));
        }
        if matches!(message.role, Role::Tool | Role::Function)
            && parts.iter().any(|part| part.image_url.is_some())
        {
            return Err(refuse("`tool_result` blocks with images"));
        }
        parts.retain(|part| part.kind != "thinking" && part.kind != "redacted_thinking");
        for part in parts.iter_mut() {
            part.extra.remove(CACHE_CONTROL);
        }
        // OpenAI's assistant and tool messages take text; the parts were Anthropic's blocks.
        if matches!(message.role, Role::Assistant | Role::Tool | Role::Function) {
            let text = Content::Parts(std::mem::take(parts)).text();
            message.content = (!text.is_empty() || message.role != Role::Assistant)
                .then_some(Content::Text(text));
        }
    }
    Ok(Cow::Owned(request))
}

fn parse_chunk(data: Bytes) -> Result<ChatChunk, ProviderError> {
    let Ok(text) = std::str::from_utf8(&data) else {
        return Err(ProviderError::new(
            ProviderErrorKind::Connection,
            "stream broken: an event is not UTF-8",
        ));
    };
    // An error object is one with an `error` field: tried when the text is not a chunk, or is a
    // chunk with such a field (which the chunk keeps in `extra`), so that an ordinary chunk is
    // parsed once.
    let error_object = || {
        serde_json::from_str::<ErrorEnvelope>(text)
            .ok()
            .map(|envelope| ProviderError::new(ProviderErrorKind::Server, envelope.error.message))
    };
    let mut chunk: ChatChunk = match serde_json::from_str(text) {
        Ok(chunk) => chunk,
        Err(e) => {
            return Err(error_object().unwrap_or_else(|| {
                ProviderError::new(
                    ProviderErrorKind::Protocol,
                    format!("malformed stream chunk: {e}"),
                )
            }));
        }
    };
    if chunk.extra.contains_key("error")
        && let Some(error) = error_object()
    {
        return Err(error);
    }
    // One line, so relayed as one `data:` line (memchr: this runs over every chunk's text).
    if memchr::memchr2(b'\n', b'\r', &data).is_none() {
        chunk.raw = Some(data);
    }
    Ok(chunk)
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
    fn non_json_error_bodies_are_kept_for_the_log_only() {
        let error = parse_error(502, b"Bad Gateway", None);
        assert_eq!(error.kind, ProviderErrorKind::Server);
        assert_eq!(error.detail.as_deref(), Some("Bad Gateway"));
        assert!(!error.message.contains("Bad Gateway"));
    }

    #[test]
    fn stream_error_objects_become_errors() {
        assert!(parse_chunk(Bytes::from_static(br#"{"error":{"message":"overloaded"}}"#)).is_err());
        assert!(
            parse_chunk(Bytes::from_static(
                br#"{"\u0065rror":{"message":"overloaded"}}"#
            ))
            .is_err()
        );
        // An error object with chunk fields is still an error; an `error` that is not one is kept.
        let both = br#"{"id":"c","choices":[],"error":{"message":"overloaded"}}"#;
        assert_eq!(
            parse_chunk(Bytes::from_static(both)).unwrap_err().message,
            "overloaded"
        );
        let odd = parse_chunk(Bytes::from_static(br#"{"id":"c","error":"none"}"#)).unwrap();
        assert_eq!(odd.extra["error"], "none");
        assert!(parse_chunk(Bytes::from_static(b"{not json")).is_err());
        let text = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;
        let chunk = parse_chunk(Bytes::from_static(text.as_bytes())).unwrap();
        assert_eq!(chunk.choices[0].delta.content.as_deref(), Some("hi"));
        assert_eq!(chunk.raw.as_deref(), Some(text.as_bytes()));
        // A payload spread over several `data:` lines is not relayed as is.
        let lines = "{\"id\":\"c\",\n\"choices\":[]}";
        assert!(
            parse_chunk(Bytes::from_static(lines.as_bytes()))
                .unwrap()
                .raw
                .is_none()
        );
        assert!(parse_chunk(Bytes::from_static(b"{\"id\":\"\xff\"}")).is_err());
    }
}
