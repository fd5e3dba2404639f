//! The embeddings pipeline: [`embed_texts`] (bound the inputs, select the model, read the
//! embedding cache, admit, call the provider for the misses only, in batches through the attempt
//! loop, store what came back) and `/v1/embeddings` on top of it, answering in the encoding the
//! client asked for.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;

use super::settlement::{Settlement, finish_in_background};
use super::{
    X_GATEWAY_CACHE, X_GATEWAY_COST, X_GATEWAY_MODEL, X_GATEWAY_PROVIDER, authorize_model,
    json_response, parse_json, set_header, to_json_bytes,
};
use crate::api::{
    Embedding, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage,
    EmbeddingVector, EncodingFormat, JsonObject, MAX_EMBEDDING_INPUTS,
    MAX_EMBEDDING_REQUEST_TOKENS, Usage,
};
use crate::clock::now_secs;
use crate::config::{MAX_EMBEDDING_DIMENSIONS, ModelKind, Price};
use crate::error::{ApiError, ErrorKind};
use crate::ingest::embedding_cache::{CachedEmbedding, EmbeddingScope, embedding_key};
use crate::keys::KeyRecord;
use crate::limits::Estimate;
use crate::routing::{self, Deployment, ServedModel};
use crate::state::Gateway;

/// Upstream calls one request keeps in flight: enough to hide the latency of one-text-per-call
/// models (Titan) without hammering the provider's rate limit.
const UPSTREAM_CONCURRENCY: usize = 4;

static X_GATEWAY_CACHE_HITS: HeaderName = HeaderName::from_static("x-gateway-cache-hits");

/// What [`embed_texts`] produced.
#[derive(Debug, Clone)]
pub struct EmbedOutcome {
    /// One vector per text, in the order of the texts.
    pub vectors: Vec<Vec<f32>>,
    /// Texts answered from the embedding cache.
    pub cache_hits: usize,
    /// Provider calls that answered (one per batch of misses).
    pub upstream_calls: usize,
    /// Prompt tokens of every text, cached ones by the count stored with them.
    pub prompt_tokens: u64,
    /// What the upstream calls cost; cached texts cost nothing.
    pub cost_usd: f64,
    /// The served model and provider config names.
    pub model: String,
    pub provider: String,
}

/// Embeds texts for a key: model authorised for the key, per-input embedding cache (tenant
/// partition), misses batched up to the model's per-call input limit, each call through the
/// router (retries, fallbacks, limits, spend billed to the key).
pub async fn embed_texts(
    gateway: &Gateway,
    key: &KeyRecord,
    model: &str,
    texts: &[String],
    dimensions: Option<u32>,
    deadline: tokio::time::Instant,
) -> Result<EmbedOutcome, ApiError> {
    embed_inputs(
        gateway,
        key,
        model,
        texts,
        dimensions,
        CacheRead::Use,
        deadline,
    )
    .await
    .map(|embedded| embedded.outcome)
}

/// Whether cached embeddings may answer (new ones are stored either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheRead {
    Use,
    /// The client asked for fresh vectors (`Cache-Control: no-cache`, `x-gateway-cache: bypass`).
    Bypass,
}

impl CacheRead {
    fn from_headers(headers: &HeaderMap) -> Self {
        let has = |name: &str, needle: &str| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.to_ascii_lowercase().contains(needle))
        };
        if has("cache-control", "no-cache")
            || has("cache-control", "no-store")
            || has("x-gateway-cache", "bypass")
        {
            CacheRead::Bypass
        } else {
            CacheRead::Use
        }
    }
}

/// [`EmbedOutcome`] and what `/v1/embeddings` needs besides.
struct Embedded {
    outcome: EmbedOutcome,
    /// The upstream model name that answered (or would have): the response's `model`.
    upstream_model: String,
}

/// One batch of distinct missing texts as the provider answered it.
struct BatchAnswer<'g> {
    vectors: Vec<Vec<f32>>,
    /// Per text, the batch's prompt tokens shared out by text length.
    tokens: Vec<u32>,
    cost_usd: f64,
    model: &'g ServedModel,
    deployment: &'g Deployment,
}

fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

