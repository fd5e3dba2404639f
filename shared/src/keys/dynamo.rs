//! API keys in DynamoDB (the keys table).
//!
//! - `pk = "key#<sha256 hex of the secret>"`: `id` (S), `record` (S, the `KeyRecord` as JSON).
//! - `pk = "id#<key id>"`: `hash` (S), the hash of the key item with that id. Written in the same
//!   transaction as the key item, so ids are unique and revoking by id needs no scan.
//!
//! - `pk = "key#<hash of a rotated-out secret>"`: `id` (S), `valid_until` (N, epoch seconds until
//!   which the old secret works), `expires_at` (N, the table's TTL: a day after `valid_until`).
//!   No `record`: reading it reads the key's current record, so revocations and changes apply.
//!
//! Key items carry no `expires_at`: an expired key stays readable so clients are told it expired
//! rather than that it is unknown.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem};

use crate::error::StoreError;
use crate::keys::{KeyEdit, KeyRecord, KeyStore};
use crate::storage::dynamo::{
    DynamoConfig, EXPIRES_AT, PK, Rejection, WriteError, backend, n, number_attr, raced, rejection,
    retry_on_conflict, s, sdk_message, string_attr,
};

const ID: &str = "id";
const RECORD: &str = "record";
const HASH: &str = "hash";
const VALID_UNTIL: &str = "valid_until";
/// How long a rotated-out secret's item outlives its grace before the table's TTL removes it
/// (meanwhile it is answered "rotated" rather than "unknown").
const SUPERSEDED_ITEM_TTL_SECS: u64 = 86_400;

fn key_pk(hash: &str) -> String {
    format!("key#{hash}")
}

fn id_pk(id: &str) -> String {
    format!("id#{id}")
}

/// A condition expression with its names and values, for puts and deletes in transactions.
struct Condition {
    expression: &'static str,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Condition {
    fn absent() -> Self {
        Self {
            expression: "attribute_not_exists(#pk)",
            names: HashMap::from([("#pk".to_owned(), PK.to_owned())]),
            values: HashMap::new(),
        }
    }

    /// The item exists with `attribute = value`.
    fn holds(attribute: &str, value: &str) -> Self {
        Self {
            expression: "#attr = :value",
            names: HashMap::from([("#attr".to_owned(), attribute.to_owned())]),
            values: HashMap::from([(":value".to_owned(), s(value))]),
        }
    }

    /// The item is absent, or has `attribute = value`.
    fn absent_or_holds(attribute: &str, value: &str) -> Self {
        Self {
            expression: "attribute_not_exists(#pk) OR #attr = :value",
            names: HashMap::from([
                ("#pk".to_owned(), PK.to_owned()),
                ("#attr".to_owned(), attribute.to_owned()),
            ]),
            values: HashMap::from([(":value".to_owned(), s(value))]),
        }
    }

    fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        // DynamoDB rejects an empty value map.
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

fn transact_put(
    table: &str,
    item: HashMap<String, AttributeValue>,
    condition: Condition,
) -> Result<TransactWriteItem, WriteError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression(condition.expression)
        .set_expression_attribute_values(condition.values())
        .set_expression_attribute_names(Some(condition.names))
        .build()?;
    Ok(TransactWriteItem::builder().put(put).build())
}

fn transact_delete(
    table: &str,
    pk: String,
    condition: Condition,
) -> Result<TransactWriteItem, WriteError> {
    let delete = Delete::builder()
        .table_name(table)
        .key(PK, s(pk))
        .condition_expression(condition.expression)
        .set_expression_attribute_values(condition.values())
        .set_expression_attribute_names(Some(condition.names))
        .build()?;
    Ok(TransactWriteItem::builder().delete(delete).build())
}

/// API keys in the keys table.
pub struct DynamoKeyStore {
    client: Client,
    table: String,
}

impl DynamoKeyStore {
    pub fn new(client: Client, config: &DynamoConfig) -> Self {
        Self {
            client,
            table: config.keys_table.clone(),
        }
    }

    /// One string attribute of a keys-table item, read strongly consistent because it decides a
    /// conditional write.
    async fn read_key_attr(
        &self,
        pk: String,
        attribute: &str,
    ) -> Result<Option<String>, WriteError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| WriteError::Backend(sdk_message("GetItem on the keys table", &e)))?;
        Ok(output.item().and_then(|item| string_attr(item, attribute)))
    }

    /// The current hash, record and record JSON of the key `id`, read strongly consistent for a
    /// conditional write on that JSON.
    async fn read_current(
        &self,
        id: &str,
    ) -> Result<Option<(String, KeyRecord, String)>, WriteError> {
        let Some(hash) = self.read_key_attr(id_pk(id), HASH).await? else {
            return Ok(None);
        };
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(key_pk(&hash)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| WriteError::Backend(sdk_message("GetItem on the keys table", &e)))?;
        let Some(item) = output.item() else {
            return Ok(None);
        };
        let Some(json) = string_attr(item, RECORD) else {
            return Ok(None);
        };
        let record = decode_record(item).map_err(|e| WriteError::Backend(e.to_string()))?;
        Ok((record.id == id).then_some((hash, record, json)))
    }
}

