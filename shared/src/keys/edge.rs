//! API Gateway edge keys: on AWS every gateway key is mirrored by an API Gateway API key in the
//! usage plan of its tier (`free`, `standard`, `partner`), so API Gateway throttles and meters the
//! key before any Lambda runs.
//!
//! The client never sees that API key. The API takes API keys from its authorizer
//! (`ApiKeySourceType: AUTHORIZER`): the authorizer (`authorizer` below) looks the gateway key up
//! and returns the mirrored key's value as `usageIdentifierKey`. The value is random, unrelated to
//! the gateway secret, and presenting it to the API does nothing.
//!
//! [`provision`] and [`revoke`] do the store and the edge together, so the CLI and the admin API
//! share them: the local run passes [`NoEdgeKeys`], AWS [`ApiGatewayEdgeKeys`].

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_apigateway::Client;
use aws_sdk_apigateway::error::DisplayErrorContext;
use rand::Rng;
use rand::distr::Alphanumeric;

use crate::clock::now_secs;
use crate::error::ApiError;
use crate::error::StoreError;
use crate::keys::KeyStore;
use crate::keys::{KeyRecord, NewKey, TIERS, generate_key, hash_secret};

/// JSON object mapping each tier to the id of its usage plan, set by the SAM template.
pub const USAGE_PLAN_IDS_ENV: &str = "GATEWAY_USAGE_PLAN_IDS";

/// Length of a generated API Gateway key value (API Gateway wants 20 to 128 characters).
const USAGE_KEY_LEN: usize = 40;

/// Key management is not on the request path, but an admin call should still fail in seconds.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(15);

/// The API Gateway API key mirroring a gateway key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeKey {
    /// Its API Gateway id (deleting it needs the id; stored as `KeyRecord::usage_key_id`).
    pub id: String,
    /// Its value (returned by the authorizer; stored as `KeyRecord::usage_key`).
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EdgeError {
    #[error("no usage plan is configured for tier `{0}` ({USAGE_PLAN_IDS_ENV})")]
    NoUsagePlan(String),
    #[error("API Gateway failed: {0}")]
    Backend(String),
}

/// Where gateway keys get their edge (usage plan) identity.
#[async_trait]
pub trait EdgeKeys: Send + Sync {
    /// Creates the edge key of `record`: an API key named after the key id, in the usage plan of
    /// the record's tier. `None` when this edge has no keys (the local run).
    async fn attach(&self, record: &KeyRecord) -> Result<Option<EdgeKey>, EdgeError>;
    /// Deletes the edge key of `record` (which also takes it out of its usage plan). A record
    /// without one, or whose key is already gone, succeeds.
    async fn detach(&self, record: &KeyRecord) -> Result<(), EdgeError>;
}

/// No edge: the local run and the embedded backends, where the router enforces every limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEdgeKeys;

#[async_trait]
impl EdgeKeys for NoEdgeKeys {
    async fn attach(&self, _record: &KeyRecord) -> Result<Option<EdgeKey>, EdgeError> {
        Ok(None)
    }

    async fn detach(&self, _record: &KeyRecord) -> Result<(), EdgeError> {
        Ok(())
    }
}

/// API keys and usage plan keys through the API Gateway API.
///
/// IAM: `apigateway:POST` on `/apikeys` and `/usageplans/<plan>/keys`, `apigateway:DELETE` on
/// `/apikeys/*` (the chat function's `ApiKeys` statement in the template).
#[derive(Debug, Clone)]
pub struct ApiGatewayEdgeKeys {
    client: Client,
    usage_plans: HashMap<String, String>,
}

impl ApiGatewayEdgeKeys {
    pub fn new(client: Client, usage_plans: HashMap<String, String>) -> Self {
        Self {
            client,
            usage_plans,
        }
    }

    /// Usage plans from `GATEWAY_USAGE_PLAN_IDS`, region and credentials from the standard AWS
    /// environment. Call once per process.
    pub async fn from_env() -> Result<Self, String> {
        let plans = std::env::var(USAGE_PLAN_IDS_ENV).map_err(|_| {
            format!("{USAGE_PLAN_IDS_ENV} is not set: it maps key tiers to usage plan ids")
        })?;
        let usage_plans = parse_usage_plan_ids(&plans)?;
        let sdk_config = crate::tls::aws_config().load().await;
        Ok(Self::from_sdk_config(&sdk_config, usage_plans))
    }

