//! The embedded store's plumbing: one SQLite file holding keys, monthly spend, the response
//! cache, batch jobs (files, uploads, batches, results), the queues (batch, ingest) and vectors, its schema, the reader connection and the writer thread that batches writes. The SQL of
//! each concern is beside its trait (`keys::embedded`, `cache::embedded`, `limits::local`,
//! `batch::embedded`, `queue::embedded`, `vectors::embedded`).
//!
//! SQLite (not a single-process store) because `gateway-local keys create` must work while the
//! gateway runs: WAL mode lets the CLI and the server share the file. Reads are point lookups on
//! the request path; writes that can wait (cache entries, spend) go to a writer thread that
//! commits them in batches with `synchronous=NORMAL`, so no request waits for a disk flush.
//! A crash of the process loses at most the batch being collected (up to `BATCH_WINDOW`); a power
//! loss can also lose the WAL commits not yet synced by a checkpoint. Batch records and queue
//! messages do not go through the writer: they are committed before their call returns.
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

use bytes::Bytes;
use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::Notify;

use crate::clock::{month_of, now_secs};
use crate::error::StoreError;
use crate::usage::ModelUsage;

/// How long the writer collects writes before committing them together.
const BATCH_WINDOW: Duration = Duration::from_millis(100);
const MAX_BATCH: usize = 1024;
/// How often expired cache rows are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(300);
/// How long a statement waits for another process (the CLI beside a running server) to release
/// the database before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A write that can wait: queued for the writer thread, committed with its batch.
pub(crate) enum Write {
    Cache {
        key: [u8; 32],
        body: Bytes,
        expires_at: u64,
    },
    Spend {
        key_id: String,
        month: u32,
        usd: f64,
        day: u32,
        usage: Vec<ModelUsage>,
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
pub(crate) struct RecentCache {
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
    pub(crate) fn get(&self, key: &[u8; 32], now: u64) -> Option<Bytes> {
        self.entries
            .get(key)
            .filter(|entry| entry.expires_at > now)
            .map(|entry| entry.body.clone())
    }

    pub(crate) fn insert(&mut self, key: [u8; 32], body: Bytes, expires_at: u64, committed: bool) {
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
    /// Signalled when this process enqueues a message, so a waiting `receive` of any queue on
    /// this store wakes at once (messages from other processes are found by polling).
    queue_signal: Notify,
}

fn backend(error: rusqlite::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    // First, so that every statement below waits for another process's lock instead of failing.
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS keys (
             hash TEXT PRIMARY KEY,
             id TEXT NOT NULL UNIQUE,
             record TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS superseded_keys (
             hash TEXT PRIMARY KEY,
             id TEXT NOT NULL,
             valid_until INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS audit (
             at INTEGER NOT NULL,
             entry TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
         CREATE TABLE IF NOT EXISTS spend (
             key_id TEXT NOT NULL,
             month INTEGER NOT NULL,
             usd REAL NOT NULL,
             PRIMARY KEY (key_id, month)
         );
         CREATE TABLE IF NOT EXISTS usage (
             key_id TEXT NOT NULL,
             day INTEGER NOT NULL,
             model TEXT NOT NULL,
             requests INTEGER NOT NULL,
             input_tokens INTEGER NOT NULL,
             output_tokens INTEGER NOT NULL,
             nano_usd INTEGER NOT NULL,
             PRIMARY KEY (key_id, day, model)
         );
         CREATE INDEX IF NOT EXISTS usage_day ON usage (day);
         CREATE TABLE IF NOT EXISTS cache (
             key BLOB PRIMARY KEY,
             body BLOB NOT NULL,
             expires_at INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS responses (
             id TEXT PRIMARY KEY,
             tenant TEXT NOT NULL,
             doc BLOB NOT NULL,
             expires_at INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS files (
             id TEXT PRIMARY KEY,
             tenant TEXT NOT NULL,
             doc TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS files_by_tenant ON files (tenant, id);
         CREATE TABLE IF NOT EXISTS uploads (
             id TEXT PRIMARY KEY,
             tenant TEXT NOT NULL,
             doc TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS upload_parts (
             upload_id TEXT NOT NULL,
             id TEXT NOT NULL,
             doc TEXT NOT NULL,
             PRIMARY KEY (upload_id, id)
         );
         CREATE TABLE IF NOT EXISTS batches (
             id TEXT PRIMARY KEY,
             tenant TEXT NOT NULL,
             doc TEXT NOT NULL,
             version INTEGER NOT NULL,
             completed INTEGER NOT NULL DEFAULT 0,
             failed INTEGER NOT NULL DEFAULT 0,
             open INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS batches_by_tenant ON batches (tenant, id);
         CREATE INDEX IF NOT EXISTS open_batches ON batches (id) WHERE open = 1;
         CREATE TABLE IF NOT EXISTS results (
             batch_id TEXT NOT NULL,
             custom_id TEXT NOT NULL,
             line INTEGER NOT NULL,
             ok INTEGER NOT NULL,
             record TEXT NOT NULL,
             PRIMARY KEY (batch_id, custom_id)
         );
         CREATE TABLE IF NOT EXISTS queue (
             id INTEGER PRIMARY KEY,
             body TEXT NOT NULL,
             visible_at_ms INTEGER NOT NULL,
             receives INTEGER NOT NULL DEFAULT 0,
             dead INTEGER NOT NULL DEFAULT 0,
             reason TEXT
         );
         CREATE INDEX IF NOT EXISTS queue_due ON queue (dead, visible_at_ms);
         CREATE TABLE IF NOT EXISTS vector_namespaces (
             id INTEGER PRIMARY KEY,
             tenant TEXT NOT NULL,
             collection TEXT NOT NULL,
             dimensions INTEGER NOT NULL,
             version INTEGER NOT NULL,
             UNIQUE (tenant, collection)
         );
         CREATE TABLE IF NOT EXISTS vectors (
             ns INTEGER NOT NULL,
             key TEXT NOT NULL,
             vector BLOB NOT NULL,
             text TEXT NOT NULL,
             metadata TEXT NOT NULL,
             PRIMARY KEY (ns, key)
         );",
    )
    .map_err(backend)?;
    add_queue_names(&conn)?;
    Ok(conn)
}

/// The queue table hosts several queues (batch, ingest), told apart by `name` (`''` is the batch
/// queue, so rows of a file written before the column existed stay in it).
fn add_queue_names(conn: &Connection) -> Result<(), StoreError> {
    let has_names: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('queue') WHERE name = 'name'",
            [],
            |row| row.get(0),
        )
        .map_err(backend)?;
    if !has_names
        && let Err(error) =
            conn.execute_batch("ALTER TABLE queue ADD COLUMN name TEXT NOT NULL DEFAULT ''")
        // Another connection opening the file may have added it meanwhile.
        && !error.to_string().contains("duplicate column")
    {
        return Err(backend(error));
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS queue_due_by_name ON queue (name, dead, visible_at_ms)",
    )
    .map_err(backend)
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
            queue_signal: Notify::new(),
        }))
    }

    pub(crate) fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let conn = self
            .reader
            .lock()
            .map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
        f(&conn).map_err(backend)
    }

    pub(crate) fn send(&self, write: Write) {
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

    /// Wakes the receivers of the embedded queue waiting on this store.
    pub(crate) fn queue_signal(&self) -> &Notify {
        &self.queue_signal
    }

    /// Cache entries in memory: those waiting for the writer, and recently used ones.
    pub(crate) fn recent(&self) -> &Mutex<RecentCache> {
        &self.recent
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
        if let Write::Spend {
            key_id, month, usd, ..
        } = write
        {
            *spend.entry((key_id.as_str(), *month)).or_default() += usd;
        }
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
                Write::Spend {
                    key_id, day, usage, ..
                } => add_usage(&tx, key_id, *day, usage)?,
                Write::Flush(_) => {}
            }
        }
        for ((key_id, month), usd) in spend {
            add_spend.execute(params![key_id, month, usd])?;
        }
    }
    tx.commit()
}

/// Adds a request's usage to its key's and day's rows, one per model.
pub(crate) fn add_usage(
    conn: &Connection,
    key_id: &str,
    day: u32,
    usage: &[ModelUsage],
) -> rusqlite::Result<()> {
    let mut add = conn.prepare_cached(
        "INSERT INTO usage (key_id, day, model, requests, input_tokens, output_tokens, nano_usd)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (key_id, day, model) DO UPDATE SET
             requests = requests + excluded.requests,
             input_tokens = input_tokens + excluded.input_tokens,
             output_tokens = output_tokens + excluded.output_tokens,
             nano_usd = nano_usd + excluded.nano_usd",
    )?;
    for line in usage {
        add.execute(params![
            key_id,
            day,
            line.model,
            to_sql_int(line.requests),
            to_sql_int(line.input_tokens),
            to_sql_int(line.output_tokens),
            line.nano_usd
        ])?;
    }
    Ok(())
}

fn purge_expired(conn: &Connection) {
    for (table, what) in [
        ("cache", "cache entries"),
        ("responses", "stored responses"),
    ] {
        if let Err(error) = conn.execute(
            &format!("DELETE FROM {table} WHERE expires_at <= ?1"),
            params![to_sql_int(now_secs())],
        ) {
            tracing::warn!(%error, "purging expired {what} failed");
        }
    }
}

/// Adds what was being done to a backend error's message.
pub(crate) fn failed(what: impl std::fmt::Display) -> impl FnOnce(StoreError) -> StoreError {
    move |error| match error {
        StoreError::Backend(message) => StoreError::Backend(format!("{what}: {message}")),
        other => other,
    }
}

/// A record as the JSON text the concern tables keep; `kind` names it in the error.
pub(crate) fn encode_record(doc: &impl serde::Serialize, kind: &str) -> Result<String, StoreError> {
    serde_json::to_string(doc).map_err(|e| StoreError::Backend(format!("encoding {kind}: {e}")))
}

pub(crate) fn decode_record<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// SQLite's integers are signed; counts and limits beyond `i64::MAX` do not occur.
pub(crate) fn to_sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn from_sql_int(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A fresh data directory for a test.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gateway-store-test-{name}-{}-{}",
        std::process::id(),
        now_secs()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
