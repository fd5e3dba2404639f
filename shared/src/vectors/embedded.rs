//! The vector store of the local run: vectors in the embedded SQLite file (tables
//! `vector_namespaces` and `vectors` in `storage::embedded`), searched exactly over an in-memory
//! copy per namespace.
//!
//! A namespace's copy is loaded on its first query: its vectors in one contiguous `Vec<f32>`
//! (normalised when stored, so a dot product is the cosine similarity) and as 8-bit codes, with
//! their keys and metadata. A query filters rows first, bounds the scores of the rest from the
//! codes, scores exactly those that could be among the best `top_k` and keeps them in a bounded
//! heap (see `Loaded`); the texts of the hits are then read from the table. Writes are committed before they
//! return and applied to a loaded copy; every namespace carries a version raised by each write,
//! so a copy that another process's write made stale is reloaded by the next query.
//!
//! Scoring is CPU work of milliseconds (100,000 vectors of 384 dimensions are 38 MB of codes to
//! read), so it runs on the blocking pool, not on the async workers.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::{Map, Value};

use crate::error::StoreError;
use crate::storage::embedded::EmbeddedStore;
use crate::vectors::{
    MetadataFilter, Namespace, VectorHit, VectorRecord, VectorStore, dimension_mismatch, prepared,
    query_vector,
};

/// Rows read per statement while loading a namespace, so keys lookups sharing the store's
/// connection wait for one page at most.
const LOAD_PAGE_ROWS: i64 = 2048;
/// Loads retried when other processes keep writing the namespace meanwhile.
const LOAD_ATTEMPTS: usize = 3;
/// Values summed side by side in a dot product: independent accumulators the compiler keeps in
/// vector registers.
const LANES: usize = 16;
/// Namespaces of at least this many values (250,000: 1 MB) are scanned on several threads.
const PARALLEL_SCAN_VALUES: usize = 250_000;
const MAX_SCAN_THREADS: usize = 4;

/// Vectors in the embedded store's SQLite file.
#[derive(Clone)]
pub struct EmbeddedVectors {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<EmbeddedStore>,
    /// Each namespace's in-memory copy, once loaded. Queries read it; writes hold it exclusively
    /// across their transaction, so this process applies its writes in version order.
    namespaces: Mutex<HashMap<Namespace, Slot>>,
}

type Slot = Arc<RwLock<Option<Loaded>>>;

/// A namespace's row in `vector_namespaces`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    id: i64,
    dimensions: usize,
    version: i64,
}

/// A namespace's vectors in memory.
///
/// Beside each unit vector is its quantised form: 8-bit codes with a scale and the norm of the
/// rounding error. A query scans the codes (a quarter of the bytes: the scan is bound by memory
/// bandwidth), bounds each row's true score within that error, and rescores exactly the few rows
/// whose bound could reach the best `top_k`; the result is the exact top `k`.
struct Loaded {
    head: Head,
    keys: Vec<String>,
    /// `keys.len()` rows of `head.dimensions` values, unit length.
    vectors: Vec<f32>,
    /// The same rows as codes: `vector ≈ scale * code`.
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// `|vector - scale * code|` per row, rounded up.
    errors: Vec<f32>,
    metadata: Vec<Map<String, Value>>,
    rows: HashMap<String, usize>,
}

/// A vector's 8-bit codes, their scale and the norm of the rounding error (rounded up).
fn quantise(vector: &[f32], codes: &mut Vec<i8>) -> (f32, f32) {
    let max = vector.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let mut error = 0.0f64;
    for x in vector {
        let code = (x / scale).round().clamp(-127.0, 127.0);
        let diff = f64::from(*x) - f64::from(scale) * f64::from(code);
        error += diff * diff;
        codes.push(code as i8);
    }
    (scale, (error.sqrt() * (1.0 + 1e-6)) as f32)
}

/// The query as 16-bit codes: `query ≈ scale * code`, with the norm of the rounding error.
struct QueryCodes {
    codes: Vec<i16>,
    scale: f32,
    error: f32,
}

impl QueryCodes {
    fn new(query: &[f32]) -> Self {
        let max = query.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let scale = if max > 0.0 { max / 32767.0 } else { 1.0 };
        let mut error = 0.0f64;
        let codes = query
            .iter()
            .map(|x| {
                let code = (x / scale).round().clamp(-32767.0, 32767.0);
                let diff = f64::from(*x) - f64::from(scale) * f64::from(code);
                error += diff * diff;
                code as i16
            })
            .collect();
        Self {
            codes,
            scale,
            error: (error.sqrt() * (1.0 + 1e-6)) as f32,
        }
    }
}

