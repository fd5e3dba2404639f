//! OpenAI Chat Completions, Embeddings and Models, plus the Azure OpenAI deployment routes.

use std::sync::Arc;

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, Method, StatusCode, Uri, header::RETRY_AFTER},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    AppState, AuthFailure, Fault, embed,
    fault::{Attempt, Early, ErrorFault, Frames, Plan, sse_steps},
    field,
    generate::{
        Completion, Finish, OPENAI_TOOL_CALL_ID, Reply, TOOL_ARGUMENT_PIECES, ToolChoice,
        content_text, count_words, tool_arguments,
    },
    header, parse_object, unix_time,
};

const DEFAULT_DIMENSIONS: u64 = 8;
/// Caps allocation per input; real models top out at 3072.
const MAX_DIMENSIONS: u64 = 4096;
const FINGERPRINT: &str = "fp_mock";
/// What `malformed_at` sends in place of a chunk: the start of one, cut off.
const MALFORMED_CHUNK: &str = "data: {\"choices\": [\n\n";
const MODELS: [&str; 4] = [
    "gpt-4o",
    "gpt-4o-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
];

/// An error in OpenAI's body shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<String>,
    message: String,
    retry_after: Option<String>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        Self {
            status,
            kind,
            code: code.map(str::to_owned),
            message,
            retry_after: None,
        }
    }

    fn retry_after(mut self, seconds: Option<String>) -> Self {
        self.retry_after = seconds;
        self
    }

    /// A `fault:` model's error, with OpenAI's type, default code and message for the status,
    /// or the message OpenAI sends with the given `code`.
    fn from_fault(fault: ErrorFault, model: &str) -> Self {
        let ErrorFault {
            status,
            code,
            retry_after,
        } = fault;
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (kind, default_code, message) = match status.as_u16() {
            401 => (
                "invalid_request_error",
                Some("invalid_api_key"),
                "Incorrect API key provided: sk-mock***. You can find your API key at https://platform.openai.com/account/api-keys.".to_owned(),
            ),
            403 => (
                "invalid_request_error",
                None,
                format!("You are not allowed to sample from this model ({model})."),
            ),
            404 => (
                "invalid_request_error",
                Some("model_not_found"),
                format!("The model `{model}` does not exist or you do not have access to it."),
            ),
            429 => (
                "requests",
                Some("rate_limit_exceeded"),
                // A wait hint only with `retry_after`, so "no Retry-After" means no hint at all.
                format!(
                    "Rate limit reached for {model} on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again {}.",
                    retry_after
                        .as_deref()
                        .map_or_else(|| "later".to_owned(), |after| format!("in {after}s"))
                ),
            ),
            500 => (
                "server_error",
                None,
                "The server had an error while processing your request. Sorry about that!"
                    .to_owned(),
            ),
            502 => ("server_error", None, "Bad gateway.".to_owned()),
            503 => (
                "server_error",
                None,
                "The engine is currently overloaded, please try again later.".to_owned(),
            ),
            504 => ("server_error", None, "Gateway timeout.".to_owned()),
            server if server >= 500 => (
                "server_error",
                None,
                format!("The server had an error (mock provider fault: HTTP {status})."),
            ),
            _ => (
                "invalid_request_error",
                None,
                format!("Invalid request (mock provider fault: HTTP {status})."),
            ),
        };
        let code = code.as_deref().or(default_code);
        let message = match code {
            Some("context_length_exceeded") => CONTEXT_LENGTH_MESSAGE.to_owned(),
            Some("content_filter") => CONTENT_FILTER_MESSAGE.to_owned(),
            Some("insufficient_quota") => "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.".to_owned(),
            _ => message,
        };
        let kind = match code {
            Some("insufficient_quota") => "insufficient_quota",
            _ => kind,
        };
        Self::new(status, kind, code, message).retry_after(retry_after)
    }

    /// The error for a request a fault ended before its headers.
    fn early(early: Early, model: &str) -> Self {
        match early {
            Early::Error(fault) => Self::from_fault(fault, model),
            // Never sent: the connection is gone, unless no kill switch reached the handler.
            Early::Reset => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                "mock provider: the reset fault needs the mock's own listener",
            ),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": null,
            "code": self.code,
        }}));
        match self.retry_after {
            Some(seconds) => (self.status, [(RETRY_AFTER, seconds)], body).into_response(),
            None => (self.status, body).into_response(),
        }
    }
}

