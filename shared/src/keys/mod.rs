//! API keys: bearer secrets stored only as SHA-256 hashes, each with its tenant, model scope,
//! limits, budget and expiry.

pub mod audit;
pub mod dynamo;
pub mod edge;
pub mod embedded;
pub mod scope;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::HeaderMap;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::GuardSettings;
use crate::error::ApiError;
use crate::error::StoreError;
pub use scope::{Role, Scope};

const KEY_PREFIX: &str = "gw-";
/// Characters of the secret after `gw-` shown in listings to tell keys apart.
const VISIBLE_SECRET_CHARS: usize = 8;
/// How long a rotated-out secret keeps working unless the rotation says otherwise.
pub const DEFAULT_ROTATION_GRACE_SECS: u64 = 86_400;
/// The longest grace a rotation may give the old secret.
pub const MAX_ROTATION_GRACE_SECS: u64 = 30 * 86_400;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Public model names this key may use; empty means every model.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// Epoch seconds after which the key no longer works.
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub disabled: bool,
    /// Legacy: records written before roles had only this flag (true = every scope). New records
    /// set it to whether the key holds the `admin` scope, for readers that know only the flag.
    #[serde(default)]
    pub admin: bool,
    /// The routes the key may call; empty means the role's preset (see [`KeyRecord::scopes`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The start of the secret (`gw-` and 8 characters), to tell keys apart in listings; never
    /// enough to use the key. `None` for keys made before prefixes, or from a foreign secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Set only on the record read through a secret that a rotation replaced: that secret works
    /// until this epoch second. Never stored on the current record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_until: Option<u64>,
    #[serde(default)]
    pub created_at: u64,
    #[serde(default)]
    pub context_policy: ContextPolicy,
    /// API Gateway usage plan tier (`free`, `standard` or `partner`); `None` means `standard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The value of the API Gateway API key that mirrors this key in its tier's usage plan (see
    /// `keys::edge`): the authorizer returns it as `usageIdentifierKey` so API Gateway throttles
    /// and meters the key. It is NOT the gateway secret and never lets anyone call the gateway:
    /// the API takes API keys only from the authorizer (`ApiKeySourceType: AUTHORIZER`), never
    /// from a client header. `None` for keys made without an edge (local run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_key: Option<String>,
    /// The id of that API Gateway API key, which deleting it needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_key_id: Option<String>,
    /// Injection and PII policy and a system prompt for this key (see `config::guard`).
    #[serde(default, skip_serializing_if = "GuardSettings::is_empty")]
    pub guard: GuardSettings,
}

/// What to do with a conversation longer than the model's context window when no larger-context
/// model is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContextPolicy {
    /// Refuse with `context_length_exceeded`.
    #[default]
    Reject,
    /// Drop the oldest turns (never the system prompt or the last user turn).
    Trim,
}

pub fn default_tenant() -> String {
    "default".to_owned()
}

/// The usage plan tiers a key can be in (one API Gateway usage plan each).
pub const TIERS: [&str; 3] = ["free", "standard", "partner"];

/// [`TIERS`] for the API's description: `tier` is a string field; this lists its values.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "documents a string field's values; never built")]
pub(crate) enum KeyTier {
    #[schema(rename = "free")]
    Free,
    #[schema(rename = "standard")]
    Standard,
    #[schema(rename = "partner")]
    Partner,
}
/// The tier of a key created without one.
pub const DEFAULT_TIER: &str = "standard";

/// What a new key may do; the id and secret are generated.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Not blank.
    #[schema(pattern = "\\S")]
    pub name: String,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub budget_usd: Option<f64>,
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Alternative to `expires_at`: the key stops working this many days after creation.
    #[serde(default)]
    #[schema(maximum = 100_000_000_000_000_u64)]
    pub expires_in_days: Option<u64>,
    /// Legacy shorthand for `role: "admin"`.
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub context_policy: ContextPolicy,
    /// Usage plan tier: `free`, `standard` (the default) or `partner`.
    #[serde(default)]
    #[schema(value_type = Option<KeyTier>)]
    pub tier: Option<String>,
    #[serde(default)]
    pub guard: GuardSettings,
}

