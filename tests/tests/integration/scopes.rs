//! Scopes and roles, rotation, expiry and the audit log, through the router over sockets.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{MockUpstream, TestGateway, chat, now_secs, test_config, within};
use gateway::batch::BatchBackends;
use gateway::ingest::backends::IngestBackends;
use gateway::keys::{NewKey, Role, Scope};
use gateway::vectors::embedded::EmbeddedVectors;
use serde_json::{Value, json};

/// The router with the Files and Batches APIs and collections over the test's store.
async fn gateway() -> (MockUpstream, TestGateway) {
    let upstream = MockUpstream::start(&[]);
    let gateway = TestGateway::start_with(
        &test_config(&upstream.url),
        std::future::pending(),
        |gateway, store, dir| {
            gateway.batch = Some(BatchBackends::embedded(store, dir, |_| None).unwrap());
            gateway.ingest = Some(IngestBackends::embedded(store, dir, |_| None).unwrap());
            gateway.vectors = Some(Arc::new(EmbeddedVectors::new(Arc::clone(store))));
        },
    )
    .await;
    (upstream, gateway)
}

async fn admin(gw: &TestGateway) -> String {
    gw.key(NewKey {
        name: "root".into(),
        role: Some(Role::Admin),
        ..NewKey::default()
    })
    .await
    .0
}

/// One request of each route group, and the scope it needs.
fn probes() -> Vec<(Scope, reqwest::Method, &'static str, Option<Value>)> {
    use reqwest::Method;
    vec![
        (
            Scope::Chat,
            Method::POST,
            "/v1/chat/completions",
            Some(chat("mock", "hi")),
        ),
        (
            Scope::Embeddings,
            Method::POST,
            "/v1/embeddings",
            Some(json!({"model": "mock-embed", "input": "hi"})),
        ),
        (
            Scope::Batches,
            Method::POST,
            "/v1/uploads",
            Some(
                json!({"purpose": "batch", "filename": "in.jsonl", "bytes": 10,
                        "mime_type": "text/jsonl"}),
            ),
        ),
        (Scope::BatchesRead, Method::GET, "/v1/files", None),
        (
            Scope::Collections,
            Method::POST,
            "/v1/collections",
            Some(json!({"name": "docs", "embedding_model": "gpt-embed", "dimensions": 64})),
        ),
        (Scope::CollectionsRead, Method::GET, "/v1/collections", None),
        (Scope::Admin, Method::GET, "/v1/admin/keys", None),
        (Scope::Metrics, Method::GET, "/metrics", None),
    ]
}

async fn call(
    gw: &TestGateway,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = gw
        .http
        .request(method, format!("{}{path}", gw.url))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(body);
    }
    let reply = gw.send(request).await;
    let json = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status, json)
}

#[tokio::test]
async fn each_route_group_needs_its_scope() {
    use reqwest::Method;
    within(60, async {
        let (_upstream, gw) = gateway().await;
        for (held, ..) in probes() {
            let (key, _) = gw
                .key(NewKey {
                    name: format!("only-{}", held.as_str()),
                    scopes: vec![held],
                    ..NewKey::default()
                })
                .await;
            for (needed, method, path, body) in probes() {
                let (status, reply) = call(&gw, &key, method.clone(), path, body.as_ref()).await;
                let allowed = held == needed
                    || (held == Scope::Batches && needed == Scope::BatchesRead)
                    || (held == Scope::Collections && needed == Scope::CollectionsRead);
                if allowed {
                    assert!(
                        (200..300).contains(&status),
                        "{held:?} on {method} {path}: {status} {reply}"
                    );
                    let object = reply["object"].as_str().unwrap_or_default();
                    let expected = match path {
                        "/v1/uploads" => "upload",
                        "/v1/collections" if method == Method::POST => "collection",
                        "/v1/files" | "/v1/collections" | "/v1/admin/keys" => "list",
                        _ => object,
                    };
                    assert_eq!(object, expected, "{held:?} on {method} {path}: {reply}");
                } else {
                    assert_eq!(status, 403, "{held:?} on {method} {path}: {reply}");
                    assert_eq!(
                        reply["error"]["message"],
                        format!("This key lacks the `{}` scope.", needed.as_str())
                    );
                    assert_eq!(reply["error"]["code"], "insufficient_scope");
                }
            }
            // Every key may list models.
            let (status, _) = call(&gw, &key, reqwest::Method::GET, "/v1/models", None).await;
            assert_eq!(status, 200);
        }
    })
    .await;
}

