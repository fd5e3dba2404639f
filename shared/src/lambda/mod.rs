//! Serving the shared router on Lambda, behind API Gateway REST (v1), HTTP API (v2), a Function
//! URL or an Application Load Balancer.
//!
//! Streaming needs the invocation to be made in response-streaming mode, which only REST APIs
//! (integration with `responseTransferMode: STREAM`) and Function URLs (`InvokeMode:
//! RESPONSE_STREAM`) do; HTTP APIs and ALBs invoke buffered and would pass the stream's metadata
//! prelude through as the body. So each invocation is answered in the mode its front uses
//! (`GATEWAY_RESPONSE_MODE=auto`, the default), or always in one mode (`stream`, `buffered`).
//! A buffered answer is produced by `lambda_http`'s own adapter, so a non-streamed response never
//! goes through the streaming path (aws-lambda-rust-runtime issue 967).

pub mod authorizer;
pub mod batch;
pub mod ingest;
pub mod key_setup;
pub mod setup;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use lambda_http::request::{LambdaRequest, RequestOrigin};
use lambda_http::{Adapter, Context, Error, LambdaEvent, RequestExt, Service, StreamAdapter};
use lambda_runtime::tower::ServiceExt;
use lambda_runtime::{FunctionResponse, StreamResponse};
use sha2::{Digest, Sha256};

use crate::background::Background;
use crate::error::ApiError;
use crate::http::AuthorizedKey;
use crate::keys::KeyRecord;
use crate::pipeline::RequestDeadline;
use crate::state::Gateway;

/// Time kept back from the invocation deadline to end a stream cleanly with an error event.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    Auto,
    Stream,
    Buffered,
}

impl ResponseMode {
    pub fn from_env(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") | Some("auto") => Ok(ResponseMode::Auto),
            Some("stream") => Ok(ResponseMode::Stream),
            Some("buffered") => Ok(ResponseMode::Buffered),
            Some(other) => Err(format!(
                "GATEWAY_RESPONSE_MODE must be auto, stream or buffered, not `{other}`"
            )),
        }
    }

    /// Whether this invocation is answered as a stream.
    pub fn streams(self, event: &LambdaRequest) -> bool {
        match self {
            ResponseMode::Stream => true,
            ResponseMode::Buffered => false,
            ResponseMode::Auto => match event.request_origin() {
                RequestOrigin::ApiGatewayV1 => true,
                RequestOrigin::ApiGatewayV2 => is_function_url(event),
                _ => false,
            },
        }
    }
}

/// Function URLs send v2 events from a `*.lambda-url.*` domain (also behind CloudFront, which
/// sends the origin's own Host).
fn is_function_url(event: &LambdaRequest) -> bool {
    let LambdaRequest::ApiGatewayV2(v2) = event else {
        return false;
    };
    v2.request_context
        .domain_name
        .as_deref()
        .is_some_and(|d| d.contains(".lambda-url."))
}

/// The header the template's CloudFront distribution adds to every request for the Function URL.
pub const ORIGIN_VERIFY_HEADER: &str = "x-gateway-origin-verify";

/// Which Function URL requests are answered. Behind CloudFront (`GATEWAY_ORIGIN_VERIFY`, set by
/// the template's `EnableCloudFront`) only those carrying the distribution's secret origin header,
/// so nobody skips its WAF by calling the URL directly; other fronts are not concerned.
#[derive(Clone, Copy, Default)]
pub struct OriginCheck {
    secret_digest: Option<[u8; 32]>,
}

impl OriginCheck {
    pub fn from_env() -> Self {
        Self::new(std::env::var("GATEWAY_ORIGIN_VERIFY").ok().as_deref())
    }

    /// No check without a secret (or with an empty one).
    pub fn new(secret: Option<&str>) -> Self {
        Self {
            secret_digest: secret
                .filter(|s| !s.is_empty())
                .map(|s| Sha256::digest(s.as_bytes()).into()),
        }
    }

    /// Digests are compared, not the values, so the time taken says nothing about the secret.
    fn admits(&self, event: &LambdaRequest) -> bool {
        let Some(expected) = self.secret_digest else {
            return true;
        };
        let LambdaRequest::ApiGatewayV2(v2) = event else {
            return true;
        };
        if !is_function_url(event) {
            return true;
        }
        v2.headers
            .get(ORIGIN_VERIFY_HEADER)
            .is_some_and(|value| <[u8; 32]>::from(Sha256::digest(value.as_bytes())) == expected)
    }
}

