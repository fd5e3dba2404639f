//! How a request reaches a provider: model selection (`auto` aliases, context budgets), load
//! balancing across deployments, retries with backoff, fallbacks by error class, circuit breaking,
//! and holding a stream back until its first token so a failure before it can still be retried.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::Rng;

use super::{ChunkStream, ProviderError, ProviderErrorKind};
use crate::api::{
    ChatChunk, ChatCompletion, ChatRequest, EmbeddingRequest, EmbeddingResponse, Message, Role,
    prompt_tokens,
};
use crate::auth::{ContextPolicy, KeyRecord};
use crate::config::{BreakerConfig, RouteConfig, RoutingConfig};
use crate::error::ApiError;
use crate::gateway::{AliasModel, Deployment, Gateway, Model, ServedModel};
use crate::telemetry::{METRICS, Metrics};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// One deployment's circuit breaker. Its state is per process: on Lambda, per container.
#[derive(Debug)]
struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    opened_at: Instant,
    probing: bool,
    consecutive_failures: u32,
    outcomes: VecDeque<bool>,
}

impl Breaker {
    fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            opened_at: Instant::now(),
            probing: false,
            consecutive_failures: 0,
            outcomes: VecDeque::with_capacity(config.window as usize),
        }
    }

    fn open_for(&self) -> Duration {
        Duration::from_millis(self.config.open_ms)
    }

    /// Whether a call could go through now (without taking the half-open probe).
    fn available(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => now.duration_since(self.opened_at) >= self.open_for(),
            BreakerState::HalfOpen => !self.probing,
        }
    }

    /// Takes the call slot: an open breaker whose time is up lets this call through as the probe.
    fn acquire(&mut self, now: Instant) -> Option<BreakerState> {
        match self.state {
            BreakerState::Open if now.duration_since(self.opened_at) >= self.open_for() => {
                self.state = BreakerState::HalfOpen;
                self.probing = true;
                Some(BreakerState::HalfOpen)
            }
            BreakerState::HalfOpen => {
                self.probing = true;
                None
            }
            _ => None,
        }
    }

    /// Records a call's outcome; returns the new state if it changed.
    fn record(&mut self, success: bool, now: Instant) -> Option<BreakerState> {
        match self.state {
            BreakerState::HalfOpen => {
                self.probing = false;
                if success {
                    self.reset();
                    Some(BreakerState::Closed)
                } else {
                    self.trip(now)
                }
            }
            // A call that started before the breaker opened.
            BreakerState::Open => None,
            BreakerState::Closed => {
                if self.outcomes.len() == self.config.window as usize {
                    self.outcomes.pop_front();
                }
                self.outcomes.push_back(success);
                if success {
                    self.consecutive_failures = 0;
                    return None;
                }
                self.consecutive_failures += 1;
                let failures = self.outcomes.iter().filter(|ok| !**ok).count();
                let calls = self.outcomes.len();
                let rate_tripped = calls >= self.config.min_requests as usize
                    && failures as f64 >= self.config.failure_rate * calls as f64;
                if self.consecutive_failures >= self.config.consecutive_failures || rate_tripped {
                    self.trip(now)
                } else {
                    None
                }
            }
        }
    }

    fn trip(&mut self, now: Instant) -> Option<BreakerState> {
        self.state = BreakerState::Open;
        self.opened_at = now;
        self.probing = false;
        self.consecutive_failures = 0;
        self.outcomes.clear();
        Some(BreakerState::Open)
    }

    fn reset(&mut self) {
        self.state = BreakerState::Closed;
        self.consecutive_failures = 0;
        self.outcomes.clear();
    }
}

/// What the balancer and the breaker know of a deployment.
#[derive(Debug)]
pub struct DeploymentHealth {
    breaker: Mutex<Breaker>,
    /// Exponentially weighted moving average of time to first byte (stream) or to the whole
    /// answer, in microseconds; 0 until the first success.
    latency_ewma_us: AtomicU64,
    in_flight: AtomicU32,
}

