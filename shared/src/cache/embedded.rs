//! Cached responses in the embedded store's `cache` table, written through the writer thread
//! and served from memory until (and for a while after) they are committed.

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{OptionalExtension, params};

use crate::cache::CacheStore;
use crate::clock::now_secs;
use crate::error::StoreError;
use crate::storage::embedded::{EmbeddedStore, Write};

/// Keys per `IN (..)` query: well under SQLite's limit on bound parameters.
const MAX_KEYS_PER_QUERY: usize = 500;

#[async_trait]
impl CacheStore for EmbeddedStore {
    async fn get(&self, key: &[u8; 32]) -> Result<Option<Bytes>, StoreError> {
        let now = now_secs();
        if let Some(body) = self
            .recent()
            .lock()
            .ok()
            .and_then(|recent| recent.get(key, now))
        {
            return Ok(Some(body));
        }
        let found = self.with_conn(|conn| {
            conn.prepare_cached(
                "SELECT body, expires_at FROM cache WHERE key = ?1 AND expires_at > ?2",
            )?
            .query_row(params![&key[..], now], |row| {
                Ok((
                    Bytes::from(row.get::<_, Vec<u8>>(0)?),
                    row.get::<_, u64>(1)?,
                ))
            })
            .optional()
        })?;
        Ok(found.map(|(body, expires_at)| {
            if let Ok(mut recent) = self.recent().lock() {
                recent.insert(*key, body.clone(), expires_at, true);
            }
            body
        }))
    }

    /// Keys not in memory are read with one query per [`MAX_KEYS_PER_QUERY`] keys.
    async fn get_many(
        &self,
        keys: &[[u8; 32]],
        _deadline: tokio::time::Instant,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let now = now_secs();
        let mut bodies: Vec<Option<Bytes>> = match self.recent().lock() {
            Ok(recent) => keys.iter().map(|key| recent.get(key, now)).collect(),
            Err(_) => vec![None; keys.len()],
        };
        let unread: Vec<usize> = (0..keys.len())
            .filter(|&i| bodies.get(i).is_some_and(Option::is_none))
            .collect();
        for positions in unread.chunks(MAX_KEYS_PER_QUERY) {
            let wanted: Vec<&[u8]> = positions
                .iter()
                .filter_map(|&i| keys.get(i).map(|key| &key[..]))
                .collect();
            let found = self.with_conn(|conn| {
                let placeholders = vec!["?"; wanted.len()].join(",");
                let mut statement = conn.prepare_cached(&format!(
                    "SELECT key, body, expires_at FROM cache \
                     WHERE expires_at > ? AND key IN ({placeholders})"
                ))?;
                let parameters = std::iter::once(rusqlite::types::Value::Integer(
                    i64::try_from(now).unwrap_or(i64::MAX),
                ))
                .chain(
                    wanted
                        .iter()
                        .map(|key| rusqlite::types::Value::Blob(key.to_vec())),
                );
                statement
                    .query_map(rusqlite::params_from_iter(parameters), |row| {
                        Ok((
                            row.get::<_, Vec<u8>>(0)?,
                            Bytes::from(row.get::<_, Vec<u8>>(1)?),
                            row.get::<_, u64>(2)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()
            })?;
            let mut recent = self.recent().lock().ok();
            for (key, body, expires_at) in found {
                let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) else {
                    continue;
                };
                if let Some(recent) = recent.as_mut() {
                    recent.insert(key, body.clone(), expires_at, true);
                }
                for &i in positions {
                    if keys.get(i) == Some(&key)
                        && let Some(slot) = bodies.get_mut(i)
                    {
                        *slot = Some(body.clone());
                    }
                }
            }
        }
        Ok(bodies)
    }

    async fn put(&self, key: &[u8; 32], body: Bytes, ttl_s: u64) -> Result<(), StoreError> {
        let expires_at = now_secs() + ttl_s;
        if let Ok(mut recent) = self.recent().lock() {
            recent.insert(*key, body.clone(), expires_at, false);
        }
        self.send(Write::Cache {
            key: *key,
            body,
            expires_at,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::embedded::test_dir;

    #[tokio::test]
    async fn cache_entries_are_written_in_the_background() {
        let dir = test_dir("cache");
        let store = EmbeddedStore::open(&dir).unwrap();
        let key = [7u8; 32];
        store
            .put(&key, Bytes::from_static(b"body"), 60)
            .await
            .unwrap();
        store
            .put(&[8u8; 32], Bytes::from_static(b"old"), 0)
            .await
            .unwrap();
        store.flush();
        assert_eq!(
            store.get(&key).await.unwrap().as_deref(),
            Some(&b"body"[..])
        );
        // Expired entries are never served, even before the purge deletes them.
        assert_eq!(store.get(&[8u8; 32]).await.unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
