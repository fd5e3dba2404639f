//! The embedding cache: one entry per (tenant partition, served model, model version,
//! dimensions, text), over the response cache's [`CacheStore`] in a key domain of its own.
//!
//! Entries are compact binary: a format byte, the input's token count and the vector as
//! little-endian f32s. An entry that does not decode to the expected shape is a miss, never an
//! error. Changing an embedding model's deployment `version` in the config changes every key, so
//! vectors of an older model are never served for a newer one.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::cache::CacheStore;
use crate::config::MAX_EMBEDDING_DIMENSIONS;

/// Separates embedding entries from response-cache entries in the shared store; bump it when the
/// key or value layout changes.
const KEY_DOMAIN: &str = "embedding-v1";
/// The first byte of every value, for the same reason.
const VALUE_FORMAT: u8 = 1;
/// Format byte, token count (u32), vector length (u32).
const HEADER_LEN: usize = 9;
/// Concurrent writes when storing many entries (each is one request on DynamoDB).
const WRITE_CONCURRENCY: usize = 8;

/// What every key of one embeddings call shares.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingScope<'a> {
    /// The tenant partition (`Gateway::cache_partition`): None only when the cache is global.
    pub partition: Option<&'a str>,
    /// The served model's public name.
    pub model: &'a str,
    pub version: Option<&'a str>,
    /// The `dimensions` asked for; None for the model's own size.
    pub dimensions: Option<u32>,
}

/// A cached embedding of one input.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedEmbedding {
    /// The input's prompt tokens, as billed when it was embedded.
    pub tokens: u32,
    pub vector: Vec<f32>,
}

