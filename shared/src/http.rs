//! The one router shared by the Lambda functions and the local server.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use bytes::BytesMut;
use futures_util::{FutureExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    ChatChunk, ChatCompletion, ChatRequest, CompletionAssembler, EmbeddingRequest, EncodingFormat,
    ModelEntry, ModelList, StreamOptions, Usage,
};
use crate::auth::{KeyRecord, NewKey, store_unavailable};
use crate::background::Background;
use crate::cache::{CacheMode, Leader, Lookup, cache_key};
use crate::config::{ModelKind, Price};
use crate::edge;
use crate::error::{ApiError, BodyTimeout};
use crate::gateway::{Deployment, Gateway, ModelRoute};
use crate::limits::{Estimate, Limiter, Reservation};
use crate::providers::routing::{self, Outcome, Selection};
use crate::providers::{ChunkStream, now_secs};
use crate::store::StoreError;
use crate::telemetry::{EMF, Emf, METRICS, Metrics, RequestFacts};

/// Output tokens reserved against TPM and budget when a request sets no `max_tokens`.
const DEFAULT_RESERVED_OUTPUT_TOKENS: u64 = 1024;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_GATEWAY_CACHE: HeaderName = HeaderName::from_static("x-gateway-cache");
static X_GATEWAY_PROVIDER: HeaderName = HeaderName::from_static("x-gateway-provider");
static X_GATEWAY_MODEL: HeaderName = HeaderName::from_static("x-gateway-model");
static X_GATEWAY_COST: HeaderName = HeaderName::from_static("x-gateway-cost-usd");
static X_GATEWAY_ROUTE: HeaderName = HeaderName::from_static("x-gateway-route");
static X_GATEWAY_CONTEXT: HeaderName = HeaderName::from_static("x-gateway-context");

pub fn router(gateway: Arc<Gateway>) -> Router {
    let max_body = gateway.max_body_bytes;
    let authenticated = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/admin/keys", post(create_key).get(list_keys))
        .route("/v1/admin/keys/{id}", delete(revoke_key))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&gateway),
            authenticate,
        ))
        .route_layer(middleware::from_fn(cloudwatch_metrics));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(authenticated)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(max_body, declared_length))
        .layer(middleware::from_fn(request_id))
        .with_state(gateway)
}

/// Refuses a body whose declared `Content-Length` is over the cap at once, before any of it is
/// read (a 100-continue client never sends it); the body limit alone would wait for the bytes.
async fn declared_length(State(max_body): State<usize>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > max_body as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("Request body too large: {length} bytes declared, the limit is {max_body}."),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Resolves the bearer key of every route but `/health` and `/metrics`, unless a front (the API
/// Gateway authorizer) already did.
async fn authenticate(
    State(gateway): State<Arc<Gateway>>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.extensions().get::<AuthorizedKey>().is_none() {
        match gateway
            .auth
            .authenticate(request.headers(), now_secs())
            .await
        {
            Ok(key) => {
                request.extensions_mut().insert(AuthorizedKey(key));
            }
            Err(error) => return error.into_response(),
        }
    }
    next.run(request).await
}

/// How long the provider took (to its answer, or to a stream's first token); the rest of the
/// time to the response headers is the gateway's own overhead.
#[derive(Debug, Clone, Copy)]
struct UpstreamTime(Duration);

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// On Lambda, one EMF line per request (latency, time to first token, overhead, cache, errors);
/// a stream's line is written when it ends. Elsewhere this does nothing.
async fn cloudwatch_metrics(request: Request, next: Next) -> Response {
    let Some(emf) = EMF.as_ref() else {
        return next.run(request).await;
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let headers_after = started.elapsed();
    let header = |name: &HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut facts = RequestFacts {
        model: header(&X_GATEWAY_MODEL),
        status: response.status().as_u16(),
        latency_ms: millis(headers_after),
        time_to_first_token_ms: None,
        overhead_ms: response
            .extensions()
            .get::<UpstreamTime>()
            .map(|UpstreamTime(upstream)| millis(headers_after.saturating_sub(*upstream))),
        cache: header(&X_GATEWAY_CACHE),
    };
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streamed {
        Emf::write(&emf.request_line(&facts));
        return response;
    }
    // Streams are held until their first token, so the headers leave with it.
    facts.time_to_first_token_ms = Some(facts.latency_ms);
    let (parts, body) = response.into_parts();
    let at_end = futures_util::stream::once(async move {
        facts.latency_ms = millis(started.elapsed());
        Emf::write(&emf.request_line(&facts));
        None
    })
    .filter_map(std::future::ready);
    Response::from_parts(
        parts,
        Body::from_stream(body.into_data_stream().chain(at_end)),
    )
}

/// Every response carries `x-request-id`: the caller's, or a new one.
async fn request_id(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| v.len() <= 128)
        .cloned()
        .unwrap_or_else(new_request_id);
    let mut response = next.run(request).await;
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    response
}

/// A fresh `x-request-id` value, also for the responses the server gives outside the router.
pub(crate) fn new_request_id() -> HeaderValue {
    let id = format!("req_{:032x}", rand::random::<u128>());
    HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("req_unknown"))
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        METRICS.render(),
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("Unknown route. This gateway serves the OpenAI API under /v1.")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "Method not allowed on this route.",
    )
}

