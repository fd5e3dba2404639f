//! File bodies (batch inputs, upload parts, batch outputs): objects in the stack's bucket on AWS
//! (`s3.rs`), files under the data directory locally (`folder.rs`). Their metadata lives with
//! the batches (`batch::store`). Object keys are made by the gateway from its own ids, never from
//! client input.

pub mod folder;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StoreError;

#[async_trait]
pub trait FileBodies: Send + Sync {
    /// Writes (or overwrites) an object.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError>;
    /// Reads an object; `None` if there is none under `key`.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    /// Deletes an object; deleting a missing one is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// The object key of an uploaded file's body.
pub fn file_key(file_id: &str) -> String {
    format!("files/{file_id}")
}

/// The object key of one part of an upload.
pub fn part_key(upload_id: &str, part_id: &str) -> String {
    format!("uploads/{upload_id}/{part_id}")
}

/// The object key of a batch's output or error file, under the prefix the bucket expires.
pub fn output_key(prefix: &str, batch_id: &str, name: &str) -> String {
    format!("{prefix}{batch_id}/{name}")
}
