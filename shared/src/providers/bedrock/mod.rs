//! Amazon Bedrock through the Converse and ConverseStream APIs of `aws-sdk-bedrockruntime`,
//! translated to and from OpenAI's chat shapes: system prompts, content parts and images, tools
//! and tool results, stop reasons, usage, and the streaming event sequence. Requests are signed
//! with IAM credentials from the standard AWS chain (environment, profile, web identity, ECS or
//! instance role); there is no API key.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::{Region, StalledStreamProtectionConfig};
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::operation::RequestId;
use aws_sdk_bedrockruntime::operation::converse::{
    ConverseError, ConverseOutput as ConverseResponse,
};
use aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamError;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::primitives::event_stream::EventReceiver;
use aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError;
use aws_sdk_bedrockruntime::types::{
    AnyToolChoice, AutoToolChoice, ContentBlock, ContentBlockDelta, ContentBlockStart,
    ConversationRole, ConverseOutput as ConverseResult, ConverseStreamOutput, ImageBlock,
    ImageFormat, ImageSource, InferenceConfiguration, Message as BedrockMessage, S3Location,
    SpecificToolChoice, StopReason, SystemContentBlock, TokenUsage, Tool as BedrockTool,
    ToolChoice, ToolConfiguration, ToolInputSchema, ToolResultBlock, ToolResultContentBlock,
    ToolSpecification, ToolUseBlock,
};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use aws_smithy_types::{Document, Number};
use base64::Engine;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::{ChunkStream, ProviderError, ProviderErrorKind};
use crate::api::{
    AssistantMessage, ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Content, Delta,
    FunctionCall, FunctionCallDelta, JsonObject, Role, ToolCall, ToolCallDelta, Usage,
};
use crate::clock::now_secs;
use crate::config::{ProviderConfig, Timeouts};

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

    /// A provider over a client built elsewhere (a shared `SdkConfig`, or a test HTTP client).
    /// The client should come from [`client_config`] so the SDK neither retries nor times out on
    /// its own.
    pub fn with_client(client: Client, timeouts: Timeouts) -> Self {
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
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
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

    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let parts = to_converse_parts(request)?;
        let client = self.client().await?;
        let call = client
            .converse()
            .model_id(&request.model)
            .set_system(parts.system)
            .set_messages(Some(parts.messages))
            .set_inference_config(parts.inference)
            .set_tool_config(parts.tools)
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
            .map_err(|e| {
                let http = http_facts(
                    e.raw_response()
                        .map(|r| (r.status().as_u16(), r.headers().get("retry-after"))),
                );
                sdk_error(e, http)
            })?;
        let id = completion_id(response.request_id());
        from_converse_response(response, id, &request.model)
    }

    pub async fn chat_stream(&self, request: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        let parts = to_converse_parts(request)?;
        let client = self.client().await?;
        let call = client
            .converse_stream()
            .model_id(&request.model)
            .set_system(parts.system)
            .set_messages(Some(parts.messages))
            .set_inference_config(parts.inference)
            .set_tool_config(parts.tools)
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
            .map_err(|e| {
                let http = http_facts(
                    e.raw_response()
                        .map(|r| (r.status().as_u16(), r.headers().get("retry-after"))),
                );
                sdk_error(e, http)
            })?;
        let translator =
            StreamTranslator::new(completion_id(response.request_id()), &request.model);
        Ok(chunk_stream(
            response.stream,
            translator,
            Duration::from_millis(self.timeouts.idle_ms),
        ))
    }
}

/// The SDK settings the gateway needs: no SDK retries (the router retries, falls back and keeps
/// the breaker), the provider's connect timeout, and no stalled-stream protection (the router's
/// `idle_ms` governs a quiet stream, and a model may think for longer than the SDK's grace).
pub fn client_config(
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

fn bad_request(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::BadRequest, message)
}

/// The status and `Retry-After` of an HTTP error response.
fn http_facts(raw: Option<(u16, Option<&str>)>) -> Option<(u16, Option<u64>)> {
    raw.map(|(status, retry_after)| {
        (
            status,
            retry_after.and_then(|v| v.trim().parse::<u64>().ok()),
        )
    })
}

/// The exception's name, such as `ThrottlingException`.
trait Exception: ProvideErrorMetadata {
    fn exception_code(&self) -> Option<&str> {
        self.code()
    }
}

/// HTTP errors name their exception in `x-amzn-errortype`, which the SDK reads as the code.
impl Exception for ConverseError {}
impl Exception for ConverseStreamError {}

/// Exceptions inside an event stream carry their name only in a frame header, which the SDK
/// turns into the variant, not into the code.
impl Exception for ConverseStreamOutputError {
    fn exception_code(&self) -> Option<&str> {
        match self {
            Self::ThrottlingException(_) => Some("ThrottlingException"),
            Self::ValidationException(_) => Some("ValidationException"),
            Self::ServiceUnavailableException(_) => Some("ServiceUnavailableException"),
            Self::InternalServerException(_) => Some("InternalServerException"),
            Self::ModelStreamErrorException(_) => Some("ModelStreamErrorException"),
            _ => self.code(),
        }
    }
}

/// Classifies an SDK failure. `http` is the status and `Retry-After` of the HTTP response, absent
/// for exceptions sent inside an event stream.
fn sdk_error<E, R>(error: SdkError<E, R>, http: Option<(u16, Option<u64>)>) -> ProviderError
where
    E: Exception + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let kind = match &error {
        SdkError::ServiceError(context) => {
            let err = context.err();
            let (status, retry_after) = match http {
                Some((status, retry_after)) => (Some(status), retry_after),
                None => (None, None),
            };
            return service_error(
                err.exception_code(),
                err.message().unwrap_or("no message"),
                status,
                retry_after,
            );
        }
        SdkError::TimeoutError(_) => ProviderErrorKind::Timeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => ProviderErrorKind::Timeout,
        // Identity resolution fails before anything is sent: no credentials in the chain is a
        // deployment problem, like a rejected API key.
        SdkError::DispatchFailure(_) if caused_by_credentials(&error) => {
            ProviderErrorKind::Authentication
        }
        SdkError::DispatchFailure(_) => ProviderErrorKind::Connection,
        SdkError::ResponseError(_) => ProviderErrorKind::Protocol,
        SdkError::ConstructionFailure(_) => ProviderErrorKind::BadRequest,
        _ => ProviderErrorKind::Server,
    };
    ProviderError::new(kind, DisplayErrorContext(&error).to_string())
}

