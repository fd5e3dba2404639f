//! `[providers.*]` and `[models.*]`: upstream accounts, the public model names clients send,
//! their deployments, prices and routing aliases.

use serde::Deserialize;

use super::guard::GuardSettings;
use crate::api::Usage;

/// The largest `max_dimensions` a model may declare (and so the largest vector a request can
/// make the gateway allocate per input).
pub const MAX_EMBEDDING_DIMENSIONS: u32 = 16_384;

/// The most chunks one RAG chat request may place in the prompt (`rag.top_k`).
pub const MAX_RAG_TOP_K: u32 = 20;

/// `rag.top_k` when neither the request nor the model binding sets one.
pub const DEFAULT_RAG_TOP_K: u32 = 4;

/// `max_dimensions` of an embedding model that declares none: text-embedding-3-large's size, the
/// largest of OpenAI's models.
pub const DEFAULT_MAX_DIMENSIONS: u32 = 3_072;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible API: OpenAI, vLLM, Ollama, Groq, Together, ...
    Openai,
    /// Azure OpenAI: deployment URLs, `api-version` and the `api-key` header.
    Azure,
    Anthropic,
    /// Amazon Bedrock's Converse API: IAM credentials from the standard AWS chain, no API key.
    Bedrock,
    /// The built-in deterministic model.
    Mock,
}

impl ProviderKind {
    /// Whether the provider serves `/v1/embeddings` (Anthropic does not; Bedrock does through
    /// InvokeModel for Titan and Cohere models).
    pub fn has_embeddings(self) -> bool {
        matches!(
            self,
            ProviderKind::Openai | ProviderKind::Azure | ProviderKind::Bedrock | ProviderKind::Mock
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    #[serde(default)]
    pub base_url: Option<String>,
    /// The name of the environment variable holding the credential, never the credential.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Azure's `api-version` query parameter, or Anthropic's `anthropic-version` header.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Bedrock only: the AWS region (default: the standard AWS environment, e.g. `AWS_REGION`).
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Mock only: delay before answering.
    #[serde(default)]
    pub latency_ms: u64,
    /// Mock only: delay between streamed chunks.
    #[serde(default)]
    pub chunk_delay_ms: u64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// From sending the request to the response headers.
    #[serde(default = "default_first_byte_ms")]
    pub first_byte_ms: u64,
    /// From sending a streamed request to its first token.
    #[serde(default = "default_first_token_ms")]
    pub first_token_ms: u64,
    /// Most time allowed between two streamed chunks.
    #[serde(default = "default_idle_ms")]
    pub idle_ms: u64,
    /// Whole request, stream included.
    #[serde(default = "default_total_ms")]
    pub total_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: default_connect_ms(),
            first_byte_ms: default_first_byte_ms(),
            first_token_ms: default_first_token_ms(),
            idle_ms: default_idle_ms(),
            total_ms: default_total_ms(),
        }
    }
}

fn default_connect_ms() -> u64 {
    5_000
}
fn default_first_byte_ms() -> u64 {
    60_000
}
fn default_first_token_ms() -> u64 {
    60_000
}
fn default_idle_ms() -> u64 {
    30_000
}
fn default_total_ms() -> u64 {
    600_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    #[default]
    Chat,
    Embedding,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default)]
    pub kind: ModelKind,
    /// Where the model is served; empty for a routing alias (`route`).
    #[serde(default)]
    pub deployments: Vec<DeploymentConfig>,
    /// Makes this model an alias that picks one of its candidates per request.
    #[serde(default)]
    pub route: Option<RouteConfig>,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub price: Price,
    #[serde(default)]
    pub context_window: Option<u64>,
    /// Most completion tokens one choice may ask for (`max_tokens`); default: the context window.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// Embedding models: the largest `dimensions` a request may ask for.
    #[serde(default)]
    pub max_dimensions: Option<u32>,
    #[serde(default)]
    pub cache: Option<ModelCacheConfig>,
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Binds the model name to a collection: every chat request naming it is answered from
    /// that collection (of the caller's tenant), as if it carried this `rag` field.
    #[serde(default)]
    pub rag: Option<RagBinding>,
    /// Injection and PII policy and an operator system prompt for this model name.
    #[serde(default)]
    pub guard: Option<GuardSettings>,
}

/// A collection a chat model name answers from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RagBinding {
    pub collection: String,
    #[serde(default = "default_rag_top_k")]
    pub top_k: u32,
}