fn check_bounds(texts: &[String], dimensions: Option<u32>) -> Result<(), ApiError> {
    if texts.len() > MAX_EMBEDDING_INPUTS {
        return Err(ApiError::bad_request(format!(
            "`input` has {} entries; at most {MAX_EMBEDDING_INPUTS} are accepted",
            texts.len()
        ))
        .with_param("input"));
    }
    let tokens: u64 = texts.iter().map(|t| estimate_tokens(t)).sum();
    if tokens > MAX_EMBEDDING_REQUEST_TOKENS {
        return Err(ApiError::bad_request(format!(
            "`input` is about {tokens} tokens; at most {MAX_EMBEDDING_REQUEST_TOKENS} are accepted per request"
        ))
        .with_param("input"));
    }
    if dimensions == Some(0) {
        return Err(
            ApiError::bad_request("`dimensions` must be at least 1").with_param("dimensions")
        );
    }
    Ok(())
}

/// The most inputs one call may carry for every deployment that may serve `model` (its own and
/// its fallbacks'), so a batch fits wherever the attempt loop sends it.
fn inputs_per_call(gateway: &Gateway, model: &ServedModel) -> usize {
    let fallbacks = model
        .fallbacks
        .iter()
        .filter_map(|name| gateway.models.served(name));
    std::iter::once(model)
        .chain(fallbacks)
        .flat_map(|m| m.deployments.iter())
        .map(|d| d.provider.max_embedding_inputs(&d.model))
        .min()
        .unwrap_or(1)
        .max(1)
}

/// Shares `total` tokens among texts in proportion to their length (every text weighs at least
/// 1), rounding each running sum to the nearest token: the shares add up to `total` exactly.
fn share_tokens(total: u64, texts: &[&str]) -> Vec<u32> {
    let weights: Vec<u128> = texts
        .iter()
        .map(|t| u128::from(estimate_tokens(t).max(1)))
        .collect();
    let sum: u128 = weights.iter().sum::<u128>().max(1);
    let mut before = 0u128;
    let mut cumulative = 0u128;
    weights
        .iter()
        .map(|w| {
            cumulative += w;
            let upto = (u128::from(total) * cumulative + sum / 2) / sum;
            let share = upto - before;
            before = upto;
            u32::try_from(share).unwrap_or(u32::MAX)
        })
        .collect()
}

fn bad_upstream(message: String) -> ApiError {
    ApiError::new(ErrorKind::BadGateway, message)
}

/// The vectors of an upstream answer to `count` inputs, by input position; refuses an answer
/// with missing, repeated or misshapen embeddings.
fn answer_vectors(
    response: EmbeddingResponse,
    count: usize,
    dimensions: Option<u32>,
) -> Result<Vec<Vec<f32>>, ApiError> {
    if response.data.len() != count {
        return Err(bad_upstream(format!(
            "the model returned {} embeddings for {count} inputs",
            response.data.len()
        )));
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; count];
    let mut size = dimensions;
    for item in response.data {
        let EmbeddingVector::Float(vector) = item.embedding.into_format(EncodingFormat::Float)?
        else {
            return Err(bad_upstream(
                "the model returned an undecodable embedding".into(),
            ));
        };
        let length = u32::try_from(vector.len()).unwrap_or(u32::MAX);
        if length == 0 || length > MAX_EMBEDDING_DIMENSIONS || size.is_some_and(|s| s != length) {
            return Err(bad_upstream(format!(
                "the model returned an embedding of {length} dimensions{}",
                size.map_or(String::new(), |s| format!(" where {s} were expected"))
            )));
        }
        size = Some(length);
        let slot = usize::try_from(item.index)
            .ok()
            .and_then(|i| vectors.get_mut(i))
            .filter(|slot| slot.is_none())
            .ok_or_else(|| {
                bad_upstream(format!(
                    "the model returned an embedding with index {} for {count} inputs",
                    item.index
                ))
            })?;
        *slot = Some(vector);
    }
    Ok(vectors.into_iter().flatten().collect())
}

