//! Tenant boundaries of the Files and Batches APIs on `gateway-local`: another tenant's key gets
//! 404 (never 403, which would tell it the id exists) for every route that names a file, an
//! upload or a batch, finds none of them in its listings, and changes nothing.

use crate::common::batch::{call, content, create_batch, finished, line, upload};
use crate::common::local::{LocalServer, TempDir, cli};
use crate::common::within;
use reqwest::Method;
use serde_json::{Value, json};

const CONFIG: &str = r#"
[providers.mock]
kind = "mock"

[models.mock]
deployments = [{ provider = "mock", model = "mock" }]
"#;

fn tenant_key(dir: &TempDir, name: &str, tenant: &str) -> String {
    cli(
        dir.path(),
        &["keys", "create", "--name", name, "--tenant", tenant],
    )
    .trim()
    .to_owned()
}

/// Asserts `key` gets a 404 in OpenAI's error shape for `method path`.
async fn refused(method: Method, url: &str, path: &str, key: &str, body: Option<Value>) {
    let (status, reply) = call(method.clone(), &format!("{url}{path}"), key, body).await;
    assert_eq!(status, 404, "{method} {path}: {reply}");
    assert_eq!(
        reply["error"]["type"], "invalid_request_error",
        "{method} {path}: {reply}"
    );
}

#[tokio::test]
async fn another_tenant_gets_404_for_files_uploads_and_batches_and_lists_none() {
    within(60, async {
        let dir = TempDir::new("tenant-boundaries");
        let owner = tenant_key(&dir, "owner", "acme");
        let stranger = tenant_key(&dir, "stranger", "globex");
        let server = LocalServer::start(dir.path(), CONFIG, &[]);
        let url = &server.url;

        let file = upload(url, &owner, line("q-1", "mock", "private question")).await;
        let file_id = file["id"].as_str().unwrap().to_owned();
        let batch = create_batch(url, &owner, &file_id).await;
        let batch_id = batch["id"].as_str().unwrap().to_owned();
        let done = finished(url, &owner, &batch_id).await;
        assert_eq!(done["status"], "completed", "{done}");
        let output_id = done["output_file_id"].as_str().unwrap().to_owned();
        let (status, upload_session) = call(
            Method::POST,
            &format!("{url}/v1/uploads"),
            &owner,
            Some(
                json!({"purpose": "batch", "filename": "big.jsonl", "bytes": 10,
                        "mime_type": "text/jsonl"}),
            ),
        )
        .await;
        assert_eq!(status, 200, "{upload_session}");
        let upload_id = upload_session["id"].as_str().unwrap().to_owned();

        for id in [&file_id, &output_id] {
            refused(
                Method::GET,
                url,
                &format!("/v1/files/{id}"),
                &stranger,
                None,
            )
            .await;
            refused(
                Method::GET,
                url,
                &format!("/v1/files/{id}/content"),
                &stranger,
                None,
            )
            .await;
            refused(
                Method::DELETE,
                url,
                &format!("/v1/files/{id}"),
                &stranger,
                None,
            )
            .await;
        }
        refused(
            Method::POST,
            url,
            "/v1/batches",
            &stranger,
            Some(
                json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                        "completion_window": "24h"}),
            ),
        )
        .await;
        refused(
            Method::GET,
            url,
            &format!("/v1/batches/{batch_id}"),
            &stranger,
            None,
        )
        .await;
        refused(
            Method::POST,
            url,
            &format!("/v1/batches/{batch_id}/cancel"),
            &stranger,
            None,
        )
        .await;
        refused(
            Method::GET,
            url,
            &format!("/v1/batches/{batch_id}/results"),
            &stranger,
            None,
        )
        .await;
        for action in ["complete", "cancel"] {
            refused(
                Method::POST,
                url,
                &format!("/v1/uploads/{upload_id}/{action}"),
                &stranger,
                Some(json!({"part_ids": []})),
            )
            .await;
        }

        // An id that exists nowhere gets the same answer as the other tenant's: no oracle.
        let (_, unknown) = call(
            Method::GET,
            &format!("{url}/v1/files/file-doesnotexist"),
            &stranger,
            None,
        )
        .await;
        let (_, foreign) = call(
            Method::GET,
            &format!("{url}/v1/files/{file_id}"),
            &stranger,
            None,
        )
        .await;
        assert_eq!(
            unknown["error"]["message"]
                .as_str()
                .map(|m| m.replace("file-doesnotexist", "ID")),
            foreign["error"]["message"]
                .as_str()
                .map(|m| m.replace(&file_id, "ID")),
        );

        for listing in ["/v1/files", "/v1/batches"] {
            let (status, listed) =
                call(Method::GET, &format!("{url}{listing}"), &stranger, None).await;
            assert_eq!(status, 200, "{listed}");
            assert_eq!(listed["data"], json!([]), "{listing}: {listed}");
            let (_, own) = call(Method::GET, &format!("{url}{listing}"), &owner, None).await;
            assert!(
                !own["data"].as_array().unwrap().is_empty(),
                "{listing}: {own}"
            );
        }

        // The stranger's attempts changed nothing: the owner still has everything.
        let (status, still) = call(
            Method::GET,
            &format!("{url}/v1/files/{file_id}"),
            &owner,
            None,
        )
        .await;
        assert_eq!(status, 200, "{still}");
        let (_, batch_now) = call(
            Method::GET,
            &format!("{url}/v1/batches/{batch_id}"),
            &owner,
            None,
        )
        .await;
        assert_eq!(batch_now["status"], "completed");
        let output = content(url, &owner, &output_id).await;
        assert_eq!(output.len(), 1);
        assert_eq!(output[0]["custom_id"], "q-1");
        let (status, _) = call(
            Method::GET,
            &format!("{url}/v1/batches/{batch_id}/results"),
            &owner,
            None,
        )
        .await;
        assert_eq!(status, 200);
    })
    .await;
}
