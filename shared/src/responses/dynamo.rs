//! Stored responses in DynamoDB (the responses table, `GATEWAY_RESPONSES_TABLE`):
//! `pk = "response#<id>"`: `tenant` (S), `body` (B, deflated when that makes it smaller, `enc`
//! naming it), `expires_at` (N, the table's TTL). Ids are random, so one partition key per
//! response; the tenant is checked on every read and delete, so another tenant's id reads as
//! absent.

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::ReturnValue;
use bytes::Bytes;

use crate::clock::now_secs;
use crate::error::StoreError;
use crate::responses::{ResponseStore, check_size};
use crate::storage::compressed::{StoredBody, take_body};
use crate::storage::dynamo::{EXPIRES_AT, PK, backend, n, number_attr, s, string_attr};

const TENANT: &str = "tenant";

/// The environment variable naming the table.
pub const RESPONSES_TABLE_ENV: &str = "GATEWAY_RESPONSES_TABLE";

pub struct DynamoResponseStore {
    client: Client,
    table: String,
}

impl DynamoResponseStore {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }
}

fn response_pk(id: &str) -> String {
    format!("response#{id}")
}

#[async_trait]
impl ResponseStore for DynamoResponseStore {
    async fn put(
        &self,
        tenant: &str,
        id: &str,
        document: Bytes,
        ttl_s: u64,
    ) -> Result<(), StoreError> {
        check_size(&document)?;
        let stored = StoredBody::encode(&document)
            .map_err(|e| StoreError::Backend(format!("cannot compress a stored response: {e}")))?;
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(response_pk(id)))
            .item(TENANT, s(tenant))
            .item(EXPIRES_AT, n(now_secs().saturating_add(ttl_s)));
        for (name, value) in stored.into_attributes() {
            request = request.item(name, value);
        }
        request
            .send()
            .await
            .map_err(|e| backend("PutItem on the responses table", &e))?;
        Ok(())
    }

    async fn get(&self, tenant: &str, id: &str) -> Result<Option<Bytes>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(response_pk(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend("GetItem on the responses table", &e))?;
        let Some(mut item) = output.item else {
            return Ok(None);
        };
        // DynamoDB deletes expired items lazily (moto never does): expiry is checked here.
        let live = number_attr::<u64>(&item, EXPIRES_AT).is_some_and(|at| at > now_secs());
        if !live || string_attr(&item, TENANT).as_deref() != Some(tenant) {
            return Ok(None);
        }
        take_body(&mut item, "stored response").map(Some)
    }

    async fn delete(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(response_pk(id)))
            .condition_expression("#tenant = :tenant AND #expires > :now")
            .expression_attribute_names("#tenant", TENANT)
            .expression_attribute_names("#expires", EXPIRES_AT)
            .expression_attribute_values(":tenant", s(tenant))
            .expression_attribute_values(":now", n(now_secs()))
            .return_values(ReturnValue::None)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(error) => Err(backend("DeleteItem on the responses table", &error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_keys_follow_the_documented_layout() {
        assert_eq!(response_pk("resp_abc"), "response#resp_abc");
    }
}
