//! A JSON Schema (2020-12) validator of our own for structured output, instead of the
//! `jsonschema` crate: the crate and what only it pulled in (its reference resolver, a second
//! regex engine, big-number fractions, e-mail/UUID/Unicode-category format checkers) were about
//! 1 MB of the `chat` Lambda's zip, paid in every cold start, for a subset we can write in one
//! module. The schema comes from a client and the answer from a model, so both are bounded.
//!
//! The subset is what clients send for OpenAI structured outputs:
//! - boolean schemas; `type`, `enum`, `const` (JSON equality, `1 == 1.0`);
//! - `properties`, `required`, `additionalProperties`, `patternProperties`, `propertyNames`,
//!   `minProperties`, `maxProperties`, `dependentRequired`, `dependentSchemas`;
//! - `items`, `prefixItems`, `minItems`, `maxItems`, `uniqueItems`, `contains`, `minContains`,
//!   `maxContains`;
//! - `minLength`, `maxLength` (code points), `pattern` (the `regex` crate: linear time, an
//!   unanchored search as in ECMA-262; a pattern it cannot compile, such as a back-reference, is
//!   refused when compiling);
//! - `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum` (exact between integers and
//!   floats), `multipleOf` (exact for integers, tolerant for floats);
//! - `allOf`, `anyOf`, `oneOf`, `not`, `if`/`then`/`else`;
//! - `$ref` to a JSON pointer inside the schema (`#`, `#/$defs/x`, `#/definitions/x`, any
//!   `#/...`, with `~0`/`~1` escapes and percent-decoding). Nothing is ever fetched: any other
//!   reference is refused, as is one pointing nowhere or a cycle of references that never
//!   descends into the answer (`{"$ref": "#"}`).
//!
//! `format` is an annotation (not checked, as 2020-12's default). Other keywords (`$id`,
//! `$anchor`, `unevaluatedProperties`, `unevaluatedItems`, `$dynamicRef`, vocabularies) are
//! ignored, as the specification says of unknown keywords.
//!
//! A schema compiles to an arena of nodes, one per subschema (by JSON pointer), with references
//! resolved to indices and regexes compiled; compiling does not recurse. Checking recurses once
//! per subschema applied, with a step budget (every keyword evaluated counts) so that nested
//! `anyOf`/`oneOf` cannot take exponential time, and a cap on that recursion.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use percent_encoding::percent_decode_str;
use regex::{Regex, RegexBuilder};
use serde_json::{Map, Number, Value};

/// Most compiled size of one `pattern` (or `patternProperties` key), in bytes: a pattern like
/// `a{1000}{1000}` compiles to something huge.
const MAX_PATTERN_BYTES: usize = 1 << 20;

/// Most keyword evaluations one check may take; past it the answer is refused as too costly to
/// check (nested `anyOf`s over a deep answer would otherwise take exponential time).
pub(crate) const MAX_STEPS: u64 = 1_000_000;

/// Most subschemas applied inside one another while checking (the answer's depth, at most 128
/// for serde_json, times the references and combinators at each level): bounds the stack. A
/// level takes about 1.3 kB of stack in a debug build (less in release), so 640 levels stay
/// well within a 2 MB thread stack (tokio's workers, test threads).
const MAX_EVAL_DEPTH: u32 = 640;

/// A compiled schema: node 0 is the root.
pub(crate) struct Compiled {
    nodes: Vec<Node>,
}

/// Why an instance does not match.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The JSON pointer of the failing value (`""` for the root) and what failed there.
    Invalid { pointer: String, message: String },
    /// The step budget or the recursion cap ran out.
    TooCostly,
}

enum Node {
    Always,
    Never,
    Checks(Vec<Check>),
}

#[derive(Clone, Copy)]
enum Bound {
    Minimum,
    Maximum,
    ExclusiveMinimum,
    ExclusiveMaximum,
}

enum Check {
    Type(u8),
    Const(Value),
    Enum(Vec<Value>),
    Bound(Bound, Number),
    MultipleOf(Number),
    MinLength(u64),
    MaxLength(u64),
    Pattern(Regex),
    Items {
        prefix: Vec<usize>,
        rest: Option<usize>,
    },
    MinItems(u64),
    MaxItems(u64),
    UniqueItems,
    Contains {
        schema: usize,
        min: u64,
        max: Option<u64>,
    },
    Required(Vec<String>),
    Properties {
        named: HashMap<String, usize>,
        patterns: Vec<(Regex, usize)>,
        additional: Option<usize>,
    },
    PropertyNames(usize),
    MinProperties(u64),
    MaxProperties(u64),
    DependentRequired(Vec<(String, Vec<String>)>),
    DependentSchemas(Vec<(String, usize)>),
    Ref(usize),
    AllOf(Vec<usize>),
    AnyOf(Vec<usize>),
    OneOf(Vec<usize>),
    Not(usize),
    IfThenElse {
        condition: usize,
        then: Option<usize>,
        otherwise: Option<usize>,
    },
}

const NULL: u8 = 1;
const BOOLEAN: u8 = 2;
const OBJECT: u8 = 4;
const ARRAY: u8 = 8;
const NUMBER: u8 = 16;
const STRING: u8 = 32;
const INTEGER: u8 = 64;

const TYPE_NAMES: [(&str, u8); 7] = [
    ("null", NULL),
    ("boolean", BOOLEAN),
    ("object", OBJECT),
    ("array", ARRAY),
    ("number", NUMBER),
    ("string", STRING),
    ("integer", INTEGER),
];

/// Compiles `root`; the error names the subschema (as a JSON pointer) and the keyword.
pub(crate) fn compile(root: &Value) -> Result<Compiled, String> {
    let mut compiler = Compiler {
        root,
        nodes: Vec::new(),
        pointers: Vec::new(),
        by_pointer: HashMap::new(),
        pending: Vec::new(),
    };
    compiler.node_at(String::new());
    while let Some((pointer, index)) = compiler.pending.pop() {
        let node = match root.pointer(&pointer) {
            Some(schema) => compiler.compile_node(schema, &pointer),
            None => Err("nothing is there".to_owned()),
        }
        .map_err(|why| format!("at `#{pointer}`: {why}"))?;
        if let Some(slot) = compiler.nodes.get_mut(index) {
            *slot = node;
        }
    }
    refuse_cycles(&compiler.nodes, &compiler.pointers)?;
    Ok(Compiled {
        nodes: compiler.nodes,
    })
}

struct Compiler<'s> {
    root: &'s Value,
    nodes: Vec<Node>,
    /// The JSON pointer of each node, for errors.
    pointers: Vec<String>,
    by_pointer: HashMap<String, usize>,
    /// Nodes reserved and not compiled yet, with their pointers.
    pending: Vec<(String, usize)>,
}

