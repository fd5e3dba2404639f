//! Ingest: what turns documents into searchable vectors (chunking, the embedding cache, ingestion).

pub mod chunking;
pub mod embedding_cache;
