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
/// escaping links in (8 KB of the module: docs/performance.md, "Footprint"). Text from remote
/// documents and tokens passes through it, so it also escapes what could forge or disguise a log
/// line: DEL, the C1 controls, and the zero-width, line-separator and bidirectional formatting
/// characters.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, true)
    }
}

fn write_string(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    write_escaped(f, text, false)
}

/// `text` quoted; `for_logs` also escapes the characters `Quoted` names.
fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str, for_logs: bool) -> fmt::Result {
    f.write_char('"')?;
    let mut run_start = 0;
    for (index, c) in text.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            '\0'..='\u{1f}' => "",
            '\u{7f}'..='\u{9f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
                if for_logs =>
            {
                ""
            }
            _ => continue,
        };
        f.write_str(text.get(run_start..index).unwrap_or_default())?;
        if escape.is_empty() {
            write!(f, "\\u{:04x}", u32::from(c))?;
        } else {
            f.write_str(escape)?;
        }
        run_start = index + c.len_utf8();
    }
    f.write_str(text.get(run_start..).unwrap_or_default())?;
    f.write_char('"')
}
