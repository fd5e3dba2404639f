//! The `chat` Lambda: the shared router behind API Gateway, a Function URL or an ALB.
//!
//! Until the DynamoDB backends exist, it runs on the embedded backends in the container's `/tmp`,
//! so keys, limits and cache are per container (set `GATEWAY_ADMIN_KEY` to have a working key).

use std::sync::Arc;

use gateway::auth::ensure_admin_key;
use gateway::config::Config;
use gateway::gateway::Gateway;
use gateway::store::embedded::EmbeddedStore;
use lambda_http::Error;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    gateway::telemetry::init_logging();
    let config = match env("GATEWAY_CONFIG") {
        Some(path) => Config::from_toml(&std::fs::read_to_string(&path)?)?,
        None => Config::built_in(env),
    };
    let data_dir = env("GATEWAY_DATA_DIR").unwrap_or_else(|| "/tmp/gateway".to_owned());
    let store = EmbeddedStore::open(std::path::Path::new(&data_dir))?;
    if let Some(admin) = env("GATEWAY_ADMIN_KEY").filter(|k| !k.is_empty()) {
        ensure_admin_key(store.as_ref(), &admin, 0).await?;
    }
    let gateway = Arc::new(Gateway::new(&config, store.backends()?, &env)?);
    lambda_http::run(gateway::http::router(gateway)).await
}
