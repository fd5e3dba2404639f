//! Batch jobs, compatible with OpenAI's Files, Uploads and Batches APIs: the API logic, the
//! expander that fans a batch out into queue messages, the worker that runs each item through
//! the chat pipeline, and the finalizer that writes the output and error files.

pub mod embedded;
pub mod store;