impl NewKey {
    /// The names of the fields this request sets (for the audit log; never values).
    pub fn fields(&self) -> Vec<&'static str> {
        [
            ("name", true),
            ("tenant", self.tenant.is_some()),
            ("models", !self.models.is_empty()),
            ("rpm", self.rpm.is_some()),
            ("tpm", self.tpm.is_some()),
            ("budget_usd", self.budget_usd.is_some()),
            (
                "expires_at",
                self.expires_at.is_some() || self.expires_in_days.is_some(),
            ),
            ("role", self.role.is_some() || self.admin),
            ("scopes", !self.scopes.is_empty()),
            ("tier", self.tier.is_some()),
            ("guard", !self.guard.is_empty()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// A key with no scope, limits, budget or expiry, in the default tenant: fill in `id`, `name`
/// and what differs with struct update syntax.
impl Default for KeyRecord {
    fn default() -> Self {
        Self {
            id: String::new(),
            name: String::new(),
            tenant: default_tenant(),
            models: Vec::new(),
            rpm: None,
            tpm: None,
            budget_usd: None,
            expires_at: None,
            disabled: false,
            admin: false,
            scopes: Vec::new(),
            role: None,
            prefix: None,
            superseded_until: None,
            created_at: 0,
            context_policy: ContextPolicy::default(),
            tier: None,
            usage_key: None,
            usage_key_id: None,
            guard: GuardSettings::default(),
        }
    }
}

impl KeyRecord {
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }

    pub fn is_expired(&self, now_secs: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now_secs)
    }

    /// The usage plan tier, `standard` when unset.
    pub fn tier(&self) -> &str {
        self.tier.as_deref().unwrap_or(DEFAULT_TIER)
    }

    /// The scopes this key holds (explicit, else its role's, else the legacy flag's preset).
    pub fn scopes(&self) -> Vec<Scope> {
        scope::effective_scopes(&self.scopes, self.role, self.admin)
    }

    pub fn has_scope(&self, scope: Scope) -> bool {
        scope::grants(&self.scopes(), scope)
    }

    /// Whether this record was read through a rotated-out secret whose grace has ended.
    pub fn is_superseded(&self, now_secs: u64) -> bool {
        self.superseded_until.is_some_and(|until| until <= now_secs)
    }

    /// Sets role and scopes, keeping the legacy `admin` flag in step for readers of only that.
    fn set_access(&mut self, role: Option<Role>, scopes: Vec<Scope>) {
        self.role = role;
        self.scopes = scopes;
        self.admin = self.has_scope(Scope::Admin);
    }
}

/// The visible start of a generated secret: `gw-` and the next 8 characters.
pub fn secret_prefix(secret: &str) -> Option<String> {
    secret
        .strip_prefix(KEY_PREFIX)
        .and_then(|rest| rest.get(..VISIBLE_SECRET_CHARS))
        .map(|visible| format!("{KEY_PREFIX}{visible}"))
}

fn new_secret() -> String {
    let mut secret_bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut secret_bytes);
    format!("{KEY_PREFIX}{}", hex::encode(secret_bytes))
}

fn validate_budget(budget_usd: Option<f64>) -> Result<(), ApiError> {
    if budget_usd.is_some_and(|b| !b.is_finite() || b < 0.0) {
        return Err(
            ApiError::bad_request("`budget_usd` must be a non-negative number")
                .with_param("budget_usd"),
        );
    }
    Ok(())
}

/// `expires_at`, or `expires_in_days` from `now_secs`; not both.
fn expiry(
    expires_at: Option<u64>,
    expires_in_days: Option<u64>,
    now_secs: u64,
) -> Result<Option<u64>, ApiError> {
    match (expires_at, expires_in_days) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "give `expires_at` or `expires_in_days`, not both",
        )
        .with_param("expires_in_days")),
        (Some(at), None) => Ok(Some(at)),
        (None, Some(days)) => days
            .checked_mul(86_400)
            .and_then(|secs| now_secs.checked_add(secs))
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request("`expires_in_days` is too large")
                    .with_param("expires_in_days")
            }),
        (None, None) => Ok(None),
    }
}