impl Compiler<'_> {
    /// The node of the subschema at `pointer`, reserved (and queued for compiling) the first time.
    fn node_at(&mut self, pointer: String) -> usize {
        if let Some(&index) = self.by_pointer.get(&pointer) {
            return index;
        }
        let index = self.nodes.len();
        self.nodes.push(Node::Always);
        self.pointers.push(pointer.clone());
        self.by_pointer.insert(pointer.clone(), index);
        self.pending.push((pointer, index));
        index
    }

    fn child(&mut self, pointer: &str, segments: &[&str]) -> usize {
        let mut child = pointer.to_owned();
        for segment in segments {
            child.push('/');
            child.push_str(&segment.replace('~', "~0").replace('/', "~1"));
        }
        self.node_at(child)
    }

    fn reference(&mut self, target: &Value) -> Result<usize, String> {
        let Value::String(uri) = target else {
            return Err("`$ref` must be a string".to_owned());
        };
        let Some(fragment) = uri.strip_prefix('#') else {
            return Err(format!(
                "`$ref` {} is not inside the schema: only references like `#/$defs/name` are \
                 resolved, nothing is fetched",
                quoted(uri)
            ));
        };
        let pointer = percent_decode_str(fragment)
            .decode_utf8()
            .map_err(|_| format!("`$ref` {} is not UTF-8 once decoded", quoted(uri)))?
            .into_owned();
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(format!(
                "`$ref` {}: anchors are not supported, only JSON pointers (`#/$defs/name`)",
                quoted(uri)
            ));
        }
        if self.root.pointer(&pointer).is_none() {
            return Err(format!(
                "`$ref` {} points to nothing in the schema",
                quoted(uri)
            ));
        }
        Ok(self.node_at(pointer))
    }

    fn schemas(&mut self, pointer: &str, key: &str, value: &Value) -> Result<Vec<usize>, String> {
        let Value::Array(items) = value else {
            return Err(format!("`{key}` must be an array of schemas"));
        };
        if items.is_empty() {
            return Err(format!("`{key}` must not be empty"));
        }
        Ok((0..items.len())
            .map(|i| self.child(pointer, &[key, &i.to_string()]))
            .collect())
    }

    fn compile_node(&mut self, schema: &Value, pointer: &str) -> Result<Node, String> {
        let fields = match schema {
            Value::Bool(true) => return Ok(Node::Always),
            Value::Bool(false) => return Ok(Node::Never),
            Value::Object(fields) => fields,
            _ => return Err("a schema must be an object or a boolean".to_owned()),
        };
        let mut checks = Vec::new();
        if let Some(value) = fields.get("type") {
            checks.push(Check::Type(type_set(value)?));
        }
        if let Some(value) = fields.get("const") {
            checks.push(Check::Const(value.clone()));
        }
        if let Some(value) = fields.get("enum") {
            let Value::Array(values) = value else {
                return Err("`enum` must be an array".to_owned());
            };
            checks.push(Check::Enum(values.clone()));
        }
        self.numbers(fields, &mut checks)?;
        self.strings(fields, &mut checks)?;
        self.arrays(fields, pointer, &mut checks)?;
        self.objects(fields, pointer, &mut checks)?;
        if let Some(value) = fields.get("$ref") {
            checks.push(Check::Ref(self.reference(value)?));
        }
        if let Some(value) = fields.get("allOf") {
            checks.push(Check::AllOf(self.schemas(pointer, "allOf", value)?));
        }
        if let Some(value) = fields.get("anyOf") {
            checks.push(Check::AnyOf(self.schemas(pointer, "anyOf", value)?));
        }
        if let Some(value) = fields.get("oneOf") {
            checks.push(Check::OneOf(self.schemas(pointer, "oneOf", value)?));
        }
        if fields.contains_key("not") {
            checks.push(Check::Not(self.child(pointer, &["not"])));
        }
        if fields.contains_key("if") {
            checks.push(Check::IfThenElse {
                condition: self.child(pointer, &["if"]),
                then: fields
                    .contains_key("then")
                    .then(|| self.child(pointer, &["then"])),
                otherwise: fields
                    .contains_key("else")
                    .then(|| self.child(pointer, &["else"])),
            });
        }
        Ok(Node::Checks(checks))
    }

    fn numbers(
        &mut self,
        fields: &Map<String, Value>,
        checks: &mut Vec<Check>,
    ) -> Result<(), String> {
        for (key, bound) in [
            ("minimum", Bound::Minimum),
            ("maximum", Bound::Maximum),
            ("exclusiveMinimum", Bound::ExclusiveMinimum),
            ("exclusiveMaximum", Bound::ExclusiveMaximum),
        ] {
            if let Some(value) = fields.get(key) {
                let Value::Number(limit) = value else {
                    return Err(format!("`{key}` must be a number"));
                };
                checks.push(Check::Bound(bound, limit.clone()));
            }
        }
        if let Some(value) = fields.get("multipleOf") {
            match value {
                Value::Number(n) if n.as_f64().is_some_and(|f| f > 0.0) => {
                    checks.push(Check::MultipleOf(n.clone()));
                }
                _ => return Err("`multipleOf` must be a number greater than 0".to_owned()),
            }
        }
        Ok(())
    }

    fn strings(
        &mut self,
        fields: &Map<String, Value>,
        checks: &mut Vec<Check>,
    ) -> Result<(), String> {
        if let Some(value) = fields.get("minLength") {
            checks.push(Check::MinLength(count("minLength", value)?));
        }
        if let Some(value) = fields.get("maxLength") {
            checks.push(Check::MaxLength(count("maxLength", value)?));
        }
        if let Some(value) = fields.get("pattern") {
            let Value::String(pattern) = value else {
                return Err("`pattern` must be a string".to_owned());
            };
            checks.push(Check::Pattern(regex("pattern", pattern)?));
        }
        Ok(())
    }

    fn arrays(
        &mut self,
        fields: &Map<String, Value>,
        pointer: &str,
        checks: &mut Vec<Check>,
    ) -> Result<(), String> {
        let prefix = match fields.get("prefixItems") {
            Some(value) => self.schemas(pointer, "prefixItems", value)?,
            None => Vec::new(),
        };
        let rest = fields
            .contains_key("items")
            .then(|| self.child(pointer, &["items"]));
        if !prefix.is_empty() || rest.is_some() {
            checks.push(Check::Items { prefix, rest });
        }
        if let Some(value) = fields.get("minItems") {
            checks.push(Check::MinItems(count("minItems", value)?));
        }
        if let Some(value) = fields.get("maxItems") {
            checks.push(Check::MaxItems(count("maxItems", value)?));
        }
        match fields.get("uniqueItems") {
            None | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => checks.push(Check::UniqueItems),
            Some(_) => return Err("`uniqueItems` must be a boolean".to_owned()),
        }
        if fields.contains_key("contains") {
            let min = match fields.get("minContains") {
                Some(value) => count("minContains", value)?,
                None => 1,
            };
            let max = match fields.get("maxContains") {
                Some(value) => Some(count("maxContains", value)?),
                None => None,
            };
            checks.push(Check::Contains {
                schema: self.child(pointer, &["contains"]),
                min,
                max,
            });
        }
        Ok(())
    }

    fn objects(
        &mut self,
        fields: &Map<String, Value>,
        pointer: &str,
        checks: &mut Vec<Check>,
    ) -> Result<(), String> {
        if let Some(value) = fields.get("required") {
            checks.push(Check::Required(names("required", value)?));
        }
        let mut named = HashMap::new();
        if let Some(value) = fields.get("properties") {
            let Value::Object(properties) = value else {
                return Err("`properties` must be an object".to_owned());
            };
            for name in properties.keys() {
                named.insert(name.clone(), self.child(pointer, &["properties", name]));
            }
        }
        let mut patterns = Vec::new();
        if let Some(value) = fields.get("patternProperties") {
            let Value::Object(properties) = value else {
                return Err("`patternProperties` must be an object".to_owned());
            };
            for pattern in properties.keys() {
                patterns.push((
                    regex("patternProperties", pattern)?,
                    self.child(pointer, &["patternProperties", pattern]),
                ));
            }
        }
        let additional = fields
            .contains_key("additionalProperties")
            .then(|| self.child(pointer, &["additionalProperties"]));
        if !named.is_empty() || !patterns.is_empty() || additional.is_some() {
            checks.push(Check::Properties {
                named,
                patterns,
                additional,
            });
        }
        if fields.contains_key("propertyNames") {
            checks.push(Check::PropertyNames(
                self.child(pointer, &["propertyNames"]),
            ));
        }
        if let Some(value) = fields.get("minProperties") {
            checks.push(Check::MinProperties(count("minProperties", value)?));
        }
        if let Some(value) = fields.get("maxProperties") {
            checks.push(Check::MaxProperties(count("maxProperties", value)?));
        }
        if let Some(value) = fields.get("dependentRequired") {
            let Value::Object(dependencies) = value else {
                return Err("`dependentRequired` must be an object".to_owned());
            };
            let mut all = Vec::new();
            for (name, needed) in dependencies {
                all.push((name.clone(), names("dependentRequired", needed)?));
            }
            checks.push(Check::DependentRequired(all));
        }
        if let Some(value) = fields.get("dependentSchemas") {
            let Value::Object(dependencies) = value else {
                return Err("`dependentSchemas` must be an object".to_owned());
            };
            let all = dependencies
                .keys()
                .map(|name| {
                    (
                        name.clone(),
                        self.child(pointer, &["dependentSchemas", name]),
                    )
                })
                .collect();
            checks.push(Check::DependentSchemas(all));
        }
        Ok(())
    }
}

