//! Collections and ingest for a key: create, list, read and delete collections and documents,
//! and ingest documents — chunk, embed through `embed_texts` (embedding cache, batching, the
//! router, spend billed to the key), write the vectors, then drop the chunks the document no
//! longer has, then record the document and raise the collection's version.
//!
//! The order of a replacement is what readers rely on: the new chunks are written before the
//! old ones are deleted (a query never finds the document empty), and the version is raised only
//! once the vector store holds the new state (a retrieval cached under the new version never
//! holds old chunks). An unchanged document (same content hash) costs no embedding call and no
//! write. Every step is idempotent, so a queued ingest delivered twice, or an upload event sent
//! again, leaves the same state.
//!
//! Ingests larger than the configured threshold (or asked `"async": true`) are stored under
//! `ingest-jobs/{job}` and queued; `process_job` (the local worker, the ingest Lambda) runs them.

use std::time::Duration;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::authorize_model;
use super::embeddings::embed_texts;
use crate::batch::new_id;
use crate::clock::now_secs;
use crate::config::ModelKind;
use crate::error::{ApiError, ErrorKind, StoreError};
use crate::ingest::api::{
    self, AddDocuments, CreateCollection, DOCUMENT_ID_FIELD, DocumentInput, collection_object,
    document_object, job_object,
};
use crate::ingest::backends::{IngestBackends, QueuedIngest};
use crate::ingest::chunking::{ChunkSettings, chunk_text};
use crate::ingest::store::{
    CollectionRecord, DocumentFormat, DocumentRecord, IngestCounts, IngestJob, JobStatus,
};
use crate::keys::KeyRecord;
use crate::queue::Received;
use crate::state::Gateway;
use crate::vectors::{Namespace, VectorRecord, VectorStore};

/// How long a synchronous ingest or query may take when the front sets no deadline.
pub const REQUEST_TIME: Duration = Duration::from_secs(120);
/// How long a queued ingest may take when its runner sets no deadline (the local worker).
pub const JOB_TIME: Duration = Duration::from_secs(900);
/// Document records read per page when a collection is deleted.
const DELETE_PAGE: usize = 500;
/// Receives of a queued ingest before a failure is recorded instead of retried.
pub const JOB_MAX_RECEIVES: u32 = 5;
/// The hex digits of the content hash in a chunk id.
const CHUNK_HASH_DIGITS: usize = 12;

pub fn not_configured() -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "Collections are not enabled on this gateway (no collection store configured).",
    )
}

fn no_vectors() -> ApiError {
    ApiError::unavailable("Collections need a vector store, and none is configured.")
}

pub fn collection_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("No collection named `{name}`."))
        .with_param("collection")
        .with_code("collection_not_found")
}

pub(crate) fn backends(gateway: &Gateway) -> Result<&IngestBackends, ApiError> {
    gateway.ingest.as_ref().ok_or_else(not_configured)
}

fn vectors(gateway: &Gateway) -> Result<&dyn VectorStore, ApiError> {
    gateway.vectors.as_deref().ok_or_else(no_vectors)
}

fn namespace(collection: &CollectionRecord) -> Namespace {
    Namespace {
        tenant: collection.tenant.clone(),
        collection: collection.name.clone(),
    }
}

/// The tenant's collection, or 404.
pub(crate) async fn collection(
    backends: &IngestBackends,
    tenant: &str,
    name: &str,
) -> Result<CollectionRecord, ApiError> {
    api::validate_name(name).map_err(|_| collection_not_found(name))?;
    backends
        .store
        .get_collection(tenant, name)
        .await?
        .ok_or_else(|| collection_not_found(name))
}

