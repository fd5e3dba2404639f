//! The queue's message schema, version 1 (`infra/batch-message.schema.json` is its JSON Schema;
//! the README's "Enqueue a batch" section shows it in use). Three kinds:
//!
//! - `expand`: validate a batch's input file and fan it out into `item` messages (sent by
//!   `POST /v1/batches`, and by the expander itself to resume where it stopped);
//! - `item`: one line of a batch's input file;
//! - `request`: one request enqueued straight to SQS by a producer (`aws sqs send-message`),
//!   naming the key it acts for, a job id of its choosing and a `custom_id`; its result is read
//!   by job id and `custom_id` (`GET /v1/batches/{job_id}/results`).
//!
//! A message that does not parse, or names an unknown version, is dead-lettered with the reason.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const MESSAGE_VERSION: u32 = 1;

/// Longest `custom_id` and job id accepted (OpenAI sets no published bound; ids are keys here).
pub const MAX_ID_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    Expand {
        version: u32,
        tenant: String,
        batch_id: String,
    },
    Item {
        version: u32,
        tenant: String,
        batch_id: String,
        /// 0-based line of the input file.
        line: u64,
        custom_id: String,
        body: Value,
        /// Times a provider or the key's rate limit deferred it (not counted as receives).
        #[serde(default)]
        deferrals: u32,
    },
    Request {
        version: u32,
        key_id: String,
        job_id: String,
        custom_id: String,
        /// `/v1/chat/completions` or `/v1/embeddings`.
        url: String,
        body: Value,
        #[serde(default)]
        deferrals: u32,
    },
}

impl Message {
    /// Parses a message body, or says why it can never be processed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let message: Self =
            serde_json::from_str(text).map_err(|e| format!("not a batch message: {e}"))?;
        let version = match &message {
            Self::Expand { version, .. }
            | Self::Item { version, .. }
            | Self::Request { version, .. } => *version,
        };
        if version != MESSAGE_VERSION {
            return Err(format!(
                "message version {version} is not supported (this worker reads version {MESSAGE_VERSION})"
            ));
        }
        if let Self::Request {
            job_id, custom_id, ..
        } = &message
        {
            check_id("job_id", job_id)?;
            if custom_id.is_empty() || custom_id.len() > MAX_ID_LEN {
                return Err(format!(
                    "`custom_id` must have 1 to {MAX_ID_LEN} characters"
                ));
            }
        }
        Ok(message)
    }

    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail; an empty body would be dead-lettered.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The same message deferred once more.
    pub fn deferred(mut self) -> Self {
        match &mut self {
            Self::Item { deferrals, .. } | Self::Request { deferrals, .. } => {
                *deferrals = deferrals.saturating_add(1);
            }
            Self::Expand { .. } => {}
        }
        self
    }
}

/// Job ids of direct requests become batch ids: letters, digits, `-` and `_`.
pub fn check_id(name: &str, id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "`{name}` must be 1 to {MAX_ID_LEN} letters, digits, `-` or `_`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_request_parses_and_bad_messages_say_why() {
        let text = r#"{"type":"request","version":1,"key_id":"key_1","job_id":"nightly-7",
            "custom_id":"a","url":"/v1/chat/completions","body":{"model":"m"}}"#;
        let message = Message::parse(text).unwrap();
        assert!(matches!(message, Message::Request { ref job_id, .. } if job_id == "nightly-7"));
        assert_eq!(Message::parse(&message.to_json()).unwrap(), message);

        assert!(
            Message::parse("not json")
                .unwrap_err()
                .contains("not a batch message")
        );
        let future = text.replace("\"version\":1", "\"version\":2");
        assert!(Message::parse(&future).unwrap_err().contains("version 2"));
        let bad_job = text.replace("nightly-7", "../etc");
        assert!(Message::parse(&bad_job).unwrap_err().contains("job_id"));
        let unknown = text.replace("\"url\"", "\"extra\":1,\"url\"");
        assert!(Message::parse(&unknown).is_err());
    }
}
