//! The cache key: a SHA-256 of the canonical text of everything that changes an answer.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::{AnthropicExtras, ChatRequest, JsonObject, Message, Stop, Tool};

pub type CacheKey = [u8; 32];

/// Everything that changes the answer, and nothing that does not (`user`, `stream`,
/// `stream_options`, `metadata`). Serialised with sorted object keys, so the hash is canonical.
#[derive(Serialize)]
struct CanonicalRequest<'a> {
    partition: Option<&'a str>,
    provider: &'a str,
    upstream_model: &'a str,
    model_version: Option<&'a str>,
    messages: &'a [Message],
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<u32>,
    stop: Option<&'a Stop>,
    seed: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logit_bias: Option<&'a JsonObject>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
    tools: Option<&'a [Tool]>,
    tool_choice: Option<&'a serde_json::Value>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<&'a serde_json::Value>,
    extra: &'a JsonObject,
    /// Anthropic-only settings that change an answer (thinking, `top_k`, betas). Absent
    /// otherwise, so the keys of other requests are unchanged and a Messages request shares its
    /// key with the equal chat request; the API version does not change what a model answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    anthropic: Option<AnthropicKey<'a>>,
    /// A RAG answer's retrieval: collection, its version and the chunk ids. Absent otherwise,
    /// so the keys of other requests are unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    retrieval: Option<&'a Value>,
}

#[derive(Serialize)]
struct AnthropicKey<'a> {
    thinking: Option<&'a Value>,
    top_k: Option<u32>,
    beta: Option<&'a str>,
}

impl<'a> AnthropicKey<'a> {
    fn of(extras: &'a AnthropicExtras) -> Option<Self> {
        let key = Self {
            thinking: extras.thinking.as_ref(),
            top_k: extras.top_k,
            beta: extras.beta.as_deref(),
        };
        (key.thinking.is_some() || key.top_k.is_some() || key.beta.is_some()).then_some(key)
    }
}

/// Hashes a request for the cache. `partition` is the tenant, or `None` for a global cache.
pub fn cache_key(
    partition: Option<&str>,
    provider: &str,
    upstream_model: &str,
    model_version: Option<&str>,
    request: &ChatRequest,
) -> CacheKey {
    cache_key_with_retrieval(
        partition,
        provider,
        upstream_model,
        model_version,
        request,
        None,
    )
}

/// The key of a request whose prompt holds retrieved chunks: `retrieval` (see
/// `rag::cache_context`) names the collection version and chunks, so a write to the collection
/// never serves an answer built from its old content.
pub fn cache_key_with_retrieval(
    partition: Option<&str>,
    provider: &str,
    upstream_model: &str,
    model_version: Option<&str>,
    request: &ChatRequest,
    retrieval: Option<&Value>,
) -> CacheKey {
    let text = canonical_text(
        partition,
        provider,
        upstream_model,
        model_version,
        request,
        retrieval,
    );
    Sha256::digest(&text).into()
}

/// The text the cache key hashes.
fn canonical_text(
    partition: Option<&str>,
    provider: &str,
    upstream_model: &str,
    model_version: Option<&str>,
    request: &ChatRequest,
    retrieval: Option<&Value>,
) -> Vec<u8> {
    let canonical = CanonicalRequest {
        partition,
        provider,
        upstream_model,
        model_version,
        messages: &request.messages,
        max_tokens: request.max_output_tokens(),
        temperature: request.temperature,
        top_p: request.top_p,
        n: request.n,
        stop: request.stop.as_ref(),
        seed: request.seed,
        presence_penalty: request.presence_penalty,
        frequency_penalty: request.frequency_penalty,
        logit_bias: request.logit_bias.as_ref(),
        logprobs: request.logprobs,
        top_logprobs: request.top_logprobs,
        tools: request.tools.as_deref(),
        tool_choice: request.tool_choice.as_ref(),
        parallel_tool_calls: request.parallel_tool_calls,
        response_format: request.response_format.as_ref(),
        extra: &request.extra,
        anthropic: request.anthropic.as_ref().and_then(AnthropicKey::of),
        retrieval,
    };
    // Through a JSON value, then written canonically: objects with sorted keys at every depth and
    // numbers by value, so neither the order of a client's fields nor serde_json's map order
    // (insertion order when any crate in the build enables `preserve_order`) nor `1` vs `1.0`
    // changes the key. The types above have no fallible serialisers.
    let value = serde_json::to_value(&canonical).unwrap_or(Value::Null);
    let mut text = Vec::with_capacity(1024);
    write_canonical(&value, &mut text);
    text
}

/// Canonical JSON text of `value`: object keys sorted by their bytes, no whitespace, strings as
/// serde_json escapes them, and every number that is a whole value below 2^53 written as an
/// integer (`1.0` and `1` mean the same to every provider).
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(text) => write_string(text, out),
        Value::Number(number) => write_number(number, out),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Null => out.extend_from_slice(b"null"),
    }
}

fn write_string(text: &str, out: &mut Vec<u8>) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

