//! The embedded store: one SQLite file holding keys, monthly spend and the response cache.
//!
//! SQLite (not a single-process store) because `gateway-local keys create` must work while the
//! gateway runs: WAL mode lets the CLI and the server share the file. Reads are point lookups on
//! the request path; writes that can wait (cache entries, spend) go to a writer thread that
//! commits them in batches with `synchronous=NORMAL`, so no request waits for a disk flush.
//! A crash of the process loses at most the batch being collected (up to `BATCH_WINDOW`); a power
//! loss can also lose the WAL commits not yet synced by a checkpoint.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Backends, CacheStore, KeyStore, StoreError};
use crate::auth::KeyRecord;
use crate::limits::{LocalLimiter, SpendSink, month_of};

/// How long the writer collects writes before committing them together.
const BATCH_WINDOW: Duration = Duration::from_millis(100);
const MAX_BATCH: usize = 1024;
/// How often expired cache rows are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(300);

enum Write {
    Cache {
        key: [u8; 32],
        body: Bytes,
        expires_at: u64,
    },
    Spend {
        key_id: String,
        month: u32,
        usd: f64,
    },
    Flush(mpsc::SyncSender<()>),
}

/// Cache entries queued for the writer and not yet committed, so a repeated request is a hit
/// even within the batch window.
type Pending = Arc<Mutex<HashMap<[u8; 32], (Bytes, u64)>>>;

pub struct EmbeddedStore {
    reader: Mutex<Connection>,
    writer: Mutex<Sender<Write>>,
    pending: Pending,
}

fn backend(error: rusqlite::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA busy_timeout = 5000;
         CREATE TABLE IF NOT EXISTS keys (
             hash TEXT PRIMARY KEY,
             id TEXT NOT NULL UNIQUE,
             record TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS spend (
             key_id TEXT NOT NULL,
             month INTEGER NOT NULL,
             usd REAL NOT NULL,
             PRIMARY KEY (key_id, month)
         );
         CREATE TABLE IF NOT EXISTS cache (
             key BLOB PRIMARY KEY,
             body BLOB NOT NULL,
             expires_at INTEGER NOT NULL
         );",
    )
    .map_err(backend)?;
    Ok(conn)
}

impl EmbeddedStore {
    /// Opens (creating if needed) `gateway.db` in `dir` and starts the writer thread.
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("gateway.db");
        let reader = open(&path)?;
        let writer_conn = open(&path)?;
        let (tx, rx) = mpsc::channel();
        let pending = Pending::default();
        let writer_pending = Arc::clone(&pending);
        thread::Builder::new()
            .name("gateway-store-writer".into())
            .spawn(move || write_loop(writer_conn, rx, writer_pending))
            .map_err(|e| StoreError::Backend(format!("cannot start writer thread: {e}")))?;
        Ok(Arc::new(Self {
            reader: Mutex::new(reader),
            writer: Mutex::new(tx),
            pending,
        }))
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let conn = self
            .reader
            .lock()
            .map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
        f(&conn).map_err(backend)
    }

    fn send(&self, write: Write) {
        let sent = self
            .writer
            .lock()
            .map(|tx| tx.send(write).is_ok())
            .unwrap_or(false);
        if !sent {
            tracing::error!("store writer has stopped; a background write was dropped");
        }
    }

    /// Waits until every write queued so far is committed (used at shutdown and in tests).
    pub fn flush(&self) {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.send(Write::Flush(done_tx));
        let _ = done_rx.recv_timeout(Duration::from_secs(10));
    }

    /// The embedded backends over this store: keys and cache in SQLite, limits in process with
    /// spend persisted here and reloaded at start-up.
    pub fn backends(self: &Arc<Self>) -> Result<Backends, StoreError> {
        let spent = self.spend_this_month()?;
        let sink: Arc<dyn SpendSink> = self.clone();
        Ok(Backends {
            keys: self.clone(),
            limiter: Arc::new(LocalLimiter::new(Some(sink), spent)),
            cache: self.clone(),
            edge: Arc::new(crate::edge::NoEdgeKeys),
        })
    }

    /// Spend recorded for the current month, per key, to seed the limiter at start-up.
    pub fn spend_this_month(&self) -> Result<HashMap<(String, u32), f64>, StoreError> {
        let month = month_of(now_secs());
        self.with_conn(|conn| {
            let mut stmt = conn.prepare("SELECT key_id, usd FROM spend WHERE month = ?1")?;
            let rows = stmt.query_map(params![month], |row| {
                Ok(((row.get::<_, String>(0)?, month), row.get::<_, f64>(1)?))
            })?;
            rows.collect()
        })
    }
}

