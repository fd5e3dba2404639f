//! The API Gateway REQUEST authorizer: `Authorization: Bearer <gateway key>` (or, as Anthropic's
//! clients send it, `x-api-key: <gateway key>`) -> an Allow policy
//! for the whole API, the key as context, and the key's API Gateway key as `usageIdentifierKey`
//! so the usage plan of its tier throttles and meters it (`ApiKeySourceType: AUTHORIZER`).
//!
//! Answers:
//! - a valid key: `principalId` = key id; policy `Allow execute-api:Invoke` on
//!   `arn:<partition>:execute-api:<region>:<account>:<api id>/<stage>/*/*`, derived from the
//!   `methodArn`, because API Gateway caches the decision per `Authorization` header and reuses it
//!   on every route; `context` = `key_id`, `tenant`, `admin` (bool: holds the `admin` scope),
//!   `scopes` (the effective scopes, comma-separated, for logs), `tier` and `key` (the whole
//!   `KeyRecord` as a JSON string, with its role and scopes, which the router enforces: context
//!   values can only be strings, numbers and booleans);
//!   `usageIdentifierKey` = `KeyRecord::usage_key` (absent for a key without one: API Gateway then
//!   refuses the key on routes that require an API key).
//! - a missing, malformed, unknown, revoked or expired key, or a rotated-out secret past its
//!   grace: the error `Unauthorized`, which is the
//!   exact message that makes API Gateway answer 401.
//! - a key store failure or a malformed event: any other error (API Gateway answers 500) and an
//!   error log. Never Allow.
//!
//! Key records are read through [`Authenticator`], which trusts a record for the key cache TTL
//! (`GATEWAY_KEY_CACHE_TTL_MS`, default 1000 ms). A revocation therefore reaches API Gateway within
//! that TTL plus API Gateway's own authorizer cache TTL (`AuthorizerCacheTtlSeconds` in the
//! template, 300 s by default) — set that lower if revocations must apply faster.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use lambda_http::aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerPolicy, ApiGatewayCustomAuthorizerRequestTypeRequest,
    ApiGatewayCustomAuthorizerResponse,
};
use lambda_http::aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};
use lambda_http::lambda_runtime::Diagnostic;
use serde_json::json;

use crate::error::ErrorKind;
use crate::keys::KeyStore;
use crate::keys::{Authenticator, KeyRecord, Scope};
use crate::telemetry::{EMF, Emf};

/// How long the authorizer trusts a key record it read, in milliseconds.
pub const KEY_CACHE_TTL_ENV: &str = "GATEWAY_KEY_CACHE_TTL_MS";
/// The same default as the router's `server.key_cache_ttl_ms`.
pub const DEFAULT_KEY_CACHE_TTL: Duration = Duration::from_millis(1000);

/// Why the authorizer did not allow a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizerError {
    /// API Gateway answers 401 when the authorizer fails with exactly this message.
    #[error("Unauthorized")]
    Unauthorized,
    /// Any other message makes API Gateway answer 500.
    #[error("authorizer failure: {0}")]
    Failure(String),
}

