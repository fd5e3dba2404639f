//! cl100k, the tokenizer of OpenAI's embedding models: OpenAI's wire format carries its token ids
//! (embedding input), and chunking counts with it.

use std::sync::LazyLock;

use tiktoken_rs::CoreBPE;

/// The tokenizer of OpenAI's current embedding models, built once per process (parsing its
/// 100k-entry table takes a while).
static CL100K: LazyLock<Option<CoreBPE>> = LazyLock::new(|| match tiktoken_rs::cl100k_base() {
    Ok(bpe) => Some(bpe),
    Err(error) => {
        tracing::error!(%error, "cl100k tokenizer failed to load; counting bytes as tokens");
        None
    }
});

/// The cl100k tokenizer, shared with whatever else reads OpenAI's token ids; `None` if its
/// table failed to load (logged once).
pub(crate) fn cl100k() -> Option<&'static CoreBPE> {
    CL100K.as_ref()
}
