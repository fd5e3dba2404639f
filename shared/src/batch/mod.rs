//! Batch jobs, compatible with OpenAI's Files, Uploads and Batches APIs: the API logic
//! (`files_api`, `batches_api`), input validation (`input`), the worker that expands a batch
//! into queue messages, runs each item through the chat pipeline and writes the output files
//! (`worker`), and the queue's message schema (`messages`). The stores are behind
//! `store::BatchStore`, `files::FileBodies` and `queue::Queue`.

pub mod batches_api;
pub mod dynamo;
pub mod embedded;
pub mod files_api;
pub mod input;
pub mod messages;
pub mod store;
pub mod worker;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;

use rand::Rng;

use crate::clock::now_millis;
use crate::files::FileBodies;
use crate::files::folder::FolderBodies;
use crate::files::s3::S3Bodies;
use crate::queue::Queue;
use crate::queue::embedded::EmbeddedQueue;
use crate::queue::sqs::SqsQueue;
use crate::storage::embedded::EmbeddedStore;
use dynamo::DynamoBatchStore;
use store::BatchStore;

/// OpenAI's caps on a batch input file.
pub const MAX_FILE_BYTES: u64 = 200 * 1024 * 1024;
pub const MAX_REQUESTS: u64 = 50_000;
/// Longest input line: an item travels in one queue message (SQS takes 256 KiB).
pub const MAX_LINE_BYTES: usize = 200 * 1024;

/// Settings of the batch path (from the environment on Lambda, the config locally).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSettings {
    /// Key prefix of output and error files (the bucket expires it).
    pub output_prefix: String,
    /// Receives before SQS dead-letters a message (the queue's `maxReceiveCount`): an item that
    /// fails on its last receive is recorded as failed first, so its batch still completes.
    pub max_receives: u32,
    /// Items one worker runs at once.
    pub concurrency: usize,
    /// Times an item may be deferred by rate limits before a limit counts as a failure.
    pub max_deferrals: u32,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            output_prefix: "batch-outputs/".to_owned(),
            max_receives: 5,
            concurrency: 8,
            max_deferrals: 100,
        }
    }
}

impl BatchSettings {
    /// Reads `GATEWAY_BATCH_OUTPUT_PREFIX`, `GATEWAY_BATCH_MAX_RECEIVES`,
    /// `GATEWAY_BATCH_CONCURRENCY` and `GATEWAY_BATCH_MAX_DEFERRALS` through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut settings = Self::default();
        if let Some(prefix) = lookup("GATEWAY_BATCH_OUTPUT_PREFIX").filter(|p| !p.is_empty()) {
            settings.output_prefix = prefix;
        }
        let number = |name: &str, min: u64, max: u64| -> Result<Option<u64>, String> {
            match lookup(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(value) => value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .map(Some)
                    .ok_or_else(|| format!("{name} is `{value}`; expected {min} to {max}")),
            }
        };
        if let Some(n) = number("GATEWAY_BATCH_MAX_RECEIVES", 1, 1000)? {
            settings.max_receives = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = number("GATEWAY_BATCH_CONCURRENCY", 1, 1024)? {
            settings.concurrency = usize::try_from(n).unwrap_or(1);
        }
        if let Some(n) = number("GATEWAY_BATCH_MAX_DEFERRALS", 0, 10_000)? {
            settings.max_deferrals = u32::try_from(n).unwrap_or(u32::MAX);
        }
        Ok(settings)
    }
}

/// The batch path's backends: metadata and results, file bodies, and the queue.
#[derive(Clone)]
pub struct BatchBackends {
    pub store: Arc<dyn BatchStore>,
    pub bodies: Arc<dyn FileBodies>,
    pub queue: Arc<dyn Queue>,
    pub settings: BatchSettings,
}

/// How long a locally received batch message stays hidden: longer than an item can run (a
/// model's total timeout is 120 s by default), or it would run twice.
const LOCAL_VISIBILITY_SECS: u64 = 300;