impl DeploymentHealth {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            breaker: Mutex::new(Breaker::new(config)),
            latency_ewma_us: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.breaker
            .lock()
            .map_or(BreakerState::Closed, |b| b.state)
    }

    fn available(&self, now: Instant) -> bool {
        self.breaker.lock().map_or(true, |b| b.available(now))
    }

    /// Lower is better: expected latency scaled by the calls already waiting on it.
    fn score(&self) -> u64 {
        let latency = self.latency_ewma_us.load(Ordering::Relaxed);
        latency.saturating_mul(u64::from(self.in_flight.load(Ordering::Relaxed)) + 1)
    }

    fn observe_latency(&self, elapsed: Duration) {
        let sample = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.latency_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 4 + sample) / 5
        };
        self.latency_ewma_us.store(new, Ordering::Relaxed);
    }
}

fn note_transition(deployment: &Deployment, state: Option<BreakerState>) {
    if let Some(state) = state {
        let name = format!("{}/{}", deployment.provider_name, deployment.model);
        tracing::warn!(deployment = %name, state = state.label(), "circuit breaker changed state");
        Metrics::count(
            &METRICS.breaker_transitions,
            &[("deployment", &name), ("state", state.label())],
        );
    }
}

/// Picks a deployment of `model` not in `tried` whose breaker lets calls through: two candidates
/// drawn by weight, the one with the better latency score wins (power of two choices).
pub fn choose(model: &ServedModel, tried: &[usize], now: Instant) -> Option<usize> {
    let open: Vec<(usize, &Deployment)> = model
        .deployments
        .iter()
        .enumerate()
        .filter(|(i, d)| !tried.contains(i) && d.health.available(now))
        .collect();
    let draw = |exclude: Option<usize>| -> Option<(usize, &Deployment)> {
        let pool = || open.iter().filter(move |(i, _)| Some(*i) != exclude);
        // In u64: config validation keeps a model's weights within u32, this keeps the sum exact.
        let total: u64 = pool().map(|(_, d)| u64::from(d.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut ticket = rand::rng().random_range(0..total);
        for &(i, deployment) in pool() {
            let weight = u64::from(deployment.weight);
            if ticket < weight {
                return Some((i, deployment));
            }
            ticket -= weight;
        }
        None
    };
    let first = draw(None)?;
    match draw(Some(first.0)) {
        Some(second) if second.1.health.score() < first.1.health.score() => Some(second.0),
        _ => Some(first.0),
    }
}

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
    Complete(ChatCompletion),
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
            .map(Outcome::Complete);
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
    gateway: &'g Gateway,
    key: &KeyRecord,
    model: &'g ServedModel,
) -> Vec<&'g ServedModel> {
    let mut models = vec![model];
    models.extend(
        model
            .fallbacks
            .iter()
            .filter(|name| key.allows_model(name))
            .filter_map(|name| gateway.served(name)),
    );
    models
}

/// Calls the model's deployments, retrying and falling back as the failures warrant, within
/// `routing.max_attempts` calls and the request's deadline. `preferred` is the deployment the
/// cache key was computed for, tried first when its breaker allows.
pub async fn execute<'g, A: Attempt>(
    gateway: &'g Gateway,
    key: &KeyRecord,
    model: &'g ServedModel,
    preferred: Option<usize>,
    attempt: &mut A,
    deadline: tokio::time::Instant,
) -> Result<Answer<'g, A::Output>, ApiError> {
    let config = &gateway.routing;
    let models = candidates(gateway, key, model);

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
        let result = match tokio::time::timeout_at(deadline, attempt.call(deployment)).await {
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
                deployment.health.observe_latency(started.elapsed());
                if let Ok(mut breaker) = deployment.health.breaker.lock() {
                    note_transition(deployment, breaker.record(true, Instant::now()));
                }
                Metrics::count(
                    &METRICS.attempts,
                    &[("provider", provider), ("outcome", "ok")],
                );
                return Ok(Answer {
                    outcome,
                    model: current,
                    deployment,
                });
            }
            Err(error) => error,
        };
        let label = error_label(error.kind);
        Metrics::count(
            &METRICS.attempts,
            &[("provider", provider), ("outcome", label)],
        );
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
                    Metrics::count(&METRICS.retries, &[("reason", label)]);
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
                Metrics::count(&METRICS.retries, &[("reason", label)]);
                tokio::time::sleep(wait).await;
            }
        }
    }
    Err(match last_error {
        Some((error, deployment, model)) => error.to_api_error(&deployment.error_source(model)),
        None => ApiError::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            format!(
                "Every deployment of `{}` is unavailable (circuit open); try again shortly.",
                model.name
            ),
        ),
    })
}

