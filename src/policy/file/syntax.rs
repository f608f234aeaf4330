//! Errors of the YAML layer (not YAML, the wrong shape, a duplicate key) in
//! the policy file's own words: the line, the dotted key
//! (`constraints.network.allow_domains`), and a message about the file, not
//! about the parser's options or internal types.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::options::{DuplicateKeyPolicy, Options};
use serde_saphyr::{Error, Location, Spanned};

use super::Scalar;

/// A YAML-layer error, ready for [`super::PolicyFileError`].
#[derive(Debug, PartialEq)]
pub(super) struct Described {
    pub line: u64,
    pub column: u64,
    pub key: String,
    pub message: String,
    /// An unknown key (rather than a syntax or shape error).
    pub unknown_key: bool,
}

/// Describe `e`, which the parser gave for `text`; `track_path` is where
/// `serde_path_to_error` was when it happened.
pub(super) fn describe(e: &Error, text: &str, track_path: &str) -> Described {
    let inner = innermost(e);
    if let Error::DuplicateMappingKey { key, location } = inner {
        return duplicate(text, key.as_deref(), location, track_path);
    }
    let (line, column) = e
        .location()
        .map_or((0, 0), |loc| (loc.line(), loc.column()));
    let raw = strip_location(&inner.to_string());
    let unknown_key =
        matches!(inner, Error::SerdeUnknownField { .. }) || raw.starts_with("unknown field");
    let message = match inner {
        Error::SerdeUnknownField {
            field, expected, ..
        } => format!(
            "unknown key `{field}`, expected one of {}",
            expected.join(", ")
        ),
        Error::SerdeMissingField { field, .. } => format!("missing key `{field}`"),
        Error::Unexpected { expected, .. } => match *expected {
            "sequence start" => EXPECTED_LIST.to_string(),
            "mapping start" | "empty mapping start" => EXPECTED_MAPPING.to_string(),
            "scalar" | "string scalar" | "str expected" | "missing string" | "value" => {
                EXPECTED_SCALAR.to_string()
            }
            other => format!("unexpected YAML here (expected {other})"),
        },
        Error::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => format!(
            "{}, got {}",
            plain_expected(expected),
            plain_got(unexpected)
        ),
        Error::Eof { .. } => {
            "the file ends in the middle of a value (an unclosed bracket or quote?)".to_string()
        }
        _ if unknown_key => raw.replacen("unknown field", "unknown key", 1),
        // The parser's own words name its API or its configuration.
        _ if raw.starts_with("multiple YAML documents") => {
            "a policy file is one YAML document; this one has another after `---`".to_string()
        }
        _ if raw.contains("non-finite float") => {
            "expected a finite number (.inf and .nan are not values here)".to_string()
        }
        _ => raw,
    };
    Described {
        line,
        column,
        key: key_of(track_path, unknown_key),
        message,
        unknown_key,
    }
}

const EXPECTED_LIST: &str = "expected a list: `[a, b]`, or one `- item` per line";
const EXPECTED_MAPPING: &str = "expected a mapping: `key: value` lines, or `{key: value}`";
const EXPECTED_SCALAR: &str = "expected a single value, not a list or a mapping";

/// The error under the snippet and alias wrappers.
fn innermost(mut e: &Error) -> &Error {
    while let Error::WithSnippet { error, .. } | Error::AliasError { error, .. } = e {
        e = error;
    }
    e
}

/// serde's "expected" text without Rust type names.
fn plain_expected(expected: &str) -> String {
    if expected.starts_with("struct ") || expected == "a map" {
        EXPECTED_MAPPING.to_string()
    } else if expected == "a sequence" {
        EXPECTED_LIST.to_string()
    } else {
        format!("expected {expected}")
    }
}

fn plain_got(unexpected: &str) -> &str {
    match unexpected {
        "sequence" => "a list",
        "map" => "a mapping",
        other => other,
    }
}

