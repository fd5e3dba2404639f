//! The Files and Batches APIs as a client of `gateway-local` calls them: upload a JSONL file,
//! create a batch, poll it to its end, read its output and error files.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

pub fn client() -> reqwest::Client {
    gateway::tls::http_client_builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

pub fn line(custom_id: &str, model: &str, text: &str) -> String {
    json!({
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}]},
    })
    .to_string()
}

pub async fn upload(url: &str, key: &str, jsonl: String) -> Value {
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::text(jsonl).file_name("input.jsonl"),
        );
    let response = client()
        .post(format!("{url}/v1/files"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .expect("answered");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, 200, "{body}");
    body
}

pub async fn call(
    method: reqwest::Method,
    url: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client().request(method, url).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn create_batch(url: &str, key: &str, file_id: &str) -> Value {
    let (status, batch) = call(
        reqwest::Method::POST,
        &format!("{url}/v1/batches"),
        key,
        Some(
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                    "completion_window": "24h", "metadata": {"run": "test"}}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["status"], "validating");
    batch
}

/// Polls the batch until it reaches a terminal status.
pub async fn finished(url: &str, key: &str, id: &str) -> Value {
    loop {
        let (status, batch) = call(
            reqwest::Method::GET,
            &format!("{url}/v1/batches/{id}"),
            key,
            None,
        )
        .await;
        assert_eq!(status, 200, "{batch}");
        if ["completed", "failed", "expired", "cancelled"]
            .contains(&batch["status"].as_str().unwrap_or_default())
        {
            return batch;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn content(url: &str, key: &str, file_id: &str) -> Vec<Value> {
    let response = client()
        .get(format!("{url}/v1/files/{file_id}/content"))
        .bearer_auth(key)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("text");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

pub fn by_custom_id(records: &[Value]) -> HashMap<String, Value> {
    let mut map = HashMap::new();
    for record in records {
        let id = record["custom_id"].as_str().expect("custom_id").to_owned();
        assert!(
            map.insert(id.clone(), record.clone()).is_none(),
            "{id} twice"
        );
    }
    map
}
