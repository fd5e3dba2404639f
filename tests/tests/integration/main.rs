//! The integration tests, as one test binary: one link instead of one per file, and one moto
//! server and one `METRICS` registry for the whole process (see `common`). Each module is a
//! concern; `cargo test -p gateway-tests --test integration <module>::` runs one of them.

mod common;

mod authorizer;
mod aws_backend;
mod balancing;
mod batch_aws;
mod batch_cli;
mod batch_lambda;
mod batch_local;
mod batch_message_schema;
mod chat_api;
mod connections;
mod crash_recovery;
mod dynamo;
mod embedding_cache;
mod guard_injection;
mod guard_pii;
mod hardening;
mod ingest_api;
mod ingest_cli;
mod ingest_lambda;
mod keys_and_limits;
mod lambda_chat;
mod lambda_watch;
mod log_secrets;
mod malformed_bodies;
mod memcached;
mod messages;
mod messages_passthrough;
mod metrics_and_logs;
mod otlp_traces;
mod output_validation;
mod providers;
mod rag_chat;
mod redis_backend;
mod replay;
mod resilience;
mod response_cache;
mod responses;
mod scopes;
mod stored_responses;
mod tenant_boundaries;
mod three_apis;
mod usage;
mod vectors_aws;
mod vectors_conformance;
mod vectors_pinecone;
mod vectors_weaviate;
