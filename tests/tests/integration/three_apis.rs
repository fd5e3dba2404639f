//! One request sent through the three chat APIs (`/v1/chat/completions`, Anthropic's
//! `/v1/messages`, OpenAI's `/v1/responses`) with one key behaves as one request: the three
//! become the same canonical chat request, so the second and third are cache hits of the first;
//! each is billed the same; an RPM limit counts all three; and a spent budget refuses all three
//! alike, each in its own API's error shape.

use crate::common::{MockUpstream, Reply, TestGateway, test_config, within};
use gateway::keys::NewKey;
use serde_json::{Value, json};

const CHAT: &str = "/v1/chat/completions";
const MESSAGES: &str = "/v1/messages";
const RESPONSES: &str = "/v1/responses";

/// The same question in each API's words: one user message, at most 20 tokens, temperature 0.
fn the_three(model: &str, text: &str) -> [(&'static str, Value); 3] {
    [
        (
            CHAT,
            json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 20, "temperature": 0}),
        ),
        (
            MESSAGES,
            json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 20, "temperature": 0}),
        ),
        (
            RESPONSES,
            json!({"model": model, "input": text, "max_output_tokens": 20, "temperature": 0}),
        ),
    ]
}

/// The answer's text, whichever API gave it.
fn answer_text(path: &str, reply: &Reply) -> String {
    let body = reply.json();
    let text = match path {
        CHAT => &body["choices"][0]["message"]["content"],
        MESSAGES => &body["content"][0]["text"],
        _ => &body["output"][0]["content"][0]["text"],
    };
    text.as_str()
        .unwrap_or_else(|| panic!("{path}: {body}"))
        .to_owned()
}

fn cost(reply: &Reply) -> f64 {
    reply
        .header("x-gateway-cost-usd")
        .and_then(|c| c.parse().ok())
        .expect("a cost header")
}

async fn started() -> (MockUpstream, TestGateway) {
    let upstream = MockUpstream::start(&[]);
    let gw = TestGateway::start(&test_config(&upstream.url)).await;
    (upstream, gw)
}

#[tokio::test]
async fn one_request_through_the_three_apis_is_billed_the_same_and_cached_once() {
    within(30, async {
        let (upstream, gw) = started().await;
        let (key, record) = gw
            .key(NewKey {
                name: "three".into(),
                ..NewKey::default()
            })
            .await;

        // Billing: each answered afresh (no cache read) records the same spend.
        let fresh = [("cache-control", "no-cache")];
        let mut spent = gw.spent(&record.id).await;
        let mut costs = Vec::new();
        for (path, body) in the_three("gpt", "bill me the same") {
            let reply = gw.post_with(path, &key, &body, &fresh).await;
            assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
            assert_eq!(answer_text(path, &reply), "echo: bill me the same");
            let now = gw.spent(&record.id).await;
            costs.push((path, now - spent, cost(&reply)));
            spent = now;
        }
        let (_, chat_spend, chat_cost) = costs[0];
        assert!(chat_spend > 0.0);
        for (path, spend, cost) in &costs {
            assert!((spend - chat_spend).abs() < 1e-12, "{path}: {costs:?}");
            assert!((cost - chat_cost).abs() < 1e-12, "{path}: {costs:?}");
        }

        // Caching: the chat answer is a hit for the other two, with no upstream call.
        let [(_, chat), messages, responses] = the_three("gpt", "cache me once");
        let first = gw.post(CHAT, &key, &chat).await;
        assert_eq!(first.header("x-gateway-cache"), Some("MISS"));
        let requests = upstream.requests().await;
        for (path, body) in [messages, responses] {
            let hit = gw.post(path, &key, &body).await;
            assert_eq!(hit.status, 200, "{path}");
            assert_eq!(hit.header("x-gateway-cache"), Some("HIT"), "{path}");
            assert_eq!(answer_text(path, &hit), answer_text(CHAT, &first), "{path}");
        }
        assert_eq!(upstream.requests().await, requests, "hits call no upstream");
    })
    .await;
}

/// A refusal's (status, OpenAI error code or Anthropic error type, message) in each API's shape.
fn refusal(path: &str, reply: &Reply) -> (u16, String, String) {
    let body = reply.json();
    let kind = match path {
        MESSAGES => {
            assert_eq!(body["type"], "error", "{body}");
            body["error"]["type"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
        _ => body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (reply.status, kind, message)
}

#[tokio::test]
async fn an_rpm_limit_counts_the_three_apis_together() {
    within(30, async {
        let (_upstream, gw) = started().await;
        let (key, _) = gw
            .key(NewKey {
                name: "rpm".into(),
                rpm: Some(3),
                ..NewKey::default()
            })
            .await;
        for (path, body) in the_three("mock", "count me") {
            let reply = gw.post(path, &key, &body).await;
            assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
        }
        let mut refused = Vec::new();
        for (path, body) in the_three("mock", "one too many") {
            let reply = gw.post(path, &key, &body).await;
            assert!(reply.header("retry-after").is_some(), "{path}");
            refused.push(refusal(path, &reply));
        }
        let (chat, messages, responses) = (&refused[0], &refused[1], &refused[2]);
        assert_eq!(chat.0, 429);
        assert_eq!(responses, chat, "the Responses API refuses as chat does");
        assert_eq!(
            messages,
            &(429, "rate_limit_error".to_owned(), chat.2.clone()),
            "the Messages API refuses the same, in Anthropic's shape"
        );
    })
    .await;
}

#[tokio::test]
async fn a_spent_budget_refuses_the_three_apis_alike() {
    within(30, async {
        let (_upstream, gw) = started().await;
        // The mock model costs $1000/M input and $2000/M output: a few answers spend $0.05.
        let (key, record) = gw
            .key(NewKey {
                name: "budget".into(),
                budget_usd: Some(0.05),
                ..NewKey::default()
            })
            .await;
        let mut answered = 0;
        loop {
            let body = json!({"model": "mock", "messages": [{"role": "user", "content": format!("spend {answered}")}], "max_tokens": 5});
            let reply = gw.post(CHAT, &key, &body).await;
            if reply.status != 200 {
                assert_eq!(reply.status, 429);
                break;
            }
            answered += 1;
            assert!(answered < 20, "the budget never ran out");
        }
        let spent = gw.spent(&record.id).await;
        let mut refused = Vec::new();
        for (path, mut body) in the_three("mock", "after the budget") {
            if path == RESPONSES {
                body["stream"] = json!(true);
            }
            let reply = gw.post(path, &key, &body).await;
            refused.push(refusal(path, &reply));
        }
        let (chat, messages, responses) = (&refused[0], &refused[1], &refused[2]);
        assert_eq!(chat.0, 429);
        assert_eq!(chat.1, "budget_exceeded");
        assert_eq!(responses, chat, "a stream is refused before it starts, as chat is");
        assert_eq!(
            messages,
            &(429, "rate_limit_error".to_owned(), chat.2.clone())
        );
        assert_eq!(gw.spent(&record.id).await, spent, "refusals cost nothing");
    })
    .await;
}
