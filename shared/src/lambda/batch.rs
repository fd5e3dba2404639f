//! The `batch` function's events: SQS records (answered with `batchItemFailures`, so only the
//! records left for redelivery come back) and the scheduled sweep (an EventBridge "Scheduled
//! Event": completion windows and unfinished finalizing).

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use serde_json::{Value, json};

use crate::batch::worker::Worker;
use crate::queue::Received;

pub async fn handle_event(worker: &Worker, event: Value) -> Result<Value, String> {
    if event.get("Records").is_some() {
        let event: SqsEvent =
            serde_json::from_value(event).map_err(|e| format!("not an SQS event: {e}"))?;
        let mut messages = Vec::with_capacity(event.records.len());
        let mut sent_at = Vec::with_capacity(event.records.len());
        for record in event.records {
            let attribute = |name: &str| {
                record
                    .attributes
                    .get(name)
                    .and_then(|v| v.parse::<u64>().ok())
            };
            sent_at.push(attribute("SentTimestamp"));
            messages.push(Received {
                // Lambda names failed records by message id.
                handle: record.message_id.clone().unwrap_or_default(),
                receive_count: attribute("ApproximateReceiveCount")
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(1),
                body: record.body.unwrap_or_default(),
            });
        }
        let failed = worker.handle_all(messages, sent_at).await;
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = failed
            .into_iter()
            .map(|id| {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                failure
            })
            .collect();
        return serde_json::to_value(response).map_err(|e| e.to_string());
    }
    if event.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event") {
        let expired = worker
            .sweep()
            .await
            .map_err(|e| format!("the batch sweep failed: {e}"))?;
        return Ok(json!({"expired": expired}));
    }
    Err("the batch function takes SQS events and the scheduled sweep only".into())
}