fn body_error(rejection: BytesRejection) -> ApiError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(error) = cause {
        if let Some(timeout) = error.downcast_ref::<BodyTimeout>() {
            return ApiError::from(*timeout);
        }
        cause = error.source();
    }
    let status = rejection.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "Request body too large.".to_owned()
    } else {
        rejection.body_text()
    };
    ApiError::new(status, "invalid_request_error", message)
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let message = if e.is_syntax() || e.is_eof() {
            format!("The request body is not valid JSON: {e}")
        } else {
            format!("Invalid request: {e}")
        };
        ApiError::bad_request(message)
    })
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn to_json_bytes<T: Serialize>(value: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("cannot encode response: {e}")))
}

fn set_header(response: &mut Response, name: &HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name.clone(), value);
    }
}

async fn list_models(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
) -> Response {
    let data = gateway
        .models
        .values()
        .filter(|m| key.allows_model(&m.name))
        .map(|m| ModelEntry {
            id: m.name.clone(),
            object: "model",
            created: gateway.started_at,
            owned_by: m.deployments[0].provider_name.clone(),
        })
        .collect();
    axum::Json(ModelList {
        object: "list",
        data,
    })
    .into_response()
}

/// Checks that the key may use the model and that the model is of the kind the route serves.
fn authorize_model<'g>(
    gateway: &'g Gateway,
    key: &KeyRecord,
    model: &str,
    kind: ModelKind,
) -> Result<&'g Arc<ModelRoute>, ApiError> {
    let route = gateway.model(model)?;
    if !key.allows_model(model) {
        return Err(ApiError::forbidden(format!(
            "This API key is not allowed to use model `{model}`."
        ))
        .with_code("model_not_allowed")
        .with_param("model"));
    }
    if route.kind != kind {
        let expected = match kind {
            ModelKind::Chat => "chat",
            ModelKind::Embedding => "embedding",
        };
        return Err(
            ApiError::bad_request(format!("Model `{model}` is not a {expected} model."))
                .with_param("model"),
        );
    }
    Ok(route)
}

/// Holds an admitted request's reservation until its real usage is known. Settling happens off
/// the response path; a request dropped midway (client gone, error) settles what it observed.
struct Settlement {
    limiter: Arc<dyn Limiter>,
    background: Background,
    reservation: Option<Reservation>,
    price: Price,
    observed: Usage,
}

impl Settlement {
    fn new(gateway: &Gateway, reservation: Reservation, price: Price) -> Self {
        Self {
            limiter: Arc::clone(&gateway.limiter),
            background: gateway.background.clone(),
            reservation: Some(reservation),
            price,
            observed: Usage::default(),
        }
    }

    /// Settles with the given usage, billed at `price` to `model`; returns the cost.
    fn finish(mut self, usage: Usage, price: Price, model: &str) -> f64 {
        self.price = price;
        self.observed = usage;
        let cost = self.settle();
        METRICS.record_usage(model, usage.prompt_tokens, usage.completion_tokens, cost);
        cost
    }

