//! Embeddings on Bedrock through `InvokeModel`: Amazon Titan Text Embeddings (one text per call)
//! and Cohere Embed (up to 96 texts per call), each in its own JSON body.

/// Cohere Embed's limit on texts per call.
const COHERE_MAX_TEXTS: usize = 96;

/// The model family behind a Bedrock model id (or inference profile id such as
/// `us.cohere.embed-english-v3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    Titan,
    Cohere,
}

impl Family {
    pub(super) fn of(model_id: &str) -> Option<Self> {
        if model_id.contains("amazon.titan-embed") {
            Some(Family::Titan)
        } else if model_id.contains("cohere.embed") {
            Some(Family::Cohere)
        } else {
            None
        }
    }
}

/// The most texts one call to `model_id` may carry: one for Titan (and for a model this
/// gateway does not know, which it refuses anyway).
pub fn max_embedding_inputs(model_id: &str) -> usize {
    match Family::of(model_id) {
        Some(Family::Cohere) => COHERE_MAX_TEXTS,
        Some(Family::Titan) | None => 1,
    }
}
