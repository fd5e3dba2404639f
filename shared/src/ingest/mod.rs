//! Collections and their documents: chunking, the embedding cache, the collection store (records
//! of collections, documents and ingest jobs), the collections API's shapes and bounds, and the
//! ingest path's backends. The pipeline that embeds and writes vectors is `pipeline::ingest`;
//! retrieval is `pipeline::retrieve`.

pub mod api;
pub mod backends;
pub mod chunking;
pub mod dynamo;
pub mod embedded;
pub mod embedding_cache;
pub mod store;
