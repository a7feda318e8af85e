//! Reads the configuration JSON into the `Raw*` structs of `raw.rs` while tracking the JSON path
//! (`jwtRules[0].issuer`), so an invalid configuration names the field that is wrong.
//!
//! The document is parsed once into a `json::Value` (refusing duplicate members and trailing
//! characters), and the typed structs are read from that tree. Reading from a tree keeps the code
//! per configuration struct small: a path-tracking wrapper around serde_json's streaming parser
//! (serde_path_to_error, used before) repeated the parser for every struct, about 100 KB of a
//! 673 KB Wasm binary. Messages are in serde's words, as they always were; a syntax error says its
//! line and column, a type error names its path only.

use crate::json::{self, Map, Value};
use std::borrow::Cow;
use std::cell::RefCell;

/// A JSON path, innermost last: where reading stopped when it failed.
#[derive(Default)]
pub struct Path<'a>(RefCell<Vec<Segment<'a>>>);

enum Segment<'a> {
    Index(usize),
    /// Owned while the document is parsed, borrowed from the tree when it is read.
    Member(Cow<'a, str>),
}

impl<'a> Path<'a> {
    fn push(&self, segment: Segment<'a>) {
        self.0.borrow_mut().push(segment);
    }

    fn pop(&self) {
        self.0.borrow_mut().pop();
    }

    /// `jwtRules[0].issuer`; empty at the top level.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for segment in self.0.borrow().iter() {
            match segment {
                Segment::Index(index) => out.push_str(&format!("[{index}]")),
                Segment::Member(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
            }
        }
        out
    }
}

/// Parses `json` into a tree (src/json/: a member name that appears twice in one object is
/// refused, at the path of the repeated member), leaving in `path` where a refusal was found.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
pub fn parse_strict(json: &[u8], path: &Path<'_>) -> Result<Value, json::Error> {
    json::parse(json, json::Limits::DOCUMENT).inspect_err(|failure| {
        for segment in &failure.path {
            path.push(match segment {
                json::Segment::Index(index) => Segment::Index(*index),
                json::Segment::Member(name) => Segment::Member(Cow::Owned(name.clone())),
            });
        }
    })
}

/// What reading the tree into the configuration's structs found wrong, in serde's words.
pub type ReadError = String;

/// The members of one JSON object of the configuration, read field by field with the path kept:
/// by hand rather than with serde's derive, whose generated visitors were a sixth of the Wasm
/// module's code for a once-per-VM job (docs/performance.md, "Footprint"). Messages are serde's.
pub struct Object<'a, 'p> {
    members: &'a Map,
    path: &'p Path<'a>,
}

impl<'a, 'p> Object<'a, 'p> {
    /// `value` as an object with no members but `fields` (`what` names it in a type error).
    pub fn new(value: &'a Value, path: &'p Path<'a>, what: &str, fields: &[&str]) -> Result<Self, ReadError> {
        let Value::Object(members) = value else { return Err(invalid_type(value, what)) };
        if let Some(unknown) = members.keys().find(|name| !fields.contains(&name.as_str())) {
            path.push(Segment::Member(Cow::Borrowed(unknown.as_str())));
            let expected: Vec<String> = fields.iter().map(|field| format!("`{field}`")).collect();
            return Err(format!("unknown field `{unknown}`, expected one of {}", expected.join(", ")));
        }
        Ok(Object { members, path })
    }

    /// The member `name` read with `read`, `None` when absent.
    fn member<T>(
        &self,
        name: &str,
        read: impl FnOnce(&'a Value, &'p Path<'a>) -> Result<T, ReadError>,
    ) -> Result<Option<T>, ReadError> {
        let Some((key, value)) = self.members.get_key_value(name) else { return Ok(None) };
        self.path.push(Segment::Member(Cow::Borrowed(key.as_str())));
        let read = read(value, self.path)?;
        self.path.pop();
        Ok(Some(read))
    }

    pub fn required<T>(
        &self,
        name: &str,
        read: impl FnOnce(&'a Value, &'p Path<'a>) -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        self.member(name, read)?.ok_or_else(|| format!("missing field `{name}`"))
    }

    /// Absent or `null`: `None` (serde's `Option`).
    pub fn optional<T>(
        &self,
        name: &str,
        read: impl FnOnce(&'a Value, &'p Path<'a>) -> Result<T, ReadError>,
    ) -> Result<Option<T>, ReadError> {
        match self.members.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.member(name, read),
        }
    }

    /// Absent: the type's default (serde's `#[serde(default)]`); `null` is a type error.
    pub fn or_default<T: Default>(
        &self,
        name: &str,
        read: impl FnOnce(&'a Value, &'p Path<'a>) -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        Ok(self.member(name, read)?.unwrap_or_default())
    }
}

/// A JSON array of `read` items, each at its index.
pub fn list<'a, T>(
    read: impl Fn(&'a Value, &Path<'a>) -> Result<T, ReadError>,
) -> impl FnOnce(&'a Value, &Path<'a>) -> Result<Vec<T>, ReadError> {
    move |value, path| {
        let Value::Array(items) = value else { return Err(invalid_type(value, "a sequence")) };
        let mut out = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            path.push(Segment::Index(index));
            out.push(read(item, path)?);
            path.pop();
        }
        Ok(out)
    }
}

pub fn string(value: &Value, _: &Path<'_>) -> Result<String, ReadError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        other => Err(invalid_type(other, "a string")),
    }
}

pub fn strings<'a>(value: &'a Value, path: &Path<'a>) -> Result<Vec<String>, ReadError> {
    list(string)(value, path)
}