/// The cache key of `text` in `scope`: SHA-256 over length-prefixed fields, so no two scopes
/// or texts can produce the same byte string.
pub fn embedding_key(scope: &EmbeddingScope<'_>, text: &str) -> [u8; 32] {
    fn field(hasher: &mut Sha256, bytes: &[u8]) {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    fn optional(hasher: &mut Sha256, value: Option<&[u8]>) {
        match value {
            Some(bytes) => {
                hasher.update([1]);
                field(hasher, bytes);
            }
            None => hasher.update([0]),
        }
    }
    let mut hasher = Sha256::new();
    field(&mut hasher, KEY_DOMAIN.as_bytes());
    optional(&mut hasher, scope.partition.map(str::as_bytes));
    field(&mut hasher, scope.model.as_bytes());
    optional(&mut hasher, scope.version.map(str::as_bytes));
    optional(
        &mut hasher,
        scope
            .dimensions
            .map(u32::to_le_bytes)
            .as_ref()
            .map(|d| &d[..]),
    );
    field(&mut hasher, &Sha256::digest(text.as_bytes()));
    hasher.finalize().into()
}

impl CachedEmbedding {
    pub fn encode(&self) -> Bytes {
        let mut value = BytesMut::with_capacity(HEADER_LEN + 4 * self.vector.len());
        value.put_u8(VALUE_FORMAT);
        value.put_u32_le(self.tokens);
        value.put_u32_le(u32::try_from(self.vector.len()).unwrap_or(u32::MAX));
        for x in &self.vector {
            value.put_f32_le(*x);
        }
        value.freeze()
    }

    /// The entry, or None when it is not a well-formed entry of `dimensions` floats (any size
    /// up to the largest a model may have when `dimensions` is None).
    pub fn decode(value: &[u8], dimensions: Option<u32>) -> Option<Self> {
        let (header, floats) = value.split_at_checked(HEADER_LEN)?;
        let [format, t0, t1, t2, t3, n0, n1, n2, n3] = <[u8; HEADER_LEN]>::try_from(header).ok()?;
        let count = u32::from_le_bytes([n0, n1, n2, n3]);
        if format != VALUE_FORMAT
            || count == 0
            || count > MAX_EMBEDDING_DIMENSIONS
            || dimensions.is_some_and(|d| d != count)
            || floats.len() != 4 * count as usize
        {
            return None;
        }
        let vector = floats
            .chunks_exact(4)
            .filter_map(|c| <[u8; 4]>::try_from(c).ok().map(f32::from_le_bytes))
            .collect();
        Some(Self {
            tokens: u32::from_le_bytes([t0, t1, t2, t3]),
            vector,
        })
    }
}

/// The embedding cache over a [`CacheStore`].
#[derive(Clone)]
pub struct EmbeddingCache {
    store: Arc<dyn CacheStore>,
    ttl_s: u64,
}

impl EmbeddingCache {
    /// A cache keeping entries `ttl_s` seconds; 0 turns it off.
    pub fn new(store: Arc<dyn CacheStore>, ttl_s: u64) -> Self {
        Self { store, ttl_s }
    }

    pub fn enabled(&self) -> bool {
        self.ttl_s > 0
    }

    /// The cached embedding of each key, in order. A store that cannot be read, or reads past
    /// `deadline`, gives misses: the cache never fails a request.
    pub async fn get_many(
        &self,
        keys: &[[u8; 32]],
        dimensions: Option<u32>,
        deadline: tokio::time::Instant,
    ) -> Vec<Option<CachedEmbedding>> {
        if !self.enabled() {
            return vec![None; keys.len()];
        }
        let read = tokio::time::timeout_at(deadline, self.store.get_many(keys, deadline)).await;
        match read {
            Ok(Ok(values)) if values.len() == keys.len() => values
                .iter()
                .map(|value| {
                    value
                        .as_deref()
                        .and_then(|v| CachedEmbedding::decode(v, dimensions))
                })
                .collect(),
            Ok(Ok(_)) | Err(_) => vec![None; keys.len()],
            Ok(Err(error)) => {
                crate::telemetry::cache_store_failed(&error);
                vec![None; keys.len()]
            }
        }
    }

    /// Stores entries, a few at a time; failures are logged, never returned.
    pub async fn put_many(&self, entries: Vec<([u8; 32], CachedEmbedding)>) {
        if !self.enabled() {
            return;
        }
        let (store, ttl_s) = (&self.store, self.ttl_s);
        futures_util::stream::iter(entries)
            .for_each_concurrent(WRITE_CONCURRENCY, |(key, entry)| async move {
                if let Err(error) = store.put(&key, entry.encode(), ttl_s).await {
                    crate::telemetry::cache_store_failed(&error);
                }
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(partition: Option<&'static str>, dimensions: Option<u32>) -> EmbeddingScope<'static> {
        EmbeddingScope {
            partition,
            model: "embed",
            version: Some("1"),
            dimensions,
        }
    }

    #[test]
    fn every_part_of_the_scope_and_the_text_changes_the_key() {
        let base = embedding_key(&scope(Some("t1"), None), "hello");
        assert_eq!(base, embedding_key(&scope(Some("t1"), None), "hello"));
        assert_ne!(base, embedding_key(&scope(Some("t2"), None), "hello"));
        assert_ne!(base, embedding_key(&scope(None, None), "hello"));
        assert_ne!(base, embedding_key(&scope(Some("t1"), Some(8)), "hello"));
        assert_ne!(base, embedding_key(&scope(Some("t1"), None), "hello!"));
        let other_model = EmbeddingScope {
            model: "embed-2",
            ..scope(Some("t1"), None)
        };
        assert_ne!(base, embedding_key(&other_model, "hello"));
        let other_version = EmbeddingScope {
            version: Some("2"),
            ..scope(Some("t1"), None)
        };
        assert_ne!(base, embedding_key(&other_version, "hello"));
        let no_version = EmbeddingScope {
            version: None,
            ..scope(Some("t1"), None)
        };
        assert_ne!(base, embedding_key(&no_version, "hello"));
    }

    #[test]
    fn entries_round_trip_and_malformed_ones_are_misses() {
        let entry = CachedEmbedding {
            tokens: 7,
            vector: vec![1.0, -0.5, 0.25],
        };
        let value = entry.encode();
        assert_eq!(value.len(), HEADER_LEN + 12);
        assert_eq!(
            CachedEmbedding::decode(&value, Some(3)),
            Some(entry.clone())
        );
        assert_eq!(CachedEmbedding::decode(&value, None), Some(entry));
        // Another size than asked for, a cut value, an unknown format: misses.
        assert_eq!(CachedEmbedding::decode(&value, Some(4)), None);
        assert_eq!(
            CachedEmbedding::decode(&value[..value.len() - 1], None),
            None
        );
        assert_eq!(CachedEmbedding::decode(&value[..4], None), None);
        let mut other_format = value.to_vec();
        other_format[0] = 9;
        assert_eq!(CachedEmbedding::decode(&other_format, None), None);
        let mut too_long = value.to_vec();
        too_long.extend_from_slice(&[0; 4]);
        assert_eq!(CachedEmbedding::decode(&too_long, None), None);
    }
}
