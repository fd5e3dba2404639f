//! Stored responses in the embedded store's `responses` table. Written at once on the request's
//! connection, not through the batching writer: a follow-up turn may name the response a few
//! milliseconds after it was answered.

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{OptionalExtension, params};

use crate::clock::now_secs;
use crate::error::StoreError;
use crate::responses::{ResponseStore, check_size};
use crate::storage::embedded::{EmbeddedStore, failed, to_sql_int};

#[async_trait]
impl ResponseStore for EmbeddedStore {
    async fn put(
        &self,
        tenant: &str,
        id: &str,
        document: Bytes,
        ttl_s: u64,
    ) -> Result<(), StoreError> {
        check_size(&document)?;
        let expires_at = to_sql_int(now_secs().saturating_add(ttl_s));
        self.with_conn(|conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO responses (id, tenant, doc, expires_at) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![id, tenant, &document[..], expires_at])
        })
        .map_err(failed("storing a response"))?;
        Ok(())
    }

    async fn get(&self, tenant: &str, id: &str) -> Result<Option<Bytes>, StoreError> {
        let now = to_sql_int(now_secs());
        self.with_conn(|conn| {
            conn.prepare_cached(
                "SELECT doc FROM responses WHERE id = ?1 AND tenant = ?2 AND expires_at > ?3",
            )?
            .query_row(params![id, tenant, now], |row| row.get::<_, Vec<u8>>(0))
            .optional()
        })
        .map(|doc| doc.map(Bytes::from))
        .map_err(failed("reading a stored response"))
    }

    async fn delete(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let now = to_sql_int(now_secs());
        let deleted = self
            .with_conn(|conn| {
                conn.prepare_cached(
                    "DELETE FROM responses WHERE id = ?1 AND tenant = ?2 AND expires_at > ?3",
                )?
                .execute(params![id, tenant, now])
            })
            .map_err(failed("deleting a stored response"))?;
        Ok(deleted > 0)
    }
}
