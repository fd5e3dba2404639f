//! The batch worker: what the `batch` Lambda does with each SQS record, and what
//! `gateway-local` runs in process over the embedded queue.
//!
//! - `expand`: validates the input file (the batch's `validating` step), then enqueues its
//!   lines as `item` messages, `SendMessageBatch` 10 at a time, recording how far it got after
//!   each chunk; it stops after `EXPAND_BUDGET` and enqueues itself to go on, so neither a
//!   Lambda timeout nor a crash loses or repeats more than one chunk (a repeated item is
//!   harmless: results are recorded once per `custom_id`).
//! - `item` / `request`: runs one request through the gateway's pipeline (routing, retries,
//!   fallbacks, cache, the key's scope, limits and budget, spend) and records its result with
//!   `BatchStore::record_result`, which counts it once however often it is delivered. A rate
//!   limit (a provider's 429 or the key's RPM/TPM) defers the item: it is re-sent with a delay
//!   and the original acknowledged, so throttling never spends its receive count. A transient
//!   failure is left for redelivery, except on the message's last receive, where it is recorded
//!   as failed (SQS's redrive to the dead-letter queue runs no code, and the batch must still
//!   complete). A message that can never be processed goes to the dead-letter queue with the
//!   reason.
//! - finalizing: the item whose result completes the count writes the output and error files
//!   (input order, deterministic ids and keys, so a second finalizer writes the same bytes)
//!   and moves the batch to `completed` (or `cancelled`, `expired`). The scheduled sweep
//!   finalizes what a crash left, marks batches past their completion window expired, and
//!   closes expired or cancelling batches whose items never came back.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::BatchBackends;
use super::files_api::{PURPOSE_BATCH_OUTPUT, read_body};
use super::input::{ENDPOINTS, RequestLine, request_lines, validate};
use super::messages::{MESSAGE_VERSION, Message};
use super::store::{BatchRecord, BatchStatus, Counts, FileRecord, ItemResult, LineError};
use crate::clock::{now_millis, now_secs};
use crate::error::{ApiError, ErrorKind, StoreError};
use crate::files::output_key;
use crate::keys::{KeyRecord, KeyStore};
use crate::limits::local::ITEM_SPEND;
use crate::queue::{MAX_DELAY_SECS, Received};
use crate::telemetry::{EMF, Emf, METRICS, Metrics};

/// How long one `expand` message fans out before it hands over to the next.
const EXPAND_BUDGET: Duration = Duration::from_secs(40);
/// Lines enqueued between two progress records.
const EXPAND_CHUNK: u64 = 100;
/// Attempts of a compare-and-swap on a batch that other writers are changing.
const CAS_ATTEMPTS: usize = 16;
/// Answers above this size may not fit the batch store; one the store refuses is replaced by an
/// error record.
const LARGE_RECORD_BYTES: usize = 64 * 1024;
/// How long after a batch expired or began cancelling the sweep waits for its items before it
/// records the missing ones: longer than the longest deferral (15 minutes).
const STALLED_GRACE_SECS: u64 = 20 * 60;
/// How often the local worker runs the sweep (the template schedules it on AWS).
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// A direct job has no completion window; its record is kept this long.
const DIRECT_JOB_SECS: u64 = 30 * 24 * 3600;

/// Runs one request of a batch through the gateway (implemented over the pipeline by
/// `pipeline::batch`): the response body of a success, or the error a client would have got.
#[async_trait]
pub trait ItemRunner: Send + Sync {
    async fn run(&self, key: &KeyRecord, endpoint: &str, body: &Value) -> Result<Bytes, ApiError>;
}

/// What to do with a message once handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Delete it: done, recorded, deferred as a new message, or dead-lettered.
    Done,
    /// Leave it for redelivery after its visibility timeout.
    Retry(String),
}

pub struct Worker {
    pub batch: BatchBackends,
    pub keys: Arc<dyn KeyStore>,
    pub runner: Arc<dyn ItemRunner>,
}

/// An item's outcome before it is recorded.
enum Outcome {
    Record(ItemResult),
    Defer { delay_secs: u32 },
    Retry(String),
}

impl Worker {
    pub fn new(batch: BatchBackends, keys: Arc<dyn KeyStore>, runner: Arc<dyn ItemRunner>) -> Self {
        Self {
            batch,
            keys,
            runner,
        }
    }

