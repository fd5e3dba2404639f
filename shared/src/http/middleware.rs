//! The router's layers: request ids, authentication and CloudWatch metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tracing::Instrument;

use super::handlers::AuthorizedKey;
use super::scopes;
use crate::clock::now_secs;
use crate::error::{ApiError, ErrorKind};
use crate::pipeline::{UpstreamTime, X_GATEWAY_CACHE, X_GATEWAY_MODEL, X_REQUEST_ID};
use crate::state::Gateway;
use crate::telemetry::{EMF, Emf, METRICS, RequestFacts, RequestTrace, TraceFields};

/// Resolves the bearer key of every route but `/health`, unless a front (the API Gateway
/// authorizer) already did, then checks that the key holds the scope of the matched route (the
/// one place scopes are enforced: `scopes::ROUTE_SCOPES`).
pub(crate) async fn authenticate(
    State(gateway): State<Arc<Gateway>>,
    mut request: Request,
    next: Next,
) -> Response {
    let key = match request.extensions().get::<AuthorizedKey>() {
        Some(AuthorizedKey(key)) => Arc::clone(key),
        None => match gateway
            .auth
            .authenticate(request.headers(), now_secs())
            .instrument(tracing::info_span!(target: crate::telemetry::SPAN_TARGET, "auth"))
            .await
        {
            Ok(key) => {
                request
                    .extensions_mut()
                    .insert(AuthorizedKey(Arc::clone(&key)));
                key
            }
            Err(error) => return unread_body_closes(&request, error.into_response()),
        },
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    if let Some(trace) = RequestTrace::current() {
        trace.update(|t| {
            t.key_id = Some(key.id.clone());
            t.tenant = Some(key.tenant.clone());
        });
    }
    if let Err(error) = scopes::authorize(&key, request.method(), route) {
        return unread_body_closes(&request, error.into_response());
    }
    next.run(request).await
}

/// An answer given before the request's body was read: the connection cannot carry another
/// request until the rest of that body has arrived, and the server may close it once the answer
/// is written, which a client reusing the connection would only learn from a reset. Saying so in
/// the answer (`Connection: close`) makes the client open a new connection instead.
fn unread_body_closes(request: &Request, mut response: Response) -> Response {
    let has_body = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|length| length.as_bytes() != b"0")
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    if has_body {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// One line per request (latency, time to first token, overhead, cache, errors, provider calls,
/// usage, who asked): on Lambda an EMF line on stdout, elsewhere an info event with target
/// `request`; and the Prometheus request metrics. A stream's are recorded when it ends.
pub(crate) async fn request_line(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|RequestId(id)| String::from_utf8_lossy(id.as_bytes()).into_owned());
    let trace = Arc::new(RequestTrace::default());
    let response = RequestTrace::scope(Arc::clone(&trace), next.run(request)).await;
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
        request_id,
        trace: TraceFields::default(),
    };
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streamed {
        facts.trace = trace.snapshot();
        write_request_line(&facts);
        return response;
    }
    // Streams are held until their first token, so the headers leave with it.
    facts.time_to_first_token_ms = Some(facts.latency_ms);
    let (parts, body) = response.into_parts();
    let at_end = futures_util::stream::once(async move {
        facts.latency_ms = millis(started.elapsed());
        facts.trace = trace.snapshot();
        write_request_line(&facts);
        None
    })
    .filter_map(std::future::ready);
    Response::from_parts(
        parts,
        Body::from_stream(body.into_data_stream().chain(at_end)),
    )
}

fn write_request_line(facts: &RequestFacts) {
    METRICS.record_request(facts);
    match EMF.as_ref() {
        Some(emf) => Emf::write(&emf.request_line(facts)),
        None => tracing::info!(
            target: "request",
            request_id = facts.request_id.as_deref(),
            key_id = facts.trace.key_id.as_deref(),
            tenant = facts.trace.tenant.as_deref(),
            model = facts.model.as_deref(),
            deployment = facts.trace.deployment.as_deref(),
            status = facts.status,
            error_type = facts.error_type(),
            broken_stream = facts.trace.broken_stream.as_deref(),
            latency_ms = facts.latency_ms,
            overhead_ms = facts.overhead_ms,
            time_to_first_token_ms = facts.time_to_first_token_ms,
            attempts = facts.trace.attempts,
            retries = facts.trace.retries,
            fallbacks = facts.trace.fallbacks,
            input_tokens = facts.trace.input_tokens,
            output_tokens = facts.trace.output_tokens,
            cost_usd = facts.trace.cost_usd,
            cache = facts.cache.as_deref(),
            "request"
        ),
    }
}

/// The request's `x-request-id`, for handlers that record it (the audit log).
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) HeaderValue);

/// Every response carries `x-request-id`: the caller's, or a new one.
pub(crate) async fn request_id(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| v.len() <= 128)
        .cloned()
        .unwrap_or_else(new_request_id);
    // Log lines written while the request is handled carry its id, so the `x-request-id` of an
    // error finds the details its body leaves out (a provider's failure, say).
    let span = tracing::info_span!("request", request_id = %String::from_utf8_lossy(id.as_bytes()));
    let mut request = request;
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).instrument(span).await;
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    response
}

/// A fresh `x-request-id` value, also for the responses the server gives outside the router.
pub(crate) fn new_request_id() -> HeaderValue {
    let id = format!("req_{:032x}", rand::random::<u128>());
    HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("req_unknown"))
}

/// Refuses a body whose declared `Content-Length` is over the cap at once, before any of it is
/// read (a 100-continue client never sends it); the body limit alone would wait for the bytes.
pub(crate) async fn declared_length(
    State(max_body): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > max_body as u64 => ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("Request body too large: {length} bytes declared, the limit is {max_body}."),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}
