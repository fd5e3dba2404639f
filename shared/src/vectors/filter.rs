//! Metadata filters in the Mongo-like syntax S3 Vectors and Pinecone share, parsed once into a
//! bounded tree: the embedded store evaluates it (`matches`), the S3 Vectors store sends it back
//! as JSON (`to_json`).
//!
//! Semantics follow S3 Vectors: `$eq` on an array field matches when any element equals the
//! value, `$in` when any element is in the list; `$ne` and `$nin` are their negations (so a
//! missing field passes them); `$gt`/`$gte`/`$lt`/`$lte` compare numbers only.

use serde_json::{Map, Number, Value};

/// Deepest nesting of `$and`/`$or` (a field condition inside counts as one more level).
pub const MAX_FILTER_DEPTH: usize = 4;
/// Most conditions (each operator on a field, each value of an `$in`/`$nin` list) in one filter.
pub const MAX_FILTER_CONDITIONS: usize = 64;
pub const MAX_FIELD_NAME_CHARS: usize = 64;
/// Longest string compared against: S3 Vectors keeps at most 2 KB of filterable metadata.
pub const MAX_FILTER_STRING_BYTES: usize = 2048;
/// Metadata keys the stores use themselves (the namespace and the chunk text on S3 Vectors):
/// a filter on them would behave differently per store, so none may name them.
pub const RESERVED_METADATA_KEYS: [&str; 2] = ["ns", "text"];

/// A value a condition compares with.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar {
    String(String),
    Number(Number),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Condition {
    Eq(Scalar),
    Ne(Scalar),
    Gt(Number),
    Gte(Number),
    Lt(Number),
    Lte(Number),
    In(Vec<Scalar>),
    Nin(Vec<Scalar>),
    Exists(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Field(String, Condition),
}

/// A metadata filter in the Mongo-like syntax S3 Vectors and Pinecone share: `{"field": value}`,
/// `{"field": {"$eq"|"$ne"|"$in"|"$nin"|"$gt"|"$gte"|"$lt"|"$lte"|"$exists": ..}}`, `$and`, `$or`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataFilter {
    root: Node,
}

struct Parser {
    conditions: usize,
}

impl Parser {
    fn count(&mut self, n: usize) -> Result<(), String> {
        self.conditions += n;
        if self.conditions > MAX_FILTER_CONDITIONS {
            return Err(format!(
                "filter has more than {MAX_FILTER_CONDITIONS} conditions"
            ));
        }
        Ok(())
    }

    /// An object: its entries are ANDed (`{"a": 1, "b": 2}` means both).
    fn object(&mut self, value: &Value, depth: usize) -> Result<Node, String> {
        if depth > MAX_FILTER_DEPTH {
            return Err(format!(
                "filter is nested more than {MAX_FILTER_DEPTH} levels deep"
            ));
        }
        let Value::Object(entries) = value else {
            return Err(format!(
                "a filter must be a JSON object, not {}",
                kind(value)
            ));
        };
        if entries.is_empty() {
            return Err("a filter object must have at least one condition".into());
        }
        let mut nodes = Vec::with_capacity(entries.len().min(MAX_FILTER_CONDITIONS));
        for (name, value) in entries {
            nodes.push(match name.as_str() {
                "$and" => Node::And(self.list(name, value, depth)?),
                "$or" => Node::Or(self.list(name, value, depth)?),
                _ => self.field(name, value)?,
            });
        }
        Ok(all_of(nodes))
    }

    fn list(&mut self, operator: &str, value: &Value, depth: usize) -> Result<Vec<Node>, String> {
        let Value::Array(items) = value else {
            return Err(format!("`{operator}` takes an array of filters"));
        };
        if items.is_empty() {
            return Err(format!("`{operator}` needs at least one filter"));
        }
        if items.len() > MAX_FILTER_CONDITIONS {
            return Err(format!(
                "filter has more than {MAX_FILTER_CONDITIONS} conditions"
            ));
        }
        items
            .iter()
            .map(|item| self.object(item, depth + 1))
            .collect()
    }

