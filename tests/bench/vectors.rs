//! The embedded vector store's query time: N vectors of D dimensions in one collection, exact
//! top-k queries with and without a metadata filter, p50 and p95 over Q queries each.
//!
//!   cargo run --release -p gateway-tests --example vector-bench -- [--vectors N]
//!       [--dimensions D] [--queries Q] [--top-k K] [--json PATH]
//!
//! Goal: a query over 100,000 vectors of 384 dimensions under 20 ms at p50. The filter keeps
//! one vector in ten. Also reported: the insert rate and the time the first query takes to load
//! the collection from the SQLite file into memory. Uses a throwaway data directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gateway::storage::embedded::EmbeddedStore;
use gateway::vectors::embedded::EmbeddedVectors;
use gateway::vectors::{MetadataFilter, Namespace, VectorRecord, VectorStore};
use serde_json::{Value, json};

struct Args {
    vectors: usize,
    dimensions: usize,
    queries: usize,
    top_k: usize,
    json: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        vectors: 100_000,
        dimensions: 384,
        queries: 200,
        top_k: 10,
        json: None,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--vectors" => args.vectors = number()?,
            "--dimensions" => args.dimensions = number()?,
            "--queries" => args.queries = number()?.max(1),
            "--top-k" => args.top_k = number()?,
            "--json" => args.json = Some(PathBuf::from(&value)),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok(args)
}

/// Deterministic pseudo-random values in [-0.5, 0.5): the same vectors every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }

    fn vector(&mut self, dimensions: usize) -> Vec<f32> {
        (0..dimensions).map(|_| self.next()).collect()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn timed_queries(
    store: &EmbeddedVectors,
    namespace: &Namespace,
    queries: &[Vec<f32>],
    top_k: usize,
    filter: Option<&MetadataFilter>,
) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(queries.len());
    for query in queries {
        let start = Instant::now();
        let hits = store.query(namespace, query, top_k, filter).await.unwrap();
        times.push(start.elapsed());
        assert_eq!(hits.len(), top_k);
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.95))
}

#[tokio::main]
async fn main() {
    let args = match args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("vector-bench: {error}");
            std::process::exit(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("gateway-vector-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let namespace = Namespace {
        tenant: "bench".into(),
        collection: "docs".into(),
    };
    let mut random = Lcg(42);

    let store = EmbeddedVectors::new(EmbeddedStore::open(&dir).unwrap());
    let start = Instant::now();
    let mut next = 0;
    while next < args.vectors {
        let batch = (next..(next + 1000).min(args.vectors))
            .map(|i| VectorRecord {
                key: format!("doc-{i}"),
                vector: random.vector(args.dimensions),
                text: format!("chunk {i}"),
                metadata: json!({"lang": if i % 10 == 0 { "fr" } else { "en" }, "page": i})
                    .as_object()
                    .unwrap()
                    .clone(),
            })
            .collect::<Vec<_>>();
        next += batch.len();
        store.put(&namespace, batch).await.unwrap();
    }
    let insert = start.elapsed();
    drop(store);

    // A fresh process's view: the first query loads the collection from the file.
    let store = EmbeddedVectors::new(EmbeddedStore::open(&dir).unwrap());
    let queries: Vec<Vec<f32>> = (0..args.queries)
        .map(|_| random.vector(args.dimensions))
        .collect();
    let start = Instant::now();
    store
        .query(&namespace, &queries[0], args.top_k, None)
        .await
        .unwrap();
    let load = start.elapsed();
    let (p50, p95) = timed_queries(&store, &namespace, &queries, args.top_k, None).await;
    let french = MetadataFilter::parse(&json!({"lang": "fr"})).unwrap();
    let (filtered_p50, filtered_p95) =
        timed_queries(&store, &namespace, &queries, args.top_k, Some(&french)).await;
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "embedded vector store, {} vectors x {} dimensions, top {}, {} queries:\n  \
         query p50 {:.2} ms, p95 {:.2} ms\n  \
         query with a filter keeping 1 in 10: p50 {:.2} ms, p95 {:.2} ms\n  \
         first query (loads the collection from SQLite) {:.0} ms; inserts {:.0} vectors/s",
        args.vectors,
        args.dimensions,
        args.top_k,
        args.queries,
        ms(p50),
        ms(p95),
        ms(filtered_p50),
        ms(filtered_p95),
        ms(load),
        args.vectors as f64 / insert.as_secs_f64(),
    );
    if let Some(path) = args.json {
        let figures: Value = json!({
            "vectors": args.vectors, "dimensions": args.dimensions, "top_k": args.top_k,
            "queries": args.queries,
            "p50_ms": ms(p50), "p95_ms": ms(p95),
            "filtered_p50_ms": ms(filtered_p50), "filtered_p95_ms": ms(filtered_p95),
            "load_ms": ms(load), "inserts_per_s": args.vectors as f64 / insert.as_secs_f64(),
        });
        std::fs::write(&path, figures.to_string()).unwrap();
    }
}
