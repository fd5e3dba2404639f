//! The embedded store: one SQLite file holding keys, monthly spend and the response cache.
//!
//! SQLite (not a single-process store) because `gateway-local keys create` must work while the
//! gateway runs: WAL mode lets the CLI and the server share the file. Reads are point lookups on
//! the request path; writes that can wait (cache entries, spend) go to a writer thread that
//! commits them in batches with `synchronous=NORMAL`, so no request waits for a disk flush.
//! A crash of the process loses at most the batch being collected (up to `BATCH_WINDOW`); a power
//! loss can also lose the WAL commits not yet synced by a checkpoint.
//!
//! The writer sleeps through its batch window instead of waiting on the queue, so queueing a write
//! never wakes it (a wake-up per request was a system call and a context switch each). Cache
//! entries stay in memory (`RecentCache`) while they wait for the writer and, within a byte
//! budget, after it: a repeated request is answered without a query.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use crate::backends::Backends;
use crate::cache::CacheStore;
use crate::clock::{month_of, now_secs};
use crate::error::StoreError;
use crate::keys::KeyRecord;
use crate::keys::KeyStore;
use crate::limits::{LocalLimiter, SpendSink};

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

/// Most bytes of committed cache bodies kept in memory; entries not yet committed are always kept.
const RECENT_CACHE_BYTES: usize = 8 << 20;
/// Most committed entries kept in memory.
const RECENT_CACHE_ENTRIES: usize = 8192;

/// Cache entries in memory: every entry queued for the writer and not yet committed (so a
/// repeated request is a hit even within the batch window), and recently written or read
/// committed ones, oldest dropped first beyond the budget. An entry is served only until it
/// expires, as from the table.
#[derive(Default)]
struct RecentCache {
    entries: HashMap<[u8; 32], RecentEntry>,
    /// Keys in insertion order, with the expiry they were inserted with (a key put again
    /// appears twice; the older mention is skipped when it comes up).
    order: VecDeque<([u8; 32], u64)>,
    committed_bytes: usize,
    committed_entries: usize,
}

struct RecentEntry {
    body: Bytes,
    expires_at: u64,
    committed: bool,
}

impl RecentCache {
    fn get(&self, key: &[u8; 32], now: u64) -> Option<Bytes> {
        self.entries
            .get(key)
            .filter(|entry| entry.expires_at > now)
            .map(|entry| entry.body.clone())
    }

    fn insert(&mut self, key: [u8; 32], body: Bytes, expires_at: u64, committed: bool) {
        if let Some(old) = self.entries.insert(
            key,
            RecentEntry {
                body,
                expires_at,
                committed: false,
            },
        ) && old.committed
        {
            self.committed_bytes -= old.body.len();
            self.committed_entries -= 1;
        }
        self.order.push_back((key, expires_at));
        if committed {
            self.mark_committed(&key, expires_at);
        }
    }

    /// Marks an entry written to the table (unless it was replaced since), then keeps the
    /// committed entries within the budget.
    fn mark_committed(&mut self, key: &[u8; 32], expires_at: u64) {
        if let Some(entry) = self.entries.get_mut(key)
            && entry.expires_at == expires_at
            && !entry.committed
        {
            entry.committed = true;
            self.committed_bytes += entry.body.len();
            self.committed_entries += 1;
        }
        while self.committed_bytes > RECENT_CACHE_BYTES
            || self.committed_entries > RECENT_CACHE_ENTRIES
        {
            let Some((oldest, at)) = self.order.pop_front() else {
                break;
            };
            match self.entries.get(&oldest) {
                Some(entry) if entry.expires_at == at && entry.committed => {
                    self.committed_bytes -= entry.body.len();
                    self.committed_entries -= 1;
                    self.entries.remove(&oldest);
                }
                // Not written yet: it stays (and so does everything queued after it).
                Some(entry) if entry.expires_at == at => {
                    self.order.push_front((oldest, at));
                    break;
                }
                // A key put again since: its newer mention comes later.
                _ => {}
            }
        }
        // Mentions of replaced keys must not pile up when nothing is evicted.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(key, at)| entries.get(key).is_some_and(|e| e.expires_at == *at));
        }
    }
}

type Recent = Arc<Mutex<RecentCache>>;

pub struct EmbeddedStore {
    reader: Mutex<Connection>,
    writer: Sender<Write>,
    /// The writer thread, woken early by `flush`.
    writer_thread: thread::Thread,
    recent: Recent,
}

