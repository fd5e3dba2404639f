//! The batch store in DynamoDB (the batch table: `pk` S, `sk` S, TTL on `expires_at`).
//!
//! | item | `pk` | `sk` | other attributes |
//! |---|---|---|---|
//! | file | `tenant#<tenant>` | `file#<id>` | `doc`, `expires_at` (the file's, if any) |
//! | upload | `tenant#<tenant>` | `upload#<id>` | `doc`, `expires_at` (a week after the upload's) |
//! | upload part | `upload#<upload id>` | `part#<id>` | `doc`, `expires_at` (a week after it arrived) |
//! | batch | `tenant#<tenant>` | `batch#<id>` | `doc`, `version` N, `completed` N, `failed` N |
//! | open batch | `open` | `<batch id>` | `tenant`, `doc` (a copy of the batch's) |
//! | item result | `results#<batch id>` | `<custom_id>` | `doc`, `expires_at` (30 days on) |
//!
//! `doc` (S) is the record as JSON; a large one is deflated into `docz` (B) instead, since an
//! item holds at most 400 KB (a result's record can be a long completion or an embedding).
//!
//! Ids sort by creation time, so a tenant's files or batches newest first are one descending
//! Query on its partition. The `open` partition indexes the batches that are not terminal, so
//! the expiry sweep needs no Scan: its item is written in the same transaction as the batch's,
//! replaced by every `update_batch`, and deleted by the update that makes the batch terminal.
//! The counts are atomic counters beside the batch's document: `update_batch` never touches
//! them, and `record_result` raises one in the transaction that puts the result, so a result is
//! counted exactly once however often its item is delivered.

use std::collections::HashMap;
use std::io::{Read, Write};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValue, TransactWriteItem, Update,
};
use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::batch::store::{
    BatchRecord, BatchStore, Counts, FileRecord, ItemResult, UploadPart, UploadRecord,
};
use crate::clock::now_secs;
use crate::error::StoreError;
use crate::storage::dynamo::{
    EXPIRES_AT, PK, Rejection, SK, WriteError, backend, condition_failed, n, number_attr,
    rejection, retry_on_conflict, s, sdk_message,
};

const DOC: &str = "doc";
const DOC_DEFLATED: &str = "docz";
const VERSION: &str = "version";
const COMPLETED: &str = "completed";
const FAILED: &str = "failed";
const TENANT: &str = "tenant";
const OPEN_PK: &str = "open";

/// Documents up to this size are stored as JSON text: compressing them saves little.
const COMPRESS_OVER: usize = 4 * 1024;
/// What a document may take of DynamoDB's 400 KB item, keys and counters aside.
const MAX_STORED_DOC: usize = 390 * 1024;
/// The largest document a deflated `docz` may expand to (a bound on what a read allocates).
const MAX_DOC_BYTES: u64 = 16 * 1024 * 1024;
/// How long uploads and their parts are kept after they expire or arrive: `complete` and the
/// client's status reads are done long before.
const UPLOAD_RETENTION_SECS: u64 = 7 * 24 * 3600;
/// How long an item's result is kept: the finalizer has written the batch's files long before
/// (the completion window is 24 h), and the output files expire on their own schedule.
const RESULT_RETENTION_SECS: u64 = 30 * 24 * 3600;
/// The most items one list call returns.
const MAX_LIST: usize = 10_000;
/// The most results or parts one read collects (OpenAI's batch is at most 50,000 lines).
const MAX_COLLECTED: usize = 60_000;
/// The most open batches the sweep reads in one call.
const MAX_OPEN: usize = 60_000;

fn tenant_pk(tenant: &str) -> String {
    format!("tenant#{tenant}")
}

fn file_sk(id: &str) -> String {
    format!("file#{id}")
}

fn upload_sk(id: &str) -> String {
    format!("upload#{id}")
}

fn batch_sk(id: &str) -> String {
    format!("batch#{id}")
}

fn parts_pk(upload_id: &str) -> String {
    format!("upload#{upload_id}")
}

fn part_sk(id: &str) -> String {
    format!("part#{id}")
}

fn results_pk(batch_id: &str) -> String {
    format!("results#{batch_id}")
}

type Item = HashMap<String, AttributeValue>;

fn key(pk: String, sk: String) -> Item {
    HashMap::from([(PK.to_owned(), s(pk)), (SK.to_owned(), s(sk))])
}