/// One provider call (with the attempt loop's retries and fallbacks) for a batch of texts.
async fn call_batch<'g>(
    gateway: &'g Gateway,
    key: &KeyRecord,
    model: &'g ServedModel,
    batch: Vec<&str>,
    dimensions: Option<u32>,
    deadline: tokio::time::Instant,
) -> Result<BatchAnswer<'g>, ApiError> {
    let mut request = EmbeddingRequest {
        model: model.name.clone(),
        input: EmbeddingInput::Many(batch.iter().map(|t| (*t).to_owned()).collect()),
        encoding_format: None,
        dimensions,
        user: None,
        extra: JsonObject::new(),
    };
    let mut attempt = routing::EmbeddingAttempt {
        request: &mut request,
    };
    let answer = routing::execute(
        &gateway.models,
        &gateway.routing,
        key,
        model,
        None,
        &mut attempt,
        deadline,
    )
    .await?;
    let reported = answer.outcome.usage.prompt_tokens;
    let vectors = answer_vectors(answer.outcome, batch.len(), dimensions)?;
    let tokens = if reported > 0 {
        reported
    } else {
        batch.iter().map(|t| estimate_tokens(t)).sum()
    };
    Ok(BatchAnswer {
        vectors,
        tokens: share_tokens(tokens, &batch),
        cost_usd: answer.model.price.cost_usd(tokens, 0),
        model: answer.model,
        deployment: answer.deployment,
    })
}

