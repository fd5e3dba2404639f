//! Collections and their documents: chunking, the embedding cache, the collection store (records
//! of collections, documents and ingest jobs) and the ingest path's backends. The pipeline that
//! embeds and writes vectors is `pipeline::ingest`; retrieval is `pipeline::retrieve`.

pub mod api;
pub mod backends;
pub mod dynamo;
pub mod embedded;
pub mod store;