fn caused_by_credentials(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<CredentialsError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// A Bedrock exception as a `ProviderError`, through the shared status classifier.
fn service_error(
    code: Option<&str>,
    message: &str,
    http_status: Option<u16>,
    retry_after: Option<u64>,
) -> ProviderError {
    let status = match code {
        // Statuses that would mislead the classifier: a quota is a rate limit (400 upstream), a
        // model's own failure is the upstream's fault (424), and a cold model is unavailable.
        Some("ServiceQuotaExceededException") => 429,
        Some("ModelErrorException" | "ModelStreamErrorException") => 502,
        Some("ModelNotReadyException") => 503,
        _ => match http_status {
            Some(status) if status >= 400 => status,
            // Exceptions inside an event stream carry no HTTP status.
            _ => match code {
                Some("ThrottlingException") => 429,
                Some("ValidationException") => 400,
                Some("AccessDeniedException") => 403,
                Some("ResourceNotFoundException") => 404,
                Some("ModelTimeoutException") => 408,
                Some("ServiceUnavailableException") => 503,
                _ => 500,
            },
        },
    };
    let text = match code {
        Some(code) => format!("{code}: {message}"),
        None => message.to_owned(),
    };
    // Bedrock has no error code for an over-long prompt, only a ValidationException's wording.
    let context = (status == 400 && is_context_overflow(message))
        .then(|| "context_length_exceeded".to_owned());
    ProviderError::from_status(status, text, context, None, retry_after)
}

fn is_context_overflow(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "too long",
        "context length",
        "context window",
        "maximum context",
        "too many input tokens",
        "too many tokens",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

/// A Converse request's parts, in the SDK's types.
#[derive(Debug)]
struct ConverseParts {
    system: Option<Vec<SystemContentBlock>>,
    messages: Vec<BedrockMessage>,
    inference: Option<InferenceConfiguration>,
    tools: Option<ToolConfiguration>,
}

fn build_error(e: impl std::fmt::Display) -> ProviderError {
    bad_request(format!("cannot build the Bedrock request: {e}"))
}

fn image_format(media_type: &str) -> Option<ImageFormat> {
    match media_type.to_ascii_lowercase().as_str() {
        "png" | "image/png" => Some(ImageFormat::Png),
        "jpeg" | "jpg" | "image/jpeg" | "image/jpg" => Some(ImageFormat::Jpeg),
        "gif" | "image/gif" => Some(ImageFormat::Gif),
        "webp" | "image/webp" => Some(ImageFormat::Webp),
        _ => None,
    }
}

/// An OpenAI image part as a Bedrock image block: data URLs become bytes, `s3://` URIs an S3
/// location. Bedrock cannot fetch http(s) URLs.
fn image_block(url: &str) -> Result<ContentBlock, ProviderError> {
    let unsupported = |what: &str| {
        bad_request(format!(
            "Bedrock models accept images as base64 data URLs or s3:// URIs of PNG, JPEG, GIF \
             or WebP files, not {what}"
        ))
    };
    let (format, source) = if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) = rest
            .split_once(";base64,")
            .ok_or_else(|| bad_request("image data URLs must be base64 encoded"))?;
        let format = image_format(media_type).ok_or_else(|| unsupported(media_type))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| bad_request(format!("image data URL is not valid base64: {e}")))?;
        (format, ImageSource::Bytes(Blob::new(bytes)))
    } else if url.starts_with("s3://") {
        let extension = url.rsplit_once('.').map_or("", |(_, ext)| ext);
        let format = image_format(extension).ok_or_else(|| unsupported("this file type"))?;
        let location = S3Location::builder()
            .uri(url)
            .build()
            .map_err(build_error)?;
        (format, ImageSource::S3Location(location))
    } else {
        return Err(unsupported("http(s) URLs"));
    };
    ImageBlock::builder()
        .format(format)
        .source(source)
        .build()
        .map(ContentBlock::Image)
        .map_err(build_error)
}

fn content_blocks(content: &Content) -> Result<Vec<ContentBlock>, ProviderError> {
    match content {
        Content::Text(text) if text.is_empty() => Ok(Vec::new()),
        Content::Text(text) => Ok(vec![ContentBlock::Text(text.clone())]),
        Content::Parts(parts) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                match (part.kind.as_str(), &part.text, &part.image_url) {
                    ("text", Some(text), _) if !text.is_empty() => {
                        blocks.push(ContentBlock::Text(text.clone()));
                    }
                    ("image_url", _, Some(image)) => blocks.push(image_block(&image.url)?),
                    ("text", _, _) => {}
                    (other, _, _) => {
                        return Err(bad_request(format!(
                            "content part type `{other}` is not supported by Bedrock models"
                        )));
                    }
                }
            }
            Ok(blocks)
        }
    }
}

fn tool_choice(choice: &Value) -> Result<Option<ToolChoice>, ProviderError> {
    Ok(match choice {
        Value::String(s) if s == "auto" => {
            Some(ToolChoice::Auto(AutoToolChoice::builder().build()))
        }
        Value::String(s) if s == "required" => {
            Some(ToolChoice::Any(AnyToolChoice::builder().build()))
        }
        Value::Object(o) => match o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => Some(ToolChoice::Tool(
                SpecificToolChoice::builder()
                    .name(name)
                    .build()
                    .map_err(build_error)?,
            )),
            None => None,
        },
        _ => None,
    })
}

