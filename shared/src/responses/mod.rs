//! Stored Responses API objects (`store: true`), per tenant and with an expiry: what
//! `GET /v1/responses/{id}` returns and what `previous_response_id` continues. The document is
//! opaque here; the Responses front end (`http::responses`) decides what it holds.

pub mod dynamo;
pub mod embedded;

use std::sync::Arc;

use bytes::Bytes;

use crate::error::StoreError;

/// The largest stored document: DynamoDB items are at most 400 KB, the key and the other
/// attributes included (the embedded store keeps the same bound, so both behave alike).
pub const MAX_STORED_RESPONSE_BYTES: usize = 350 * 1024;

/// How long a stored response is kept: 30 days, as OpenAI keeps them.
pub const DEFAULT_RESPONSE_TTL_SECS: u64 = 30 * 24 * 3600;

/// Stored responses by tenant and id.
#[async_trait::async_trait]
pub trait ResponseStore: Send + Sync {
    /// Stores `document` under (`tenant`, `id`) for `ttl_s` seconds, replacing one of the same
    /// id. `StoreError::Invalid` when it is over [`MAX_STORED_RESPONSE_BYTES`].
    async fn put(
        &self,
        tenant: &str,
        id: &str,
        document: Bytes,
        ttl_s: u64,
    ) -> Result<(), StoreError>;
    /// The document, or `None` when it is absent, has expired or is another tenant's.
    async fn get(&self, tenant: &str, id: &str) -> Result<Option<Bytes>, StoreError>;
    /// Deletes the document; `true` when it existed for this tenant (and had not expired).
    async fn delete(&self, tenant: &str, id: &str) -> Result<bool, StoreError>;
}

/// Refuses a document over [`MAX_STORED_RESPONSE_BYTES`].
pub(crate) fn check_size(document: &[u8]) -> Result<(), StoreError> {
    if document.len() > MAX_STORED_RESPONSE_BYTES {
        return Err(StoreError::Invalid(format!(
            "the response is {} bytes, over the {MAX_STORED_RESPONSE_BYTES} bytes a stored \
             response may take",
            document.len()
        )));
    }
    Ok(())
}

/// On AWS, the responses table named by `GATEWAY_RESPONSES_TABLE`; `None` when it is not set
/// (responses are then answered but not stored).
pub fn dynamo_store_from_env(
    client: &aws_sdk_dynamodb::Client,
    lookup: impl Fn(&str) -> Option<String>,
) -> Option<Arc<dyn ResponseStore>> {
    lookup(dynamo::RESPONSES_TABLE_ENV)
        .filter(|table| !table.trim().is_empty())
        .map(|table| Arc::new(dynamo::DynamoResponseStore::new(client.clone(), table)) as _)
}