/// A record's `doc` (or `docz`) attribute.
fn encode_doc(what: &str, record: &impl Serialize) -> Result<(String, AttributeValue), StoreError> {
    let json = serde_json::to_string(record)
        .map_err(|e| StoreError::Backend(format!("cannot encode the {what}: {e}")))?;
    if json.len() <= COMPRESS_OVER {
        return Ok((DOC.to_owned(), s(json)));
    }
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    let deflated = encoder
        .write_all(json.as_bytes())
        .and_then(|()| encoder.finish())
        .map_err(|e| StoreError::Backend(format!("cannot compress the {what}: {e}")))?;
    if deflated.len() >= json.len() {
        return if json.len() <= MAX_STORED_DOC {
            Ok((DOC.to_owned(), s(json)))
        } else {
            Err(too_large(what, json.len()))
        };
    }
    if deflated.len() > MAX_STORED_DOC {
        return Err(too_large(what, deflated.len()));
    }
    Ok((
        DOC_DEFLATED.to_owned(),
        AttributeValue::B(Blob::new(deflated)),
    ))
}

fn too_large(what: &str, bytes: usize) -> StoreError {
    StoreError::Backend(format!(
        "the {what} takes {bytes} bytes, more than the {MAX_STORED_DOC} a batch-table item holds"
    ))
}

fn decode_doc<T: DeserializeOwned>(what: &str, item: &Item) -> Result<T, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| {
        StoreError::Backend(format!("unreadable {what} in the batch table: {e}"))
    };
    if let Some(json) = item.get(DOC).and_then(|v| v.as_s().ok()) {
        return serde_json::from_str(json).map_err(|e| corrupt(&e));
    }
    let Some(deflated) = item.get(DOC_DEFLATED).and_then(|v| v.as_b().ok()) else {
        return Err(StoreError::Backend(format!(
            "{what} item without a document in the batch table"
        )));
    };
    let mut json = Vec::new();
    DeflateDecoder::new(deflated.as_ref())
        .take(MAX_DOC_BYTES)
        .read_to_end(&mut json)
        .map_err(|e| corrupt(&e))?;
    serde_json::from_slice(&json).map_err(|e| corrupt(&e))
}

/// An item: its key, its document and the extra attributes.
fn item(
    pk: String,
    sk: String,
    what: &str,
    record: &impl Serialize,
    extra: impl IntoIterator<Item = (&'static str, AttributeValue)>,
) -> Result<Item, StoreError> {
    let mut item = key(pk, sk);
    let (name, doc) = encode_doc(what, record)?;
    item.insert(name, doc);
    for (name, value) in extra {
        item.insert(name.to_owned(), value);
    }
    Ok(item)
}

fn batch_counts(item: &Item) -> Counts {
    Counts {
        completed: number_attr(item, COMPLETED).unwrap_or(0),
        failed: number_attr(item, FAILED).unwrap_or(0),
    }
}

/// A batch item's record, its version taken from the `version` attribute (the one CAS checks).
fn decode_batch(item: &Item) -> Result<(BatchRecord, Counts), StoreError> {
    let mut batch: BatchRecord = decode_doc("batch", item)?;
    if let Some(version) = number_attr(item, VERSION) {
        batch.version = version;
    }
    Ok((batch, batch_counts(item)))
}

fn open_item(batch: &BatchRecord) -> Result<Item, StoreError> {
    item(
        OPEN_PK.to_owned(),
        batch.id.clone(),
        "batch",
        batch,
        [(TENANT, s(&batch.tenant))],
    )
}

/// The batch store on the batch table.
pub struct DynamoBatchStore {
    client: Client,
    table: String,
}

impl DynamoBatchStore {
    pub fn new(client: Client, table_name: String) -> Self {
        // Not field shorthand: infra/contract.py follows `table: <parameter>` to the call site
        // to learn which table the calls act on.
        Self {
            client,
            table: table_name,
        }
    }

    async fn put(&self, what: &str, item: Item) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| backend(&format!("PutItem ({what}) on the batch table"), &e))?;
        Ok(())
    }

    /// One item, read strongly consistent: a record is read back right after it is written
    /// (a batch before a compare-and-swap, an upload before a part).
    async fn get(&self, what: &str, pk: String, sk: String) -> Result<Option<Item>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend(&format!("GetItem ({what}) on the batch table"), &e))?;
        Ok(output.item)
    }

    /// Items of partition `pk` (whose sort key starts with `prefix`, if given), strongly
    /// consistent, up to `limit` of them: descending from before `start` when `descending`.
    async fn query(
        &self,
        what: &str,
        pk: String,
        prefix: Option<&str>,
        start: Option<String>,
        descending: bool,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start_key = start.map(|sk| key(pk.clone(), sk));
        let (condition, mut values) = match prefix {
            Some(prefix) => (
                "#pk = :pk AND begins_with(#sk, :prefix)",
                HashMap::from([(":prefix".to_owned(), s(prefix))]),
            ),
            None => ("#pk = :pk", HashMap::new()),
        };
        values.insert(":pk".to_owned(), s(pk.clone()));
        let mut names = HashMap::from([("#pk".to_owned(), PK.to_owned())]);
        if prefix.is_some() {
            names.insert("#sk".to_owned(), SK.to_owned());
        }
        while items.len() < limit {
            let page_limit = i32::try_from(limit - items.len()).unwrap_or(i32::MAX);
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression(condition)
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .scan_index_forward(!descending)
                .consistent_read(true)
                .limit(page_limit)
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(|e| backend(&format!("Query ({what}) on the batch table"), &e))?;
            items.extend(output.items.unwrap_or_default());
            match output.last_evaluated_key {
                Some(last) if !last.is_empty() => start_key = Some(last),
                _ => break,
            }
        }
        items.truncate(limit);
        Ok(items)
    }

    /// Collects a whole partition of records, refusing one larger than `MAX_COLLECTED`.
    async fn collect<T: DeserializeOwned>(
        &self,
        what: &str,
        pk: String,
    ) -> Result<Vec<T>, StoreError> {
        let items = self
            .query(what, pk, None, None, false, MAX_COLLECTED + 1)
            .await?;
        if items.len() > MAX_COLLECTED {
            return Err(StoreError::Backend(format!(
                "more than {MAX_COLLECTED} {what} records in the batch table"
            )));
        }
        items.iter().map(|item| decode_doc(what, item)).collect()
    }
}