#[tokio::test]
async fn read_only_keys_read_and_user_keys_do_not_administer() {
    within(60, async {
        let (_upstream, gw) = gateway().await;
        let root = admin(&gw).await;
        let created = gw
            .post(
                "/v1/admin/keys",
                &root,
                &json!({"name": "reader", "role": "read-only"}),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.json());
        let reader = created.json()["key"].as_str().unwrap().to_owned();
        assert_eq!(created.json()["role"], "read_only");
        let (status, _) = call(&gw, &reader, reqwest::Method::GET, "/v1/files", None).await;
        assert_ne!(status, 403);
        let chat_reply = gw
            .post("/v1/chat/completions", &reader, &chat("mock", "hi"))
            .await;
        assert_eq!(chat_reply.status, 403);
        let (status, _) = call(
            &gw,
            &reader,
            reqwest::Method::POST,
            "/v1/batches",
            Some(&json!({})),
        )
        .await;
        assert_eq!(status, 403);

        let user = gw.plain_key().await;
        assert_eq!(
            gw.post("/v1/chat/completions", &user, &chat("mock", "hi"))
                .await
                .status,
            200
        );
        let (status, reply) = call(&gw, &user, reqwest::Method::GET, "/v1/admin/keys", None).await;
        assert_eq!(status, 403, "{reply}");
        let (status, _) = call(&gw, &user, reqwest::Method::GET, "/metrics", None).await;
        assert_eq!(status, 403);
    })
    .await;
}

#[tokio::test]
async fn a_rotated_secret_works_for_its_grace_then_is_refused() {
    within(60, async {
        let (_upstream, gw) = gateway().await;
        let root = admin(&gw).await;
        let created = gw
            .post(
                "/v1/admin/keys",
                &root,
                &json!({"name": "app", "rpm": 1000}),
            )
            .await;
        let old = created.json()["key"].as_str().unwrap().to_owned();
        let id = created.json()["id"].as_str().unwrap().to_owned();
        assert_eq!(created.json()["prefix"], old[..11]);

        let rotated = gw
            .post(
                &format!("/v1/admin/keys/{id}/rotate"),
                &root,
                &json!({"grace_seconds": 1}),
            )
            .await;
        assert_eq!(rotated.status, 200, "{}", rotated.json());
        let new = rotated.json()["key"].as_str().unwrap().to_owned();
        assert_ne!(new, old);
        assert_eq!(rotated.json()["id"], id);
        assert_eq!(rotated.json()["rpm"], 1000);
        assert_eq!(rotated.json()["prefix"], new[..11]);

        // Both work during the grace period.
        assert_eq!(
            gw.post("/v1/chat/completions", &old, &chat("mock", "a"))
                .await
                .status,
            200
        );
        assert_eq!(
            gw.post("/v1/chat/completions", &new, &chat("mock", "b"))
                .await
                .status,
            200
        );
        // The listing has one record for the key, with the new prefix and no secret.
        let (_, list) = call(&gw, &root, reqwest::Method::GET, "/v1/admin/keys", None).await;
        let entries: Vec<&Value> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["id"] == id.as_str())
            .collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["prefix"], new[..11]);
        assert!(!list.to_string().contains(&new) && !list.to_string().contains(&old));

        tokio::time::sleep(Duration::from_millis(2100)).await;
        let refused = gw
            .post("/v1/chat/completions", &old, &chat("mock", "c"))
            .await;
        assert_eq!(refused.status, 401);
        assert_eq!(
            refused.json()["error"]["message"],
            "This API key has been rotated."
        );
        assert_eq!(
            gw.post("/v1/chat/completions", &new, &chat("mock", "d"))
                .await
                .status,
            200
        );

        let too_long = gw
            .post(
                &format!("/v1/admin/keys/{id}/rotate"),
                &root,
                &json!({"grace_seconds": 31 * 86_400}),
            )
            .await;
        assert_eq!(too_long.status, 400);
    })
    .await;
}