    /// Over an already loaded AWS config (share it with the other clients of the process).
    pub fn from_sdk_config(
        sdk_config: &aws_config::SdkConfig,
        usage_plans: HashMap<String, String>,
    ) -> Self {
        let timeouts = TimeoutConfig::builder()
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(OPERATION_TIMEOUT)
            .build();
        let client = Client::from_conf(
            aws_sdk_apigateway::config::Builder::from(sdk_config)
                .timeout_config(timeouts)
                .build(),
        );
        Self::new(client, usage_plans)
    }

    async fn delete_api_key(&self, id: &str) -> Result<(), EdgeError> {
        match self.client.delete_api_key().api_key(id).send().await {
            Ok(_) => Ok(()),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_not_found_exception()) =>
            {
                Ok(())
            }
            Err(error) => Err(EdgeError::Backend(format!(
                "DeleteApiKey: {}",
                DisplayErrorContext(&error)
            ))),
        }
    }
}

#[async_trait]
impl EdgeKeys for ApiGatewayEdgeKeys {
    async fn attach(&self, record: &KeyRecord) -> Result<Option<EdgeKey>, EdgeError> {
        let tier = record.tier();
        let plan = self
            .usage_plans
            .get(tier)
            .ok_or_else(|| EdgeError::NoUsagePlan(tier.to_owned()))?;
        let value = new_usage_key();
        let created = self
            .client
            .create_api_key()
            .name(&record.id)
            .description(format!(
                "AI gateway key {} (tenant {}, tier {tier}); used by the authorizer only",
                record.id, record.tenant
            ))
            .enabled(true)
            .value(&value)
            .send()
            .await
            .map_err(|e| {
                EdgeError::Backend(format!("CreateApiKey: {}", DisplayErrorContext(&e)))
            })?;
        let id = created
            .id()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| EdgeError::Backend("CreateApiKey returned no key id".to_owned()))?
            .to_owned();
        let added = self
            .client
            .create_usage_plan_key()
            .usage_plan_id(plan)
            .key_id(&id)
            .key_type("API_KEY")
            .send()
            .await;
        if let Err(error) = added {
            let error = EdgeError::Backend(format!(
                "CreateUsagePlanKey: {}",
                DisplayErrorContext(&error)
            ));
            // A key outside every plan is useless: do not leave it behind.
            if let Err(cleanup) = self.delete_api_key(&id).await {
                tracing::warn!(key_id = %record.id, api_key_id = %id, error = %cleanup,
                    "could not delete an API Gateway key left outside its usage plan");
            }
            return Err(error);
        }
        Ok(Some(EdgeKey { id, value }))
    }

    async fn detach(&self, record: &KeyRecord) -> Result<(), EdgeError> {
        match record.usage_key_id.as_deref() {
            Some(id) => self.delete_api_key(id).await,
            None => Ok(()),
        }
    }
}

/// Parses `GATEWAY_USAGE_PLAN_IDS` (`{"free": "<id>", "standard": "<id>", "partner": "<id>"}`).
pub fn parse_usage_plan_ids(json: &str) -> Result<HashMap<String, String>, String> {
    let plans: HashMap<String, String> = serde_json::from_str(json).map_err(|e| {
        format!("{USAGE_PLAN_IDS_ENV} must be a JSON object of tier -> usage plan id: {e}")
    })?;
    for (tier, id) in &plans {
        if !TIERS.contains(&tier.as_str()) {
            return Err(format!(
                "{USAGE_PLAN_IDS_ENV} names the unknown tier `{tier}`; tiers are {}",
                TIERS.join(", ")
            ));
        }
        if id.trim().is_empty() {
            return Err(format!(
                "{USAGE_PLAN_IDS_ENV} has an empty usage plan id for `{tier}`"
            ));
        }
    }
    Ok(plans)
}

/// A random API Gateway key value. It identifies the key to the usage plan; it is not a secret
/// that grants anything (see the module documentation).
fn new_usage_key() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(USAGE_KEY_LEN)
        .map(char::from)
        .collect()
}