fn encode(record: &KeyRecord) -> Result<String, WriteError> {
    serde_json::to_string(record)
        .map_err(|e| WriteError::Backend(format!("cannot encode key record: {e}")))
}

fn key_item(hash: &str, record: &KeyRecord) -> Result<HashMap<String, AttributeValue>, StoreError> {
    let json = serde_json::to_string(record)
        .map_err(|e| StoreError::Backend(format!("cannot encode key record: {e}")))?;
    Ok(HashMap::from([
        (PK.to_owned(), s(key_pk(hash))),
        (ID.to_owned(), s(&record.id)),
        (RECORD.to_owned(), s(json)),
    ]))
}

fn id_item(id: &str, hash: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([(PK.to_owned(), s(id_pk(id))), (HASH.to_owned(), s(hash))])
}

fn decode_record(item: &HashMap<String, AttributeValue>) -> Result<KeyRecord, StoreError> {
    let json = item
        .get(RECORD)
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| StoreError::Backend("key item without a `record` attribute".into()))?;
    serde_json::from_str(json)
        .map_err(|e| StoreError::Backend(format!("key item with an unreadable record: {e}")))
}

#[async_trait]
impl KeyStore for DynamoKeyStore {
    async fn get_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        // Strongly consistent: a key works as soon as it is created, and a revocation is seen
        // by the next read (the authenticator's in-process cache bounds how often that is).
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(key_pk(hash)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend("GetItem on the keys table", &e))?;
        let Some(item) = output.item() else {
            return Ok(None);
        };
        if let Some(valid_until) = number_attr::<u64>(item, VALID_UNTIL) {
            let Some(id) = string_attr(item, ID) else {
                return Ok(None);
            };
            let current = KeyStore::get_by_id(self, &id).await?;
            return Ok(current.map(|record| KeyRecord {
                superseded_until: Some(valid_until),
                ..record
            }));
        }
        decode_record(item).map(Some)
    }

    async fn get_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.read_current(id)
            .await
            .map(|current| current.map(|(_, record, _)| record))
            .map_err(|e| match e {
                WriteError::Backend(message) => StoreError::Backend(message),
                WriteError::Conflict => StoreError::Backend("key read raced a writer".into()),
            })
    }

    async fn insert(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError> {
        let key_item = &key_item(hash, record)?;
        let id_item = &id_item(&record.id, hash);
        let inserted = retry_on_conflict("creating a key", || async move {
            let result = self
                .client
                .transact_write_items()
                .transact_items(transact_put(
                    &self.table,
                    key_item.clone(),
                    Condition::absent(),
                )?)
                .transact_items(transact_put(
                    &self.table,
                    id_item.clone(),
                    Condition::absent(),
                )?)
                .send()
                .await;
            match result {
                Ok(_) => Ok(true),
                Err(error) => match rejection(&error) {
                    Some(Rejection::Condition(_)) => Ok(false),
                    Some(Rejection::Conflict) => Err(WriteError::Conflict),
                    None => Err(WriteError::Backend(sdk_message(
                        "TransactWriteItems on the keys table",
                        &error,
                    ))),
                },
            }
        })
        .await
        .map_err(StoreError::Backend)?;
        if inserted {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("key `{}`", record.id)))
        }
    }

    /// Keeps the pairing `key#<hash>` <-> `id#<id>` intact when either side moves: the old key
    /// item of this id and the old id item of this hash are deleted in the same transaction.
    /// Every Lambda container runs this at start-up for the bootstrap admin key, so concurrent
    /// calls are the normal case: each write is conditional on the state it read, and retried.
    async fn upsert(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError> {
        let key_item = &key_item(hash, record)?;
        let id = record.id.as_str();
        retry_on_conflict("replacing a key", || async move {
            let (hash_of_id, id_of_hash) = tokio::try_join!(
                self.read_key_attr(id_pk(id), HASH),
                self.read_key_attr(key_pk(hash), ID),
            )?;
            if hash_of_id.as_deref() == Some(hash) && id_of_hash.as_deref() == Some(id) {
                // Already paired: a single conditional put, which never meets a transaction.
                let condition = Condition::holds(ID, id);
                let result = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(key_item.clone()))
                    .condition_expression(condition.expression)
                    .set_expression_attribute_values(condition.values())
                    .set_expression_attribute_names(Some(condition.names))
                    .send()
                    .await;
                return raced("PutItem on the keys table", result).map(drop);
            }
            let mut transaction = self
                .client
                .transact_write_items()
                .transact_items(transact_put(
                    &self.table,
                    key_item.clone(),
                    match &id_of_hash {
                        Some(previous) => Condition::holds(ID, previous),
                        None => Condition::absent(),
                    },
                )?)
                .transact_items(transact_put(
                    &self.table,
                    id_item(id, hash),
                    match &hash_of_id {
                        Some(previous) => Condition::holds(HASH, previous),
                        None => Condition::absent(),
                    },
                )?);
            if let Some(old_hash) = hash_of_id.as_deref().filter(|h| *h != hash) {
                transaction = transaction.transact_items(transact_delete(
                    &self.table,
                    key_pk(old_hash),
                    Condition::absent_or_holds(ID, id),
                )?);
            }
            if let Some(old_id) = id_of_hash.as_deref().filter(|i| *i != id) {
                transaction = transaction.transact_items(transact_delete(
                    &self.table,
                    id_pk(old_id),
                    Condition::absent_or_holds(HASH, hash),
                )?);
            }
            raced(
                "TransactWriteItems on the keys table",
                transaction.send().await,
            )
            .map(drop)
        })
        .await
        .map_err(StoreError::Backend)
    }

    /// Scans the table (an admin operation, not on the request path), sorted by id.
    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut items = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("begins_with(#pk, :prefix)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":prefix", s("key#"))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        let mut records = Vec::new();
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| backend("Scan on the keys table", &e))?;
            // Rotated-out secrets have no record of their own.
            if item.contains_key(RECORD) {
                records.push(decode_record(&item)?);
            }
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    async fn update(
        &self,
        id: &str,
        change: &KeyEdit<'_>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        retry_on_conflict("changing a key", || async move {
            let Some((hash, mut record, old_json)) = self.read_current(id).await? else {
                return Ok(None);
            };
            change(&mut record);
            // Conditional on the record read, so a concurrent change is not overwritten.
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(PK, s(key_pk(&hash)))
                .update_expression("SET #record = :new")
                .condition_expression("#record = :old")
                .expression_attribute_names("#record", RECORD)
                .expression_attribute_values(":new", s(encode(&record)?))
                .expression_attribute_values(":old", s(old_json))
                .send()
                .await;
            raced("UpdateItem on the keys table", result).map(|_| Some(record))
        })
        .await
        .map_err(StoreError::Backend)
    }

    /// One transaction: the new key item, the id item pointed at it, and the old key item
    /// replaced by a superseded item (conditional on the record read, so a concurrent change or
    /// rotation makes this one retry on the new state).
    async fn rotate(
        &self,
        id: &str,
        new_hash: &str,
        prefix: Option<&str>,
        old_valid_until: u64,
    ) -> Result<Option<KeyRecord>, StoreError> {
        retry_on_conflict("rotating a key", || async move {
            let Some((old_hash, mut record, old_json)) = self.read_current(id).await? else {
                return Ok(None);
            };
            record.prefix = prefix.map(str::to_owned);
            let new_item =
                key_item(new_hash, &record).map_err(|e| WriteError::Backend(e.to_string()))?;
            let superseded = HashMap::from([
                (PK.to_owned(), s(key_pk(&old_hash))),
                (ID.to_owned(), s(id)),
                (VALID_UNTIL.to_owned(), n(old_valid_until)),
                (
                    EXPIRES_AT.to_owned(),
                    n(old_valid_until.saturating_add(SUPERSEDED_ITEM_TTL_SECS)),
                ),
            ]);
            let transaction = self
                .client
                .transact_write_items()
                .transact_items(transact_put(&self.table, new_item, Condition::absent())?)
                .transact_items(transact_put(
                    &self.table,
                    id_item(id, new_hash),
                    Condition::holds(HASH, &old_hash),
                )?)
                .transact_items(transact_put(
                    &self.table,
                    superseded,
                    Condition::holds(RECORD, &old_json),
                )?);
            raced(
                "TransactWriteItems on the keys table",
                transaction.send().await,
            )
            .map(|_| Some(record))
        })
        .await
        .map_err(StoreError::Backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_keys_follow_the_documented_layout() {
        assert_eq!(key_pk("ab12"), "key#ab12");
        assert_eq!(id_pk("key_9"), "id#key_9");
    }
}