#[tokio::test]
async fn patch_changes_scopes_and_expiry_and_every_admin_action_is_audited() {
    within(60, async {
        let (_upstream, gw) = gateway().await;
        let root = admin(&gw).await;
        let created = gw
            .post(
                "/v1/admin/keys",
                &root,
                &json!({"name": "app", "expires_in_days": 30}),
            )
            .await;
        assert_eq!(created.status, 201);
        let secret = created.json()["key"].as_str().unwrap().to_owned();
        let id = created.json()["id"].as_str().unwrap().to_owned();
        assert!(created.json()["expires_at"].as_u64().unwrap() > now_secs() + 29 * 86_400);

        let patch = |body: Value| {
            gw.http
                .patch(format!("{}/v1/admin/keys/{id}", gw.url))
                .bearer_auth(&root)
                .json(&body)
        };
        let changed = gw
            .send(patch(json!({"scopes": ["embeddings"], "rpm": 5})))
            .await;
        assert_eq!(changed.status, 200, "{}", changed.json());
        assert_eq!(changed.json()["effective_scopes"], json!(["embeddings"]));
        assert_eq!(
            gw.post("/v1/chat/completions", &secret, &chat("mock", "hi"))
                .await
                .status,
            403
        );
        let bad = gw.send(patch(json!({"secret": "x"}))).await;
        assert_eq!(bad.status, 400);
        let expired = gw.send(patch(json!({"expires_at": now_secs() - 1}))).await;
        assert_eq!(expired.status, 200);
        let reply = gw
            .post(
                "/v1/embeddings",
                &secret,
                &json!({"model": "mock-embed", "input": "x"}),
            )
            .await;
        assert_eq!(reply.status, 401);

        let revoked = gw
            .send(
                gw.http
                    .delete(format!("{}/v1/admin/keys/{id}", gw.url))
                    .bearer_auth(&root),
            )
            .await;
        assert_eq!(revoked.status, 200);

        let (status, audit) = call(
            &gw,
            &root,
            reqwest::Method::GET,
            "/v1/admin/audit?limit=10",
            None,
        )
        .await;
        assert_eq!(status, 200, "{audit}");
        let entries = audit["data"].as_array().unwrap();
        let actions: Vec<&str> = entries
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["revoke", "update", "update", "create"]);
        let root_record = gw
            .gateway
            .auth
            .authenticate(&bearer(&root), now_secs())
            .await
            .unwrap();
        for entry in entries {
            assert_eq!(entry["target_key_id"], id.as_str());
            assert_eq!(entry["actor_key_id"], root_record.id.as_str());
            assert_eq!(entry["actor_tenant"], "default");
            assert!(entry["request_id"].as_str().unwrap().starts_with("req_"));
        }
        assert_eq!(entries[2]["changes"], json!(["scopes", "rpm"]));
        assert!(!audit.to_string().contains(&secret));
        let (status, _) = call(
            &gw,
            &root,
            reqwest::Method::GET,
            "/v1/admin/audit?limit=0",
            None,
        )
        .await;
        assert_eq!(status, 400);
    })
    .await;
}

fn bearer(key: &str) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    headers
}

/// The DynamoDB key store's rotation and the DynamoDB audit log, on moto.
#[tokio::test]
async fn dynamo_rotation_and_audit_on_moto() {
    use gateway::keys::KeyStore;
    use gateway::keys::audit::{AuditAction, AuditEntry, AuditLog, DynamoAuditLog};
    use gateway::keys::dynamo::DynamoKeyStore;
    use gateway::keys::{generate_key, rotate_key};
    use gateway::storage::dynamo::{DynamoConfig, FailurePolicy, create_tables};
    within(120, async {
        let moto = crate::common::moto::Moto::shared();
        let client = moto.client();
        let config = DynamoConfig {
            keys_table: "scopes-keys".into(),
            limits_table: "scopes-limits".into(),
            cache_table: "scopes-cache".into(),
            limits_failure_policy: FailurePolicy::Closed,
        };
        create_tables(&client, &config).await.unwrap();
        let store = DynamoKeyStore::new(client.clone(), &config);
        let (old_hash, _, record) = generate_key(
            NewKey {
                name: "app".into(),
                ..NewKey::default()
            },
            now_secs(),
        )
        .unwrap();
        store.insert(&old_hash, &record).await.unwrap();
        let (secret, rotated) = rotate_key(&store, &record.id, 60, now_secs())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rotated.id, record.id);
        let current = store
            .get_by_hash(&gateway::keys::hash_secret(&secret))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(current.superseded_until, None);
        let old = store.get_by_hash(&old_hash).await.unwrap().unwrap();
        assert_eq!(old.id, record.id);
        assert!(old.superseded_until.unwrap() >= now_secs() + 59);
        let listed: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(listed, std::slice::from_ref(&record.id));
        assert_eq!(
            store.get_by_id(&record.id).await.unwrap().unwrap().prefix,
            rotated.prefix
        );
        assert!(store.revoke(&record.id).await.unwrap());
        assert!(
            store
                .get_by_hash(&old_hash)
                .await
                .unwrap()
                .unwrap()
                .disabled
        );

        let table = "scopes-audit";
        DynamoAuditLog::create_table(&client, table).await.unwrap();
        let audit = DynamoAuditLog::new(client.clone(), table);
        for (i, action) in [AuditAction::Create, AuditAction::Rotate]
            .into_iter()
            .enumerate()
        {
            let entry = AuditEntry {
                at: gateway::clock::now_millis() + i as u64,
                actor_key_id: "admin".into(),
                actor_tenant: "default".into(),
                action,
                target_key_id: record.id.clone(),
                changes: vec![],
                request_id: None,
            };
            audit.append(&entry).await.unwrap();
        }
        let entries = audit.newest(10, now_secs()).await.unwrap();
        let actions: Vec<AuditAction> = entries.iter().map(|e| e.action).collect();
        assert_eq!(actions, [AuditAction::Rotate, AuditAction::Create]);
    })
    .await;
}