const CONTEXT_LENGTH_MESSAGE: &str = "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens. Please reduce the length of the messages.";
const CONTENT_FILTER_MESSAGE: &str = "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry.";

impl From<Fault> for ApiError {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Unauthorized => Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
                "Incorrect API key provided: sk-mock***. You can find your API key at https://platform.openai.com/account/api-keys.",
            ),
            Fault::BadRequest => Self::invalid(
                "Invalid value for 'model': 'error-400' is the mock provider's bad-request trigger.",
            ),
            Fault::ContextLength => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("context_length_exceeded"),
                CONTEXT_LENGTH_MESSAGE,
            ),
            Fault::ContentFilter => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("content_filter"),
                CONTENT_FILTER_MESSAGE,
            ),
            Fault::RateLimited => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                Some("rate_limit_exceeded"),
                "Rate limit reached for requests per min (RPM). Please try again in 1s.",
            )
            .retry_after(Some("1".to_owned())),
            Fault::Internal => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                "The server had an error while processing your request. Sorry about that!",
            ),
            // OpenAI has no 529: its overload signal is a 503.
            Fault::Unavailable | Fault::Overloaded => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                "The engine is currently overloaded, please try again later.",
            ),
        }
    }
}

/// `missing` is the vendor's message for a request that carries no key at all.
fn authorize(state: &AppState, key: Option<&str>, missing: &str) -> Result<(), ApiError> {
    state.check_key(key).map_err(|failure| match failure {
        AuthFailure::Missing => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            missing,
        ),
        AuthFailure::Invalid => Fault::Unauthorized.into(),
    })
}

const MISSING_BEARER: &str = "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).";
const MISSING_AZURE_KEY: &str = "Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API.";

fn bearer(headers: &HeaderMap) -> Option<&str> {
    header(headers, "authorization")?.strip_prefix("Bearer ")
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    parse_object(body).ok_or_else(|| {
        ApiError::invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
        )
    })
}

fn model(request: &Value) -> Result<&str, ApiError> {
    field(request, "model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("you must provide a model parameter"))
}

#[derive(Deserialize)]
pub struct AzureQuery {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
}

/// Azure authenticates with `api-key` and requires `api-version` on every call.
fn azure_preamble(
    state: &AppState,
    headers: &HeaderMap,
    query: &AzureQuery,
) -> Result<(), ApiError> {
    authorize(state, header(headers, "api-key"), MISSING_AZURE_KEY)?;
    if query.api_version.is_none() {
        return Err(ApiError::invalid(
            "Missing required query parameter 'api-version'.",
        ));
    }
    Ok(())
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    Extension(attempt): Extension<Attempt>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, bearer(&headers), MISSING_BEARER)?;
    let request = parse(&body)?;
    chat_completion(&state, &attempt, &request, model(&request)?).await
}

pub async fn azure_chat(
    State(state): State<Arc<AppState>>,
    Extension(attempt): Extension<Attempt>,
    Path(deployment): Path<String>,
    Query(query): Query<AzureQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    azure_preamble(&state, &headers, &query)?;
    chat_completion(&state, &attempt, &parse(&body)?, &deployment).await
}

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    Extension(attempt): Extension<Attempt>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, bearer(&headers), MISSING_BEARER)?;
    let request = parse(&body)?;
    let model = model(&request)?;
    embedding_faults(&attempt, model).await?;
    embedding_list(&request, model)
}

pub async fn azure_embeddings(
    State(state): State<Arc<AppState>>,
    Extension(attempt): Extension<Attempt>,
    Path(deployment): Path<String>,
    Query(query): Query<AzureQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    azure_preamble(&state, &headers, &query)?;
    let request = parse(&body)?;
    embedding_faults(&attempt, &deployment).await?;
    embedding_list(&request, &deployment)
}

/// Embeddings take a `fault:` model's status, reset, hang and headers delay; nothing streams.
async fn embedding_faults(attempt: &Attempt, model: &str) -> Result<(), ApiError> {
    let plan = Plan::for_request(model, attempt).map_err(ApiError::invalid)?;
    plan.before_headers(attempt)
        .await
        .map_err(|early| ApiError::early(early, model))
}

