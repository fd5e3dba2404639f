//! `gateway-local ingest DIR --collection C`: ingests the `.txt` and `.md` files under a
//! directory into a collection of a running gateway, local or on AWS, as an HTTP client of its
//! collections API. Each file's id is its path under DIR; files go in batches of a few
//! documents, so a request stays far below the body caps of gateway-local and API Gateway.
//! Unchanged files cost nothing (the gateway compares content hashes), and chunks seen before
//! are embedded from the embedding cache: the progress bar and the summary count both.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use gateway::ingest::api::{MAX_DOCUMENT_BYTES, MAX_DOCUMENTS_PER_CALL, validate_document_id};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::Failure;
use super::batch_cli::{ApiFailure, Client, Connection, at};

/// Bytes of document text per request: well under gateway-local's 4 MiB body cap and API
/// Gateway's payload limit, with room for JSON escaping.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Files walked at most (a bound on what is held in memory as paths).
const MAX_FILES: usize = 100_000;
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long a queued batch may take before the CLI stops waiting for it.
const JOB_WAIT: Duration = Duration::from_secs(1800);

#[derive(Args)]
pub struct IngestArgs {
    /// The directory whose .txt, .md and .markdown files are ingested (recursively)
    dir: PathBuf,
    /// The collection to ingest into
    #[arg(long)]
    collection: String,
    /// Create the collection first if it does not exist
    #[arg(long)]
    create: bool,
    /// The embedding model of a collection made by --create
    #[arg(long, default_value = "mock-embed", requires = "create")]
    model: String,
    /// Documents per request
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=MAX_DOCUMENTS_PER_CALL as u64))]
    batch_size: u64,
    #[command(flatten)]
    connection: Connection,
}

/// Totals over every batch sent.
#[derive(Default)]
struct Totals {
    files: u64,
    created: u64,
    replaced: u64,
    unchanged: u64,
    chunks: u64,
    unchanged_chunks: u64,
    embedding_calls: u64,
    cache_hits: u64,
    skipped: u64,
}

pub async fn run(args: IngestArgs) -> Result<(), Failure> {
    let client = Client::new(args.connection)?;
    let collection = args.collection;
    if args.create {
        let created = client
            .json(
                Method::POST,
                "collections",
                Some(json!({"name": collection, "embedding_model": args.model})),
            )
            .await;
        match created {
            Ok(_) => eprintln!("created collection {collection}"),
            Err(error)
                if error
                    .downcast_ref::<ApiFailure>()
                    .is_some_and(|f| f.status == StatusCode::CONFLICT) => {}
            Err(error) => return Err(error),
        }
    }
    let (files, mut totals) = walk(&args.dir)?;
    let bar = ProgressBar::with_draw_target(Some(files.len() as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} files {msg}")
            .map_err(|e| format!("progress bar template: {e}"))?
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut batch: Vec<Value> = Vec::new();
    let mut batch_bytes = 0;
    let path = format!("collections/{collection}/documents");
    for (id, file) in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) if !text.trim().is_empty() => text,
            Ok(_) => {
                bar.println(format!("skipped {id}: empty"));
                totals.skipped += 1;
                bar.inc(1);
                continue;
            }
            Err(error) => {
                bar.println(format!("skipped {id}: {error}"));
                totals.skipped += 1;
                bar.inc(1);
                continue;
            }
        };
        if batch.len() as u64 >= args.batch_size
            || (!batch.is_empty() && batch_bytes + text.len() > MAX_BATCH_BYTES)
        {
            send(
                &client,
                &path,
                std::mem::take(&mut batch),
                &mut totals,
                &bar,
            )
            .await?;
            batch_bytes = 0;
        }
        batch_bytes += text.len();
        let field = if is_markdown(file) {
            "markdown"
        } else {
            "text"
        };
        batch.push(json!({"id": id, field: text}));
    }
    if !batch.is_empty() {
        send(&client, &path, batch, &mut totals, &bar).await?;
    }
    bar.finish_and_clear();
    println!(
        "ingested {} files into {collection} in {:.1} s: {} created, {} replaced, {} unchanged, \
         {} skipped; {} chunks; {} embedding calls; saved by the cache: {} chunk embeddings, \
         {} chunks of unchanged files",
        totals.files,
        started.elapsed().as_secs_f64(),
        totals.created,
        totals.replaced,
        totals.unchanged,
        totals.skipped,
        totals.chunks,
        totals.embedding_calls,
        totals.cache_hits,
        totals.unchanged_chunks,
    );
    Ok(())
}