/// Why creating or revoking a key failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The request was invalid (no name, bad budget, unknown tier).
    #[error("{0}")]
    Invalid(ApiError),
    #[error("key store: {0}")]
    Store(#[from] StoreError),
    #[error("API Gateway key: {0}")]
    Edge(#[from] EdgeError),
    /// The key is revoked in the store (it no longer authenticates), but its API Gateway key
    /// could not be deleted. Revoking it again retries the deletion.
    #[error(
        "key `{id}` is revoked, but deleting its API Gateway key failed ({reason}); \
         revoke it again to retry"
    )]
    EdgeCleanup { id: String, reason: String },
}

impl From<ApiError> for ProvisionError {
    fn from(error: ApiError) -> Self {
        Self::Invalid(error)
    }
}

impl From<ProvisionError> for ApiError {
    fn from(error: ProvisionError) -> Self {
        match error {
            ProvisionError::Invalid(error) => error,
            ProvisionError::Store(error) => ApiError::from(error),
            ProvisionError::Edge(error @ EdgeError::NoUsagePlan(_)) => {
                ApiError::internal("No usage plan is configured for this key tier.")
                    .with_cause(error)
            }
            ProvisionError::Edge(error) => ApiError::unavailable(
                "The key's API Gateway key could not be created; try again shortly.",
            )
            .with_cause(error),
            ProvisionError::EdgeCleanup { id, reason } => ApiError::unavailable(format!(
                "Key `{id}` is revoked, but its API Gateway key could not be deleted; \
                 revoke it again to finish."
            ))
            .with_cause(format!(
                "deleting the API Gateway key of key `{id}`: {reason}"
            )),
        }
    }
}

/// Creates a key in the store and at the edge: returns the secret (shown once) and the stored
/// record. The edge key is created first, so a stored key always has its usage plan; if the store
/// refuses the key, the edge key is deleted again.
pub async fn provision(
    keys: &dyn KeyStore,
    edge: &dyn EdgeKeys,
    new: NewKey,
) -> Result<(String, KeyRecord), ProvisionError> {
    let (hash, secret, mut record) = generate_key(new, now_secs())?;
    if let Some(edge_key) = edge.attach(&record).await? {
        record.usage_key = Some(edge_key.value);
        record.usage_key_id = Some(edge_key.id);
    }
    if let Err(error) = keys.insert(&hash, &record).await {
        if let Err(cleanup) = edge.detach(&record).await {
            tracing::warn!(key_id = %record.id, error = %cleanup,
                "could not delete the API Gateway key of a key the store refused");
        }
        return Err(error.into());
    }
    Ok((secret, record))
}

/// Revokes a key in the store, then deletes its edge key. `false` if no key has that id.
///
/// The key stops authenticating everywhere within the key caches' TTLs (the authorizer's
/// `GATEWAY_KEY_CACHE_TTL_MS` plus API Gateway's authorizer cache TTL); a caller holding an
/// `Authenticator` should also `invalidate()` it so this process refuses the key at once.
pub async fn revoke(
    keys: &dyn KeyStore,
    edge: &dyn EdgeKeys,
    id: &str,
) -> Result<bool, ProvisionError> {
    if !keys.revoke(id).await? {
        return Ok(false);
    }
    let cleanup = |reason: String| ProvisionError::EdgeCleanup {
        id: id.to_owned(),
        reason,
    };
    // The record names its API Gateway key. `KeyStore` reads keys by hash only, so the record is
    // found in the list (an admin operation, not on the request path).
    let record = keys
        .list()
        .await
        .map_err(|e| cleanup(e.to_string()))?
        .into_iter()
        .find(|record| record.id == id);
    if let Some(record) = record {
        edge.detach(&record)
            .await
            .map_err(|e| cleanup(e.to_string()))?;
    }
    Ok(true)
}