fn write_loop(mut conn: Connection, rx: Receiver<Write>, pending: Pending) {
    let mut last_purge = Instant::now();
    loop {
        let first = match rx.recv_timeout(PURGE_EVERY) {
            Ok(write) => write,
            Err(RecvTimeoutError::Timeout) => {
                purge_expired(&conn);
                last_purge = Instant::now();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + BATCH_WINDOW;
        while batch.len() < MAX_BATCH && !matches!(batch.last(), Some(Write::Flush(_))) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        if let Err(error) = commit(&mut conn, &batch) {
            tracing::error!(%error, writes = batch.len(), "embedded store batch failed");
        }
        if let Ok(mut pending) = pending.lock() {
            for write in &batch {
                if let Write::Cache {
                    key, expires_at, ..
                } = write
                    && pending.get(key).is_some_and(|(_, at)| at == expires_at)
                {
                    pending.remove(key);
                }
            }
        }
        for write in batch {
            if let Write::Flush(done) = write {
                let _ = done.send(());
            }
        }
        if last_purge.elapsed() >= PURGE_EVERY {
            purge_expired(&conn);
            last_purge = Instant::now();
        }
    }
}

fn commit(conn: &mut Connection, batch: &[Write]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut put_cache = tx.prepare_cached(
            "INSERT OR REPLACE INTO cache (key, body, expires_at) VALUES (?1, ?2, ?3)",
        )?;
        let mut add_spend = tx.prepare_cached(
            "INSERT INTO spend (key_id, month, usd) VALUES (?1, ?2, ?3)
             ON CONFLICT (key_id, month) DO UPDATE SET usd = usd + excluded.usd",
        )?;
        for write in batch {
            match write {
                Write::Cache {
                    key,
                    body,
                    expires_at,
                } => {
                    put_cache.execute(params![&key[..], &body[..], expires_at])?;
                }
                Write::Spend { key_id, month, usd } => {
                    add_spend.execute(params![key_id, month, usd])?;
                }
                Write::Flush(_) => {}
            }
        }
    }
    tx.commit()
}

fn purge_expired(conn: &Connection) {
    if let Err(error) = conn.execute(
        "DELETE FROM cache WHERE expires_at <= ?1",
        params![now_secs()],
    ) {
        tracing::warn!(%error, "purging expired cache entries failed");
    }
}

fn decode_record(text: &str) -> rusqlite::Result<KeyRecord> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn encode_record(record: &KeyRecord) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|e| StoreError::Backend(e.to_string()))
}

