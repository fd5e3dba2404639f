//! cl100k, the tokenizer of OpenAI's embedding models: OpenAI's wire format carries its token ids
//! (embedding input), and chunking counts with it.

use std::collections::HashMap;
use std::sync::LazyLock;

use tiktoken_rs::{CoreBPE, ENDOFPROMPT, ENDOFTEXT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, Rank};

/// cl100k's tokens in rank order: `TOKENS` lengths of one byte each, then the tokens' bytes one
/// after another. tiktoken-rs ships the same table as base64 text, which costs every function
/// that embeds or chunks 0.35 MB more of its zip and a base64 decode at load;
/// `the_committed_table_is_tiktokens` checks that the two agree
/// (`UPDATE_CL100K=1 cargo test -p gateway --lib tokenizer` rewrites this file).
static TABLE: &[u8] = include_bytes!("cl100k.tokens");

/// How many ordinary tokens cl100k has (ranks 0 to 100,255).
const TOKENS: usize = 100_256;

/// cl100k's pre-tokenizer, as tiktoken defines it.
const PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

/// The tokenizer of OpenAI's current embedding models, built once per process (hashing its
/// 100k tokens takes a few milliseconds).
static CL100K: LazyLock<Option<CoreBPE>> = LazyLock::new(|| match load() {
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

fn load() -> Result<CoreBPE, String> {
    let (lengths, mut bytes) = TABLE
        .split_at_checked(TOKENS)
        .ok_or("the table is shorter than its lengths")?;
    let mut encoder = HashMap::with_capacity_and_hasher(TOKENS, Default::default());
    for (rank, &length) in (0..).zip(lengths) {
        let (token, rest) = bytes
            .split_at_checked(usize::from(length))
            .ok_or("the table ends inside a token")?;
        encoder.insert(token.to_vec(), rank);
        bytes = rest;
    }
    if !bytes.is_empty() || encoder.len() != TOKENS {
        return Err("the table's lengths and tokens disagree".to_owned());
    }
    let special: [(&str, Rank); 5] = [
        (ENDOFTEXT, 100_257),
        (FIM_PREFIX, 100_258),
        (FIM_MIDDLE, 100_259),
        (FIM_SUFFIX, 100_260),
        (ENDOFPROMPT, 100_276),
    ];
    let special = special
        .into_iter()
        .map(|(text, rank)| (text.to_owned(), rank))
        .collect::<HashMap<_, _, _>>();
    CoreBPE::new(encoder, special, PATTERN).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table as tiktoken-rs's own cl100k gives it.
    fn tiktokens_table() -> Vec<u8> {
        let reference = tiktoken_rs::cl100k_base().unwrap();
        let tokens: Vec<Vec<u8>> = (0..TOKENS as Rank)
            .map(|rank| reference.decode_bytes(&[rank]).unwrap())
            .collect();
        let mut table: Vec<u8> = tokens
            .iter()
            .map(|token| u8::try_from(token.len()).unwrap())
            .collect();
        table.extend(tokens.concat());
        table
    }

    #[test]
    fn the_committed_table_is_tiktokens() {
        let expected = tiktokens_table();
        if expected == TABLE {
            return;
        }
        if std::env::var_os("UPDATE_CL100K").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/cl100k.tokens");
            std::fs::write(path, expected).unwrap();
            return;
        }
        panic!(
            "shared/src/api/cl100k.tokens is not tiktoken-rs's cl100k table: run \
             `UPDATE_CL100K=1 cargo test -p gateway --lib tokenizer` and commit it"
        );
    }

    #[test]
    fn encodes_and_decodes_as_tiktoken_does() {
        let reference = tiktoken_rs::cl100k_base().unwrap();
        let ours = cl100k().unwrap();
        let text = "Hello, world! It's 2026: naïve café — 12345 tokens\r\n\n  indented\t🦀 <|endoftext|> ok";
        assert_eq!(ours.encode_ordinary(text), reference.encode_ordinary(text));
        let special = ours.encode_with_special_tokens(text);
        assert_eq!(special, reference.encode_with_special_tokens(text));
        assert!(special.contains(&100_257));
        assert_eq!(ours.decode_bytes(&special).unwrap(), text.as_bytes());
    }
}
