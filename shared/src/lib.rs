//! The gateway library: everything that is not an entrypoint.
//!
//! Dependencies point one way: `lambda` -> `http` -> `pipeline` -> `state` -> {`routing`,
//! `limits`, `keys`, `cache`, `batch`, `ingest`, `rag`, `guard`} -> {`providers`, `storage`,
//! `queue`, `files`, `vectors`} -> {`api`, `config`, `telemetry`, `error`, `clock`}. The batch
//! worker reaches the pipeline only through its `ItemRunner` trait, which `pipeline::batch`
//! implements; what needs the whole `Gateway` (embedding through the router, ingest, retrieval,
//! RAG chat, the semantic cache) lives in `pipeline`, over the gateway-free parts in `ingest`,
//! `rag`, `cache` and `vectors`.

/// mimalloc instead of glibc's malloc, in every binary that turns the feature on: a request and
/// each streamed chunk allocate and free many small buffers (about 220 allocations for a plain
/// request), and mimalloc's paths for them are several times shorter (tests/bench/PROFILE.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