/// `GATEWAY_ADMIN_KEY` with an edge: makes `secret` the admin key (like
/// [`crate::keys::ensure_admin_key`]) and gives it an API Gateway key, which every route behind
/// the authorizer needs. A container that finds the admin key enabled and attached does nothing
/// but one read; containers starting together may each attach a key (the last one stored wins;
/// the others are inert).
pub async fn ensure_admin_key(
    keys: &dyn KeyStore,
    edge: &dyn EdgeKeys,
    secret: &str,
    now_secs: u64,
) -> Result<(), ProvisionError> {
    let hash = hash_secret(secret);
    let ready = keys.get_by_hash(&hash).await?.is_some_and(|record| {
        record.id == "admin" && record.admin && !record.disabled && record.usage_key.is_some()
    });
    if ready {
        return Ok(());
    }
    crate::keys::ensure_admin_key(keys, secret, now_secs).await?;
    let mut record = keys.get_by_hash(&hash).await?.ok_or_else(|| {
        StoreError::Backend("the admin key is missing right after it was written".to_owned())
    })?;
    if let Some(edge_key) = edge.attach(&record).await? {
        record.usage_key = Some(edge_key.value);
        record.usage_key_id = Some(edge_key.id);
        if let Err(error) = keys.upsert(&hash, &record).await {
            if let Err(cleanup) = edge.detach(&record).await {
                tracing::warn!(error = %cleanup, "could not delete an unused admin API key");
            }
            return Err(error.into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use aws_sdk_apigateway::config::{BehaviorVersion, Credentials, Region};
    use aws_smithy_http_client::test_util::{ReplayEvent, StaticReplayClient};
    use aws_smithy_types::body::SdkBody;
    use serde_json::{Value, json};

    fn record(tier: Option<&str>) -> KeyRecord {
        KeyRecord {
            id: "key_0123456789abcdef".into(),
            name: "app".into(),
            tenant: "acme".into(),
            tier: tier.map(str::to_owned),
            ..KeyRecord::default()
        }
    }

    fn event(status: u16, body: &str) -> ReplayEvent {
        // The expected request is not compared (the tests inspect `actual_requests`).
        ReplayEvent::new(
            http::Request::builder()
                .uri("https://apigateway.us-east-1.amazonaws.com/")
                .body(SdkBody::empty())
                .unwrap(),
            http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(SdkBody::from(body.to_owned()))
                .unwrap(),
        )
    }

    fn not_found() -> ReplayEvent {
        ReplayEvent::new(
            http::Request::builder()
                .uri("https://apigateway.us-east-1.amazonaws.com/")
                .body(SdkBody::empty())
                .unwrap(),
            http::Response::builder()
                .status(404)
                .header("content-type", "application/json")
                .header("x-amzn-errortype", "NotFoundException")
                .body(SdkBody::from(
                    r#"{"message":"Invalid API Key identifier specified"}"#,
                ))
                .unwrap(),
        )
    }

    fn edge(replay: &StaticReplayClient) -> ApiGatewayEdgeKeys {
        let config = aws_sdk_apigateway::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .http_client(replay.clone())
            .build();
        let plans = parse_usage_plan_ids(
            r#"{"free":"plan-free","standard":"plan-std","partner":"plan-partner"}"#,
        )
        .unwrap();
        ApiGatewayEdgeKeys::new(Client::from_conf(config), plans)
    }

    /// (method, path, JSON body or Null) of each request the client sent.
    fn sent(replay: &StaticReplayClient) -> Vec<(String, String, Value)> {
        replay
            .actual_requests()
            .map(|request| {
                let uri: http::Uri = request.uri().parse().unwrap();
                let body = request
                    .body()
                    .bytes()
                    .filter(|b| !b.is_empty())
                    .map_or(Value::Null, |b| serde_json::from_slice(b).unwrap());
                (request.method().to_owned(), uri.path().to_owned(), body)
            })
            .collect()
    }

    #[tokio::test]
    async fn attach_creates_an_enabled_api_key_named_after_the_key_and_adds_it_to_the_tier_plan() {
        let replay = StaticReplayClient::new(vec![
            event(
                201,
                r#"{"id":"ak123","name":"key_0123456789abcdef","enabled":true}"#,
            ),
            event(
                201,
                r#"{"id":"ak123","type":"API_KEY","name":"key_0123456789abcdef"}"#,
            ),
        ]);
        let edge_key = edge(&replay)
            .attach(&record(Some("partner")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(edge_key.id, "ak123");
        assert_eq!(edge_key.value.len(), 40);
        assert!(edge_key.value.chars().all(|c| c.is_ascii_alphanumeric()));
        let sent = sent(&replay);
        assert_eq!(sent.len(), 2);
        let (method, path, body) = &sent[0];
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/apikeys"));
        assert_eq!(body["name"], "key_0123456789abcdef");
        assert_eq!(body["enabled"], true);
        assert_eq!(body["value"], edge_key.value.as_str());
        let (method, path, body) = &sent[1];
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("POST", "/usageplans/plan-partner/keys")
        );
        assert_eq!(body, &json!({"keyId": "ak123", "keyType": "API_KEY"}));
    }

    #[tokio::test]
    async fn a_key_without_a_tier_goes_to_the_standard_plan_and_each_key_gets_its_own_value() {
        let replay = StaticReplayClient::new(vec![
            event(201, r#"{"id":"ak1"}"#),
            event(201, r#"{"id":"ak1","type":"API_KEY"}"#),
            event(201, r#"{"id":"ak2"}"#),
            event(201, r#"{"id":"ak2","type":"API_KEY"}"#),
        ]);
        let edge = edge(&replay);
        let first = edge.attach(&record(None)).await.unwrap().unwrap();
        let second = edge.attach(&record(None)).await.unwrap().unwrap();
        assert_ne!(first.value, second.value);
        let paths: Vec<String> = sent(&replay).into_iter().map(|(_, path, _)| path).collect();
        assert_eq!(
            paths,
            [
                "/apikeys",
                "/usageplans/plan-std/keys",
                "/apikeys",
                "/usageplans/plan-std/keys"
            ]
        );
    }

    #[tokio::test]
    async fn attach_deletes_the_api_key_when_the_usage_plan_refuses_it() {
        let replay = StaticReplayClient::new(vec![
            event(201, r#"{"id":"ak123"}"#),
            ReplayEvent::new(
                http::Request::builder()
                    .uri("https://apigateway.us-east-1.amazonaws.com/")
                    .body(SdkBody::empty())
                    .unwrap(),
                http::Response::builder()
                    .status(400)
                    .header("x-amzn-errortype", "BadRequestException")
                    .body(SdkBody::from(r#"{"message":"Invalid usage plan"}"#))
                    .unwrap(),
            ),
            event(202, ""),
        ]);
        let error = edge(&replay)
            .attach(&record(Some("free")))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, EdgeError::Backend(m) if m.contains("CreateUsagePlanKey")),
            "{error}"
        );
        let sent = sent(&replay);
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[1].1, "/usageplans/plan-free/keys");
        assert_eq!(
            (sent[2].0.as_str(), sent[2].1.as_str()),
            ("DELETE", "/apikeys/ak123")
        );
    }

    #[tokio::test]
    async fn detach_deletes_the_api_key_by_id_and_tolerates_one_already_gone() {
        let replay = StaticReplayClient::new(vec![event(202, ""), not_found()]);
        let edge = edge(&replay);
        let mut attached = record(None);
        attached.usage_key = Some("v".repeat(40));
        attached.usage_key_id = Some("ak123".to_owned());
        edge.detach(&attached).await.unwrap();
        edge.detach(&attached).await.unwrap();
        // A key that never had an edge key sends nothing.
        edge.detach(&record(None)).await.unwrap();
        let sent = sent(&replay);
        assert_eq!(sent.len(), 2);
        for (method, path, _) in sent {
            assert_eq!(
                (method.as_str(), path.as_str()),
                ("DELETE", "/apikeys/ak123")
            );
        }
    }

    #[tokio::test]
    async fn a_tier_without_a_plan_is_refused_before_any_call() {
        let replay = StaticReplayClient::new(vec![]);
        let config = aws_sdk_apigateway::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .http_client(replay.clone())
            .build();
        let edge = ApiGatewayEdgeKeys::new(
            Client::from_conf(config),
            HashMap::from([("standard".to_owned(), "plan-std".to_owned())]),
        );
        assert_eq!(
            edge.attach(&record(Some("partner"))).await.unwrap_err(),
            EdgeError::NoUsagePlan("partner".to_owned())
        );
        assert_eq!(sent(&replay).len(), 0);
    }

    #[test]
    fn usage_plan_ids_are_a_map_of_known_tiers() {
        let plans = parse_usage_plan_ids(r#"{"free":"a","standard":"b","partner":"c"}"#).unwrap();
        assert_eq!(plans["standard"], "b");
        assert!(
            parse_usage_plan_ids(r#"{"gold":"a"}"#)
                .unwrap_err()
                .contains("gold")
        );
        assert!(parse_usage_plan_ids(r#"{"free":""}"#).is_err());
        assert!(
            parse_usage_plan_ids("[]")
                .unwrap_err()
                .contains(USAGE_PLAN_IDS_ENV)
        );
    }
}
