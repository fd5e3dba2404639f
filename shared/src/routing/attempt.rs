//! The attempt loop: retries with backoff, fallbacks by error class, the breaker and the deadline,
//! for every kind of provider call; streams are held until their first token so a failure before
//! it can still be retried.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::Rng;
use tracing::Instrument;

use super::health::{choose, note_transition};
use super::registry::{Deployment, Registry, ServedModel};
use crate::api::{ChatChunk, ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse};
use crate::config::RoutingConfig;
use crate::error::ApiError;
use crate::keys::KeyRecord;
use crate::providers::{ChunkStream, ProviderError, ProviderErrorKind};
use crate::telemetry::METRICS;

/// How long to wait before retrying: the provider's `Retry-After` when it gives one (None when
/// it asks for more than the cap: better to move on than to hold the request), else exponential
/// backoff with full jitter.
pub fn backoff(
    config: &RoutingConfig,
    retry: u32,
    retry_after_secs: Option<u64>,
) -> Option<Duration> {
    match retry_after_secs {
        Some(secs) => {
            let ms = secs.saturating_mul(1000);
            (ms <= config.max_retry_after_ms).then(|| Duration::from_millis(ms))
        }
        None => {
            let ceiling = config
                .backoff_base_ms
                .saturating_mul(1u64 << retry.min(20))
                .min(config.backoff_max_ms);
            Some(Duration::from_millis(rand::rng().random_range(0..=ceiling)))
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The client's request is at fault: answer with the error.
    GiveUp,
    /// The prompt is too long: only a model with a larger context can help.
    LargerContext,
    /// This deployment cannot serve now (silent, misconfigured): go elsewhere first.
    Elsewhere,
    /// Transient: retry after a backoff, here or elsewhere.
    Retry,
}

fn next_step(error: &ProviderError) -> Next {
    match error.kind {
        ProviderErrorKind::BadRequest | ProviderErrorKind::ContentPolicy => Next::GiveUp,
        ProviderErrorKind::ContextLengthExceeded => Next::LargerContext,
        ProviderErrorKind::Authentication
        | ProviderErrorKind::NotFound
        | ProviderErrorKind::Timeout => Next::Elsewhere,
        ProviderErrorKind::RateLimited
        | ProviderErrorKind::Server
        | ProviderErrorKind::Connection
        | ProviderErrorKind::Protocol => Next::Retry,
    }
}

fn error_label(kind: ProviderErrorKind) -> &'static str {
    match kind {
        ProviderErrorKind::BadRequest => "bad_request",
        ProviderErrorKind::ContextLengthExceeded => "context_length",
        ProviderErrorKind::ContentPolicy => "content_policy",
        ProviderErrorKind::Authentication => "authentication",
        ProviderErrorKind::NotFound => "not_found",
        ProviderErrorKind::RateLimited => "rate_limited",
        ProviderErrorKind::Server => "server",
        ProviderErrorKind::Timeout => "timeout",
        ProviderErrorKind::Connection => "connection",
        ProviderErrorKind::Protocol => "protocol",
    }
}

/// Whether a failure says something about the deployment's health (a bad request does not).
fn counts_against_breaker(error: &ProviderError) -> bool {
    !matches!(
        error.kind,
        ProviderErrorKind::BadRequest
            | ProviderErrorKind::ContentPolicy
            | ProviderErrorKind::ContextLengthExceeded
    )
}

/// What a chat call produced.
pub enum Outcome {
    /// Boxed: a completion is several times the size of a stream handle.
    Complete(Box<ChatCompletion>),
    /// A stream that has produced its first token; nothing has been sent to the client yet.
    Stream(ChunkStream),
}

/// The answer and who gave it.
pub struct Answer<'g, T> {
    pub outcome: T,
    pub model: &'g ServedModel,
    pub deployment: &'g Deployment,
}

/// One kind of provider call the attempt loop makes (a chat completion, embeddings): retries,
/// fallbacks, breakers, the deadline and the attempt metrics are the same for every kind.
pub trait Attempt {
    type Output;

    /// Calls `deployment` once.
    fn call<'a>(
        &'a mut self,
        deployment: &'a Deployment,
    ) -> impl Future<Output = Result<Self::Output, ProviderError>> + Send + 'a;
}

/// A chat completion, streamed or not.
pub struct ChatAttempt<'r> {
    pub request: &'r mut ChatRequest,
    pub stream: bool,
}

impl Attempt for ChatAttempt<'_> {
    type Output = Outcome;

    fn call<'a>(
        &'a mut self,
        deployment: &'a Deployment,
    ) -> impl Future<Output = Result<Outcome, ProviderError>> + Send + 'a {
        self.request.model.clone_from(&deployment.model);
        call_once(deployment, self.request, self.stream)
    }
}

/// An embeddings call.
pub struct EmbeddingAttempt<'r> {
    pub request: &'r mut EmbeddingRequest,
}

