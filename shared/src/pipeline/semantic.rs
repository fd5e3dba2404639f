//! The semantic cache on the chat path (the policy is in `cache::semantic`): on an exact-cache
//! miss, embed the last user message, look for a close question asked in the same context and
//! serve its cached answer; otherwise remember the question once this request's answer is
//! stored. Like the exact cache, it never fails a request: any error is a miss.

use std::sync::Arc;

use axum::body::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::embeddings::embed_texts;
use crate::cache::key::CacheKey;
use crate::cache::near_miss::specifics_differ;
use crate::cache::semantic::{CANDIDATES, Choice, SemanticScope, choose, record};
use crate::config::SemanticCacheConfig;
use crate::keys::KeyRecord;
use crate::state::Gateway;
use crate::telemetry::{METRICS, Metrics};
use crate::vectors::{Namespace, VectorStore};

/// `x-gateway-cache` of an answer served by the semantic cache.
pub(crate) const SEMANTIC_HIT: &str = "SEMANTIC_HIT";

pub(crate) enum Semantic {
    /// A cached answer to a close question with the same specifics.
    Hit(Bytes),
    /// No usable answer; the question to remember once this request's answer is stored (None
    /// when it could not be embedded).
    Miss(Option<Remember>),
}

/// A question and its vector, to store under the answer's exact cache key.
pub(crate) struct Remember {
    store: Arc<dyn VectorStore>,
    namespace: Namespace,
    question: String,
    vector: Vec<f32>,
}

impl Remember {
    /// The write, to run after the answer is stored under `key`.
    pub(crate) fn under(self, key: CacheKey) -> BoxFuture<'static, ()> {
        async move {
            let record = record(&key, &self.question, self.vector);
            if let Err(error) = self.store.put(&self.namespace, vec![record]).await {
                tracing::warn!(%error, "semantic cache: the question could not be stored");
            }
        }
        .boxed()
    }
}

pub(crate) async fn lookup(
    gateway: &Gateway,
    key: &KeyRecord,
    config: &SemanticCacheConfig,
    scope: SemanticScope,
    model: &str,
    deadline: tokio::time::Instant,
) -> Semantic {
    let Some(store) = gateway.vectors.clone() else {
        return Semantic::Miss(None);
    };
    let embedded = embed_texts(
        gateway,
        key,
        &config.embedding_model,
        std::slice::from_ref(&scope.question),
        store.fixed_dimensions(),
        deadline,
    )
    .await;
    let vector = match embedded.map(|e| e.vectors.into_iter().next()) {
        Ok(Some(vector)) => vector,
        Ok(None) => return Semantic::Miss(None),
        Err(error) => {
            tracing::warn!(
                model = %config.embedding_model,
                error = %error.message,
                "semantic cache: the question could not be embedded; exact cache only"
            );
            return Semantic::Miss(None);
        }
    };
    let hits = match store
        .query(&scope.namespace, &vector, CANDIDATES, None)
        .await
    {
        Ok(hits) => hits,
        Err(error) => {
            tracing::warn!(%error, "semantic cache: vector query failed; treated as a miss");
            Vec::new()
        }
    };
    match choose(&hits, config.threshold, &scope.question, specifics_differ) {
        Choice::Serve(keys) => {
            for cached in keys {
                match gateway.cache.store().get(&cached).await {
                    Ok(Some(body)) => return Semantic::Hit(body),
                    // Expired from the response cache: the vector outlived its answer.
                    Ok(None) => {}
                    Err(error) => crate::telemetry::cache_store_failed(&error),
                }
            }
        }
        Choice::NearMiss(rule) => {
            tracing::info!(
                rule,
                "semantic cache: a close question differs in a specific"
            );
            Metrics::count(
                &METRICS.cache,
                &[("result", "SEMANTIC_NEAR_MISS"), ("model", model)],
            );
        }
        Choice::Nothing => {}
    }
    Semantic::Miss(Some(Remember {
        store,
        namespace: scope.namespace,
        question: scope.question,
        vector,
    }))
}
