//! The collection store in DynamoDB (the collections table, `GATEWAY_COLLECTIONS_TABLE`: `pk` S,
//! `sk` S, TTL on `expires_at`).
//!
//! | item | `pk` | `sk` | other attributes |
//! |---|---|---|---|
//! | collection | `tenant#<tenant>` | `collection#<name>` | `doc`, `version` N, `document_count` N, `chunk_count` N |
//! | document | `docs#<collection>#<tenant>` | `<document id>` | `doc` |
//! | ingest job | `tenant#<tenant>` | `job#<id>` | `doc`, `expires_at` (30 days on) |
//!
//! Collection names hold no `#`, so a document partition names one tenant's collection. The
//! version and counts are counters beside the collection's document: a document write raises them
//! in the transaction that puts the document, conditional on the collection still existing.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValue, TransactWriteItem, Update};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::now_secs;
use crate::error::StoreError;
use crate::ingest::store::{CollectionRecord, CollectionStore, DocumentRecord, IngestJob};
use crate::storage::dynamo::{
    EXPIRES_AT, PK, Rejection, SK, WriteError, backend, n, number_attr, rejection,
    retry_on_conflict, s, sdk_message,
};

const DOC: &str = "doc";
const VERSION: &str = "version";
const DOCUMENT_COUNT: &str = "document_count";
const CHUNK_COUNT: &str = "chunk_count";
/// How long a finished ingest job's record is kept.
const JOB_RETENTION_SECS: u64 = 30 * 24 * 3600;
/// The most collections one tenant lists.
const MAX_COLLECTIONS: usize = 10_000;

type Item = HashMap<String, AttributeValue>;

fn tenant_pk(tenant: &str) -> String {
    format!("tenant#{tenant}")
}

fn collection_sk(name: &str) -> String {
    format!("collection#{name}")
}

fn documents_pk(tenant: &str, collection: &str) -> String {
    format!("docs#{collection}#{tenant}")
}

fn job_sk(id: &str) -> String {
    format!("job#{id}")
}

fn key(pk: String, sk: String) -> Item {
    HashMap::from([(PK.to_owned(), s(pk)), (SK.to_owned(), s(sk))])
}

fn encode(what: &str, record: &impl Serialize) -> Result<AttributeValue, StoreError> {
    serde_json::to_string(record)
        .map(s)
        .map_err(|e| StoreError::Backend(format!("cannot encode the {what}: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, item: &Item) -> Result<T, StoreError> {
    let json = item.get(DOC).and_then(|v| v.as_s().ok()).ok_or_else(|| {
        StoreError::Backend(format!(
            "{what} item without a document in the collections table"
        ))
    })?;
    serde_json::from_str(json).map_err(|e| {
        StoreError::Backend(format!("unreadable {what} in the collections table: {e}"))
    })
}

fn decode_collection(item: &Item) -> Result<CollectionRecord, StoreError> {
    let mut collection: CollectionRecord = decode("collection", item)?;
    collection.version = number_attr(item, VERSION).unwrap_or(0);
    collection.document_count = number_attr(item, DOCUMENT_COUNT).unwrap_or(0);
    collection.chunk_count = number_attr(item, CHUNK_COUNT).unwrap_or(0);
    Ok(collection)
}

fn signed(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub struct DynamoCollectionStore {
    client: Client,
    table: String,
}

impl DynamoCollectionStore {
    /// Named apart from other stores' `new`: infra/contract.py follows `table_name` to the call
    /// sites of this name to learn which table the calls act on.
    pub fn over_table(client: Client, table_name: String) -> Self {
        Self {
            client,
            table: table_name,
        }
    }

    async fn get(&self, what: &str, pk: String, sk: String) -> Result<Option<Item>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend(&format!("GetItem ({what}) on the collections table"), &e))?;
        Ok(output.item)
    }

    /// Items of partition `pk` whose sort key starts with `prefix`, up to `limit`.
    async fn query(
        &self,
        what: &str,
        pk: String,
        prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start_key = None;
        while items.len() < limit {
            let page_limit = i32::try_from(limit - items.len()).unwrap_or(i32::MAX);
            let mut request = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(pk.clone()));
            request = match prefix {
                Some(prefix) => request
                    .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                    .expression_attribute_names("#sk", SK)
                    .expression_attribute_values(":prefix", s(prefix)),
                None => request.key_condition_expression("#pk = :pk"),
            };
            let output = request
                .consistent_read(true)
                .limit(page_limit)
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(|e| backend(&format!("Query ({what}) on the collections table"), &e))?;
            items.extend(output.items.unwrap_or_default());
            match output.last_evaluated_key {
                Some(last) if !last.is_empty() => start_key = Some(last),
                _ => break,
            }
        }
        items.truncate(limit);
        Ok(items)
    }

    /// Raises the collection's version and counts and puts (or deletes) a document, in one
    /// transaction; false if the collection is gone.
    async fn write_document(
        &self,
        tenant: &str,
        collection: &str,
        document: TransactWriteItem,
        new_documents: i64,
        new_chunks: i64,
    ) -> Result<bool, StoreError> {
        let document = &document;
        retry_on_conflict("writing a document", || async move {
            let update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(tenant_pk(tenant), collection_sk(collection))))
                .update_expression("ADD #version :one, #documents :documents, #chunks :chunks")
                .condition_expression("attribute_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#version", VERSION)
                .expression_attribute_names("#documents", DOCUMENT_COUNT)
                .expression_attribute_names("#chunks", CHUNK_COUNT)
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":documents", n(new_documents))
                .expression_attribute_values(":chunks", n(new_chunks))
                .build()?;
            let result = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().update(update).build())
                .transact_items(document.clone())
                .send()
                .await;
            match result {
                Ok(_) => Ok(true),
                Err(error) => match rejection(&error) {
                    Some(Rejection::Condition(_)) => Ok(false),
                    Some(Rejection::Conflict) => Err(WriteError::Conflict),
                    None => Err(WriteError::Backend(sdk_message(
                        "TransactWriteItems (document) on the collections table",
                        &error,
                    ))),
                },
            }
        })
        .await
        .map_err(StoreError::Backend)
    }
}

