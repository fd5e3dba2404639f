//! Shared by the tests of Anthropic's Messages API: a gateway over the mock provider with a key,
//! a minimal Messages request, and the events of an Anthropic stream.

use serde_json::{Value, json};

use super::{MockUpstream, TestGateway, test_config};

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