pub async fn models(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, bearer(&headers), MISSING_BEARER)?;
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "system"}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        None,
        format!("Invalid URL ({method} {})", uri.path()),
    )
}

/// Identity shared by every chunk of one completion.
struct Meta<'a> {
    id: String,
    created: u64,
    model: &'a str,
}

async fn chat_completion(
    state: &AppState,
    attempt: &Attempt,
    request: &Value,
    model: &str,
) -> Result<Response, ApiError> {
    if let Some(fault) = Fault::from_model(model) {
        return Err(fault.into());
    }
    let plan = Plan::for_request(model, attempt).map_err(ApiError::invalid)?;
    plan.before_headers(attempt)
        .await
        .map_err(|early| ApiError::early(early, model))?;
    let messages = field(request, "messages")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("Missing required parameter: 'messages'."))?;
    check_messages(messages)?;
    let tool_names = tool_names(request)?;
    let stream = field(request, "stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let stream_options = field(request, "stream_options");
    if stream_options.is_some() && !stream {
        return Err(ApiError::invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        ));
    }
    let include_usage = stream_options
        .and_then(|options| options.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
        && !plan.no_usage;

    // A tool result answers the last question, so it stands in for the latest user turn.
    let user_text = messages
        .iter()
        .rev()
        .find(|m| matches!(m.get("role").and_then(Value::as_str), Some("user" | "tool")))
        .and_then(|m| m.get("content"))
        .map(content_text)
        .unwrap_or_default();
    let prompt_tokens: usize = messages
        .iter()
        .filter_map(|m| m.get("content"))
        .map(|content| count_words(&content_text(content)))
        .sum();
    let max_tokens = field(request, "max_completion_tokens")
        .or_else(|| field(request, "max_tokens"))
        .and_then(Value::as_u64);
    let stops = stop_sequences(field(request, "stop"));
    let reply = Reply::decide(
        tool_choice(field(request, "tool_choice")),
        &tool_names,
        &user_text,
        || match plan.tokens {
            Some(count) => Completion::numbered(count),
            None => Completion::generate(None, &user_text, max_tokens, &stops),
        },
    );
    let completion_tokens = reply.output_tokens();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let meta = Meta {
        id: format!("chatcmpl-mock{:08}", state.next_id()),
        created: unix_time(),
        model,
    };
    Ok(if stream {
        let usage = include_usage.then_some(usage);
        let replacement = plan.tool_index.map_or_else(
            || MALFORMED_CHUNK.to_owned(),
            |index| tool_call_chunk(&meta, index),
        );
        let steps = plan.shape(stream_frames(&meta, &reply, usage), &replacement);
        sse_steps(steps, state.chunk_delay())
    } else {
        plan.before_body().await;
        let usage = (!plan.no_usage).then_some(usage);
        Json(completion_body(&meta, &reply, usage)).into_response()
    })
}

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];
const PART_TYPES: [&str; 5] = ["text", "image_url", "input_audio", "file", "refusal"];

/// Rejects what real OpenAI rejects and a gateway might mistranslate (roles, content parts).
fn check_messages(messages: &[Value]) -> Result<(), ApiError> {
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        if !ROLES.contains(&role) {
            return Err(ApiError::invalid(format!(
                "Invalid value for 'messages[{i}].role': '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."
            )));
        }
        let Some(Value::Array(parts)) = message.get("content") else {
            continue;
        };
        for (j, part) in parts.iter().enumerate() {
            let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
            if !PART_TYPES.contains(&kind) {
                return Err(ApiError::invalid(format!(
                    "Invalid value for 'messages[{i}].content[{j}].type': '{kind}'. Supported values are: 'text', 'image_url', 'input_audio', 'refusal', and 'file'."
                )));
            }
        }
    }
    Ok(())
}

fn tool_names(request: &Value) -> Result<Vec<String>, ApiError> {
    let Some(tools) = field(request, "tools") else {
        return Ok(Vec::new());
    };
    let tools = tools
        .as_array()
        .ok_or_else(|| ApiError::invalid("Invalid type for 'tools': expected an array."))?;
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            tool.get("function")
                .and_then(|function| function.get("name"))
                .and_then(Value::as_str)
                .filter(|_| tool.get("type").and_then(Value::as_str) == Some("function"))
                .map(str::to_owned)
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "Missing required parameter: 'tools[{i}].function'."
                    ))
                })
        })
        .collect()
}