fn note_fallback(from: &ServedModel, to: &ServedModel, reason: &str) {
    tracing::info!(from = %from.name, to = %to.name, reason, "falling back");
    Metrics::count(
        &METRICS.fallbacks,
        &[("from", &from.name), ("to", &to.name), ("reason", reason)],
    );
}

/// What the request needs from a model, for routing aliases.
struct Needs {
    tools: bool,
    images: bool,
    json: bool,
    tokens: u64,
}

fn needs(request: &ChatRequest, prompt_tokens: u64) -> Needs {
    Needs {
        tools: request.tools.as_ref().is_some_and(|t| !t.is_empty()),
        images: request.has_images(),
        json: request.wants_json(),
        tokens: prompt_tokens,
    }
}

fn can_serve(route: &ServedModel, needs: &Needs) -> bool {
    let caps = &route.capabilities;
    (!needs.tools || caps.tools)
        && (!needs.images || caps.images)
        && (!needs.json || caps.json)
        && route.context_window.is_none_or(|w| needs.tokens <= w)
}

/// The rule-based classifier: does this request need the strong model?
fn needs_strong_model(
    alias: &RouteConfig,
    request: &ChatRequest,
    prompt_tokens: u64,
) -> Option<&'static str> {
    let rules = &alias.escalate;
    if prompt_tokens >= rules.min_prompt_tokens {
        return Some("long_prompt");
    }
    if request
        .tools
        .as_ref()
        .is_some_and(|t| t.len() >= rules.min_tools)
    {
        return Some("many_tools");
    }
    let last_user = request.last_user_text().to_lowercase();
    if rules
        .keywords
        .iter()
        .any(|k| last_user.contains(&k.to_lowercase()))
    {
        return Some("keyword");
    }
    if last_user.contains("```") {
        return Some("code");
    }
    None
}

fn unit_price(route: &ServedModel) -> f64 {
    route.price.input_per_mtok + route.price.output_per_mtok
}

/// The model that will serve the request and what the gateway did to fit it.
pub struct Selection<'g> {
    pub model: &'g ServedModel,
    /// Set when an alias chose the model: `cheapest` or `strong:<reason>`.
    pub routed: Option<String>,
    /// Set when the conversation did not fit: `rerouted:<model>` or `trimmed:<n>`.
    pub context: Option<String>,
}

/// An alias's candidates that the key may use, by name.
fn alias_candidates<'g>(
    gateway: &'g Gateway,
    key: &KeyRecord,
    alias: &'g AliasModel,
) -> impl Iterator<Item = &'g ServedModel> {
    alias
        .route
        .candidates
        .iter()
        .filter(|name| key.allows_model(name))
        .filter_map(|name| gateway.served(name))
}

/// The model an embeddings request is served by: the model itself, or the cheapest candidate of
/// an alias that the key may use.
pub fn select_embedding<'g>(
    gateway: &'g Gateway,
    key: &KeyRecord,
    requested: &'g Model,
) -> Result<&'g ServedModel, ApiError> {
    match requested {
        Model::Served(model) => Ok(&**model),
        Model::Alias(alias) => alias_candidates(gateway, key, alias)
            .min_by(|a, b| unit_price(a).total_cmp(&unit_price(b)))
            .ok_or_else(|| no_candidate(&alias.name)),
    }
}

fn no_candidate(alias: &str) -> ApiError {
    ApiError::forbidden(format!(
        "No model behind `{alias}` is allowed for this API key."
    ))
    .with_code("model_not_allowed")
    .with_param("model")
}