fn write_number(number: &serde_json::Number, out: &mut Vec<u8>) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every whole f64 below it is exact
    let whole = number
        .as_f64()
        .filter(|f| f.fract() == 0.0 && f.abs() < EXACT && !(number.is_i64() || number.is_u64()));
    match whole {
        // `-0.0` and `0.0` are the same whole number.
        Some(f) => out.extend_from_slice((f as i64).to_string().as_bytes()),
        None => out.extend_from_slice(number.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: serde_json::Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn key_ignores_user_stream_and_metadata_but_not_sampling_or_tenant() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0});
        let mut with_user = base.clone();
        with_user["user"] = json!("u1");
        with_user["stream"] = json!(true);
        with_user["metadata"] = json!({"a": "b"});
        let k = |v: &serde_json::Value, tenant| {
            cache_key(Some(tenant), "p", "m", None, &request(v.clone()))
        };
        assert_eq!(k(&base, "t"), k(&with_user, "t"));
        assert_ne!(k(&base, "t"), k(&base, "other"));
        let mut seeded = base.clone();
        seeded["seed"] = json!(1);
        assert_ne!(k(&base, "t"), k(&seeded, "t"));
        let mut unknown = base.clone();
        unknown["reasoning_effort"] = json!("high");
        assert_ne!(k(&base, "t"), k(&unknown, "t"));
        let versioned = cache_key(
            Some("t"),
            "p",
            "m",
            Some("2024-08-06"),
            &request(base.clone()),
        );
        assert_ne!(k(&base, "t"), versioned);
    }

    #[test]
    fn anthropic_thinking_and_top_k_change_the_key() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let k = |v: serde_json::Value| cache_key(Some("t"), "p", "m", None, &request(v));
        let mut thinking = base.clone();
        thinking["anthropic"] = json!({"thinking": {"type": "enabled", "budget_tokens": 1024}});
        let mut top_k = base.clone();
        top_k["anthropic"] = json!({"top_k": 5});
        assert_ne!(k(base.clone()), k(thinking.clone()));
        assert_ne!(k(base.clone()), k(top_k.clone()));
        assert_ne!(k(thinking), k(top_k));
        let mut version_only = base.clone();
        version_only["anthropic"] = json!({"version": "2023-06-01"});
        assert_eq!(
            k(base),
            k(version_only),
            "the API version changes no answer"
        );
    }

    #[test]
    fn a_retrieval_changes_the_key_and_its_absence_does_not() {
        let base = request(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
        let plain = cache_key(Some("t"), "p", "m", None, &base);
        let key = |retrieval: Option<&Value>| {
            cache_key_with_retrieval(Some("t"), "p", "m", None, &base, retrieval)
        };
        assert_eq!(key(None), plain);
        let v1 = json!({"collection": "c", "collection_version": 1, "chunks": ["d#0"]});
        let v2 = json!({"collection": "c", "collection_version": 2, "chunks": ["d#0"]});
        assert_ne!(key(Some(&v1)), plain);
        assert_ne!(key(Some(&v1)), key(Some(&v2)));
    }

    #[test]
    fn the_canonical_text_is_pinned_byte_for_byte() {
        let request = request(json!({
            "model": "m", "temperature": 0.0, "zeta": {"b": 1.0, "a": [2.5, -0.0, "é\""]},
            "messages": [{"role": "user", "content": "hi", "name": "n"}], "alpha": null
        }));
        let text = canonical_text(Some("t"), "p", "m-up", Some("v1"), &request, None);
        assert_eq!(
            String::from_utf8(text).unwrap(),
            r#"{"extra":{"alpha":null,"zeta":{"a":[2.5,0,"é\""],"b":1}},"frequency_penalty":null,"logit_bias":null,"logprobs":null,"max_tokens":null,"messages":[{"content":"hi","name":"n","role":"user"}],"model_version":"v1","n":null,"parallel_tool_calls":null,"partition":"t","presence_penalty":null,"provider":"p","response_format":null,"seed":null,"stop":null,"temperature":0,"tool_choice":null,"tools":null,"top_logprobs":null,"top_p":null,"upstream_model":"m-up"}"#
        );
    }

    /// A JSON object's members in the order given by `order` (a permutation seed).
    fn object_in_order(members: &[(&str, serde_json::Value)], order: &[usize]) -> String {
        let mut indexes: Vec<usize> = (0..members.len()).collect();
        for (i, swap) in order.iter().enumerate() {
            let j = swap % members.len();
            indexes.swap(i % members.len(), j);
        }
        let parts: Vec<String> = indexes
            .iter()
            .map(|i| format!("{:?}:{}", members[*i].0, members[*i].1))
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    proptest::proptest! {
        #[test]
        fn equal_requests_in_any_field_order_share_one_key(
            order in proptest::collection::vec(0usize..16, 0..16),
            text in "[a-z ]{0,20}",
            temperature in 0u8..3,
            seed in proptest::option::of(0i64..5),
            extra in 0u32..4,
        ) {
            let members = |whole_numbers_as_floats: bool| {
                let number = |n: u32| if whole_numbers_as_floats {
                    serde_json::Value::from(f64::from(n))
                } else {
                    serde_json::Value::from(n)
                };
                vec![
                    ("model", json!("m")),
                    ("messages", json!([{"role": "user", "content": text.clone()}])),
                    ("temperature", number(u32::from(temperature))),
                    ("seed", json!(seed)),
                    ("reasoning", json!({"effort": "high", "budget": number(extra)})),
                    ("custom", number(extra + 1)),
                ]
            };
            let plain = members(false);
            let key = |members: &[(&str, serde_json::Value)], order: &[usize]| {
                let body = object_in_order(members, order);
                cache_key(Some("t"), "p", "m", None, &serde_json::from_str(&body).unwrap())
            };
            let reference = key(&plain, &[]);
            proptest::prop_assert_eq!(key(&plain, &order), reference);
            proptest::prop_assert_eq!(key(&members(true), &order), reference);
            let mut changed = plain.clone();
            changed[5].1 = json!(extra + 2);
            proptest::prop_assert_ne!(key(&changed, &order), reference);
            let mut nested = plain.clone();
            nested[4].1 = json!({"effort": "low", "budget": extra});
            proptest::prop_assert_ne!(key(&nested, &order), reference);
            let mut other_text = plain;
            other_text[1].1 = json!([{"role": "user", "content": format!("{text}!")}]);
            proptest::prop_assert_ne!(key(&other_text, &order), reference);
        }
    }
}
