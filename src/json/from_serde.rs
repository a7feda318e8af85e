//! serde_json's tree as ours, for tests that write documents with `serde_json::json!`, and the
//! comparison of the two that the parser's tests and fuzz target use.

use super::number::Number;
use super::value::{Map, Value};

impl From<serde_json::Value> for Value {
    fn from(value: serde_json::Value) -> Value {
        match value {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(flag) => Value::Bool(flag),
            serde_json::Value::Number(number) => Value::Number(Number::from_checked_text(&number.to_string())),
            serde_json::Value::String(text) => Value::String(text),
            serde_json::Value::Array(items) => Value::Array(items.into_iter().map(Value::from).collect()),
            serde_json::Value::Object(members) => Value::Object(Map::from(members)),
        }
    }
}

impl From<serde_json::Map<String, serde_json::Value>> for Map {
    fn from(members: serde_json::Map<String, serde_json::Value>) -> Map {
        members.into_iter().map(|(name, value)| (name, Value::from(value))).collect()
    }
}

/// Ours and serde_json's trees are the same document (numbers compared by value: ours keep their
/// text, serde_json's are converted).
pub fn same_document(ours: &Value, theirs: &serde_json::Value) -> bool {
    match (ours, theirs) {
        (Value::Null, serde_json::Value::Null) => true,
        (Value::Bool(a), serde_json::Value::Bool(b)) => a == b,
        (Value::Number(a), serde_json::Value::Number(b)) => match (b.as_u64(), b.as_i64()) {
            (Some(b), _) => a.as_u64() == Some(b),
            (None, Some(b)) => a.as_i64() == Some(b),
            // Within one ulp: serde_json's default float parsing (without `float_roundtrip`) can be
            // one off; ours is core's, which is correctly rounded.
            (None, None) => match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => a == b || (a - b).abs() <= f64::EPSILON * a.abs().max(b.abs()),
                _ => false,
            },
        },
        (Value::String(a), serde_json::Value::String(b)) => a == b,
        (Value::Array(a), serde_json::Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_document(a, b))
        }
        (Value::Object(a), serde_json::Value::Object(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|((na, va), (nb, vb))| na == nb && same_document(va, vb))
        }
        _ => false,
    }
}
