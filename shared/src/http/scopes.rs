//! Which scope each route needs: one table, applied by the `authenticate` layer to the matched
//! route. A route missing from the table is refused (403) for every key, so a new route cannot
//! be served before it is given a scope; a unit test holds the table against the router.

use axum::http::Method;

use crate::error::ApiError;
use crate::keys::{KeyRecord, Scope};

/// What a route asks of the key that calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Any valid key (the model list, which every client needs to start).
    AnyKey,
    Needs(Scope),
}

use Requirement::{AnyKey, Needs};
use Scope::{
    Admin, Batches, BatchesRead, Chat, Collections, CollectionsRead, Embeddings, Metrics, Usage,
};

/// (method, route path as the router declares it, requirement).
pub const ROUTE_SCOPES: &[(&str, &str, Requirement)] = &[
    ("GET", "/v1/models", AnyKey),
    ("POST", "/v1/chat/completions", Needs(Chat)),
    ("POST", "/v1/messages", Needs(Chat)),
    ("POST", "/v1/messages/count_tokens", Needs(Chat)),
    ("POST", "/v1/responses", Needs(Chat)),
    // Stored responses hold conversations: reading or deleting one is chat work (read-only
    // keys, which have no `chat` scope, do not see them).
    ("GET", "/v1/responses/{id}", Needs(Chat)),
    ("DELETE", "/v1/responses/{id}", Needs(Chat)),
    ("POST", "/v1/embeddings", Needs(Embeddings)),
    ("POST", "/v1/admin/keys", Needs(Admin)),
    ("GET", "/v1/admin/keys", Needs(Admin)),
    ("PATCH", "/v1/admin/keys/{id}", Needs(Admin)),
    ("DELETE", "/v1/admin/keys/{id}", Needs(Admin)),
    ("POST", "/v1/admin/keys/{id}/rotate", Needs(Admin)),
    ("GET", "/v1/admin/audit", Needs(Admin)),
    ("GET", "/v1/admin/usage", Needs(Admin)),
    ("GET", "/v1/usage", Needs(Usage)),
    ("POST", "/v1/files", Needs(Batches)),
    ("GET", "/v1/files", Needs(BatchesRead)),
    ("GET", "/v1/files/{id}", Needs(BatchesRead)),
    ("DELETE", "/v1/files/{id}", Needs(Batches)),
    ("GET", "/v1/files/{id}/content", Needs(BatchesRead)),
    ("POST", "/v1/uploads", Needs(Batches)),
    ("POST", "/v1/uploads/{id}/parts", Needs(Batches)),
    ("POST", "/v1/uploads/{id}/complete", Needs(Batches)),
    ("POST", "/v1/uploads/{id}/cancel", Needs(Batches)),
    ("POST", "/v1/batches", Needs(Batches)),
    ("GET", "/v1/batches", Needs(BatchesRead)),
    ("GET", "/v1/batches/{id}", Needs(BatchesRead)),
    ("POST", "/v1/batches/{id}/cancel", Needs(Batches)),
    ("GET", "/v1/batches/{id}/results", Needs(BatchesRead)),
    ("POST", "/v1/collections", Needs(Collections)),
    ("GET", "/v1/collections", Needs(CollectionsRead)),
    ("GET", "/v1/collections/{name}", Needs(CollectionsRead)),
    ("DELETE", "/v1/collections/{name}", Needs(Collections)),
    (
        "POST",
        "/v1/collections/{name}/documents",
        Needs(Collections),
    ),
    (
        "GET",
        "/v1/collections/{name}/documents/{*id}",
        Needs(CollectionsRead),
    ),
    (
        "DELETE",
        "/v1/collections/{name}/documents/{*id}",
        Needs(Collections),
    ),
    // A query reads: read-only keys may search.
    (
        "POST",
        "/v1/collections/{name}/query",
        Needs(CollectionsRead),
    ),
    (
        "GET",
        "/v1/collections/{name}/jobs/{id}",
        Needs(CollectionsRead),
    ),
    ("GET", "/metrics", Needs(Metrics)),
];

/// The requirement of a route; `None` for a route without an entry (refused).
pub fn requirement(method: &Method, route: &str) -> Option<Requirement> {
    // The router answers HEAD with its GET handler.
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTE_SCOPES
        .iter()
        .find(|(m, path, _)| *m == method && *path == route)
        .map(|(_, _, requirement)| *requirement)
}