fn to_converse_parts(request: &ChatRequest) -> Result<ConverseParts, ProviderError> {
    if request.choices() > 1 {
        let mut error = bad_request("Bedrock models support only n = 1");
        error.param = Some("n".to_owned());
        return Err(error);
    }
    let mut system = Vec::new();
    let mut turns: Vec<(ConversationRole, Vec<ContentBlock>)> =
        Vec::with_capacity(request.messages.len());
    let mut has_tool_blocks = false;
    for message in &request.messages {
        let (role, blocks) = match message.role {
            Role::System | Role::Developer => {
                if let Some(content) = &message.content {
                    let text = content.text();
                    if !text.is_empty() {
                        system.push(SystemContentBlock::Text(text));
                    }
                }
                continue;
            }
            Role::User => (
                ConversationRole::User,
                match &message.content {
                    Some(content) => content_blocks(content)?,
                    None => Vec::new(),
                },
            ),
            Role::Assistant => {
                let mut blocks = match &message.content {
                    Some(content) => content_blocks(content)?,
                    None => Vec::new(),
                };
                for call in message.tool_calls.iter().flatten() {
                    let input = call.arguments_json().map_err(bad_request)?;
                    let block = ToolUseBlock::builder()
                        .tool_use_id(&call.id)
                        .name(&call.function.name)
                        .input(json_to_document(&input))
                        .build()
                        .map_err(build_error)?;
                    blocks.push(ContentBlock::ToolUse(block));
                    has_tool_blocks = true;
                }
                (ConversationRole::Assistant, blocks)
            }
            Role::Tool | Role::Function => {
                let text = message
                    .content
                    .as_ref()
                    .map(Content::text)
                    .unwrap_or_default();
                let id = message
                    .tool_call_id
                    .clone()
                    .or_else(|| message.name.clone())
                    .unwrap_or_default();
                // Bedrock rejects blank text blocks; an empty result is an empty content list.
                let content = if text.is_empty() {
                    Vec::new()
                } else {
                    vec![ToolResultContentBlock::Text(text)]
                };
                let block = ToolResultBlock::builder()
                    .tool_use_id(id)
                    .set_content(Some(content))
                    .build()
                    .map_err(build_error)?;
                has_tool_blocks = true;
                (
                    ConversationRole::User,
                    vec![ContentBlock::ToolResult(block)],
                )
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // Converse wants alternating roles: consecutive turns of one role are merged, which is
        // also how several tool results answering one assistant turn must be sent.
        match turns.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages = turns
        .into_iter()
        .map(|(role, content)| {
            BedrockMessage::builder()
                .role(role)
                .set_content(Some(content))
                .build()
                .map_err(build_error)
        })
        .collect::<Result<Vec<_>, _>>()?;

    let specs = request
        .tools
        .iter()
        .flatten()
        .filter_map(|t| t.function.as_ref())
        .map(|f| {
            let schema = f
                .parameters
                .clone()
                .unwrap_or_else(|| json!({"type": "object"}));
            ToolSpecification::builder()
                .name(&f.name)
                .set_description(f.description.clone())
                .input_schema(ToolInputSchema::Json(json_to_document(&schema)))
                .build()
                .map(BedrockTool::ToolSpec)
                .map_err(build_error)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let choice_none = matches!(&request.tool_choice, Some(Value::String(s)) if s == "none");
    // Converse has no `none`: the tools are left out. A conversation that already holds tool
    // calls cannot be sent without its tools, so there they stay and the model decides.
    let tools = if specs.is_empty() || (choice_none && !has_tool_blocks) {
        None
    } else {
        let choice = match &request.tool_choice {
            Some(choice) if !choice_none => tool_choice(choice)?,
            _ => None,
        };
        Some(
            ToolConfiguration::builder()
                .set_tools(Some(specs))
                .set_tool_choice(choice)
                .build()
                .map_err(build_error)?,
        )
    };

    let stop = request.stop.as_ref().map(|s| s.to_vec());
    let inference = (request.max_output_tokens().is_some()
        || request.temperature.is_some()
        || request.top_p.is_some()
        || stop.is_some())
    .then(|| {
        InferenceConfiguration::builder()
            .set_max_tokens(
                request
                    .max_output_tokens()
                    .map(|t| i32::try_from(t).unwrap_or(i32::MAX)),
            )
            // Bedrock's models take temperatures in 0..=1; OpenAI's range is 0..=2.
            .set_temperature(request.temperature.map(|t| t.min(1.0) as f32))
            .set_top_p(request.top_p.map(|p| p as f32))
            .set_stop_sequences(stop)
            .build()
    });
    Ok(ConverseParts {
        system: (!system.is_empty()).then_some(system),
        messages,
        inference,
        tools,
    })
}

fn json_to_document(value: &Value) -> Document {
    match value {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(if let Some(u) = n.as_u64() {
            Number::PosInt(u)
        } else if let Some(i) = n.as_i64() {
            Number::NegInt(i)
        } else {
            Number::Float(n.as_f64().unwrap_or(0.0))
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(json_to_document).collect()),
        Value::Object(map) => Document::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), json_to_document(v)))
                .collect(),
        ),
    }
}

/// A document as JSON; object keys are sorted, since the SDK keeps them in a `HashMap`, so the
/// same tool input always gives the same arguments string.
fn document_to_json(document: &Document) -> Value {
    match document {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => Value::from(*u),
        Document::Number(Number::NegInt(i)) => Value::from(*i),
        Document::Number(Number::Float(f)) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        Document::String(s) => Value::String(s.clone()),
        Document::Array(items) => Value::Array(items.iter().map(document_to_json).collect()),
        Document::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), document_to_json(v)))
                    .collect(),
            )
        }
    }
}

fn tokens(n: i32) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Usage in OpenAI's terms: cache reads and writes are prompt tokens too.
fn usage(usage: &TokenUsage) -> Usage {
    let prompt = tokens(usage.input_tokens)
        + usage.cache_read_input_tokens.map_or(0, tokens)
        + usage.cache_write_input_tokens.map_or(0, tokens);
    Usage::new(prompt, tokens(usage.output_tokens))
}

fn finish_reason(reason: &StopReason) -> String {
    match reason {
        StopReason::MaxTokens | StopReason::ModelContextWindowExceeded => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::GuardrailIntervened | StopReason::ContentFiltered => "content_filter",
        _ => "stop",
    }
    .to_owned()
}

fn from_converse_response(
    response: ConverseResponse,
    id: String,
    model: &str,
) -> Result<ChatCompletion, ProviderError> {
    let Some(ConverseResult::Message(message)) = response.output else {
        return Err(ProviderError::new(
            ProviderErrorKind::Protocol,
            "Converse response has no message",
        ));
    };
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block {
            ContentBlock::Text(t) => text.push_str(&t),
            ContentBlock::ToolUse(tool) => tool_calls.push(ToolCall {
                id: tool.tool_use_id,
                kind: "function".to_owned(),
                function: FunctionCall {
                    name: tool.name,
                    arguments: document_to_json(&tool.input).to_string(),
                },
            }),
            _ => {}
        }
    }
    Ok(ChatCompletion {
        id,
        object: "chat.completion".to_owned(),
        created: now_secs(),
        model: model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant".to_owned(),
                content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                extra: JsonObject::new(),
            },
            finish_reason: Some(finish_reason(&response.stop_reason)),
            logprobs: None,
            extra: JsonObject::new(),
        }],
        usage: response.usage.as_ref().map(usage),
        extra: JsonObject::new(),
    })
}

