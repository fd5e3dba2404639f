//! The gateway library: everything that is not an entrypoint.
//!
//! Dependencies point one way: `lambda` -> `http` -> `pipeline` -> `state` -> {`routing`,
//! `limits`, `keys`, `cache`, `batch`, `ingest`, `rag`, `guard`} -> {`providers`, `storage`,
//! `queue`, `files`, `vectors`} -> {`api`, `config`, `telemetry`, `error`, `clock`}. The batch
//! worker reaches the pipeline only through its `ItemRunner` trait, which `pipeline::batch`
//! implements; what needs the whole `Gateway` (embedding through the router, ingest, retrieval,
//! RAG chat, the semantic cache) lives in `pipeline`, over the gateway-free parts in `ingest`,
//! `rag`, `cache` and `vectors`.

pub mod api;
pub mod backends;
pub mod background;
pub mod batch;
pub mod cache;
pub mod clock;
pub mod config;
pub mod error;
pub mod files;
pub mod guard;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod lambda;
pub mod limits;
pub mod pipeline;
pub mod providers;
pub mod queue;
pub mod rag;
pub mod responses;
pub mod routing;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod usage;
pub mod vectors;
