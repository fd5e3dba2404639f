//! The API Gateway REQUEST authorizer (`gateway::lambda::authorizer`, the `authorizer` Lambda's
//! handler) fed the REQUEST-authorizer event payload `aws_lambda_events` ships
//! (`tests/fixtures/apigw-custom-auth-request-type-request.json`) with its `Authorization` header
//! set per test, over an embedded key store; and the key provisioning that gives each key its
//! API Gateway key (`gateway::keys::edge::{provision, revoke, ensure_admin_key}`). The last tests use the
//! DynamoDB key store in moto (`MOTO_SERVER`, set by `tests/run`), as the deployed authorizer does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{moto, now_secs, within};
use async_trait::async_trait;
use gateway::error::StoreError;
use gateway::keys::KeyStore;
use gateway::keys::dynamo::DynamoKeyStore;
use gateway::keys::edge::{self, EdgeError, EdgeKey, EdgeKeys, NoEdgeKeys, ProvisionError};
use gateway::keys::{KeyRecord, NewKey, hash_secret};
use gateway::lambda::authorizer::{AuthorizerError, KeyAuthorizer};
use gateway::storage::dynamo::{DynamoConfig, FailurePolicy, create_tables};
use gateway::storage::embedded::EmbeddedStore;
use lambda_http::aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayCustomAuthorizerResponse,
};
use lambda_http::lambda_runtime::Diagnostic;
use serde_json::{Value, json};

const CHAT_ARN: &str =
    "arn:aws:execute-api:us-east-1:123456789012:s4x3opwd6i/test/POST/v1/chat/completions";