impl Attempt for EmbeddingAttempt<'_> {
    type Output = EmbeddingResponse;

    fn call<'a>(
        &'a mut self,
        deployment: &'a Deployment,
    ) -> impl Future<Output = Result<EmbeddingResponse, ProviderError>> + Send + 'a {
        self.request.model.clone_from(&deployment.model);
        deployment.provider.embed(self.request)
    }
}

/// True when a chunk carries something the client must see (a token, a tool call, an end).
fn is_first_token(chunk: &ChatChunk) -> bool {
    chunk.choices.iter().any(|c| {
        c.finish_reason.is_some()
            || c.delta.content.as_deref().is_some_and(|t| !t.is_empty())
            || c.delta.tool_calls.is_some()
    })
}

/// One call to one deployment. A stream is held until its first token (within
/// `first_token_ms`), so an upstream that fails or stalls before it can still be retried.
async fn call_once(
    deployment: &Deployment,
    request: &ChatRequest,
    stream: bool,
) -> Result<Outcome, ProviderError> {
    let timeouts = &deployment.timeouts;
    if !stream {
        return deployment
            .provider
            .chat(request)
            .await
            .map(|completion| Outcome::Complete(Box::new(completion)));
    }
    let first_token_deadline =
        tokio::time::Instant::now() + Duration::from_millis(timeouts.first_token_ms);
    let mut chunks = deployment.provider.chat_stream(request).await?;
    let mut held = Vec::new();
    loop {
        match tokio::time::timeout_at(first_token_deadline, chunks.next()).await {
            Err(_) => {
                return Err(ProviderError::new(
                    ProviderErrorKind::Timeout,
                    format!("no first token within {} ms", timeouts.first_token_ms),
                ));
            }
            Ok(None) => {
                return Err(ProviderError::new(
                    ProviderErrorKind::Protocol,
                    "the stream ended before its first token",
                ));
            }
            Ok(Some(Err(error))) => return Err(error),
            Ok(Some(Ok(chunk))) => {
                let first = is_first_token(&chunk);
                held.push(Ok(chunk));
                if first {
                    let replay = futures_util::stream::iter(held).chain(chunks);
                    return Ok(Outcome::Stream(replay.boxed()));
                }
            }
        }
    }
}

/// The models a request may be served by, in order: `model`, then its fallbacks that the key may
/// use (a fallback outside the key's scope is never called, whatever it costs).
fn candidates<'g>(
    registry: &'g Registry,
    key: &KeyRecord,
    model: &'g ServedModel,
) -> Vec<&'g ServedModel> {
    let mut models = vec![model];
    models.extend(
        model
            .fallbacks
            .iter()
            .filter(|name| key.allows_model(name))
            .filter_map(|name| registry.served(name)),
    );
    models
}