fn tool_choice(choice: Option<&Value>) -> ToolChoice {
    match choice.map(|c| (c.as_str(), c)) {
        Some((Some("none"), _)) => ToolChoice::None,
        Some((Some("required"), _)) => ToolChoice::Required,
        Some((None, named)) => named
            .get("function")
            .and_then(|function| function.get("name"))
            .and_then(Value::as_str)
            .map_or(ToolChoice::Auto, |name| ToolChoice::Named(name.to_owned())),
        _ => ToolChoice::Auto,
    }
}

fn stop_sequences(stop: Option<&Value>) -> Vec<String> {
    match stop {
        Some(Value::String(stop)) => vec![stop.clone()],
        Some(Value::Array(stops)) => stops
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn finish_reason(finish: &Finish) -> &'static str {
    match finish {
        Finish::MaxTokens => "length",
        Finish::Complete | Finish::StopSequence(_) => "stop",
    }
}

fn tool_call(name: &str, arguments: &str) -> Value {
    json!({"id": OPENAI_TOOL_CALL_ID, "type": "function", "function": {"name": name, "arguments": arguments}})
}

/// Without `usage` the body has no usage at all, as from a provider that does not report it.
fn completion_body(meta: &Meta, reply: &Reply, usage: Option<Value>) -> Value {
    let (message, finish_reason) = match reply {
        Reply::Text(completion) => (
            json!({"role": "assistant", "content": completion.text(), "refusal": null}),
            finish_reason(&completion.finish),
        ),
        Reply::ToolCall(name) => (
            json!({
                "role": "assistant",
                "content": null,
                "refusal": null,
                "tool_calls": [tool_call(name, &tool_arguments())],
            }),
            "tool_calls",
        ),
    };
    let mut body = json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
        "system_fingerprint": FINGERPRINT,
    });
    if let Some(usage) = usage {
        body["usage"] = usage;
    }
    body
}

/// The `chat.completion.chunk` events; with `usage`, every chunk carries `"usage": null` and a
/// final choice-less chunk carries the totals, exactly as OpenAI does for `include_usage`.
/// A chunk whose tool-call delta has the given `index`, however large (the `tool_index` fault).
fn tool_call_chunk(meta: &Meta, index: u64) -> String {
    let chunk = json!({
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": index, "id": "call_x", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ]}, "finish_reason": null}],
    });
    format!("data: {chunk}\n\n")
}

fn stream_frames(meta: &Meta, reply: &Reply, usage: Option<Value>) -> Frames {
    let include_usage = usage.is_some();
    let chunk = |choices: Value, usage: Value| {
        let mut chunk = json!({
            "id": meta.id,
            "object": "chat.completion.chunk",
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        });
        if include_usage {
            chunk["usage"] = usage;
        }
        format!("data: {chunk}\n\n")
    };
    let delta = |delta: Value, finish_reason: Option<&str>| {
        let choice =
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]);
        chunk(choice, Value::Null)
    };

    let mut frames = Frames::default();
    let finish = match reply {
        Reply::Text(completion) => {
            frames.head.push(delta(
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            ));
            frames.content.extend(
                completion
                    .pieces()
                    .into_iter()
                    .map(|piece| delta(json!({"content": piece}), None)),
            );
            finish_reason(&completion.finish)
        }
        Reply::ToolCall(name) => {
            let mut call = tool_call(name, "");
            call["index"] = json!(0);
            frames.head.push(delta(
                json!({"role": "assistant", "content": null, "tool_calls": [call]}),
                None,
            ));
            frames
                .content
                .extend(TOOL_ARGUMENT_PIECES.iter().map(|piece| {
                    let call = json!({"index": 0, "function": {"arguments": piece}});
                    delta(json!({"tool_calls": [call]}), None)
                }));
            "tool_calls"
        }
    };
    frames.tail.push(delta(json!({}), Some(finish)));
    if let Some(usage) = usage {
        frames.tail.push(chunk(json!([]), usage));
    }
    frames.done = Some("data: [DONE]\n\n".to_owned());
    frames
}