    fn settle(&mut self) -> f64 {
        let cost = self
            .price
            .cost_usd(self.observed.prompt_tokens, self.observed.completion_tokens);
        if let Some(reservation) = self.reservation.take() {
            let limiter = Arc::clone(&self.limiter);
            let tokens = self.observed.total_tokens;
            finish_in_background(&self.background, async move {
                limiter.settle(reservation, tokens, cost).await
            });
        }
        cost
    }
}

/// Runs work the response does not wait for: at once if it completes without waiting (the
/// in-process limiter and the embedded store always do), else in `background`. Spawning every
/// time cost a task and, on a busy runtime, a wake-up of another worker thread per request.
fn finish_in_background(background: &Background, work: impl Future<Output = ()> + Send + 'static) {
    let mut work = Box::pin(work);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    if work.as_mut().poll(&mut context).is_pending() {
        // The task polls it again at once, with a real waker.
        background.spawn(work);
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.settle();
    }
}

/// A key already authenticated in front of the router (on AWS, by the API Gateway authorizer,
/// whose verdict the Lambda adapter attaches); the router then trusts it instead of looking
/// the bearer key up again.
#[derive(Debug, Clone)]
pub struct AuthorizedKey(pub Arc<KeyRecord>);

/// The latest moment a request may still be worked on, set by an entrypoint that has one (on
/// Lambda, the invocation's deadline); provider calls and streams stop before it.
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline(pub tokio::time::Instant);