#[async_trait]
impl KeyStore for EmbeddedStore {
    async fn get_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.with_conn(|conn| {
            conn.prepare_cached("SELECT record FROM keys WHERE hash = ?1")?
                .query_row(params![hash], |row| {
                    decode_record(&row.get::<_, String>(0)?)
                })
                .optional()
        })
    }

    async fn insert(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError> {
        let text = encode_record(record)?;
        self.with_conn(|conn| {
            conn.execute(
                "INSERT INTO keys (hash, id, record) VALUES (?1, ?2, ?3)",
                params![hash, record.id, text],
            )
        })
        .map_err(|e| match e {
            StoreError::Backend(msg) if msg.contains("UNIQUE") => {
                StoreError::Conflict(format!("key `{}`", record.id))
            }
            other => other,
        })?;
        Ok(())
    }

    async fn upsert(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError> {
        let text = encode_record(record)?;
        self.with_conn(|conn| {
            conn.execute(
                "DELETE FROM keys WHERE id = ?1 AND hash <> ?2",
                params![record.id, hash],
            )?;
            conn.execute(
                "INSERT OR REPLACE INTO keys (hash, id, record) VALUES (?1, ?2, ?3)",
                params![hash, record.id, text],
            )
        })?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare("SELECT record FROM keys ORDER BY id")?;
            let rows = stmt.query_map([], |row| decode_record(&row.get::<_, String>(0)?))?;
            rows.collect()
        })
    }

    async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        self.with_conn(|conn| {
            let found = conn
                .query_row(
                    "SELECT hash, record FROM keys WHERE id = ?1",
                    params![id],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
                )
                .optional()?;
            let Some((hash, text)) = found else {
                return Ok(false);
            };
            let mut record = decode_record(&text)?;
            record.disabled = true;
            let text = serde_json::to_string(&record)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            conn.execute(
                "UPDATE keys SET record = ?1 WHERE hash = ?2",
                params![text, hash],
            )?;
            Ok(true)
        })
    }
}

#[async_trait]
impl CacheStore for EmbeddedStore {
    async fn get(&self, key: &[u8; 32]) -> Result<Option<Bytes>, StoreError> {
        let now = now_secs();
        if let Ok(pending) = self.pending.lock()
            && let Some((body, expires_at)) = pending.get(key)
            && *expires_at > now
        {
            return Ok(Some(body.clone()));
        }
        self.with_conn(|conn| {
            conn.prepare_cached("SELECT body FROM cache WHERE key = ?1 AND expires_at > ?2")?
                .query_row(params![&key[..], now], |row| {
                    row.get::<_, Vec<u8>>(0).map(Bytes::from)
                })
                .optional()
        })
    }

    async fn put(&self, key: &[u8; 32], body: Bytes, ttl_s: u64) -> Result<(), StoreError> {
        let expires_at = now_secs() + ttl_s;
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(*key, (body.clone(), expires_at));
        }
        self.send(Write::Cache {
            key: *key,
            body,
            expires_at,
        });
        Ok(())
    }
}

impl SpendSink for EmbeddedStore {
    fn record(&self, key_id: &str, month: u32, cost_usd: f64) {
        self.send(Write::Spend {
            key_id: key_id.to_owned(),
            month,
            usd: cost_usd,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{NewKey, generate_key};

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gateway-store-test-{name}-{}-{}",
            std::process::id(),
            now_secs()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn keys_round_trip_and_revoke_across_connections() {
        let dir = temp_dir("keys");
        let store = EmbeddedStore::open(&dir).unwrap();
        let (hash, _, record) = generate_key(
            NewKey {
                name: "a".into(),
                ..NewKey::default()
            },
            1,
        )
        .unwrap();
        store.insert(&hash, &record).await.unwrap();
        assert!(matches!(
            store.insert(&hash, &record).await,
            Err(StoreError::Conflict(_))
        ));
        // A second process (the CLI) opening the same file sees and revokes the key.
        let other = EmbeddedStore::open(&dir).unwrap();
        assert_eq!(
            other.get_by_hash(&hash).await.unwrap(),
            Some(record.clone())
        );
        assert!(other.revoke(&record.id).await.unwrap());
        assert!(!other.revoke("key_missing").await.unwrap());
        assert!(store.get_by_hash(&hash).await.unwrap().unwrap().disabled);
        assert_eq!(store.list().await.unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn cache_entries_and_spend_are_written_in_the_background() {
        let dir = temp_dir("cache");
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
        store.record("key_1", month_of(now_secs()), 0.25);
        store.record("key_1", month_of(now_secs()), 0.5);
        store.flush();
        assert_eq!(
            store.get(&key).await.unwrap().as_deref(),
            Some(&b"body"[..])
        );
        // Expired entries are never served, even before the purge deletes them.
        assert_eq!(store.get(&[8u8; 32]).await.unwrap(), None);
        let spend = store.spend_this_month().unwrap();
        assert!((spend[&("key_1".to_owned(), month_of(now_secs()))] - 0.75).abs() < 1e-9);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