/// Lets `key` call the route `route` (the matched path, `None` if unknown) with `method`, or
/// says which scope it lacks.
pub fn authorize(key: &KeyRecord, method: &Method, route: Option<&str>) -> Result<(), ApiError> {
    match route.and_then(|route| requirement(method, route)) {
        Some(AnyKey) => Ok(()),
        Some(Needs(scope)) if key.has_scope(scope) => Ok(()),
        Some(Needs(scope)) => Err(ApiError::forbidden(format!(
            "This key lacks the `{}` scope.",
            scope.as_str()
        ))
        .with_code("insufficient_scope")),
        None => {
            Err(ApiError::forbidden("No key may call this route.").with_code("insufficient_scope"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Role;

    /// Every (method, path) the router in `http/mod.rs` declares, read from its source, so a
    /// route added there without a table entry fails here (and is refused at run time).
    fn declared_routes() -> Vec<(String, String)> {
        let source = include_str!("mod.rs");
        let mut routes = Vec::new();
        for part in source.split(".route(").skip(1) {
            let declaration = part.split(".route_layer(").next().unwrap_or(part);
            let path = declaration.split('"').nth(1).unwrap();
            for (method, call) in [
                ("GET", "get("),
                ("POST", "post("),
                ("DELETE", "delete("),
                ("PATCH", "patch("),
                ("PUT", "put("),
            ] {
                let calls = declaration.match_indices(call).filter(|(at, _)| {
                    let before = declaration[..*at].chars().next_back();
                    !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if calls.count() > 0 {
                    routes.push((method.to_owned(), path.to_owned()));
                }
            }
        }
        routes
    }

    #[test]
    fn every_keyed_route_of_the_router_has_a_scope_and_every_entry_a_route() {
        let declared = declared_routes();
        assert!(declared.len() > 30, "{declared:?}");
        for (method, path) in &declared {
            // Served without a key, outside the authenticated router.
            if path == "/health" || path == "/openapi.json" {
                continue;
            }
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert!(
                requirement(&method, path).is_some(),
                "{method} {path} has no scope in ROUTE_SCOPES"
            );
        }
        for (method, path, _) in ROUTE_SCOPES {
            assert!(
                declared.iter().any(|(m, p)| m == method && p == path),
                "{method} {path} is in ROUTE_SCOPES but not in the router"
            );
        }
    }

    #[test]
    fn unknown_routes_are_refused_and_head_is_get() {
        let admin = KeyRecord {
            role: Some(Role::Admin),
            ..KeyRecord::default()
        };
        assert!(authorize(&admin, &Method::GET, Some("/v1/new-thing")).is_err());
        assert!(authorize(&admin, &Method::GET, None).is_err());
        assert!(authorize(&admin, &Method::PUT, Some("/v1/files")).is_err());
        assert_eq!(
            requirement(&Method::HEAD, "/v1/files"),
            Some(Needs(BatchesRead))
        );
    }

    #[test]
    fn roles_open_their_routes_only() {
        let key = |role| KeyRecord {
            role: Some(role),
            ..KeyRecord::default()
        };
        let read_only = key(Role::ReadOnly);
        let user = key(Role::User);
        let check = |key: &KeyRecord, method: Method, path: &str| {
            authorize(key, &method, Some(path)).is_ok()
        };
        assert!(check(&read_only, Method::GET, "/v1/models"));
        assert!(check(&read_only, Method::GET, "/v1/batches/{id}"));
        assert!(check(
            &read_only,
            Method::POST,
            "/v1/collections/{name}/query"
        ));
        assert!(!check(&read_only, Method::POST, "/v1/batches"));
        assert!(!check(&read_only, Method::POST, "/v1/chat/completions"));
        assert!(!check(&read_only, Method::DELETE, "/v1/files/{id}"));
        assert!(check(&user, Method::POST, "/v1/chat/completions"));
        assert!(check(&user, Method::DELETE, "/v1/collections/{name}"));
        assert!(!check(&user, Method::GET, "/v1/admin/keys"));
        assert!(!check(&user, Method::GET, "/metrics"));
        let error = authorize(&user, &Method::GET, Some("/metrics")).unwrap_err();
        assert_eq!(error.message, "This key lacks the `metrics` scope.");
        assert!(check(&key(Role::Admin), Method::GET, "/metrics"));
    }
}
