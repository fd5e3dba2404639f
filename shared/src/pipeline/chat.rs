//! The chat completions pipeline: validate, select the model, admit against the key's limits, look
//! up the cache, call the provider through the attempt loop, and answer (JSON or an SSE relay).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;
use tracing::Instrument;

use super::guard::screen_chat;
use super::pii;
use super::rag;
use super::relay::StreamRelay;
use super::semantic::{self, SEMANTIC_HIT, Semantic};
use super::settlement::{Settlement, finish_in_background};
use super::sse::{SSE_DONE, sse_data, sse_response};
use super::validate::{self, Checked, Retry};
use super::{
    CACHE_HIT, DEFAULT_RESERVED_OUTPUT_TOKENS, UpstreamTime, X_GATEWAY_COST, authorize_model,
    gateway_headers, json_response, parse_json, set_header, to_json_bytes,
};
use crate::api::{ChatCompletion, ChatRequest, CompletionAssembler, StreamOptions, Usage};
use crate::cache::key::cache_key_with_retrieval;
use crate::cache::semantic::SemanticScope;
use crate::cache::{CacheMode, Lookup};
use crate::clock::now_secs;
use crate::config::ModelKind;
use crate::error::{ApiError, ErrorKind};
use crate::keys::KeyRecord;
use crate::limits::Estimate;
use crate::routing::{self, Model, Outcome, ServedModel};
use crate::state::Gateway;
use crate::telemetry::{METRICS, Metrics, RequestTrace, SPAN_TARGET};

pub(crate) async fn chat(
    gateway: &Gateway,
    key: &KeyRecord,
    headers: &HeaderMap,
    body: &[u8],
    invocation_deadline: Option<tokio::time::Instant>,
) -> Result<Response, ApiError> {
    let mut request: ChatRequest = parse_json(body)?;
    let rag = rag::spec(gateway, &mut request)?;
    request.validate()?;
    if rag.is_some()
        && gateway
            .models
            .model(&request.model)
            .is_ok_and(|m| m.kind() == ModelKind::Embedding)
    {
        return Err(ApiError::bad_request(format!(
            "`rag` needs a chat model; `{}` is an embedding model.",
            request.model
        ))
        .with_param("rag"));
    }
    let requested = authorize_model(gateway, key, &request.model, ModelKind::Chat)?;
    // Before the cache lookup: a request the guard blocks is never answered from the cache.
    // Injection rules read the client's own text; PII is redacted after, in what is sent.
    let guard = gateway.guard_for(key, &request.model);
    let mut screening = screen_chat(&guard, &mut request)?;
    let mut pii = pii::screen(&guard, &mut request)?;
    let Some(spec) = rag else {
        let headers = &*pii.cache_headers(headers);
        let mut response = answer(
            gateway,
            key,
            headers,
            request,
            requested,
            None,
            invocation_deadline,
        )
        .await?;
        screening.mark(&mut response);
        return pii.finish(response).await;
    };
    let augmented = rag::augment(
        gateway,
        key,
        &mut request,
        spec,
        &mut screening,
        &mut pii,
        invocation_deadline,
    )
    .instrument(tracing::info_span!(target: SPAN_TARGET, "retrieval"))
    .await?;
    let headers = &*pii.cache_headers(headers);
    let response = answer(
        gateway,
        key,
        headers,
        request,
        requested,
        Some(&augmented.cache_context),
        invocation_deadline,
    )
    .await?;
    let response = pii.finish(response).await?;
    let mut response = rag::attach_sources(response, augmented.sources).await?;
    screening.mark(&mut response);
    Ok(response)
}

