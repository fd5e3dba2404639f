//! The batch store in the embedded SQLite file: files, uploads and their parts, batches and one
//! result per item (tables in `storage::embedded`).
//!
//! Every write is committed through `with_conn` before the call returns, not queued for the
//! store's writer thread: the worker acknowledges a queue message only after its result is
//! recorded, so a process killed at any moment loses no result it acknowledged.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;

use crate::batch::store::{
    BatchRecord, BatchStore, Counts, FileRecord, ItemResult, UploadPart, UploadRecord,
};
use crate::error::StoreError;
use crate::limits::from_nano_usd;
use crate::limits::local::Spend;
use crate::storage::embedded::{
    EmbeddedStore, add_usage, decode_record as decode, encode_record, failed, from_sql_int,
    to_sql_int,
};

/// Prefixes a backend failure with what the store was doing.
fn encode(doc: &impl Serialize) -> Result<String, StoreError> {
    encode_record(doc, "a batch record")
}

/// A write transaction that takes the database's write lock at once, so it never fails half-way
/// because another connection (the CLI, the writer thread) wrote in between.
fn write_transaction(conn: &Connection) -> rusqlite::Result<Transaction<'_>> {
    Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
}

/// A batch row: the document with the version and counts of its columns (the columns are the
/// truth: the counts are raised without rewriting the document).
fn batch_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(BatchRecord, Counts)> {
    let mut batch: BatchRecord = decode(&row.get::<_, String>(0)?)?;
    batch.version = from_sql_int(row.get(1)?);
    let counts = Counts {
        completed: from_sql_int(row.get(2)?),
        failed: from_sql_int(row.get(3)?),
    };
    Ok((batch, counts))
}

fn result_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ItemResult> {
    Ok(ItemResult {
        custom_id: row.get(0)?,
        line: from_sql_int(row.get(1)?),
        ok: row.get(2)?,
        record: row.get(3)?,
    })
}