impl BatchBackends {
    /// Locally: metadata and the queue in the embedded store, file bodies under
    /// `<dir>/objects`. Settings from `lookup` (`GATEWAY_BATCH_*`, and
    /// `GATEWAY_BATCH_VISIBILITY_SECS` for the queue's visibility timeout).
    pub fn embedded(
        store: &Arc<EmbeddedStore>,
        dir: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let visibility = match lookup("GATEWAY_BATCH_VISIBILITY_SECS").filter(|v| !v.is_empty()) {
            None => LOCAL_VISIBILITY_SECS,
            Some(value) => value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|secs| (1..=43_200).contains(secs))
                .ok_or_else(|| {
                    format!("GATEWAY_BATCH_VISIBILITY_SECS is `{value}`; expected 1 to 43200")
                })?,
        };
        let settings = BatchSettings::from_lookup(lookup)?;
        Ok(Self {
            store: store.clone(),
            bodies: Arc::new(FolderBodies::new(dir.join("objects"))),
            queue: Arc::new(EmbeddedQueue::new(
                Arc::clone(store),
                Duration::from_secs(visibility),
                settings.max_receives,
            )),
            settings,
        })
    }

    /// On AWS, when the stack names the batch table, the bucket and the queue
    /// (`GATEWAY_BATCH_TABLE`, `GATEWAY_BUCKET`, `GATEWAY_BATCH_QUEUE_URL`; the dead-letter queue
    /// by `GATEWAY_BATCH_DLQ_URL`); `None` when none is set.
    pub fn aws(
        sdk_config: &aws_config::SdkConfig,
        dynamo: &Client,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, String> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let (table, bucket, queue_url) = match (
            get("GATEWAY_BATCH_TABLE"),
            get("GATEWAY_BUCKET"),
            get("GATEWAY_BATCH_QUEUE_URL"),
        ) {
            (None, None, None) => return Ok(None),
            (Some(table), Some(bucket), Some(queue)) => (table, bucket, queue),
            _ => {
                return Err(
                    "batch jobs need all of GATEWAY_BATCH_TABLE, GATEWAY_BUCKET and \
                     GATEWAY_BATCH_QUEUE_URL"
                        .into(),
                );
            }
        };
        let settings = BatchSettings::from_lookup(&lookup)?;
        Ok(Some(Self {
            store: Arc::new(DynamoBatchStore::new(dynamo.clone(), table)),
            bodies: Arc::new(S3Bodies::new(crate::files::s3::client(sdk_config), bucket)),
            queue: Arc::new(SqsQueue::new(
                crate::queue::sqs::client(sdk_config),
                queue_url,
                get("GATEWAY_BATCH_DLQ_URL"),
            )),
            settings,
        }))
    }
}

/// A new id: `prefix`, then the creation time in milliseconds (12 hex digits, so ids sort by
/// age and lists page newest first by id), then 64 random bits.
pub fn new_id(prefix: &str) -> String {
    let random: u64 = rand::rng().random();
    format!("{prefix}{:012x}{random:016x}", now_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_time_and_settings_are_bounded() {
        let first = new_id("batch_");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_id("batch_");
        assert!(second > first, "{second} after {first}");
        assert_eq!(first.len(), "batch_".len() + 28);

        let env = |name: &str| match name {
            "GATEWAY_BATCH_MAX_RECEIVES" => Some("3".to_owned()),
            "GATEWAY_BATCH_CONCURRENCY" => Some("0".to_owned()),
            _ => None,
        };
        let error = BatchSettings::from_lookup(env).unwrap_err();
        assert!(error.contains("GATEWAY_BATCH_CONCURRENCY"), "{error}");
        let settings = BatchSettings::from_lookup(|name| {
            (name == "GATEWAY_BATCH_MAX_RECEIVES").then(|| "3".to_owned())
        })
        .unwrap();
        assert_eq!(settings.max_receives, 3);
        assert_eq!(settings.concurrency, 8);
    }
}