async fn embed_inputs(
    gateway: &Gateway,
    key: &KeyRecord,
    model_name: &str,
    texts: &[String],
    dimensions: Option<u32>,
    read: CacheRead,
    deadline: tokio::time::Instant,
) -> Result<Embedded, ApiError> {
    let now = now_secs();
    check_bounds(texts, dimensions)?;
    let requested = authorize_model(gateway, key, model_name, ModelKind::Embedding)?;
    let model = routing::select_embedding(&gateway.models, key, requested)?;
    if let Some(asked) = dimensions
        && asked > model.max_dimensions
    {
        return Err(ApiError::bad_request(format!(
            "`dimensions` is too large: {asked}. Model `{}` supports at most {}.",
            model.name, model.max_dimensions
        ))
        .with_param("dimensions"));
    }
    let primary = model.deployments.first();
    let total = tokio::time::Instant::now() + Duration::from_millis(primary.timeouts.total_ms);
    let deadline = deadline.min(total);

    let scope = EmbeddingScope {
        partition: gateway.cache_partition(&key.tenant),
        model: &model.name,
        version: primary.version.as_deref(),
        dimensions,
    };
    let keys: Vec<[u8; 32]> = texts.iter().map(|t| embedding_key(&scope, t)).collect();
    let mut found = match read {
        CacheRead::Use => {
            gateway
                .embedding_cache
                .get_many(&keys, dimensions, deadline)
                .await
        }
        CacheRead::Bypass => vec![None; texts.len()],
    };
    let cache_hits = found.iter().filter(|entry| entry.is_some()).count();

    // Each distinct missing text goes upstream once, however often it repeats.
    let mut missing: Vec<usize> = Vec::new();
    let mut seen: HashMap<[u8; 32], usize> = HashMap::new();
    for (position, (key, entry)) in keys.iter().zip(&found).enumerate() {
        if entry.is_none() && !seen.contains_key(key) {
            seen.insert(*key, missing.len());
            missing.push(position);
        }
    }
    let missing_texts: Vec<&str> = missing
        .iter()
        .filter_map(|&i| texts.get(i).map(String::as_str))
        .collect();
    let estimate: u64 = missing_texts.iter().map(|t| estimate_tokens(t)).sum();
    // A request answered from the cache still counts against the key's request rate.
    let reservation = gateway
        .limiter
        .acquire(
            key,
            Estimate {
                tokens: estimate,
                cost_usd: model.price.cost_usd(estimate, 0),
            },
            now,
        )
        .await
        .map_err(|e| e.to_api_error())?;
    let mut settlement = Settlement::new(gateway, reservation, model.price, &model.name);

    let per_call = inputs_per_call(gateway, model);
    // Collected first: a closure inside the stream would make the future's lifetimes too
    // general for the compiler to prove it `Send`.
    let mut calls = Vec::new();
    for batch in missing_texts.chunks(per_call) {
        calls.push(call_batch(
            gateway,
            key,
            model,
            batch.to_vec(),
            dimensions,
            deadline,
        ));
    }
    let answers: Vec<Result<BatchAnswer<'_>, ApiError>> = futures_util::stream::iter(calls)
        .buffered(UPSTREAM_CONCURRENCY)
        .collect()
        .await;

    let mut fresh: Vec<CachedEmbedding> = Vec::with_capacity(missing.len());
    let mut upstream_tokens = 0u64;
    let mut cost_usd = 0.0;
    let mut upstream_calls = 0usize;
    let mut failure = None;
    let mut served_by: Option<(&ServedModel, &Deployment)> = None;
    let mut cacheable = true;
    for answer in answers {
        match answer {
            Ok(batch) => {
                upstream_calls += 1;
                upstream_tokens += batch.tokens.iter().map(|&t| u64::from(t)).sum::<u64>();
                cost_usd += batch.cost_usd;
                // Vectors of a fallback model live in another space: never cached as this one's.
                cacheable &= std::ptr::eq(batch.model, model);
                served_by.get_or_insert((batch.model, batch.deployment));
                fresh.extend(
                    batch
                        .vectors
                        .into_iter()
                        .zip(batch.tokens)
                        .map(|(vector, tokens)| CachedEmbedding { tokens, vector }),
                );
            }
            Err(error) => {
                failure.get_or_insert(error);
                break;
            }
        }
    }
    let (served_model, served_deployment) = served_by.unwrap_or((model, primary));
    let billed_price = if upstream_tokens > 0 {
        Price {
            input_per_mtok: cost_usd * 1_000_000.0 / upstream_tokens as f64,
            output_per_mtok: 0.0,
            ..Price::default()
        }
    } else {
        served_model.price
    };
    if cacheable {
        let entries: Vec<([u8; 32], CachedEmbedding)> = missing
            .iter()
            .filter_map(|&i| keys.get(i).copied())
            .zip(fresh.iter().cloned())
            .collect();
        let cache = gateway.embedding_cache.clone();
        finish_in_background(&gateway.background, async move {
            cache.put_many(entries).await;
        });
    }
    if let Some(error) = failure {
        settlement.bill_to(billed_price, &served_model.name);
        settlement.observed = Usage::new(upstream_tokens, 0);
        return Err(error);
    }
    let cost_usd = settlement.finish(
        Usage::new(upstream_tokens, 0),
        billed_price,
        &served_model.name,
    );

    for (position, entry) in found.iter_mut().enumerate() {
        if entry.is_none() {
            let slot = keys.get(position).and_then(|k| seen.get(k));
            *entry = slot.and_then(|&s| fresh.get(s)).cloned();
        }
    }
    let mut vectors = Vec::with_capacity(texts.len());
    let mut prompt_tokens = 0u64;
    for entry in found {
        let entry = entry
            .ok_or_else(|| bad_upstream("the model left an input without an embedding".into()))?;
        prompt_tokens += u64::from(entry.tokens);
        vectors.push(entry.vector);
    }
    Ok(Embedded {
        outcome: EmbedOutcome {
            vectors,
            cache_hits,
            upstream_calls,
            prompt_tokens,
            cost_usd,
            model: served_model.name.clone(),
            provider: served_deployment.provider_name.clone(),
        },
        upstream_model: served_deployment.model.clone(),
    })
}

/// `x-gateway-cache` of an answer with `hits` of `inputs` texts from the cache.
fn cache_header(hits: usize, inputs: usize, read: CacheRead) -> &'static str {
    match read {
        CacheRead::Bypass => "BYPASS",
        CacheRead::Use if hits == 0 => "MISS",
        CacheRead::Use if hits == inputs => "HIT",
        CacheRead::Use => "PARTIAL",
    }
}

