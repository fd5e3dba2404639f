//! The batch queue: at-least-once delivery with a visibility timeout, a receive count per message
//! and a dead-letter queue. SQS on AWS (`sqs.rs`); locally a table of the embedded store with the
//! same semantics (`embedded.rs`), so a killed process loses nothing that was enqueued.
//!
//! On Lambda the event source mapping receives and deletes (a record missing from
//! `batchItemFailures` is deleted); `receive` and `delete` serve the local worker, the CLI and
//! the tests.

pub mod embedded;
pub mod sqs;

use async_trait::async_trait;

use crate::error::StoreError;

/// SQS takes at most 10 messages per `SendMessageBatch`.
pub const SEND_BATCH_MAX: usize = 10;
/// SQS's longest delivery delay.
pub const MAX_DELAY_SECS: u32 = 900;

/// A message taken from the queue, hidden from other receivers until it is deleted or its
/// visibility timeout passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// What `delete` needs (SQS's receipt handle; the row id locally).
    pub handle: String,
    pub body: String,
    /// How many times it has been received, this time included (SQS's `ApproximateReceiveCount`).
    pub receive_count: u32,
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Enqueues `bodies`, each delivered after `delay_secs` (at most `MAX_DELAY_SECS`). Splits
    /// into calls of `SEND_BATCH_MAX`; fails if any message was refused (resending is harmless:
    /// every consumer is idempotent).
    async fn send(&self, bodies: &[String], delay_secs: u32) -> Result<(), StoreError>;
    /// Moves a message that can never be processed to the dead-letter queue, with the reason
    /// (an SQS message attribute `reason`; a column locally).
    async fn dead_letter(&self, body: &str, reason: &str) -> Result<(), StoreError>;
    /// Takes up to `max` visible messages (at most 10), waiting up to `wait_secs` for one.
    async fn receive(&self, max: usize, wait_secs: u32) -> Result<Vec<Received>, StoreError>;
    /// Acknowledges a message: it is never delivered again.
    async fn delete(&self, handle: &str) -> Result<(), StoreError>;
}
