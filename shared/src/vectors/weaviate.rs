//! One Weaviate class over Weaviate's REST and GraphQL API (no vendor SDK). Every tenant's
//! collection shares the class: an object's `ns` property is the namespace digest and every
//! query and delete is limited to it. Objects get deterministic UUIDs from the namespace and the
//! chunk key, so a re-upsert replaces the object. Metadata fields become properties (numbers as
//! `number`, so one value type serves every comparison) for filtering, and are also kept whole
//! as JSON in `gateway_metadata`, since a GraphQL `Get` names the properties it returns.
//!
//! Upserts go through `POST /v1/batch/objects`, queries through GraphQL `Get` with `nearVector`
//! and a `where` filter translated from [`MetadataFilter`], deletes through
//! `DELETE /v1/batch/objects` with a `where` on the objects' ids. The class must use cosine
//! distance, field tokenization for its text properties (whole-value comparison) and
//! `indexNullState` (for `$exists`); `$ne`/`$nin` use `Not`, Weaviate 1.33 or later.

use std::time::Duration;

use serde_json::{Map, Number, Value, json};
use sha2::{Digest, Sha256};

use super::filter::{Condition, Node, Scalar};
use super::{
    MetadataFilter, Namespace, VectorHit, VectorRecord, VectorStore, invalid, prepared,
    query_vector,
};
use crate::error::StoreError;

/// Objects per batch upsert: 100 vectors of 4,096 dimensions stay within a few MB.
const MAX_OBJECTS_PER_BATCH: usize = 100;
/// Ids per batch delete, each a 36-character UUID in the `where` filter.
const MAX_IDS_PER_DELETE: usize = 100;
/// Largest response read: a batch's per-object results, or `MAX_TOP_K` hits with their text.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);
/// The properties the store keeps beside the chunk's metadata (`ns` and `text` are reserved
/// for every store already).
const KEY_PROPERTY: &str = "gateway_key";
const METADATA_PROPERTY: &str = "gateway_metadata";
/// Longest property name Weaviate accepts.
const MAX_PROPERTY_NAME_CHARS: usize = 230;

pub struct WeaviateVectorStore {
    http: reqwest::Client,
    /// The instance's base URL, e.g. `https://xyz.weaviate.cloud`.
    url: String,
    class: String,
    api_key: String,
    dimensions: u32,
    /// What errors name: the collection's backend, never the host.
    label: String,
}

/// A Weaviate class name: a GraphQL name starting with a capital letter.
pub fn is_class_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_PROPERTY_NAME_CHARS
}

/// A Weaviate property name: `/[_A-Za-z][_0-9A-Za-z]*/`.
fn is_property_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_PROPERTY_NAME_CHARS
}

/// The object id of a chunk: a name-based UUID of the namespace digest and the key.
pub fn object_id(namespace: &Namespace, key: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(namespace.digest().as_bytes());
    hash.update([0u8]);
    hash.update(key.as_bytes());
    let mut first = [0u8; 16];
    for (slot, byte) in first.iter_mut().zip(hash.finalize()) {
        *slot = byte;
    }
    // Version 5 (name-based) and the RFC 4122 variant, so it is a valid UUID.
    let id = u128::from_be_bytes(first);
    let id = (id & !(0xf << 76)) | (0x5 << 76);
    let id = (id & !(0b11 << 62)) | (0b10 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        id >> 96,
        (id >> 80) & 0xffff,
        (id >> 64) & 0xffff,
        (id >> 48) & 0xffff,
        id & 0xffff_ffff_ffff
    )
}

impl WeaviateVectorStore {
    pub fn new(
        url: String,
        class: String,
        api_key: String,
        dimensions: u32,
        label: String,
    ) -> Self {
        Self {
            http: crate::tls::http_client(),
            url: url.trim_end_matches('/').to_owned(),
            class,
            api_key,
            dimensions,
            label,
        }
    }

    fn failed(&self, what: &str) -> StoreError {
        StoreError::Backend(format!("{} (Weaviate): {what}", self.label))
    }

