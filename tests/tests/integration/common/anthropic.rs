//! Shared by the tests of Anthropic's Messages API: a gateway over the mock provider with a key,
//! a minimal Messages request, and the events of an Anthropic stream.

use serde_json::{Value, json};

use super::{MockUpstream, Reply, TestGateway, test_config};

/// A gateway over a fresh mock provider, and a key with no limits.
pub async fn start_gateway() -> (MockUpstream, TestGateway, String) {
    let upstream = MockUpstream::start(&[]);
    let gateway = TestGateway::start(&test_config(&upstream.url)).await;
    let key = gateway.plain_key().await;
    (upstream, gateway, key)
}

/// A Messages request of one user turn.
pub fn message(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": text}]})
}

/// The (event name, data) pairs of an Anthropic SSE body, checking each frame's framing.
pub fn events(reply: &Reply) -> Vec<(String, Value)> {
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(body.ends_with("\n\n"), "{body}");
    body.split_terminator("\n\n")
        .map(|frame| {
            let (event, data) = frame
                .split_once('\n')
                .unwrap_or_else(|| panic!("frame without data: {frame:?}"));
            let name = event
                .strip_prefix("event: ")
                .expect("event line")
                .to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line"))
                .expect("data is JSON");
            assert_eq!(data["type"], name.as_str(), "{frame}");
            (name, data)
        })
        .collect()
}