    fn field(&mut self, name: &str, value: &Value) -> Result<Node, String> {
        if name.is_empty() {
            return Err("filter field names must not be empty".into());
        }
        if name.starts_with('$') {
            return Err(format!(
                "unknown filter operator `{}`; expected $and or $or here",
                truncated(name)
            ));
        }
        if name.chars().count() > MAX_FIELD_NAME_CHARS {
            return Err(format!(
                "filter field `{}` is longer than {MAX_FIELD_NAME_CHARS} characters",
                truncated(name)
            ));
        }
        if RESERVED_METADATA_KEYS.contains(&name) {
            return Err(format!("metadata field `{name}` cannot be filtered on"));
        }
        let Value::Object(operators) = value else {
            self.count(1)?;
            return Ok(Node::Field(
                name.to_owned(),
                Condition::Eq(scalar(name, value)?),
            ));
        };
        if operators.is_empty() {
            return Err(format!("filter on `{name}` has no operator"));
        }
        let mut nodes = Vec::with_capacity(operators.len().min(MAX_FILTER_CONDITIONS));
        for (operator, operand) in operators {
            self.count(1)?;
            let condition = match operator.as_str() {
                "$eq" => Condition::Eq(scalar(name, operand)?),
                "$ne" => Condition::Ne(scalar(name, operand)?),
                "$gt" => Condition::Gt(number(name, operator, operand)?),
                "$gte" => Condition::Gte(number(name, operator, operand)?),
                "$lt" => Condition::Lt(number(name, operator, operand)?),
                "$lte" => Condition::Lte(number(name, operator, operand)?),
                "$in" => Condition::In(self.scalars(name, operator, operand)?),
                "$nin" => Condition::Nin(self.scalars(name, operator, operand)?),
                "$exists" => match operand {
                    Value::Bool(exists) => Condition::Exists(*exists),
                    _ => return Err(format!("`$exists` on `{name}` takes true or false")),
                },
                other => {
                    return Err(format!(
                        "unknown filter operator `{}` on `{name}`",
                        truncated(other)
                    ));
                }
            };
            nodes.push(Node::Field(name.to_owned(), condition));
        }
        Ok(all_of(nodes))
    }

    fn scalars(
        &mut self,
        name: &str,
        operator: &str,
        value: &Value,
    ) -> Result<Vec<Scalar>, String> {
        let Value::Array(items) = value else {
            return Err(format!("`{operator}` on `{name}` takes an array of values"));
        };
        if items.is_empty() {
            return Err(format!("`{operator}` on `{name}` needs at least one value"));
        }
        // The operator itself was counted; each further value counts as one more condition.
        self.count(items.len().saturating_sub(1))?;
        items.iter().map(|item| scalar(name, item)).collect()
    }
}

