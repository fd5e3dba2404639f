//! Checks a parsed config beyond what its types say; every error names its field.

use super::{
    Config, ConfigError, MAX_EMBEDDING_DIMENSIONS, MAX_RAG_TOP_K, ModelConfig, ModelKind,
    ProviderKind, RouteConfig,
};

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.vectors.validate()?;
        if let Some(memcached) = &self.cache.memcached {
            memcached.validate()?;
        }
        if self.server.max_body_bytes == 0 {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                "must be greater than 0",
            ));
        }
        for (name, provider) in &self.providers {
            let field = |f: &str| format!("providers.{name}.{f}");
            // Bedrock's endpoint follows from its region; `base_url` only overrides it.
            let needs_url = !matches!(provider.kind, ProviderKind::Mock | ProviderKind::Bedrock);
            match &provider.base_url {
                None if needs_url => {
                    return Err(ConfigError::new(field("base_url"), "is required"));
                }
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    return Err(ConfigError::new(
                        field("base_url"),
                        format!("`{url}` is not an http(s) URL"),
                    ));
                }
                _ => {}
            }
            if provider.kind == ProviderKind::Bedrock && provider.api_key_env.is_some() {
                return Err(ConfigError::new(
                    field("api_key_env"),
                    "is not used by Bedrock, which signs with IAM credentials from the AWS \
                     environment (role, profile or AWS_ACCESS_KEY_ID); remove it",
                ));
            }
            if provider.kind == ProviderKind::Azure && provider.api_version.is_none() {
                return Err(ConfigError::new(
                    field("api_version"),
                    "is required for Azure OpenAI (for example \"2024-10-21\")",
                ));
            }
            let t = &provider.timeouts;
            for (value, name) in [
                (t.connect_ms, "connect_ms"),
                (t.first_byte_ms, "first_byte_ms"),
                (t.first_token_ms, "first_token_ms"),
                (t.idle_ms, "idle_ms"),
                (t.total_ms, "total_ms"),
            ] {
                if value == 0 {
                    return Err(ConfigError::new(
                        field(&format!("timeouts.{name}")),
                        "must be greater than 0",
                    ));
                }
            }
        }
        let r = &self.routing;
        if r.max_attempts == 0 {
            return Err(ConfigError::new(
                "routing.max_attempts",
                "must be at least 1",
            ));
        }
        let b = &r.breaker;
        if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
            return Err(ConfigError::new(
                "routing.breaker.failure_rate",
                "must be in (0, 1]",
            ));
        }
        if b.consecutive_failures == 0 || b.window == 0 || b.min_requests > b.window {
            return Err(ConfigError::new(
                "routing.breaker",
                "consecutive_failures and window must be at least 1, min_requests at most window",
            ));
        }
        for (name, model) in &self.models {
            let field = |f: &str| format!("models.{name}.{f}");
            match &model.route {
                None if model.deployments.is_empty() => {
                    return Err(ConfigError::new(
                        field("deployments"),
                        "needs at least one deployment (or a `route` making the model an alias)",
                    ));
                }
                Some(_) if !model.deployments.is_empty() => {
                    return Err(ConfigError::new(
                        field("route"),
                        "a routing alias has candidates, not deployments",
                    ));
                }
                Some(route) => self.validate_route(name, model, route)?,
                None => {}
            }
            let mut total_weight: u64 = 0;
            for (i, d) in model.deployments.iter().enumerate() {
                let Some(provider) = self.providers.get(&d.provider) else {
                    return Err(ConfigError::new(
                        field(&format!("deployments[{i}].provider")),
                        format!("unknown provider `{}`", d.provider),
                    ));
                };
                if model.kind == ModelKind::Embedding && !provider.kind.has_embeddings() {
                    return Err(ConfigError::new(
                        field(&format!("deployments[{i}].provider")),
                        format!(
                            "provider `{}` has no embeddings API; an embedding model needs an \
                             OpenAI-compatible, Azure, Bedrock or mock provider",
                            d.provider
                        ),
                    ));
                }
                if d.weight == 0 {
                    return Err(ConfigError::new(
                        field(&format!("deployments[{i}].weight")),
                        "must be greater than 0",
                    ));
                }
                total_weight += u64::from(d.weight);
                if total_weight > u64::from(u32::MAX) {
                    return Err(ConfigError::new(
                        field("deployments"),
                        format!("the weights add up to more than {}", u32::MAX),
                    ));
                }
            }
            if model.max_output_tokens == Some(0) {
                return Err(ConfigError::new(
                    field("max_output_tokens"),
                    "must be greater than 0",
                ));
            }
            match model.max_dimensions {
                Some(_) if model.kind != ModelKind::Embedding => {
                    return Err(ConfigError::new(
                        field("max_dimensions"),
                        "only applies to embedding models",
                    ));
                }
                Some(d) if d == 0 || d > MAX_EMBEDDING_DIMENSIONS => {
                    return Err(ConfigError::new(
                        field("max_dimensions"),
                        format!("must be between 1 and {MAX_EMBEDDING_DIMENSIONS}"),
                    ));
                }
                _ => {}
            }
            for (value, f) in [
                (model.price.input_per_mtok, "price.input_per_mtok"),
                (model.price.output_per_mtok, "price.output_per_mtok"),
            ] {
                if !value.is_finite() || value < 0.0 {
                    return Err(ConfigError::new(field(f), "must be a non-negative number"));
                }
            }
            if model.context_window == Some(0) {
                return Err(ConfigError::new(
                    field("context_window"),
                    "must be greater than 0",
                ));
            }
            for (i, fallback) in model.fallbacks.iter().enumerate() {
                match self.models.get(fallback) {
                    None => {
                        return Err(ConfigError::new(
                            field(&format!("fallbacks[{i}]")),
                            format!("unknown model `{fallback}`"),
                        ));
                    }
                    Some(other) if other.kind != model.kind => {
                        return Err(ConfigError::new(
                            field(&format!("fallbacks[{i}]")),
                            format!("`{fallback}` is not the same kind of model"),
                        ));
                    }
                    Some(other) if other.route.is_some() => {
                        return Err(ConfigError::new(
                            field(&format!("fallbacks[{i}]")),
                            format!(
                                "`{fallback}` is a routing alias; a fallback must be a model \
                                 with deployments"
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
            self.validate_rag_and_semantic_cache(name, model)?;
        }
        Ok(())
    }

    fn validate_rag_and_semantic_cache(
        &self,
        name: &str,
        model: &ModelConfig,
    ) -> Result<(), ConfigError> {
        let field = |f: &str| format!("models.{name}.{f}");
        if let Some(rag) = &model.rag {
            if model.kind == ModelKind::Embedding {
                return Err(ConfigError::new(
                    field("rag"),
                    "only applies to chat models; an embedding model cannot answer from a \
                     collection",
                ));
            }
            if rag.collection.trim().is_empty() {
                return Err(ConfigError::new(
                    field("rag.collection"),
                    "must name a collection",
                ));
            }
            if rag.top_k == 0 || rag.top_k > MAX_RAG_TOP_K {
                return Err(ConfigError::new(
                    field("rag.top_k"),
                    format!("must be between 1 and {MAX_RAG_TOP_K}"),
                ));
            }
        }
        let Some(semantic) = model.cache.as_ref().and_then(|c| c.semantic.as_ref()) else {
            return Ok(());
        };
        if model.kind == ModelKind::Embedding {
            return Err(ConfigError::new(
                field("cache.semantic"),
                "only applies to chat models",
            ));
        }
        if !(semantic.threshold > 0.0 && semantic.threshold <= 1.0) {
            return Err(ConfigError::new(
                field("cache.semantic.threshold"),
                "must be a cosine similarity in (0, 1]",
            ));
        }
        match self.models.get(&semantic.embedding_model) {
            Some(target) if target.kind == ModelKind::Embedding => Ok(()),
            Some(_) => Err(ConfigError::new(
                field("cache.semantic.embedding_model"),
                format!("`{}` is not an embedding model", semantic.embedding_model),
            )),
            None => Err(ConfigError::new(
                field("cache.semantic.embedding_model"),
                format!("unknown model `{}`", semantic.embedding_model),
            )),
        }
    }

    fn validate_route(
        &self,
        name: &str,
        model: &ModelConfig,
        route: &RouteConfig,
    ) -> Result<(), ConfigError> {
        let field = |f: &str| format!("models.{name}.route.{f}");
        if route.candidates.is_empty() {
            return Err(ConfigError::new(
                field("candidates"),
                "needs at least one model",
            ));
        }
        for (i, candidate) in route.candidates.iter().chain(&route.strong).enumerate() {
            let at = if i < route.candidates.len() {
                format!("candidates[{i}]")
            } else {
                "strong".to_owned()
            };
            match self.models.get(candidate) {
                None => {
                    return Err(ConfigError::new(
                        field(&at),
                        format!("unknown model `{candidate}`"),
                    ));
                }
                Some(target) if target.route.is_some() => {
                    return Err(ConfigError::new(
                        field(&at),
                        format!("`{candidate}` is itself an alias"),
                    ));
                }
                Some(target) if target.kind != model.kind => {
                    return Err(ConfigError::new(
                        field(&at),
                        format!("`{candidate}` is not the same kind of model"),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}