fn is_markdown(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("md") || e.eq_ignore_ascii_case("markdown"))
}

fn is_ingested(path: &Path) -> bool {
    is_markdown(path)
        || path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
}

/// The files to ingest (id: the path under `dir` with `/` separators), sorted by id; files whose
/// path cannot be an id, or which are too large, are counted as skipped with a message.
fn walk(dir: &Path) -> Result<(Vec<(String, PathBuf)>, Totals), Failure> {
    let mut totals = Totals::default();
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .map_err(|e| format!("cannot read directory {}: {e}", current.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("reading {}: {e}", current.display()))?;
            // Symbolic links are not followed: the walk stays inside DIR.
            let kind = entry
                .file_type()
                .map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            if !kind.is_file() || !is_ingested(&path) {
                continue;
            }
            let Ok(relative) = path.strip_prefix(dir) else {
                continue;
            };
            let id = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if validate_document_id(&id).is_err() {
                eprintln!("skipped {id}: its path is not a document id (letters, digits, . _ - /)");
                totals.skipped += 1;
                continue;
            }
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            if bytes > MAX_DOCUMENT_BYTES as u64 {
                eprintln!(
                    "skipped {id}: {bytes} bytes, over the {MAX_DOCUMENT_BYTES} a document may have"
                );
                totals.skipped += 1;
                continue;
            }
            if files.len() >= MAX_FILES {
                return Err(format!("more than {MAX_FILES} files under {}", dir.display()).into());
            }
            files.push((id, path));
        }
    }
    files.sort();
    Ok((files, totals))
}

/// Sends one batch; a queued one (202) is followed until its job ends.
async fn send(
    client: &Client,
    path: &str,
    documents: Vec<Value>,
    totals: &mut Totals,
    bar: &ProgressBar,
) -> Result<(), Failure> {
    let count = documents.len() as u64;
    let answer = client
        .json(Method::POST, path, Some(json!({"documents": documents})))
        .await?;
    if at(&answer, "/object").as_str() == Some("collection.ingest_job") {
        let id = at(&answer, "/id").as_str().unwrap_or_default().to_owned();
        let collection = at(&answer, "/collection").as_str().unwrap_or_default();
        let job_path = format!("collections/{collection}/jobs/{id}");
        let waited = Instant::now();
        loop {
            let job = client.json(Method::GET, &job_path, None).await?;
            match at(&job, "/status").as_str() {
                Some("completed") => {
                    let counts = at(&job, "/counts");
                    add(totals, counts, 0);
                    break;
                }
                Some("failed") => {
                    return Err(format!(
                        "ingest job {id} failed: {}",
                        at(&job, "/error").as_str().unwrap_or("no reason given")
                    )
                    .into());
                }
                _ if waited.elapsed() > JOB_WAIT => {
                    return Err(format!("ingest job {id} is still running; gave up waiting").into());
                }
                _ => tokio::time::sleep(POLL_EVERY).await,
            }
        }
    } else {
        let unchanged_chunks = at(&answer, "/documents")
            .as_array()
            .map(|documents| {
                documents
                    .iter()
                    .filter(|d| at(d, "/status").as_str() == Some("unchanged"))
                    .map(|d| at(d, "/chunks").as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        add(totals, at(&answer, "/totals"), unchanged_chunks);
    }
    totals.files += count;
    bar.inc(count);
    bar.set_message(format!(
        "| {} chunks | {} embedding calls | {} saved by the cache",
        totals.chunks,
        totals.embedding_calls,
        totals.cache_hits + totals.unchanged_chunks
    ));
    Ok(())
}

fn add(totals: &mut Totals, counts: &Value, unchanged_chunks: u64) {
    let number = |name: &str| at(counts, &format!("/{name}")).as_u64().unwrap_or(0);
    totals.created += number("created");
    totals.replaced += number("replaced");
    totals.unchanged += number("unchanged");
    totals.chunks += number("chunks");
    totals.embedding_calls += number("embedding_calls");
    totals.cache_hits += number("cache_hits");
    totals.unchanged_chunks += unchanged_chunks;
}
