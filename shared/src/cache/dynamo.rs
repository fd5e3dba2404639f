//! Cached responses in DynamoDB (the cache table): `pk = "cache#<hex of the 32-byte cache
//! key>"`: `body` (B), `enc` (S, `"deflate"` when the body is compressed, absent otherwise),
//! `expires_at`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use bytes::Bytes;

use crate::cache::CacheStore;
use crate::clock::now_secs;
use crate::error::StoreError;
use crate::storage::compressed::{StoredBody, take_body};
use crate::storage::dynamo::{
    DynamoConfig, EXPIRES_AT, PK, backend, build_error, n, number_attr, s, string_attr,
};

/// DynamoDB items are at most 400 KB, attribute names and the other attributes included; the
/// body may take all but 1 KB of it.
const MAX_STORED_BODY: usize = 400 * 1024 - 1024;
/// BatchGetItem's limit on keys per call.
const MAX_KEYS_PER_BATCH_GET: usize = 100;

/// Cached responses in the cache table.
pub struct DynamoCacheStore {
    client: Client,
    table: String,
}

impl DynamoCacheStore {
    pub fn new(client: Client, config: &DynamoConfig) -> Self {
        Self {
            client,
            table: config.cache_table.clone(),
        }
    }
}

fn cache_pk(key: &[u8; 32]) -> String {
    format!("cache#{}", hex::encode(key))
}

/// A body from a cache item, or None when it has expired (DynamoDB deletes expired items lazily,
/// moto never does, so expiry is checked here).
fn item_body(mut item: HashMap<String, AttributeValue>) -> Result<Option<Bytes>, StoreError> {
    if number_attr::<u64>(&item, EXPIRES_AT).is_none_or(|at| at <= now_secs()) {
        return Ok(None);
    }
    take_body(&mut item, "cache item").map(Some)
}

impl DynamoCacheStore {
    /// One BatchGetItem of at most [`MAX_KEYS_PER_BATCH_GET`] distinct keys; the keys DynamoDB
    /// leaves unprocessed (throttling, the 16 MB response cap) are asked again with backoff until
    /// `deadline`, after which they count as misses.
    async fn batch_get(
        &self,
        keys: &[[u8; 32]],
        deadline: tokio::time::Instant,
    ) -> Result<HashMap<String, Bytes>, StoreError> {
        let mut found = HashMap::new();
        let mut wanted: Vec<HashMap<String, AttributeValue>> = keys
            .iter()
            .map(|key| HashMap::from([(PK.to_owned(), s(cache_pk(key)))]))
            .collect();
        let mut pause = Duration::from_millis(25);
        while !wanted.is_empty() {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut wanted)))
                .build()
                .map_err(build_error)?;
            let call = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send();
            let Ok(output) = tokio::time::timeout_at(deadline, call).await else {
                break;
            };
            let mut output = output.map_err(|e| backend("BatchGetItem on the cache table", &e))?;
            let items = output
                .responses
                .as_mut()
                .and_then(|tables| tables.remove(&self.table))
                .unwrap_or_default();
            for item in items {
                let Some(pk) = string_attr(&item, PK) else {
                    continue;
                };
                // One corrupt entry is a miss, not a failed read of every key.
                match item_body(item) {
                    Ok(Some(body)) => {
                        found.insert(pk, body);
                    }
                    Ok(None) => {}
                    Err(error) => crate::telemetry::cache_store_failed(&error),
                }
            }
            wanted = output
                .unprocessed_keys
                .and_then(|mut tables| tables.remove(&self.table))
                .map(|unprocessed| unprocessed.keys)
                .unwrap_or_default();
            if !wanted.is_empty() {
                if tokio::time::Instant::now() + pause >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(800));
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl CacheStore for DynamoCacheStore {
    /// BatchGetItem in chunks of [`MAX_KEYS_PER_BATCH_GET`] distinct keys.
    async fn get_many(
        &self,
        keys: &[[u8; 32]],
        deadline: tokio::time::Instant,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        // BatchGetItem refuses a request naming one key twice.
        let mut distinct: Vec<[u8; 32]> = keys.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let mut found = HashMap::new();
        for chunk in distinct.chunks(MAX_KEYS_PER_BATCH_GET) {
            found.extend(self.batch_get(chunk, deadline).await?);
        }
        Ok(keys
            .iter()
            .map(|key| found.get(&cache_pk(key)).cloned())
            .collect())
    }

    async fn get(&self, key: &[u8; 32]) -> Result<Option<Bytes>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(cache_pk(key)))
            .send()
            .await
            .map_err(|e| backend("GetItem on the cache table", &e))?;
        match output.item {
            Some(item) => item_body(item),
            None => Ok(None),
        }
    }

    async fn put(&self, key: &[u8; 32], body: Bytes, ttl_s: u64) -> Result<(), StoreError> {
        let stored = StoredBody::encode(&body)
            .map_err(|e| StoreError::Backend(format!("cannot compress a cached body: {e}")))?;
        if stored.len() > MAX_STORED_BODY {
            tracing::warn!(
                size = body.len(),
                stored_size = stored.len(),
                "response too large for a DynamoDB item; not cached"
            );
            return Ok(());
        }
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(cache_pk(key)))
            .item(EXPIRES_AT, n(now_secs() + ttl_s));
        for (name, value) in stored.into_attributes() {
            request = request.item(name, value);
        }
        request
            .send()
            .await
            .map_err(|e| backend("PutItem on the cache table", &e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_keys_follow_the_documented_layout() {
        assert_eq!(cache_pk(&[0xab; 32]), format!("cache#{}", "ab".repeat(32)));
    }
}
