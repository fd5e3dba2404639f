//! The semantic cache: a chat request whose last user message is close enough to one already
//! answered, in the same context, is answered from the response cache.
//!
//! The context is everything but the last user message: the tenant partition, the model, the
//! system prompt, earlier turns, tools and parameters (the exact cache key of the request with
//! that message emptied). Each context has its own vector namespace, so only questions asked in
//! an identical context are ever compared. A vector's key is the exact cache key of the request
//! that was answered, whose body the response cache holds; its text is the question.
//!
//! Distance is not enough: "Is X enabled?" and "Is X not enabled?" embed close together.
//! A candidate is served only if `near_miss::specifics_differ` finds no negation, number, date
//! or name that differs between the two questions.

use serde_json::{Map, Value};

use super::key::{CacheKey, cache_key_with_retrieval};
use crate::api::{ChatRequest, Content, Role};
use crate::vectors::{Namespace, VectorHit, VectorRecord};

/// How many of the closest stored questions are checked for a usable one.
pub const CANDIDATES: usize = 5;

/// Prefix of the vector namespaces of the semantic cache (collection names cannot contain `/`
/// nor start with `_`, so it never meets a collection).
const NAMESPACE_PREFIX: &str = "__semantic__/";

/// Namespace tenant of a cache configured global (no tenant partition).
const GLOBAL_TENANT: &str = "__global__";

/// Where a request's questions live, and the question itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticScope {
    pub namespace: Namespace,
    pub question: String,
}

impl SemanticScope {
    /// The scope of a request; None when it has no user message with text to compare.
    pub fn of(
        partition: Option<&str>,
        provider: &str,
        upstream_model: &str,
        model_version: Option<&str>,
        request: &ChatRequest,
        retrieval: Option<&Value>,
    ) -> Option<Self> {
        let at = request
            .messages
            .iter()
            .rposition(|m| m.role == Role::User)?;
        let question = request
            .messages
            .get(at)
            .and_then(|m| m.content.as_ref())
            .map(Content::text)
            .filter(|text| !text.trim().is_empty())?;
        let mut context = request.clone();
        if let Some(last) = context.messages.get_mut(at) {
            last.content = Some(Content::Text(String::new()));
        }
        let digest = cache_key_with_retrieval(
            partition,
            provider,
            upstream_model,
            model_version,
            &context,
            retrieval,
        );
        Some(Self {
            namespace: Namespace {
                tenant: partition.unwrap_or(GLOBAL_TENANT).to_owned(),
                collection: format!("{NAMESPACE_PREFIX}{}", hex::encode(digest)),
            },
            question,
        })
    }
}

/// What the closest stored questions give.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Cached answers to try, best first: close enough and with the same specifics.
    Serve(Vec<CacheKey>),
    /// The closest question above the threshold differs in a specific (the rule named); nothing
    /// to serve.
    NearMiss(&'static str),
    /// Nothing above the threshold.
    Nothing,
}

/// Picks the usable hits: at least `threshold`, and no specific that differs from `asked`.
pub fn choose(
    hits: &[VectorHit],
    threshold: f32,
    asked: &str,
    specifics_differ: impl Fn(&str, &str) -> Option<&'static str>,
) -> Choice {
    let mut near_miss = None;
    let mut usable = Vec::new();
    for hit in hits.iter().filter(|h| h.score >= threshold) {
        match specifics_differ(&hit.text, asked) {
            Some(rule) => {
                near_miss.get_or_insert(rule);
            }
            None => {
                if let Some(key) = key_of(&hit.key) {
                    usable.push(key);
                }
            }
        }
    }
    match (usable.is_empty(), near_miss) {
        (false, _) => Choice::Serve(usable),
        (true, Some(rule)) => Choice::NearMiss(rule),
        (true, None) => Choice::Nothing,
    }
}

/// The vector remembering that `question`, embedded as `vector`, was answered under `key`.
pub fn record(key: &CacheKey, question: &str, vector: Vec<f32>) -> VectorRecord {
    VectorRecord {
        key: hex::encode(key),
        vector,
        text: question.to_owned(),
        metadata: Map::new(),
    }
}

fn key_of(hex_key: &str) -> Option<CacheKey> {
    let bytes = hex::decode(hex_key).ok()?;
    CacheKey::try_from(bytes.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    fn scope(body: Value, partition: Option<&str>) -> SemanticScope {
        SemanticScope::of(partition, "p", "m", None, &request(body), None).unwrap()
    }

    #[test]
    fn the_scope_is_everything_but_the_last_user_message() {
        let ask = |system: &str, question: &str, temperature: f64| {
            json!({"model": "m", "temperature": temperature, "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question}
            ]})
        };
        let a = scope(ask("be brief", "How do refunds work?", 0.0), Some("t1"));
        let b = scope(ask("be brief", "How does a refund work?", 0.0), Some("t1"));
        assert_eq!(a.namespace, b.namespace);
        assert_eq!(b.question, "How does a refund work?");
        let other_system = scope(ask("be long", "How do refunds work?", 0.0), Some("t1"));
        let other_tenant = scope(ask("be brief", "How do refunds work?", 0.0), Some("t2"));
        let other_params = scope(ask("be brief", "How do refunds work?", 0.5), Some("t1"));
        for other in [other_system, other_tenant, other_params] {
            assert_ne!(a.namespace, other.namespace);
        }
        let retrieval = json!({"collection": "c", "collection_version": 2, "chunks": []});
        let with_rag = SemanticScope::of(
            Some("t1"),
            "p",
            "m",
            None,
            &request(ask("be brief", "How do refunds work?", 0.0)),
            Some(&retrieval),
        )
        .unwrap();
        assert_ne!(a.namespace, with_rag.namespace);
        assert!(a.namespace.collection.starts_with("__semantic__/"));
        assert!(
            SemanticScope::of(
                None,
                "p",
                "m",
                None,
                &request(json!({"model": "m", "messages": [{"role": "system", "content": "s"}]})),
                None
            )
            .is_none()
        );
    }

    fn hit(key: CacheKey, score: f32, text: &str) -> VectorHit {
        VectorHit {
            key: hex::encode(key),
            score,
            text: text.into(),
            metadata: Map::new(),
        }
    }

    #[test]
    fn only_close_questions_with_equal_specifics_are_served() {
        let differ =
            |a: &str, b: &str| (a.contains("not") != b.contains("not")).then_some("negation");
        let hits = [
            hit([1; 32], 0.99, "is it not on"),
            hit([2; 32], 0.97, "is it on?"),
            hit([3; 32], 0.80, "is it on"),
        ];
        assert_eq!(
            choose(&hits, 0.95, "is it on", differ),
            Choice::Serve(vec![[2; 32]])
        );
        assert_eq!(
            choose(&hits[..1], 0.95, "is it on", differ),
            Choice::NearMiss("negation")
        );
        assert_eq!(choose(&hits, 0.995, "is it on", differ), Choice::Nothing);
        let record = record(&[7; 32], "q", vec![1.0]);
        assert_eq!(key_of(&record.key), Some([7; 32]));
    }
}
