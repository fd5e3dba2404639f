//! Turning documents into searchable chunks.

pub mod chunking;
