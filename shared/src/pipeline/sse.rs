//! SSE framing, and the scanner that relays an upstream chunk's own text without its `usage`.

use std::sync::LazyLock;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use memchr::memmem::Finder;
use serde::Serialize;

use crate::error::ApiError;

pub(crate) fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub(crate) fn sse_data<T: Serialize>(value: &T) -> Bytes {
    let mut frame = b"data: ".to_vec();
    if serde_json::to_writer(&mut frame, value).is_err() {
        frame.truncate(6);
        frame.extend_from_slice(
            br#"{"error":{"message":"cannot encode chunk","type":"api_error"}}"#,
        );
    }
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// An upstream chunk's JSON text as an SSE event, without its top-level `usage` member when
/// `strip_usage`. None (the chunk is then serialised instead) when the text lacks a field the
/// serialised chunk would have (the parsed chunk fills in `object`, `created`, `model` and
/// `choices` when they are missing), or when `usage` cannot be cut out with certainty (a key with
/// escapes, text that is not an object).
pub(crate) fn sse_relay_frame(raw: &[u8], strip_usage: bool) -> Option<Bytes> {
    if !has_keys(raw, &*CHUNK_FILLED_KEYS) {
        return None;
    }
    // OpenAI ends each chunk of a stream with `"usage":null` when usage was asked for (the
    // gateway always asks): cut it without a scan. (In valid JSON that suffix can only be a
    // member of the outer object.)
    const NULL_USAGE_LAST: &[u8] = b",\"usage\":null}";
    let (head, tail): (&[u8], &[u8]) = match raw.strip_suffix(NULL_USAGE_LAST) {
        Some(head) if strip_usage => (head, b"}"),
        _ if !strip_usage => (raw, b""),
        _ => match top_level_members(raw, b"usage")?.found {
            Some(range) => (raw.get(..range.start)?, raw.get(range.end..)?),
            None => (raw, b""),
        },
    };
    let mut frame = Vec::with_capacity(head.len() + tail.len() + 8);
    frame.extend_from_slice(b"data: ");
    frame.extend_from_slice(head);
    frame.extend_from_slice(tail);
    frame.extend_from_slice(b"\n\n");
    Some(Bytes::from(frame))
}

/// The keys whose absence the parsed chunk fills in, as searchers built once (building one costs
/// about as much as a search over a chunk).
static CHUNK_FILLED_KEYS: LazyLock<[Finder<'static>; 4]> = LazyLock::new(|| {
    [
        Finder::new(b"\"object\""),
        Finder::new(b"\"created\""),
        Finder::new(b"\"model\""),
        Finder::new(b"\"choices\""),
    ]
});