    /// Handles one message; never fails: what cannot be done now is `Retry`, what can never be
    /// done is dead-lettered.
    pub async fn handle(
        &self,
        body: &str,
        receive_count: u32,
        sent_at_ms: Option<u64>,
    ) -> Disposition {
        let message = match Message::parse(body) {
            Ok(message) => message,
            Err(reason) => return self.dead_letter(body, &reason).await,
        };
        let lag = sent_at_ms.map(|sent| now_millis().saturating_sub(sent));
        let result = match message {
            Message::Expand {
                tenant, batch_id, ..
            } => self.expand(&tenant, &batch_id, body).await,
            message @ (Message::Item { .. } | Message::Request { .. }) => {
                self.item(message, body, receive_count, lag).await
            }
        };
        match result {
            Ok(disposition) => disposition,
            Err(error) => {
                tracing::warn!(%error, "batch message left for redelivery");
                Disposition::Retry(error.to_string())
            }
        }
    }

    /// Handles messages concurrently (at most `settings.concurrency` at once); returns the
    /// handles of those to leave for redelivery.
    pub async fn handle_all(
        &self,
        messages: Vec<Received>,
        sent_at_ms: Vec<Option<u64>>,
    ) -> Vec<String> {
        let concurrency = self.batch.settings.concurrency.max(1);
        let work = messages
            .into_iter()
            .zip(sent_at_ms.into_iter().chain(std::iter::repeat(None)));
        futures_util::stream::iter(work)
            .map(|(message, sent)| async move {
                match self
                    .handle(&message.body, message.receive_count, sent)
                    .await
                {
                    Disposition::Done => None,
                    Disposition::Retry(_) => Some(message.handle),
                }
            })
            .buffer_unordered(concurrency)
            .filter_map(|failed| async move { failed })
            .collect()
            .await
    }

    /// The local worker: receives from the queue while fewer than `settings.concurrency` items
    /// run, deletes what is done, and sweeps every `SWEEP_EVERY`. Runs until the task is dropped;
    /// an item cut off then is delivered again after its visibility timeout.
    pub async fn run(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(self.batch.settings.concurrency.max(1)));
        let mut last_sweep = Instant::now();
        loop {
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                if let Err(error) = self.sweep().await {
                    tracing::warn!(%error, "batch sweep failed");
                }
            }
            let Ok(first) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let free = 1 + slots.available_permits().min(9);
            let messages = match self.batch.queue.receive(free, 1).await {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, "receiving from the batch queue failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut permit = Some(first);
            for message in messages {
                let permit = match permit.take() {
                    Some(permit) => permit,
                    None => match Arc::clone(&slots).acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                let worker = Arc::clone(&self);
                tokio::spawn(async move {
                    let disposition = worker
                        .handle(&message.body, message.receive_count, None)
                        .await;
                    if disposition == Disposition::Done
                        && let Err(error) = worker.batch.queue.delete(&message.handle).await
                    {
                        tracing::warn!(%error, "deleting a handled batch message failed");
                    }
                    drop(permit);
                });
            }
        }
    }

    async fn dead_letter(&self, body: &str, reason: &str) -> Disposition {
        tracing::warn!(reason, "batch message dead-lettered");
        Metrics::count(&METRICS.batch_items, &[("result", "dead_lettered")]);
        match self.batch.queue.dead_letter(body, reason).await {
            Ok(()) => Disposition::Done,
            // Left in the queue, it is dead-lettered by SQS after its last receive.
            Err(error) => Disposition::Retry(format!("dead-lettering failed: {error}")),
        }
    }