    fn refused(&self, what: &str, message: &str) -> StoreError {
        StoreError::Invalid(format!(
            "{} (Weaviate) refused the {what}: {message}",
            self.label
        ))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        what: &str,
        body: Value,
    ) -> Result<Value, StoreError> {
        let request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.api_key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(TIMEOUT);
        let mut response = request
            .send()
            .await
            .map_err(|e| self.failed(&format!("{what} failed ({})", kind(&e))))?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            self.failed(&format!(
                "reading the {what}'s answer failed ({})",
                kind(&e)
            ))
        })? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(self.failed(&format!("the {what}'s answer is larger than expected")));
            }
            bytes.extend_from_slice(&chunk);
        }
        let answer = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
        if status == reqwest::StatusCode::BAD_REQUEST
            || status == reqwest::StatusCode::UNPROCESSABLE_ENTITY
        {
            return Err(self.refused(what, &first_error(&answer).unwrap_or_default()));
        }
        if !status.is_success() {
            return Err(self.failed(&format!("the {what} answered HTTP {}", status.as_u16())));
        }
        Ok(answer)
    }

    /// The object Weaviate stores for a record (already checked and normalised).
    fn object(&self, namespace: &Namespace, record: &VectorRecord) -> Result<Value, StoreError> {
        let mut properties = Map::new();
        for (name, value) in &record.metadata {
            if !is_property_name(name) || name == KEY_PROPERTY || name == METADATA_PROPERTY {
                return Err(invalid(format!(
                    "vector `{}`: metadata field `{name}` cannot be a Weaviate property (letters, \
                     digits and `_`, not starting with a digit, and not `{KEY_PROPERTY}` or \
                     `{METADATA_PROPERTY}`)",
                    record.key
                )));
            }
            properties.insert(name.clone(), as_property(value));
        }
        properties.insert("ns".into(), Value::String(namespace.digest()));
        properties.insert("text".into(), Value::String(record.text.clone()));
        properties.insert(KEY_PROPERTY.into(), Value::String(record.key.clone()));
        properties.insert(
            METADATA_PROPERTY.into(),
            Value::String(Value::Object(record.metadata.clone()).to_string()),
        );
        Ok(json!({
            "class": self.class,
            "id": object_id(namespace, &record.key),
            "vector": record.vector,
            "properties": properties,
        }))
    }
}

/// Numbers are stored as `number` (a float), so the filter compares them with `valueNumber`
/// whether they were written as integers or not.
fn as_property(value: &Value) -> Value {
    match value {
        Value::Number(n) => n
            .as_f64()
            .and_then(Number::from_f64)
            .map_or(Value::Null, Value::Number),
        other => other.clone(),
    }
}

/// Weaviate's error text: `{"error": [{"message"}]}` (REST) or `{"errors": [{"message"}]}`
/// (GraphQL and per-object batch results).
fn first_error(answer: &Value) -> Option<String> {
    ["error", "errors"].iter().find_map(|field| {
        answer
            .get(field)
            .and_then(Value::as_array)
            .and_then(|errors| errors.first())
            .and_then(|error| error.get("message"))
            .and_then(Value::as_str)
            .map(|message| message.chars().take(300).collect())
    })
}

/// What went wrong with a request, without its URL.
fn kind(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "transport error"
    }
}

fn operands(operator: &str, operands: Vec<Value>) -> Value {
    json!({"operator": operator, "operands": operands})
}

fn condition(name: &str, operator: &str, value_type: &str, value: Value) -> Value {
    let mut condition = json!({"path": [name], "operator": operator});
    if let Some(fields) = condition.as_object_mut() {
        fields.insert(value_type.into(), value);
    }
    condition
}