/// The ConverseStream events as OpenAI chunks; a gap longer than `idle` between events ends the
/// stream with a timeout error, and an exception event or a broken body with its error.
fn chunk_stream(
    receiver: EventReceiver<ConverseStreamOutput, ConverseStreamOutputError>,
    translator: StreamTranslator,
    idle: Duration,
) -> ChunkStream {
    futures_util::stream::unfold(Some((receiver, translator)), move |state| async move {
        let (mut receiver, mut translator) = state?;
        loop {
            if let Some(chunk) = translator.pending.pop_front() {
                return Some((Ok(chunk), Some((receiver, translator))));
            }
            if translator.finished {
                return None;
            }
            match tokio::time::timeout(idle, receiver.recv()).await {
                Err(_) => {
                    let error = ProviderError::new(
                        ProviderErrorKind::Timeout,
                        format!("stream stalled: no event for {} ms", idle.as_millis()),
                    );
                    return Some((Err(error), None));
                }
                Ok(Ok(Some(event))) => translator.translate(event),
                // The upstream closed: whatever was not sent (a finish, usage) never will be.
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => return Some((Err(sdk_error(e, None)), None)),
            }
        }
    })
    .boxed()
}

/// Turns ConverseStream events into OpenAI chunks in the order the Anthropic translator emits
/// them: a role chunk, content and tool-call deltas, a finish chunk, then a usage-only chunk.
struct StreamTranslator {
    id: String,
    model: String,
    created: u64,
    /// Bedrock content-block index -> OpenAI tool-call index.
    tool_indexes: HashMap<i32, u32>,
    stopped: bool,
    usage: Option<Usage>,
    pending: VecDeque<ChatChunk>,
    finished: bool,
}

impl StreamTranslator {
    fn new(id: String, model: &str) -> Self {
        Self {
            id,
            model: model.to_owned(),
            created: now_secs(),
            tool_indexes: HashMap::new(),
            stopped: false,
            usage: None,
            pending: VecDeque::new(),
            finished: false,
        }
    }