pub async fn create_collection(
    gateway: &Gateway,
    key: &KeyRecord,
    request: CreateCollection,
) -> Result<Value, ApiError> {
    let backends = backends(gateway)?;
    let vectors = vectors(gateway)?;
    api::validate_name(&request.name)?;
    let model = authorize_model(gateway, key, &request.embedding_model, ModelKind::Embedding)
        .map_err(|e| e.with_param("embedding_model"))?;
    let chunking = request.chunking.unwrap_or_default();
    chunking
        .validate()
        .map_err(|e| ApiError::bad_request(format!("`chunking`: {e}")).with_param("chunking"))?;
    let metadata = request.metadata.unwrap_or_default();
    api::validate_metadata(&metadata, "metadata")?;
    let dimensions = match (
        request.dimensions,
        vectors.collection_dimensions(&request.name),
    ) {
        (Some(asked), Some(fixed)) if asked != fixed => {
            return Err(ApiError::bad_request(format!(
                "`dimensions` is {asked}, but this gateway's vector index holds vectors of \
                 {fixed} dimensions."
            ))
            .with_param("dimensions"));
        }
        (Some(0), _) => {
            return Err(
                ApiError::bad_request("`dimensions` must be positive.").with_param("dimensions")
            );
        }
        (asked, fixed) => asked.or(fixed),
    };
    let _ = model;
    let record = CollectionRecord {
        tenant: key.tenant.clone(),
        name: request.name,
        embedding_model: request.embedding_model,
        dimensions,
        chunking,
        metadata,
        owner_key_id: key.id.clone(),
        created_at: now_secs(),
        version: 0,
        document_count: 0,
        chunk_count: 0,
    };
    backends
        .store
        .create_collection(&record)
        .await
        .map_err(|error| match error {
            StoreError::Conflict(_) => ApiError::new(
                ErrorKind::Conflict,
                format!("A collection named `{}` exists already.", record.name),
            )
            .with_param("name"),
            other => other.into(),
        })?;
    Ok(collection_object(&record))
}

pub async fn list_collections(gateway: &Gateway, key: &KeyRecord) -> Result<Value, ApiError> {
    let collections = backends(gateway)?
        .store
        .list_collections(&key.tenant)
        .await?;
    Ok(api::list(
        collections.iter().map(collection_object).collect(),
    ))
}

pub async fn get_collection(
    gateway: &Gateway,
    key: &KeyRecord,
    name: &str,
) -> Result<Value, ApiError> {
    let collection = collection(backends(gateway)?, &key.tenant, name).await?;
    Ok(collection_object(&collection))
}

/// Deletes a collection: its vectors, page by page with their document records, then the
/// collection itself. A delete cut short leaves a smaller collection; deleting again finishes.
pub async fn delete_collection(
    gateway: &Gateway,
    key: &KeyRecord,
    name: &str,
) -> Result<Value, ApiError> {
    let backends = backends(gateway)?;
    let vectors = vectors(gateway)?;
    let collection = collection(backends, &key.tenant, name).await?;
    let namespace = namespace(&collection);
    loop {
        let documents = backends
            .store
            .list_documents(&key.tenant, name, DELETE_PAGE)
            .await?;
        if documents.is_empty() {
            break;
        }
        let keys: Vec<String> = documents
            .iter()
            .flat_map(|d| d.chunk_ids.iter().cloned())
            .collect();
        vectors.delete(&namespace, &keys).await?;
        for document in &documents {
            backends
                .store
                .delete_document(&key.tenant, name, &document.id)
                .await?;
        }
    }
    backends.store.delete_collection(&key.tenant, name).await?;
    Ok(json!({"object": "collection.deleted", "id": name, "deleted": true}))
}

pub async fn get_document(
    gateway: &Gateway,
    key: &KeyRecord,
    name: &str,
    id: &str,
) -> Result<Value, ApiError> {
    let backends = backends(gateway)?;
    let collection = collection(backends, &key.tenant, name).await?;
    let document = backends
        .store
        .get_document(&key.tenant, &collection.name, id)
        .await?
        .ok_or_else(|| document_not_found(name, id))?;
    Ok(document_object(name, &document))
}

fn document_not_found(collection: &str, id: &str) -> ApiError {
    ApiError::not_found(format!("Collection `{collection}` has no document `{id}`."))
        .with_param("document_id")
}

