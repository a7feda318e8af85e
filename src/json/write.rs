//! Compact JSON text of a `Value`: no whitespace, members in name order, strings escaped as
//! serde_json escaped them (`"`, `\` and control characters only; other text as it is).

use super::value::Value;
use std::fmt::{self, Write};

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(flag) => f.write_str(if *flag { "true" } else { "false" }),
            Value::Number(number) => f.write_str(number.as_str()),
            Value::String(text) => write_string(f, text),
            Value::Array(items) => {
                f.write_char('[')?;
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        f.write_char(',')?;
                    }
                    item.fmt(f)?;
                }
                f.write_char(']')
            }
            Value::Object(members) => {
                f.write_char('{')?;
                for (index, (name, value)) in members.iter().enumerate() {
                    if index > 0 {
                        f.write_char(',')?;
                    }
                    write_string(f, name)?;
                    f.write_char(':')?;
                    value.fmt(f)?;
                }
                f.write_char('}')
            }
        }
    }
}

/// Text as a JSON string literal, for messages and logs: what `{:?}` printed for plain text (quotes,
/// and escapes for `"`, `\\` and control characters), without the Unicode tables core's `Debug`
/// escaping links in (8 KB of the module: docs/performance.md, "Footprint").
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_string(f, self.0)
    }
}

fn write_string(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_char('"')?;
    let mut run_start = 0;
    for (index, byte) in text.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // Both ends are at ASCII bytes, so the run is whole characters.
        f.write_str(text.get(run_start..index).unwrap_or_default())?;
        if escape.is_empty() {
            write!(f, "\\u{byte:04x}")?;
        } else {
            f.write_str(escape)?;
        }
        run_start = index + 1;
    }
    f.write_str(text.get(run_start..).unwrap_or_default())?;
    f.write_char('"')
}