fn type_set(value: &Value) -> Result<u8, String> {
    let one = |name: &str| {
        TYPE_NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, bit)| *bit)
            .ok_or_else(|| format!("`type` {} is not a JSON Schema type", quoted(name)))
    };
    match value {
        Value::String(name) => one(name),
        Value::Array(names) if !names.is_empty() => {
            names.iter().try_fold(0, |set, name| match name {
                Value::String(name) => Ok(set | one(name)?),
                _ => Err("`type` must be a type name or an array of them".to_owned()),
            })
        }
        _ => Err("`type` must be a type name or an array of them".to_owned()),
    }
}

fn count(key: &str, value: &Value) -> Result<u64, String> {
    let n = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1.8e19)
                .map(|f| f as u64)
        }),
        _ => None,
    };
    n.ok_or_else(|| format!("`{key}` must be a non-negative integer"))
}

fn names(key: &str, value: &Value) -> Result<Vec<String>, String> {
    let error = || format!("`{key}` must be an array of strings");
    let Value::Array(items) = value else {
        return Err(error());
    };
    items
        .iter()
        .map(|item| item.as_str().map(str::to_owned).ok_or_else(error))
        .collect()
}

fn regex(key: &str, pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(MAX_PATTERN_BYTES)
        .build()
        .map_err(|e| {
            format!(
                "`{key}` {} is not a usable regular expression: {e}",
                quoted(pattern)
            )
        })
}

/// The subschemas a node applies to the same value (not to a part of it).
fn in_place(node: &Node) -> Vec<usize> {
    let Node::Checks(checks) = node else {
        return Vec::new();
    };
    let mut targets = Vec::new();
    for check in checks {
        match check {
            Check::Ref(n) | Check::Not(n) => targets.push(*n),
            Check::AllOf(ns) | Check::AnyOf(ns) | Check::OneOf(ns) => targets.extend(ns),
            Check::DependentSchemas(ns) => targets.extend(ns.iter().map(|(_, n)| *n)),
            Check::IfThenElse {
                condition,
                then,
                otherwise,
            } => {
                targets.push(*condition);
                targets.extend(then.iter().chain(otherwise.iter()));
            }
            _ => {}
        }
    }
    targets
}

/// Refuses a cycle of subschemas applied to the same value (`{"$ref": "#"}`, `a -> b -> a`):
/// checking would never end. Depth-first, without recursion.
fn refuse_cycles(nodes: &[Node], pointers: &[String]) -> Result<(), String> {
    const NEW: u8 = 0;
    const OPEN: u8 = 1;
    const DONE: u8 = 2;
    let edges: Vec<Vec<usize>> = nodes.iter().map(in_place).collect();
    let mut state = vec![NEW; nodes.len()];
    for start in 0..nodes.len() {
        if state.get(start) != Some(&NEW) {
            continue;
        }
        if let Some(s) = state.get_mut(start) {
            *s = OPEN;
        }
        let mut stack = vec![(start, 0usize)];
        while let Some((node, next)) = stack.last_mut() {
            let node = *node;
            match edges.get(node).and_then(|targets| targets.get(*next)) {
                Some(&target) => {
                    *next += 1;
                    match state.get(target) {
                        Some(&NEW) => {
                            if let Some(s) = state.get_mut(target) {
                                *s = OPEN;
                            }
                            stack.push((target, 0));
                        }
                        Some(&OPEN) => {
                            let at = pointers.get(target).map_or("", String::as_str);
                            return Err(format!(
                                "at `#{at}`: the schema refers back to itself (through `$ref`) \
                                 without descending into the value: checking would never end"
                            ));
                        }
                        _ => {}
                    }
                }
                None => {
                    if let Some(s) = state.get_mut(node) {
                        *s = DONE;
                    }
                    stack.pop();
                }
            }
        }
    }
    Ok(())
}

/// Where checking is: steps left, recursion depth, and whether failures need their text (not
/// inside `anyOf`, `oneOf`, `not`, `if` or `contains`, whose failures are only counted).
struct Cx {
    steps: u64,
    depth: u32,
    quiet: u32,
}

enum Fail<'v> {
    /// `None` when quiet.
    Invalid(Option<Box<Detail<'v>>>),
    TooCostly,
}

struct Detail<'v> {
    /// Innermost first.
    path: Vec<Segment<'v>>,
    message: String,
}

enum Segment<'v> {
    Key(&'v str),
    Index(usize),
}

impl<'v> Fail<'v> {
    fn at(mut self, segment: Segment<'v>) -> Self {
        if let Fail::Invalid(Some(detail)) = &mut self {
            detail.path.push(segment);
        }
        self
    }
}

impl Cx {
    fn step<'v>(&mut self) -> Result<(), Fail<'v>> {
        self.steps = self.steps.checked_sub(1).ok_or(Fail::TooCostly)?;
        Ok(())
    }

    fn fail<'v>(&self, message: impl FnOnce() -> String) -> Fail<'v> {
        if self.quiet > 0 {
            Fail::Invalid(None)
        } else {
            Fail::Invalid(Some(Box::new(Detail {
                path: Vec::new(),
                message: message(),
            })))
        }
    }
}

impl Compiled {
    /// Checks `instance`: the first failure found.
    pub(crate) fn check(&self, instance: &Value) -> Result<(), Failure> {
        self.check_with_budget(instance, MAX_STEPS)
    }

    fn check_with_budget(&self, instance: &Value, steps: u64) -> Result<(), Failure> {
        let mut cx = Cx {
            steps,
            depth: 0,
            quiet: 0,
        };
        match self.eval(0, instance, &mut cx) {
            Ok(()) => Ok(()),
            Err(Fail::TooCostly) => Err(Failure::TooCostly),
            Err(Fail::Invalid(detail)) => {
                let (path, message) = match detail {
                    Some(detail) => (detail.path, detail.message),
                    None => (Vec::new(), "does not match".to_owned()),
                };
                let mut pointer = String::new();
                for segment in path.iter().rev() {
                    pointer.push('/');
                    match segment {
                        Segment::Key(key) => {
                            pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                        }
                        Segment::Index(i) => pointer.push_str(&i.to_string()),
                    }
                }
                Err(Failure::Invalid { pointer, message })
            }
        }
    }

