//! The stores behind the concern traits (`keys::KeyStore`, `cache::CacheStore`,
//! `limits::Limiter`): the embedded store (SQLite in a data directory) and the DynamoDB tables.

pub mod dynamo;
pub mod embedded;