#[async_trait]
impl BatchStore for EmbeddedStore {
    async fn put_file(&self, file: &FileRecord) -> Result<(), StoreError> {
        let doc = encode(file)?;
        self.with_conn(|conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO files (id, tenant, doc) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![file.id, file.tenant, doc])
        })
        .map_err(failed(format_args!("writing file `{}`", file.id)))?;
        Ok(())
    }

    async fn get_file(&self, tenant: &str, id: &str) -> Result<Option<FileRecord>, StoreError> {
        self.with_conn(|conn| {
            conn.prepare_cached("SELECT doc FROM files WHERE id = ?1 AND tenant = ?2")?
                .query_row(params![id, tenant], |row| decode(&row.get::<_, String>(0)?))
                .optional()
        })
        .map_err(failed(format_args!("reading file `{id}`")))
    }

    async fn list_files(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT doc FROM files WHERE tenant = ?1 AND (?2 IS NULL OR id < ?2)
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![tenant, after, limit], |row| {
                decode(&row.get::<_, String>(0)?)
            })?;
            rows.collect()
        })
        .map_err(failed("listing files"))
    }

    async fn delete_file(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let deleted = self
            .with_conn(|conn| {
                conn.prepare_cached("DELETE FROM files WHERE id = ?1 AND tenant = ?2")?
                    .execute(params![id, tenant])
            })
            .map_err(failed(format_args!("deleting file `{id}`")))?;
        Ok(deleted > 0)
    }

    async fn put_upload(&self, upload: &UploadRecord) -> Result<(), StoreError> {
        let doc = encode(upload)?;
        self.with_conn(|conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO uploads (id, tenant, doc) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![upload.id, upload.tenant, doc])
        })
        .map_err(failed(format_args!("writing upload `{}`", upload.id)))?;
        Ok(())
    }

    async fn get_upload(&self, tenant: &str, id: &str) -> Result<Option<UploadRecord>, StoreError> {
        self.with_conn(|conn| {
            conn.prepare_cached("SELECT doc FROM uploads WHERE id = ?1 AND tenant = ?2")?
                .query_row(params![id, tenant], |row| decode(&row.get::<_, String>(0)?))
                .optional()
        })
        .map_err(failed(format_args!("reading upload `{id}`")))
    }

    async fn put_upload_part(&self, part: &UploadPart) -> Result<(), StoreError> {
        let doc = encode(part)?;
        self.with_conn(|conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO upload_parts (upload_id, id, doc) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![part.upload_id, part.id, doc])
        })
        .map_err(failed(format_args!(
            "writing part `{}` of upload `{}`",
            part.id, part.upload_id
        )))?;
        Ok(())
    }

    async fn upload_parts(&self, upload_id: &str) -> Result<Vec<UploadPart>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT doc FROM upload_parts WHERE upload_id = ?1")?;
            let rows =
                stmt.query_map(params![upload_id], |row| decode(&row.get::<_, String>(0)?))?;
            rows.collect()
        })
        .map_err(failed(format_args!(
            "reading the parts of upload `{upload_id}`"
        )))
    }

    async fn create_batch(&self, batch: &BatchRecord) -> Result<(), StoreError> {
        let doc = encode(batch)?;
        let inserted = self
            .with_conn(|conn| {
                conn.prepare_cached(
                    "INSERT INTO batches (id, tenant, doc, version, completed, failed, open)
                     VALUES (?1, ?2, ?3, ?4, 0, 0, ?5) ON CONFLICT (id) DO NOTHING",
                )?
                .execute(params![
                    batch.id,
                    batch.tenant,
                    doc,
                    to_sql_int(batch.version),
                    !batch.status.is_terminal()
                ])
            })
            .map_err(failed(format_args!("creating batch `{}`", batch.id)))?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!("batch `{}`", batch.id)));
        }
        Ok(())
    }

    async fn get_batch(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(BatchRecord, Counts)>, StoreError> {
        self.with_conn(|conn| {
            conn.prepare_cached(
                "SELECT doc, version, completed, failed FROM batches
                 WHERE id = ?1 AND tenant = ?2",
            )?
            .query_row(params![id, tenant], batch_row)
            .optional()
        })
        .map_err(failed(format_args!("reading batch `{id}`")))
    }

    async fn list_batches(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(BatchRecord, Counts)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT doc, version, completed, failed FROM batches
                 WHERE tenant = ?1 AND (?2 IS NULL OR id < ?2)
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![tenant, after, limit], batch_row)?;
            rows.collect()
        })
        .map_err(failed("listing batches"))
    }

    async fn update_batch(&self, batch: &BatchRecord) -> Result<bool, StoreError> {
        let Some(read_version) = batch.version.checked_sub(1) else {
            return Err(StoreError::Backend(format!(
                "updating batch `{}`: a replacement must raise the version above 0",
                batch.id
            )));
        };
        let doc = encode(batch)?;
        let updated = self
            .with_conn(|conn| {
                conn.prepare_cached(
                    "UPDATE batches SET doc = ?1, version = ?2, open = ?3
                     WHERE id = ?4 AND version = ?5",
                )?
                .execute(params![
                    doc,
                    to_sql_int(batch.version),
                    !batch.status.is_terminal(),
                    batch.id,
                    to_sql_int(read_version)
                ])
            })
            .map_err(failed(format_args!("updating batch `{}`", batch.id)))?;
        Ok(updated > 0)
    }

    async fn open_batches(&self) -> Result<Vec<BatchRecord>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT doc, version, completed, failed FROM batches WHERE open = 1 ORDER BY id",
            )?;
            let rows = stmt.query_map([], |row| batch_row(row).map(|(batch, _)| batch))?;
            rows.collect()
        })
        .map_err(failed("listing open batches"))
    }

    async fn record_result(
        &self,
        tenant: &str,
        batch_id: &str,
        result: &ItemResult,
    ) -> Result<Option<Counts>, StoreError> {
        self.record_result_with_spend(tenant, batch_id, result, &[])
            .await
    }

    async fn record_result_with_spend(
        &self,
        tenant: &str,
        batch_id: &str,
        result: &ItemResult,
        spend: &[Spend],
    ) -> Result<Option<Counts>, StoreError> {
        self.with_conn(|conn| {
            let tx = write_transaction(conn)?;
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO results (batch_id, custom_id, line, ok, record)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    batch_id,
                    result.custom_id,
                    to_sql_int(result.line),
                    result.ok,
                    result.record
                ])?;
            if inserted == 0 {
                // Recorded by an earlier delivery: nothing changes (dropping `tx` rolls back
                // the empty transaction).
                return Ok(Ok(None));
            }
            let counts = tx
                .prepare_cached(
                    "UPDATE batches SET completed = completed + ?1, failed = failed + ?2
                     WHERE id = ?3 AND tenant = ?4 RETURNING completed, failed",
                )?
                .query_row(
                    params![
                        i64::from(result.ok),
                        i64::from(!result.ok),
                        batch_id,
                        tenant
                    ],
                    |row| {
                        Ok(Counts {
                            completed: from_sql_int(row.get(0)?),
                            failed: from_sql_int(row.get(1)?),
                        })
                    },
                )
                .optional()?;
            let Some(counts) = counts else {
                // A result must count towards its batch: without one, record nothing.
                return Ok(Err(StoreError::Backend(format!(
                    "recording result `{}`: batch `{batch_id}` of tenant `{tenant}` does not exist",
                    result.custom_id
                ))));
            };
            for item in spend {
                tx.prepare_cached(
                    "INSERT INTO spend (key_id, month, usd) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key_id, month) DO UPDATE SET usd = usd + excluded.usd",
                )?
                .execute(params![
                    item.key_id,
                    item.month,
                    from_nano_usd(item.nano_usd)
                ])?;
                add_usage(&tx, &item.key_id, item.day, &item.usage)?;
            }
            tx.commit()?;
            Ok(Ok(Some(counts)))
        })
        .map_err(failed(format_args!(
            "recording result `{}` of batch `{batch_id}`",
            result.custom_id
        )))?
    }

    async fn get_result(
        &self,
        batch_id: &str,
        custom_id: &str,
    ) -> Result<Option<ItemResult>, StoreError> {
        self.with_conn(|conn| {
            conn.prepare_cached(
                "SELECT custom_id, line, ok, record FROM results
                 WHERE batch_id = ?1 AND custom_id = ?2",
            )?
            .query_row(params![batch_id, custom_id], result_row)
            .optional()
        })
        .map_err(failed(format_args!(
            "reading result `{custom_id}` of batch `{batch_id}`"
        )))
    }

    async fn results(&self, batch_id: &str) -> Result<Vec<ItemResult>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT custom_id, line, ok, record FROM results WHERE batch_id = ?1",
            )?;
            let rows = stmt.query_map(params![batch_id], result_row)?;
            rows.collect()
        })
        .map_err(failed(format_args!(
            "reading the results of batch `{batch_id}`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::store::{BatchStatus, UploadStatus};
    use crate::storage::embedded::test_dir;

    fn file(id: &str, tenant: &str) -> FileRecord {
        FileRecord {
            id: id.into(),
            tenant: tenant.into(),
            purpose: "batch".into(),
            filename: "input.jsonl".into(),
            bytes: 42,
            created_at: 1_700_000_000,
            expires_at: None,
            objects: vec![crate::files::file_key(id)],
        }
    }

    fn batch(id: &str, tenant: &str) -> BatchRecord {
        BatchRecord {
            id: id.into(),
            tenant: tenant.into(),
            key_id: "key_1".into(),
            endpoint: "/v1/chat/completions".into(),
            input_file_id: Some("file-1".into()),
            completion_window: "24h".into(),
            status: BatchStatus::Validating,
            created_at: 1_700_000_000,
            expires_at: 1_700_086_400,
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            output_file_id: None,
            error_file_id: None,
            errors: Vec::new(),
            metadata: None,
            total: 0,
            expanded: 0,
            direct: false,
            version: 0,
        }
    }

    fn result(custom_id: &str, line: u64, ok: bool) -> ItemResult {
        ItemResult {
            custom_id: custom_id.into(),
            line,
            ok,
            record: format!("{{\"custom_id\":\"{custom_id}\"}}"),
        }
    }

    #[tokio::test]
    async fn files_belong_to_their_tenant_and_list_newest_first_after_a_cursor() {
        let dir = test_dir("batch-files");
        let store = EmbeddedStore::open(&dir).unwrap();
        for id in ["file-a1", "file-a2", "file-a3", "file-a4"] {
            store.put_file(&file(id, "t1")).await.unwrap();
        }
        store.put_file(&file("file-b1", "t2")).await.unwrap();

        assert_eq!(
            store.get_file("t1", "file-a2").await.unwrap(),
            Some(file("file-a2", "t1"))
        );
        assert_eq!(store.get_file("t2", "file-a2").await.unwrap(), None);

        let ids = |files: Vec<FileRecord>| files.into_iter().map(|f| f.id).collect::<Vec<_>>();
        let first = store.list_files("t1", None, 2).await.unwrap();
        assert_eq!(ids(first), ["file-a4", "file-a3"]);
        let next = store.list_files("t1", Some("file-a3"), 10).await.unwrap();
        assert_eq!(ids(next), ["file-a2", "file-a1"]);
        assert_eq!(
            ids(store.list_files("t2", None, 10).await.unwrap()),
            ["file-b1"]
        );

        assert!(!store.delete_file("t2", "file-a1").await.unwrap());
        assert!(store.delete_file("t1", "file-a1").await.unwrap());
        assert!(!store.delete_file("t1", "file-a1").await.unwrap());
        assert_eq!(store.get_file("t1", "file-a1").await.unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn uploads_are_replaced_and_collect_their_parts() {
        let dir = test_dir("batch-uploads");
        let store = EmbeddedStore::open(&dir).unwrap();
        let mut upload = UploadRecord {
            id: "upload_1".into(),
            tenant: "t1".into(),
            filename: "big.jsonl".into(),
            purpose: "batch".into(),
            mime_type: "application/jsonl".into(),
            bytes: 20,
            created_at: 1,
            expires_at: 3601,
            status: UploadStatus::Pending,
            file_id: None,
        };
        store.put_upload(&upload).await.unwrap();
        assert_eq!(store.get_upload("t2", "upload_1").await.unwrap(), None);
        for (id, bytes) in [("part_1", 10), ("part_2", 10)] {
            let part = UploadPart {
                id: id.into(),
                upload_id: "upload_1".into(),
                bytes,
                created_at: 2,
                object: crate::files::part_key("upload_1", id),
            };
            store.put_upload_part(&part).await.unwrap();
            // A retried part request writes the same row again.
            store.put_upload_part(&part).await.unwrap();
        }
        let mut parts = store.upload_parts("upload_1").await.unwrap();
        parts.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(
            parts.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["part_1", "part_2"]
        );
        assert!(store.upload_parts("upload_2").await.unwrap().is_empty());

        upload.status = UploadStatus::Completed;
        upload.file_id = Some("file-1".into());
        store.put_upload(&upload).await.unwrap();
        assert_eq!(
            store.get_upload("t1", "upload_1").await.unwrap(),
            Some(upload)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn batch_updates_swap_only_from_the_version_they_read() {
        let dir = test_dir("batch-cas");
        let store = EmbeddedStore::open(&dir).unwrap();
        store.create_batch(&batch("batch_1", "t1")).await.unwrap();
        assert!(matches!(
            store.create_batch(&batch("batch_1", "t1")).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.get_batch("t2", "batch_1").await.unwrap(), None);

        let (read, counts) = store.get_batch("t1", "batch_1").await.unwrap().unwrap();
        assert_eq!((read.version, counts), (0, Counts::default()));
        // Two writers read version 0: the first swap wins, the second is refused.
        let mut expander = read.clone();
        expander.status = BatchStatus::InProgress;
        expander.total = 3;
        expander.version = 1;
        let mut canceller = read.clone();
        canceller.status = BatchStatus::Cancelling;
        canceller.version = 1;
        assert!(store.update_batch(&expander).await.unwrap());
        assert!(!store.update_batch(&canceller).await.unwrap());
        let (stored, _) = store.get_batch("t1", "batch_1").await.unwrap().unwrap();
        assert_eq!(stored, expander);
        // A replacement that does not raise the version is a bug, not a lost race.
        assert!(matches!(
            store.update_batch(&read).await,
            Err(StoreError::Backend(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn batches_list_newest_first_per_tenant_and_only_open_ones_are_swept() {
        let dir = test_dir("batch-list");
        let store = EmbeddedStore::open(&dir).unwrap();
        for id in ["batch_1", "batch_2", "batch_3"] {
            store.create_batch(&batch(id, "t1")).await.unwrap();
        }
        store.create_batch(&batch("batch_9", "t2")).await.unwrap();
        let ids = |batches: Vec<(BatchRecord, Counts)>| {
            batches.into_iter().map(|(b, _)| b.id).collect::<Vec<_>>()
        };
        assert_eq!(
            ids(store.list_batches("t1", None, 2).await.unwrap()),
            ["batch_3", "batch_2"]
        );
        assert_eq!(
            ids(store.list_batches("t1", Some("batch_2"), 2).await.unwrap()),
            ["batch_1"]
        );

        let mut done = store.get_batch("t1", "batch_2").await.unwrap().unwrap().0;
        done.status = BatchStatus::Completed;
        done.version += 1;
        assert!(store.update_batch(&done).await.unwrap());
        let open: Vec<String> = store
            .open_batches()
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(open, ["batch_1", "batch_3", "batch_9"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_result_is_recorded_and_counted_once_and_survives_reopening() {
        let dir = test_dir("batch-results");
        let store = EmbeddedStore::open(&dir).unwrap();
        store.create_batch(&batch("batch_1", "t1")).await.unwrap();

        let first = store
            .record_result("t1", "batch_1", &result("req-1", 0, true))
            .await
            .unwrap();
        assert_eq!(
            first,
            Some(Counts {
                completed: 1,
                failed: 0
            })
        );
        // Redelivered, even with a different outcome: nothing changes.
        assert_eq!(
            store
                .record_result("t1", "batch_1", &result("req-1", 0, false))
                .await
                .unwrap(),
            None
        );
        let second = store
            .record_result("t1", "batch_1", &result("req-2", 1, false))
            .await
            .unwrap();
        assert_eq!(
            second,
            Some(Counts {
                completed: 1,
                failed: 1
            })
        );

        // A result for a batch the tenant does not have is refused and leaves no trace.
        assert!(
            store
                .record_result("t2", "batch_1", &result("req-3", 2, true))
                .await
                .is_err()
        );
        assert_eq!(store.get_result("batch_1", "req-3").await.unwrap(), None);

        // Committed before the call returned: a new connection (a restarted process) sees it.
        drop(store);
        let reopened = EmbeddedStore::open(&dir).unwrap();
        let (_, counts) = reopened.get_batch("t1", "batch_1").await.unwrap().unwrap();
        assert_eq!(
            counts,
            Counts {
                completed: 1,
                failed: 1
            }
        );
        assert_eq!(
            reopened.get_result("batch_1", "req-1").await.unwrap(),
            Some(result("req-1", 0, true))
        );
        let mut all = reopened.results("batch_1").await.unwrap();
        all.sort_by_key(|r| r.line);
        assert_eq!(all, [result("req-1", 0, true), result("req-2", 1, false)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_deliveries_from_two_processes_count_each_item_once() {
        let dir = test_dir("batch-race");
        let first = EmbeddedStore::open(&dir).unwrap();
        let second = EmbeddedStore::open(&dir).unwrap();
        first.create_batch(&batch("batch_1", "t1")).await.unwrap();
        let mut tasks = Vec::new();
        // Every item delivered twice, once to each "process", all at the same time.
        for store in [first.clone(), second.clone()] {
            for item in 0..50u64 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let id = format!("req-{item}");
                    store
                        .record_result("t1", "batch_1", &result(&id, item, item % 5 != 0))
                        .await
                        .unwrap()
                }));
            }
        }
        let mut recorded = 0;
        for task in tasks {
            if task.await.unwrap().is_some() {
                recorded += 1;
            }
        }
        assert_eq!(recorded, 50);
        let (_, counts) = second.get_batch("t1", "batch_1").await.unwrap().unwrap();
        assert_eq!(
            counts,
            Counts {
                completed: 40,
                failed: 10
            }
        );
        assert_eq!(first.results("batch_1").await.unwrap().len(), 50);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