/// Slack for float rounding in the scores the bounds are compared with (a 4,096-term f32 dot
/// product of unit vectors errs by well under 1e-4).
const ROUNDING_SLACK: f32 = 1e-4;

/// The integer dot product of a row's codes with the query's, in `LANES` i32 accumulators (no
/// overflow: at most 4,096 / `LANES` products of 127 * 32,767 each).
fn dot_codes(a: &[i8], b: &[i16]) -> i64 {
    let mut sums = [0i32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: i64 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| i64::from(*x) * i64::from(*y))
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        if let (Ok(x), Ok(y)) = (<&[i8; LANES]>::try_from(x), <&[i16; LANES]>::try_from(y)) {
            for ((sum, x), y) in sums.iter_mut().zip(x).zip(y) {
                *sum += i32::from(*x) * i32::from(*y);
            }
        }
    }
    sums.iter().map(|s| i64::from(*s)).sum::<i64>() + tail
}

/// A row's score, ordered by score (ties: the earlier row ranks higher).
#[derive(Debug, Clone, Copy)]
struct Scored {
    score: f32,
    row: usize,
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.row.cmp(&self.row))
    }
}

/// The dot product, summed in `LANES` independent accumulators (a single running sum would
/// serialise every addition on the one before it).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        if let (Ok(x), Ok(y)) = (<&[f32; LANES]>::try_from(x), <&[f32; LANES]>::try_from(y)) {
            for ((sum, x), y) in sums.iter_mut().zip(x).zip(y) {
                *sum += x * y;
            }
        }
    }
    sums.iter().sum::<f32>() + tail
}

impl Loaded {
    fn empty(head: Head) -> Self {
        Self {
            head,
            keys: Vec::new(),
            vectors: Vec::new(),
            codes: Vec::new(),
            scales: Vec::new(),
            errors: Vec::new(),
            metadata: Vec::new(),
            rows: HashMap::new(),
        }
    }

    fn upsert(&mut self, key: &str, vector: &[f32], metadata: Map<String, Value>) {
        let dims = self.head.dimensions;
        let mut codes = Vec::with_capacity(dims);
        let (scale, error) = quantise(vector, &mut codes);
        match self.rows.get(key) {
            Some(&row) => {
                let range = row * dims..(row + 1) * dims;
                if let Some(slot) = self.vectors.get_mut(range.clone()) {
                    slot.copy_from_slice(vector);
                }
                if let Some(slot) = self.codes.get_mut(range) {
                    slot.copy_from_slice(&codes);
                }
                if let Some(slot) = self.scales.get_mut(row) {
                    *slot = scale;
                }
                if let Some(slot) = self.errors.get_mut(row) {
                    *slot = error;
                }
                if let Some(slot) = self.metadata.get_mut(row) {
                    *slot = metadata;
                }
            }
            None => {
                self.rows.insert(key.to_owned(), self.keys.len());
                self.keys.push(key.to_owned());
                self.vectors.extend_from_slice(vector);
                self.codes.extend_from_slice(&codes);
                self.scales.push(scale);
                self.errors.push(error);
                self.metadata.push(metadata);
            }
        }
    }

    /// Removes a row by moving the last row into its place.
    fn remove(&mut self, key: &str) {
        let Some(row) = self.rows.remove(key) else {
            return;
        };
        let dims = self.head.dimensions;
        let last = self.keys.len() - 1;
        if row != last {
            let (from, to) = (last * dims..(last + 1) * dims, row * dims);
            self.vectors.copy_within(from.clone(), to);
            self.codes.copy_within(from, to);
            self.keys.swap(row, last);
            self.scales.swap(row, last);
            self.errors.swap(row, last);
            self.metadata.swap(row, last);
            if let Some(moved) = self.keys.get(row) {
                self.rows.insert(moved.clone(), row);
            }
        }
        self.keys.truncate(last);
        self.scales.truncate(last);
        self.errors.truncate(last);
        self.metadata.truncate(last);
        self.vectors.truncate(last * dims);
        self.codes.truncate(last * dims);
    }