    /// Reads, changes and swaps a batch until the swap wins; `change` returns false to leave it.
    async fn modify(
        &self,
        tenant: &str,
        id: &str,
        mut change: impl FnMut(&mut BatchRecord) -> bool,
    ) -> Result<Option<(BatchRecord, Counts)>, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut batch, counts)) = self.batch.store.get_batch(tenant, id).await? else {
                return Ok(None);
            };
            if !change(&mut batch) {
                return Ok(Some((batch, counts)));
            }
            batch.version += 1;
            if self.batch.store.update_batch(&batch).await? {
                return Ok(Some((batch, counts)));
            }
        }
        Err(StoreError::Backend(format!(
            "batch {id} kept changing under {CAS_ATTEMPTS} attempts to update it"
        )))
    }

    async fn expand(
        &self,
        tenant: &str,
        batch_id: &str,
        body: &str,
    ) -> Result<Disposition, StoreError> {
        let started = Instant::now();
        let Some((batch, _)) = self.batch.store.get_batch(tenant, batch_id).await? else {
            return Ok(self.dead_letter(body, "the batch does not exist").await);
        };
        if batch.status.is_terminal() || batch.status == BatchStatus::Finalizing {
            return Ok(Disposition::Done);
        }
        let file_id = batch.input_file_id.clone().unwrap_or_default();
        let input = match self.batch.store.get_file(tenant, &file_id).await? {
            Some(file) => match read_body(&self.batch, &file).await {
                Ok(bytes) => Some(bytes),
                Err(error) if error.kind == ErrorKind::Unavailable => {
                    return Err(StoreError::Backend(error.message));
                }
                Err(_) => None,
            },
            None => None,
        };
        let Some(input) = input else {
            let errors = vec![LineError {
                code: "file_not_found".into(),
                message: format!("The input file {file_id} no longer exists."),
                param: Some("input_file_id".into()),
                line: None,
            }];
            self.fail_validation(tenant, batch_id, errors).await?;
            return Ok(Disposition::Done);
        };
        let mut batch = batch;
        if batch.total == 0 {
            match validate(&input, &batch.endpoint) {
                Err(errors) => {
                    self.fail_validation(tenant, batch_id, errors).await?;
                    return Ok(Disposition::Done);
                }
                Ok(total) => {
                    let now = now_secs();
                    match self
                        .modify(tenant, batch_id, |b| {
                            if b.total != 0 || b.status.is_terminal() {
                                return false;
                            }
                            b.total = total;
                            b.in_progress_at = Some(now);
                            if b.status == BatchStatus::Validating {
                                b.status = BatchStatus::InProgress;
                            }
                            true
                        })
                        .await?
                    {
                        Some((updated, _)) => batch = updated,
                        None => return Ok(Disposition::Done),
                    }
                }
            }
        }
        let lines: Vec<&[u8]> = request_lines(&input).collect();
        let mut expanded = batch.expanded;
        while expanded < batch.total {
            if started.elapsed() > EXPAND_BUDGET {
                let next = Message::Expand {
                    version: MESSAGE_VERSION,
                    tenant: tenant.to_owned(),
                    batch_id: batch_id.to_owned(),
                };
                self.batch.queue.send(&[next.to_json()], 0).await?;
                return Ok(Disposition::Done);
            }
            let end = (expanded + EXPAND_CHUNK).min(batch.total);
            let mut messages = Vec::with_capacity(usize::try_from(end - expanded).unwrap_or(0));
            for line in expanded..end {
                let text = usize::try_from(line)
                    .ok()
                    .and_then(|i| lines.get(i))
                    .copied()
                    .unwrap_or_default();
                let request: RequestLine = serde_json::from_slice(text).map_err(|e| {
                    StoreError::Backend(format!("line {} changed since validation: {e}", line + 1))
                })?;
                messages.push(
                    Message::Item {
                        version: MESSAGE_VERSION,
                        tenant: tenant.to_owned(),
                        batch_id: batch_id.to_owned(),
                        line,
                        custom_id: request.custom_id.unwrap_or_default(),
                        body: request.body.unwrap_or(Value::Null),
                        deferrals: 0,
                    }
                    .to_json(),
                );
            }
            self.batch.queue.send(&messages, 0).await?;
            let progress = self
                .modify(tenant, batch_id, |b| {
                    if b.expanded >= end {
                        return false;
                    }
                    b.expanded = end;
                    true
                })
                .await?;
            match progress {
                Some((updated, _)) => {
                    expanded = updated.expanded.max(end);
                    batch = updated;
                }
                None => return Ok(Disposition::Done),
            }
        }
        Ok(Disposition::Done)
    }

    async fn fail_validation(
        &self,
        tenant: &str,
        batch_id: &str,
        errors: Vec<LineError>,
    ) -> Result<(), StoreError> {
        let now = now_secs();
        self.modify(tenant, batch_id, |b| {
            if b.status.is_terminal() {
                return false;
            }
            b.status = BatchStatus::Failed;
            b.failed_at = Some(now);
            b.errors = errors.clone();
            true
        })
        .await?;
        Ok(())
    }

    async fn item(
        &self,
        message: Message,
        body: &str,
        receive_count: u32,
        lag_ms: Option<u64>,
    ) -> Result<Disposition, StoreError> {
        let (batch, line, custom_id, request, deferrals) = match &message {
            Message::Item {
                tenant,
                batch_id,
                line,
                custom_id,
                body: request,
                deferrals,
                ..
            } => {
                let Some((batch, _)) = self.batch.store.get_batch(tenant, batch_id).await? else {
                    return Ok(self.dead_letter(body, "the batch does not exist").await);
                };
                (batch, *line, custom_id, request, *deferrals)
            }
            Message::Request {
                key_id,
                job_id,
                custom_id,
                url,
                body: request,
                deferrals,
                ..
            } => {
                if !ENDPOINTS.contains(&url.as_str()) {
                    let reason = format!("`url` must be one of {}", ENDPOINTS.join(", "));
                    return Ok(self.dead_letter(body, &reason).await);
                }
                let Some(key) = self.keys.get_by_id(key_id).await? else {
                    return Ok(self.dead_letter(body, "`key_id` names no key").await);
                };
                let Some(job) = self.direct_job(&key, job_id, url).await? else {
                    let reason = "`job_id` is a batch of another key or endpoint";
                    return Ok(self.dead_letter(body, reason).await);
                };
                (job, 0, custom_id, request, *deferrals)
            }
            Message::Expand { .. } => return Ok(Disposition::Done),
        };
        if batch.status.is_terminal() {
            return Ok(Disposition::Done);
        }
        if self
            .batch
            .store
            .get_result(&batch.id, custom_id)
            .await?
            .is_some()
        {
            // Delivered again after its result was recorded: only the finalizing may be left.
            self.finalize_if_done(&batch.tenant, &batch.id).await?;
            return Ok(Disposition::Done);
        }
        // The item's spend, where the store keeps it, is committed with its result.
        let (outcome, spend) = ITEM_SPEND
            .scope(RefCell::new(Vec::new()), async {
                let outcome = self
                    .run_item(&batch, line, custom_id, request, deferrals, receive_count)
                    .await;
                (outcome, ITEM_SPEND.with(|spend| spend.take()))
            })
            .await;
        let outcome = outcome?;
        let result = match outcome {
            Outcome::Record(result) => result,
            Outcome::Defer { delay_secs } => {
                self.batch
                    .queue
                    .send(&[message.deferred().to_json()], delay_secs)
                    .await?;
                self.observe("deferred", lag_ms);
                return Ok(Disposition::Done);
            }
            Outcome::Retry(reason) => {
                self.observe("retried", lag_ms);
                return Ok(Disposition::Retry(reason));
            }
        };
        let store = &self.batch.store;
        let mut outcome = if result.ok { "completed" } else { "failed" };
        let recorded = match store
            .record_result_with_spend(&batch.tenant, &batch.id, &result, &spend)
            .await
        {
            Ok(recorded) => recorded,
            // An answer the store cannot hold (a DynamoDB item takes 400 KB, compressed) would
            // fail on every delivery and stall the batch: its error is recorded instead.
            Err(error) if result.record.len() > LARGE_RECORD_BYTES => {
                tracing::warn!(%error, bytes = result.record.len(), "batch answer too large to store");
                outcome = "failed";
                let too_large = ItemResult {
                    ok: false,
                    record: json!({
                        "id": item_id(&batch.id, custom_id),
                        "custom_id": custom_id,
                        "response": null,
                        "error": {
                            "code": "response_too_large",
                            "message": format!(
                                "The answer ({} bytes) is too large for the batch store.",
                                result.record.len()
                            ),
                        },
                    })
                    .to_string(),
                    ..result
                };
                store
                    .record_result_with_spend(&batch.tenant, &batch.id, &too_large, &spend)
                    .await?
            }
            Err(error) => return Err(error),
        };
        self.observe(outcome, lag_ms);
        if recorded.is_none_or(|counts| !batch.direct && counts.done() >= batch.total) {
            self.finalize_if_done(&batch.tenant, &batch.id).await?;
        }
        Ok(Disposition::Done)
    }

    fn observe(&self, outcome: &str, lag_ms: Option<u64>) {
        Metrics::count(&METRICS.batch_items, &[("result", outcome)]);
        if let Some(emf) = EMF.as_ref() {
            Emf::write(&emf.batch_item_line(outcome, lag_ms));
        }
    }

    /// The job record of direct requests: created by its first message, for the key that sent
    /// it. `None` if the id is taken by another key's batch or another endpoint.
    async fn direct_job(
        &self,
        key: &KeyRecord,
        job_id: &str,
        url: &str,
    ) -> Result<Option<BatchRecord>, StoreError> {
        for _ in 0..2 {
            if let Some((job, _)) = self.batch.store.get_batch(&key.tenant, job_id).await? {
                let ours = job.direct && job.key_id == key.id && job.endpoint == url;
                return Ok(ours.then_some(job));
            }
            let now = now_secs();
            let job = BatchRecord {
                id: job_id.to_owned(),
                tenant: key.tenant.clone(),
                key_id: key.id.clone(),
                endpoint: url.to_owned(),
                input_file_id: None,
                completion_window: "none".into(),
                status: BatchStatus::InProgress,
                created_at: now,
                expires_at: now + DIRECT_JOB_SECS,
                in_progress_at: Some(now),
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
                direct: true,
                version: 0,
            };
            match self.batch.store.create_batch(&job).await {
                Ok(()) => return Ok(Some(job)),
                // Another worker created it first: read it again.
                Err(StoreError::Conflict(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(None)
    }

    async fn run_item(
        &self,
        batch: &BatchRecord,
        line: u64,
        custom_id: &str,
        request: &Value,
        deferrals: u32,
        receive_count: u32,
    ) -> Result<Outcome, StoreError> {
        let record = |ok: bool, response: Value, error: Value| {
            Outcome::Record(ItemResult {
                custom_id: custom_id.to_owned(),
                line,
                ok,
                record: json!({
                    "id": item_id(&batch.id, custom_id),
                    "custom_id": custom_id,
                    "response": response,
                    "error": error,
                })
                .to_string(),
            })
        };
        let batch_error = |code: &str, message: &str| {
            Outcome::Record(batch_error_result(
                &batch.id, custom_id, line, code, message,
            ))
        };
        if batch.status == BatchStatus::Cancelling {
            return Ok(batch_error("batch_cancelled", CANCELLED_MESSAGE));
        }
        if batch.expired_at.is_some() || now_secs() >= batch.expires_at {
            return Ok(batch_error("batch_expired", EXPIRED_MESSAGE));
        }
        let key = self
            .keys
            .get_by_id(&batch.key_id)
            .await?
            .filter(|key| !key.disabled && !key.is_expired(now_secs()));
        let Some(key) = key else {
            let error = ApiError::unauthorized("The batch's API key is revoked or expired.")
                .with_code("invalid_api_key");
            return Ok(error_record(record, &error));
        };
        match self.runner.run(&key, &batch.endpoint, request).await {
            Ok(body) => {
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                Ok(record(
                    true,
                    json!({"status_code": 200, "request_id": item_id(&batch.id, custom_id), "body": body}),
                    Value::Null,
                ))
            }
            Err(error)
                if is_deferrable(&error) && deferrals < self.batch.settings.max_deferrals =>
            {
                Ok(Outcome::Defer {
                    delay_secs: defer_delay(error.retry_after_secs, deferrals),
                })
            }
            Err(error)
                if is_transient(&error) && receive_count < self.batch.settings.max_receives =>
            {
                Ok(Outcome::Retry(error.message))
            }
            Err(error) => Ok(error_record(record, &error)),
        }
    }

    /// Writes the output files and ends the batch, if every item has its result. Safe to run
    /// twice or concurrently: the files are the same bytes under the same ids, and the final
    /// swap happens once.
    pub async fn finalize_if_done(&self, tenant: &str, batch_id: &str) -> Result<(), StoreError> {
        let Some((batch, counts)) = self.batch.store.get_batch(tenant, batch_id).await? else {
            return Ok(());
        };
        if batch.direct
            || batch.total == 0
            || batch.status.is_terminal()
            || counts.done() < batch.total
        {
            return Ok(());
        }
        if batch.status != BatchStatus::Finalizing {
            let now = now_secs();
            let swapped = self
                .modify(tenant, batch_id, |b| {
                    if b.status.is_terminal() || b.status == BatchStatus::Finalizing {
                        return false;
                    }
                    b.status = BatchStatus::Finalizing;
                    b.finalizing_at = Some(now);
                    true
                })
                .await?;
            if !swapped.is_some_and(|(b, _)| b.status == BatchStatus::Finalizing) {
                return Ok(());
            }
        }
        let mut results = self.batch.store.results(batch_id).await?;
        results.sort_by_key(|r| r.line);
        let (mut output, mut errors) = (String::new(), String::new());
        for result in &results {
            let text = if result.ok { &mut output } else { &mut errors };
            text.push_str(&result.record);
            text.push('\n');
        }
        let output_file_id = self.write_output(&batch, "output", output).await?;
        let error_file_id = self.write_output(&batch, "errors", errors).await?;
        let now = now_secs();
        self.modify(tenant, batch_id, |b| {
            if b.status != BatchStatus::Finalizing {
                return false;
            }
            b.output_file_id = output_file_id.clone();
            b.error_file_id = error_file_id.clone();
            if b.cancelling_at.is_some() {
                b.status = BatchStatus::Cancelled;
                b.cancelled_at = Some(now);
            } else if b.expired_at.is_some() {
                b.status = BatchStatus::Expired;
            } else {
                b.status = BatchStatus::Completed;
                b.completed_at = Some(now);
            }
            true
        })
        .await?;
        Ok(())
    }

    /// Writes one output file (nothing if `text` is empty); its id and key derive from the
    /// batch, so writing it again replaces it with the same bytes.
    async fn write_output(
        &self,
        batch: &BatchRecord,
        name: &str,
        text: String,
    ) -> Result<Option<String>, StoreError> {
        if text.is_empty() {
            return Ok(None);
        }
        let suffix = batch.id.strip_prefix("batch_").unwrap_or(&batch.id);
        let id = format!("file-{suffix}-{name}");
        let object = output_key(
            &self.batch.settings.output_prefix,
            &batch.id,
            &format!("{name}.jsonl"),
        );
        let file = FileRecord {
            id: id.clone(),
            tenant: batch.tenant.clone(),
            purpose: PURPOSE_BATCH_OUTPUT.to_owned(),
            filename: format!("{}_{name}.jsonl", batch.id),
            bytes: text.len() as u64,
            created_at: now_secs(),
            expires_at: None,
            objects: vec![object.clone()],
        };
        self.batch.bodies.put(&object, Bytes::from(text)).await?;
        self.batch.store.put_file(&file).await?;
        Ok(Some(id))
    }

    /// The scheduled sweep: marks batches past their completion window expired (their items then
    /// fail fast with `batch_expired`) and finalizes batches whose finalizer did not finish.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let now = now_secs();
        let mut touched = 0;
        for batch in self.batch.store.open_batches().await? {
            if batch.direct {
                continue;
            }
            if now >= batch.expires_at && batch.expired_at.is_none() {
                touched += 1;
                self.modify(&batch.tenant, &batch.id, |b| {
                    if b.status.is_terminal() || b.expired_at.is_some() {
                        return false;
                    }
                    b.expired_at = Some(now);
                    if b.status == BatchStatus::Validating {
                        b.status = BatchStatus::Expired;
                    }
                    true
                })
                .await?;
            }
            self.close_stalled(&batch, now).await?;
            self.finalize_if_done(&batch.tenant, &batch.id).await?;
        }
        Ok(touched)
    }

    /// A batch expired or cancelling for longer than `STALLED_GRACE_SECS` whose items have not
    /// all come back (one SQS dead-lettered after repeated Lambda timeouts runs no code): its
    /// lines without a result are recorded as expired or cancelled, so it still ends.
    async fn close_stalled(&self, batch: &BatchRecord, now: u64) -> Result<(), StoreError> {
        let (since, code, message) = match (batch.expired_at, batch.cancelling_at) {
            (Some(at), _) => (at, "batch_expired", EXPIRED_MESSAGE),
            (None, Some(at)) => (at, "batch_cancelled", CANCELLED_MESSAGE),
            (None, None) => return Ok(()),
        };
        if now < since.saturating_add(STALLED_GRACE_SECS)
            || batch.total == 0
            || batch.status.is_terminal()
            || batch.status == BatchStatus::Finalizing
        {
            return Ok(());
        }
        let file_id = batch.input_file_id.clone().unwrap_or_default();
        let Some(file) = self.batch.store.get_file(&batch.tenant, &file_id).await? else {
            return Ok(());
        };
        let input = read_body(&self.batch, &file)
            .await
            .map_err(|e| StoreError::Backend(e.message))?;
        let done: HashSet<String> = self
            .batch
            .store
            .results(&batch.id)
            .await?
            .into_iter()
            .map(|r| r.custom_id)
            .collect();
        for (line, text) in (0u64..).zip(request_lines(&input)) {
            let Ok(request) = serde_json::from_slice::<RequestLine>(text) else {
                continue;
            };
            let Some(custom_id) = request.custom_id.filter(|id| !done.contains(id)) else {
                continue;
            };
            let result = batch_error_result(&batch.id, &custom_id, line, code, message);
            self.batch
                .store
                .record_result(&batch.tenant, &batch.id, &result)
                .await?;
        }
        Ok(())
    }
}

const EXPIRED_MESSAGE: &str = "The batch's completion window ended before this request ran.";
const CANCELLED_MESSAGE: &str = "The batch was cancelled before this request ran.";

/// The record of an item the batch's state ended before it ran (cancelled, expired).
fn batch_error_result(
    batch_id: &str,
    custom_id: &str,
    line: u64,
    code: &str,
    message: &str,
) -> ItemResult {
    ItemResult {
        custom_id: custom_id.to_owned(),
        line,
        ok: false,
        record: json!({
            "id": item_id(batch_id, custom_id),
            "custom_id": custom_id,
            "response": null,
            "error": {"code": code, "message": message},
        })
        .to_string(),
    }
}

/// A record of a request that failed with the error a client would have got.
fn error_record(record: impl Fn(bool, Value, Value) -> Outcome, error: &ApiError) -> Outcome {
    let body: Value = serde_json::from_str(&error.body_json()).unwrap_or(Value::Null);
    record(
        false,
        json!({"status_code": error.status().as_u16(), "body": body}),
        Value::Null,
    )
}

/// The item's id in the output files: the same for every delivery of it.
fn item_id(batch_id: &str, custom_id: &str) -> String {
    let digest = Sha256::digest(format!("{batch_id}\n{custom_id}").as_bytes());
    format!(
        "batch_req_{}",
        hex::encode(digest.get(..12).unwrap_or_default())
    )
}

/// Rate limits pass: the item waits for them instead of failing. A spent budget does not pass
/// within a batch's window: it fails the item.
fn is_deferrable(error: &ApiError) -> bool {
    error.kind == ErrorKind::RateLimited && error.code.as_deref() != Some("budget_exceeded")
}

fn is_transient(error: &ApiError) -> bool {
    matches!(
        error.kind,
        ErrorKind::BadGateway | ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Internal
    )
}

/// The provider's `Retry-After` when it gave one, else doubling from 2 s; capped by SQS's
/// longest delay.
fn defer_delay(retry_after_secs: Option<u64>, deferrals: u32) -> u32 {
    let backoff = 2u64 << deferrals.min(9);
    let secs = retry_after_secs.filter(|s| *s > 0).unwrap_or(backoff);
    u32::try_from(secs.clamp(1, u64::from(MAX_DELAY_SECS))).unwrap_or(MAX_DELAY_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_defer_and_budgets_fail() {
        let limited = ApiError::rate_limited("slow down", 7).with_code("rate_limit_exceeded");
        assert!(is_deferrable(&limited));
        let budget = ApiError::rate_limited("budget", 7).with_code("budget_exceeded");
        assert!(!is_deferrable(&budget));
        assert!(!is_transient(&budget));
        assert!(is_transient(&ApiError::new(ErrorKind::BadGateway, "x")));
        assert!(!is_transient(&ApiError::bad_request("x")));
        assert_eq!(defer_delay(Some(7), 0), 7);
        assert_eq!(defer_delay(None, 0), 2);
        assert_eq!(defer_delay(None, 3), 16);
        assert_eq!(defer_delay(None, 50), 900);
        assert_eq!(defer_delay(Some(100_000), 0), 900);
        assert_eq!(item_id("b", "x"), item_id("b", "x"));
        assert_ne!(item_id("b", "x"), item_id("b", "y"));
    }
}