/// Answers a checked request: select, admit, cache (exact, then semantic), call, relay.
/// `retrieval` is what a RAG request's cache key must hold.
async fn answer(
    gateway: &Gateway,
    key: &KeyRecord,
    headers: &HeaderMap,
    mut request: ChatRequest,
    requested: &Model,
    retrieval: Option<&Value>,
    invocation_deadline: Option<tokio::time::Instant>,
) -> Result<Response, ApiError> {
    let now = now_secs();
    let selection = routing::select(&gateway.models, requested, key, &mut request)?;
    let route = selection.model;
    check_output_cap(&request, route)?;
    let output_schema = validate::requested_schema(&request)?;

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
        .instrument(tracing::info_span!(target: SPAN_TARGET, "limits"))
        .await
        .map_err(|e| e.to_api_error())?;
    let mut settlement = Settlement::new(gateway, reservation, route.price, &route.name);
    settlement.observed.prompt_tokens = prompt_estimate;

    let preferred = routing::choose(route, &[], Instant::now());
    let primary = preferred
        .and_then(|i| route.deployments.get(i))
        .unwrap_or(route.deployments.first());
    let total = tokio::time::Instant::now() + Duration::from_millis(primary.timeouts.total_ms);
    let deadline = invocation_deadline.map_or(total, |at| at.min(total));
    let mode = CacheMode::decide(headers, &request, route.cache_ttl_s);
    let stream = request.is_stream();
    let include_usage = request.include_usage();
    let mut leader = None;
    if mode == CacheMode::Use {
        let partition = gateway.cache_partition(&key.tenant);
        let exact_key = cache_key_with_retrieval(
            partition,
            &primary.provider_name,
            &primary.model,
            primary.version.as_deref(),
            &request,
            retrieval,
        );
        let serve_cached = |body: Bytes, how: &'static str, settlement: Settlement| {
            Metrics::count(&METRICS.cache, &[("result", how), ("model", &route.name)]);
            // A hit costs nothing upstream: only the request itself counts against RPM.
            settlement.finish(Usage::default(), route.price, &route.name);
            let mut response = cached_response(body, stream, include_usage)?;
            gateway_headers(&mut response, how, route, primary, &selection);
            set_header(&mut response, &X_GATEWAY_COST, "0");
            Ok::<Response, ApiError>(response)
        };
        let cache_span =
            tracing::info_span!(target: SPAN_TARGET, "cache", result = tracing::field::Empty);
        let lookup = gateway.cache.lookup(exact_key, deadline);
        match lookup.instrument(cache_span.clone()).await {
            Lookup::Hit(body) => {
                cache_span.record("result", CACHE_HIT);
                return serve_cached(body, CACHE_HIT, settlement);
            }
            Lookup::Miss(mut guard) => {
                let semantic = gateway.semantic_caches.get(&route.name).and_then(|config| {
                    let scope = SemanticScope::of(
                        partition,
                        &primary.provider_name,
                        &primary.model,
                        primary.version.as_deref(),
                        &request,
                        retrieval,
                    )?;
                    Some((config, scope))
                });
                if let Some((config, scope)) = semantic {
                    let lookup =
                        semantic::lookup(gateway, key, config, scope, &route.name, deadline);
                    match lookup.instrument(cache_span.clone()).await {
                        Semantic::Hit(body) => {
                            cache_span.record("result", SEMANTIC_HIT);
                            // Identical requests waiting on this one look again on their own.
                            drop(guard);
                            return serve_cached(body, SEMANTIC_HIT, settlement);
                        }
                        Semantic::Miss(Some(remember)) => {
                            let exact_key = *guard.key();
                            guard.after_store(remember.under(exact_key));
                        }
                        Semantic::Miss(None) => {}
                    }
                }
                cache_span.record("result", "MISS");
                leader = Some(guard);
            }
            Lookup::DeadlinePassed => {
                cache_span.record("result", "deadline");
                return Err(ApiError::new(
                    ErrorKind::Timeout,
                    "The request's deadline passed while an identical request was being answered.",
                ));
            }
        }
    }
    let cache_header = mode.header_value();
    Metrics::count(
        &METRICS.cache,
        &[("result", cache_header), ("model", &route.name)],
    );

    if stream {
        // Usage is always requested upstream, so the gateway can bill streams exactly; the
        // client sees the usage chunk only if it asked for it.
        request
            .stream_options
            .get_or_insert_with(StreamOptions::default)
            .include_usage = Some(true);
    }
    let upstream_started = Instant::now();
    // The request as sent, for a retry when the answer does not match its schema.
    let retry_base = output_schema
        .as_ref()
        .filter(|_| !stream)
        .map(|_| request.clone());
    let mut attempt = routing::ChatAttempt {
        request: &mut request,
        stream,
    };
    let answer = routing::execute(
        &gateway.models,
        &gateway.routing,
        key,
        route,
        preferred,
        &mut attempt,
        deadline,
    )
    .await?;
    let upstream_time = UpstreamTime(upstream_started.elapsed());
    // Only an answer from the deployment the key was computed for is cached under it.
    let leader = leader.filter(|_| std::ptr::eq(answer.deployment, primary));
    match answer.outcome {
        Outcome::Complete(completion) => {
            let completion = *completion;
            let usage = completion
                .usage
                .unwrap_or_else(|| Usage::new(prompt_estimate, 0));
            let mut checked = Checked {
                completion,
                usage,
                model: answer.model,
                deployment: answer.deployment,
            };
            if let (Some(schema), Some(request)) = (&output_schema, &retry_base) {
                let retry = Retry {
                    gateway,
                    key,
                    route,
                    preferred,
                    request,
                    deadline,
                };
                // Boxed: a retry holds a second attempt loop, which would otherwise size (and
                // be copied with) every request's future for the few that ask for a schema.
                checked = Box::pin(validate::ensure_valid(
                    schema,
                    checked,
                    retry,
                    &mut settlement,
                ))
                .await?;
            }
            let Checked {
                completion,
                usage,
                model,
                deployment,
            } = checked;
            let cost = settlement.finish(usage, model.price, &model.name);
            let body = to_json_bytes(&completion)?;
            if let Some(leader) = leader.filter(|_| std::ptr::eq(deployment, primary)) {
                let (body, ttl) = (body.clone(), model.cache_ttl_s);
                finish_in_background(&gateway.background, leader.complete(body, ttl));
            }
            let mut response = json_response(StatusCode::OK, body);
            gateway_headers(&mut response, cache_header, model, deployment, &selection);
            set_header(&mut response, &X_GATEWAY_COST, &format!("{cost:.8}"));
            response.extensions_mut().insert(upstream_time);
            Ok(response)
        }
        Outcome::Stream(chunks) => {
            settlement.bill_to(answer.model.price, &answer.model.name);
            let leads = leader.is_some();
            let relay = StreamRelay {
                upstream: chunks,
                assembler: CompletionAssembler::default(),
                include_usage,
                usage_sent: false,
                settlement: Some(settlement),
                model: answer.model.name.clone(),
                provider: answer.deployment.provider_name.clone(),
                upstream_model: answer.deployment.model.clone(),
                span: tracing::Span::current(),
                trace: RequestTrace::current(),
                leader,
                background: gateway.background.clone(),
                cache_ttl_s: answer.model.cache_ttl_s,
                prompt_estimate,
                deadline,
                finish_grace: Duration::from_millis(gateway.routing.stream_finish_grace_ms),
                finished: false,
                output_schema,
            };
            let body = if leads {
                // Identical requests wait for this answer: it is read at the upstream's pace,
                // however slowly this client reads.
                Body::from_stream(relay.detached())
            } else {
                Body::from_stream(relay.into_stream())
            };
            let mut response = sse_response(body);
            gateway_headers(
                &mut response,
                cache_header,
                answer.model,
                answer.deployment,
                &selection,
            );
            response.extensions_mut().insert(upstream_time);
            Ok(response)
        }
    }
}

/// Refuses a `max_tokens` above what the model can produce: it would reserve (and could bill)
/// output that never comes.
pub(crate) fn check_output_cap(request: &ChatRequest, model: &ServedModel) -> Result<(), ApiError> {
    match (request.max_output_tokens(), model.max_output_tokens) {
        (Some(asked), Some(cap)) if u64::from(asked) > cap => Err(ApiError::bad_request(format!(
            "`max_tokens` is too large: {asked}. Model `{}` supports at most {cap} completion tokens.",
            model.name
        ))
        .with_param("max_tokens")),
        _ => Ok(()),
    }
}

pub(crate) fn cached_response(
    body: Bytes,
    stream: bool,
    include_usage: bool,
) -> Result<Response, ApiError> {
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