impl From<AuthorizerError> for Diagnostic {
    fn from(error: AuthorizerError) -> Self {
        Diagnostic {
            error_type: match error {
                AuthorizerError::Unauthorized => "Unauthorized",
                AuthorizerError::Failure(_) => "AuthorizerFailure",
            }
            .to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// The authorizer's state: built once per container, shared by every invocation.
pub struct KeyAuthorizer {
    auth: Authenticator,
}

impl KeyAuthorizer {
    pub fn new(store: Arc<dyn KeyStore>, key_cache_ttl: Duration) -> Self {
        Self {
            auth: Authenticator::new(store, key_cache_ttl),
        }
    }

    /// Over the DynamoDB key store named by the environment (`GATEWAY_KEYS_TABLE`, ...), with the
    /// key cache TTL from `GATEWAY_KEY_CACHE_TTL_MS`.
    pub async fn from_env() -> Result<Self, String> {
        let ttl = key_cache_ttl(|name| std::env::var(name).ok())?;
        let backends = crate::backends::Backends::aws_from_env().await?;
        Ok(Self::new(backends.keys, ttl))
    }

    /// One invocation, at the current time.
    pub async fn handle(
        &self,
        request: &ApiGatewayCustomAuthorizerRequestTypeRequest,
    ) -> Result<ApiGatewayCustomAuthorizerResponse, AuthorizerError> {
        let now = crate::clock::now_secs();
        let decision = self.authorize(request, now).await;
        // Lambda counts the 401 answer as a function error too: this metric is the one that
        // tells the authorizer's own failures from rejected keys.
        if let (Err(AuthorizerError::Failure(_)), Some(emf)) = (&decision, EMF.as_ref()) {
            Emf::write(&emf.authorizer_failure_line());
        }
        decision
    }

    /// Decides one request at `now_secs` (epoch seconds).
    pub async fn authorize(
        &self,
        request: &ApiGatewayCustomAuthorizerRequestTypeRequest,
        now_secs: u64,
    ) -> Result<ApiGatewayCustomAuthorizerResponse, AuthorizerError> {
        let Some(method_arn) = request.method_arn.as_deref() else {
            tracing::error!("authorizer event without a methodArn");
            return Err(AuthorizerError::Failure(
                "the event has no methodArn".into(),
            ));
        };
        let Some(resource) = api_wide_resource(method_arn) else {
            tracing::error!(method_arn, "authorizer event with a malformed methodArn");
            return Err(AuthorizerError::Failure(
                "the event's methodArn is malformed".into(),
            ));
        };
        let headers = identity_headers(request)?;
        let record = match self.auth.authenticate(&headers, now_secs).await {
            Ok(record) => record,
            Err(error) if error.kind == ErrorKind::Unauthorized => {
                tracing::info!(reason = %error.message, "authorizer: unauthorized");
                return Err(AuthorizerError::Unauthorized);
            }
            Err(error) => {
                tracing::error!(cause = ?error.cause, message = %error.message, "authorizer failed");
                return Err(AuthorizerError::Failure(error.message));
            }
        };
        allow(&record, resource)
    }
}

/// The headers that identify the caller: `Authorization` (OpenAI's clients) and `x-api-key`
/// (Anthropic's). API Gateway caches the decision by one identity header, `Authorization` on most
/// routes and `x-api-key` on the Messages routes, so the decision may depend on nothing else: a
/// request that carries both must carry the same key in both, or it is refused. (`api-key`,
/// which the router also accepts, is no identity source and is ignored here.)
fn identity_headers(
    request: &ApiGatewayCustomAuthorizerRequestTypeRequest,
) -> Result<HeaderMap, AuthorizerError> {
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .or_else(|| request.multi_value_headers.get(name))
            .cloned()
    };
    let mut headers = HeaderMap::new();
    let authorization = header(AUTHORIZATION.as_str());
    let api_key = header(X_API_KEY);
    if let Some(value) = authorization {
        headers.insert(AUTHORIZATION, value);
    }
    if let Some(value) = api_key {
        let bearer = crate::keys::bearer_token(&headers).map(str::to_owned);
        if bearer.is_some_and(|bearer| value.to_str().ok().map(str::trim) != Some(bearer.as_str()))
        {
            tracing::info!("authorizer: different keys in `Authorization` and `x-api-key`");
            return Err(AuthorizerError::Unauthorized);
        }
        headers.insert(X_API_KEY, value);
    }
    Ok(headers)
}

/// The key header of Anthropic's clients.
const X_API_KEY: &str = "x-api-key";

fn allow(
    record: &KeyRecord,
    resource: String,
) -> Result<ApiGatewayCustomAuthorizerResponse, AuthorizerError> {
    let key_json = serde_json::to_string(record).map_err(|e| {
        tracing::error!(key_id = %record.id, error = %e, "cannot encode a key record");
        AuthorizerError::Failure("cannot encode the key record".into())
    })?;
    if record.usage_key.is_none() {
        tracing::warn!(
            key_id = %record.id,
            "key has no API Gateway key, so routes that require one refuse it: create keys \
             through the CLI (--backend aws) or the admin API on AWS"
        );
    }
    let scopes: Vec<&str> = record.scopes().iter().map(|scope| scope.as_str()).collect();
    let mut statement = IamPolicyStatement::default();
    statement.action = vec!["execute-api:Invoke".to_owned()];
    statement.effect = IamPolicyEffect::Allow;
    statement.resource = vec![resource];
    let mut policy = ApiGatewayCustomAuthorizerPolicy::default();
    policy.version = Some("2012-10-17".to_owned());
    policy.statement = vec![statement];
    let mut response = ApiGatewayCustomAuthorizerResponse::default();
    response.principal_id = Some(record.id.clone());
    response.policy_document = policy;
    response.context = json!({
        "key_id": record.id,
        "tenant": record.tenant,
        "admin": record.has_scope(Scope::Admin),
        "scopes": scopes.join(","),
        "tier": record.tier(),
        "key": key_json,
    });
    response.usage_identifier_key = record.usage_key.clone();
    tracing::debug!(key_id = %record.id, "authorizer: allowed");
    Ok(response)
}

/// Every method and path of the API and stage in `method_arn`
/// (`arn:aws:execute-api:us-east-1:123456789012:abc123/api/POST/v1/chat/completions` ->
/// `arn:aws:execute-api:us-east-1:123456789012:abc123/api/*/*`).
pub fn api_wide_resource(method_arn: &str) -> Option<String> {
    let mut parts = method_arn.splitn(6, ':');
    let (arn, partition, service, region, account, path) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if arn != "arn" || service != "execute-api" {
        return None;
    }
    if [partition, region, account].iter().any(|s| s.is_empty()) {
        return None;
    }
    let mut path = path.split('/');
    let api_id = path.next().filter(|s| !s.is_empty())?;
    let stage = path.next().filter(|s| !s.is_empty())?;
    Some(format!(
        "arn:{partition}:execute-api:{region}:{account}:{api_id}/{stage}/*/*"
    ))
}

/// The key cache TTL from `GATEWAY_KEY_CACHE_TTL_MS` (read through `lookup`), or the default.
pub fn key_cache_ttl(lookup: impl Fn(&str) -> Option<String>) -> Result<Duration, String> {
    match lookup(KEY_CACHE_TTL_ENV).map(|v| v.trim().to_owned()) {
        None => Ok(DEFAULT_KEY_CACHE_TTL),
        Some(value) if value.is_empty() => Ok(DEFAULT_KEY_CACHE_TTL),
        Some(value) => value
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| {
                format!("{KEY_CACHE_TTL_ENV} is `{value}`; expected a number of milliseconds")
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_covers_every_route_of_the_stage() {
        assert_eq!(
            api_wide_resource(
                "arn:aws:execute-api:us-east-1:123456789012:abc123/api/POST/v1/chat/completions"
            )
            .as_deref(),
            Some("arn:aws:execute-api:us-east-1:123456789012:abc123/api/*/*")
        );
        assert_eq!(
            api_wide_resource("arn:aws-cn:execute-api:cn-north-1:123456789012:abc/prod/GET/")
                .as_deref(),
            Some("arn:aws-cn:execute-api:cn-north-1:123456789012:abc/prod/*/*")
        );
        for bad in [
            "",
            "arn:aws:lambda:us-east-1:123456789012:function:f",
            "arn:aws:execute-api:us-east-1:123456789012:abc",
            "arn:aws:execute-api::123456789012:abc/api/GET/x",
        ] {
            assert_eq!(api_wide_resource(bad), None, "{bad}");
        }
    }

    #[test]
    fn key_cache_ttl_defaults_and_parses() {
        assert_eq!(key_cache_ttl(|_| None), Ok(DEFAULT_KEY_CACHE_TTL));
        assert_eq!(
            key_cache_ttl(|_| Some("250".into())),
            Ok(Duration::from_millis(250))
        );
        assert!(
            key_cache_ttl(|_| Some("soon".into()))
                .unwrap_err()
                .contains(KEY_CACHE_TTL_ENV)
        );
    }

    fn event(headers: &[(&'static str, &str)]) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
        let mut event = ApiGatewayCustomAuthorizerRequestTypeRequest::default();
        for (name, value) in headers {
            event.headers.insert(*name, value.parse().unwrap());
        }
        event
    }

    #[test]
    fn the_key_is_read_from_authorization_or_x_api_key_and_both_must_agree() {
        let anthropic = identity_headers(&event(&[("x-api-key", "gw-a")])).unwrap();
        assert_eq!(crate::keys::bearer_token(&anthropic), Some("gw-a"));
        let openai = identity_headers(&event(&[("authorization", "Bearer gw-a")])).unwrap();
        assert_eq!(crate::keys::bearer_token(&openai), Some("gw-a"));
        let both = event(&[("authorization", "Bearer gw-a"), ("x-api-key", "gw-a")]);
        assert_eq!(
            crate::keys::bearer_token(&identity_headers(&both).unwrap()),
            Some("gw-a")
        );
        let mismatched = event(&[("authorization", "Bearer gw-a"), ("x-api-key", "gw-b")]);
        assert_eq!(
            identity_headers(&mismatched).unwrap_err(),
            AuthorizerError::Unauthorized
        );
        // `api-key` is no identity source of API Gateway's, so it never decides.
        let azure = identity_headers(&event(&[("api-key", "gw-a")])).unwrap();
        assert_eq!(crate::keys::bearer_token(&azure), None);
    }

    #[test]
    fn unauthorized_reaches_lambda_as_exactly_that_message() {
        let diagnostic = Diagnostic::from(AuthorizerError::Unauthorized);
        assert_eq!(diagnostic.error_message, "Unauthorized");
        let failure = Diagnostic::from(AuthorizerError::Failure("x".into()));
        assert_ne!(failure.error_message, "Unauthorized");
    }
}
