//! Reads the configuration JSON into the `Raw*` structs of `raw.rs` while tracking the JSON path
//! (`jwtRules[0].issuer`), so an invalid configuration names the field that is wrong.
//!
//! The document is parsed once into a `serde_json::Value` (refusing duplicate members, which a
//! `Value` would silently collapse, and trailing characters), and the typed structs are read from
//! that tree. Reading from a tree keeps the code per configuration struct small: a path-tracking
//! wrapper around serde_json's streaming parser (serde_path_to_error, used before) repeats the
//! parser for every struct, about 100 KB of a 673 KB Wasm binary. Messages are serde's own; a
//! syntax error still says its line and column, a type error names its path only.

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

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

/// Parses `json` into a tree, refusing a member name that appears twice in one object (serde's
/// `duplicate field` error, at the path of the second one).
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
pub fn parse_strict(json: &[u8], path: &Path<'_>) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let value = StrictValue { path }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

struct StrictValue<'p, 'a> {
    path: &'p Path<'a>,
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json's parser never yields a non-finite number; `Null` is what `Value` does too.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            self.path.push(Segment::Index(items.len()));
            let Some(item) = seq.next_element_seed(StrictValue { path: self.path })? else { break };
            self.path.pop();
            items.push(item);
        }
        self.path.pop();
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            self.path.push(Segment::Member(Cow::Owned(name.clone())));
            if members.contains_key(&name) {
                return Err(de::Error::custom(format_args!("duplicate field `{name}`")));
            }
            let value = map.next_value_seed(StrictValue { path: self.path })?;
            self.path.pop();
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

/// Reads `T` from a parsed tree; on failure `path` is where it failed.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
pub fn read<'de, T: de::Deserialize<'de>>(value: &'de Value, path: &Path<'de>) -> Result<T, serde_json::Error> {
    T::deserialize(Tracked { value, path })
}

/// A `Deserializer` over a borrowed tree that records every array index and member it enters and
/// leaves it recorded when reading fails below it.
struct Tracked<'p, 'de> {
    value: &'de Value,
    path: &'p Path<'de>,
}

impl<'de> Deserializer<'de> for Tracked<'_, 'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(v) => visitor.visit_bool(*v),
            Value::Number(n) => {
                if let Some(v) = n.as_u64() {
                    visitor.visit_u64(v)
                } else if let Some(v) = n.as_i64() {
                    visitor.visit_i64(v)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(v) => visitor.visit_borrowed_str(v),
            // Like serde_json's own tree reader, elements or members left unread are an error.
            Value::Array(items) => {
                let mut seq = TrackedSeq { items: items.iter(), index: 0, path: self.path };
                let value = visitor.visit_seq(&mut seq)?;
                match seq.items.len() {
                    0 => Ok(value),
                    _ => Err(de::Error::invalid_length(items.len(), &"fewer elements in array")),
                }
            }
            Value::Object(members) => {
                let mut map = TrackedMap { members: members.iter(), pending: None, path: self.path };
                let value = visitor.visit_map(&mut map)?;
                match map.members.len() {
                    0 => Ok(value),
                    _ => Err(de::Error::invalid_length(members.len(), &"fewer elements in map")),
                }
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit unit_struct
        seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

struct TrackedSeq<'p, 'de> {
    items: std::slice::Iter<'de, Value>,
    index: usize,
    path: &'p Path<'de>,
}

impl<'de> SeqAccess<'de> for TrackedSeq<'_, 'de> {
    type Error = serde_json::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, Self::Error> {
        let Some(value) = self.items.next() else { return Ok(None) };
        self.path.push(Segment::Index(self.index));
        let element = seed.deserialize(Tracked { value, path: self.path })?;
        self.path.pop();
        self.index += 1;
        Ok(Some(element))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct TrackedMap<'p, 'de> {
    members: serde_json::map::Iter<'de>,
    /// The value of the member whose name was just read.
    pending: Option<&'de Value>,
    path: &'p Path<'de>,
}

impl<'de> MapAccess<'de> for TrackedMap<'_, 'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Self::Error> {
        let Some((name, value)) = self.members.next() else { return Ok(None) };
        // Pushed before the name is read: an unknown field's error then names it in the path.
        self.path.push(Segment::Member(Cow::Borrowed(name)));
        self.pending = Some(value);
        seed.deserialize(BorrowedStrDeserializer::new(name.as_str())).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Self::Error> {
        let value = self.pending.take().unwrap_or(&Value::Null);
        let member = seed.deserialize(Tracked { value, path: self.path })?;
        self.path.pop();
        Ok(member)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        items: Vec<Inner>,
        limit: Option<u32>,
        extra: Option<Value>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        name: String,
    }

    /// The error message and the path it was found at, for a document that must be refused.
    fn refused(json: &str) -> (String, String) {
        let parse_path = Path::default();
        let document = match parse_strict(json.as_bytes(), &parse_path) {
            Ok(document) => document,
            Err(err) => return (parse_path.render(), err.to_string()),
        };
        let path = Path::default();
        let err = read::<Outer>(&document, &path).expect_err("must be refused");
        (path.render(), err.to_string())
    }

    #[test]
    fn reads_a_valid_document() {
        let document = parse_strict(
            br#"{"items": [{"name": "a"}, {"name": "b"}], "extra": {"x": [1, -2, 0.5]}}"#,
            &Path::default(),
        )
        .expect("valid JSON");
        let outer: Outer = read(&document, &Path::default()).expect("valid");
        assert_eq!(outer.items, vec![Inner { name: "a".into() }, Inner { name: "b".into() }]);
        assert_eq!(outer.limit, None);
        assert_eq!(outer.extra, Some(serde_json::json!({"x": [1, -2, 0.5]})));
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
            (r#"{"items": [{"name": "a"}], "items": []}"#, "items", "duplicate field `items`"),
            (r#"{"extra": {"a": {"b": 1, "b": 2}}}"#, "extra.a.b", "duplicate field `b`"),
            (r#"{"items": [{"name": "a"}, {"name": "b"]}"#, "items[1]", "expected `,` or `}`"),
            (r#"{"items": []} trailing"#, "", "trailing characters"),
            ("[[], 1, 2, 3]", "", "invalid length 4, expected fewer elements in array"),
            ("{not json", "", "key must be a string at line 1 column 2"),
        ];
        for (json, path, message) in cases {
            let (got_path, got_message) = refused(json);
            assert_eq!(got_path, path, "{json}");
            assert!(got_message.contains(message), "{json}: {got_message}");
        }
    }
}