/// One node as itself, several as their conjunction.
fn all_of(mut nodes: Vec<Node>) -> Node {
    if nodes.len() == 1
        && let Some(node) = nodes.pop()
    {
        return node;
    }
    Node::And(nodes)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A name quoted back in an error, cut to a readable length.
fn truncated(name: &str) -> String {
    name.chars().take(MAX_FIELD_NAME_CHARS).collect()
}

fn scalar(name: &str, value: &Value) -> Result<Scalar, String> {
    match value {
        Value::String(text) if text.len() > MAX_FILTER_STRING_BYTES => Err(format!(
            "filter value for `{name}` is longer than {MAX_FILTER_STRING_BYTES} bytes"
        )),
        Value::String(text) => Ok(Scalar::String(text.clone())),
        Value::Number(n) => Ok(Scalar::Number(n.clone())),
        Value::Bool(b) => Ok(Scalar::Bool(*b)),
        other => Err(format!(
            "filter value for `{name}` must be a string, number or boolean, not {}",
            kind(other)
        )),
    }
}

fn number(name: &str, operator: &str, value: &Value) -> Result<Number, String> {
    match value {
        Value::Number(n) => Ok(n.clone()),
        other => Err(format!(
            "`{operator}` on `{name}` takes a number, not {}",
            kind(other)
        )),
    }
}

fn as_f64(n: &Number) -> Option<f64> {
    n.as_f64()
}

fn scalar_equals(scalar: &Scalar, value: &Value) -> bool {
    match (scalar, value) {
        (Scalar::String(a), Value::String(b)) => a == b,
        (Scalar::Bool(a), Value::Bool(b)) => a == b,
        // 3 and 3.0 are the same number.
        (Scalar::Number(a), Value::Number(b)) => as_f64(a) == as_f64(b),
        _ => false,
    }
}

/// A metadata value equals the scalar: itself, or any element of an array.
fn equals(scalar: &Scalar, value: &Value) -> bool {
    match value {
        Value::Array(items) => items.iter().any(|item| scalar_equals(scalar, item)),
        _ => scalar_equals(scalar, value),
    }
}

fn compare(value: Option<&Value>, bound: &Number, accept: fn(f64, f64) -> bool) -> bool {
    match (value.and_then(Value::as_f64), as_f64(bound)) {
        (Some(value), Some(bound)) => accept(value, bound),
        _ => false,
    }
}

fn scalar_json(scalar: &Scalar) -> Value {
    match scalar {
        Scalar::String(text) => Value::String(text.clone()),
        Scalar::Number(n) => Value::Number(n.clone()),
        Scalar::Bool(b) => Value::Bool(*b),
    }
}

impl Condition {
    fn matches(&self, value: Option<&Value>) -> bool {
        match self {
            Self::Eq(scalar) => value.is_some_and(|v| equals(scalar, v)),
            Self::Ne(scalar) => !value.is_some_and(|v| equals(scalar, v)),
            Self::Gt(bound) => compare(value, bound, |v, b| v > b),
            Self::Gte(bound) => compare(value, bound, |v, b| v >= b),
            Self::Lt(bound) => compare(value, bound, |v, b| v < b),
            Self::Lte(bound) => compare(value, bound, |v, b| v <= b),
            Self::In(list) => value.is_some_and(|v| list.iter().any(|s| equals(s, v))),
            Self::Nin(list) => !value.is_some_and(|v| list.iter().any(|s| equals(s, v))),
            Self::Exists(exists) => value.is_some() == *exists,
        }
    }

    fn to_json(&self) -> Value {
        let (operator, operand) = match self {
            Self::Eq(s) => ("$eq", scalar_json(s)),
            Self::Ne(s) => ("$ne", scalar_json(s)),
            Self::Gt(n) => ("$gt", Value::Number(n.clone())),
            Self::Gte(n) => ("$gte", Value::Number(n.clone())),
            Self::Lt(n) => ("$lt", Value::Number(n.clone())),
            Self::Lte(n) => ("$lte", Value::Number(n.clone())),
            Self::In(list) => ("$in", list.iter().map(scalar_json).collect()),
            Self::Nin(list) => ("$nin", list.iter().map(scalar_json).collect()),
            Self::Exists(b) => ("$exists", Value::Bool(*b)),
        };
        Value::Object(Map::from_iter([(operator.to_owned(), operand)]))
    }
}

impl Node {
    fn matches(&self, metadata: &Map<String, Value>) -> bool {
        match self {
            Self::And(nodes) => nodes.iter().all(|node| node.matches(metadata)),
            Self::Or(nodes) => nodes.iter().any(|node| node.matches(metadata)),
            Self::Field(name, condition) => condition.matches(metadata.get(name)),
        }
    }

    fn to_json(&self) -> Value {
        let list = |operator: &str, nodes: &[Node]| {
            Value::Object(Map::from_iter([(
                operator.to_owned(),
                nodes.iter().map(Node::to_json).collect(),
            )]))
        };
        match self {
            Self::And(nodes) => list("$and", nodes),
            Self::Or(nodes) => list("$or", nodes),
            Self::Field(name, condition) => {
                Value::Object(Map::from_iter([(name.clone(), condition.to_json())]))
            }
        }
    }
}

impl MetadataFilter {
    /// Parses and bounds a client's filter; the error text names what is wrong.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let root = Parser { conditions: 0 }.object(value, 1)?;
        Ok(Self { root })
    }

    pub fn matches(&self, metadata: &Map<String, Value>) -> bool {
        self.root.matches(metadata)
    }

    /// The parsed tree, for stores that translate it into their own filter language.
    pub(super) fn root(&self) -> &Node {
        &self.root
    }

    /// The filter in explicit form (every condition with its operator, every implicit AND an
    /// `$and`), as S3 Vectors takes it.
    pub fn to_json(&self) -> Value {
        self.root.to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(value: Value) -> MetadataFilter {
        MetadataFilter::parse(&value).unwrap()
    }

    fn meta(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn rejected(value: Value) -> String {
        MetadataFilter::parse(&value).unwrap_err()
    }

    #[test]
    fn equality_matches_the_value_or_any_element_of_an_array() {
        let docs = filter(json!({"genre": "documentary"}));
        assert!(docs.matches(&meta(json!({"genre": "documentary"}))));
        assert!(docs.matches(&meta(json!({"genre": ["romance", "documentary"]}))));
        assert!(!docs.matches(&meta(json!({"genre": "drama"}))));
        assert!(!docs.matches(&meta(json!({"other": "documentary"}))));
        assert_eq!(docs, filter(json!({"genre": {"$eq": "documentary"}})));
        // Types do not mix; numbers compare by value.
        assert!(!filter(json!({"year": "2020"})).matches(&meta(json!({"year": 2020}))));
        assert!(filter(json!({"year": 2020})).matches(&meta(json!({"year": 2020.0}))));
        assert!(filter(json!({"draft": false})).matches(&meta(json!({"draft": false}))));
    }

    #[test]
    fn not_equal_is_the_negation_of_equal_and_passes_a_missing_field() {
        let f = filter(json!({"genre": {"$ne": "drama"}}));
        assert!(f.matches(&meta(json!({"genre": "comedy"}))));
        assert!(!f.matches(&meta(json!({"genre": "drama"}))));
        assert!(!f.matches(&meta(json!({"genre": ["comedy", "drama"]}))));
        assert!(f.matches(&meta(json!({}))));
    }

    #[test]
    fn range_operators_compare_numbers_only() {
        let year = |op: &str, bound: i64| filter(json!({"year": {op: bound}}));
        let doc = meta(json!({"year": 2020}));
        assert!(year("$gt", 2019).matches(&doc));
        assert!(!year("$gt", 2020).matches(&doc));
        assert!(year("$gte", 2020).matches(&doc));
        assert!(!year("$gte", 2021).matches(&doc));
        assert!(year("$lt", 2021).matches(&doc));
        assert!(!year("$lt", 2020).matches(&doc));
        assert!(year("$lte", 2020).matches(&doc));
        assert!(!year("$lte", 2019).matches(&doc));
        assert!(!year("$lt", 3000).matches(&meta(json!({"year": "2020"}))));
        assert!(!year("$lt", 3000).matches(&meta(json!({}))));
        let both = filter(json!({"year": {"$gte": 2000, "$lt": 2010}}));
        assert!(both.matches(&meta(json!({"year": 2005.5}))));
        assert!(!both.matches(&meta(json!({"year": 2010}))));
    }

    #[test]
    fn in_and_not_in_match_any_listed_value() {
        let f = filter(json!({"genre": {"$in": ["comedy", "documentary"]}}));
        assert!(f.matches(&meta(json!({"genre": "comedy"}))));
        assert!(f.matches(&meta(json!({"genre": ["drama", "documentary"]}))));
        assert!(!f.matches(&meta(json!({"genre": "drama"}))));
        assert!(!f.matches(&meta(json!({}))));
        let f = filter(json!({"genre": {"$nin": ["comedy", "documentary"]}}));
        assert!(!f.matches(&meta(json!({"genre": "comedy"}))));
        assert!(f.matches(&meta(json!({"genre": "drama"}))));
        assert!(f.matches(&meta(json!({}))));
    }

    #[test]
    fn exists_checks_presence() {
        let present = filter(json!({"author": {"$exists": true}}));
        let absent = filter(json!({"author": {"$exists": false}}));
        let with = meta(json!({"author": "ada"}));
        let without = meta(json!({"title": "notes"}));
        assert!(present.matches(&with) && !present.matches(&without));
        assert!(absent.matches(&without) && !absent.matches(&with));
    }

    #[test]
    fn and_or_and_implicit_and_combine_conditions() {
        let doc = meta(json!({"genre": "drama", "year": 2020}));
        assert!(filter(json!({"genre": "drama", "year": 2020})).matches(&doc));
        assert!(!filter(json!({"genre": "drama", "year": 2021})).matches(&doc));
        assert!(
            filter(json!({"$and": [{"genre": "drama"}, {"year": {"$gt": 2000}}]})).matches(&doc)
        );
        assert!(
            !filter(json!({"$and": [{"genre": "drama"}, {"year": {"$gt": 2020}}]})).matches(&doc)
        );
        assert!(filter(json!({"$or": [{"genre": "comedy"}, {"year": 2020}]})).matches(&doc));
        assert!(!filter(json!({"$or": [{"genre": "comedy"}, {"year": 2019}]})).matches(&doc));
        let nested = json!({"$or": [{"$and": [{"genre": "drama"}, {"year": {"$lt": 2000}}]},
                                    {"genre": {"$in": ["drama", "comedy"]}, "year": 2020}]});
        assert!(filter(nested).matches(&doc));
    }

    #[test]
    fn to_json_is_the_explicit_form_and_parses_back_to_the_same_filter() {
        let f = filter(
            json!({"genre": "drama", "year": {"$gte": 2000, "$lt": 2010},
                              "$or": [{"tags": {"$in": ["a", "b"]}}, {"draft": {"$exists": false}}]}),
        );
        assert_eq!(
            f.to_json(),
            json!({"$and": [
                {"genre": {"$eq": "drama"}},
                {"$and": [{"year": {"$gte": 2000}}, {"year": {"$lt": 2010}}]},
                {"$or": [{"tags": {"$in": ["a", "b"]}}, {"draft": {"$exists": false}}]}
            ]})
        );
        assert_eq!(
            MetadataFilter::parse(&f.to_json()).unwrap().to_json(),
            f.to_json()
        );
        assert_eq!(
            filter(json!({"genre": {"$ne": "x"}, "n": {"$lte": 1.5}, "m": {"$gt": -1}, "k": {"$nin": [true]}}))
                .to_json(),
            json!({"$and": [{"genre": {"$ne": "x"}}, {"n": {"$lte": 1.5}}, {"m": {"$gt": -1}}, {"k": {"$nin": [true]}}]})
        );
    }

    #[test]
    fn malformed_filters_are_rejected_naming_the_fault() {
        assert!(rejected(json!([{"a": 1}])).contains("JSON object"));
        assert!(rejected(json!({})).contains("at least one condition"));
        assert!(
            rejected(json!({"a": {"$regex": "x"}})).contains("unknown filter operator `$regex`")
        );
        assert!(rejected(json!({"$not": {"a": 1}})).contains("unknown filter operator `$not`"));
        assert!(rejected(json!({"a": {}})).contains("no operator"));
        assert!(rejected(json!({"a": null})).contains("string, number or boolean"));
        assert!(rejected(json!({"a": [1, 2]})).contains("string, number or boolean"));
        assert!(rejected(json!({"a": {"$gt": "5"}})).contains("takes a number"));
        assert!(rejected(json!({"a": {"$in": []}})).contains("at least one value"));
        assert!(rejected(json!({"a": {"$in": "x"}})).contains("array of values"));
        assert!(rejected(json!({"a": {"$in": [{"b": 1}]}})).contains("string, number or boolean"));
        assert!(rejected(json!({"a": {"$exists": 1}})).contains("true or false"));
        assert!(rejected(json!({"$and": []})).contains("at least one filter"));
        assert!(rejected(json!({"$or": {"a": 1}})).contains("array of filters"));
        assert!(rejected(json!({"": 1})).contains("empty"));
        assert!(rejected(json!({"ns": "x"})).contains("`ns` cannot be filtered"));
        assert!(rejected(json!({"text": {"$exists": true}})).contains("`text` cannot be filtered"));
    }

    #[test]
    fn filters_beyond_the_bounds_are_rejected() {
        // Depth: four levels pass, five do not.
        let mut deep = json!({"a": 1});
        for _ in 0..3 {
            deep = json!({"$and": [deep]});
        }
        assert!(MetadataFilter::parse(&deep).is_ok());
        let too_deep = json!({"$or": [deep]});
        assert!(rejected(too_deep).contains("nested more than 4"));

        // Conditions: 64 pass, 65 do not, however they are spelled.
        let fields =
            |n: usize| Value::Object((0..n).map(|i| (format!("f{i}"), json!(i))).collect());
        assert!(MetadataFilter::parse(&fields(64)).is_ok());
        assert!(rejected(fields(65)).contains("more than 64 conditions"));
        let values: Vec<Value> = (0..64).map(|i| json!(i)).collect();
        assert!(MetadataFilter::parse(&json!({"a": {"$in": values}})).is_ok());
        let values: Vec<Value> = (0..65).map(|i| json!(i)).collect();
        assert!(rejected(json!({"a": {"$nin": values}})).contains("more than 64 conditions"));
        let ors: Vec<Value> = (0..65).map(|i| json!({"a": i})).collect();
        assert!(rejected(json!({"$or": ors})).contains("more than 64 conditions"));

        // Field names: 64 characters pass, 65 do not; values are bounded too.
        assert!(MetadataFilter::parse(&json!({"é".repeat(64): 1})).is_ok());
        assert!(rejected(json!({"é".repeat(65): 1})).contains("longer than 64 characters"));
        assert!(rejected(json!({"a": "x".repeat(2049)})).contains("longer than 2048 bytes"));
    }
}
