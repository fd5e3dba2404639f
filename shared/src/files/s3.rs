//! File bodies as objects in the stack's bucket. Endpoints and credentials come from the standard
//! AWS environment (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` included), so the same code runs
//! against S3 and against moto.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use bytes::{Bytes, BytesMut};

use crate::error::StoreError;
use crate::files::FileBodies;

/// The largest object `get` reads into memory: OpenAI's file cap (200 MB) with room to spare.
pub const MAX_OBJECT_BYTES: u64 = 256 * 1024 * 1024;

/// Bounds on every S3 call. Bodies run to hundreds of megabytes (batch outputs), so a whole call
/// may take a while; a stalled connection is caught sooner by the connect and read timeouts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(15);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long reading a body may take once its headers arrived (the operation timeout ends there).
const BODY_TIMEOUT: Duration = Duration::from_secs(120);

/// An S3 client over an AWS config the process already loaded, with bounded calls. Path-style
/// addressing when an endpoint is configured: an emulator on `127.0.0.1` cannot serve
/// `<bucket>.127.0.0.1` virtual hosts.
pub fn client(sdk_config: &aws_config::SdkConfig) -> Client {
    let configured = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let custom_endpoint = sdk_config.endpoint_url().is_some()
        || configured("AWS_ENDPOINT_URL_S3")
        || configured("AWS_ENDPOINT_URL");
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .operation_attempt_timeout(OPERATION_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build();
    Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk_config)
            .timeout_config(timeouts)
            .force_path_style(custom_endpoint)
            .build(),
    )
}

/// Objects in one bucket.
pub struct S3Bodies {
    client: Client,
    bucket: String,
}

impl S3Bodies {
    pub fn new(client: Client, bucket: String) -> Self {
        Self { client, bucket }
    }
}

fn backend(what: &str, error: &impl std::error::Error) -> StoreError {
    StoreError::Backend(format!("S3 {what} failed: {}", DisplayErrorContext(error)))
}

fn too_large(key: &str) -> StoreError {
    StoreError::Backend(format!(
        "S3 object {key} is larger than the {MAX_OBJECT_BYTES} bytes a file may have"
    ))
}

/// Reads a body of at most `MAX_OBJECT_BYTES`, whatever length it announced.
async fn read_bounded(key: &str, mut body: ByteStream, capacity: u64) -> Result<Bytes, StoreError> {
    let mut buffer = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| backend(&format!("reading object {key}"), &e))?;
        if (buffer.len() + chunk.len()) as u64 > MAX_OBJECT_BYTES {
            return Err(too_large(key));
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

#[async_trait]
impl FileBodies for S3Bodies {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| backend(&format!("PutObject {key}"), &e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Ok(None);
            }
            Err(error) => return Err(backend(&format!("GetObject {key}"), &error)),
        };
        let length = output
            .content_length()
            .and_then(|length| u64::try_from(length).ok())
            .unwrap_or(0);
        if length > MAX_OBJECT_BYTES {
            return Err(too_large(key));
        }
        let body = tokio::time::timeout(BODY_TIMEOUT, read_bounded(key, output.body, length))
            .await
            .map_err(|_| {
                StoreError::Backend(format!(
                    "S3 GetObject {key}: the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ))
            })??;
        Ok(Some(body))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        // S3 answers 204 for a key that does not exist.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| backend(&format!("DeleteObject {key}"), &e))?;
        Ok(())
    }
}