/// Calls the model's deployments, retrying and falling back as the failures warrant, within
/// `routing.max_attempts` calls and the request's deadline. `preferred` is the deployment the
/// cache key was computed for, tried first when its breaker allows.
pub async fn execute<'g, A: Attempt>(
    registry: &'g Registry,
    config: &RoutingConfig,
    key: &KeyRecord,
    model: &'g ServedModel,
    preferred: Option<usize>,
    attempt: &mut A,
    deadline: tokio::time::Instant,
) -> Result<Answer<'g, A::Output>, ApiError> {
    let models = candidates(registry, key, model);

    let mut model_index = 0;
    let mut tried: Vec<usize> = Vec::new();
    let mut preferred = preferred;
    let mut attempts = 0;
    let mut attempts_here = 0;
    let mut retries = 0;
    let mut last_error: Option<(ProviderError, &'g Deployment, &'g str)> = None;

    while attempts < config.max_attempts {
        let Some(&current) = models.get(model_index) else {
            break;
        };
        let next_model = models.get(model_index + 1).copied();
        let now = Instant::now();
        let pick = preferred
            .take()
            .filter(|i| {
                current
                    .deployments
                    .get(*i)
                    .is_some_and(|d| d.health.available(now))
            })
            .or_else(|| choose(current, &tried, now));
        let Some((index, deployment)) =
            pick.and_then(|i| current.deployments.get(i).map(|d| (i, d)))
        else {
            model_index += 1;
            tried.clear();
            attempts_here = 0;
            if let Some(next) = next_model {
                note_fallback(current, next, "unavailable");
            }
            continue;
        };
        if let Ok(mut breaker) = deployment.health.breaker.lock() {
            note_transition(deployment, breaker.acquire(now));
        }
        attempts += 1;
        attempts_here += 1;
        deployment.health.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let span = tracing::info_span!(
            target: crate::telemetry::SPAN_TARGET,
            "provider_attempt",
            model = %current.name,
            provider = %deployment.provider_name,
            deployment = %deployment.model,
            attempt = attempts,
            outcome = tracing::field::Empty,
        );
        let call = tokio::time::timeout_at(deadline, attempt.call(deployment));
        let result = match call.instrument(span.clone()).await {
            Ok(result) => result,
            Err(_) => Err(ProviderError::new(
                ProviderErrorKind::Timeout,
                "the request's deadline passed",
            )),
        };
        deployment.health.in_flight.fetch_sub(1, Ordering::Relaxed);
        let provider = deployment.provider_name.as_str();
        let error = match result {
            Ok(outcome) => {
                deployment
                    .health
                    .observe_latency(started.elapsed(), Instant::now());
                if let Ok(mut breaker) = deployment.health.breaker.lock() {
                    note_transition(deployment, breaker.record(true, Instant::now()));
                }
                span.record("outcome", "ok");
                METRICS.record_attempt(provider, &deployment.label(), "ok");
                return Ok(Answer {
                    outcome,
                    model: current,
                    deployment,
                });
            }
            Err(error) => error,
        };
        let label = error_label(error.kind);
        span.record("outcome", label);
        METRICS.record_attempt(provider, &deployment.label(), label);
        if counts_against_breaker(&error)
            && let Ok(mut breaker) = deployment.health.breaker.lock()
        {
            note_transition(deployment, breaker.record(false, Instant::now()));
        }
        tracing::warn!(provider, model = %deployment.model, %error, attempt = attempts, "provider call failed");
        let step = next_step(&error);
        let retry_after = error.retry_after_secs;
        last_error = Some((error, deployment, current.name.as_str()));
        match step {
            Next::GiveUp => break,
            Next::LargerContext => {
                let window = current.context_window.unwrap_or(0);
                let Some((offset, larger)) = models
                    .iter()
                    .enumerate()
                    .skip(model_index + 1)
                    .find(|(_, m)| m.context_window.is_some_and(|w| w > window))
                else {
                    break;
                };
                note_fallback(current, larger, label);
                model_index = offset;
                tried.clear();
                attempts_here = 0;
            }
            Next::Elsewhere | Next::Retry => {
                tried.push(index);
                let other_here = choose(current, &tried, Instant::now()).is_some();
                // A model gets one retry in place when a fallback is waiting, else the whole
                // attempt budget; a silent or misconfigured deployment none.
                let stay = step == Next::Retry && (next_model.is_none() || attempts_here < 2);
                if let Some(next) = next_model
                    && !other_here
                    && !stay
                {
                    note_fallback(current, next, label);
                    model_index += 1;
                    tried.clear();
                    attempts_here = 0;
                    continue;
                }
                if !other_here {
                    // Only this deployment is left: retrying it is the only hope.
                    tried.clear();
                }
                if step == Next::Elsewhere && other_here {
                    METRICS.record_retry(label);
                    continue;
                }
                let Some(wait) = backoff(config, retries, retry_after) else {
                    if let Some(next) = next_model {
                        note_fallback(current, next, label);
                        model_index += 1;
                        tried.clear();
                        attempts_here = 0;
                        continue;
                    }
                    break;
                };
                if tokio::time::Instant::now() + wait >= deadline || attempts >= config.max_attempts
                {
                    break;
                }
                retries += 1;
                METRICS.record_retry(label);
                tokio::time::sleep(wait).await;
            }
        }
    }
    Err(match last_error {
        Some((error, deployment, model)) => error.to_api_error(&deployment.error_source(model)),
        None => ApiError::unavailable(format!(
            "Every deployment of `{}` is unavailable (circuit open); try again shortly.",
            model.name
        )),
    })
}

fn note_fallback(from: &ServedModel, to: &ServedModel, reason: &str) {
    tracing::info!(from = %from.name, to = %to.name, reason, "falling back");
    METRICS.record_fallback(&from.name, &to.name, reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_honours_retry_after_up_to_the_cap_and_jitters_otherwise() {
        let config = RoutingConfig::default();
        assert_eq!(backoff(&config, 0, Some(2)), Some(Duration::from_secs(2)));
        assert_eq!(backoff(&config, 0, Some(60)), None);
        for retry in 0..10 {
            let wait = backoff(&config, retry, None).unwrap();
            let ceiling = (config.backoff_base_ms << retry).min(config.backoff_max_ms);
            assert!(wait <= Duration::from_millis(ceiling));
        }
    }

    #[test]
    fn only_fixable_failures_are_retried() {
        let kind = |k| next_step(&ProviderError::new(k, "x"));
        assert_eq!(
            kind(ProviderErrorKind::ContextLengthExceeded),
            Next::LargerContext
        );
        assert_eq!(kind(ProviderErrorKind::ContentPolicy), Next::GiveUp);
        assert_eq!(kind(ProviderErrorKind::BadRequest), Next::GiveUp);
        assert_eq!(kind(ProviderErrorKind::Timeout), Next::Elsewhere);
        assert_eq!(kind(ProviderErrorKind::RateLimited), Next::Retry);
        assert_eq!(kind(ProviderErrorKind::Server), Next::Retry);
    }
}