/// Resolves aliases (among the candidates the key may use), then makes the conversation fit the
/// chosen model's context window: a larger-context fallback or candidate the key may use if there
/// is one, else (when the key allows) dropping the oldest turns, never the system prompt or the
/// last user turn.
pub fn select<'g>(
    gateway: &'g Gateway,
    requested: &'g Model,
    key: &KeyRecord,
    request: &mut ChatRequest,
) -> Result<Selection<'g>, ApiError> {
    let prompt_tokens = request.estimate_prompt_tokens();
    let mut routed = None;
    let (model, alias) = match requested {
        Model::Served(model) => (&**model, None),
        Model::Alias(alias) => {
            let need = needs(request, prompt_tokens);
            let allowed: Vec<&ServedModel> = alias_candidates(gateway, key, alias).collect();
            if allowed.is_empty() {
                return Err(no_candidate(&alias.name));
            }
            let mut candidates: Vec<&ServedModel> = allowed
                .iter()
                .copied()
                .filter(|m| can_serve(m, &need))
                .collect();
            candidates.sort_by(|a, b| unit_price(a).total_cmp(&unit_price(b)));
            let strong = match needs_strong_model(&alias.route, request, prompt_tokens) {
                None => None,
                Some(reason) => {
                    let preferred = alias
                        .route
                        .strong
                        .as_ref()
                        .filter(|n| key.allows_model(n))
                        .and_then(|n| gateway.served(n))
                        .filter(|m| can_serve(m, &need));
                    preferred
                        .or_else(|| candidates.last().copied())
                        .map(|m| (m, reason))
                }
            };
            let chosen = match (strong, candidates.first()) {
                (Some((model, reason)), _) => (model, format!("strong:{reason}")),
                (None, Some(cheapest)) => (*cheapest, "cheapest".to_owned()),
                (None, None) => {
                    return Err(ApiError::bad_request(format!(
                        "No model behind `{}` can serve this request (tools: {}, images: {}, JSON: {}, about {} prompt tokens).",
                        alias.name, need.tools, need.images, need.json, prompt_tokens
                    ))
                    .with_param("model"));
                }
            };
            routed = Some(chosen.1);
            (chosen.0, Some(alias))
        }
    };
    let Some(window) = model.context_window.filter(|w| prompt_tokens > *w) else {
        return Ok(Selection {
            model,
            routed,
            context: None,
        });
    };
    let larger = model
        .fallbacks
        .iter()
        .chain(alias.iter().flat_map(|a| a.route.candidates.iter()))
        .filter(|name| key.allows_model(name))
        .filter_map(|name| gateway.served(name))
        .find(|m| m.context_window.is_none_or(|w| w >= prompt_tokens));
    if let Some(bigger) = larger {
        return Ok(Selection {
            model: bigger,
            routed,
            context: Some(format!("rerouted:{}", bigger.name)),
        });
    }
    if key.context_policy == ContextPolicy::Trim {
        let dropped = trim_to_fit(request, window);
        if request.estimate_prompt_tokens() <= window {
            return Ok(Selection {
                model,
                routed,
                context: Some(format!("trimmed:{dropped}")),
            });
        }
    }
    Err(ApiError::bad_request(format!(
        "This model's maximum context length is {window} tokens; the messages are about {prompt_tokens} tokens."
    ))
    .with_code("context_length_exceeded")
    .with_param("messages"))
}