    /// The best hits (without their texts, which stay on disk) and the namespace's id.
    fn ranked_hits(
        &self,
        query: &[f32],
        top_k: usize,
        filter: Option<&MetadataFilter>,
    ) -> (i64, Vec<VectorHit>) {
        let hits = self
            .search(query, top_k, filter)
            .iter()
            .filter_map(|scored| {
                Some(VectorHit {
                    key: self.keys.get(scored.row)?.clone(),
                    score: scored.score,
                    text: String::new(),
                    metadata: self.metadata.get(scored.row)?.clone(),
                })
            })
            .collect();
        (self.head.id, hits)
    }

    /// The best `top_k` rows for a unit-length query, best first; rows the filter rejects are
    /// not scored. A large namespace is scanned in parts on scoped threads, their bests then
    /// merged.
    fn search(&self, query: &[f32], top_k: usize, filter: Option<&MetadataFilter>) -> Vec<Scored> {
        if top_k == 0 || self.keys.is_empty() {
            return Vec::new();
        }
        let query_codes = QueryCodes::new(query);
        let parts = if self.vectors.len() < PARALLEL_SCAN_VALUES {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_SCAN_THREADS))
        };
        let rows_per_part = self.keys.len().div_ceil(parts);
        let scan = |rows| self.scan(rows, query, &query_codes, top_k, filter);
        let mut best = if parts == 1 {
            scan(0..self.keys.len())
        } else {
            std::thread::scope(|scope| {
                let scans: Vec<_> = (0..parts)
                    .map(|part| {
                        let start = part * rows_per_part;
                        let rows = start..(start + rows_per_part).min(self.keys.len());
                        scope.spawn(move || scan(rows))
                    })
                    .collect();
                scans
                    .into_iter()
                    .filter_map(|scan| scan.join().ok())
                    .flatten()
                    .collect()
            })
        };
        best.sort_unstable_by(|a, b| b.cmp(a));
        best.truncate(top_k);
        best
    }

    /// The exact best `top_k` of some rows, in no order. First pass over the codes: each row's
    /// score lies within `estimate ± bound`; the `top_k` best lower bounds make a threshold no
    /// row of the top `k` scores under, so only rows whose upper bound reaches the threshold
    /// (as it stood when they were seen; it only rises) are candidates. Second pass: the
    /// candidates still above the final threshold are scored exactly.
    fn scan(
        &self,
        rows: std::ops::Range<usize>,
        query: &[f32],
        query_codes: &QueryCodes,
        top_k: usize,
        filter: Option<&MetadataFilter>,
    ) -> Vec<Scored> {
        let dims = self.head.dimensions.max(1);
        let (Some(codes), Some(scales), Some(errors), Some(metadata)) = (
            self.codes.get(rows.start * dims..rows.end * dims),
            self.scales.get(rows.clone()),
            self.errors.get(rows.clone()),
            self.metadata.get(rows.clone()),
        ) else {
            return Vec::new();
        };
        // The k best lower bounds, the worst of them at the root.
        let mut lower: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(top_k + 1);
        let mut candidates: Vec<(usize, f32)> = Vec::new();
        let scanned = codes
            .chunks_exact(dims)
            .zip(scales)
            .zip(errors)
            .zip(metadata)
            .zip(rows);
        for ((((row_codes, scale), error), metadata), row) in scanned {
            if filter.is_some_and(|filter| !filter.matches(metadata)) {
                continue;
            }
            let estimate = (dot_codes(row_codes, &query_codes.codes) as f64
                * f64::from(*scale)
                * f64::from(query_codes.scale)) as f32;
            // |v.q - e| <= |v - s.c| |q| + |s.c| |q - t.d|, with |q| = 1 and |s.c| <= 1 + error.
            let bound = error + (1.0 + error) * query_codes.error + ROUNDING_SLACK;
            let threshold = match lower.peek() {
                Some(worst) if lower.len() == top_k => worst.0.score,
                _ => f32::NEG_INFINITY,
            };
            if estimate + bound < threshold {
                continue;
            }
            candidates.push((row, estimate + bound));
            let low = Scored {
                score: estimate - bound,
                row,
            };
            if lower.len() < top_k {
                lower.push(Reverse(low));
            } else if let Some(mut worst) = lower.peek_mut()
                && low > worst.0
            {
                *worst = Reverse(low);
            }
        }
        let threshold = match lower.peek() {
            Some(worst) if lower.len() == top_k => worst.0.score,
            _ => f32::NEG_INFINITY,
        };
        let mut best: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(top_k + 1);
        for (row, upper) in candidates {
            if upper < threshold {
                continue;
            }
            let Some(vector) = self.vectors.get(row * dims..(row + 1) * dims) else {
                continue;
            };
            let scored = Scored {
                score: dot(query, vector),
                row,
            };
            if best.len() < top_k {
                best.push(Reverse(scored));
            } else if let Some(mut worst) = best.peek_mut()
                && scored > worst.0
            {
                *worst = Reverse(scored);
            }
        }
        best.into_iter().map(|Reverse(scored)| scored).collect()
    }
}