pub fn boolean(value: &Value, _: &Path<'_>) -> Result<bool, ReadError> {
    match value {
        Value::Bool(flag) => Ok(*flag),
        other => Err(invalid_type(other, "a boolean")),
    }
}

/// A non-negative integer of at most `bits` bits (`u32`, `u64` in messages).
fn unsigned(value: &Value, bits: u32) -> Result<u64, ReadError> {
    let expected = format!("u{bits}");
    match value {
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(v), _) if bits == 64 || v >> bits == 0 => Ok(v),
            (Some(v), _) => Err(format!("invalid value: integer `{v}`, expected {expected}")),
            (None, Some(v)) => Err(format!("invalid value: integer `{v}`, expected {expected}")),
            (None, None) => Err(invalid_type(value, &expected)),
        },
        other => Err(invalid_type(other, &expected)),
    }
}

pub fn u64_value(value: &Value, _: &Path<'_>) -> Result<u64, ReadError> {
    unsigned(value, 64)
}

pub fn u32_value(value: &Value, _: &Path<'_>) -> Result<u32, ReadError> {
    unsigned(value, 32).map(|v| v as u32)
}

/// serde's `invalid type` message: what was found (`integer `5``, `map`, …) and what was expected.
fn invalid_type(value: &Value, expected: &str) -> ReadError {
    let found = match value {
        Value::Null => "unit value".to_string(),
        Value::Bool(flag) => format!("boolean `{flag}`"),
        Value::Number(n) if n.is_f64() => format!("floating point `{n}`"),
        Value::Number(n) => format!("integer `{n}`"),
        Value::String(text) => format!("string {text_q}", text_q = crate::json::Quoted(text)),
        Value::Array(_) => "sequence".to_string(),
        Value::Object(_) => "map".to_string(),
    };
    format!("invalid type: {found}, expected {expected}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Outer {
        items: Vec<Inner>,
        limit: Option<u32>,
        extra: Option<Value>,
    }

    #[derive(Debug, PartialEq)]
    struct Inner {
        name: String,
    }

    fn read_inner<'a>(value: &'a Value, path: &Path<'a>) -> Result<Inner, ReadError> {
        let o = Object::new(value, path, "an inner object", &["name"])?;
        Ok(Inner { name: o.required("name", string)? })
    }

    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Result<Outer, ReadError> {
        let o = Object::new(value, path, "an outer object", &["items", "limit", "extra"])?;
        Ok(Outer {
            items: o.or_default("items", list(read_inner))?,
            limit: o.optional("limit", u32_value)?,
            extra: o.optional("extra", |value, _| Ok(value.clone()))?,
        })
    }

    /// The error message and the path it was found at, for a document that must be refused.
    fn refused(json: &str) -> (String, String) {
        let parse_path = Path::default();
        let document = match parse_strict(json.as_bytes(), &parse_path) {
            Ok(document) => document,
            Err(err) => return (parse_path.render(), err.to_string()),
        };
        let path = Path::default();
        let err = read(&document, &path).expect_err("must be refused");
        (path.render(), err)
    }

    #[test]
    fn reads_a_valid_document() {
        let document = parse_strict(
            br#"{"items": [{"name": "a"}, {"name": "b"}], "extra": {"x": [1, -2, 0.5]}}"#,
            &Path::default(),
        )
        .expect("valid JSON");
        let outer = read(&document, &Path::default()).expect("valid");
        assert_eq!(outer.items, vec![Inner { name: "a".into() }, Inner { name: "b".into() }]);
        assert_eq!(outer.limit, None);
        assert_eq!(outer.extra, Some(serde_json::json!({"x": [1, -2, 0.5]}).into()));
    }

    #[test]
    fn errors_carry_the_path_of_the_offending_member() {
        let cases = [
            (
                r#"{"items": [{"name": "a"}, {"name": 5}]}"#,
                "items[1].name",
                "invalid type: integer `5`, expected a string",
            ),
            (r#"{"items": [{"name": "a"}, {}]}"#, "items[1]", "missing field `name`"),
            (r#"{"items": [{"name": "a", "bogus": 1}]}"#, "items[0].bogus", "unknown field `bogus`"),
            (r#"{"limit": -1}"#, "limit", "invalid value: integer `-1`, expected u32"),
            (r#"{"limit": 1.5}"#, "limit", "invalid type: floating point `1.5`, expected u32"),
            (r#"{"items": {}}"#, "items", "invalid type: map, expected a sequence"),
            (r#"{"items": [{"name": "a"}], "items": []}"#, "items", r#"duplicate field "items""#),
            (r#"{"extra": {"a": {"b": 1, "b": 2}}}"#, "extra.a.b", r#"duplicate field "b""#),
            (r#"{"items": [{"name": "a"}, {"name": "b"]}"#, "items[1]", "expected `,` or `}`"),
            (r#"{"items": []} trailing"#, "", "trailing characters"),
            ("[[], 1, 2, 3]", "", "invalid type: sequence, expected an outer object"),
            (r#"{"limit": 5000000000}"#, "limit", "invalid value: integer `5000000000`, expected u32"),
            (r#"{"items": [{"name": null}]}"#, "items[0].name", "invalid type: unit value, expected a string"),
            ("{not json", "", "key must be a string at line 1 column 2"),
        ];
        for (json, path, message) in cases {
            let (got_path, got_message) = refused(json);
            assert_eq!(got_path, path, "{json}");
            assert!(got_message.contains(message), "{json}: {got_message}");
        }
    }
}