/// A change to an existing key (`PATCH /v1/admin/keys/{id}`, `keys update`): each field given
/// replaces the key's, validated as at creation.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct KeyChange {
    /// Not blank.
    #[serde(default)]
    #[schema(pattern = "\\S")]
    pub name: Option<String>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub scopes: Option<Vec<Scope>>,
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub budget_usd: Option<f64>,
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    #[schema(maximum = 100_000_000_000_000_u64)]
    pub expires_in_days: Option<u64>,
    #[serde(default)]
    pub guard: Option<GuardSettings>,
}

impl KeyChange {
    /// Checks the change and resolves `expires_in_days` against `now_secs`.
    pub fn validate(mut self, now_secs: u64) -> Result<Self, ApiError> {
        if self.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(ApiError::bad_request("a key needs a `name`").with_param("name"));
        }
        validate_budget(self.budget_usd)?;
        self.expires_at = expiry(self.expires_at, self.expires_in_days.take(), now_secs)?;
        Ok(self)
    }

    /// The names of the fields this change sets (for the audit log; never values).
    pub fn fields(&self) -> Vec<&'static str> {
        [
            ("name", self.name.is_some()),
            ("models", self.models.is_some()),
            ("scopes", self.scopes.is_some()),
            ("role", self.role.is_some()),
            ("rpm", self.rpm.is_some()),
            ("tpm", self.tpm.is_some()),
            ("budget_usd", self.budget_usd.is_some()),
            ("expires_at", self.expires_at.is_some()),
            ("guard", self.guard.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// Applies the (validated) change to `record`.
    pub fn apply(&self, record: &mut KeyRecord) {
        if let Some(name) = &self.name {
            record.name.clone_from(name);
        }
        if let Some(models) = &self.models {
            record.models.clone_from(models);
        }
        // A new role without scopes replaces explicit scopes too, which would otherwise win.
        match (&self.scopes, self.role) {
            (Some(scopes), role) => record.set_access(role.or(record.role), scopes.clone()),
            (None, Some(role)) => record.set_access(Some(role), Vec::new()),
            (None, None) => {}
        }
        if self.rpm.is_some() {
            record.rpm = self.rpm;
        }
        if self.tpm.is_some() {
            record.tpm = self.tpm;
        }
        if self.budget_usd.is_some() {
            record.budget_usd = self.budget_usd;
        }
        if self.expires_at.is_some() {
            record.expires_at = self.expires_at;
        }
        if let Some(guard) = &self.guard {
            record.guard = guard.clone();
        }
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Creates a key: returns the secret (shown once) and the record to store under its hash.
pub fn generate_key(new: NewKey, now_secs: u64) -> Result<(String, String, KeyRecord), ApiError> {
    if new.name.trim().is_empty() {
        return Err(ApiError::bad_request("a key needs a `name`").with_param("name"));
    }
    validate_budget(new.budget_usd)?;
    if new
        .tier
        .as_deref()
        .is_some_and(|tier| !TIERS.contains(&tier))
    {
        return Err(
            ApiError::bad_request("`tier` must be one of `free`, `standard` or `partner`")
                .with_param("tier"),
        );
    }
    let expires_at = expiry(new.expires_at, new.expires_in_days, now_secs)?;
    let mut id_bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut id_bytes);
    let secret = new_secret();
    let mut record = KeyRecord {
        id: format!("key_{}", hex::encode(id_bytes)),
        name: new.name,
        tenant: new.tenant.unwrap_or_else(default_tenant),
        models: new.models,
        rpm: new.rpm,
        tpm: new.tpm,
        budget_usd: new.budget_usd,
        expires_at,
        prefix: secret_prefix(&secret),
        created_at: now_secs,
        context_policy: new.context_policy,
        tier: new.tier,
        guard: new.guard,
        ..KeyRecord::default()
    };
    let role = new.role.or(new.admin.then_some(Role::Admin));
    record.set_access(role, new.scopes);
    Ok((hash_secret(&secret), secret, record))
}

/// A new secret for the key `id`: the old one keeps working until `now + grace_secs`. Returns the
/// new secret (shown once) and the key's record; `None` if no key has that id.
pub async fn rotate_key(
    store: &dyn KeyStore,
    id: &str,
    grace_secs: u64,
    now_secs: u64,
) -> Result<Option<(String, KeyRecord)>, ApiError> {
    if grace_secs > MAX_ROTATION_GRACE_SECS {
        return Err(ApiError::bad_request(format!(
            "`grace_seconds` must be at most {MAX_ROTATION_GRACE_SECS} (30 days)"
        ))
        .with_param("grace_seconds"));
    }
    let secret = new_secret();
    let rotated = store
        .rotate(
            id,
            &hash_secret(&secret),
            secret_prefix(&secret).as_deref(),
            now_secs.saturating_add(grace_secs),
        )
        .await?;
    Ok(rotated.map(|record| (secret, record)))
}

/// Makes `secret` an admin key (id `admin`), replacing any earlier admin key set this way: this is
/// how `GATEWAY_ADMIN_KEY` bootstraps a deployment that has no keys yet.
pub async fn ensure_admin_key(
    store: &dyn KeyStore,
    secret: &str,
    now_secs: u64,
) -> Result<(), StoreError> {
    let record = KeyRecord {
        id: "admin".to_owned(),
        name: "admin (GATEWAY_ADMIN_KEY)".to_owned(),
        admin: true,
        role: Some(Role::Admin),
        prefix: secret_prefix(secret),
        created_at: now_secs,
        ..KeyRecord::default()
    };
    store.upsert(&hash_secret(secret), &record).await
}

/// The bearer token of a request, from `Authorization: Bearer`, or as Anthropic's clients send it,
/// `x-api-key`, or as Azure clients send it, `api-key`.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    ["x-api-key", "api-key"].into_iter().find_map(|name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
    })
}