    fn push(&mut self, delta: Delta, finish_reason: Option<String>) {
        self.pending.push_back(ChatChunk::new(
            &self.id,
            self.created,
            &self.model,
            vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
                logprobs: None,
            }],
        ));
    }

    fn push_tool_delta(
        &mut self,
        index: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    ) {
        let delta = Delta {
            tool_calls: Some(vec![ToolCallDelta {
                index,
                kind: id.as_ref().map(|_| "function".to_owned()),
                id,
                function: Some(FunctionCallDelta {
                    name,
                    arguments: Some(arguments),
                }),
            }]),
            ..Delta::default()
        };
        self.push(delta, None);
    }

    /// The usage-only chunk that ends the stream, once both the stop and the usage are known.
    fn finish_if_complete(&mut self) {
        if let (true, Some(usage)) = (self.stopped, self.usage) {
            let mut chunk = ChatChunk::new(&self.id, self.created, &self.model, Vec::new());
            chunk.usage = Some(usage);
            self.pending.push_back(chunk);
            self.finished = true;
        }
    }

    /// Queues the chunks an event becomes, if any. Events after the usage chunk are ignored.
    fn translate(&mut self, event: ConverseStreamOutput) {
        if self.finished {
            return;
        }
        match event {
            ConverseStreamOutput::MessageStart(_) => self.push(
                Delta {
                    role: Some("assistant".to_owned()),
                    content: Some(String::new()),
                    ..Delta::default()
                },
                None,
            ),
            ConverseStreamOutput::ContentBlockStart(start) => {
                if let Some(ContentBlockStart::ToolUse(tool)) = start.start {
                    let tool_index = self.tool_indexes.len() as u32;
                    self.tool_indexes
                        .insert(start.content_block_index, tool_index);
                    self.push_tool_delta(
                        tool_index,
                        Some(tool.tool_use_id),
                        Some(tool.name),
                        String::new(),
                    );
                }
            }
            ConverseStreamOutput::ContentBlockDelta(delta) => match delta.delta {
                Some(ContentBlockDelta::Text(text)) => self.push(
                    Delta {
                        content: Some(text),
                        ..Delta::default()
                    },
                    None,
                ),
                Some(ContentBlockDelta::ToolUse(tool)) => {
                    if let Some(&tool_index) = self.tool_indexes.get(&delta.content_block_index) {
                        self.push_tool_delta(tool_index, None, None, tool.input);
                    }
                }
                _ => {}
            },
            ConverseStreamOutput::MessageStop(stop) => {
                self.stopped = true;
                self.push(Delta::default(), Some(finish_reason(&stop.stop_reason)));
                self.finish_if_complete();
            }
            ConverseStreamOutput::Metadata(metadata) => {
                if let Some(u) = &metadata.usage {
                    self.usage = Some(usage(u));
                }
                self.finish_if_complete();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_bedrockruntime::config::Credentials;
    use aws_sdk_bedrockruntime::primitives::event_stream::{Header, HeaderValue, Message};
    use aws_sdk_bedrockruntime::types::{
        ContentBlockDeltaEvent, ContentBlockStartEvent, ContentBlockStopEvent,
        ConverseStreamMetadataEvent, MessageStartEvent, MessageStopEvent, ToolUseBlockDelta,
        ToolUseBlockStart,
    };
    use aws_smithy_http_client::test_util::{ReplayEvent, StaticReplayClient};
    use aws_smithy_types::body::SdkBody;

    use crate::api::CompletionAssembler;
    use crate::providers::ErrorSource;

    const SOURCE: ErrorSource<'static> = ErrorSource {
        provider: "bedrock",
        model: "claude",
        upstream_model: "anthropic.claude-3-haiku",
    };

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    fn weather_request() -> Value {
        json!({
            "model": "anthropic.claude-3-haiku",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": "Use metric units."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "t2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "t2", "content": "snow"},
                {"role": "user", "content": "And tomorrow?"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
            "stop": "END",
            "max_tokens": 100,
            "temperature": 1.7,
            "top_p": 0.5
        })
    }

    #[test]
    fn system_prompts_images_tools_and_tool_results_are_translated() {
        let parts = to_converse_parts(&request(weather_request())).unwrap();
        assert_eq!(
            parts.system,
            Some(vec![
                SystemContentBlock::Text("Be brief.".into()),
                SystemContentBlock::Text("Use metric units.".into())
            ])
        );
        let roles: Vec<_> = parts.messages.iter().map(|m| m.role.clone()).collect();
        assert_eq!(
            roles,
            [
                ConversationRole::User,
                ConversationRole::Assistant,
                ConversationRole::User
            ]
        );
        let ContentBlock::Image(image) = &parts.messages[0].content[1] else {
            panic!("expected an image: {:?}", parts.messages[0].content);
        };
        assert_eq!(image.format, ImageFormat::Png);
        assert_eq!(
            image.source,
            Some(ImageSource::Bytes(Blob::new(vec![0x89, 0x50, 0x4e, 0x47])))
        );
        let ContentBlock::ToolUse(call) = &parts.messages[1].content[0] else {
            panic!("expected a tool use: {:?}", parts.messages[1].content);
        };
        assert_eq!(
            (call.tool_use_id.as_str(), call.name.as_str()),
            ("t1", "get_weather")
        );
        assert_eq!(document_to_json(&call.input), json!({"city": "Paris"}));
        // Both tool results and the next user text are one user turn.
        let last = &parts.messages[2].content;
        assert_eq!(last.len(), 3);
        let ContentBlock::ToolResult(result) = &last[1] else {
            panic!("expected a tool result: {last:?}");
        };
        assert_eq!(result.tool_use_id, "t2");
        assert_eq!(
            result.content,
            [ToolResultContentBlock::Text("snow".into())]
        );
        assert_eq!(last[2], ContentBlock::Text("And tomorrow?".into()));

        let tools = parts.tools.unwrap();
        let BedrockTool::ToolSpec(spec) = &tools.tools[0] else {
            panic!("expected a tool spec");
        };
        assert_eq!(spec.name, "get_weather");
        assert_eq!(spec.description.as_deref(), Some("d"));
        let Some(ToolInputSchema::Json(schema)) = &spec.input_schema else {
            panic!("expected a JSON schema");
        };
        assert_eq!(
            document_to_json(schema)["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(
            tools.tool_choice,
            Some(ToolChoice::Any(AnyToolChoice::builder().build()))
        );
        let inference = parts.inference.unwrap();
        assert_eq!(inference.max_tokens, Some(100));
        assert_eq!(inference.temperature, Some(1.0));
        assert_eq!(inference.top_p, Some(0.5));
        assert_eq!(inference.stop_sequences, Some(vec!["END".to_owned()]));
    }

    #[test]
    fn tool_choice_maps_to_auto_any_tool_or_no_tools() {
        let with_choice = |choice: Value, messages: Value| {
            to_converse_parts(&request(json!({
                "model": "m",
                "messages": messages,
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": choice
            })))
            .unwrap()
            .tools
        };
        let plain = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(
            with_choice(json!("auto"), plain.clone())
                .unwrap()
                .tool_choice,
            Some(ToolChoice::Auto(AutoToolChoice::builder().build()))
        );
        assert_eq!(
            with_choice(
                json!({"type": "function", "function": {"name": "f"}}),
                plain.clone()
            )
            .unwrap()
            .tool_choice,
            Some(ToolChoice::Tool(
                SpecificToolChoice::builder().name("f").build().unwrap()
            ))
        );
        assert_eq!(with_choice(json!("none"), plain), None);
        // With tool calls in the history Bedrock requires the tools: they stay, with no choice.
        let history = json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "c", "content": ""}
        ]);
        let kept = with_choice(json!("none"), history).unwrap();
        assert_eq!(kept.tools.len(), 1);
        assert_eq!(kept.tool_choice, None);
    }

    #[test]
    fn a_plain_request_has_no_inference_config_or_tools() {
        let parts = to_converse_parts(&request(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        ))
        .unwrap();
        assert!(parts.system.is_none() && parts.inference.is_none() && parts.tools.is_none());
        assert_eq!(parts.messages[0].content, [ContentBlock::Text("hi".into())]);
    }

    #[test]
    fn unsupported_inputs_are_bad_requests_naming_the_problem() {
        let fails = |body: Value| to_converse_parts(&request(body)).unwrap_err();
        let n =
            fails(json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(
            (n.kind, n.param.as_deref()),
            (ProviderErrorKind::BadRequest, Some("n"))
        );
        let image = |url: &str| {
            fails(
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}}
                ]}]}),
            )
        };
        assert!(image("https://x/cat.png").message.contains("http(s) URLs"));
        assert!(
            image("data:image/tiff;base64,AAAA")
                .message
                .contains("image/tiff")
        );
        assert!(
            image("data:image/png;base64,@@@")
                .message
                .contains("base64")
        );
        let arguments = fails(json!({"model": "m", "messages": [
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}
        ]}));
        assert!(arguments.message.contains("c1"), "{arguments}");
    }

    #[test]
    fn s3_images_keep_their_location_and_format() {
        let block = image_block("s3://bucket/cat.JPG").unwrap();
        let ContentBlock::Image(image) = block else {
            panic!("expected an image");
        };
        assert_eq!(image.format, ImageFormat::Jpeg);
        assert_eq!(
            image.source,
            Some(ImageSource::S3Location(
                S3Location::builder()
                    .uri("s3://bucket/cat.JPG")
                    .build()
                    .unwrap()
            ))
        );
    }

    #[test]
    fn documents_convert_to_json_and_back() {
        let value = json!({"b": [1, -2, 2.5, "s", null, true], "a": {"nested": {}}});
        let back = document_to_json(&json_to_document(&value));
        assert_eq!(back, value);
        // Keys come out sorted whatever order the SDK's map holds them in.
        assert_eq!(
            back.to_string(),
            r#"{"a":{"nested":{}},"b":[1,-2,2.5,"s",null,true]}"#
        );
    }

    #[test]
    fn stop_reasons_map_to_openai_finish_reasons() {
        for (reason, expected) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
            ("something_new", "stop"),
        ] {
            assert_eq!(
                finish_reason(&StopReason::from(reason)),
                expected,
                "{reason}"
            );
        }
    }

    #[test]
    fn responses_map_text_tool_use_stop_reason_and_usage() {
        let message = BedrockMessage::builder()
            .role(ConversationRole::Assistant)
            .content(ContentBlock::Text("Checking.".into()))
            .content(ContentBlock::ToolUse(
                ToolUseBlock::builder()
                    .tool_use_id("tooluse_1")
                    .name("get_weather")
                    .input(json_to_document(&json!({"city": "Paris", "days": 2})))
                    .build()
                    .unwrap(),
            ))
            .build()
            .unwrap();
        let response = ConverseResponse::builder()
            .output(ConverseResult::Message(message))
            .stop_reason(StopReason::ToolUse)
            .usage(
                TokenUsage::builder()
                    .input_tokens(10)
                    .output_tokens(5)
                    .total_tokens(20)
                    .cache_read_input_tokens(2)
                    .cache_write_input_tokens(3)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let completion =
            from_converse_response(response, "chatcmpl-1".into(), "anthropic.claude").unwrap();
        assert_eq!(
            (completion.id.as_str(), completion.model.as_str()),
            ("chatcmpl-1", "anthropic.claude")
        );
        let choice = &completion.choices[0];
        assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(choice.message.content.as_deref(), Some("Checking."));
        let calls = choice.message.tool_calls.as_ref().unwrap();
        assert_eq!(calls[0].id, "tooluse_1");
        assert_eq!(calls[0].function.arguments, r#"{"city":"Paris","days":2}"#);
        assert_eq!(completion.usage, Some(Usage::new(15, 5)));
    }

    fn stream_events() -> Vec<ConverseStreamOutput> {
        vec![
            ConverseStreamOutput::MessageStart(
                MessageStartEvent::builder()
                    .role(ConversationRole::Assistant)
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::ContentBlockDelta(
                ContentBlockDeltaEvent::builder()
                    .content_block_index(0)
                    .delta(ContentBlockDelta::Text("Hi".into()))
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::ContentBlockStop(
                ContentBlockStopEvent::builder()
                    .content_block_index(0)
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::ContentBlockStart(
                ContentBlockStartEvent::builder()
                    .content_block_index(1)
                    .start(ContentBlockStart::ToolUse(
                        ToolUseBlockStart::builder()
                            .tool_use_id("tooluse_1")
                            .name("f")
                            .build()
                            .unwrap(),
                    ))
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::ContentBlockDelta(
                ContentBlockDeltaEvent::builder()
                    .content_block_index(1)
                    .delta(ContentBlockDelta::ToolUse(
                        ToolUseBlockDelta::builder()
                            .input("{\"a\":")
                            .build()
                            .unwrap(),
                    ))
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::ContentBlockDelta(
                ContentBlockDeltaEvent::builder()
                    .content_block_index(1)
                    .delta(ContentBlockDelta::ToolUse(
                        ToolUseBlockDelta::builder().input("1}").build().unwrap(),
                    ))
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::MessageStop(
                MessageStopEvent::builder()
                    .stop_reason(StopReason::ToolUse)
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::Metadata(
                ConverseStreamMetadataEvent::builder()
                    .usage(
                        TokenUsage::builder()
                            .input_tokens(7)
                            .output_tokens(9)
                            .total_tokens(16)
                            .build()
                            .unwrap(),
                    )
                    .build(),
            ),
        ]
    }

    fn assert_tool_call_completion(chunks: &[ChatChunk]) {
        // The sequence clients see: a role chunk first, a finish chunk, then usage alone.
        assert_eq!(
            chunks[0].choices[0].delta.role.as_deref(),
            Some("assistant")
        );
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(
            finish.choices[0].finish_reason.as_deref(),
            Some("tool_calls")
        );
        let last = &chunks[chunks.len() - 1];
        assert!(last.choices.is_empty());
        assert_eq!(last.usage, Some(Usage::new(7, 9)));

        let mut assembler = CompletionAssembler::default();
        for chunk in chunks {
            assembler.push(chunk).unwrap();
        }
        assert!(assembler.is_finished());
        let completion = assembler.into_completion();
        assert_eq!(completion.choices[0].message.content.as_deref(), Some("Hi"));
        let calls = completion.choices[0].message.tool_calls.as_ref().unwrap();
        assert_eq!(
            (
                calls[0].id.as_str(),
                calls[0].function.name.as_str(),
                calls[0].function.arguments.as_str()
            ),
            ("tooluse_1", "f", "{\"a\":1}")
        );
        assert_eq!(completion.usage, Some(Usage::new(7, 9)));
    }

    #[test]
    fn stream_events_become_openai_chunks() {
        let mut t = StreamTranslator::new("chatcmpl-1".into(), "m");
        for event in stream_events() {
            t.translate(event);
        }
        assert!(t.finished);
        let chunks: Vec<ChatChunk> = t.pending.drain(..).collect();
        assert_eq!(chunks.len(), 7);
        assert!(chunks.iter().all(|c| c.id == "chatcmpl-1"));
        assert_tool_call_completion(&chunks);
    }

    #[test]
    fn usage_before_the_stop_still_comes_last() {
        let mut events = stream_events();
        events.swap(6, 7);
        let mut t = StreamTranslator::new("c".into(), "m");
        for event in events {
            t.translate(event);
        }
        let chunks: Vec<ChatChunk> = t.pending.drain(..).collect();
        assert_tool_call_completion(&chunks);
    }

    #[test]
    fn service_errors_are_classified() {
        let throttled = service_error(Some("ThrottlingException"), "slow down", Some(429), Some(3));
        assert_eq!(throttled.kind, ProviderErrorKind::RateLimited);
        assert_eq!(throttled.retry_after_secs, Some(3));
        for message in [
            "Input is too long for requested model.",
            "prompt is too long: 210000 tokens > 200000 maximum",
            "The input exceeds the model's context window",
        ] {
            let e = service_error(Some("ValidationException"), message, Some(400), None);
            assert_eq!(
                e.kind,
                ProviderErrorKind::ContextLengthExceeded,
                "{message}"
            );
        }
        let invalid = service_error(Some("ValidationException"), "bad role", Some(400), None);
        assert_eq!(invalid.kind, ProviderErrorKind::BadRequest);
        assert_eq!(invalid.message, "ValidationException: bad role");
        assert_eq!(invalid.code, None);
        for (code, status, kind) in [
            (
                "AccessDeniedException",
                403,
                ProviderErrorKind::Authentication,
            ),
            (
                "ResourceNotFoundException",
                404,
                ProviderErrorKind::NotFound,
            ),
            ("ModelTimeoutException", 408, ProviderErrorKind::Timeout),
            ("ModelNotReadyException", 429, ProviderErrorKind::Server),
            (
                "ServiceUnavailableException",
                503,
                ProviderErrorKind::Server,
            ),
            ("ModelErrorException", 424, ProviderErrorKind::Server),
            (
                "ServiceQuotaExceededException",
                400,
                ProviderErrorKind::RateLimited,
            ),
        ] {
            assert_eq!(
                service_error(Some(code), "x", Some(status), None).kind,
                kind,
                "{code}"
            );
        }
        // Exceptions inside a stream have no HTTP status: the code decides.
        for (code, kind) in [
            ("ThrottlingException", ProviderErrorKind::RateLimited),
            ("ValidationException", ProviderErrorKind::BadRequest),
            ("ModelStreamErrorException", ProviderErrorKind::Server),
            ("InternalServerException", ProviderErrorKind::Server),
        ] {
            assert_eq!(
                service_error(Some(code), "x", None, None).kind,
                kind,
                "{code}"
            );
        }
    }

    #[test]
    fn bedrock_config_needs_no_base_url_or_api_key() {
        let config = crate::config::Config::from_toml(
            r#"
            [providers.bedrock]
            kind = "bedrock"
            region = "eu-west-1"
            "#,
        )
        .unwrap();
        assert_eq!(
            config.providers["bedrock"].region.as_deref(),
            Some("eu-west-1")
        );
        let err = crate::config::Config::from_toml(
            r#"
            [providers.bedrock]
            kind = "bedrock"
            api_key_env = "AWS_SECRET_ACCESS_KEY"
            "#,
        )
        .unwrap_err();
        assert_eq!(err.field, "providers.bedrock.api_key_env");
    }

    // Through the SDK: a replay HTTP client answers with recorded-shape responses.

    const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

    fn replay(
        status: u16,
        headers: &[(&str, &str)],
        body: impl Into<SdkBody>,
    ) -> StaticReplayClient {
        let mut response = http::Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        StaticReplayClient::new(vec![ReplayEvent::new(
            http::Request::builder()
                .uri("https://bedrock-runtime.us-east-1.amazonaws.com/")
                .body(SdkBody::empty())
                .unwrap(),
            response.body(body.into()).unwrap(),
        )])
    }

    fn provider_over(
        http: impl aws_sdk_bedrockruntime::config::HttpClient + 'static,
    ) -> BedrockProvider {
        let config = client_config(
            aws_sdk_bedrockruntime::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
                .http_client(http),
            &Timeouts::default(),
        )
        .build();
        BedrockProvider::with_client(Client::from_conf(config), Timeouts::default())
    }

    fn sent_body(client: &StaticReplayClient) -> Value {
        let requests: Vec<_> = client.actual_requests().collect();
        assert_eq!(requests.len(), 1, "the SDK must not retry on its own");
        serde_json::from_slice(requests[0].body().bytes().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn converse_sends_the_translated_request_and_translates_the_answer() {
        let http = replay(
            200,
            &[
                ("content-type", "application/json"),
                ("x-amzn-requestid", "req-123"),
            ],
            json!({
                "output": {"message": {"role": "assistant", "content": [
                    {"text": "Let me check."},
                    {"toolUse": {"toolUseId": "tooluse_9", "name": "get_weather", "input": {"city": "Paris"}}}
                ]}},
                "stopReason": "tool_use",
                "usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 46, "cacheReadInputTokens": 4},
                "metrics": {"latencyMs": 321}
            })
            .to_string(),
        );
        let mut body = weather_request();
        body["model"] = json!(MODEL);
        let completion = provider_over(http.clone())
            .chat(&request(body))
            .await
            .unwrap();

        let sent = http.actual_requests().next().unwrap();
        assert!(
            sent.uri()
                .ends_with("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"),
            "{}",
            sent.uri()
        );
        assert!(
            sent.headers()
                .get("authorization")
                .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/")),
            "requests are SigV4-signed with the IAM credentials"
        );
        let body = sent_body(&http);
        assert_eq!(
            body["system"],
            json!([{"text": "Be brief."}, {"text": "Use metric units."}])
        );
        let messages = &body["messages"];
        assert_eq!(messages[0]["content"][0], json!({"text": "Weather?"}));
        assert_eq!(
            messages[0]["content"][1],
            json!({"image": {"format": "png", "source": {"bytes": "iVBORw=="}}})
        );
        assert_eq!(
            messages[1],
            json!({"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Paris"}}},
                {"toolUse": {"toolUseId": "t2", "name": "get_weather", "input": {"city": "Oslo"}}}
            ]})
        );
        assert_eq!(messages[2]["role"], "user");
        assert_eq!(
            messages[2]["content"][0],
            json!({"toolResult": {"toolUseId": "t1", "content": [{"text": "sunny"}]}})
        );
        assert_eq!(
            body["toolConfig"],
            json!({
                "tools": [{"toolSpec": {"name": "get_weather", "description": "d",
                    "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}}}}],
                "toolChoice": {"any": {}}
            })
        );
        assert_eq!(
            body["inferenceConfig"],
            json!({"maxTokens": 100, "temperature": 1.0, "topP": 0.5, "stopSequences": ["END"]})
        );

        assert_eq!(completion.id, "chatcmpl-req-123");
        assert_eq!(completion.model, MODEL);
        let choice = &completion.choices[0];
        assert_eq!(choice.message.content.as_deref(), Some("Let me check."));
        assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
        let calls = choice.message.tool_calls.as_ref().unwrap();
        assert_eq!(
            (calls[0].id.as_str(), calls[0].function.arguments.as_str()),
            ("tooluse_9", r#"{"city":"Paris"}"#)
        );
        assert_eq!(completion.usage, Some(Usage::new(34, 12)));
    }

    /// One event-stream frame as Bedrock sends it.
    fn frame(headers: &[(&str, &str)], payload: Value) -> Vec<u8> {
        let mut message = Message::new(payload.to_string().into_bytes());
        for (name, value) in headers {
            message = message.add_header(Header::new(
                name.to_string(),
                HeaderValue::String(value.to_string().into()),
            ));
        }
        let mut out = Vec::new();
        aws_smithy_eventstream::frame::write_message_to(&message, &mut out).unwrap();
        out
    }

    fn event(kind: &str, payload: Value) -> Vec<u8> {
        frame(
            &[
                (":event-type", kind),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload,
        )
    }

    fn stream_body(events: Vec<Vec<u8>>) -> StaticReplayClient {
        replay(
            200,
            &[
                ("content-type", "application/vnd.amazon.eventstream"),
                ("x-amzn-requestid", "req-s"),
            ],
            events.concat(),
        )
    }

    async fn collect(stream: ChunkStream) -> Vec<Result<ChatChunk, ProviderError>> {
        stream.collect().await
    }

    #[tokio::test]
    async fn converse_stream_is_reassembled_into_a_completion() {
        let http = stream_body(vec![
            event("messageStart", json!({"role": "assistant"})),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "H"}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "i"}}),
            ),
            event("contentBlockStop", json!({"contentBlockIndex": 0})),
            event(
                "contentBlockStart",
                json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "f"}}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"a\":"}}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}}),
            ),
            event("contentBlockStop", json!({"contentBlockIndex": 1})),
            event("messageStop", json!({"stopReason": "tool_use"})),
            event(
                "metadata",
                json!({"usage": {"inputTokens": 7, "outputTokens": 9, "totalTokens": 16}, "metrics": {"latencyMs": 50}}),
            ),
        ]);
        let stream = provider_over(http.clone())
            .chat_stream(&request(json!({
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": true
            })))
            .await
            .unwrap();
        let chunks: Vec<ChatChunk> = collect(stream)
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            http.actual_requests()
                .next()
                .unwrap()
                .uri()
                .ends_with("/converse-stream")
        );
        assert_eq!(
            sent_body(&http)["messages"][0]["content"],
            json!([{"text": "hi"}])
        );
        assert_eq!(chunks[0].id, "chatcmpl-req-s");
        assert_eq!(chunks[0].model, MODEL);
        assert_tool_call_completion(&chunks);
    }

    #[tokio::test]
    async fn an_exception_inside_the_stream_ends_it_with_a_classified_error() {
        let http = stream_body(vec![
            event("messageStart", json!({"role": "assistant"})),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
            ),
            frame(
                &[
                    (":exception-type", "throttlingException"),
                    (":content-type", "application/json"),
                    (":message-type", "exception"),
                ],
                json!({"message": "Too many tokens per minute"}),
            ),
        ]);
        let results = collect(
            provider_over(http)
                .chat_stream(&request(
                    json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
                ))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(results.len(), 3);
        assert_eq!(
            results[1].as_ref().unwrap().choices[0]
                .delta
                .content
                .as_deref(),
            Some("Hi")
        );
        let error = results[2].as_ref().unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::RateLimited, "{error}");
        assert!(error.message.contains("Too many tokens per minute"));
    }

    fn error_response(status: u16, code: &str, message: &str) -> StaticReplayClient {
        replay(
            status,
            &[
                ("content-type", "application/json"),
                (
                    "x-amzn-errortype",
                    &format!("{code}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
                ),
            ],
            json!({"message": message}).to_string(),
        )
    }

    fn hello() -> ChatRequest {
        request(json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}))
    }

    #[tokio::test]
    async fn throttling_is_a_retryable_rate_limit_and_not_retried_by_the_sdk() {
        let http = error_response(
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        );
        let error = provider_over(http.clone())
            .chat(&hello())
            .await
            .unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::RateLimited, "{error}");
        assert_eq!(error.status, Some(429));
        assert!(error.is_retryable());
        assert!(
            error
                .message
                .starts_with("ThrottlingException: Too many requests")
        );
        assert_eq!(http.actual_requests().count(), 1);
    }

    #[tokio::test]
    async fn an_over_long_input_is_context_length_exceeded() {
        let http = error_response(
            400,
            "ValidationException",
            "Input is too long for requested model.",
        );
        let error = provider_over(http)
            .chat_stream(&hello())
            .await
            .err()
            .unwrap();
        assert_eq!(
            error.kind,
            ProviderErrorKind::ContextLengthExceeded,
            "{error}"
        );
        let api = error.to_api_error(&SOURCE);
        assert_eq!(api.status, http::StatusCode::BAD_REQUEST);
        assert_eq!(api.code.as_deref(), Some("context_length_exceeded"));
    }

    #[tokio::test]
    async fn access_denied_is_the_gateways_credential_problem() {
        let http = error_response(
            403,
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        );
        let error = provider_over(http).chat(&hello()).await.unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::Authentication, "{error}");
        assert_eq!(
            error.to_api_error(&SOURCE).status,
            http::StatusCode::BAD_GATEWAY
        );
    }

    #[tokio::test]
    async fn missing_credentials_are_an_authentication_error_before_any_request() {
        let http = replay(200, &[], "");
        let config = client_config(
            aws_sdk_bedrockruntime::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(
                        aws_credential_types::credential_fn::provide_credentials_fn(|| async {
                            Err(CredentialsError::not_loaded("no credentials in the chain"))
                        }),
                    ),
                )
                .http_client(http.clone()),
            &Timeouts::default(),
        )
        .build();
        let provider = BedrockProvider::with_client(Client::from_conf(config), Timeouts::default());
        let error = provider.chat(&hello()).await.unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::Authentication, "{error}");
        assert_eq!(http.actual_requests().count(), 0);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_connection_error() {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = client_config(
            aws_sdk_bedrockruntime::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
                .endpoint_url(format!("http://127.0.0.1:{port}")),
            &Timeouts::default(),
        )
        .build();
        let provider = BedrockProvider::with_client(Client::from_conf(config), Timeouts::default());
        let error = provider.chat(&hello()).await.unwrap_err();
        assert_eq!(error.kind, ProviderErrorKind::Connection, "{error}");
        assert!(error.is_retryable());
        // The log has the endpoint; the client only the provider and the class.
        assert!(error.message.contains("127.0.0.1"), "{error}");
        assert_eq!(
            error.to_api_error(&SOURCE).message,
            "Provider `bedrock` is unreachable or dropped the connection."
        );
    }
}