pub(crate) async fn embed(
    gateway: &Gateway,
    key: &KeyRecord,
    headers: &HeaderMap,
    body: &[u8],
    invocation_deadline: Option<tokio::time::Instant>,
) -> Result<Response, ApiError> {
    let request: EmbeddingRequest = parse_json(body)?;
    request.validate()?;
    if request.extra.contains_key("rag") {
        return Err(ApiError::bad_request(
            "`rag` applies to chat completions; an embedding model cannot answer from a collection.",
        )
        .with_param("rag"));
    }
    let format = request.encoding_format.unwrap_or(EncodingFormat::Float);
    let texts = request.input.texts()?;
    let read = CacheRead::from_headers(headers);
    // `embed_inputs` caps it at the model's own total timeout.
    let deadline = invocation_deadline
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(24 * 3600));
    let embedded = embed_inputs(
        gateway,
        key,
        &request.model,
        &texts,
        request.dimensions,
        read,
        deadline,
    )
    .await?;
    let outcome = embedded.outcome;
    let data = outcome
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            Ok(Embedding {
                object: "embedding".to_owned(),
                index: u32::try_from(index).unwrap_or(u32::MAX),
                embedding: EmbeddingVector::Float(vector).into_format(format)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let response = EmbeddingResponse {
        object: "list".to_owned(),
        data,
        model: embedded.upstream_model,
        usage: EmbeddingUsage {
            prompt_tokens: outcome.prompt_tokens,
            total_tokens: outcome.prompt_tokens,
        },
    };
    let mut http_response = json_response(StatusCode::OK, to_json_bytes(&response)?);
    set_header(
        &mut http_response,
        &X_GATEWAY_CACHE,
        cache_header(outcome.cache_hits, texts.len(), read),
    );
    set_header(
        &mut http_response,
        &X_GATEWAY_CACHE_HITS,
        &format!("{}/{}", outcome.cache_hits, texts.len()),
    );
    set_header(&mut http_response, &X_GATEWAY_PROVIDER, &outcome.provider);
    set_header(&mut http_response, &X_GATEWAY_MODEL, &outcome.model);
    set_header(
        &mut http_response,
        &X_GATEWAY_COST,
        &format!("{:.8}", outcome.cost_usd),
    );
    Ok(http_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shares_follow_length_and_add_up() {
        let texts = ["a", "abcdefgh", "abcd"];
        let shares = share_tokens(10, &texts);
        assert_eq!(shares.iter().map(|&s| u64::from(s)).sum::<u64>(), 10);
        assert!(shares[1] > shares[0]);
        assert_eq!(share_tokens(7, &["only"]), vec![7]);
        assert_eq!(share_tokens(0, &["x", "y"]), vec![0, 0]);
    }

    #[test]
    fn the_cache_header_says_how_many_inputs_were_cached() {
        assert_eq!(cache_header(0, 3, CacheRead::Use), "MISS");
        assert_eq!(cache_header(2, 3, CacheRead::Use), "PARTIAL");
        assert_eq!(cache_header(3, 3, CacheRead::Use), "HIT");
        assert_eq!(cache_header(0, 3, CacheRead::Bypass), "BYPASS");
    }

    #[test]
    fn answers_are_put_in_input_order_and_checked() {
        let item = |index, vector: Vec<f32>| Embedding {
            object: "embedding".into(),
            index,
            embedding: EmbeddingVector::Float(vector),
        };
        let response = |data| EmbeddingResponse {
            object: "list".into(),
            data,
            model: "m".into(),
            usage: EmbeddingUsage::default(),
        };
        let swapped = response(vec![item(1, vec![2.0, 2.0]), item(0, vec![1.0, 1.0])]);
        assert_eq!(
            answer_vectors(swapped, 2, Some(2)).unwrap(),
            vec![vec![1.0, 1.0], vec![2.0, 2.0]]
        );
        let repeated = response(vec![item(0, vec![1.0]), item(0, vec![1.0])]);
        assert!(answer_vectors(repeated, 2, None).is_err());
        let short = response(vec![item(0, vec![1.0])]);
        assert!(answer_vectors(short, 2, None).is_err());
        let wrong_size = response(vec![item(0, vec![1.0, 2.0, 3.0])]);
        assert!(answer_vectors(wrong_size, 1, Some(2)).is_err());
        let ragged = response(vec![item(0, vec![1.0]), item(1, vec![1.0, 2.0])]);
        assert!(answer_vectors(ragged, 2, None).is_err());
    }
}