/// Resolves bearer keys to records, trusting a record read from the store for `ttl`: keys are
/// read on almost every request, and the short TTL bounds how long a revocation made elsewhere
/// (another process, another Lambda container) takes to apply.
pub struct Authenticator {
    store: Arc<dyn KeyStore>,
    ttl: Duration,
    cache: RwLock<HashMap<String, (Arc<KeyRecord>, Instant)>>,
    /// Reads in progress, so a burst on a key that is not cached (a cold Lambda container, an
    /// expired entry) makes one store read, not one per request.
    reads: Mutex<HashMap<String, Arc<KeyRead>>>,
}

type KeyRead = tokio::sync::OnceCell<Result<Option<Arc<KeyRecord>>, StoreError>>;

/// Most key records kept in memory; beyond it the cache is cleared rather than grown.
const MAX_CACHED_KEYS: usize = 10_000;

impl Authenticator {
    pub fn new(store: Arc<dyn KeyStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: RwLock::new(HashMap::new()),
            reads: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// Forgets every cached record, so a change made through this process applies at once.
    pub fn invalidate(&self) {
        if let Ok(mut cache) = self.cache.write() {
            cache.clear();
        }
    }

    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        now_secs: u64,
    ) -> Result<Arc<KeyRecord>, ApiError> {
        let token = bearer_token(headers).ok_or_else(|| {
            ApiError::unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.",
            )
        })?;
        let hash = hash_secret(token);
        let cached = self.cache.read().ok().and_then(|cache| {
            cache
                .get(&hash)
                .filter(|(_, at)| at.elapsed() < self.ttl)
                .map(|(record, _)| Arc::clone(record))
        });
        let record = match cached {
            Some(record) => record,
            None => self
                .read(hash)
                .await
                .map_err(ApiError::from)?
                .ok_or_else(|| ApiError::unauthorized("Incorrect API key provided."))?,
        };
        if record.disabled {
            return Err(ApiError::unauthorized("This API key has been revoked."));
        }
        if record.is_expired(now_secs) {
            return Err(ApiError::unauthorized("This API key has expired."));
        }
        if record.is_superseded(now_secs) {
            return Err(ApiError::unauthorized("This API key has been rotated."));
        }
        Ok(record)
    }
}

