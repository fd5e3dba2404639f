//! Batch items through the same phases as a client's request: the worker (`batch::worker`) hands
//! each item here with the key it acts for, so routing, retries, fallbacks, the cache, the key's
//! scope, limits and budget, and spend accounting apply to it exactly as to a call of the API.

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::Value;

use crate::batch::worker::ItemRunner;
use crate::error::ApiError;
use crate::keys::KeyRecord;
use crate::state::Gateway;

/// Most bytes of one item's answer kept (the gateway caps assembled answers at 16 MiB).
const MAX_ANSWER_BYTES: usize = 32 << 20;

pub struct PipelineRunner(pub Arc<Gateway>);

#[async_trait]
impl ItemRunner for PipelineRunner {
    async fn run(&self, key: &KeyRecord, endpoint: &str, body: &Value) -> Result<Bytes, ApiError> {
        let mut request = body.clone();
        // A batch item's answer is a record in a file: never a stream.
        if let Some(fields) = request.as_object_mut() {
            fields.remove("stream");
            fields.remove("stream_options");
        }
        let bytes = serde_json::to_vec(&request)
            .map_err(|e| ApiError::internal(format!("cannot encode a batch item: {e}")))?;
        let response = match endpoint {
            "/v1/chat/completions" => {
                super::chat::chat(&self.0, key, &HeaderMap::new(), &bytes, None).await?
            }
            "/v1/embeddings" => {
                super::embeddings::embed(&self.0, key, &HeaderMap::new(), &bytes, None).await?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "Endpoint `{other}` is not supported for batches."
                )));
            }
        };
        let answer = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
            .await
            .map_err(|e| ApiError::internal(format!("cannot read a batch item's answer: {e}")))?;
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Ok(super::pii::redact_stored_answer(
            &self.0, key, model, answer,
        ))
    }
}