const MODELS_ARN: &str = "arn:aws:execute-api:us-east-1:123456789012:s4x3opwd6i/test/GET/v1/models";
const API_WIDE: &str = "arn:aws:execute-api:us-east-1:123456789012:s4x3opwd6i/test/*/*";

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// An embedded store in its own temporary folder, removed when the test ends.
struct TestStore {
    store: Arc<EmbeddedStore>,
    dir: PathBuf,
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl std::ops::Deref for TestStore {
    type Target = Arc<EmbeddedStore>;
    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

fn store() -> TestStore {
    let dir = std::env::temp_dir().join(format!(
        "gateway-authorizer-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let store = EmbeddedStore::open(&dir).expect("store opens");
    TestStore { store, dir }
}

/// The shipped REQUEST-authorizer event with the method ARN of `method_arn` and, if given, one
/// authorization header (`(name, value)`, in both `headers` and `multiValueHeaders`, as API
/// Gateway sends it).
fn event(
    method_arn: &str,
    header: Option<(&str, &str)>,
) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
    let path = format!(
        "{}/fixtures/apigw-custom-auth-request-type-request.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut event: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    event["methodArn"] = json!(method_arn);
    if let Some((name, value)) = header {
        event["headers"][name] = json!(value);
        event["multiValueHeaders"][name] = json!([value]);
    }
    serde_json::from_value(event).expect("a REQUEST authorizer event")
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// An edge that hands out predictable API Gateway keys and records what it was asked.
#[derive(Default)]
struct RecordingEdge {
    attached: Mutex<Vec<String>>,
    detached: Mutex<Vec<String>>,
    fail_detach: bool,
}

#[async_trait]
impl EdgeKeys for RecordingEdge {
    async fn attach(&self, record: &KeyRecord) -> Result<Option<EdgeKey>, EdgeError> {
        let mut attached = self.attached.lock().unwrap();
        attached.push(format!("{}:{}", record.id, record.tier()));
        Ok(Some(EdgeKey {
            id: format!("apikey-{}", attached.len()),
            value: format!("usage-key-value-{:024}", attached.len()),
        }))
    }

    async fn detach(&self, record: &KeyRecord) -> Result<(), EdgeError> {
        if self.fail_detach {
            return Err(EdgeError::Backend("DeleteApiKey: throttled".into()));
        }
        if let Some(id) = &record.usage_key_id {
            self.detached.lock().unwrap().push(id.clone());
        }
        Ok(())
    }
}

/// A key store that is down.
struct DownStore;

#[async_trait]
impl KeyStore for DownStore {
    async fn get_by_hash(&self, _: &str) -> Result<Option<KeyRecord>, StoreError> {
        Err(StoreError::Backend("GetItem timed out".into()))
    }
    async fn get_by_id(&self, _: &str) -> Result<Option<KeyRecord>, StoreError> {
        Err(StoreError::Backend("GetItem timed out".into()))
    }
    async fn insert(&self, _: &str, _: &KeyRecord) -> Result<(), StoreError> {
        Err(StoreError::Backend("PutItem timed out".into()))
    }
    async fn upsert(&self, _: &str, _: &KeyRecord) -> Result<(), StoreError> {
        Err(StoreError::Backend("PutItem timed out".into()))
    }
    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        Err(StoreError::Backend("Scan timed out".into()))
    }
    async fn revoke(&self, _: &str) -> Result<bool, StoreError> {
        Err(StoreError::Backend("UpdateItem timed out".into()))
    }
    async fn update(
        &self,
        _: &str,
        _: &gateway::keys::KeyEdit<'_>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        Err(StoreError::Backend("UpdateItem timed out".into()))
    }
    async fn rotate(
        &self,
        _: &str,
        _: &str,
        _: Option<&str>,
        _: u64,
    ) -> Result<Option<KeyRecord>, StoreError> {
        Err(StoreError::Backend("TransactWriteItems timed out".into()))
    }
}

fn new_key(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
        ..NewKey::default()
    }
}

fn authorizer(store: &TestStore, ttl: Duration) -> KeyAuthorizer {
    KeyAuthorizer::new(store.store.clone(), ttl)
}

#[tokio::test]
async fn a_valid_key_is_allowed_with_its_context_and_usage_identifier_key() {
    within(60, async {
        let store = store();
        let edge = RecordingEdge::default();
        let (secret, record) = edge::provision(
            store.as_ref(),
            &edge,
            NewKey {
                name: "app".into(),
                tenant: Some("acme".into()),
                models: vec!["mock".into()],
                rpm: Some(60),
                tier: Some("partner".into()),
                ..NewKey::default()
            },
        )
        .await
        .expect("provisioned");
        assert_eq!(
            *edge.attached.lock().unwrap(),
            [format!("{}:partner", record.id)]
        );
        let usage_key = record.usage_key.clone().expect("a usage key");

        let response = authorizer(&store, Duration::ZERO)
            .authorize(
                &event(CHAT_ARN, Some(("Authorization", &bearer(&secret)))),
                now_secs(),
            )
            .await
            .expect("allowed");

        // The wire shape API Gateway reads.
        let wire = serde_json::to_value(&response).unwrap();
        assert_eq!(wire["principalId"], record.id.as_str());
        assert_eq!(wire["usageIdentifierKey"], usage_key.as_str());
        assert_eq!(
            wire["policyDocument"],
            json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Action": ["execute-api:Invoke"],
                    "Effect": "Allow",
                    "Resource": [API_WIDE],
                }],
            })
        );
        let context = wire["context"].as_object().expect("context object");
        assert_eq!(context["key_id"], record.id.as_str());
        assert_eq!(context["tenant"], "acme");
        assert_eq!(context["admin"], false);
        assert_eq!(context["tier"], "partner");
        // API Gateway only passes string, number and boolean context values.
        assert!(
            context
                .values()
                .all(|v| v.is_string() || v.is_number() || v.is_boolean()),
            "{context:?}"
        );
        // The whole record, as the chat function reads it back.
        let key: KeyRecord = serde_json::from_str(context["key"].as_str().unwrap()).unwrap();
        assert_eq!(key, record);
        assert_eq!(key.models, ["mock"]);
        assert_eq!(key.rpm, Some(60));
        // The response also reads back as the event type.
        let again: ApiGatewayCustomAuthorizerResponse = serde_json::from_value(wire).unwrap();
        assert_eq!(again, response);
    })
    .await;
}

#[tokio::test]
async fn the_policy_covers_every_route_so_api_gateway_can_reuse_its_cached_decision() {
    within(60, async {
        let store = store();
        let (secret, _) =
            edge::provision(store.as_ref(), &RecordingEdge::default(), new_key("app"))
                .await
                .unwrap();
        let authorizer = authorizer(&store, Duration::from_secs(60));
        let header = bearer(&secret);
        let chat = authorizer
            .authorize(
                &event(CHAT_ARN, Some(("Authorization", &header))),
                now_secs(),
            )
            .await
            .unwrap();
        let models = authorizer
            .authorize(
                &event(MODELS_ARN, Some(("Authorization", &header))),
                now_secs(),
            )
            .await
            .unwrap();
        assert_eq!(chat.policy_document.statement[0].resource, [API_WIDE]);
        assert_eq!(chat, models);
    })
    .await;
}