/// Deletes a document's chunks, then its record (raising the collection's version).
pub async fn delete_document(
    gateway: &Gateway,
    key: &KeyRecord,
    name: &str,
    id: &str,
) -> Result<Value, ApiError> {
    let backends = backends(gateway)?;
    let vectors = vectors(gateway)?;
    let collection = collection(backends, &key.tenant, name).await?;
    let document = backends
        .store
        .get_document(&key.tenant, name, id)
        .await?
        .ok_or_else(|| document_not_found(name, id))?;
    vectors
        .delete(&namespace(&collection), &document.chunk_ids)
        .await?;
    backends
        .store
        .delete_document(&key.tenant, name, id)
        .await?;
    Ok(json!({"object": "collection.document.deleted", "id": id, "deleted": true}))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentStatus {
    Created,
    Replaced,
    Unchanged,
}

/// What ingesting one document did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentReport {
    pub id: String,
    pub status: DocumentStatus,
    pub chunks: u64,
    /// Calls made to the embedding provider for it.
    pub embedding_calls: u64,
    /// Chunks whose embedding came from the embedding cache.
    pub cache_hits: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestReport {
    pub collection: String,
    pub collection_version: u64,
    pub documents: Vec<DocumentReport>,
    pub totals: IngestCounts,
}

fn add(totals: &mut IngestCounts, report: &DocumentReport) {
    match report.status {
        DocumentStatus::Created => totals.created += 1,
        DocumentStatus::Replaced => totals.replaced += 1,
        DocumentStatus::Unchanged => totals.unchanged += 1,
    }
    totals.chunks += report.chunks;
    totals.embedding_calls += report.embedding_calls;
    totals.cache_hits += report.cache_hits;
}

/// The hash an unchanged document is recognised by: its text, format and metadata, and the
/// collection's chunking (other settings make other chunks).
fn content_hash(
    text: &str,
    format: DocumentFormat,
    metadata: &Map<String, Value>,
    chunking: &ChunkSettings,
) -> String {
    let mut hasher = Sha256::new();
    let format = match format {
        DocumentFormat::Text => "text",
        DocumentFormat::Markdown => "markdown",
    };
    for part in [
        format,
        &serde_json::to_string(metadata).unwrap_or_default(),
        &format!("{}/{}", chunking.max_tokens, chunking.overlap_tokens),
        text,
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// A chunk's vector key: the document, its content hash (so a changed document's chunks are new
/// keys, written before the old ones go) and its position.
fn chunk_id(document_id: &str, hash: &str, index: u32) -> String {
    let digits = hash.get(..CHUNK_HASH_DIGITS).unwrap_or(hash);
    format!("{document_id}#{digits}-{index}")
}

/// Ingests one document into `collection` for `key`.
pub async fn ingest_document(
    gateway: &Gateway,
    key: &KeyRecord,
    collection: &CollectionRecord,
    document: &DocumentInput,
    deadline: tokio::time::Instant,
) -> Result<(DocumentReport, Option<u64>), ApiError> {
    let backends = backends(gateway)?;
    let vectors = vectors(gateway)?;
    let (text, format) = document.content();
    let hash = content_hash(text, format, &document.metadata, &collection.chunking);
    let previous = backends
        .store
        .get_document(&collection.tenant, &collection.name, &document.id)
        .await?;
    if let Some(previous) = &previous
        && previous.content_sha256 == hash
    {
        let report = DocumentReport {
            id: document.id.clone(),
            status: DocumentStatus::Unchanged,
            chunks: previous.chunk_ids.len() as u64,
            embedding_calls: 0,
            cache_hits: 0,
        };
        return Ok((report, None));
    }
    let chunks = chunk_text(text, &collection.chunking);
    let texts: Vec<String> = chunks.iter().map(|chunk| chunk.text.clone()).collect();
    let embedded = embed_texts(
        gateway,
        key,
        &collection.embedding_model,
        &texts,
        collection.dimensions,
        deadline,
    )
    .await?;
    if embedded.vectors.len() != chunks.len() {
        return Err(ApiError::new(
            ErrorKind::BadGateway,
            format!(
                "The embedding model returned {} vectors for {} chunks.",
                embedded.vectors.len(),
                chunks.len()
            ),
        ));
    }
    let mut metadata = document.metadata.clone();
    metadata.insert(
        DOCUMENT_ID_FIELD.to_owned(),
        Value::String(document.id.clone()),
    );
    let records: Vec<VectorRecord> = chunks
        .into_iter()
        .zip(embedded.vectors)
        .map(|(chunk, vector)| VectorRecord {
            key: chunk_id(&document.id, &hash, chunk.index),
            vector,
            text: chunk.text,
            metadata: metadata.clone(),
        })
        .collect();
    let chunk_ids: Vec<String> = records.iter().map(|r| r.key.clone()).collect();
    let namespace = namespace(collection);
    vectors.put(&namespace, records).await?;
    if let Some(previous) = &previous {
        let gone: Vec<String> = previous
            .chunk_ids
            .iter()
            .filter(|id| !chunk_ids.contains(id))
            .cloned()
            .collect();
        if !gone.is_empty() {
            vectors.delete(&namespace, &gone).await?;
        }
    }
    let record = DocumentRecord {
        id: document.id.clone(),
        content_sha256: hash,
        chunk_ids,
        metadata: document.metadata.clone(),
        format,
        bytes: text.len() as u64,
        updated_at: now_secs(),
    };
    let version = backends
        .store
        .put_document(&collection.tenant, &collection.name, &record)
        .await?
        .ok_or_else(|| collection_not_found(&collection.name))?;
    let report = DocumentReport {
        id: document.id.clone(),
        status: if previous.is_some() {
            DocumentStatus::Replaced
        } else {
            DocumentStatus::Created
        },
        chunks: record.chunk_ids.len() as u64,
        embedding_calls: embedded.upstream_calls as u64,
        cache_hits: embedded.cache_hits as u64,
    };
    Ok((report, Some(version)))
}

/// Ingests documents one after the other (each idempotent, so a retry after a failure redoes
/// only what had not been done).
pub async fn ingest_documents(
    gateway: &Gateway,
    key: &KeyRecord,
    collection: &CollectionRecord,
    documents: &[DocumentInput],
    deadline: tokio::time::Instant,
) -> Result<IngestReport, ApiError> {
    let mut reports = Vec::with_capacity(documents.len());
    let mut totals = IngestCounts::default();
    let mut version = collection.version;
    for document in documents {
        let (report, written) = ingest_document(gateway, key, collection, document, deadline)
            .await
            .map_err(|error| {
                let message = format!("Document `{}`: {}", document.id, error.message);
                ApiError { message, ..error }
            })?;
        add(&mut totals, &report);
        if let Some(written) = written {
            version = version.max(written);
        }
        reports.push(report);
    }
    Ok(IngestReport {
        collection: collection.name.clone(),
        collection_version: version,
        documents: reports,
        totals,
    })
}

/// Estimated chunks of a set of documents (about 4 bytes a token).
fn estimated_chunks(documents: &[DocumentInput], chunking: &ChunkSettings) -> u64 {
    let chunk_bytes = u64::from(chunking.max_tokens.max(1)) * 4;
    documents
        .iter()
        .map(|d| (d.content().0.len() as u64).div_ceil(chunk_bytes))
        .sum()
}

/// `POST /v1/collections/{c}/documents`: ingests at once (200 with the report) or, when large
/// or asked, stores the documents and queues a job (202 with the job).
pub async fn add_documents(
    gateway: &Gateway,
    key: &KeyRecord,
    name: &str,
    request: AddDocuments,
    deadline: tokio::time::Instant,
) -> Result<(StatusCode, Value), ApiError> {
    let backends = backends(gateway)?;
    vectors(gateway)?;
    let collection = collection(backends, &key.tenant, name).await?;
    api::validate_documents(&request.documents)?;
    let bytes: u64 = request
        .documents
        .iter()
        .map(|d| d.content().0.len() as u64)
        .sum();
    let large = estimated_chunks(&request.documents, &collection.chunking)
        > backends.settings.queue_over_chunks
        || bytes > backends.settings.queue_over_bytes;
    if request.queued || large {
        let Some(queued) = &backends.queued else {
            return Err(ApiError::new(
                ErrorKind::PayloadTooLarge,
                "This ingest is too large for one request and this gateway has no ingest \
                 queue: send fewer or smaller documents per call.",
            )
            .with_param("documents"));
        };
        let job = enqueue(backends, queued, key, &collection, &request.documents).await?;
        return Ok((StatusCode::ACCEPTED, job_object(&job)));
    }
    let report = ingest_documents(gateway, key, &collection, &request.documents, deadline).await?;
    let mut body = serde_json::to_value(&report)
        .map_err(|e| ApiError::internal(format!("cannot encode the ingest report: {e}")))?;
    if let Value::Object(fields) = &mut body {
        fields.insert("object".to_owned(), json!("collection.ingest"));
    }
    Ok((StatusCode::OK, body))
}

/// The object key of a queued ingest's documents.
pub fn job_documents_key(job_id: &str) -> String {
    format!("ingest-jobs/{job_id}")
}

/// The queue message of an ingest job: its id and tenant (everything else is in the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub job_id: String,
    pub tenant: String,
}

async fn enqueue(
    backends: &IngestBackends,
    queued: &QueuedIngest,
    key: &KeyRecord,
    collection: &CollectionRecord,
    documents: &[DocumentInput],
) -> Result<IngestJob, ApiError> {
    let job = IngestJob {
        id: new_id("ingestjob_"),
        tenant: key.tenant.clone(),
        collection: collection.name.clone(),
        key_id: key.id.clone(),
        status: JobStatus::Queued,
        documents: documents.len() as u64,
        counts: IngestCounts::default(),
        error: None,
        created_at: now_secs(),
        completed_at: None,
    };
    let body = serde_json::to_vec(documents)
        .map_err(|e| ApiError::internal(format!("cannot encode the documents: {e}")))?;
    queued
        .bodies
        .put(&job_documents_key(&job.id), body.into())
        .await?;
    backends.store.put_job(&job).await?;
    let message = serde_json::to_string(&JobMessage {
        job_id: job.id.clone(),
        tenant: job.tenant.clone(),
    })
    .map_err(|e| ApiError::internal(format!("cannot encode the job message: {e}")))?;
    queued.queue.send(&[message], 0).await?;
    Ok(job)
}

pub async fn get_job(
    gateway: &Gateway,
    key: &KeyRecord,
    name: &str,
    id: &str,
) -> Result<Value, ApiError> {
    let backends = backends(gateway)?;
    collection(backends, &key.tenant, name).await?;
    let job = backends
        .store
        .get_job(&key.tenant, id)
        .await?
        .filter(|job| job.collection == name)
        .ok_or_else(|| ApiError::not_found(format!("No ingest job `{id}` in `{name}`.")))?;
    Ok(job_object(&job))
}

/// What became of a queue message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Done (or nothing to do): acknowledge the message.
    Done,
    /// Failed for now: leave the message for redelivery.
    Retry(String),
}

/// Runs one queued ingest (idempotent: a finished job is acknowledged, a redelivered one redoes
/// only what is not done). A failure is retried until the last receive, then recorded.
pub async fn process_job(
    gateway: &Gateway,
    message: &Received,
    deadline: tokio::time::Instant,
) -> JobOutcome {
    let Ok(backends) = backends(gateway) else {
        return JobOutcome::Retry("collections are not configured".into());
    };
    let Ok(parsed) = serde_json::from_str::<JobMessage>(&message.body) else {
        tracing::error!("an ingest queue message is not an ingest job; dropped");
        return JobOutcome::Done;
    };
    let job = match backends.store.get_job(&parsed.tenant, &parsed.job_id).await {
        Ok(Some(job)) => job,
        Ok(None) => {
            tracing::error!(
                job = parsed.job_id,
                "an ingest job message names no job; dropped"
            );
            return JobOutcome::Done;
        }
        Err(error) => return JobOutcome::Retry(error.to_string()),
    };
    if matches!(job.status, JobStatus::Completed | JobStatus::Failed) {
        return JobOutcome::Done;
    }
    let last_try = message.receive_count >= JOB_MAX_RECEIVES;
    match run_job(gateway, backends, &job, deadline).await {
        Ok(counts) => {
            finish(backends, job, JobStatus::Completed, counts, None).await;
            JobOutcome::Done
        }
        Err((error, permanent)) if permanent || last_try => {
            tracing::warn!(job = job.id, %error, "ingest job failed");
            finish(
                backends,
                job,
                JobStatus::Failed,
                IngestCounts::default(),
                Some(error),
            )
            .await;
            JobOutcome::Done
        }
        Err((error, _)) => JobOutcome::Retry(error),
    }
}

async fn finish(
    backends: &IngestBackends,
    mut job: IngestJob,
    status: JobStatus,
    counts: IngestCounts,
    error: Option<String>,
) {
    job.status = status;
    job.counts = counts;
    job.error = error;
    job.completed_at = Some(now_secs());
    if let Err(error) = backends.store.put_job(&job).await {
        tracing::error!(job = job.id, %error, "could not record the end of an ingest job");
        return;
    }
    if let Some(queued) = &backends.queued
        && let Err(error) = queued.bodies.delete(&job_documents_key(&job.id)).await
    {
        tracing::warn!(job = job.id, %error, "could not delete a finished job's documents");
    }
}

/// Runs a job; the error says whether retrying could help.
async fn run_job(
    gateway: &Gateway,
    backends: &IngestBackends,
    job: &IngestJob,
    deadline: tokio::time::Instant,
) -> Result<IngestCounts, (String, bool)> {
    let transient = |e: &dyn std::fmt::Display| (e.to_string(), false);
    let permanent = |e: String| (e, true);
    let queued = backends
        .queued
        .as_ref()
        .ok_or_else(|| permanent("no ingest queue is configured".into()))?;
    let key = gateway
        .auth
        .store()
        .get_by_id(&job.key_id)
        .await
        .map_err(|e| transient(&e))?
        .filter(|key| !key.disabled && !key.is_expired(now_secs()))
        .ok_or_else(|| permanent("the key that queued the job is revoked or expired".into()))?;
    let collection = backends
        .store
        .get_collection(&job.tenant, &job.collection)
        .await
        .map_err(|e| transient(&e))?
        .ok_or_else(|| permanent(format!("collection `{}` was deleted", job.collection)))?;
    let body = queued
        .bodies
        .get(&job_documents_key(&job.id))
        .await
        .map_err(|e| transient(&e))?
        .ok_or_else(|| permanent("the job's documents are gone".into()))?;
    let documents: Vec<DocumentInput> = serde_json::from_slice(&body)
        .map_err(|e| permanent(format!("the job's documents are unreadable: {e}")))?;
    let mut running = job.clone();
    running.status = JobStatus::InProgress;
    backends
        .store
        .put_job(&running)
        .await
        .map_err(|e| transient(&e))?;
    let report = ingest_documents(gateway, &key, &collection, &documents, deadline)
        .await
        .map_err(|error| {
            let retryable = matches!(
                error.kind,
                ErrorKind::RateLimited
                    | ErrorKind::BadGateway
                    | ErrorKind::Unavailable
                    | ErrorKind::Timeout
                    | ErrorKind::Internal
            );
            (error.message, !retryable)
        })?;
    Ok(report.totals)
}

/// Ingests one uploaded object for the collection's owner key (the S3 trigger).
pub async fn ingest_upload(
    gateway: &Gateway,
    tenant: &str,
    collection_name: &str,
    document: DocumentInput,
    deadline: tokio::time::Instant,
) -> Result<DocumentReport, ApiError> {
    let backends = backends(gateway)?;
    let collection = collection(backends, tenant, collection_name).await?;
    api::validate_documents(std::slice::from_ref(&document))?;
    let key = gateway
        .auth
        .store()
        .get_by_id(&collection.owner_key_id)
        .await?
        .filter(|key| !key.disabled && !key.is_expired(now_secs()))
        .ok_or_else(|| {
            ApiError::forbidden(format!(
                "The key that owns collection `{collection_name}` is revoked or expired."
            ))
        })?;
    let (report, _) = ingest_document(gateway, &key, &collection, &document, deadline).await?;
    Ok(report)
}

/// The local ingest worker: takes queued ingests from the ingest queue and runs them, as the
/// ingest Lambda does on AWS. Runs until the process ends.
pub async fn run_worker(gateway: std::sync::Arc<Gateway>) {
    let Some(queue) = gateway
        .ingest
        .as_ref()
        .and_then(|b| b.queued.as_ref())
        .map(|q| std::sync::Arc::clone(&q.queue))
    else {
        return;
    };
    loop {
        let messages = match queue.receive(1, 20).await {
            Ok(messages) => messages,
            Err(error) => {
                tracing::error!(%error, "receiving from the ingest queue failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for message in messages {
            let deadline = tokio::time::Instant::now() + JOB_TIME;
            match process_job(&gateway, &message, deadline).await {
                JobOutcome::Done => {
                    if let Err(error) = queue.delete(&message.handle).await {
                        tracing::error!(%error, "acknowledging an ingest job failed");
                    }
                }
                JobOutcome::Retry(reason) => {
                    tracing::warn!(reason, "ingest job left for redelivery");
                }
            }
        }
    }
}

/// A deadline `within` from now, or the front's if sooner.
pub fn deadline_within(
    within: Duration,
    front: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    let own = tokio::time::Instant::now() + within;
    front.map_or(own, |at| at.min(own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_to_text_metadata_or_chunking_changes_the_hash_and_chunk_ids() {
        let settings = ChunkSettings::default();
        let meta = Map::new();
        let base = content_hash("hello", DocumentFormat::Text, &meta, &settings);
        assert_eq!(
            base,
            content_hash("hello", DocumentFormat::Text, &meta, &settings)
        );
        assert_ne!(
            base,
            content_hash("hello!", DocumentFormat::Text, &meta, &settings)
        );
        assert_ne!(
            base,
            content_hash("hello", DocumentFormat::Markdown, &meta, &settings)
        );
        let mut tagged = Map::new();
        tagged.insert("team".into(), json!("a"));
        assert_ne!(
            base,
            content_hash("hello", DocumentFormat::Text, &tagged, &settings)
        );
        let id = chunk_id("guides/a.md", &base, 3);
        assert!(id.starts_with("guides/a.md#") && id.ends_with("-3"), "{id}");
        assert_ne!(
            id,
            chunk_id(
                "guides/a.md",
                &content_hash("other", DocumentFormat::Text, &meta, &settings),
                3
            )
        );
    }
}
