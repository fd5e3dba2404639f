//! Structured output: a client's JSON schema compiled once per request and a model's answer
//! checked against it. The schema comes from the client, so compiling it must not reach out:
//! `$ref`s resolve only inside the schema (no URL is fetched, no file read), and `pattern`s run on
//! the `regex` crate, whose matching is linear in the input (no catastrophic backtracking). The
//! validator is our own ([`super::json_schema`], which says why and what subset it implements).

use super::json_schema::{self, Compiled, Failure};
use serde_json::Value;

/// Deepest nesting of objects and arrays a schema may have. The compiler recurses once per
/// level; the request body's size already bounds the schema's size.
pub const MAX_SCHEMA_DEPTH: usize = 64;

/// Longest error text (the failing JSON pointer and what failed there) handed to a client or a
/// model: an answer's offending value may be long.
pub const MAX_ERROR_CHARS: usize = 400;

/// A compiled schema.
pub struct OutputSchema {
    compiled: Compiled,
}

/// Why an answer does not match: the JSON pointer of the failing value and what failed there,
/// bounded to [`MAX_ERROR_CHARS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl OutputSchema {
    /// Compiles `schema`; the error says what is wrong with it, in the client's terms.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        let depth = nesting_depth(schema);
        if depth > MAX_SCHEMA_DEPTH {
            return Err(format!(
                "the schema nests {depth} levels deep; at most {MAX_SCHEMA_DEPTH} are accepted"
            ));
        }
        let compiled = json_schema::compile(schema).map_err(|e| bounded(&e))?;
        Ok(Self { compiled })
    }

    /// Checks an answer's text: it must be JSON and match the schema.
    pub fn check(&self, answer: &str) -> Result<(), Violation> {
        let instance: Value = serde_json::from_str(answer.trim())
            .map_err(|e| Violation(bounded(&format!("the answer is not JSON ({e})"))))?;
        self.compiled
            .check(&instance)
            .map_err(|failure| match failure {
                Failure::Invalid { pointer, message } => {
                    let at = if pointer.is_empty() { "/" } else { &pointer };
                    Violation(bounded(&format!("at `{at}`: {message}")))
                }
                Failure::TooCostly => Violation(format!(
                    "the schema is too costly to check against this answer (more than {} steps, \
                 or subschemas nested too deep)",
                    json_schema::MAX_STEPS
                )),
            })
    }
}

/// Levels of objects and arrays in `value` (a scalar is 0), without recursing: the value may
/// come straight from a client.
fn nesting_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0usize)];
    while let Some((value, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Object(fields) => Box::new(fields.values()),
            Value::Array(items) => Box::new(items.iter()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        pending.extend(children.map(|child| (child, depth + 1)));
    }
    deepest
}

fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or_default()),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    fn person() -> OutputSchema {
        OutputSchema::compile(&json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}}
            },
            "required": ["name"],
            "additionalProperties": false
        }))
        .unwrap()
    }

    #[test]
    fn a_matching_answer_passes() {
        person()
            .check(r#" {"name": "Ada", "tags": ["math"]} "#)
            .unwrap();
    }

    #[test]
    fn a_failure_names_the_json_pointer_of_the_failing_value() {
        let error = person()
            .check(r#"{"name": "Ada", "tags": ["ok", "far too long"]}"#)
            .unwrap_err();
        assert!(error.0.starts_with("at `/tags/1`:"), "{error}");
        let error = person().check(r#"{"tags": []}"#).unwrap_err();
        assert!(error.0.starts_with("at `/`:"), "{error}");
        assert!(error.0.contains("name"), "{error}");
    }

    #[test]
    fn an_answer_that_is_not_json_fails() {
        let error = person().check("Sure! Here is the JSON: {").unwrap_err();
        assert!(error.0.starts_with("the answer is not JSON"), "{error}");
    }

    #[test]
    fn error_text_is_bounded() {
        let long = "x".repeat(10_000);
        let error = person().check(&format!(r#"{{"name": 1, "{long}": 2}}"#));
        let error = error.unwrap_err();
        assert!(error.0.chars().count() <= MAX_ERROR_CHARS + 1, "{error}");
    }

    #[test]
    fn a_remote_or_file_ref_is_refused_without_being_fetched() {
        for target in [
            "https://127.0.0.1:9/schema.json",
            "http://169.254.169.254/latest/meta-data",
            "file:///etc/passwd",
        ] {
            let started = Instant::now();
            let error = OutputSchema::compile(&json!({"$ref": target}))
                .err()
                .unwrap();
            assert!(started.elapsed() < Duration::from_secs(1));
            assert!(!error.is_empty());
        }
        // A `$ref` inside the schema resolves.
        let schema = OutputSchema::compile(&json!({
            "$defs": {"id": {"type": "integer"}},
            "type": "object",
            "properties": {"id": {"$ref": "#/$defs/id"}}
        }))
        .unwrap();
        assert!(schema.check(r#"{"id": 3}"#).is_ok());
        assert!(schema.check(r#"{"id": "3"}"#).is_err());
    }

    #[test]
    fn a_catastrophic_pattern_runs_in_linear_time() {
        let schema =
            OutputSchema::compile(&json!({"type": "string", "pattern": "^(a+)+$"})).unwrap();
        let evil = format!("\"{}b\"", "a".repeat(100_000));
        let started = Instant::now();
        assert!(schema.check(&evil).is_err());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(schema.check(&format!("\"{}\"", "a".repeat(1000))).is_ok());
    }

    #[test]
    fn patterns_that_need_backtracking_are_refused() {
        let error = OutputSchema::compile(&json!({"type": "string", "pattern": "^(a)\\1$"}));
        assert!(error.is_err());
    }

    #[test]
    fn a_schema_nested_too_deep_is_refused() {
        let mut schema = json!({"type": "string"});
        for _ in 0..MAX_SCHEMA_DEPTH {
            schema = json!({"type": "object", "properties": {"a": schema}});
        }
        let error = OutputSchema::compile(&schema).err().unwrap();
        assert!(error.contains("nests"), "{error}");
        let mut shallow = json!({"type": "string"});
        for _ in 0..(MAX_SCHEMA_DEPTH / 2 - 1) {
            shallow = json!({"type": "object", "properties": {"a": shallow}});
        }
        assert!(OutputSchema::compile(&shallow).is_ok());
    }

    #[test]
    fn an_invalid_schema_is_refused() {
        assert!(OutputSchema::compile(&json!({"type": "no-such-type"})).is_err());
        assert!(OutputSchema::compile(&json!({"type": "string", "pattern": "("})).is_err());
    }
}