#[async_trait]
impl CollectionStore for DynamoCollectionStore {
    async fn create_collection(&self, collection: &CollectionRecord) -> Result<(), StoreError> {
        let mut item = key(
            tenant_pk(&collection.tenant),
            collection_sk(&collection.name),
        );
        item.insert(DOC.to_owned(), encode("collection", collection)?);
        item.insert(VERSION.to_owned(), n(0));
        item.insert(DOCUMENT_COUNT.to_owned(), n(0));
        item.insert(CHUNK_COUNT.to_owned(), n(0));
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if matches!(rejection(&error), Some(Rejection::Condition(_))) => Err(
                StoreError::Conflict(format!("collection `{}`", collection.name)),
            ),
            Err(error) => Err(backend(
                "PutItem (collection) on the collections table",
                &error,
            )),
        }
    }

    async fn get_collection(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<CollectionRecord>, StoreError> {
        let item = self
            .get("collection", tenant_pk(tenant), collection_sk(name))
            .await?;
        item.map(|item| decode_collection(&item)).transpose()
    }

    async fn list_collections(&self, tenant: &str) -> Result<Vec<CollectionRecord>, StoreError> {
        let items = self
            .query(
                "collections",
                tenant_pk(tenant),
                Some("collection#"),
                MAX_COLLECTIONS,
            )
            .await?;
        items.iter().map(decode_collection).collect()
    }

    async fn delete_collection(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        // The documents' records first: a collection whose delete is cut short is still listed,
        // and deleting it again finishes the job.
        loop {
            let items = self
                .query("documents", documents_pk(tenant, name), None, 25)
                .await?;
            if items.is_empty() {
                break;
            }
            for item in items {
                let Some(sk) = item.get(SK).and_then(|v| v.as_s().ok()) else {
                    continue;
                };
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(key(documents_pk(tenant, name), sk.clone())))
                    .send()
                    .await
                    .map_err(|e| backend("DeleteItem (document) on the collections table", &e))?;
            }
        }
        let output = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(tenant_pk(tenant), collection_sk(name))))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| backend("DeleteItem (collection) on the collections table", &e))?;
        Ok(output.attributes.is_some_and(|old| !old.is_empty()))
    }

    async fn get_document(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
    ) -> Result<Option<DocumentRecord>, StoreError> {
        let item = self
            .get("document", documents_pk(tenant, collection), id.to_owned())
            .await?;
        item.map(|item| decode("document", &item)).transpose()
    }

    async fn list_documents(
        &self,
        tenant: &str,
        collection: &str,
        limit: usize,
    ) -> Result<Vec<DocumentRecord>, StoreError> {
        let items = self
            .query("documents", documents_pk(tenant, collection), None, limit)
            .await?;
        items.iter().map(|item| decode("document", item)).collect()
    }

    async fn put_document(
        &self,
        tenant: &str,
        collection: &str,
        document: &DocumentRecord,
    ) -> Result<Option<u64>, StoreError> {
        let old = self.get_document(tenant, collection, &document.id).await?;
        let mut item = key(documents_pk(tenant, collection), document.id.clone());
        item.insert(DOC.to_owned(), encode("document", document)?);
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .build()
            .map_err(|e| StoreError::Backend(format!("invalid DynamoDB request: {e}")))?;
        let written = self
            .write_document(
                tenant,
                collection,
                TransactWriteItem::builder().put(put).build(),
                i64::from(old.is_none()),
                signed(document.chunk_ids.len()) - old.map_or(0, |d| signed(d.chunk_ids.len())),
            )
            .await?;
        if !written {
            return Ok(None);
        }
        Ok(self
            .get_collection(tenant, collection)
            .await?
            .map(|c| c.version))
    }

    async fn delete_document(
        &self,
        tenant: &str,
        collection: &str,
        id: &str,
    ) -> Result<Option<DocumentRecord>, StoreError> {
        let Some(old) = self.get_document(tenant, collection, id).await? else {
            return Ok(None);
        };
        let delete = aws_sdk_dynamodb::types::Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key(documents_pk(tenant, collection), id.to_owned())))
            .build()
            .map_err(|e| StoreError::Backend(format!("invalid DynamoDB request: {e}")))?;
        let written = self
            .write_document(
                tenant,
                collection,
                TransactWriteItem::builder().delete(delete).build(),
                -1,
                -signed(old.chunk_ids.len()),
            )
            .await?;
        Ok(written.then_some(old))
    }

    async fn put_job(&self, job: &IngestJob) -> Result<(), StoreError> {
        let mut item = key(tenant_pk(&job.tenant), job_sk(&job.id));
        item.insert(DOC.to_owned(), encode("ingest job", job)?);
        item.insert(
            EXPIRES_AT.to_owned(),
            n(now_secs().saturating_add(JOB_RETENTION_SECS)),
        );
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| backend("PutItem (ingest job) on the collections table", &e))?;
        Ok(())
    }

    async fn get_job(&self, tenant: &str, id: &str) -> Result<Option<IngestJob>, StoreError> {
        let item = self
            .get("ingest job", tenant_pk(tenant), job_sk(id))
            .await?;
        item.map(|item| decode("ingest job", &item)).transpose()
    }
}
