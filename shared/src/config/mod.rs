//! The one typed configuration: a TOML file mapping public model names to deployments.
//!
//! Unknown fields are rejected and every error names the field it is about, so a bad config
//! fails at start-up instead of at the first request. Secrets are never written in the file:
//! a provider names the environment variable that holds its credential.

mod built_in;
pub mod guard;
mod models;
mod routing;
pub mod secrets;
mod server;
mod validate;
mod vectors;

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

pub use guard::{EffectiveGuard, GuardSettings, InjectionPolicy, PiiPolicy};
pub use models::{
    Capabilities, DEFAULT_MAX_DIMENSIONS, DEFAULT_RAG_TOP_K, DeploymentConfig, EscalationRules,
    MAX_EMBEDDING_DIMENSIONS, MAX_RAG_TOP_K, ModelCacheConfig, ModelConfig, ModelKind, Price,
    ProviderConfig, ProviderKind, RagBinding, RouteConfig, RouteStrategy, SemanticCacheConfig,
    Timeouts,
};
pub use routing::{BreakerConfig, CacheConfig, CachePartition, MemcachedConfig, RoutingConfig};
pub use server::ServerConfig;
pub use vectors::{PineconeIndexConfig, VectorsConfig, WeaviateClassConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Gateway-wide injection and PII policy and system prompt (`[guard]`).
    #[serde(default)]
    pub guard: GuardSettings,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub vectors: VectorsConfig,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
}