/// Whether every one of `keys` (each a quoted name) appears in `json` followed by a colon.
/// Each key is found with memchr's substring search (every occurrence of a quoted key starts at
/// a quote, so this finds what a walk over the quotes would find, without visiting each one).
pub(crate) fn has_keys(json: &[u8], keys: &[Finder<'_>]) -> bool {
    keys.iter().all(|key| {
        let length = key.needle().len();
        key.find_iter(json).any(|at| {
            json.get(at + length..)
                .and_then(|after| after.trim_ascii_start().first())
                == Some(&b':')
        })
    })
}

/// What a scan of a JSON object's top level found.
pub(crate) struct TopLevel {
    /// The bytes to cut to remove the member asked for: the member and one comma beside it.
    found: Option<std::ops::Range<usize>>,
}

/// Scans the top level of a JSON object without building it. None when the text is not an object
/// or has a key with escapes (which this does not decode); the text is otherwise trusted to be
/// valid JSON (it was parsed already).
pub(crate) fn top_level_members(json: &[u8], wanted: &[u8]) -> Option<TopLevel> {
    let ws = |mut i: usize| {
        while json.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let mut result = TopLevel { found: None };
    let mut i = ws(0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(i + 1);
    if json.get(i) == Some(&b'}') {
        return Some(result);
    }
    let mut previous_comma: Option<usize> = None;
    loop {
        let key_start = i;
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = i + 1 + json.get(i + 1..)?.iter().position(|b| *b == b'"')?;
        let key = json.get(i + 1..key_end)?;
        if key.contains(&b'\\') {
            return None;
        }
        i = ws(key_end + 1);
        if json.get(i) != Some(&b':') {
            return None;
        }
        let value_end = skip_json_value(json, ws(i + 1))?;
        let next = ws(value_end);
        if key == wanted && result.found.is_none() {
            result.found = Some(match (previous_comma, json.get(next)) {
                (Some(comma), _) => comma..value_end,
                (None, Some(b',')) => key_start..ws(next + 1),
                (None, _) => key_start..value_end,
            });
        }
        match json.get(next) {
            Some(b',') => {
                previous_comma = Some(next);
                i = ws(next + 1);
            }
            Some(b'}') => return Some(result),
            _ => return None,
        }
    }
}

/// The index just past the JSON value starting at `start`.
pub(crate) fn skip_json_value(json: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    match json.get(i)? {
        b'"' => skip_json_string(json, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match json.get(i)? {
                    b'"' => {
                        i = skip_json_string(json, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            while json
                .get(i)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
            {
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

/// The index just past the JSON string whose opening quote is at `start`.
pub(crate) fn skip_json_string(json: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match json.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

pub(crate) const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

pub(crate) fn sse_error(error: &ApiError) -> Bytes {
    Bytes::from(format!("data: {}\n\n", error.body_json()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn relayed(raw: &str, strip_usage: bool) -> Option<Value> {
        let frame = sse_relay_frame(raw.as_bytes(), strip_usage)?;
        let text = std::str::from_utf8(&frame).unwrap();
        let json = text.strip_prefix("data: ")?.strip_suffix("\n\n")?;
        Some(serde_json::from_str(json).expect("the relayed frame is valid JSON"))
    }

    #[test]
    fn relayed_chunks_lose_exactly_their_top_level_usage() {
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [
            {"index": 0, "delta": {"content": "a \"usage\": {} } ,"}, "usage": 1}
        ]});
        for usage in [
            json!(null),
            json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}),
        ] {
            let mut with_usage = chunk.clone();
            with_usage["usage"] = usage.clone();
            let compact = serde_json::to_string(&with_usage).unwrap();
            let spaced = serde_json::to_string_pretty(&with_usage)
                .unwrap()
                .replace('\n', " ");
            for text in [&compact, &spaced] {
                assert_eq!(relayed(text, true), Some(chunk.clone()), "{text}");
                assert_eq!(relayed(text, false), Some(with_usage.clone()), "{text}");
            }
        }
        // Usage first, last and alone.
        let fields = r#""object":"x","created":1,"model":"m","choices":[]"#;
        let expected = json!({"object": "x", "created": 1, "model": "m", "choices": []});
        for text in [
            format!(r#"{{"usage":null,{fields}}}"#),
            format!(r#"{{ {fields} , "usage" : [1, {{"a": "}}"}}] }}"#),
            format!(r#"{{{fields},"usage":{{"total_tokens":3}}}}"#),
            format!(r#"{{{fields}}}"#),
        ] {
            assert_eq!(relayed(&text, true), Some(expected.clone()), "{text}");
        }
    }

    #[test]
    fn chunks_the_relay_cannot_vouch_for_are_serialised_instead() {
        // Escaped keys, text that is not an object.
        let fields = r#""object":"x","created":1,"model":"m","choices":[]"#;
        assert_eq!(
            relayed(&format!(r#"{{{fields},"us\u0061ge":null}}"#), true),
            None
        );
        assert_eq!(relayed(&format!(r#"[{{{fields}}}]"#), true), None);
        assert_eq!(relayed(&format!(r#"{{{fields},"id":"c""#), true), None);
        // A chunk without a field its parsed form fills in is serialised (with the field).
        assert_eq!(
            relayed(r#"{"id":"c","created":1,"model":"m","choices":[]}"#, false),
            None
        );
        assert_eq!(
            relayed(
                r#"{"id":"c","object":"o","created":1,"model":"m","choices" :[]}"#,
                false
            ),
            Some(json!({"id": "c", "object": "o", "created": 1, "model": "m", "choices": []}))
        );
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z \"{}\\[\\],:\\\\]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z_\"]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever the chunk holds and wherever `usage` stands, the relayed text parses to the
        /// chunk without its top-level `usage` (or, untouched, to the chunk itself).
        #[test]
        fn the_usage_scanner_agrees_with_serde_json(
            extra in proptest::collection::vec(("[a-z]{1,6}", json_value()), 0..4),
            usage in json_value(),
            position in 0usize..8,
            pretty: bool,
        ) {
            let mut members: Vec<(String, Value)> = vec![
                ("id".into(), json!("c")),
                ("object".into(), json!("chat.completion.chunk")),
                ("created".into(), json!(1)),
                ("model".into(), json!("m")),
                ("choices".into(), json!([{"index": 0, "delta": {"content": "usage\": {}"}}])),
            ];
            for (key, value) in extra {
                if !members.iter().any(|(k, _)| *k == key) && key != "usage" {
                    members.push((key, value));
                }
            }
            let at = position.min(members.len());
            members.insert(at, ("usage".into(), usage));
            let separator = if pretty { " , " } else { "," };
            let colon = if pretty { " : " } else { ":" };
            let text = format!(
                "{{{}}}",
                members
                    .iter()
                    .map(|(k, v)| format!("{}{colon}{v}", Value::from(k.as_str())))
                    .collect::<Vec<_>>()
                    .join(separator)
            );
            let whole: Value = serde_json::from_str(&text).unwrap();
            let mut without = whole.clone();
            if let Some(object) = without.as_object_mut() {
                object.remove("usage");
            }
            proptest::prop_assert_eq!(relayed(&text, true), Some(without));
            proptest::prop_assert_eq!(relayed(&text, false), Some(whole));
        }
    }
}
