//! The collection store in the embedded SQLite file. Its tables are created here, on first use,
//! so the store's shared schema stays the batch and cache tables'.
//!
//! A document's record and its collection's version and counts change in one transaction:
//! whoever reads the version after a write sees the write.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;

use crate::error::StoreError;
use crate::ingest::store::{CollectionRecord, CollectionStore, DocumentRecord, IngestJob};
use crate::storage::embedded::{
    EmbeddedStore, decode_record as decode, encode_record, failed, from_sql_int, to_sql_int,
};

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS collections (
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        doc TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 0,
        document_count INTEGER NOT NULL DEFAULT 0,
        chunk_count INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant, name)
    );
    CREATE TABLE IF NOT EXISTS collection_documents (
        tenant TEXT NOT NULL,
        collection TEXT NOT NULL,
        id TEXT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (tenant, collection, id)
    );
    CREATE TABLE IF NOT EXISTS ingest_jobs (
        tenant TEXT NOT NULL,
        id TEXT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (tenant, id)
    );";

/// Collections, documents and ingest jobs in the embedded store's file.
pub struct EmbeddedCollections {
    store: Arc<EmbeddedStore>,
}

impl EmbeddedCollections {
    /// Creates the tables where missing.
    pub fn new(store: Arc<EmbeddedStore>) -> Result<Self, StoreError> {
        store
            .with_conn(|conn| conn.execute_batch(SCHEMA))
            .map_err(failed("creating the collection tables"))?;
        Ok(Self { store })
    }
}

fn encode(doc: &impl Serialize) -> Result<String, StoreError> {
    encode_record(doc, "a collection record")
}

fn collection_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CollectionRecord> {
    let mut collection: CollectionRecord = decode(&row.get::<_, String>(0)?)?;
    collection.version = from_sql_int(row.get(1)?);
    collection.document_count = from_sql_int(row.get(2)?);
    collection.chunk_count = from_sql_int(row.get(3)?);
    Ok(collection)
}

fn chunk_delta(new: usize, old: usize) -> i64 {
    i64::try_from(new).unwrap_or(i64::MAX) - i64::try_from(old).unwrap_or(i64::MAX)
}