    fn eval<'v>(&self, node: usize, value: &'v Value, cx: &mut Cx) -> Result<(), Fail<'v>> {
        cx.step()?;
        if cx.depth >= MAX_EVAL_DEPTH {
            return Err(Fail::TooCostly);
        }
        cx.depth += 1;
        let result = match self.nodes.get(node) {
            Some(Node::Always) | None => Ok(()),
            Some(Node::Never) => Err(cx.fail(|| {
                format!(
                    "{} is not allowed here (the schema is `false`)",
                    shown(value)
                )
            })),
            Some(Node::Checks(checks)) => self.apply_all(checks, value, cx),
        };
        cx.depth -= 1;
        result
    }

    fn apply_all<'v>(
        &self,
        checks: &[Check],
        value: &'v Value,
        cx: &mut Cx,
    ) -> Result<(), Fail<'v>> {
        for check in checks {
            cx.step()?;
            self.apply(check, value, cx)?;
        }
        Ok(())
    }

    /// Whether `value` matches `node`, without the failure's text; only running out of budget
    /// is an error.
    fn passes<'v>(&self, node: usize, value: &'v Value, cx: &mut Cx) -> Result<bool, Fail<'v>> {
        cx.quiet += 1;
        let result = self.eval(node, value, cx);
        cx.quiet -= 1;
        match result {
            Ok(()) => Ok(true),
            Err(Fail::Invalid(_)) => Ok(false),
            Err(Fail::TooCostly) => Err(Fail::TooCostly),
        }
    }

    fn is_never(&self, node: usize) -> bool {
        matches!(self.nodes.get(node), Some(Node::Never))
    }

    /// Keywords that apply subschemas: the recursion goes through here, so its frame is kept
    /// small (the others are in [`Self::leaf`]).
    fn apply<'v>(&self, check: &Check, value: &'v Value, cx: &mut Cx) -> Result<(), Fail<'v>> {
        match check {
            Check::Items { prefix, rest } => {
                if let Value::Array(items) = value {
                    for (i, item) in items.iter().enumerate() {
                        let node = match (prefix.get(i), rest) {
                            (Some(node), _) | (None, Some(node)) => *node,
                            (None, None) => break,
                        };
                        self.eval(node, item, cx)
                            .map_err(|fail| fail.at(Segment::Index(i)))?;
                    }
                }
            }
            Check::Contains { schema, min, max } => {
                if let Value::Array(items) = value {
                    let mut matching = 0u64;
                    for item in items {
                        if self.passes(*schema, item, cx)? {
                            matching += 1;
                            if max.is_some_and(|max| matching > max) {
                                return Err(cx.fail(|| {
                                    format!(
                                        "{} has more than {} matching `contains`",
                                        shown(value),
                                        counted(max.unwrap_or_default(), "item")
                                    )
                                }));
                            }
                        }
                    }
                    if matching < *min {
                        return Err(cx.fail(|| {
                            format!(
                                "{} has fewer than {} matching `contains`",
                                shown(value),
                                counted(*min, "item")
                            )
                        }));
                    }
                }
            }
            Check::Properties {
                named,
                patterns,
                additional,
            } => {
                if let Value::Object(fields) = value {
                    for (key, field) in fields {
                        cx.step()?;
                        let mut matched = false;
                        if let Some(&node) = named.get(key) {
                            matched = true;
                            self.eval(node, field, cx)
                                .map_err(|fail| fail.at(Segment::Key(key)))?;
                        }
                        for (regex, node) in patterns {
                            cx.step()?;
                            if regex.is_match(key) {
                                matched = true;
                                self.eval(*node, field, cx)
                                    .map_err(|fail| fail.at(Segment::Key(key)))?;
                            }
                        }
                        match additional {
                            Some(node) if !matched => {
                                if self.is_never(*node) {
                                    return Err(cx.fail(|| {
                                        format!(
                                            "additional property {} is not allowed",
                                            quoted(key)
                                        )
                                    }));
                                }
                                self.eval(*node, field, cx)
                                    .map_err(|fail| fail.at(Segment::Key(key)))?;
                            }
                            _ => {}
                        }
                    }
                }
            }
            Check::DependentSchemas(dependencies) => {
                if let Value::Object(fields) = value {
                    for (present, node) in dependencies {
                        if fields.contains_key(present) {
                            self.eval(*node, value, cx)?;
                        }
                    }
                }
            }
            Check::Ref(node) => self.eval(*node, value, cx)?,
            Check::AllOf(nodes) => {
                for node in nodes {
                    self.eval(*node, value, cx)?;
                }
            }
            Check::AnyOf(nodes) => {
                for node in nodes {
                    if self.passes(*node, value, cx)? {
                        return Ok(());
                    }
                }
                return Err(
                    cx.fail(|| format!("{} does not match any schema of `anyOf`", shown(value)))
                );
            }
            Check::OneOf(nodes) => {
                let mut first = None;
                for (i, node) in nodes.iter().enumerate() {
                    if self.passes(*node, value, cx)? {
                        if let Some(first) = first {
                            return Err(cx.fail(|| {
                                format!(
                                    "{} matches more than one schema of `oneOf` ({first} and {i})",
                                    shown(value)
                                )
                            }));
                        }
                        first = Some(i);
                    }
                }
                if first.is_none() {
                    return Err(cx.fail(|| {
                        format!("{} does not match any schema of `oneOf`", shown(value))
                    }));
                }
            }
            Check::Not(node) => {
                if self.passes(*node, value, cx)? {
                    return Err(
                        cx.fail(|| format!("{} must not match the schema of `not`", shown(value)))
                    );
                }
            }
            Check::IfThenElse {
                condition,
                then,
                otherwise,
            } => {
                let branch = if self.passes(*condition, value, cx)? {
                    then
                } else {
                    otherwise
                };
                if let Some(node) = branch {
                    self.eval(*node, value, cx)?;
                }
            }
            _ => self.leaf(check, value, cx)?,
        }
        Ok(())
    }

    /// Keywords that apply no subschema to a part of the value.
    #[inline(never)]
    fn leaf<'v>(&self, check: &Check, value: &'v Value, cx: &mut Cx) -> Result<(), Fail<'v>> {
        match check {
            Check::Type(set) if !type_matches(*set, value) => {
                return Err(cx.fail(|| format!("{} is not of {}", shown(value), type_names(*set))));
            }
            Check::Const(expected) if !json_eq(value, expected) => {
                return Err(cx.fail(|| format!("{} was expected", shown(expected))));
            }
            Check::Enum(values) => {
                for candidate in values {
                    cx.step()?;
                    if json_eq(value, candidate) {
                        return Ok(());
                    }
                }
                return Err(cx.fail(|| {
                    let listed: Vec<String> = values.iter().map(shown).collect();
                    format!("{} is not one of [{}]", shown(value), listed.join(", "))
                }));
            }
            Check::Bound(bound, limit) => {
                let Value::Number(n) = value else {
                    return Ok(());
                };
                let order = compare(n, limit);
                let failed = match bound {
                    Bound::Minimum => order == Ordering::Less,
                    Bound::Maximum => order == Ordering::Greater,
                    Bound::ExclusiveMinimum => order != Ordering::Greater,
                    Bound::ExclusiveMaximum => order != Ordering::Less,
                };
                if failed {
                    let what = match bound {
                        Bound::Minimum => "less than the minimum",
                        Bound::Maximum => "greater than the maximum",
                        Bound::ExclusiveMinimum => "less than or equal to the exclusive minimum",
                        Bound::ExclusiveMaximum => "greater than or equal to the exclusive maximum",
                    };
                    return Err(cx.fail(|| format!("{n} is {what} of {limit}")));
                }
            }
            Check::MultipleOf(divisor) => {
                if let Value::Number(n) = value
                    && !is_multiple(n, divisor)
                {
                    return Err(cx.fail(|| format!("{n} is not a multiple of {divisor}")));
                }
            }
            Check::MinLength(min) => {
                if let Value::String(s) = value
                    && (s.chars().count() as u64) < *min
                {
                    return Err(cx.fail(|| {
                        format!(
                            "{} is shorter than {}",
                            shown(value),
                            counted(*min, "character")
                        )
                    }));
                }
            }
            Check::MaxLength(max) => {
                if let Value::String(s) = value
                    && s.chars().count() as u64 > *max
                {
                    return Err(cx.fail(|| {
                        format!(
                            "{} is longer than {}",
                            shown(value),
                            counted(*max, "character")
                        )
                    }));
                }
            }
            Check::Pattern(regex) => {
                if let Value::String(s) = value
                    && !regex.is_match(s)
                {
                    return Err(cx.fail(|| {
                        format!("{} does not match {}", shown(value), quoted(regex.as_str()))
                    }));
                }
            }
            Check::MinItems(min) => {
                if let Value::Array(items) = value
                    && (items.len() as u64) < *min
                {
                    return Err(cx.fail(|| {
                        format!("{} has fewer than {}", shown(value), counted(*min, "item"))
                    }));
                }
            }
            Check::MaxItems(max) => {
                if let Value::Array(items) = value
                    && items.len() as u64 > *max
                {
                    return Err(cx.fail(|| {
                        format!("{} has more than {}", shown(value), counted(*max, "item"))
                    }));
                }
            }
            Check::UniqueItems => {
                if let Value::Array(items) = value {
                    let mut seen = HashSet::new();
                    for item in items {
                        cx.step()?;
                        let mut key = String::new();
                        canonical(item, &mut key);
                        if !seen.insert(key) {
                            return Err(
                                cx.fail(|| format!("{} has non-unique elements", shown(value)))
                            );
                        }
                    }
                }
            }
            Check::Required(names) => {
                if let Value::Object(fields) = value
                    && let Some(missing) = names.iter().find(|name| !fields.contains_key(*name))
                {
                    return Err(cx.fail(|| format!("{} is a required property", quoted(missing))));
                }
            }
            Check::PropertyNames(node) => {
                if let Value::Object(fields) = value {
                    for key in fields.keys() {
                        let name = Value::String(key.clone());
                        match self.passes(*node, &name, cx) {
                            Ok(true) => {}
                            Ok(false) => {
                                return Err(cx.fail(|| {
                                    format!(
                                        "property name {} does not match `propertyNames`",
                                        quoted(key)
                                    )
                                }));
                            }
                            Err(_) => return Err(Fail::TooCostly),
                        }
                    }
                }
            }
            Check::MinProperties(min) => {
                if let Value::Object(fields) = value
                    && (fields.len() as u64) < *min
                {
                    return Err(
                        cx.fail(|| format!("{} has fewer than {}", shown(value), properties(*min)))
                    );
                }
            }
            Check::MaxProperties(max) => {
                if let Value::Object(fields) = value
                    && fields.len() as u64 > *max
                {
                    return Err(
                        cx.fail(|| format!("{} has more than {}", shown(value), properties(*max)))
                    );
                }
            }
            Check::DependentRequired(dependencies) => {
                if let Value::Object(fields) = value {
                    for (present, needed) in dependencies {
                        if !fields.contains_key(present) {
                            continue;
                        }
                        if let Some(missing) =
                            needed.iter().find(|name| !fields.contains_key(*name))
                        {
                            return Err(cx.fail(|| {
                                format!(
                                    "{} is a required property (because {} is present)",
                                    quoted(missing),
                                    quoted(present)
                                )
                            }));
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn type_matches(set: u8, value: &Value) -> bool {
    let bit = match value {
        Value::Null => NULL,
        Value::Bool(_) => BOOLEAN,
        Value::Object(_) => OBJECT,
        Value::Array(_) => ARRAY,
        Value::String(_) => STRING,
        Value::Number(n) => {
            return set & NUMBER != 0 || (set & INTEGER != 0 && is_integer(n));
        }
    };
    set & bit != 0
}

fn type_names(set: u8) -> String {
    let names: Vec<String> = TYPE_NAMES
        .iter()
        .filter(|(_, bit)| set & bit != 0)
        .map(|(name, _)| quoted(name))
        .collect();
    match names.as_slice() {
        [one] => format!("type {one}"),
        _ => format!("types {}", names.join(", ")),
    }
}

/// A number without loss: every JSON integer fits an `i128`.
enum Num {
    Int(i128),
    Float(f64),
}

fn num(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        Num::Int(i128::from(u))
    } else {
        Num::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

fn is_integer(n: &Number) -> bool {
    match num(n) {
        Num::Int(_) => true,
        Num::Float(f) => f.is_finite() && f.fract() == 0.0,
    }
}

/// Orders an integer and a float exactly (casting the integer to a float would round it).
fn compare_int_float(i: i128, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Equal;
    }
    // Beyond every JSON integer (which fit 64 bits) and within `i128` below.
    if f >= 1e30 {
        return Ordering::Less;
    }
    if f <= -1e30 {
        return Ordering::Greater;
    }
    let floor = f.floor();
    match i.cmp(&(floor as i128)) {
        Ordering::Equal if f > floor => Ordering::Less,
        order => order,
    }
}

fn compare(a: &Number, b: &Number) -> Ordering {
    match (num(a), num(b)) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Int(x), Num::Float(y)) => compare_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => compare_int_float(y, x).reverse(),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

fn is_multiple(n: &Number, divisor: &Number) -> bool {
    match (num(n), num(divisor)) {
        (Num::Int(x), Num::Int(y)) if y > 0 => x % y == 0,
        _ => {
            let (Some(x), Some(y)) = (n.as_f64(), divisor.as_f64()) else {
                return false;
            };
            let quotient = x / y;
            if !quotient.is_finite() {
                return false;
            }
            let tolerance = (quotient.abs() * 4.0 * f64::EPSILON).max(1e-9);
            (quotient - quotient.round()).abs() <= tolerance
        }
    }
}

/// JSON equality: numbers by value (`1 == 1.0`), objects whatever their keys' order.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare(x, y) == Ordering::Equal,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, x)| y.get(key).is_some_and(|y| json_eq(x, y)))
        }
        _ => a == b,
    }
}

/// A text equal for values that are [`json_eq`]: numbers by value, keys sorted.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Number(n) => match num(n) {
            Num::Int(i) => out.push_str(&i.to_string()),
            Num::Float(f) if f.fract() == 0.0 && f.abs() < 1e30 => {
                out.push_str(&(f as i128).to_string());
            }
            Num::Float(f) => out.push_str(&format!("{f:?}")),
        },
        Value::Array(items) => {
            out.push('[');
            for item in items {
                canonical(item, out);
                out.push(',');
            }
            out.push(']');
        }
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort();
            out.push('{');
            for key in keys {
                out.push_str(&quoted(key));
                out.push(':');
                if let Some(field) = fields.get(key) {
                    canonical(field, out);
                }
                out.push(',');
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Most characters of a value shown in a failure.
const MAX_SHOWN_CHARS: usize = 100;

fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or_default()),
        None => text,
    }
}