fn number_value(n: &Number) -> Value {
    n.as_f64()
        .and_then(Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn equal(name: &str, scalar: &Scalar) -> Value {
    match scalar {
        Scalar::String(text) => condition(name, "Equal", "valueText", json!(text)),
        Scalar::Number(n) => condition(name, "Equal", "valueNumber", number_value(n)),
        Scalar::Bool(b) => condition(name, "Equal", "valueBoolean", json!(b)),
    }
}

/// `ContainsAny` per value type (one operand takes one type), ORed when the list mixes types.
fn contains_any(name: &str, list: &[Scalar]) -> Value {
    let (mut texts, mut numbers, mut booleans) = (Vec::new(), Vec::new(), Vec::new());
    for scalar in list {
        match scalar {
            Scalar::String(text) => texts.push(json!(text)),
            Scalar::Number(n) => numbers.push(number_value(n)),
            Scalar::Bool(b) => booleans.push(json!(b)),
        }
    }
    let mut conditions: Vec<Value> = [
        ("valueTextArray", texts),
        ("valueNumberArray", numbers),
        ("valueBooleanArray", booleans),
    ]
    .into_iter()
    .filter(|(_, values)| !values.is_empty())
    .map(|(value_type, values)| condition(name, "ContainsAny", value_type, Value::Array(values)))
    .collect();
    match conditions.len() {
        1 => conditions.pop().unwrap_or(Value::Null),
        _ => operands("Or", conditions),
    }
}

/// The filter as a Weaviate `where`: the same semantics as the embedded index (`$ne` and
/// `$nin` pass a missing field, so they are `Not` of the positive condition).
fn translated(node: &Node) -> Value {
    match node {
        Node::And(nodes) => operands("And", nodes.iter().map(translated).collect()),
        Node::Or(nodes) => operands("Or", nodes.iter().map(translated).collect()),
        Node::Field(name, condition_of) => {
            let range = |operator: &str, n: &Number| {
                condition(name, operator, "valueNumber", number_value(n))
            };
            match condition_of {
                Condition::Eq(scalar) => equal(name, scalar),
                Condition::Ne(scalar) => operands("Not", vec![equal(name, scalar)]),
                Condition::Gt(n) => range("GreaterThan", n),
                Condition::Gte(n) => range("GreaterThanEqual", n),
                Condition::Lt(n) => range("LessThan", n),
                Condition::Lte(n) => range("LessThanEqual", n),
                Condition::In(list) => contains_any(name, list),
                Condition::Nin(list) => operands("Not", vec![contains_any(name, list)]),
                Condition::Exists(exists) => {
                    condition(name, "IsNull", "valueBoolean", json!(!exists))
                }
            }
        }
    }
}

/// A JSON value in GraphQL input syntax: object keys bare, `operator` values as enum names,
/// strings and numbers as JSON writes them (GraphQL's string escapes are JSON's).
fn graphql(value: &Value, out: &mut String) {
    match value {
        Value::Object(fields) => {
            out.push('{');
            for (i, (name, field)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(name);
                out.push_str(": ");
                match (name.as_str(), field) {
                    ("operator", Value::String(operator)) => out.push_str(operator),
                    _ => graphql(field, out),
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                graphql(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[async_trait::async_trait]
impl VectorStore for WeaviateVectorStore {
    fn fixed_dimensions(&self) -> Option<u32> {
        Some(self.dimensions)
    }

    async fn put(
        &self,
        namespace: &Namespace,
        records: Vec<VectorRecord>,
    ) -> Result<(), StoreError> {
        let records = prepared(records, Some(self.dimensions as usize))?;
        let objects = records
            .iter()
            .map(|record| self.object(namespace, record))
            .collect::<Result<Vec<_>, _>>()?;
        for batch in objects.chunks(MAX_OBJECTS_PER_BATCH) {
            let answer = self
                .call(
                    reqwest::Method::POST,
                    "/v1/batch/objects",
                    "batch upsert",
                    json!({"objects": batch}),
                )
                .await?;
            let results = answer
                .as_array()
                .ok_or_else(|| self.failed("the batch upsert's answer is not a list"))?;
            // The batch answers 200 with an error per object that was not stored.
            let refused: Vec<String> = results
                .iter()
                .filter_map(|object| object.get("result").and_then(|r| r.get("errors")))
                .filter_map(|errors| first_error(&json!({"errors": errors.get("error")})))
                .collect();
            if let Some(message) = refused.first() {
                return Err(self.failed(&format!(
                    "{} of {} objects were not stored: {message}",
                    refused.len(),
                    batch.len()
                )));
            }
        }
        Ok(())
    }

    async fn delete(&self, namespace: &Namespace, keys: &[String]) -> Result<(), StoreError> {
        for keys in keys.chunks(MAX_IDS_PER_DELETE) {
            let ids: Vec<String> = keys.iter().map(|key| object_id(namespace, key)).collect();
            let answer = self
                .call(
                    reqwest::Method::DELETE,
                    "/v1/batch/objects",
                    "batch delete",
                    json!({
                        "match": {
                            "class": self.class,
                            "where": {"path": ["id"], "operator": "ContainsAny", "valueTextArray": ids},
                        },
                        "output": "minimal",
                        "dryRun": false,
                    }),
                )
                .await?;
            let failed = answer
                .get("results")
                .and_then(|results| results.get("failed"))
                .and_then(Value::as_u64)
                .ok_or_else(|| self.failed("the batch delete's answer has no results"))?;
            if failed > 0 {
                return Err(self.failed(&format!("{failed} objects were not deleted")));
            }
        }
        Ok(())
    }

    async fn query(
        &self,
        namespace: &Namespace,
        vector: &[f32],
        top_k: usize,
        filter: Option<&MetadataFilter>,
    ) -> Result<Vec<VectorHit>, StoreError> {
        let vector = query_vector(vector, top_k, Some(self.dimensions as usize))?;
        if top_k == 0 {
            return Ok(Vec::new());
        }
        let in_namespace = condition("ns", "Equal", "valueText", json!(namespace.digest()));
        let filter = match filter {
            Some(filter) => operands("And", vec![in_namespace, translated(filter.root())]),
            None => in_namespace,
        };
        let mut arguments = String::new();
        graphql(
            &json!({"nearVector": {"vector": vector}, "where": filter, "limit": top_k}),
            &mut arguments,
        );
        let arguments = arguments
            .strip_prefix('{')
            .and_then(|a| a.strip_suffix('}'))
            .unwrap_or_default();
        let query = format!(
            "{{ Get {{ {class}({arguments}) {{ text {KEY_PROPERTY} {METADATA_PROPERTY} \
             _additional {{ id distance }} }} }} }}",
            class = self.class
        );
        let answer = self
            .call(
                reqwest::Method::POST,
                "/v1/graphql",
                "query",
                json!({"query": query}),
            )
            .await?;
        if let Some(message) = first_error(&answer) {
            return Err(self.refused("query", &message));
        }
        let found = answer
            .get("data")
            .and_then(|data| data.get("Get"))
            .and_then(|get| get.get(&self.class))
            .and_then(Value::as_array)
            .ok_or_else(|| self.failed("the query's answer has no objects"))?;
        let mut hits = Vec::with_capacity(found.len().min(top_k));
        for object in found.iter().take(top_k) {
            let (Some(key), Some(distance)) = (
                object.get(KEY_PROPERTY).and_then(Value::as_str),
                object
                    .get("_additional")
                    .and_then(|a| a.get("distance"))
                    .and_then(Value::as_f64),
            ) else {
                return Err(self.failed("an object has no key or distance"));
            };
            let metadata = object
                .get(METADATA_PROPERTY)
                .and_then(Value::as_str)
                .and_then(|m| serde_json::from_str::<Map<String, Value>>(m).ok())
                .unwrap_or_default();
            hits.push(VectorHit {
                key: key.to_owned(),
                // Weaviate's cosine distance is 1 - cosine similarity.
                score: (1.0 - distance) as f32,
                text: object
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                metadata,
            });
        }
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn where_of(filter: Value) -> Value {
        translated(MetadataFilter::parse(&filter).unwrap().root())
    }

    #[test]
    fn filters_translate_to_weaviate_operators() {
        assert_eq!(
            where_of(json!({"lang": "en", "year": {"$gte": 2024}})),
            json!({"operator": "And", "operands": [
                {"path": ["lang"], "operator": "Equal", "valueText": "en"},
                {"path": ["year"], "operator": "GreaterThanEqual", "valueNumber": 2024.0},
            ]})
        );
        assert_eq!(
            where_of(json!({"tags": {"$nin": ["a", 1]}})),
            json!({"operator": "Not", "operands": [{"operator": "Or", "operands": [
                {"path": ["tags"], "operator": "ContainsAny", "valueTextArray": ["a"]},
                {"path": ["tags"], "operator": "ContainsAny", "valueNumberArray": [1.0]},
            ]}]})
        );
        assert_eq!(
            where_of(json!({"draft": {"$exists": false}})),
            json!({"path": ["draft"], "operator": "IsNull", "valueBoolean": true})
        );
    }

    #[test]
    fn graphql_arguments_have_bare_keys_and_enum_operators() {
        let mut out = String::new();
        graphql(
            &json!({"where": {"operator": "Equal", "path": ["a\"b"], "valueNumber": 1.5}}),
            &mut out,
        );
        assert_eq!(
            out,
            r#"{where: {operator: Equal, path: ["a\"b"], valueNumber: 1.5}}"#
        );
    }

    #[test]
    fn object_ids_are_uuids_apart_per_namespace() {
        let ns = |c: &str| Namespace {
            tenant: "acme".into(),
            collection: c.into(),
        };
        let id = object_id(&ns("a"), "k");
        assert_eq!(id, object_id(&ns("a"), "k"));
        assert_ne!(id, object_id(&ns("b"), "k"));
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'5');
    }
}