fn backend(error: rusqlite::Error) -> StoreError {
    StoreError::Backend(error.to_string())
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
        let recent = Recent::default();
        let writer_recent = Arc::clone(&recent);
        let writer = thread::Builder::new()
            .name("gateway-store-writer".into())
            .spawn(move || write_loop(writer_conn, rx, writer_recent))
            .map_err(|e| StoreError::Backend(format!("cannot start writer thread: {e}")))?;
        Ok(Arc::new(Self {
            reader: Mutex::new(reader),
            writer: tx,
            writer_thread: writer.thread().clone(),
            recent,
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
        if self.writer.send(write).is_err() {
            tracing::error!("store writer has stopped; a background write was dropped");
        }
    }

    /// Waits until every write queued so far is committed (used at shutdown and in tests).
    pub fn flush(&self) {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.send(Write::Flush(done_tx));
        self.writer_thread.unpark();
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
            edge: Arc::new(crate::keys::edge::NoEdgeKeys),
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

fn write_loop(mut conn: Connection, rx: Receiver<Write>, recent: Recent) {
    let mut last_purge = Instant::now();
    loop {
        // Idle, it waits on the queue: the first write of a batch wakes it.
        let first = match rx.recv_timeout(PURGE_EVERY) {
            Ok(write) => write,
            Err(RecvTimeoutError::Timeout) => {
                purge_expired(&conn);
                last_purge = Instant::now();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut flushing = matches!(first, Write::Flush(_));
        let mut batch = vec![first];
        // Then it sleeps through the window and takes what came meanwhile: a sender wakes only
        // a receiver blocked in `recv`, so these writes cost their senders no system call.
        let deadline = Instant::now() + BATCH_WINDOW;
        loop {
            while batch.len() < MAX_BATCH
                && let Ok(write) = rx.try_recv()
            {
                flushing |= matches!(write, Write::Flush(_));
                batch.push(write);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if flushing || batch.len() >= MAX_BATCH || left.is_zero() {
                break;
            }
            // `flush` unparks it; a spurious wake-up just drains the queue early.
            thread::park_timeout(left);
        }
        if let Err(error) = commit(&mut conn, &batch) {
            tracing::error!(%error, writes = batch.len(), "embedded store batch failed");
        }
        if let Ok(mut recent) = recent.lock() {
            for write in &batch {
                if let Write::Cache {
                    key, expires_at, ..
                } = write
                {
                    recent.mark_committed(key, *expires_at);
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
    // Spend adds up per key and month: one row update each, however many requests the batch has.
    let mut spend: HashMap<(&str, u32), f64> = HashMap::new();
    for write in batch {
        if let Write::Spend { key_id, month, usd } = write {
            *spend.entry((key_id.as_str(), *month)).or_default() += usd;
        }
    }
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
                Write::Spend { .. } | Write::Flush(_) => {}
            }
        }
        for ((key_id, month), usd) in spend {
            add_spend.execute(params![key_id, month, usd])?;
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
        if let Some(body) = self
            .recent
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
            if let Ok(mut recent) = self.recent.lock() {
                recent.insert(*key, body.clone(), expires_at, true);
            }
            body
        }))
    }

    async fn put(&self, key: &[u8; 32], body: Bytes, ttl_s: u64) -> Result<(), StoreError> {
        let expires_at = now_secs() + ttl_s;
        if let Ok(mut recent) = self.recent.lock() {
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
    use crate::keys::{NewKey, generate_key};

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

    #[test]
    fn recent_cache_keeps_unwritten_entries_and_drops_the_oldest_written_ones() {
        let mut recent = RecentCache::default();
        let key = |i: usize| {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            k
        };
        let body = Bytes::from_static(b"answer");
        // Not yet written: kept whatever the budget.
        for i in 0..RECENT_CACHE_ENTRIES + 10 {
            recent.insert(key(i), body.clone(), 100, false);
        }
        assert_eq!(recent.entries.len(), RECENT_CACHE_ENTRIES + 10);
        for i in 0..RECENT_CACHE_ENTRIES + 10 {
            recent.mark_committed(&key(i), 100);
        }
        assert_eq!(recent.entries.len(), RECENT_CACHE_ENTRIES);
        assert_eq!(recent.get(&key(0), 50), None, "the oldest went first");
        assert_eq!(
            recent.get(&key(RECENT_CACHE_ENTRIES + 9), 50),
            Some(body.clone())
        );
        // Expired entries are not served; a replaced entry is not marked by the older write.
        assert_eq!(recent.get(&key(20), 100), None);
        recent.insert(key(20), Bytes::from_static(b"newer"), 200, false);
        recent.mark_committed(&key(20), 100);
        assert!(!recent.entries[&key(20)].committed);
        assert_eq!(recent.committed_entries, RECENT_CACHE_ENTRIES - 1);
        assert!(recent.order.len() <= 2 * recent.entries.len() + 64);
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
