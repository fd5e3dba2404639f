//! The batch queue on SQS: the stack's queue, and its dead-letter queue for messages that can
//! never be processed. Endpoints and credentials come from the standard AWS environment
//! (`AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL` included), so the same code runs against SQS and
//! against moto.
//!
//! On Lambda the event source mapping receives and deletes; `receive` and `delete` serve the
//! local tools and the tests.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};

use crate::error::StoreError;
use crate::queue::{MAX_DELAY_SECS, Queue, Received, SEND_BATCH_MAX};

/// Bounds on every SQS call but a long-polling receive, so an unreachable queue fails a request
/// within seconds instead of holding it until the Lambda times out.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// SQS's longest long poll.
const MAX_WAIT_SECS: u32 = 20;
/// How long a receive may take beyond its long poll (the answer still has to arrive).
const RECEIVE_MARGIN: Duration = Duration::from_secs(5);
/// SQS takes at most 10 messages per `ReceiveMessage`.
const RECEIVE_MAX: usize = 10;
/// The message attribute `dead_letter` names the reason in.
pub const REASON_ATTRIBUTE: &str = "reason";

/// An SQS client over an AWS config the process already loaded, each call bounded by
/// `ATTEMPT_TIMEOUT` / `OPERATION_TIMEOUT` (a receive by its wait plus `RECEIVE_MARGIN`).
pub fn client(sdk_config: &aws_config::SdkConfig) -> Client {
    let timeouts = TimeoutConfig::builder()
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build();
    Client::from_conf(
        aws_sdk_sqs::config::Builder::from(sdk_config)
            .timeout_config(timeouts)
            .build(),
    )
}

/// The batch queue and, when configured, its dead-letter queue.
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dead_letter_url: Option<String>,
}

impl SqsQueue {
    pub fn new(client: Client, queue_url: String, dead_letter_url: Option<String>) -> Self {
        Self {
            client,
            queue_url,
            dead_letter_url,
        }
    }
}

/// A failed SQS call in our terms: what failed, and the SDK's description of why (which never
/// carries credentials; the queue URL is left out of `what`).
fn backend(what: &str, error: &impl std::error::Error) -> StoreError {
    StoreError::Backend(format!("SQS {what} failed: {}", DisplayErrorContext(error)))
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, bodies: &[String], delay_secs: u32) -> Result<(), StoreError> {
        let delay = i32::try_from(delay_secs.min(MAX_DELAY_SECS)).unwrap_or(0);
        for group in bodies.chunks(SEND_BATCH_MAX) {
            let mut entries = Vec::with_capacity(group.len());
            for (index, body) in group.iter().enumerate() {
                // Ids only need to be unique within one call.
                let entry = SendMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .message_body(body)
                    .delay_seconds(delay)
                    .build()
                    .map_err(|e| {
                        StoreError::Backend(format!("invalid SQS SendMessageBatch entry: {e}"))
                    })?;
                entries.push(entry);
            }
            let output = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| backend("SendMessageBatch to the batch queue", &e))?;
            if let Some(refused) = output.failed().first() {
                return Err(StoreError::Backend(format!(
                    "SQS SendMessageBatch to the batch queue refused {} of {} messages: {} ({})",
                    output.failed().len(),
                    group.len(),
                    refused.code(),
                    refused.message().unwrap_or("no message"),
                )));
            }
        }
        Ok(())
    }

    async fn dead_letter(&self, body: &str, reason: &str) -> Result<(), StoreError> {
        let Some(dead_letter_url) = &self.dead_letter_url else {
            return Err(StoreError::Backend(
                "no dead-letter queue is configured (GATEWAY_BATCH_DLQ_URL)".into(),
            ));
        };
        let reason = MessageAttributeValue::builder()
            .data_type("String")
            // SQS refuses an empty attribute value.
            .string_value(if reason.is_empty() { "unknown" } else { reason })
            .build()
            .map_err(|e| StoreError::Backend(format!("invalid SQS message attribute: {e}")))?;
        self.client
            .send_message()
            .queue_url(dead_letter_url)
            .message_body(body)
            .message_attributes(REASON_ATTRIBUTE, reason)
            .send()
            .await
            .map_err(|e| backend("SendMessage to the dead-letter queue", &e))?;
        Ok(())
    }

    async fn receive(&self, max: usize, wait_secs: u32) -> Result<Vec<Received>, StoreError> {
        let max = i32::try_from(max.clamp(1, RECEIVE_MAX)).unwrap_or(1);
        let wait_secs = wait_secs.min(MAX_WAIT_SECS);
        let bound = Duration::from_secs(u64::from(wait_secs)) + RECEIVE_MARGIN;
        let timeouts = TimeoutConfig::builder()
            .operation_attempt_timeout(bound)
            .operation_timeout(bound)
            .build();
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max)
            .wait_time_seconds(i32::try_from(wait_secs).unwrap_or(0))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .customize()
            .config_override(aws_sdk_sqs::config::Builder::default().timeout_config(timeouts))
            .send()
            .await
            .map_err(|e| backend("ReceiveMessage from the batch queue", &e))?;
        let mut received = Vec::with_capacity(output.messages().len());
        for message in output.messages() {
            let Some(handle) = message.receipt_handle() else {
                // Without a receipt handle the message cannot be acknowledged; SQS always
                // sends one, and the message comes back after its visibility timeout anyway.
                continue;
            };
            let receive_count = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|count| count.parse().ok())
                .unwrap_or(1);
            received.push(Received {
                handle: handle.to_owned(),
                body: message.body().unwrap_or_default().to_owned(),
                receive_count,
            });
        }
        Ok(received)
    }

    async fn delete(&self, handle: &str) -> Result<(), StoreError> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(handle)
            .send()
            .await
            .map_err(|e| backend("DeleteMessage from the batch queue", &e))?;
        Ok(())
    }
}