fn default_rag_top_k() -> u32 {
    DEFAULT_RAG_TOP_K
}

/// What a model can take; requests needing more are not sent to it by a routing alias.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default = "yes")]
    pub tools: bool,
    #[serde(default = "yes")]
    pub images: bool,
    #[serde(default = "yes")]
    pub json: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            tools: true,
            images: true,
            json: true,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteStrategy {
    /// The cheapest candidate able to serve the request, unless the classifier escalates.
    Cost,
}

/// A routing alias such as `auto`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub strategy: RouteStrategy,
    pub candidates: Vec<String>,
    /// The model for requests the classifier judges hard; default: the priciest candidate.
    #[serde(default)]
    pub strong: Option<String>,
    #[serde(default)]
    pub escalate: EscalationRules,
}

/// The rule-based classifier: a request matching any rule needs the strong model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationRules {
    /// Prompts at least this long (estimated tokens).
    #[serde(default = "default_escalate_tokens")]
    pub min_prompt_tokens: u64,
    /// Words in the last user message that signal hard work (matched case-insensitively).
    #[serde(default = "default_escalate_keywords")]
    pub keywords: Vec<String>,
    /// Requests offering at least this many tools.
    #[serde(default = "default_escalate_tools")]
    pub min_tools: usize,
}

impl Default for EscalationRules {
    fn default() -> Self {
        Self {
            min_prompt_tokens: default_escalate_tokens(),
            keywords: default_escalate_keywords(),
            min_tools: default_escalate_tools(),
        }
    }
}

fn default_escalate_tokens() -> u64 {
    4_000
}
fn default_escalate_keywords() -> Vec<String> {
    [
        "prove",
        "proof",
        "step by step",
        "analyze",
        "analyse",
        "refactor",
        "debug",
        "architecture",
        "derive",
        "optimize",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}
fn default_escalate_tools() -> usize {
    5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    pub provider: String,
    /// The model name the provider knows (for Azure, the deployment name).
    pub model: String,
    /// The upstream model version; part of the cache key, so a new version never serves
    /// answers cached from the old one. For an embedding model, the first deployment's version
    /// is part of the embedding cache key: change it when the upstream model's vectors change.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub input_per_mtok: f64,
    #[serde(default)]
    pub output_per_mtok: f64,
    /// Prompt tokens read from the provider's prompt cache; default a tenth of the input price
    /// (Anthropic's ratio).
    #[serde(default)]
    pub cache_read_per_mtok: Option<f64>,
    /// Prompt tokens written to the provider's prompt cache; default 1.25 times the input price
    /// (Anthropic's five-minute cache).
    #[serde(default)]
    pub cache_write_per_mtok: Option<f64>,
}

/// Anthropic's cache prices as multiples of the input price.
const CACHE_READ_RATIO: f64 = 0.1;
const CACHE_WRITE_RATIO: f64 = 1.25;

impl Price {
    pub fn cost_usd(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_per_mtok + output_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }

    /// The cost of a call's usage: its cache reads and writes (part of its prompt tokens) at the
    /// cache prices, the rest of the prompt at the input price.
    pub fn usage_cost_usd(&self, usage: &Usage) -> f64 {
        let read = usage.cache_read_tokens().min(usage.prompt_tokens);
        let write = usage
            .cache_write_tokens()
            .min(usage.prompt_tokens.saturating_sub(read));
        let uncached = usage.prompt_tokens - read - write;
        let read_price = self
            .cache_read_per_mtok
            .unwrap_or(self.input_per_mtok * CACHE_READ_RATIO);
        let write_price = self
            .cache_write_per_mtok
            .unwrap_or(self.input_per_mtok * CACHE_WRITE_RATIO);
        self.cost_usd(uncached, usage.completion_tokens)
            + (read as f64 * read_price + write as f64 * write_price) / 1_000_000.0
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCacheConfig {
    pub ttl_s: u64,
    /// Opt-in: answer a question close enough to a cached one from the cache.
    #[serde(default)]
    pub semantic: Option<SemanticCacheConfig>,
}

/// The semantic cache of a chat model: the last user message is embedded with `embedding_model`
/// and a cached answer whose question scores at least `threshold` (cosine) is served, unless the
/// two questions differ in a negation, number, date or name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticCacheConfig {
    pub threshold: f32,
    pub embedding_model: String,
}