fn quoted(text: &str) -> String {
    shown(&Value::String(text.to_owned()))
}

fn counted(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn properties(n: u64) -> String {
    if n == 1 {
        "1 property".to_owned()
    } else {
        format!("{n} properties")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    fn passes(schema: &Value, instance: &Value) -> bool {
        compile(schema).unwrap().check(instance).is_ok()
    }

    /// The pointer and message of `instance`'s failure against `schema`.
    fn failure(schema: &Value, instance: &Value) -> (String, String) {
        match compile(schema).unwrap().check(instance) {
            Err(Failure::Invalid { pointer, message }) => (pointer, message),
            other => panic!("{instance} against {schema}: {other:?}"),
        }
    }

    fn refused(schema: &Value) -> String {
        compile(schema).err().unwrap()
    }

    #[test]
    fn boolean_schemas_and_type() {
        assert!(passes(&json!(true), &json!({"a": 1})));
        assert!(!passes(&json!(false), &json!(null)));
        let cases = [
            ("null", json!(null), json!(0)),
            ("boolean", json!(false), json!("false")),
            ("object", json!({}), json!([])),
            ("array", json!([]), json!({})),
            ("number", json!(1.5), json!("1.5")),
            ("string", json!(""), json!(null)),
            ("integer", json!(1.0), json!(1.5)),
        ];
        for (name, good, bad) in cases {
            assert!(passes(&json!({"type": name}), &good), "{name}");
            assert!(!passes(&json!({"type": name}), &bad), "{name}");
        }
        assert!(passes(&json!({"type": "integer"}), &json!(u64::MAX)));
        assert!(passes(&json!({"type": "number"}), &json!(-3)));
        let either = json!({"type": ["string", "null"]});
        assert!(passes(&either, &json!(null)) && passes(&either, &json!("x")));
        assert_eq!(
            failure(&either, &json!(1)),
            (
                "".to_owned(),
                "1 is not of types \"null\", \"string\"".to_owned()
            )
        );
        assert_eq!(
            failure(&json!({"type": "string"}), &json!(1)).1,
            "1 is not of type \"string\""
        );
    }

    #[test]
    fn enum_and_const_use_json_equality() {
        let schema = json!({"enum": ["a", 1, {"k": [1, 2]}, null]});
        assert!(passes(&schema, &json!(1.0)));
        assert!(passes(&schema, &json!({"k": [1.0, 2]})));
        assert!(passes(&schema, &json!(null)));
        assert!(!passes(&schema, &json!({"k": [2, 1]})));
        assert!(!passes(&schema, &json!("b")));
        assert!(
            failure(&schema, &json!(2))
                .1
                .starts_with("2 is not one of [")
        );
        let constant = json!({"const": {"a": 1, "b": [true]}});
        assert!(passes(&constant, &json!({"b": [true], "a": 1.0})));
        assert!(!passes(&constant, &json!({"b": [true], "a": 1, "c": 0})));
        assert!(!passes(&json!({"const": 0}), &json!(false)));
    }

    #[test]
    fn object_keywords() {
        let schema = json!({
            "properties": {"name": {"type": "string"}, "a/b": {"type": "integer"}},
            "patternProperties": {"^x-": {"type": "boolean"}},
            "additionalProperties": {"type": "number"},
            "required": ["name"],
            "minProperties": 1,
            "maxProperties": 3,
            "dependentRequired": {"card": ["cvv"]},
        });
        assert!(passes(
            &schema,
            &json!({"name": "n", "x-on": true, "other": 2})
        ));
        assert_eq!(
            failure(&schema, &json!({"x-on": true})).1,
            "\"name\" is a required property"
        );
        assert_eq!(
            failure(&schema, &json!({"name": "n", "a/b": 1.5})).0,
            "/a~1b"
        );
        assert_eq!(
            failure(&schema, &json!({"name": "n", "x-on": 1})).0,
            "/x-on"
        );
        assert_eq!(
            failure(&schema, &json!({"name": "n", "other": "2"})).0,
            "/other"
        );
        assert!(
            failure(&schema, &json!({"name": "n", "p": 1, "q": 2, "r": 3}))
                .1
                .contains("has more than 3 properties")
        );
        assert_eq!(
            failure(&schema, &json!({"name": "n", "card": 1})).1,
            "\"cvv\" is a required property (because \"card\" is present)"
        );
        assert!(passes(&schema, &json!({"name": "n", "card": 1, "cvv": 2})));
        let closed = json!({"properties": {"a": true}, "additionalProperties": false});
        assert_eq!(
            failure(&closed, &json!({"a": 1, "x": 2})),
            (
                "".to_owned(),
                "additional property \"x\" is not allowed".to_owned()
            )
        );
        let names = json!({"propertyNames": {"maxLength": 3}, "minProperties": 1});
        assert!(passes(&names, &json!({"abc": 1})));
        assert!(failure(&names, &json!({"abcd": 1})).1.contains("\"abcd\""));
        assert!(
            failure(&names, &json!({}))
                .1
                .contains("fewer than 1 property")
        );
        let dependent = json!({"dependentSchemas": {"a": {"required": ["b"]}}});
        assert!(passes(&dependent, &json!({"b": 1})));
        assert!(!passes(&dependent, &json!({"a": 1})));
        // Object keywords ignore other types.
        assert!(passes(&schema, &json!("not an object")));
    }

    #[test]
    fn array_keywords() {
        let tuple = json!({"prefixItems": [{"type": "string"}, {"type": "integer"}],
            "items": {"type": "boolean"}, "minItems": 1, "maxItems": 4});
        assert!(passes(&tuple, &json!(["a", 1, true, false])));
        assert_eq!(failure(&tuple, &json!(["a", "b"])).0, "/1");
        assert_eq!(failure(&tuple, &json!(["a", 1, 0])).0, "/2");
        assert!(failure(&tuple, &json!([])).1.contains("fewer than 1 item"));
        assert!(
            failure(&tuple, &json!(["a", 1, true, true, true]))
                .1
                .contains("more than 4 items")
        );
        let closed = json!({"prefixItems": [true], "items": false});
        assert!(passes(&closed, &json!([1])));
        assert_eq!(failure(&closed, &json!([1, 2])).0, "/1");
        let all = json!({"items": {"type": "integer"}});
        assert!(passes(&all, &json!([1, 2.0])));
        assert!(!passes(&all, &json!([1, "2"])));
        let unique = json!({"uniqueItems": true});
        assert!(passes(&unique, &json!([1, "1", [1], {"a": 1}, {"a": 2}])));
        assert!(!passes(&unique, &json!([1, 1.0])));
        assert!(!passes(
            &unique,
            &json!([{"a": 1, "b": 2}, {"b": 2, "a": 1}])
        ));
        assert!(
            failure(&unique, &json!([[1], [1]]))
                .1
                .contains("non-unique")
        );
        let contains = json!({"contains": {"type": "string"}});
        assert!(passes(&contains, &json!([1, "a"])));
        assert!(!passes(&contains, &json!([1, 2])));
        assert!(!passes(&contains, &json!([])));
        let counted = json!({"contains": {"type": "string"}, "minContains": 2, "maxContains": 3});
        assert!(passes(&counted, &json!(["a", 1, "b"])));
        assert!(!passes(&counted, &json!(["a", 1])));
        assert!(
            failure(&counted, &json!(["a", "b", "c", "d"]))
                .1
                .contains("more than 3 items")
        );
        assert!(passes(
            &json!({"contains": false, "minContains": 0}),
            &json!([1])
        ));
    }

    #[test]
    fn string_keywords() {
        let schema = json!({"minLength": 2, "maxLength": 3, "pattern": "[0-9]"});
        assert!(passes(&schema, &json!("a1")));
        // Code points, not bytes.
        assert!(passes(&schema, &json!("é9é")));
        assert_eq!(
            failure(&json!({"maxLength": 5}), &json!("far too long")).1,
            "\"far too long\" is longer than 5 characters"
        );
        assert!(
            failure(&schema, &json!("1"))
                .1
                .contains("shorter than 2 characters")
        );
        // Unanchored, as in ECMA-262.
        assert!(passes(&schema, &json!("ab1")));
        assert!(
            failure(&schema, &json!("abc"))
                .1
                .contains("does not match \"[0-9]\"")
        );
        assert!(passes(&schema, &json!(12345)));
    }

    #[test]
    fn numeric_keywords() {
        let schema = json!({"minimum": 1, "maximum": 10.5, "exclusiveMinimum": 0,
            "exclusiveMaximum": 11});
        assert!(passes(&schema, &json!(1)) && passes(&schema, &json!(10.5)));
        assert!(
            failure(&schema, &json!(0.5))
                .1
                .contains("less than the minimum of 1")
        );
        assert!(!passes(&schema, &json!(10.6)));
        assert!(!passes(&json!({"exclusiveMinimum": 0}), &json!(0.0)));
        assert!(!passes(&json!({"exclusiveMaximum": 1.5}), &json!(1.5)));
        assert!(passes(&json!({"exclusiveMaximum": 1.5}), &json!(1)));
        // Exact beyond f64's 53 bits: u64::MAX as a float rounds up to 2^64.
        assert!(!passes(&json!({"minimum": u64::MAX}), &json!(u64::MAX - 1)));
        assert!(passes(
            &json!({"maximum": 9_007_199_254_740_992u64}),
            &json!(9_007_199_254_740_992.0)
        ));
        assert!(!passes(
            &json!({"maximum": 9_007_199_254_740_992u64}),
            &json!(9_007_199_254_740_993u64)
        ));
        assert!(!passes(&json!({"minimum": -0.5}), &json!(i64::MIN + 1)));
        assert!(passes(&json!({"maximum": 1e300}), &json!(u64::MAX)));
        let multiple = json!({"multipleOf": 3});
        assert!(passes(&multiple, &json!(9)) && passes(&multiple, &json!(-9.0)));
        assert!(
            failure(&multiple, &json!(10))
                .1
                .contains("not a multiple of 3")
        );
        assert!(passes(
            &json!({"multipleOf": 3}),
            &json!(18_446_744_073_709_551_615u64)
        ));
        assert!(!passes(
            &json!({"multipleOf": 2}),
            &json!(18_446_744_073_709_551_615u64)
        ));
        let cents = json!({"multipleOf": 0.01});
        assert!(passes(&cents, &json!(19.99)) && passes(&cents, &json!(0.3)));
        assert!(!passes(&cents, &json!(19.995)));
        assert!(!passes(&json!({"multipleOf": 0.1}), &json!(0.35)));
        assert!(passes(&schema, &json!("numeric keywords ignore strings")));
    }

    #[test]
    fn combinators() {
        let all = json!({"allOf": [{"type": "integer"}, {"minimum": 2}]});
        assert!(passes(&all, &json!(2)));
        assert!(failure(&all, &json!(1)).1.contains("minimum"));
        let any = json!({"anyOf": [{"type": "string"}, {"minimum": 2}]});
        assert!(passes(&any, &json!("a")) && passes(&any, &json!(3)));
        assert!(failure(&any, &json!(1)).1.contains("any schema of `anyOf`"));
        let one = json!({"oneOf": [{"type": "integer"}, {"minimum": 2}]});
        assert!(passes(&one, &json!(1)) && passes(&one, &json!(2.5)));
        assert!(failure(&one, &json!(3)).1.contains("more than one"));
        assert!(
            failure(&one, &json!(1.5))
                .1
                .contains("any schema of `oneOf`")
        );
        let not = json!({"not": {"type": "string"}});
        assert!(passes(&not, &json!(1)));
        assert!(failure(&not, &json!("a")).1.contains("`not`"));
        let conditional = json!({"if": {"properties": {"kind": {"const": "a"}}},
            "then": {"required": ["a"]}, "else": {"required": ["b"]}});
        assert!(passes(&conditional, &json!({"kind": "a", "a": 1})));
        assert!(passes(&conditional, &json!({"kind": "z", "b": 1})));
        assert!(
            failure(&conditional, &json!({"kind": "a"}))
                .1
                .contains("\"a\" is a required")
        );
        assert!(
            failure(&conditional, &json!({"kind": "z"}))
                .1
                .contains("\"b\" is a required")
        );
        // Failures inside `anyOf` that end in a match leave no trace.
        let nested =
            json!({"properties": {"v": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}});
        assert!(passes(&nested, &json!({"v": 1})));
    }

    #[test]
    fn local_refs_resolve() {
        let schema = json!({
            "$defs": {"id": {"type": "integer"}, "a/b~c": {"type": "string"}, "sp ace": {"minimum": 5}},
            "definitions": {"old": {"type": "boolean"}},
            "properties": {
                "id": {"$ref": "#/$defs/id"},
                "escaped": {"$ref": "#/$defs/a~1b~0c"},
                "encoded": {"$ref": "#/$defs/sp%20ace"},
                "old": {"$ref": "#/definitions/old"},
                "same": {"$ref": "#/properties/id"}
            }
        });
        assert!(passes(
            &schema,
            &json!({"id": 1, "escaped": "s", "encoded": 6, "old": true, "same": 2})
        ));
        for (key, bad) in [
            ("id", json!("1")),
            ("escaped", json!(1)),
            ("encoded", json!(4)),
            ("old", json!(1)),
            ("same", json!(1.5)),
        ] {
            assert_eq!(
                failure(&schema, &json!({key: bad})).0,
                format!("/{key}"),
                "{key}"
            );
        }
        // `$ref` beside other keywords: both apply.
        let both = json!({"$defs": {"n": {"type": "number"}}, "$ref": "#/$defs/n", "minimum": 0});
        assert!(
            passes(&both, &json!(1)) && !passes(&both, &json!(-1)) && !passes(&both, &json!("1"))
        );
        // `$id` is ignored.
        assert!(passes(
            &json!({"$id": "https://example.com/s", "type": "null"}),
            &json!(null)
        ));
    }

    #[test]
    fn a_recursive_tree_schema_checks_deep_answers() {
        let tree = json!({
            "type": "object",
            "properties": {
                "value": {"type": "integer"},
                "children": {"type": "array", "items": {"$ref": "#"}}
            },
            "required": ["value"],
            "additionalProperties": false
        });
        assert!(passes(
            &tree,
            &json!({"value": 1, "children": [{"value": 2}, {"value": 3, "children": []}]})
        ));
        let error = failure(
            &tree,
            &json!({"value": 1, "children": [{"value": 2, "children": [{"value": "x"}]}]}),
        );
        assert_eq!(error.0, "/children/0/children/0/value");
        // 121 levels of JSON (serde_json parses at most 128), on a test thread's 2 MB stack.
        let mut deep = json!({"value": 0});
        for _ in 0..60 {
            deep = json!({"value": 1, "children": [deep]});
        }
        let text = deep.to_string();
        let deep: Value = serde_json::from_str(&text).unwrap();
        assert!(passes(&tree, &deep));
    }

    #[test]
    fn a_long_chain_of_refs_is_bounded() {
        let mut defs = serde_json::Map::new();
        for i in 0..5_000 {
            defs.insert(
                format!("d{i}"),
                json!({"$ref": format!("#/$defs/d{}", i + 1)}),
            );
        }
        defs.insert("d5000".to_owned(), json!({"type": "integer"}));
        let schema = json!({"$defs": defs, "$ref": "#/$defs/d0"});
        let compiled = compile(&schema).unwrap();
        assert_eq!(compiled.check(&json!(1)), Err(Failure::TooCostly));
        let mut short = serde_json::Map::new();
        for i in 0..50 {
            short.insert(
                format!("d{i}"),
                json!({"$ref": format!("#/$defs/d{}", i + 1)}),
            );
        }
        short.insert("d50".to_owned(), json!({"type": "integer"}));
        let schema = json!({"$defs": short, "$ref": "#/$defs/d0"});
        assert!(passes(&schema, &json!(1)) && !passes(&schema, &json!("1")));
    }

    #[test]
    fn ref_cycles_that_never_descend_are_refused() {
        for schema in [
            json!({"$ref": "#"}),
            json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}},
                "$ref": "#/$defs/a"}),
            json!({"anyOf": [{"type": "string"}, {"$ref": "#"}]}),
            json!({"not": {"$ref": "#"}}),
            json!({"if": true, "then": {"$ref": "#"}}),
        ] {
            let error = refused(&schema);
            assert!(error.contains("refers back to itself"), "{schema}: {error}");
        }
        // Through a keyword that descends into the value, a cycle is recursion, not a loop.
        assert!(compile(&json!({"items": {"$ref": "#"}})).is_ok());
        assert!(compile(&json!({"propertyNames": {"$ref": "#"}})).is_ok());
    }

    #[test]
    fn remote_anchor_and_dangling_refs_are_refused() {
        for target in [
            "https://example.com/s.json",
            "http://x/y#/a",
            "file:///etc/passwd",
            "other.json",
            "other.json#/a",
            "#anchor",
            "#/$defs/missing",
            "",
        ] {
            let error = refused(&json!({"$defs": {}, "$ref": target}));
            assert!(error.contains("`$ref`"), "{target}: {error}");
        }
        assert!(refused(&json!({"$ref": "#/$defs/missing"})).contains("points to nothing"));
        assert!(
            refused(&json!({"$ref": "https://example.com/s.json"})).contains("nothing is fetched")
        );
        assert!(refused(&json!({"$ref": 1})).contains("must be a string"));
        // A target that is not a schema.
        assert!(
            refused(&json!({"required": ["a"], "$ref": "#/required/0"}))
                .contains("at `#/required/0`")
        );
    }

    #[test]
    fn the_step_budget_stops_an_any_of_bomb() {
        // Each level tries both branches against the same value: 2^40 paths.
        let mut defs = serde_json::Map::new();
        for i in 0..40 {
            let next = json!({"$ref": format!("#/$defs/d{}", i + 1)});
            defs.insert(format!("d{i}"), json!({"anyOf": [next.clone(), next]}));
        }
        defs.insert("d40".to_owned(), json!({"type": "string"}));
        let schema = json!({"$defs": defs, "$ref": "#/$defs/d0"});
        let compiled = compile(&schema).unwrap();
        let started = Instant::now();
        assert_eq!(compiled.check(&json!(1)), Err(Failure::TooCostly));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(compiled.check(&json!("s")).is_ok());
        // `not` does not turn running out of budget into a pass.
        let negated = compile(&json!({"$defs": schema["$defs"], "not": {"$ref": "#/$defs/d0"}}));
        assert_eq!(negated.unwrap().check(&json!(1)), Err(Failure::TooCostly));
        // Without `$ref`s to share subschemas, over a deep answer: 2^100 paths.
        let both = json!({"anyOf": [{"type": "array", "items": {"$ref": "#"}},
            {"type": "array", "items": {"$ref": "#"}}]});
        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!([deep]);
        }
        let started = Instant::now();
        assert_eq!(
            compile(&both).unwrap().check(&deep),
            Err(Failure::TooCostly)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        // Within budget, the same kind of schema is checked.
        let small = compile(&json!({"anyOf": [{"type": "string"}, {"type": "integer"}]})).unwrap();
        assert!(small.check_with_budget(&json!(1), 20).is_ok());
        assert_eq!(
            small.check_with_budget(&json!(1), 3),
            Err(Failure::TooCostly)
        );
    }

    #[test]
    fn invalid_schemas_name_the_keyword() {
        for (schema, keyword) in [
            (json!({"type": "no-such-type"}), "`type`"),
            (json!({"type": 5}), "`type`"),
            (json!({"type": []}), "`type`"),
            (json!({"required": 5}), "`required`"),
            (json!({"required": [1]}), "`required`"),
            (json!({"minLength": -1}), "`minLength`"),
            (json!({"maxItems": 1.5}), "`maxItems`"),
            (json!({"minProperties": "1"}), "`minProperties`"),
            (json!({"properties": []}), "`properties`"),
            (
                json!({"patternProperties": {"(": {}}}),
                "`patternProperties`",
            ),
            (json!({"pattern": "("}), "`pattern`"),
            (json!({"pattern": "^(a)\\1$"}), "`pattern`"),
            (json!({"pattern": "(?=a)"}), "`pattern`"),
            (json!({"pattern": 1}), "`pattern`"),
            (json!({"pattern": "a{1000}{1000}"}), "`pattern`"),
            (json!({"enum": "a"}), "`enum`"),
            (json!({"minimum": "1"}), "`minimum`"),
            (json!({"multipleOf": 0}), "`multipleOf`"),
            (json!({"multipleOf": -2}), "`multipleOf`"),
            (json!({"allOf": []}), "`allOf`"),
            (json!({"anyOf": {}}), "`anyOf`"),
            (json!({"uniqueItems": "yes"}), "`uniqueItems`"),
            (
                json!({"dependentRequired": {"a": "b"}}),
                "`dependentRequired`",
            ),
            (json!({"items": 1}), "`#/items`"),
            (json!({"properties": {"a": "string"}}), "`#/properties/a`"),
            (json!({"not": []}), "`#/not`"),
            (json!(1), "`#`"),
        ] {
            let error = refused(&schema);
            assert!(error.contains(keyword), "{schema}: {error}");
        }
        // `format` is an annotation; unknown keywords are ignored.
        assert!(passes(
            &json!({"format": "email", "x-unknown": [1]}),
            &json!("not an email")
        ));
    }
}
