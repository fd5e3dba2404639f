//! The plumbing the concern folders (`keys`, `cache`, `limits`) share: the embedded store's SQLite
//! file, connections and batching writer, and the DynamoDB client, tables and conflict handling.
//! Nothing here knows a concern's types; each concern's SQL and items are beside its trait.

pub mod compressed;
pub mod dynamo;
pub mod embedded;
#[cfg(feature = "redis")]
pub mod redis;
