//! The bundle of backends an entrypoint hands to the gateway: embedded (`EmbeddedStore`) or AWS
//! (`storage::dynamo`).

use std::sync::Arc;

use crate::cache::CacheStore;
use crate::keys::KeyStore;
use crate::keys::edge::EdgeKeys;
use crate::limits::Limiter;

#[derive(Clone)]
pub struct Backends {
    pub keys: Arc<dyn KeyStore>,
    pub limiter: Arc<dyn Limiter>,
    pub cache: Arc<dyn CacheStore>,
    /// API Gateway keys for usage plans on AWS; nothing locally.
    pub edge: Arc<dyn EdgeKeys>,
}