#[async_trait]
impl CollectionStore for EmbeddedCollections {
    async fn create_collection(&self, collection: &CollectionRecord) -> Result<(), StoreError> {
        let doc = encode(collection)?;
        let inserted = self
            .store
            .with_conn(|conn| {
                conn.prepare_cached(
                    "INSERT INTO collections (tenant, name, doc) VALUES (?1, ?2, ?3)
                     ON CONFLICT (tenant, name) DO NOTHING",
                )?
                .execute(params![collection.tenant, collection.name, doc])
            })
            .map_err(failed(format_args!(
                "creating collection `{}`",
                collection.name
            )))?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "collection `{}`",
                collection.name
            )));
        }
        Ok(())
    }

    async fn get_collection(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<CollectionRecord>, StoreError> {
        self.store
            .with_conn(|conn| {
                conn.prepare_cached(
                    "SELECT doc, version, document_count, chunk_count FROM collections
                     WHERE tenant = ?1 AND name = ?2",
                )?
                .query_row(params![tenant, name], collection_row)
                .optional()
            })
            .map_err(failed(format_args!("reading collection `{name}`")))
    }

    async fn list_collections(&self, tenant: &str) -> Result<Vec<CollectionRecord>, StoreError> {
        self.store
            .with_conn(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT doc, version, document_count, chunk_count FROM collections
                     WHERE tenant = ?1 ORDER BY name",
                )?;
                let rows = stmt.query_map(params![tenant], collection_row)?;
                rows.collect()
            })
            .map_err(failed("listing collections"))
    }

    async fn delete_collection(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let deleted = self
            .store
            .with_conn(|conn| {
                let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
                tx.prepare_cached(
                    "DELETE FROM collection_documents WHERE tenant = ?1 AND collection = ?2",
                )?
                .execute(params![tenant, name])?;
                let deleted = tx
                    .prepare_cached("DELETE FROM collections WHERE tenant = ?1 AND name = ?2")?
                    .execute(params![tenant, name])?;
                tx.commit()?;
                Ok(deleted)
            })
            .map_err(failed(format_args!("deleting collection `{name}`")))?;
        Ok(deleted > 0)
    }

    async fn get_document(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
    ) -> Result<Option<DocumentRecord>, StoreError> {
        self.store
            .with_conn(|conn| {
                conn.prepare_cached(
                    "SELECT doc FROM collection_documents
                     WHERE tenant = ?1 AND collection = ?2 AND id = ?3",
                )?
                .query_row(params![tenant, collection, id], |row| {
                    decode(&row.get::<_, String>(0)?)
                })
                .optional()
            })
            .map_err(failed(format_args!("reading document `{id}`")))
    }

    async fn list_documents(
        &self,
        tenant: &str,
        collection: &str,
        limit: usize,
    ) -> Result<Vec<DocumentRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.store
            .with_conn(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT doc FROM collection_documents WHERE tenant = ?1 AND collection = ?2
                     ORDER BY id LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![tenant, collection, limit], |row| {
                    decode(&row.get::<_, String>(0)?)
                })?;
                rows.collect()
            })
            .map_err(failed(format_args!(
                "listing the documents of `{collection}`"
            )))
    }

    async fn put_document(
        &self,
        tenant: &str,
        collection: &str,
        document: &DocumentRecord,
    ) -> Result<Option<u64>, StoreError> {
        let doc = encode(document)?;
        self.store
            .with_conn(|conn| {
                let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
                let old: Option<DocumentRecord> = tx
                    .prepare_cached(
                        "SELECT doc FROM collection_documents
                         WHERE tenant = ?1 AND collection = ?2 AND id = ?3",
                    )?
                    .query_row(params![tenant, collection, document.id], |row| {
                        decode(&row.get::<_, String>(0)?)
                    })
                    .optional()?;
                let new_documents = i64::from(old.is_none());
                let chunks = chunk_delta(
                    document.chunk_ids.len(),
                    old.as_ref().map_or(0, |d| d.chunk_ids.len()),
                );
                let version: Option<i64> = tx
                    .prepare_cached(
                        "UPDATE collections SET version = version + 1,
                             document_count = document_count + ?3,
                             chunk_count = MAX(chunk_count + ?4, 0)
                         WHERE tenant = ?1 AND name = ?2 RETURNING version",
                    )?
                    .query_row(params![tenant, collection, new_documents, chunks], |row| {
                        row.get(0)
                    })
                    .optional()?;
                let Some(version) = version else {
                    return Ok(None);
                };
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO collection_documents (tenant, collection, id, doc)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![tenant, collection, document.id, doc])?;
                tx.commit()?;
                Ok(Some(from_sql_int(version)))
            })
            .map_err(failed(format_args!("writing document `{}`", document.id)))
    }

    async fn delete_document(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
    ) -> Result<Option<DocumentRecord>, StoreError> {
        self.store
            .with_conn(|conn| {
                let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
                let old: Option<DocumentRecord> = tx
                    .prepare_cached(
                        "DELETE FROM collection_documents
                         WHERE tenant = ?1 AND collection = ?2 AND id = ?3 RETURNING doc",
                    )?
                    .query_row(params![tenant, collection, id], |row| {
                        decode(&row.get::<_, String>(0)?)
                    })
                    .optional()?;
                if let Some(old) = &old {
                    tx.prepare_cached(
                        "UPDATE collections SET version = version + 1,
                             document_count = MAX(document_count - 1, 0),
                             chunk_count = MAX(chunk_count - ?3, 0)
                         WHERE tenant = ?1 AND name = ?2",
                    )?
                    .execute(params![
                        tenant,
                        collection,
                        to_sql_int(old.chunk_ids.len() as u64)
                    ])?;
                }
                tx.commit()?;
                Ok(old)
            })
            .map_err(failed(format_args!("deleting document `{id}`")))
    }

    async fn put_job(&self, job: &IngestJob) -> Result<(), StoreError> {
        let doc = encode(job)?;
        self.store
            .with_conn(|conn| {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO ingest_jobs (tenant, id, doc) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![job.tenant, job.id, doc])
            })
            .map_err(failed(format_args!("writing ingest job `{}`", job.id)))?;
        Ok(())
    }

    async fn get_job(&self, tenant: &str, id: &str) -> Result<Option<IngestJob>, StoreError> {
        self.store
            .with_conn(|conn| {
                conn.prepare_cached("SELECT doc FROM ingest_jobs WHERE tenant = ?1 AND id = ?2")?
                    .query_row(params![tenant, id], |row| decode(&row.get::<_, String>(0)?))
                    .optional()
            })
            .map_err(failed(format_args!("reading ingest job `{id}`")))
    }
}