impl Authenticator {
    /// Reads a key from the store, joining a read of the same key already in progress.
    async fn read(&self, hash: String) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let read = match self.reads.lock() {
            Ok(mut reads) => Arc::clone(reads.entry(hash.clone()).or_default()),
            Err(_) => Arc::new(KeyRead::new()),
        };
        let result = read
            .get_or_init(|| async {
                let record = self.store.get_by_hash(&hash).await?.map(Arc::new);
                if let (Some(record), Ok(mut cache)) = (&record, self.cache.write()) {
                    if cache.len() >= MAX_CACHED_KEYS {
                        cache.clear();
                    }
                    cache.insert(hash.clone(), (Arc::clone(record), Instant::now()));
                }
                Ok(record)
            })
            .await
            .clone();
        if let Ok(mut reads) = self.reads.lock()
            && reads.get(&hash).is_some_and(|r| Arc::ptr_eq(r, &read))
        {
            reads.remove(&hash);
        }
        result
    }
}

/// A change made to a key record in place.
pub type KeyEdit<'a> = dyn Fn(&mut KeyRecord) + Send + Sync + 'a;

/// API keys, addressed by the SHA-256 of the secret: the secret itself is never stored.
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync {
    async fn get_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// The key with this id (batch messages name the key they act for by id).
    async fn get_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Creates a key; fails with `Conflict` if the hash or the id exists.
    async fn insert(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError>;
    /// Creates or replaces a key (used for the bootstrap admin key).
    async fn upsert(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError>;
    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Marks a key revoked; false if no key has that id.
    async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .update(id, &|record| record.disabled = true)
            .await?
            .is_some())
    }
    /// Changes the key with this id in place (its current record and so every secret of it);
    /// returns the changed record, `None` if no key has that id.
    async fn update(&self, id: &str, change: &KeyEdit<'_>)
    -> Result<Option<KeyRecord>, StoreError>;
    /// Gives the key `id` the secret hashing to `new_hash` (with the visible `prefix`); the
    /// current secret keeps working until `old_valid_until` (epoch seconds), and reading it then
    /// returns the current record with `superseded_until` set. `get_by_id` and `list` return only
    /// the current record. `None` if no key has that id.
    async fn rotate(
        &self,
        id: &str,
        new_hash: &str,
        prefix: Option<&str>,
        old_valid_until: u64,
    ) -> Result<Option<KeyRecord>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_azure_style_keys_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer gw-abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("gw-abc"));
        headers.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
        let mut azure = HeaderMap::new();
        azure.insert("api-key", "gw-def".parse().unwrap());
        assert_eq!(bearer_token(&azure), Some("gw-def"));
    }

    #[test]
    fn generated_keys_hash_to_their_record_and_are_unique() {
        let (hash, secret, record) = generate_key(
            NewKey {
                name: "ci".into(),
                ..NewKey::default()
            },
            100,
        )
        .unwrap();
        assert!(secret.starts_with("gw-"));
        assert_eq!(hash, hash_secret(&secret));
        assert_eq!(record.tenant, "default");
        let (other, _, _) = generate_key(
            NewKey {
                name: "ci".into(),
                ..NewKey::default()
            },
            100,
        )
        .unwrap();
        assert_ne!(hash, other);
    }

    #[test]
    fn scope_and_expiry() {
        let record = KeyRecord {
            id: "k".into(),
            name: "n".into(),
            tenant: "t".into(),
            models: vec!["mock".into()],
            expires_at: Some(50),
            ..KeyRecord::default()
        };
        assert!(record.allows_model("mock") && !record.allows_model("gpt-4o"));
        assert!(!record.is_expired(49) && record.is_expired(50));
    }

    #[test]
    fn the_default_record_is_what_serde_fills_in_for_missing_fields() {
        let from_json: KeyRecord = serde_json::from_str(r#"{"id": "", "name": ""}"#).unwrap();
        assert_eq!(KeyRecord::default(), from_json);
    }
}