/// Drops the oldest turns until the prompt fits `window`, keeping every system/developer message
/// and everything from the last user turn on; a tool result never outlives its tool call.
/// Returns how many messages were dropped.
pub fn trim_to_fit(request: &mut ChatRequest, window: u64) -> usize {
    let Some(last_user) = request.messages.iter().rposition(|m| m.role == Role::User) else {
        return 0;
    };
    // The estimate is kept as running totals, so trimming stays linear in the message count.
    let mut chars: usize = request
        .messages
        .iter()
        .map(Message::estimate_chars)
        .sum::<usize>()
        + request.tool_chars();
    let mut count = request.messages.len();
    let mut keep = vec![true; request.messages.len()];
    let mut dropped = 0;
    let mut dropping_tool_results = false;
    for (message, keep) in request.messages.iter().zip(keep.iter_mut()).take(last_user) {
        let is_tool_result = message.role == Role::Tool;
        let drop = if dropping_tool_results && is_tool_result {
            // Tool results answering a dropped assistant turn go with it.
            true
        } else {
            dropping_tool_results = false;
            prompt_tokens(chars, count) > window
                && !matches!(message.role, Role::System | Role::Developer)
        };
        if drop {
            *keep = false;
            dropped += 1;
            chars -= message.estimate_chars();
            count -= 1;
            dropping_tool_results = true;
        }
    }
    let messages = std::mem::take(&mut request.messages);
    request.messages = messages
        .into_iter()
        .zip(keep)
        .filter_map(|(m, k)| k.then_some(m))
        .collect();
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: 10,
            min_requests: 6,
            open_ms: 1000,
        })
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_probes_and_closes() {
        let mut b = breaker();
        let t0 = Instant::now();
        assert_eq!(b.record(false, t0), None);
        assert_eq!(b.record(false, t0), None);
        assert_eq!(b.record(false, t0), Some(BreakerState::Open));
        assert!(!b.available(t0 + Duration::from_millis(999)));
        let later = t0 + Duration::from_millis(1000);
        assert!(b.available(later));
        assert_eq!(b.acquire(later), Some(BreakerState::HalfOpen));
        assert!(!b.available(later), "one probe at a time");
        assert_eq!(b.record(true, later), Some(BreakerState::Closed));
        assert!(b.available(later));
    }

    #[test]
    fn failed_probe_reopens_and_failure_rate_trips() {
        let mut b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(false, t0);
        }
        let later = t0 + Duration::from_millis(1000);
        b.acquire(later);
        assert_eq!(b.record(false, later), Some(BreakerState::Open));
        assert!(!b.available(later + Duration::from_millis(500)));

        let mut rate = breaker();
        let outcomes = [true, false, true, false, true, false];
        let transitions: Vec<_> = outcomes.iter().map(|ok| rate.record(*ok, t0)).collect();
        assert_eq!(transitions.last(), Some(&Some(BreakerState::Open)));
    }

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

    /// A conversation from a list of turn kinds: 0 user, 1 assistant, 2 assistant calling a tool
    /// followed by its result, 3 system; each `size` words long.
    fn conversation(turns: &[(u8, usize)]) -> ChatRequest {
        let mut messages = vec![json!({"role": "system", "content": "You are helpful."})];
        for (i, (kind, size)) in turns.iter().enumerate() {
            let text = "word ".repeat(*size);
            match kind {
                0 => messages.push(json!({"role": "user", "content": text})),
                1 => messages.push(json!({"role": "assistant", "content": text})),
                2 => {
                    let id = format!("call_{i}");
                    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
                        {"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ]}));
                    messages.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                }
                _ => messages.push(json!({"role": "system", "content": text})),
            }
        }
        messages.push(json!({"role": "user", "content": "the last question"}));
        serde_json::from_value(json!({"model": "m", "messages": messages})).unwrap()
    }

    proptest::proptest! {
        #[test]
        fn trimming_never_drops_system_prompts_the_last_user_turn_or_a_call_of_a_kept_result(
            turns in proptest::collection::vec((0u8..4, 0usize..60), 0..30),
            window in 20u64..800,
        ) {
            let mut request = conversation(&turns);
            let before = request.messages.clone();
            let dropped = trim_to_fit(&mut request, window);
            let after = &request.messages;
            proptest::prop_assert_eq!(before.len() - after.len(), dropped);
            let systems = |m: &[crate::api::Message]| {
                m.iter().filter(|m| m.role == Role::System).count()
            };
            proptest::prop_assert_eq!(systems(after), systems(&before));
            let last = after.last().and_then(|m| m.content.as_ref()).map(|c| c.text());
            proptest::prop_assert_eq!(last.as_deref(), Some("the last question"));
            for (i, message) in after.iter().enumerate() {
                if message.role == Role::Tool {
                    let id = message.tool_call_id.clone();
                    let called = after[..i].iter().any(|m| {
                        m.tool_calls.as_ref().is_some_and(|calls| calls.iter().any(|c| Some(&c.id) == id.as_ref()))
                    });
                    proptest::prop_assert!(called, "tool result {:?} kept without its call", id);
                }
            }
            // Nothing was dropped while the prompt fitted already.
            let original = ChatRequest { messages: before.clone(), ..request.clone() };
            if original.estimate_prompt_tokens() <= window {
                proptest::prop_assert_eq!(dropped, 0);
            }
        }
    }

    #[test]
    fn trimming_keeps_the_system_prompt_and_the_last_user_turn() {
        let long = "word ".repeat(200);
        let mut request: ChatRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": long},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": long},
                {"role": "assistant", "content": long},
                {"role": "user", "content": "And now?"}
            ]
        }))
        .unwrap();
        let dropped = trim_to_fit(&mut request, 300);
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles.first(), Some(&Role::System));
        assert_eq!(roles.last(), Some(&Role::User));
        assert_eq!(
            request
                .messages
                .last()
                .unwrap()
                .content
                .as_ref()
                .unwrap()
                .text(),
            "And now?"
        );
        assert!(
            !roles.contains(&Role::Tool),
            "no orphaned tool result: {roles:?}"
        );
        assert!(dropped >= 3);
        assert!(request.estimate_prompt_tokens() <= 300);
    }
}