/// Answers every request of an invocation the origin check refused.
fn refused_origin_router() -> Router {
    Router::new().fallback(|| async {
        ApiError::forbidden(
            "this function URL answers only requests through the gateway's CloudFront distribution",
        )
        .with_code("origin_not_allowed")
    })
}

/// The key record an API Gateway REQUEST authorizer put in the request context (as JSON under
/// `key`). Only REST events carry an authorizer context, and API Gateway sets it: clients cannot.
fn authorized_key(event: &LambdaRequest) -> Option<KeyRecord> {
    let LambdaRequest::ApiGatewayV1(request) = event else {
        return None;
    };
    let json = request
        .request_context
        .authorizer
        .fields
        .get("key")?
        .as_str()?;
    match serde_json::from_str(json) {
        Ok(record) => Some(record),
        Err(error) => {
            tracing::error!(%error, "authorizer context has an unreadable key record");
            None
        }
    }
}

fn invocation_deadline(context: &Context) -> Option<tokio::time::Instant> {
    let now_ms = crate::clock::now_millis();
    let left = Duration::from_millis(context.deadline.checked_sub(now_ms)?);
    Some(tokio::time::Instant::now() + left.saturating_sub(DEADLINE_MARGIN))
}

/// `lambda_http` puts a REST API's stage in front of the path (`/prod/v1/...`) unless
/// `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH` is set; the router's routes have no stage, so it goes.
fn strip_stage(request: &mut lambda_http::Request) {
    let Some(lambda_http::request::RequestContext::ApiGatewayV1(context)) =
        request.request_context_ref()
    else {
        return;
    };
    let Some(stage) = context.stage.as_deref() else {
        return;
    };
    let prefix = format!("/{stage}/");
    let uri = request.uri();
    let Some(rest) = uri.path().strip_prefix(prefix.as_str()) else {
        return;
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    let mut parts = uri.clone().into_parts();
    if let Ok(path_and_query) = path_and_query.parse() {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = lambda_http::http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

/// Attaches what Lambda knows about the invocation to the request, before routing.
fn with_invocation_facts(
    mut request: lambda_http::Request,
    authorized: Option<AuthorizedKey>,
) -> lambda_http::Request {
    if let Some(at) = request.lambda_context_ref().and_then(invocation_deadline) {
        request.extensions_mut().insert(RequestDeadline(at));
    }
    if let Some(key) = authorized {
        request.extensions_mut().insert(key);
    }
    strip_stage(&mut request);
    request
}

/// Answers one invocation in the mode its front needs; used by `serve` and by tests, which feed
/// it real API Gateway, Function URL and ALB event payloads.
///
/// Background work a response started (settling limits, storing cache entries) finishes before
/// the response does: Lambda freezes the container once it has the whole response.
pub async fn handle(
    router: Router,
    background: Background,
    mode: ResponseMode,
    origin: OriginCheck,
    event: LambdaEvent<LambdaRequest>,
) -> Result<
    FunctionResponse<
        impl serde::Serialize,
        impl Stream<Item = Result<Bytes, axum::Error>> + Unpin + Send,
    >,
    Error,
> {
    let streams = mode.streams(&event.payload);
    let router = if origin.admits(&event.payload) {
        router
    } else {
        refused_origin_router()
    };
    let authorized = authorized_key(&event.payload).map(|record| AuthorizedKey(Arc::new(record)));
    let router =
        router.map_request(move |request| with_invocation_facts(request, authorized.clone()));
    if streams {
        let response = StreamAdapter::from(router).call(event).await?;
        let drained = futures_util::stream::once(async move { background.idle().await })
            .filter_map(|()| std::future::ready(None));
        Ok(FunctionResponse::StreamingResponse(StreamResponse {
            metadata_prelude: response.metadata_prelude,
            stream: Box::pin(response.stream.chain(drained)),
        }))
    } else {
        let response = Adapter::from(router).call(event).await?;
        background.idle().await;
        Ok(FunctionResponse::BufferedResponse(response))
    }
}

/// Runs the Lambda runtime loop with the shared router over `gateway`.
pub async fn serve(
    gateway: Arc<Gateway>,
    mode: ResponseMode,
    routes: crate::http::Routes,
) -> Result<(), Error> {
    let background = gateway.background.clone();
    let router = crate::http::router_for(gateway, routes);
    let origin = OriginCheck::from_env();
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: LambdaEvent<LambdaRequest>| {
            handle(router.clone(), background.clone(), mode, origin, event)
        },
    ))
    .await
}