/// A configuration error, naming the field it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config at `{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses and checks a TOML config; errors name the offending field.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::new("(file)", e.message().to_owned()))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(path, e.into_inner().message().to_owned())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The cache TTL of a model, in seconds; 0 means its answers are never cached.
    pub fn cache_ttl_s(&self, model: &ModelConfig) -> u64 {
        model
            .cache
            .as_ref()
            .map_or(self.cache.default_ttl_s, |c| c.ttl_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_config_is_valid_and_adds_vendors_only_with_keys() {
        let bare = Config::built_in(|_| None);
        assert!(bare.models.contains_key("mock"));
        assert!(bare.models.contains_key("mock-embed"));
        assert!(!bare.models.contains_key("gpt-4o-mini"));
        let full = Config::built_in(|_| Some("sk-test".to_owned()));
        assert!(full.models.contains_key("gpt-4o-mini"));
        assert!(full.models.contains_key("claude-haiku"));
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let err = Config::from_toml(
            r#"
            [providers.mock]
            kind = "mock"
            [models.m]
            deployments = [{ provider = "mock", model = "m" }]
            price = { input_per_mtok = 1, output_per_mtok = 2, per_request = 3 }
            "#,
        )
        .unwrap_err();
        assert_eq!(err.field, "models.m.price.per_request");
        assert!(err.message.contains("per_request"), "{err}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let err = Config::from_toml(
            r#"
            [providers.p]
            kind = "openai"
            base_url = "http://x"
            timeouts = { connect_ms = "fast" }
            "#,
        )
        .unwrap_err();
        assert_eq!(err.field, "providers.p.timeouts.connect_ms");
    }

    #[test]
    fn deployment_with_unknown_provider_is_rejected() {
        let err = Config::from_toml(
            r#"
            [models.m]
            deployments = [{ provider = "nope", model = "m" }]
            "#,
        )
        .unwrap_err();
        assert_eq!(err.field, "models.m.deployments[0].provider");
    }

    #[test]
    fn azure_needs_an_api_version() {
        let err = Config::from_toml(
            r#"
            [providers.az]
            kind = "azure"
            base_url = "https://x.openai.azure.com"
            api_key_env = "AZURE_KEY"
            "#,
        )
        .unwrap_err();
        assert_eq!(err.field, "providers.az.api_version");
    }

    fn rejected_at(text: &str) -> String {
        Config::from_toml(text).unwrap_err().field
    }

    #[test]
    fn configs_that_would_fail_per_request_are_refused_at_start_up() {
        let providers = r#"
            [providers.mock]
            kind = "mock"
            [providers.claude]
            kind = "anthropic"
            base_url = "http://127.0.0.1:1"
            [models.a]
            deployments = [{ provider = "mock", model = "a" }]
            [models.b]
            deployments = [{ provider = "mock", model = "b" }]
            [models.auto]
            route = { strategy = "cost", candidates = ["a", "b"] }
        "#;
        let overflowing = format!(
            "{providers}\n[models.heavy]\ndeployments = [{{ provider = \"mock\", model = \"x\", weight = 4294967295 }}, {{ provider = \"mock\", model = \"y\", weight = 2 }}]\n"
        );
        assert_eq!(rejected_at(&overflowing), "models.heavy.deployments");
        assert_eq!(
            rejected_at(&format!("[server]\nmax_body_bytes = 0\n{providers}")),
            "server.max_body_bytes"
        );
        let alias_fallback = format!(
            "{providers}\n[models.c]\ndeployments = [{{ provider = \"mock\", model = \"c\" }}]\nfallbacks = [\"auto\"]\n"
        );
        assert_eq!(rejected_at(&alias_fallback), "models.c.fallbacks[0]");
        let embed_on_claude = format!(
            "{providers}\n[models.e]\nkind = \"embedding\"\ndeployments = [{{ provider = \"claude\", model = \"e\" }}]\n"
        );
        assert_eq!(
            rejected_at(&embed_on_claude),
            "models.e.deployments[0].provider"
        );
        let huge_dimensions = format!(
            "{providers}\n[models.e]\nkind = \"embedding\"\ndeployments = [{{ provider = \"mock\", model = \"e\" }}]\nmax_dimensions = 4294967295\n"
        );
        assert_eq!(rejected_at(&huge_dimensions), "models.e.max_dimensions");
        assert!(Config::from_toml(providers).is_ok());
    }

    #[test]
    fn zero_or_huge_connection_limits_are_rejected_by_name() {
        for (line, field) in [
            (
                "header_read_timeout_ms = 0",
                "server.header_read_timeout_ms",
            ),
            ("idle_timeout_ms = 0", "server.idle_timeout_ms"),
            ("body_read_timeout_ms = 0", "server.body_read_timeout_ms"),
            (
                "body_read_timeout_ms = 86400001",
                "server.body_read_timeout_ms",
            ),
            ("min_body_bytes_per_s = 0", "server.min_body_bytes_per_s"),
            (
                "min_body_rate_grace_ms = 0",
                "server.min_body_rate_grace_ms",
            ),
            ("max_connections = 0", "server.max_connections"),
            ("drain_timeout_ms = 0", "server.drain_timeout_ms"),
        ] {
            let err = Config::from_toml(&format!("[server]\n{line}\n")).unwrap_err();
            assert_eq!(err.field, field, "{line}");
        }
        let server = Config::from_toml("[server]\nidle_timeout_ms = 1\n")
            .unwrap()
            .server;
        assert_eq!(server.idle_timeout_ms, 1);
        assert_eq!(server.header_read_timeout_ms, 10_000);
    }

    #[test]
    fn price_is_per_million_tokens() {
        let price = Price {
            input_per_mtok: 2.0,
            output_per_mtok: 8.0,
            ..Price::default()
        };
        assert!((price.cost_usd(500_000, 250_000) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn metrics_listen_is_a_socket_address() {
        let config = Config::from_toml("[server]\nmetrics_listen = \"127.0.0.1:9464\"\n").unwrap();
        assert_eq!(
            config.server.metrics_listen,
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        assert_eq!(Config::from_toml("").unwrap().server.metrics_listen, None);
        let err = Config::from_toml("[server]\nmetrics_listen = \"localhost\"\n").unwrap_err();
        assert_eq!(err.field, "server.metrics_listen");
    }

    #[test]
    fn rag_bindings_and_semantic_caches_are_checked_by_field() {
        let base = r#"
            [providers.mock]
            kind = "mock"
            [models.embed]
            kind = "embedding"
            deployments = [{ provider = "mock", model = "e" }]
            [models.chat]
            deployments = [{ provider = "mock", model = "c" }]
        "#;
        let with = |extra: &str| format!("{base}\n{extra}\n");
        let bound = Config::from_toml(&with(
            "[models.docs]\ndeployments = [{ provider = \"mock\", model = \"c\" }]\nrag = { collection = \"handbook\" }\n[models.docs.cache]\nttl_s = 60\nsemantic = { threshold = 0.9, embedding_model = \"embed\" }",
        ))
        .unwrap();
        let docs = &bound.models["docs"];
        assert_eq!(
            docs.rag,
            Some(RagBinding {
                collection: "handbook".into(),
                top_k: DEFAULT_RAG_TOP_K
            })
        );
        assert_eq!(
            docs.cache.as_ref().and_then(|c| c.semantic.clone()),
            Some(SemanticCacheConfig {
                threshold: 0.9,
                embedding_model: "embed".into()
            })
        );
        for (extra, field) in [
            (
                "[models.e2]\nkind = \"embedding\"\ndeployments = [{ provider = \"mock\", model = \"e\" }]\nrag = { collection = \"c\" }",
                "models.e2.rag",
            ),
            (
                "[models.d]\ndeployments = [{ provider = \"mock\", model = \"c\" }]\nrag = { collection = \"c\", top_k = 21 }",
                "models.d.rag.top_k",
            ),
            (
                "[models.d]\ndeployments = [{ provider = \"mock\", model = \"c\" }]\nrag = { collection = \" \" }",
                "models.d.rag.collection",
            ),
            (
                "[models.d]\ndeployments = [{ provider = \"mock\", model = \"c\" }]\ncache = { ttl_s = 1, semantic = { threshold = 1.5, embedding_model = \"embed\" } }",
                "models.d.cache.semantic.threshold",
            ),
            (
                "[models.d]\ndeployments = [{ provider = \"mock\", model = \"c\" }]\ncache = { ttl_s = 1, semantic = { threshold = 0.9, embedding_model = \"chat\" } }",
                "models.d.cache.semantic.embedding_model",
            ),
            (
                "[models.d]\ndeployments = [{ provider = \"mock\", model = \"c\" }]\ncache = { ttl_s = 1, semantic = { threshold = 0.9, embedding_model = \"nope\" } }",
                "models.d.cache.semantic.embedding_model",
            ),
        ] {
            assert_eq!(rejected_at(&with(extra)), field, "{extra}");
        }
    }
}