#[async_trait]
impl BatchStore for DynamoBatchStore {
    async fn put_file(&self, file: &FileRecord) -> Result<(), StoreError> {
        let expiry = file.expires_at.map(|at| (EXPIRES_AT, n(at)));
        let item = item(
            tenant_pk(&file.tenant),
            file_sk(&file.id),
            "file",
            file,
            expiry,
        )?;
        self.put("file", item).await
    }

    async fn get_file(&self, tenant: &str, id: &str) -> Result<Option<FileRecord>, StoreError> {
        let item = self.get("file", tenant_pk(tenant), file_sk(id)).await?;
        item.map(|item| decode_doc("file", &item)).transpose()
    }

    async fn list_files(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileRecord>, StoreError> {
        let items = self
            .query(
                "files",
                tenant_pk(tenant),
                Some("file#"),
                after.map(file_sk),
                true,
                limit.clamp(1, MAX_LIST),
            )
            .await?;
        items.iter().map(|item| decode_doc("file", item)).collect()
    }

    async fn delete_file(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let output = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(tenant), file_sk(id))))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| backend("DeleteItem (file) on the batch table", &e))?;
        Ok(output.attributes.is_some_and(|old| !old.is_empty()))
    }

    async fn put_upload(&self, upload: &UploadRecord) -> Result<(), StoreError> {
        let expiry = upload.expires_at.saturating_add(UPLOAD_RETENTION_SECS);
        let item = item(
            tenant_pk(&upload.tenant),
            upload_sk(&upload.id),
            "upload",
            upload,
            [(EXPIRES_AT, n(expiry))],
        )?;
        self.put("upload", item).await
    }

    async fn get_upload(&self, tenant: &str, id: &str) -> Result<Option<UploadRecord>, StoreError> {
        let item = self.get("upload", tenant_pk(tenant), upload_sk(id)).await?;
        item.map(|item| decode_doc("upload", &item)).transpose()
    }

    async fn put_upload_part(&self, part: &UploadPart) -> Result<(), StoreError> {
        let expiry = part.created_at.saturating_add(UPLOAD_RETENTION_SECS);
        let item = item(
            parts_pk(&part.upload_id),
            part_sk(&part.id),
            "upload part",
            part,
            [(EXPIRES_AT, n(expiry))],
        )?;
        self.put("upload part", item).await
    }

    async fn upload_parts(&self, upload_id: &str) -> Result<Vec<UploadPart>, StoreError> {
        self.collect("upload part", parts_pk(upload_id)).await
    }

    async fn create_batch(&self, batch: &BatchRecord) -> Result<(), StoreError> {
        let batch = &BatchRecord {
            version: 0,
            ..batch.clone()
        };
        let batch_item = &item(
            tenant_pk(&batch.tenant),
            batch_sk(&batch.id),
            "batch",
            batch,
            [(VERSION, n(0)), (COMPLETED, n(0)), (FAILED, n(0))],
        )?;
        let open_item = &if batch.status.is_terminal() {
            None
        } else {
            Some(open_item(batch)?)
        };
        let created = retry_on_conflict("creating a batch", || async move {
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(batch_item.clone()))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .build()?;
            let mut request = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(put).build());
            if let Some(open_item) = open_item {
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(open_item.clone()))
                    .build()?;
                request = request.transact_items(TransactWriteItem::builder().put(put).build());
            }
            match request.send().await {
                Ok(_) => Ok(true),
                Err(error) => match rejection(&error) {
                    Some(Rejection::Condition(_)) => Ok(false),
                    Some(Rejection::Conflict) => Err(WriteError::Conflict),
                    None => Err(WriteError::Backend(sdk_message(
                        "TransactWriteItems (new batch) on the batch table",
                        &error,
                    ))),
                },
            }
        })
        .await
        .map_err(StoreError::Backend)?;
        if created {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("batch `{}`", batch.id)))
        }
    }

    async fn get_batch(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(BatchRecord, Counts)>, StoreError> {
        let item = self.get("batch", tenant_pk(tenant), batch_sk(id)).await?;
        item.map(|item| decode_batch(&item)).transpose()
    }

    async fn list_batches(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(BatchRecord, Counts)>, StoreError> {
        let items = self
            .query(
                "batches",
                tenant_pk(tenant),
                Some("batch#"),
                after.map(batch_sk),
                true,
                limit.clamp(1, MAX_LIST),
            )
            .await?;
        items.iter().map(decode_batch).collect()
    }

    async fn update_batch(&self, batch: &BatchRecord) -> Result<bool, StoreError> {
        let Some(stored_version) = batch.version.checked_sub(1) else {
            return Err(StoreError::Backend(format!(
                "batch `{}` replaced with version 0: a replacement is one above the stored one",
                batch.id
            )));
        };
        let (doc_name, doc) = encode_doc("batch", batch)?;
        let doc_name = &doc_name;
        let doc = &doc;
        let open_item = &if batch.status.is_terminal() {
            None
        } else {
            Some(open_item(batch)?)
        };
        let swapped = retry_on_conflict("replacing a batch", || async move {
            // SET the document in one attribute and REMOVE the other encoding, so a shrunken
            // document never leaves a stale one beside it.
            let stale_doc = if doc_name == DOC { DOC_DEFLATED } else { DOC };
            let update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(tenant_pk(&batch.tenant), batch_sk(&batch.id))))
                .update_expression("SET #doc = :doc, #version = :new REMOVE #stale")
                .condition_expression("#version = :old")
                .expression_attribute_names("#doc", doc_name.as_str())
                .expression_attribute_names("#version", VERSION)
                .expression_attribute_names("#stale", stale_doc)
                .expression_attribute_values(":doc", doc.clone())
                .expression_attribute_values(":new", n(batch.version))
                .expression_attribute_values(":old", n(stored_version))
                .build()?;
            let index = match open_item {
                Some(open_item) => TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(open_item.clone()))
                            .build()?,
                    )
                    .build(),
                None => TransactWriteItem::builder()
                    .delete(
                        Delete::builder()
                            .table_name(&self.table)
                            .set_key(Some(key(OPEN_PK.to_owned(), batch.id.clone())))
                            .build()?,
                    )
                    .build(),
            };
            let result = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().update(update).build())
                .transact_items(index)
                .send()
                .await;
            match result {
                Ok(_) => Ok(true),
                Err(error) => match rejection(&error) {
                    Some(Rejection::Condition(_)) => Ok(false),
                    Some(Rejection::Conflict) => Err(WriteError::Conflict),
                    None => Err(WriteError::Backend(sdk_message(
                        "TransactWriteItems (batch update) on the batch table",
                        &error,
                    ))),
                },
            }
        })
        .await
        .map_err(StoreError::Backend)?;
        Ok(swapped)
    }

    async fn open_batches(&self) -> Result<Vec<BatchRecord>, StoreError> {
        let items = self
            .query(
                "open batches",
                OPEN_PK.to_owned(),
                None,
                None,
                false,
                MAX_OPEN,
            )
            .await?;
        if items.len() >= MAX_OPEN {
            tracing::warn!(
                open = items.len(),
                "the expiry sweep reads the first {MAX_OPEN} open batches only"
            );
        }
        items.iter().map(|item| decode_doc("batch", item)).collect()
    }

    async fn record_result(
        &self,
        tenant: &str,
        batch_id: &str,
        result: &ItemResult,
    ) -> Result<Option<Counts>, StoreError> {
        let expiry = now_secs().saturating_add(RESULT_RETENTION_SECS);
        let result_item = &item(
            results_pk(batch_id),
            result.custom_id.clone(),
            "item result",
            result,
            [(EXPIRES_AT, n(expiry))],
        )?;
        let batch_key = &key(tenant_pk(tenant), batch_sk(batch_id));
        let counter = if result.ok { COMPLETED } else { FAILED };
        let recorded = retry_on_conflict("recording an item result", || async move {
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(result_item.clone()))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .build()?;
            let raise = Update::builder()
                .table_name(&self.table)
                .set_key(Some(batch_key.clone()))
                .update_expression("ADD #counter :one")
                .condition_expression("attribute_exists(#pk)")
                .expression_attribute_names("#counter", counter)
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":one", n(1))
                .build()?;
            let result = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(put).build())
                .transact_items(TransactWriteItem::builder().update(raise).build())
                .send()
                .await;
            match result {
                Ok(_) => Ok(true),
                Err(error) => match rejection(&error) {
                    // The result's put is the first item: its condition failing means the item
                    // already has a result; the batch's failing means there is no such batch.
                    Some(Rejection::Condition(reasons)) => {
                        if reasons.first().is_some_and(condition_failed) {
                            Ok(false)
                        } else {
                            Err(WriteError::Backend(format!(
                                "recording a result of batch `{batch_id}`: the batch does not exist"
                            )))
                        }
                    }
                    Some(Rejection::Conflict) => Err(WriteError::Conflict),
                    None => Err(WriteError::Backend(sdk_message(
                        "TransactWriteItems (item result) on the batch table",
                        &error,
                    ))),
                },
            }
        })
        .await
        .map_err(StoreError::Backend)?;
        if !recorded {
            return Ok(None);
        }
        let item = self
            .get("batch", tenant_pk(tenant), batch_sk(batch_id))
            .await?
            .ok_or_else(|| {
                StoreError::Backend(format!("batch `{batch_id}` vanished after a result"))
            })?;
        Ok(Some(batch_counts(&item)))
    }

    async fn get_result(
        &self,
        batch_id: &str,
        custom_id: &str,
    ) -> Result<Option<ItemResult>, StoreError> {
        let item = self
            .get("item result", results_pk(batch_id), custom_id.to_owned())
            .await?;
        item.map(|item| decode_doc("item result", &item))
            .transpose()
    }

    async fn results(&self, batch_id: &str) -> Result<Vec<ItemResult>, StoreError> {
        self.collect("item result", results_pk(batch_id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_documents_are_json_text_and_large_ones_deflated() {
        let small = ItemResult {
            custom_id: "a".into(),
            line: 0,
            ok: true,
            record: "{}".into(),
        };
        let (name, _) = encode_doc("item result", &small).unwrap();
        assert_eq!(name, DOC);

        let large = ItemResult {
            record: "word ".repeat(20_000),
            ..small
        };
        let (name, value) = encode_doc("item result", &large).unwrap();
        assert_eq!(name, DOC_DEFLATED);
        let item = HashMap::from([(name, value)]);
        let decoded: ItemResult = decode_doc("item result", &item).unwrap();
        assert_eq!(decoded, large);
    }

    #[test]
    fn a_document_too_large_for_an_item_is_refused_by_name() {
        // Random text does not compress below the item size.
        let noise: String = (0..1_000_000)
            .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
            .collect();
        let result = ItemResult {
            custom_id: "a".into(),
            line: 0,
            ok: true,
            record: noise,
        };
        match encode_doc("item result", &result) {
            Err(error) => assert!(error.to_string().contains("item result"), "{error}"),
            Ok((name, _)) => panic!("a 1 MB document was stored as `{name}`"),
        }
    }
}