/// A path from `serde_path_to_error` as the dotted key of the file:
/// `Spanned`'s own `value` segments go (`credentials[0].value.hosts` →
/// `credentials[0].hosts`, `constraints.pids.value` → `constraints.pids`),
/// as do unnamed `?` segments; an empty path is `(top level)`. With
/// `unknown_key`, the last segment is the unknown key and is kept as written.
pub(super) fn key_of(path: &str, unknown_key: bool) -> String {
    let mut segments: Vec<&str> = path.split('.').collect();
    let last = if unknown_key { segments.pop() } else { None };
    let mut key = String::new();
    for seg in segments {
        let index = seg
            .strip_prefix("value")
            .filter(|rest| rest.is_empty() || rest.starts_with('['));
        match index {
            Some(rest) => key.push_str(rest),
            None if seg.is_empty() || seg == "?" => {}
            None => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(seg);
            }
        }
    }
    if let Some(last) = last.filter(|l| !l.is_empty() && *l != "?") {
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(last);
    }
    if key.is_empty() {
        "(top level)".to_string()
    } else {
        key
    }
}

/// The parser appends ` at line L, column C`; we print the position ourselves.
pub(super) fn strip_location(message: &str) -> String {
    match message.rsplit_once(" at line ") {
        Some((head, tail)) if tail.contains("column") => head.to_string(),
        _ => message.to_string(),
    }
}

/// A duplicate key: named with its full path, and where it first appeared
/// (found by reading the file again with duplicates passed through).
fn duplicate(text: &str, name: Option<&str>, at: &Location, track_path: &str) -> Described {
    let mut options = Options::default();
    options.duplicate_keys = DuplicateKeyPolicy::PassThrough;
    options.with_snippet = false;
    let found = serde_saphyr::from_str_with_options::<Node>(text, options)
        .ok()
        .and_then(|tree| {
            let mut best = None;
            find_duplicate(&tree, "", (at.line(), at.column()), &mut best);
            best
        });
    match found {
        Some(d) => Described {
            line: d.line,
            column: d.column,
            message: format!(
                "duplicate key `{}` (first at line {})",
                d.name, d.first_line
            ),
            key: d.key,
            unknown_key: false,
        },
        None => {
            let parent = key_of(track_path, false);
            let name = name.unwrap_or("?");
            Described {
                line: at.line(),
                column: at.column(),
                key: if parent == "(top level)" {
                    name.to_string()
                } else {
                    format!("{parent}.{name}")
                },
                message: format!("duplicate key `{name}`"),
                unknown_key: false,
            }
        }
    }
}

struct Duplicate {
    key: String,
    name: String,
    line: u64,
    column: u64,
    first_line: u64,
}

/// The duplicate at `at` (line, column), else the first one in the file.
/// Returns true when the one at `at` was found.
fn find_duplicate(node: &Node, path: &str, at: (u64, u64), best: &mut Option<Duplicate>) -> bool {
    match node {
        Node::Leaf => false,
        Node::Seq(items) => items
            .iter()
            .enumerate()
            .any(|(i, item)| find_duplicate(item, &format!("{path}[{i}]"), at, best)),
        Node::Map(entries) => {
            for (i, (k, v)) in entries.iter().enumerate() {
                let name = key_text(&k.value);
                let key = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                let first = entries[..i].iter().find(|(k0, _)| k0.value == k.value);
                if let Some((first, _)) = first {
                    let here = (k.referenced.line(), k.referenced.column());
                    if here == at || best.is_none() {
                        *best = Some(Duplicate {
                            key: key.clone(),
                            name,
                            line: here.0,
                            column: here.1,
                            first_line: first.referenced.line(),
                        });
                    }
                    if here == at {
                        return true;
                    }
                }
                if find_duplicate(v, &key, at, best) {
                    return true;
                }
            }
            false
        }
    }
}

fn key_text(k: &Scalar) -> String {
    match k {
        Scalar::Str(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Any YAML document, keeping only the mappings' keys and where they are.
enum Node {
    Leaf,
    Map(Vec<(Spanned<Scalar>, Node)>),
    Seq(Vec<Node>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = map.next_key::<Spanned<Scalar>>()? {
                    entries.push((k, map.next_value()?));
                }
                Ok(Node::Map(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
        }
        d.deserialize_any(NodeVisitor)
    }
}