async fn chat_completions(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    deadline: Option<Extension<RequestDeadline>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let deadline = deadline.map(|Extension(RequestDeadline(at))| at);
    match chat(&gateway, &key, &headers, body, deadline).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn chat(
    gateway: &Gateway,
    key: &KeyRecord,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    invocation_deadline: Option<tokio::time::Instant>,
) -> Result<Response, ApiError> {
    let now = now_secs();
    let body = body.map_err(body_error)?;
    let mut request: ChatRequest = parse_json(&body)?;
    request.validate()?;
    let requested = authorize_model(gateway, key, &request.model, ModelKind::Chat)?;
    let selection = routing::select(gateway, requested, key, &mut request)?;
    let route = selection.route;

    let prompt_estimate = request.estimate_prompt_tokens();
    let output_reserve = request
        .max_output_tokens()
        .map_or(DEFAULT_RESERVED_OUTPUT_TOKENS, u64::from)
        * u64::from(request.choices());
    let estimate = Estimate {
        tokens: prompt_estimate + output_reserve,
        cost_usd: route.price.cost_usd(prompt_estimate, output_reserve),
    };
    let reservation = gateway
        .limiter
        .acquire(key, estimate, now)
        .await
        .map_err(|e| e.to_api_error())?;
    let mut settlement = Settlement::new(gateway, reservation, route.price);
    settlement.observed.prompt_tokens = prompt_estimate;

    let preferred = routing::choose(route, &[], Instant::now());
    let primary = &route.deployments[preferred.unwrap_or(0)];
    let mode = CacheMode::decide(headers, &request, route.cache_ttl_s);
    Metrics::count(&METRICS.cache, &[("result", mode.header_value(false))]);
    let stream = request.is_stream();
    let include_usage = request.include_usage();
    let mut leader = None;
    if mode == CacheMode::Use {
        let key = cache_key(
            gateway.cache_partition(&key.tenant),
            &primary.provider_name,
            &primary.model,
            primary.version.as_deref(),
            &request,
        );
        match gateway.cache.lookup(key).await {
            Lookup::Hit(body) => {
                Metrics::count(&METRICS.cache, &[("result", "HIT")]);
                // A hit costs nothing upstream: only the request itself counts against RPM.
                settlement.finish(Usage::default(), route.price, &route.name);
                let mut response = cached_response(body, stream, include_usage)?;
                gateway_headers(&mut response, "HIT", route, primary, &selection);
                set_header(&mut response, &X_GATEWAY_COST, "0");
                return Ok(response);
            }
            Lookup::Miss(guard) => leader = Some(guard),
        }
    }

    if stream {
        // Usage is always requested upstream, so the gateway can bill streams exactly; the
        // client sees the usage chunk only if it asked for it.
        request
            .stream_options
            .get_or_insert_with(StreamOptions::default)
            .include_usage = Some(true);
    }
    let total = tokio::time::Instant::now() + Duration::from_millis(primary.timeouts.total_ms);
    let deadline = invocation_deadline.map_or(total, |at| at.min(total));
    let upstream_started = Instant::now();
    let answer =
        routing::execute(gateway, route, preferred, &mut request, stream, deadline).await?;
    let upstream_time = UpstreamTime(upstream_started.elapsed());
    // Only an answer from the deployment the key was computed for is cached under it.
    let leader = leader.filter(|_| std::ptr::eq(answer.deployment, primary));
    let cache_header = mode.header_value(false);
    match answer.outcome {
        Outcome::Complete(completion) => {
            let usage = completion
                .usage
                .unwrap_or_else(|| Usage::new(prompt_estimate, 0));
            let cost = settlement.finish(usage, answer.route.price, &answer.route.name);
            let body = to_json_bytes(&completion)?;
            if let Some(leader) = leader {
                let (body, ttl) = (body.clone(), answer.route.cache_ttl_s);
                finish_in_background(&gateway.background, leader.complete(body, ttl));
            }
            let mut response = json_response(StatusCode::OK, body);
            gateway_headers(
                &mut response,
                cache_header,
                answer.route,
                answer.deployment,
                &selection,
            );
            set_header(&mut response, &X_GATEWAY_COST, &format!("{cost:.8}"));
            response.extensions_mut().insert(upstream_time);
            Ok(response)
        }
        Outcome::Stream(chunks) => {
            settlement.price = answer.route.price;
            let relay = StreamRelay {
                upstream: chunks,
                assembler: CompletionAssembler::default(),
                include_usage,
                usage_sent: false,
                settlement: Some(settlement),
                model: answer.route.name.clone(),
                leader,
                background: gateway.background.clone(),
                cache_ttl_s: answer.route.cache_ttl_s,
                prompt_estimate,
                deadline,
                finish_grace: Duration::from_millis(gateway.routing.stream_finish_grace_ms),
                finished: false,
            };
            let mut response = sse_response(Body::from_stream(relay.into_stream()));
            gateway_headers(
                &mut response,
                cache_header,
                answer.route,
                answer.deployment,
                &selection,
            );
            response.extensions_mut().insert(upstream_time);
            Ok(response)
        }
    }
}

fn gateway_headers(
    response: &mut Response,
    cache: &'static str,
    route: &ModelRoute,
    deployment: &Deployment,
    selection: &Selection<'_>,
) {
    response
        .headers_mut()
        .insert(X_GATEWAY_CACHE.clone(), HeaderValue::from_static(cache));
    set_header(response, &X_GATEWAY_PROVIDER, &deployment.provider_name);
    set_header(response, &X_GATEWAY_MODEL, &route.name);
    if let Some(routed) = &selection.routed {
        set_header(response, &X_GATEWAY_ROUTE, routed);
    }
    if let Some(context) = &selection.context {
        set_header(response, &X_GATEWAY_CONTEXT, context);
    }
}

fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn sse_data<T: Serialize>(value: &T) -> Bytes {
    let mut frame = b"data: ".to_vec();
    if serde_json::to_writer(&mut frame, value).is_err() {
        frame.truncate(6);
        frame.extend_from_slice(
            br#"{"error":{"message":"cannot encode chunk","type":"api_error"}}"#,
        );
    }
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// An upstream chunk's JSON text as an SSE event, without its top-level `usage` member when
/// `strip_usage`. None (the chunk is then serialised instead) when the text lacks a field the
/// serialised chunk would have (the parsed chunk fills in `object`, `created`, `model` and
/// `choices` when they are missing), or when `usage` cannot be cut out with certainty (a key with
/// escapes, text that is not an object).
fn sse_relay_frame(raw: &[u8], strip_usage: bool) -> Option<Bytes> {
    if !has_keys(
        raw,
        &[b"\"object\"", b"\"created\"", b"\"model\"", b"\"choices\""],
    ) {
        return None;
    }
    // OpenAI ends each chunk of a stream with `"usage":null` when usage was asked for (the
    // gateway always asks): cut it without a scan. (In valid JSON that suffix can only be a
    // member of the outer object.)
    const NULL_USAGE_LAST: &[u8] = b",\"usage\":null}";
    let (head, tail): (&[u8], &[u8]) = match raw.strip_suffix(NULL_USAGE_LAST) {
        Some(head) if strip_usage => (head, b"}"),
        _ if !strip_usage => (raw, b""),
        _ => match top_level_members(raw, b"usage")?.found {
            Some(range) => (&raw[..range.start], &raw[range.end..]),
            None => (raw, b""),
        },
    };
    let mut frame = Vec::with_capacity(head.len() + tail.len() + 8);
    frame.extend_from_slice(b"data: ");
    frame.extend_from_slice(head);
    frame.extend_from_slice(tail);
    frame.extend_from_slice(b"\n\n");
    Some(Bytes::from(frame))
}

/// Whether every one of `keys` (each a quoted name) appears in `json` followed by a colon.
fn has_keys(json: &[u8], keys: &[&[u8]]) -> bool {
    let mut missing = keys.len();
    let mut seen = [false; 8];
    let mut at = 0;
    while missing > 0 {
        let Some(quote) = json[at..].iter().position(|b| *b == b'"') else {
            return false;
        };
        let rest = &json[at + quote..];
        for (i, key) in keys.iter().enumerate().take(seen.len()) {
            if !seen[i]
                && rest.starts_with(key)
                && rest[key.len()..].trim_ascii_start().first() == Some(&b':')
            {
                seen[i] = true;
                missing -= 1;
            }
        }
        at += quote + 1;
    }
    true
}

/// What a scan of a JSON object's top level found.
struct TopLevel {
    /// The bytes to cut to remove the member asked for: the member and one comma beside it.
    found: Option<std::ops::Range<usize>>,
}

/// Scans the top level of a JSON object without building it. None when the text is not an object
/// or has a key with escapes (which this does not decode); the text is otherwise trusted to be
/// valid JSON (it was parsed already).
fn top_level_members(json: &[u8], wanted: &[u8]) -> Option<TopLevel> {
    let ws = |mut i: usize| {
        while json.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let mut result = TopLevel { found: None };
    let mut i = ws(0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(i + 1);
    if json.get(i) == Some(&b'}') {
        return Some(result);
    }
    let mut previous_comma: Option<usize> = None;
    loop {
        let key_start = i;
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = i + 1 + json.get(i + 1..)?.iter().position(|b| *b == b'"')?;
        let key = &json[i + 1..key_end];
        if key.contains(&b'\\') {
            return None;
        }
        i = ws(key_end + 1);
        if json.get(i) != Some(&b':') {
            return None;
        }
        let value_end = skip_json_value(json, ws(i + 1))?;
        let next = ws(value_end);
        if key == wanted && result.found.is_none() {
            result.found = Some(match (previous_comma, json.get(next)) {
                (Some(comma), _) => comma..value_end,
                (None, Some(b',')) => key_start..ws(next + 1),
                (None, _) => key_start..value_end,
            });
        }
        match json.get(next) {
            Some(b',') => {
                previous_comma = Some(next);
                i = ws(next + 1);
            }
            Some(b'}') => return Some(result),
            _ => return None,
        }
    }
}

/// The index just past the JSON value starting at `start`.
fn skip_json_value(json: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    match json.get(i)? {
        b'"' => skip_json_string(json, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match json.get(i)? {
                    b'"' => {
                        i = skip_json_string(json, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            while json
                .get(i)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
            {
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

/// The index just past the JSON string whose opening quote is at `start`.
fn skip_json_string(json: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match json.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// Most bytes of ready SSE events the relay puts in one write.
const COALESCE_BYTES: usize = 16 * 1024;

fn sse_error(error: &ApiError) -> Bytes {
    Bytes::from(format!("data: {}\n\n", error.body_json()))
}

fn cached_response(body: Bytes, stream: bool, include_usage: bool) -> Result<Response, ApiError> {
    if !stream {
        return Ok(json_response(StatusCode::OK, body));
    }
    let completion: ChatCompletion = serde_json::from_slice(&body)
        .map_err(|e| ApiError::internal(format!("cached answer is unreadable: {e}")))?;
    let mut frames: Vec<Result<Bytes, Infallible>> = completion
        .to_chunks(include_usage)
        .iter()
        .map(|c| Ok(sse_data(c)))
        .collect();
    frames.push(Ok(Bytes::from_static(SSE_DONE)));
    Ok(sse_response(Body::from_stream(futures_util::stream::iter(
        frames,
    ))))
}

/// Relays an upstream stream to the client as SSE while assembling the whole answer, so that a
/// complete stream is billed and cached and an incomplete one never passes for an answer.
struct StreamRelay {
    upstream: ChunkStream,
    assembler: CompletionAssembler,
    include_usage: bool,
    usage_sent: bool,
    settlement: Option<Settlement>,
    model: String,
    leader: Option<Leader>,
    background: Background,
    cache_ttl_s: u64,
    prompt_estimate: u64,
    deadline: tokio::time::Instant,
    /// After every choice has its finish reason, how long to wait for the usage chunk and the
    /// end: a provider that forgets `[DONE]` must not hold the client.
    finish_grace: Duration,
    finished: bool,
}

impl StreamRelay {
    fn into_stream(self) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send {
        futures_util::stream::unfold(self, |mut relay| async move {
            let mut frame = relay.next_frame().await?;
            // Chunks the upstream has already delivered leave in the same write (each item of
            // the body is a write of its own). `next_frame` loses nothing when it is dropped
            // while waiting, so a chunk that is not there yet is simply read next time.
            if let Some(Some(more)) = relay.next_frame().now_or_never() {
                let mut frames = BytesMut::from(frame);
                frames.extend_from_slice(&more);
                while frames.len() < COALESCE_BYTES
                    && let Some(Some(more)) = relay.next_frame().now_or_never()
                {
                    frames.extend_from_slice(&more);
                }
                frame = frames.freeze();
            }
            Some((Ok(frame), relay))
        })
    }

    fn usage(&self) -> Usage {
        self.assembler.usage.unwrap_or_else(|| {
            Usage::new(
                self.prompt_estimate,
                self.assembler.estimated_completion_tokens(),
            )
        })
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        loop {
            let finishing = self.assembler.is_finished();
            let wait_until = if finishing {
                self.deadline
                    .min(tokio::time::Instant::now() + self.finish_grace)
            } else {
                self.deadline
            };
            let next = match tokio::time::timeout_at(wait_until, self.upstream.next()).await {
                Ok(next) => next,
                Err(_) if finishing => None,
                Err(_) => {
                    self.finished = true;
                    return Some(self.fail(
                        "deadline",
                        ApiError::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            "timeout",
                            "The request's deadline passed before the answer was complete.",
                        ),
                    ));
                }
            };
            match next {
                Some(Ok(mut chunk)) => {
                    self.assembler.push(&chunk);
                    let usage = self.usage();
                    if let Some(settlement) = &mut self.settlement {
                        settlement.observed = usage;
                    }
                    let usage_only = chunk.choices.is_empty() && chunk.usage.is_some();
                    if usage_only {
                        if !self.include_usage {
                            continue;
                        }
                        self.usage_sent = true;
                    }
                    // The upstream's own text when it has it (minus `usage`, unless the client
                    // asked for usage): no second serialisation of every chunk.
                    let strip_usage = !usage_only && !self.include_usage;
                    if let Some(frame) = chunk
                        .raw
                        .take()
                        .and_then(|raw| sse_relay_frame(&raw, strip_usage))
                    {
                        return Some(frame);
                    }
                    if strip_usage {
                        chunk.usage = None;
                    }
                    return Some(sse_data(&chunk));
                }
                Some(Err(error)) => {
                    self.finished = true;
                    let reason = format!("{:?}", error.kind).to_lowercase();
                    return Some(self.fail(&reason, error.to_api_error("upstream")));
                }
                None => {
                    self.finished = true;
                    return Some(self.complete());
                }
            }
        }
    }

    /// Ends a stream that broke: an SSE error event the SDKs raise, no cache entry; what was
    /// produced is billed when the settlement drops.
    fn fail(&mut self, reason: &str, error: ApiError) -> Bytes {
        tracing::warn!(reason, model = %self.model, "stream broken after it started");
        Metrics::count(&METRICS.broken_streams, &[("reason", reason)]);
        self.leader = None;
        self.settlement = None;
        sse_error(&error)
    }

    /// Ends a stream the upstream closed: `[DONE]` if the answer is complete, else an error.
    fn complete(&mut self) -> Bytes {
        if !self.assembler.is_finished() {
            return self.fail(
                "incomplete",
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    "The provider's stream ended before the answer was complete.",
                ),
            );
        }
        let usage = self.usage();
        let mut frames = Vec::new();
        if self.include_usage && !self.usage_sent {
            let mut chunk = ChatChunk::new("", 0, "", Vec::new());
            chunk.usage = Some(usage);
            frames.extend_from_slice(&sse_data(&chunk));
        }
        frames.extend_from_slice(SSE_DONE);
        let assembled = std::mem::take(&mut self.assembler);
        let mut completion = assembled.into_completion();
        completion.usage = Some(usage);
        if let Some(settlement) = self.settlement.take() {
            let price = settlement.price;
            settlement.finish(usage, price, &self.model);
        }
        if let Some(leader) = self.leader.take()
            && let Ok(body) = serde_json::to_vec(&completion)
        {
            finish_in_background(
                &self.background,
                leader.complete(Bytes::from(body), self.cache_ttl_s),
            );
        }
        Bytes::from(frames)
    }
}

async fn embeddings(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match embed(&gateway, &key, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn embed(
    gateway: &Gateway,
    key: &KeyRecord,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let now = now_secs();
    let body = body.map_err(body_error)?;
    let mut request: EmbeddingRequest = parse_json(&body)?;
    request.validate()?;
    let route = authorize_model(gateway, key, &request.model, ModelKind::Embedding)?;
    let tokens = request.input.estimate_tokens();
    let reservation = gateway
        .limiter
        .acquire(
            key,
            Estimate {
                tokens,
                cost_usd: route.price.cost_usd(tokens, 0),
            },
            now,
        )
        .await
        .map_err(|e| e.to_api_error())?;
    let settlement = Settlement::new(gateway, reservation, route.price);
    let deployment = &route.deployments[routing::choose(route, &[], Instant::now()).unwrap_or(0)];
    let format = request.encoding_format.unwrap_or(EncodingFormat::Float);
    request.model.clone_from(&deployment.model);
    let mut response = deployment
        .provider
        .embed(&request)
        .await
        .map_err(|e| e.to_api_error(&deployment.provider_name))?;
    for item in &mut response.data {
        let vector = std::mem::replace(
            &mut item.embedding,
            crate::api::EmbeddingVector::Float(Vec::new()),
        );
        item.embedding = vector.into_format(format)?;
    }
    let usage = Usage::new(response.usage.prompt_tokens, 0);
    let cost = settlement.finish(usage, route.price, &route.name);
    let mut http_response = json_response(StatusCode::OK, to_json_bytes(&response)?);
    set_header(
        &mut http_response,
        &X_GATEWAY_PROVIDER,
        &deployment.provider_name,
    );
    set_header(&mut http_response, &X_GATEWAY_MODEL, &route.name);
    set_header(&mut http_response, &X_GATEWAY_COST, &format!("{cost:.8}"));
    Ok(http_response)
}

fn require_admin(key: &KeyRecord) -> Result<(), ApiError> {
    if key.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("This route needs an admin key."))
    }
}

#[derive(Serialize)]
struct CreatedKey {
    key: String,
    #[serde(flatten)]
    record: KeyRecord,
}

async fn create_key(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        require_admin(&key)?;
        let new: NewKey = parse_json(&body.map_err(body_error)?)?;
        let (secret, record) =
            edge::provision(gateway.auth.store().as_ref(), gateway.edge.as_ref(), new).await?;
        let body = to_json_bytes(&CreatedKey {
            key: secret,
            record,
        })?;
        Ok::<_, ApiError>(json_response(StatusCode::CREATED, body))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Serialize)]
struct KeyListEntry {
    #[serde(flatten)]
    record: KeyRecord,
    spent_usd_this_month: Option<f64>,
}

async fn list_keys(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
) -> Response {
    let result = async {
        require_admin(&key)?;
        let records = gateway
            .auth
            .store()
            .list()
            .await
            .map_err(admin_store_error)?;
        let now = now_secs();
        let mut data = Vec::with_capacity(records.len());
        for record in records {
            let spent = gateway.limiter.spent_usd(&record.id, now).await.ok();
            data.push(KeyListEntry {
                record,
                spent_usd_this_month: spent,
            });
        }
        let body = to_json_bytes(&serde_json::json!({"object": "list", "data": data}))?;
        Ok::<_, ApiError>(json_response(StatusCode::OK, body))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn revoke_key(
    State(gateway): State<Arc<Gateway>>,
    Extension(AuthorizedKey(key)): Extension<AuthorizedKey>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        require_admin(&key)?;
        let revoked = edge::revoke(gateway.auth.store().as_ref(), gateway.edge.as_ref(), &id).await;
        // Forgotten even if the edge cleanup failed: the key itself is revoked by then.
        gateway.auth.invalidate();
        if !revoked? {
            return Err(ApiError::not_found(format!("No key with id `{id}`.")));
        }
        let body = to_json_bytes(&serde_json::json!({"id": id, "revoked": true}))?;
        Ok(json_response(StatusCode::OK, body))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

fn admin_store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Conflict(what) => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            format!("{what} already exists"),
        ),
        other => store_unavailable(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn relayed(raw: &str, strip_usage: bool) -> Option<Value> {
        let frame = sse_relay_frame(raw.as_bytes(), strip_usage)?;
        let text = std::str::from_utf8(&frame).unwrap();
        let json = text.strip_prefix("data: ")?.strip_suffix("\n\n")?;
        Some(serde_json::from_str(json).expect("the relayed frame is valid JSON"))
    }

    #[test]
    fn relayed_chunks_lose_exactly_their_top_level_usage() {
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [
            {"index": 0, "delta": {"content": "a \"usage\": {} } ,"}, "usage": 1}
        ]});
        for usage in [
            json!(null),
            json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}),
        ] {
            let mut with_usage = chunk.clone();
            with_usage["usage"] = usage.clone();
            let compact = serde_json::to_string(&with_usage).unwrap();
            let spaced = serde_json::to_string_pretty(&with_usage)
                .unwrap()
                .replace('\n', " ");
            for text in [&compact, &spaced] {
                assert_eq!(relayed(text, true), Some(chunk.clone()), "{text}");
                assert_eq!(relayed(text, false), Some(with_usage.clone()), "{text}");
            }
        }
        // Usage first, last and alone.
        let fields = r#""object":"x","created":1,"model":"m","choices":[]"#;
        let expected = json!({"object": "x", "created": 1, "model": "m", "choices": []});
        for text in [
            format!(r#"{{"usage":null,{fields}}}"#),
            format!(r#"{{ {fields} , "usage" : [1, {{"a": "}}"}}] }}"#),
            format!(r#"{{{fields},"usage":{{"total_tokens":3}}}}"#),
            format!(r#"{{{fields}}}"#),
        ] {
            assert_eq!(relayed(&text, true), Some(expected.clone()), "{text}");
        }
    }

    #[test]
    fn chunks_the_relay_cannot_vouch_for_are_serialised_instead() {
        // Escaped keys, text that is not an object.
        let fields = r#""object":"x","created":1,"model":"m","choices":[]"#;
        assert_eq!(
            relayed(&format!(r#"{{{fields},"us\u0061ge":null}}"#), true),
            None
        );
        assert_eq!(relayed(&format!(r#"[{{{fields}}}]"#), true), None);
        assert_eq!(relayed(&format!(r#"{{{fields},"id":"c""#), true), None);
        // A chunk without a field its parsed form fills in is serialised (with the field).
        assert_eq!(
            relayed(r#"{"id":"c","created":1,"model":"m","choices":[]}"#, false),
            None
        );
        assert_eq!(
            relayed(
                r#"{"id":"c","object":"o","created":1,"model":"m","choices" :[]}"#,
                false
            ),
            Some(json!({"id": "c", "object": "o", "created": 1, "model": "m", "choices": []}))
        );
    }
}
