//! Reads the configuration JSON into the `Raw*` structs of `raw.rs` while tracking the JSON path
//! (`jwtRules[0].issuer`), so an invalid configuration names the field that is wrong.
//!
//! The document is parsed once into a `json::Value` (refusing duplicate members and trailing
//! characters), and the typed structs are read from that tree. Reading from a tree keeps the code
//! per configuration struct small: a path-tracking wrapper around serde_json's streaming parser
//! (serde_path_to_error, used before) repeated the parser for every struct, about 100 KB of a
//! 673 KB Wasm binary. Messages are in serde's words, as they always were; a syntax error says its
//! line and column, a type error names its path only.

use crate::json::{self, Value};
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

/// Where a member's value is stored, and so what it must be. `Maybe*` slots are serde's
/// `Option`: absent or `null` leaves `None`. The others are `#[serde(default)]`: absent leaves the
/// default, `null` is a type error.
pub enum Slot<'s, 'a> {
    Text(&'s mut String),
    MaybeText(&'s mut Option<String>),
    Texts(&'s mut Vec<String>),
    MaybeTexts(&'s mut Option<Vec<String>>),
    Flag(&'s mut bool),
    MaybeFlag(&'s mut Option<bool>),
    U32(&'s mut u32),
    MaybeU32(&'s mut Option<u32>),
    MaybeU64(&'s mut Option<u64>),
    /// Anything else (a nested object, a list of them), read and stored by the closure.
    With(&'s mut dyn FnMut(&'a Value, &Path<'a>) -> Result<(), ReadError>),
    /// As `With`, for an `Option`: absent or `null` calls nothing.
    MaybeWith(&'s mut dyn FnMut(&'a Value, &Path<'a>) -> Result<(), ReadError>),
}

/// One member of an object's table: its name, whether it must be present, and its slot.
pub struct Member<'s, 'a> {
    name: &'static str,
    required: bool,
    slot: Slot<'s, 'a>,
}

/// A member that may be absent.
pub fn member<'s, 'a>(name: &'static str, slot: Slot<'s, 'a>) -> Member<'s, 'a> {
    Member { name, required: false, slot }
}

/// A member that must be present (serde's field without a default).
pub fn required<'s, 'a>(name: &'static str, slot: Slot<'s, 'a>) -> Member<'s, 'a> {
    Member { name, required: true, slot }
}

/// Reads the JSON object `value` into the slots of `members`: by hand rather than with serde's
/// derive, whose generated visitors were a sixth of the Wasm module's code for a once-per-VM job,
/// and through one table-driven loop rather than code per field, which V8 compiles at every
/// start (docs/performance.md, "Footprint"). A member the table does not name is refused first
/// (`what` names the object in a type error); then the members are read in table order and the
/// first error is returned with its path left in `path`. Messages are serde's.
#[inline(never)] // once, for every object of the configuration
pub fn read_object<'a>(
    value: &'a Value,
    path: &Path<'a>,
    what: &str,
    members: &mut [Member<'_, 'a>],
) -> Result<(), ReadError> {
    let Value::Object(map) = value else { return Err(invalid_type(value, what)) };
    if let Some(unknown) = map.keys().find(|name| !members.iter().any(|m| m.name == name.as_str())) {
        path.push(Segment::Member(Cow::Borrowed(unknown.as_str())));
        let expected: Vec<String> = members.iter().map(|m| format!("`{}`", m.name)).collect();
        return Err(format!("unknown field `{unknown}`, expected one of {}", expected.join(", ")));
    }
    for m in members.iter_mut() {
        let found = map.get_key_value(m.name);
        let maybe = matches!(
            m.slot,
            Slot::MaybeText(_)
                | Slot::MaybeTexts(_)
                | Slot::MaybeFlag(_)
                | Slot::MaybeU32(_)
                | Slot::MaybeU64(_)
                | Slot::MaybeWith(_)
        );
        let (key, value) = match found {
            Some((_, Value::Null)) if maybe => continue,
            Some(found) => found,
            None if m.required => return Err(format!("missing field `{}`", m.name)),
            None => continue,
        };
        path.push(Segment::Member(Cow::Borrowed(key.as_str())));
        match &mut m.slot {
            Slot::Text(slot) => **slot = string(value)?,
            Slot::MaybeText(slot) => **slot = Some(string(value)?),
            Slot::Texts(slot) => **slot = strings(value, path)?,
            Slot::MaybeTexts(slot) => **slot = Some(strings(value, path)?),
            Slot::Flag(slot) => **slot = boolean(value)?,
            Slot::MaybeFlag(slot) => **slot = Some(boolean(value)?),
            Slot::U32(slot) => **slot = unsigned(value, 32)? as u32,
            Slot::MaybeU32(slot) => **slot = Some(unsigned(value, 32)? as u32),
            Slot::MaybeU64(slot) => **slot = Some(unsigned(value, 64)?),
            Slot::With(read) | Slot::MaybeWith(read) => read(value, path)?,
        }
        path.pop();
    }
    Ok(())
}

/// A JSON array of `read` items, each at its index.
pub fn items<'a, T>(
    value: &'a Value,
    path: &Path<'a>,
    read: fn(&'a Value, &Path<'a>) -> Result<T, ReadError>,
) -> Result<Vec<T>, ReadError> {
    let Value::Array(list) = value else { return Err(invalid_type(value, "a sequence")) };
    let mut out = Vec::with_capacity(list.len());
    for (index, item) in list.iter().enumerate() {
        path.push(Segment::Index(index));
        out.push(read(item, path)?);
        path.pop();
    }
    Ok(out)
}

/// A JSON object whose members are lists of strings (`requiredClaims`), in name order.
pub fn string_lists<'a>(value: &'a Value, path: &Path<'a>) -> Result<Vec<(String, Vec<String>)>, ReadError> {
    let Value::Object(map) = value else { return Err(invalid_type(value, "a map of names to lists of strings")) };
    let mut out = Vec::with_capacity(map.len());
    for (name, list) in map.iter() {
        path.push(Segment::Member(Cow::Borrowed(name.as_str())));
        out.push((name.clone(), strings(list, path)?));
        path.pop();
    }
    Ok(out)
}

fn string(value: &Value) -> Result<String, ReadError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        other => Err(invalid_type(other, "a string")),
    }
}

fn strings<'a>(value: &'a Value, path: &Path<'a>) -> Result<Vec<String>, ReadError> {
    items(value, path, |item, _| string(item))
}

fn boolean(value: &Value) -> Result<bool, ReadError> {
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
        let mut inner = Inner { name: String::new() };
        read_object(value, path, "an inner object", &mut [required("name", Slot::Text(&mut inner.name))])?;
        Ok(inner)
    }

    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Result<Outer, ReadError> {
        let mut outer = Outer { items: Vec::new(), limit: None, extra: None };
        read_object(
            value,
            path,
            "an outer object",
            &mut [
                member(
                    "items",
                    Slot::With(&mut |value, path| {
                        outer.items = items(value, path, read_inner)?;
                        Ok(())
                    }),
                ),
                member("limit", Slot::MaybeU32(&mut outer.limit)),
                member(
                    "extra",
                    Slot::MaybeWith(&mut |value, _| {
                        outer.extra = Some(value.clone());
                        Ok(())
                    }),
                ),
            ],
        )?;
        Ok(outer)
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