fn embedding_list(request: &Value, model: &str) -> Result<Json<Value>, ApiError> {
    if let Some(fault) = Fault::from_model(model) {
        return Err(fault.into());
    }
    let inputs = embedding_inputs(field(request, "input"))?;
    let dims = match field(request, "dimensions") {
        None => DEFAULT_DIMENSIONS,
        Some(dims) => dims
            .as_u64()
            .filter(|d| (1..=MAX_DIMENSIONS).contains(d))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "Invalid value for 'dimensions': it must be an integer between 1 and {MAX_DIMENSIONS}."
                ))
            })?,
    };
    // Bounded by MAX_DIMENSIONS above, so this always fits.
    let dims = usize::try_from(dims).unwrap_or_default();
    let base64 = match field(request, "encoding_format").map(Value::as_str) {
        None | Some(Some("float")) => false,
        Some(Some("base64")) => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "Invalid value for 'encoding_format': supported values are 'float' and 'base64'.",
            ));
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = embed::embed(text, dims);
            let embedding = if base64 {
                json!(embed::to_base64(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens: usize = inputs.iter().map(|text| count_words(text)).sum();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

/// `input` as texts: a string, strings, one token array, or token arrays (tokens become words).
fn embedding_inputs(input: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
        )
    };
    let tokens_text = |tokens: &[Value]| -> Option<String> {
        let words: Option<Vec<String>> = tokens
            .iter()
            .map(|t| t.as_u64().map(|t| t.to_string()))
            .collect();
        words.filter(|w| !w.is_empty()).map(|w| w.join(" "))
    };
    match input.ok_or_else(|| ApiError::invalid("Missing required parameter: 'input'."))? {
        Value::String(text) if !text.is_empty() => Ok(vec![text.clone()]),
        Value::Array(items) if items.iter().all(Value::is_u64) => tokens_text(items)
            .map(|text| vec![text])
            .ok_or_else(invalid),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(text) if !text.is_empty() => Some(text.clone()),
                Value::Array(tokens) => tokens_text(tokens),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(invalid),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(frames: &[String]) -> Vec<Value> {
        frames
            .iter()
            .filter_map(|f| f.strip_prefix("data: ")?.strip_suffix("\n\n"))
            .filter(|data| *data != "[DONE]")
            .map(|data| serde_json::from_str(data).unwrap())
            .collect()
    }

    #[test]
    fn text_stream_follows_openai_chunk_sequence() {
        let meta = Meta {
            id: "chatcmpl-x".into(),
            created: 1,
            model: "m",
        };
        let completion = Completion::generate(None, "hi there", None, &[]);
        let reply = Reply::Text(completion.clone());
        let frames = stream_frames(&meta, &reply, Some(json!({"total_tokens": 5}))).all();
        assert_eq!(frames.last().unwrap(), "data: [DONE]\n\n");
        let chunks = events(&frames);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, completion.text());
        let [.., finish, usage] = chunks.as_slice() else {
            panic!("too few chunks");
        };
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 5);
        assert!(
            chunks[..chunks.len() - 1]
                .iter()
                .all(|c| c["usage"].is_null())
        );
    }

    #[test]
    fn tool_stream_sends_name_then_argument_pieces() {
        let meta = Meta {
            id: "chatcmpl-x".into(),
            created: 1,
            model: "m",
        };
        let frames = stream_frames(&meta, &Reply::ToolCall("get_weather".into()), None).all();
        let chunks = events(&frames);
        let call = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(call["id"], OPENAI_TOOL_CALL_ID);
        let arguments: String = chunks
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(arguments, tool_arguments());
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    }

    #[test]
    fn embedding_inputs_accept_every_openai_shape() {
        let inputs = |v: Value| embedding_inputs(Some(&v)).map_err(|e| e.message);
        assert_eq!(inputs(json!("a b")).unwrap(), ["a b"]);
        assert_eq!(inputs(json!(["a", "b"])).unwrap(), ["a", "b"]);
        assert_eq!(inputs(json!([1, 2])).unwrap(), ["1 2"]);
        assert_eq!(inputs(json!([[1, 2], [3]])).unwrap(), ["1 2", "3"]);
        for bad in [
            json!(""),
            json!([]),
            json!([""]),
            json!([[]]),
            json!(3),
            json!(["a", 1]),
        ] {
            assert!(inputs(bad.clone()).is_err(), "{bad} should be rejected");
        }
    }
}