#[tokio::test]
async fn unknown_keys_are_unauthorized() {
    within(60, async {
        let store = store();
        let result = authorizer(&store, Duration::ZERO)
            .authorize(
                &event(CHAT_ARN, Some(("Authorization", "Bearer gw-not-a-key"))),
                now_secs(),
            )
            .await;
        assert_eq!(result.unwrap_err(), AuthorizerError::Unauthorized);
    })
    .await;
}

#[tokio::test]
async fn missing_or_non_bearer_authorization_is_unauthorized() {
    within(60, async {
        let store = store();
        let (secret, _) = edge::provision(store.as_ref(), &NoEdgeKeys, new_key("app"))
            .await
            .unwrap();
        let authorizer = authorizer(&store, Duration::ZERO);
        for header in [
            None,
            Some(("Authorization", "")),
            Some(("Authorization", "Bearer ")),
            Some(("Authorization", secret.as_str())),
            Some(("Authorization", "Basic dXNlcjpwYXNz")),
            // The router accepts Azure-style `api-key`, but API Gateway caches the decision by
            // `Authorization` only: the authorizer must not decide on another header.
            Some(("api-key", secret.as_str())),
        ] {
            let result = authorizer
                .authorize(&event(CHAT_ARN, header), now_secs())
                .await;
            assert_eq!(
                result.unwrap_err(),
                AuthorizerError::Unauthorized,
                "{header:?}"
            );
        }
        // What the Lambda runtime reports to API Gateway: exactly `Unauthorized` (401).
        assert_eq!(
            Diagnostic::from(AuthorizerError::Unauthorized).error_message,
            "Unauthorized"
        );
    })
    .await;
}

#[tokio::test]
async fn header_name_and_scheme_are_case_insensitive() {
    within(60, async {
        let store = store();
        let (secret, record) = edge::provision(store.as_ref(), &NoEdgeKeys, new_key("app"))
            .await
            .unwrap();
        let authorizer = authorizer(&store, Duration::ZERO);
        for (name, scheme) in [
            ("authorization", "Bearer"),
            ("AUTHORIZATION", "bearer"),
            ("Authorization", "BEARER"),
        ] {
            let value = format!("{scheme} {secret}");
            let response = authorizer
                .authorize(&event(CHAT_ARN, Some((name, &value))), now_secs())
                .await
                .unwrap_or_else(|e| panic!("{name}: {scheme}: {e}"));
            assert_eq!(response.principal_id.as_deref(), Some(record.id.as_str()));
        }
    })
    .await;
}

#[tokio::test]
async fn revoked_keys_are_unauthorized_and_lose_their_api_gateway_key() {
    within(60, async {
        let store = store();
        let edge = RecordingEdge::default();
        let (secret, record) = edge::provision(store.as_ref(), &edge, new_key("app"))
            .await
            .unwrap();
        let authorizer = authorizer(&store, Duration::ZERO);
        let header = bearer(&secret);
        authorizer
            .authorize(
                &event(CHAT_ARN, Some(("Authorization", &header))),
                now_secs(),
            )
            .await
            .expect("allowed before revocation");

        assert!(
            edge::revoke(store.as_ref(), &edge, &record.id)
                .await
                .unwrap()
        );
        assert_eq!(
            *edge.detached.lock().unwrap(),
            [record.usage_key_id.clone().unwrap()]
        );
        let result = authorizer
            .authorize(
                &event(CHAT_ARN, Some(("Authorization", &header))),
                now_secs(),
            )
            .await;
        assert_eq!(result.unwrap_err(), AuthorizerError::Unauthorized);

        assert!(
            !edge::revoke(store.as_ref(), &edge, "key_missing")
                .await
                .unwrap()
        );
    })
    .await;
}

#[tokio::test]
async fn a_revocation_applies_once_the_key_cache_ttl_has_passed() {
    within(60, async {
        let store = store();
        let (secret, record) = edge::provision(store.as_ref(), &NoEdgeKeys, new_key("app"))
            .await
            .unwrap();
        let ttl = Duration::from_millis(1500);
        let authorizer = authorizer(&store, ttl);
        let header = bearer(&secret);
        let request = event(CHAT_ARN, Some(("Authorization", &header)));
        authorizer.authorize(&request, now_secs()).await.unwrap();
        // Revoked elsewhere (another container, the CLI): this container trusts its cached record...
        assert!(store.revoke(&record.id).await.unwrap());
        assert!(authorizer.authorize(&request, now_secs()).await.is_ok());
        // ...until the TTL has passed.
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        assert_eq!(
            authorizer
                .authorize(&request, now_secs())
                .await
                .unwrap_err(),
            AuthorizerError::Unauthorized
        );
    })
    .await;
}

