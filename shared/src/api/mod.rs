//! OpenAI wire types (and Anthropic's Messages API in `messages`, OpenAI's Responses API in
//! `responses`) and request validation.
//!
//! Request types name the fields the gateway reads and keep every other field in `extra`, so what
//! an SDK sends (including fields newer than this code) is forwarded upstream, not dropped.

mod assembler;
mod chat;
mod embeddings;
pub mod messages;
mod models;
#[cfg(test)]
pub(crate) mod parse_properties;
pub mod responses;
pub mod tokenizer;

pub use assembler::*;
pub use chat::*;
pub use embeddings::*;
pub use models::*;

pub type JsonObject = serde_json::Map<String, serde_json::Value>;