fn backend(what: &str) -> impl FnOnce(StoreError) -> StoreError + '_ {
    move |error| match error {
        StoreError::Backend(message) => StoreError::Backend(format!("{what}: {message}")),
        other => other,
    }
}

fn poisoned() -> StoreError {
    StoreError::Backend("vector index lock poisoned".into())
}

fn to_usize(value: i64) -> usize {
    usize::try_from(value).unwrap_or(0)
}

fn to_i64(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A write transaction holding the database's write lock from the start, so it cannot fail
/// half-way because another connection wrote in between.
fn write_transaction(conn: &Connection) -> rusqlite::Result<Transaction<'_>> {
    Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
}

fn read_head(conn: &Connection, namespace: &Namespace) -> rusqlite::Result<Option<Head>> {
    conn.prepare_cached(
        "SELECT id, dimensions, version FROM vector_namespaces
         WHERE tenant = ?1 AND collection = ?2",
    )?
    .query_row(params![namespace.tenant, namespace.collection], |row| {
        Ok(Head {
            id: row.get(0)?,
            dimensions: to_usize(row.get(1)?),
            version: row.get(2)?,
        })
    })
    .optional()
}

fn encode_vector(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Appends a stored vector's values; false if the blob is not `dimensions` values long.
fn decode_vector(blob: &[u8], dimensions: usize, into: &mut Vec<f32>) -> bool {
    if blob.len() != dimensions * 4 {
        return false;
    }
    into.extend(
        blob.chunks_exact(4)
            .filter_map(|bytes| <[u8; 4]>::try_from(bytes).ok())
            .map(f32::from_le_bytes),
    );
    true
}

fn corrupt(key: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(0, format!("vector `{key}`"), rusqlite::types::Type::Blob)
}

impl Inner {
    fn slot(&self, namespace: &Namespace) -> Result<Slot, StoreError> {
        let mut namespaces = self.namespaces.lock().map_err(|_| poisoned())?;
        Ok(Arc::clone(namespaces.entry(namespace.clone()).or_default()))
    }

    fn head(&self, namespace: &Namespace) -> Result<Option<Head>, StoreError> {
        self.store
            .with_conn(|conn| read_head(conn, namespace))
            .map_err(backend("reading a vector namespace"))
    }

    /// Reads a namespace's vectors page by page; retried when a write by another process lands
    /// between the pages.
    fn load(&self, namespace: &Namespace) -> Result<Option<Loaded>, StoreError> {
        for _ in 0..LOAD_ATTEMPTS {
            let Some(head) = self.head(namespace)? else {
                return Ok(None);
            };
            let mut loaded = Loaded::empty(head);
            let mut after = String::new();
            let mut vector = Vec::with_capacity(head.dimensions);
            loop {
                let page = self
                    .store
                    .with_conn(|conn| {
                        let mut stmt = conn.prepare_cached(
                            "SELECT key, vector, metadata FROM vectors
                             WHERE ns = ?1 AND key > ?2 ORDER BY key LIMIT ?3",
                        )?;
                        let mut rows = stmt.query(params![head.id, after, LOAD_PAGE_ROWS])?;
                        let mut count = 0;
                        while let Some(row) = rows.next()? {
                            let key: String = row.get(0)?;
                            let blob: Vec<u8> = row.get(1)?;
                            let metadata: String = row.get(2)?;
                            vector.clear();
                            if !decode_vector(&blob, head.dimensions, &mut vector) {
                                return Err(corrupt(&key));
                            }
                            let metadata = serde_json::from_str(&metadata).unwrap_or_default();
                            loaded.upsert(&key, &vector, metadata);
                            count += 1;
                        }
                        Ok(count)
                    })
                    .map_err(backend("loading vectors"))?;
                match loaded.keys.last() {
                    Some(last) if page == LOAD_PAGE_ROWS => after.clone_from(last),
                    _ => break,
                }
            }
            if self.head(namespace)? == Some(head) {
                return Ok(Some(loaded));
            }
        }
        Err(StoreError::Backend(
            "loading vectors: the collection kept changing while it was read".into(),
        ))
    }

    fn put(&self, namespace: &Namespace, records: Vec<VectorRecord>) -> Result<(), StoreError> {
        let Some(dimensions) = records.first().map(|r| r.vector.len()) else {
            return Ok(());
        };
        let records = prepared(records, None)?;
        let slot = self.slot(namespace)?;
        let mut loaded = slot.write().map_err(|_| poisoned())?;
        let written = self
            .store
            .with_conn(|conn| {
                let tx = write_transaction(conn)?;
                let before = read_head(&tx, namespace)?;
                let head = match before {
                    Some(head) if head.dimensions != dimensions => {
                        return Ok(Err(dimension_mismatch(head.dimensions, dimensions)));
                    }
                    Some(head) => Head {
                        version: head.version + 1,
                        ..head
                    },
                    None => {
                        tx.prepare_cached(
                            "INSERT INTO vector_namespaces (tenant, collection, dimensions, version)
                             VALUES (?1, ?2, ?3, 1)",
                        )?
                        .execute(params![
                            namespace.tenant,
                            namespace.collection,
                            to_i64(dimensions)
                        ])?;
                        Head {
                            id: tx.last_insert_rowid(),
                            dimensions,
                            version: 1,
                        }
                    }
                };
                tx.prepare_cached("UPDATE vector_namespaces SET version = ?2 WHERE id = ?1")?
                    .execute(params![head.id, head.version])?;
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT OR REPLACE INTO vectors (ns, key, vector, text, metadata)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?;
                    for record in &records {
                        let metadata = Value::Object(record.metadata.clone()).to_string();
                        insert.execute(params![
                            head.id,
                            record.key,
                            encode_vector(&record.vector),
                            record.text,
                            metadata
                        ])?;
                    }
                }
                tx.commit()?;
                Ok(Ok((before, head)))
            })
            .map_err(backend("writing vectors"))??;
        let (before, head) = written;
        match loaded.as_mut() {
            Some(copy) if Some(copy.head) == before => {
                for record in &records {
                    copy.upsert(&record.key, &record.vector, record.metadata.clone());
                }
                copy.head = head;
            }
            _ => *loaded = None,
        }
        Ok(())
    }

    fn delete(&self, namespace: &Namespace, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let slot = self.slot(namespace)?;
        let mut loaded = slot.write().map_err(|_| poisoned())?;
        let written = self
            .store
            .with_conn(|conn| {
                let tx = write_transaction(conn)?;
                let Some(before) = read_head(&tx, namespace)? else {
                    return Ok(None);
                };
                {
                    let mut delete =
                        tx.prepare_cached("DELETE FROM vectors WHERE ns = ?1 AND key = ?2")?;
                    for key in keys {
                        delete.execute(params![before.id, key])?;
                    }
                }
                let remaining: bool = tx
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM vectors WHERE ns = ?1)")?
                    .query_row(params![before.id], |row| row.get(0))?;
                // An emptied namespace is forgotten, dimension included: a collection rebuilt
                // with another embedding model starts afresh.
                let after = if remaining {
                    let head = Head {
                        version: before.version + 1,
                        ..before
                    };
                    tx.prepare_cached("UPDATE vector_namespaces SET version = ?2 WHERE id = ?1")?
                        .execute(params![head.id, head.version])?;
                    Some(head)
                } else {
                    tx.prepare_cached("DELETE FROM vector_namespaces WHERE id = ?1")?
                        .execute(params![before.id])?;
                    None
                };
                tx.commit()?;
                Ok(Some((before, after)))
            })
            .map_err(backend("deleting vectors"))?;
        match (loaded.as_mut(), written) {
            (Some(copy), Some((before, Some(after)))) if copy.head == before => {
                for key in keys {
                    copy.remove(key);
                }
                copy.head = after;
            }
            (_, None) => {}
            _ => *loaded = None,
        }
        Ok(())
    }

    fn query(
        &self,
        namespace: &Namespace,
        query: &[f32],
        top_k: usize,
        filter: Option<&MetadataFilter>,
    ) -> Result<Vec<VectorHit>, StoreError> {
        let Some(head) = self.head(namespace)? else {
            return Ok(Vec::new());
        };
        if head.dimensions != query.len() {
            return Err(dimension_mismatch(head.dimensions, query.len()));
        }
        let slot = self.slot(namespace)?;
        // A copy at the version just read, or newer (versions of one namespace only grow).
        let current = |copy: &Option<Loaded>| {
            copy.as_ref()
                .is_some_and(|c| c.head.id == head.id && c.head.version >= head.version)
        };
        let found = {
            let copy = slot.read().map_err(|_| poisoned())?;
            current(&copy).then(|| copy.as_ref().map(|c| c.ranked_hits(query, top_k, filter)))
        };
        let found = match found {
            Some(found) => found,
            // Loaded (or reloaded) under the exclusive lock and searched before letting go, so
            // no write can come between.
            None => {
                let mut copy = slot.write().map_err(|_| poisoned())?;
                if !current(&copy) {
                    *copy = self.load(namespace)?;
                }
                copy.as_ref().map(|c| c.ranked_hits(query, top_k, filter))
            }
        };
        let Some((id, mut hits)) = found else {
            return Ok(Vec::new());
        };
        let texts = self
            .store
            .with_conn(|conn| {
                let mut stmt =
                    conn.prepare_cached("SELECT text FROM vectors WHERE ns = ?1 AND key = ?2")?;
                hits.iter()
                    .map(|hit| {
                        stmt.query_row(params![id, hit.key], |row| row.get::<_, String>(0))
                            .optional()
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(backend("reading vector texts"))?;
        // A hit deleted by another process since the copy was loaded is left out.
        let mut texts = texts.into_iter();
        hits.retain_mut(|hit| match texts.next().flatten() {
            Some(text) => {
                hit.text = text;
                true
            }
            None => false,
        });
        Ok(hits)
    }
}

impl EmbeddedVectors {
    pub fn new(store: Arc<EmbeddedStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                namespaces: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Runs store work on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("vector store task failed: {e}")))?
    }
}

#[async_trait]
impl VectorStore for EmbeddedVectors {
    fn fixed_dimensions(&self) -> Option<u32> {
        None
    }

    async fn put(
        &self,
        namespace: &Namespace,
        records: Vec<VectorRecord>,
    ) -> Result<(), StoreError> {
        let namespace = namespace.clone();
        self.blocking(move |inner| inner.put(&namespace, records))
            .await
    }

    async fn delete(&self, namespace: &Namespace, keys: &[String]) -> Result<(), StoreError> {
        let (namespace, keys) = (namespace.clone(), keys.to_vec());
        self.blocking(move |inner| inner.delete(&namespace, &keys))
            .await
    }

    async fn query(
        &self,
        namespace: &Namespace,
        vector: &[f32],
        top_k: usize,
        filter: Option<&MetadataFilter>,
    ) -> Result<Vec<VectorHit>, StoreError> {
        let query = query_vector(vector, top_k, None)?;
        let (namespace, filter) = (namespace.clone(), filter.cloned());
        self.blocking(move |inner| inner.query(&namespace, &query, top_k, filter.as_ref()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::embedded::test_dir;
    use crate::vectors::normalised;
    use serde_json::json;

    fn ns(tenant: &str, collection: &str) -> Namespace {
        Namespace {
            tenant: tenant.into(),
            collection: collection.into(),
        }
    }

    fn record(key: &str, vector: &[f32], metadata: Value) -> VectorRecord {
        VectorRecord {
            key: key.into(),
            vector: vector.to_vec(),
            text: format!("text of {key}"),
            metadata: metadata.as_object().unwrap().clone(),
        }
    }

    fn open(name: &str) -> (std::path::PathBuf, EmbeddedVectors) {
        let dir = test_dir(name);
        let store = EmbeddedStore::open(&dir).unwrap();
        (dir, EmbeddedVectors::new(store))
    }

    fn keys(hits: &[VectorHit]) -> Vec<&str> {
        hits.iter().map(|h| h.key.as_str()).collect()
    }

    #[tokio::test]
    async fn queries_rank_by_cosine_similarity_and_return_text_and_metadata() {
        let (_dir, store) = open("vectors-rank");
        let docs = ns("t1", "docs");
        store
            .put(
                &docs,
                vec![
                    record("east", &[1.0, 0.0], json!({"n": 1})),
                    record("north", &[0.0, 5.0], json!({"n": 2})),
                    record("north-east", &[3.0, 3.0], json!({"n": 3})),
                ],
            )
            .await
            .unwrap();
        let hits = store.query(&docs, &[2.0, 0.2], 2, None).await.unwrap();
        assert_eq!(keys(&hits), ["east", "north-east"]);
        let expected = 2.0 / (2.0f32 * 2.0 + 0.04).sqrt();
        assert!((hits[0].score - expected).abs() < 1e-6, "{}", hits[0].score);
        assert_eq!(hits[0].text, "text of east");
        assert_eq!(hits[0].metadata, *json!({"n": 1}).as_object().unwrap());

        // Upsert by key, then delete.
        store
            .put(&docs, vec![record("east", &[0.0, -1.0], json!({"n": 9}))])
            .await
            .unwrap();
        let hits = store.query(&docs, &[0.0, -1.0], 1, None).await.unwrap();
        assert_eq!(keys(&hits), ["east"]);
        assert!((hits[0].score - 1.0).abs() < 1e-6);
        assert_eq!(hits[0].metadata["n"], 9);
        store
            .delete(&docs, &["east".to_owned(), "missing".to_owned()])
            .await
            .unwrap();
        let hits = store.query(&docs, &[0.0, -1.0], 10, None).await.unwrap();
        assert_eq!(keys(&hits), ["north-east", "north"]);

        assert!(
            store
                .query(&docs, &[1.0, 0.0], 0, None)
                .await
                .unwrap()
                .is_empty()
        );
        let error = store
            .query(&docs, &[1.0, 0.0], 101, None)
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Invalid(ref m) if m.contains("at most 100")));
    }

    #[tokio::test]
    async fn the_filter_is_applied_before_the_best_k_are_chosen() {
        let (_dir, store) = open("vectors-filter");
        let docs = ns("t1", "docs");
        let records = (0..50)
            .map(|i| {
                let lang = if i % 10 == 0 { "fr" } else { "en" };
                record(
                    &format!("k{i:02}"),
                    &[1.0, i as f32 / 10.0],
                    json!({"lang": lang}),
                )
            })
            .collect();
        store.put(&docs, records).await.unwrap();
        let french = MetadataFilter::parse(&json!({"lang": "fr"})).unwrap();
        let hits = store
            .query(&docs, &[1.0, 0.0], 3, Some(&french))
            .await
            .unwrap();
        // The five French rows exist among fifty; the best three of them come back.
        assert_eq!(keys(&hits), ["k00", "k10", "k20"]);
        assert!(hits.iter().all(|h| h.metadata["lang"] == "fr"));
    }

    #[tokio::test]
    async fn namespaces_are_isolated() {
        let (_dir, store) = open("vectors-isolation");
        let (a, b) = (ns("tenant-a", "docs"), ns("tenant-b", "docs"));
        store
            .put(&a, vec![record("k", &[1.0, 0.0], json!({"owner": "a"}))])
            .await
            .unwrap();
        store
            .put(
                &b,
                vec![record("k", &[1.0, 0.0, 0.0], json!({"owner": "b"}))],
            )
            .await
            .unwrap();
        let hits = store.query(&a, &[1.0, 0.0], 10, None).await.unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].metadata["owner"], "a");
        store.delete(&b, &["k".to_owned()]).await.unwrap();
        assert_eq!(
            store.query(&a, &[1.0, 0.0], 10, None).await.unwrap().len(),
            1
        );
        assert!(
            store
                .query(&ns("tenant-a", "other"), &[1.0], 10, None)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_dimension_other_than_the_namespace_s_is_a_clear_error() {
        let (_dir, store) = open("vectors-dimensions");
        let docs = ns("t1", "docs");
        store
            .put(&docs, vec![record("a", &[1.0, 0.0, 0.0], json!({}))])
            .await
            .unwrap();
        let error = store
            .put(&docs, vec![record("b", &[1.0, 0.0], json!({}))])
            .await
            .unwrap_err();
        assert_eq!(
            error,
            StoreError::Invalid(
                "the collection's vectors have 3 dimensions; this vector has 2 (embed with the \
                 model the collection was built with)"
                    .into()
            )
        );
        let error = store.query(&docs, &[1.0, 0.0], 5, None).await.unwrap_err();
        assert!(matches!(error, StoreError::Invalid(ref m) if m.contains("have 3 dimensions")));
        // Emptied, the namespace takes a new dimension.
        store.delete(&docs, &["a".to_owned()]).await.unwrap();
        store
            .put(&docs, vec![record("b", &[1.0, 0.0], json!({}))])
            .await
            .unwrap();
        assert_eq!(
            keys(&store.query(&docs, &[1.0, 0.0], 5, None).await.unwrap()),
            ["b"]
        );
    }

    #[tokio::test]
    async fn vectors_survive_a_restart() {
        let (dir, store) = open("vectors-restart");
        let docs = ns("t1", "docs");
        store
            .put(
                &docs,
                vec![
                    record("a", &[1.0, 0.0], json!({"page": 1})),
                    record("b", &[0.0, 1.0], json!({"page": 2})),
                ],
            )
            .await
            .unwrap();
        drop(store);
        let reopened = EmbeddedVectors::new(EmbeddedStore::open(&dir).unwrap());
        let hits = reopened.query(&docs, &[0.1, 1.0], 2, None).await.unwrap();
        assert_eq!(keys(&hits), ["b", "a"]);
        assert_eq!(hits[0].text, "text of b");
        assert_eq!(hits[0].metadata["page"], 2);
    }

    #[tokio::test]
    async fn a_write_through_another_handle_is_seen_by_the_next_query() {
        let (dir, first) = open("vectors-stale");
        let docs = ns("t1", "docs");
        first
            .put(&docs, vec![record("a", &[1.0, 0.0], json!({}))])
            .await
            .unwrap();
        assert_eq!(
            first
                .query(&docs, &[1.0, 0.0], 5, None)
                .await
                .unwrap()
                .len(),
            1
        );
        // Another process's store over the same file.
        let second = EmbeddedVectors::new(EmbeddedStore::open(&dir).unwrap());
        second
            .put(&docs, vec![record("b", &[1.0, 0.1], json!({}))])
            .await
            .unwrap();
        second.delete(&docs, &["a".to_owned()]).await.unwrap();
        assert_eq!(
            keys(&first.query(&docs, &[1.0, 0.0], 5, None).await.unwrap()),
            ["b"]
        );
    }

    #[test]
    fn the_scan_of_codes_finds_the_exact_best_k() {
        // Enough values for the parallel scan; a dimension that is not a multiple of the lanes.
        let dims = 130;
        let mut loaded = Loaded::empty(Head {
            id: 1,
            dimensions: dims,
            version: 1,
        });
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let query = normalised(&(0..dims).map(|_| next()).collect::<Vec<_>>(), "q").unwrap();
        // Random rows, and a cluster close around the query whose scores differ by less than
        // the codes' error: their order comes from the exact rescoring alone.
        let mut all: Vec<Vec<f32>> = (0..2000)
            .map(|i| {
                let noise = if i % 40 == 0 { 0.05 } else { 1.0 };
                let v: Vec<f32> = query
                    .iter()
                    .map(|q| q * (1.0 - noise) + noise * next())
                    .collect();
                normalised(&v, "v").unwrap()
            })
            .collect();
        for (i, v) in all.iter().enumerate() {
            loaded.upsert(&format!("k{i}"), v, Map::new());
        }
        // Rows replaced and removed keep the copy consistent.
        for i in (0..2000).step_by(3) {
            all[i] = normalised(&(0..dims).map(|_| next()).collect::<Vec<_>>(), "v").unwrap();
            loaded.upsert(&format!("k{i}"), &all[i], Map::new());
        }
        for i in (0..2000).step_by(7) {
            loaded.remove(&format!("k{i}"));
        }
        let mut expected: Vec<(String, f32)> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 7 != 0)
            .map(|(i, v)| (format!("k{i}"), dot(v, &query)))
            .collect();
        expected.sort_by(|a, b| b.1.total_cmp(&a.1));
        let found = loaded.search(&query, 25, None);
        assert_eq!(found.len(), 25);
        for (scored, (key, score)) in found.iter().zip(&expected) {
            assert_eq!(&loaded.keys[scored.row], key);
            assert!((scored.score - score).abs() < 1e-5);
        }
    }
}