#[tokio::test]
async fn expired_keys_are_unauthorized() {
    within(60, async {
        let store = store();
        let now = now_secs();
        let (secret, _) = edge::provision(
            store.as_ref(),
            &NoEdgeKeys,
            NewKey {
                name: "short-lived".into(),
                expires_at: Some(now + 60),
                ..NewKey::default()
            },
        )
        .await
        .unwrap();
        let authorizer = authorizer(&store, Duration::from_secs(60));
        let request = event(CHAT_ARN, Some(("Authorization", &bearer(&secret))));
        assert!(authorizer.authorize(&request, now + 59).await.is_ok());
        // Expiry is checked on every request, cached record or not.
        assert_eq!(
            authorizer.authorize(&request, now + 60).await.unwrap_err(),
            AuthorizerError::Unauthorized
        );
    })
    .await;
}

#[tokio::test]
async fn a_key_store_failure_is_an_error_other_than_unauthorized_never_allow() {
    within(60, async {
        let authorizer = KeyAuthorizer::new(Arc::new(DownStore), Duration::ZERO);
        let error = authorizer
            .authorize(
                &event(CHAT_ARN, Some(("Authorization", "Bearer gw-anything"))),
                now_secs(),
            )
            .await
            .unwrap_err();
        assert!(matches!(error, AuthorizerError::Failure(_)), "{error:?}");
        assert_ne!(Diagnostic::from(error).error_message, "Unauthorized");
    })
    .await;
}

