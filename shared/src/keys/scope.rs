//! What a key may call: scopes (route groups) and roles (presets of scopes).

use serde::{Deserialize, Serialize};

/// A group of routes a key may call (see `http::scopes` for the route table).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// Files, uploads and batches, every method.
    Batches,
    /// Files and batches, `GET` only.
    BatchesRead,
    /// Collections, documents, queries and ingest jobs, every method.
    Collections,
    /// Collections, documents and ingest jobs by `GET`, and queries.
    CollectionsRead,
    /// Usage and spend reports.
    Usage,
    /// The key admin API (`/v1/admin/...`).
    Admin,
    /// `GET /metrics` on the main listener.
    Metrics,
}

impl Scope {
    pub const ALL: [Scope; 9] = [
        Scope::Chat,
        Scope::Embeddings,
        Scope::Batches,
        Scope::BatchesRead,
        Scope::Collections,
        Scope::CollectionsRead,
        Scope::Usage,
        Scope::Admin,
        Scope::Metrics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Chat => "chat",
            Scope::Embeddings => "embeddings",
            Scope::Batches => "batches",
            Scope::BatchesRead => "batches_read",
            Scope::Collections => "collections",
            Scope::CollectionsRead => "collections_read",
            Scope::Usage => "usage",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
        }
    }

    /// The wider scope that includes this one (`batches` includes `batches_read`).
    fn implied_by(self) -> Option<Scope> {
        match self {
            Scope::BatchesRead => Some(Scope::Batches),
            Scope::CollectionsRead => Some(Scope::Collections),
            _ => None,
        }
    }
}

/// A preset of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every scope.
    Admin,
    /// Chat, embeddings, batches, collections and usage: what an application needs.
    User,
    /// Reads only: batches and collections by `GET` (and queries), usage.
    #[serde(alias = "read-only")]
    ReadOnly,
}

impl Role {
    pub fn scopes(self) -> &'static [Scope] {
        match self {
            Role::Admin => &Scope::ALL,
            Role::User => &[
                Scope::Chat,
                Scope::Embeddings,
                Scope::Batches,
                Scope::Collections,
                Scope::Usage,
            ],
            Role::ReadOnly => &[Scope::BatchesRead, Scope::CollectionsRead, Scope::Usage],
        }
    }
}

/// Parses a scope or role by its API name (`batches_read`, `read_only`), for the CLI.
fn parse_name<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(name.trim().to_owned()))
        .map_err(|_| format!("unknown name `{name}`"))
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        parse_name(name)
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        parse_name(name)
    }
}

/// The scopes a key holds: its explicit scopes if any, else its role's, else (records written
/// before roles existed) the admin or user preset by its `admin` flag.
pub fn effective_scopes(scopes: &[Scope], role: Option<Role>, legacy_admin: bool) -> Vec<Scope> {
    if !scopes.is_empty() {
        return scopes.to_vec();
    }
    let role = role.unwrap_or(if legacy_admin {
        Role::Admin
    } else {
        Role::User
    });
    role.scopes().to_vec()
}

/// Whether `held` grants `needed`, directly or through the wider scope that includes it.
pub fn grants(held: &[Scope], needed: Scope) -> bool {
    held.contains(&needed)
        || needed
            .implied_by()
            .is_some_and(|wider| held.contains(&wider))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_the_documented_presets() {
        assert_eq!(Role::Admin.scopes(), Scope::ALL);
        assert_eq!(
            Role::User.scopes(),
            [
                Scope::Chat,
                Scope::Embeddings,
                Scope::Batches,
                Scope::Collections,
                Scope::Usage
            ]
        );
        assert!(!grants(Role::User.scopes(), Scope::Admin));
        assert!(!grants(Role::User.scopes(), Scope::Metrics));
        let read_only = Role::ReadOnly.scopes();
        assert!(grants(read_only, Scope::BatchesRead) && grants(read_only, Scope::Usage));
        assert!(!grants(read_only, Scope::Batches) && !grants(read_only, Scope::Chat));
    }

    #[test]
    fn explicit_scopes_win_then_the_role_then_the_legacy_flag() {
        assert_eq!(
            effective_scopes(&[Scope::Chat], Some(Role::Admin), true),
            [Scope::Chat]
        );
        assert_eq!(
            effective_scopes(&[], Some(Role::ReadOnly), true),
            Role::ReadOnly.scopes()
        );
        assert_eq!(effective_scopes(&[], None, true), Scope::ALL);
        assert_eq!(effective_scopes(&[], None, false), Role::User.scopes());
    }

    #[test]
    fn a_wide_scope_grants_its_read_scope_but_not_the_reverse() {
        assert!(grants(&[Scope::Batches], Scope::BatchesRead));
        assert!(grants(&[Scope::Collections], Scope::CollectionsRead));
        assert!(!grants(&[Scope::BatchesRead], Scope::Batches));
    }

    #[test]
    fn names_are_snake_case_and_read_only_has_its_issue_spelling_too() {
        assert_eq!(
            serde_json::to_string(&Scope::CollectionsRead).unwrap(),
            "\"collections_read\""
        );
        for scope in Scope::ALL {
            assert_eq!(
                serde_json::to_string(&scope).unwrap(),
                format!("\"{}\"", scope.as_str())
            );
        }
        let role: Role = serde_json::from_str("\"read-only\"").unwrap();
        assert_eq!(role, Role::ReadOnly);
    }
}