#[tokio::test]
async fn a_malformed_method_arn_is_a_failure() {
    within(60, async {
        let store = store();
        let (secret, _) = edge::provision(store.as_ref(), &NoEdgeKeys, new_key("app"))
            .await
            .unwrap();
        let result = authorizer(&store, Duration::ZERO)
            .authorize(
                &event("not-an-arn", Some(("Authorization", &bearer(&secret)))),
                now_secs(),
            )
            .await;
        assert!(
            matches!(result, Err(AuthorizerError::Failure(_))),
            "{result:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_key_made_without_an_edge_is_allowed_without_a_usage_identifier_key() {
    within(60, async {
        let store = store();
        let (secret, record) = edge::provision(store.as_ref(), &NoEdgeKeys, new_key("local"))
            .await
            .unwrap();
        assert_eq!(
            (record.usage_key.as_deref(), record.tier()),
            (None, "standard")
        );
        let response = authorizer(&store, Duration::ZERO)
            .authorize(
                &event(CHAT_ARN, Some(("Authorization", &bearer(&secret)))),
                now_secs(),
            )
            .await
            .unwrap();
        assert_eq!(response.usage_identifier_key, None);
        assert_eq!(response.context["tier"], "standard");
    })
    .await;
}

#[tokio::test]
async fn provisioning_refuses_unknown_tiers_and_undoes_the_edge_key_when_the_store_fails() {
    within(60, async {
        let store = store();
        let edge = RecordingEdge::default();
        let error = edge::provision(
            store.as_ref(),
            &edge,
            NewKey {
                name: "app".into(),
                tier: Some("gold".into()),
                ..NewKey::default()
            },
        )
        .await
        .unwrap_err();
        let api_error = gateway::error::ApiError::from(error);
        assert_eq!(
            (api_error.status().as_u16(), api_error.param.as_deref()),
            (400, Some("tier"))
        );
        assert!(edge.attached.lock().unwrap().is_empty());

        let error = edge::provision(&DownStore, &edge, new_key("app"))
            .await
            .unwrap_err();
        assert!(matches!(error, ProvisionError::Store(_)), "{error:?}");
        assert_eq!(edge.attached.lock().unwrap().len(), 1);
        assert_eq!(*edge.detached.lock().unwrap(), ["apikey-1"]);
    })
    .await;
}

#[tokio::test]
async fn a_revocation_whose_edge_cleanup_fails_still_revokes_and_says_so() {
    within(60, async {
        let store = store();
        let edge = RecordingEdge {
            fail_detach: true,
            ..RecordingEdge::default()
        };
        let (secret, record) = edge::provision(store.as_ref(), &edge, new_key("app"))
            .await
            .unwrap();
        let error = edge::revoke(store.as_ref(), &edge, &record.id)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ProvisionError::EdgeCleanup { id, .. } if *id == record.id),
            "{error:?}"
        );
        assert!(error.to_string().contains("revoke it again"), "{error}");
        let stored = store
            .get_by_hash(&hash_secret(&secret))
            .await
            .unwrap()
            .unwrap();
        assert!(stored.disabled);
    })
    .await;
}

#[tokio::test]
async fn the_bootstrap_admin_key_gets_one_api_gateway_key() {
    within(60, async {
        let store = store();
        let edge = RecordingEdge::default();
        let secret = "gw-admin-bootstrap-secret";
        edge::ensure_admin_key(store.as_ref(), &edge, secret, now_secs())
            .await
            .unwrap();
        // Every later container start finds it attached and leaves it alone.
        edge::ensure_admin_key(store.as_ref(), &edge, secret, now_secs())
            .await
            .unwrap();
        assert_eq!(*edge.attached.lock().unwrap(), ["admin:standard"]);
        let response = authorizer(&store, Duration::ZERO)
            .authorize(
                &event(CHAT_ARN, Some(("Authorization", &bearer(secret)))),
                now_secs(),
            )
            .await
            .unwrap();
        assert_eq!(response.principal_id.as_deref(), Some("admin"));
        assert_eq!(response.context["admin"], true);
        assert_eq!(
            response.usage_identifier_key.as_deref(),
            Some("usage-key-value-000000000000000000000001")
        );
    })
    .await;
}

/// A key store of its own on the shared moto server.
async fn dynamo_store(test: &str) -> (Arc<moto::Moto>, DynamoKeyStore) {
    let moto = moto::Moto::shared();
    let client = moto.client();
    let config = DynamoConfig {
        keys_table: format!("authorizer-{test}-keys"),
        limits_table: format!("authorizer-{test}-limits"),
        cache_table: format!("authorizer-{test}-cache"),
        limits_failure_policy: FailurePolicy::Closed,
    };
    create_tables(&client, &config).await.expect("tables");
    let store = DynamoKeyStore::new(client, &config);
    (moto, store)
}

#[tokio::test]
async fn keys_in_dynamodb_are_allowed_with_their_usage_key_and_refused_once_revoked() {
    within(60, async {
        let (_moto, store) = dynamo_store("lifecycle").await;
        let store: Arc<dyn KeyStore> = Arc::new(store);
        let edge = RecordingEdge::default();
        let (secret, record) = edge::provision(
            store.as_ref(),
            &edge,
            NewKey {
                name: "app".into(),
                tenant: Some("acme".into()),
                tier: Some("free".into()),
                ..NewKey::default()
            },
        )
        .await
        .expect("provisioned");
        let authorizer = KeyAuthorizer::new(Arc::clone(&store), Duration::ZERO);
        let request = event(CHAT_ARN, Some(("authorization", &bearer(&secret))));

        let response = authorizer
            .authorize(&request, now_secs())
            .await
            .expect("allowed");
        assert_eq!(response.usage_identifier_key, record.usage_key);
        assert_eq!(response.context["tier"], "free");
        let key: KeyRecord =
            serde_json::from_str(response.context["key"].as_str().unwrap()).unwrap();
        assert_eq!(key, record);

        assert!(
            edge::revoke(store.as_ref(), &edge, &record.id)
                .await
                .unwrap()
        );
        assert_eq!(
            *edge.detached.lock().unwrap(),
            [record.usage_key_id.unwrap()]
        );
        assert_eq!(
            authorizer
                .authorize(&request, now_secs())
                .await
                .unwrap_err(),
            AuthorizerError::Unauthorized
        );
        let unknown = event(CHAT_ARN, Some(("authorization", "Bearer gw-unknown")));
        assert_eq!(
            authorizer
                .authorize(&unknown, now_secs())
                .await
                .unwrap_err(),
            AuthorizerError::Unauthorized
        );
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_dynamodb_is_a_failure_not_unauthorized() {
    within(60, async {
        // Nothing listens on a port just freed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free port");
        let config = DynamoConfig {
            keys_table: "keys".into(),
            limits_table: "limits".into(),
            cache_table: "cache".into(),
            limits_failure_policy: FailurePolicy::Closed,
        };
        let client = moto::client_for(&format!("http://127.0.0.1:{port}"));
        let authorizer = KeyAuthorizer::new(
            Arc::new(DynamoKeyStore::new(client, &config)),
            Duration::ZERO,
        );
        let result = authorizer
            .authorize(
                &event(CHAT_ARN, Some(("Authorization", "Bearer gw-anything"))),
                now_secs(),
            )
            .await;
        assert!(
            matches!(result, Err(AuthorizerError::Failure(_))),
            "{result:?}"
        );
    })
    .await;
}
