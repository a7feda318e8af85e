//! The strict JSON parser (RFC 8259): one pass over the bytes into a `Value`, refusing what a
//! lenient parser would quietly accept.
//!
//! Refused: a member name repeated in one object (RFC 7515 §5.2, RFC 7519 §4 and RFC 7517 §4 let a
//! recipient refuse it, and we do: a token's payload is handed upstream verbatim, and an upstream
//! parser that takes the *first* `sub` would act on an identity other than the one authorized
//! here), nesting deeper than the caller's limit (checked as each container opens, so a
//! 10,000-level document costs a short scan, never a deep recursion), invalid UTF-8, unpaired
//! surrogate escapes, control characters in strings, numbers outside RFC 8259's grammar or beyond
//! `f64`'s range, and anything after the value. The error names its line and column and the path
//! of the value it was found in, for the configuration's messages.

use super::number::Number;
use super::value::{Map, Value};
use std::fmt;

/// How deep a document may nest: the document itself is depth 1, so `max_depth: 1` allows one
/// object or array of scalars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_depth: usize,
}

impl Limits {
    /// For documents from configured services and the operator (key sets, discovery documents,
    /// the configuration): serde_json's recursion limit, 127 nested containers, which these
    /// documents were always held to.
    pub const DOCUMENT: Limits = Limits { max_depth: 127 };
}

/// One step of the path to where a parse failed: an array index or an object member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Index(usize),
    Member(String),
}

/// Why a document is not one we accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The document ended inside an array.
    EofWhileParsingList,
    /// The document ended inside an object.
    EofWhileParsingObject,
    /// The document ended inside a string.
    EofWhileParsingString,
    /// The document ended where a value was due.
    EofWhileParsingValue,
    /// An object member's name is not followed by `:`.
    ExpectedColon,
    /// An array element is not followed by `,` or `]`.
    ExpectedListCommaOrEnd,
    /// An object member is not followed by `,` or `}`.
    ExpectedObjectCommaOrEnd,
    /// A literal other than `true`, `false` or `null`.
    ExpectedIdent,
    /// Something that cannot start a value.
    ExpectedValue,
    /// An object member's name is not a string.
    KeyMustBeAString,
    /// A number outside RFC 8259's grammar.
    InvalidNumber,
    /// A number beyond `f64`'s range.
    NumberOutOfRange,
    /// A backslash escape RFC 8259 does not define.
    InvalidEscape,
    /// A `\u` escape that is not four hex digits or not a Unicode scalar value, or invalid UTF-8.
    InvalidUnicodeCodePoint,
    /// A high surrogate escape not followed by a low one.
    LoneLeadingSurrogate,
    /// A byte below 0x20 inside a string.
    ControlCharacterInString,
    /// Something after the value.
    TrailingCharacters,
    /// Nested deeper than `Limits::max_depth`.
    RecursionLimitExceeded,
    /// The member name appears twice in one object.
    DuplicateMember(String),
}

/// A refused document: what, where (line and column, 1-based), and in which value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub line: usize,
    pub column: usize,
    /// Outermost first; for a repeated member, ends with its name.
    pub path: Vec<Segment>,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // serde_json's wording, which the configuration's messages have always used.
        let text = match self {
            ErrorKind::EofWhileParsingList => "EOF while parsing a list",
            ErrorKind::EofWhileParsingObject => "EOF while parsing an object",
            ErrorKind::EofWhileParsingString => "EOF while parsing a string",
            ErrorKind::EofWhileParsingValue => "EOF while parsing a value",
            ErrorKind::ExpectedColon => "expected `:`",
            ErrorKind::ExpectedListCommaOrEnd => "expected `,` or `]`",
            ErrorKind::ExpectedObjectCommaOrEnd => "expected `,` or `}`",
            ErrorKind::ExpectedIdent => "expected ident",
            ErrorKind::ExpectedValue => "expected value",
            ErrorKind::KeyMustBeAString => "key must be a string",
            ErrorKind::InvalidNumber => "invalid number",
            ErrorKind::NumberOutOfRange => "number out of range",
            ErrorKind::InvalidEscape => "invalid escape",
            ErrorKind::InvalidUnicodeCodePoint => "invalid unicode code point",
            ErrorKind::LoneLeadingSurrogate => "lone leading surrogate in hex escape",
            ErrorKind::ControlCharacterInString => "control character (\\u0000-\\u001F) found while parsing a string",
            ErrorKind::TrailingCharacters => "trailing characters",
            ErrorKind::RecursionLimitExceeded => "recursion limit exceeded",
            ErrorKind::DuplicateMember(name) => return write!(f, "duplicate field {}", super::Quoted(name)),
        };
        f.write_str(text)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            // Found once the object is complete: its position would point past it.
            ErrorKind::DuplicateMember(_) => write!(f, "{}", self.kind),
            _ => write!(f, "{} at line {} column {}", self.kind, self.line, self.column),
        }
    }
}

/// Parses one JSON document.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
pub fn parse(json: &[u8], limits: Limits) -> Result<Value, Error> {
    let mut parser = Parser { bytes: json, at: 0, max_depth: limits.max_depth };
    let result = match std::str::from_utf8(json) {
        Err(invalid) => {
            parser.at = invalid.valid_up_to();
            Err(parser.fail(ErrorKind::InvalidUnicodeCodePoint))
        }
        Ok(_) => parser.document(),
    };
    result.map_err(|mut failure| {
        failure.path.reverse();
        failure
    })
}

/// Members in name order (stable), by insertion or merge sort: the standard library's sorts are 5 KB of code
/// for this one element type, and an object in order already (the common case) is one pass.
fn sort_members(mut members: Vec<(String, Value)>) -> Vec<(String, Value)> {
    if members.windows(2).all(|pair| pair.first().map(|a| &a.0) <= pair.get(1).map(|b| &b.0)) {
        return members;
    }
    // A token's object has a few dozen members: sorted in place, without allocating.
    if members.len() <= 32 {
        for end in 1..members.len() {
            let mut at = end;
            while at > 0 && members.get(at - 1).map(|a| &a.0) > members.get(at).map(|b| &b.0) {
                members.swap(at - 1, at);
                at -= 1;
            }
        }
        return members;
    }
    let mut left = members;
    let right = sort_members(left.split_off(left.len() / 2));
    let left = sort_members(left);
    let mut merged = Vec::with_capacity(left.len() + right.len());
    let (mut left, mut right) = (left.into_iter().peekable(), right.into_iter().peekable());
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (Some(a), Some(b)) => a.0 <= b.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return merged,
        };
        merged.extend(if take_left { left.next() } else { right.next() });
    }
}

struct Parser<'a> {
    /// Valid UTF-8 (checked first), so a slice between two ASCII bytes is always valid text.
    bytes: &'a [u8],
    at: usize,
    max_depth: usize,
}

impl Parser<'_> {
    fn document(&mut self) -> Result<Value, Error> {
        let value = self.value(1)?;
        self.skip_whitespace();
        if self.at < self.bytes.len() {
            return Err(self.fail(ErrorKind::TrailingCharacters));
        }
        Ok(value)
    }

    fn fail(&self, kind: ErrorKind) -> Error {
        // serde_json's convention: the column of the offending byte, or of the last one at the end.
        let position = self.at.min(self.bytes.len());
        let before = self.bytes.get(..position).unwrap_or_default();
        let line = 1 + before.iter().filter(|&&byte| byte == b'\n').count();
        let line_start = before.iter().rposition(|&byte| byte == b'\n').map_or(0, |newline| newline + 1);
        let column = if self.at >= self.bytes.len() { position - line_start } else { position - line_start + 1 };
        Error { kind, line, column, path: Vec::new() }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// The value at `depth` (the document is 1).
    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        self.skip_whitespace();
        match self.peek() {
            None => Err(self.fail(ErrorKind::EofWhileParsingValue)),
            Some(b'{') => self.nested(depth, Parser::object),
            Some(b'[') => self.nested(depth, Parser::array),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.fail(ErrorKind::ExpectedValue)),
        }
    }

    fn nested(&mut self, depth: usize, read: fn(&mut Self, usize) -> Result<Value, Error>) -> Result<Value, Error> {
        if depth > self.max_depth {
            return Err(self.fail(ErrorKind::RecursionLimitExceeded));
        }
        self.at += 1;
        read(self, depth + 1)
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, Error> {
        for expected in word.bytes() {
            match self.peek() {
                Some(byte) if byte == expected => self.at += 1,
                None => return Err(self.fail(ErrorKind::EofWhileParsingValue)),
                Some(_) => return Err(self.fail(ErrorKind::ExpectedIdent)),
            }
        }
        Ok(value)
    }

    /// After `[`; `depth` is that of the elements.
    fn array(&mut self, depth: usize) -> Result<Value, Error> {
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            let item = self.value(depth).map_err(|mut failure| {
                failure.path.push(Segment::Index(items.len()));
                failure
            })?;
            items.push(item);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                None => return Err(self.fail(ErrorKind::EofWhileParsingList)),
                Some(_) => return Err(self.fail(ErrorKind::ExpectedListCommaOrEnd)),
            }
        }
    }

    /// After `{`; `depth` is that of the members' values.
    fn object(&mut self, depth: usize) -> Result<Value, Error> {
        let mut members: Vec<(String, Value)> = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Object(Map::new()));
        }
        loop {
            self.skip_whitespace();
            match self.peek() {
                Some(b'"') => {}
                None => return Err(self.fail(ErrorKind::EofWhileParsingObject)),
                Some(_) => return Err(self.fail(ErrorKind::KeyMustBeAString)),
            }
            let name = self.string()?;
            self.skip_whitespace();
            match self.peek() {
                Some(b':') => self.at += 1,
                None => return Err(self.fail(ErrorKind::EofWhileParsingObject)),
                Some(_) => return Err(self.fail(ErrorKind::ExpectedColon)),
            }
            match self.value(depth) {
                Ok(value) => members.push((name, value)),
                Err(mut failure) => {
                    failure.path.push(Segment::Member(name));
                    return Err(failure);
                }
            }
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    break;
                }
                None => return Err(self.fail(ErrorKind::EofWhileParsingObject)),
                Some(_) => return Err(self.fail(ErrorKind::ExpectedObjectCommaOrEnd)),
            }
        }
        // Sorted once, then a repeated name is a neighbour: O(n log n) whatever the member count
        // (a pairwise check would be quadratic in an attacker's payload).
        let members = sort_members(members);
        if let Some(pair) = members.windows(2).find(|pair| pair.first().map(|a| &a.0) == pair.get(1).map(|b| &b.0)) {
            let name = pair.first().map(|(name, _)| name.clone()).unwrap_or_default();
            let mut failure = self.fail(ErrorKind::DuplicateMember(name.clone()));
            failure.path.push(Segment::Member(name));
            return Err(failure);
        }
        Ok(Value::Object(Map::from_sorted(members)))
    }

    /// At `"`: the string's text, escapes resolved.
    fn string(&mut self) -> Result<String, Error> {
        self.at += 1;
        let mut out = String::new();
        let mut run_start = self.at;
        loop {
            match self.peek() {
                None => return Err(self.fail(ErrorKind::EofWhileParsingString)),
                Some(b'"') => {
                    out.push_str(self.text(run_start));
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    out.push_str(self.text(run_start));
                    self.at += 1;
                    self.escape(&mut out)?;
                    run_start = self.at;
                }
                Some(0..=0x1f) => return Err(self.fail(ErrorKind::ControlCharacterInString)),
                Some(_) => self.at += 1,
            }
        }
    }

    /// The text from `start` to the current position (both at ASCII bytes of valid UTF-8).
    fn text(&self, start: usize) -> &str {
        self.bytes.get(start..self.at).and_then(|run| std::str::from_utf8(run).ok()).unwrap_or_default()
    }

    /// After a backslash.
    fn escape(&mut self, out: &mut String) -> Result<(), Error> {
        let Some(byte) = self.peek() else { return Err(self.fail(ErrorKind::EofWhileParsingString)) };
        self.at += 1;
        let decoded = match byte {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let first = self.hex4()?;
                let code = match first {
                    0xD800..=0xDBFF => {
                        if self.peek() != Some(b'\\') || self.bytes.get(self.at + 1) != Some(&b'u') {
                            return Err(self.fail(ErrorKind::LoneLeadingSurrogate));
                        }
                        self.at += 2;
                        let second = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&second) {
                            return Err(self.fail(ErrorKind::LoneLeadingSurrogate));
                        }
                        0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                    }
                    other => other,
                };
                // A lone trailing surrogate (0xDC00..=0xDFFF) is not a scalar value.
                char::from_u32(code).ok_or_else(|| self.fail(ErrorKind::InvalidUnicodeCodePoint))?
            }
            _ => {
                // At the escape's letter, as serde_json reports it.
                self.at -= 1;
                return Err(self.fail(ErrorKind::InvalidEscape));
            }
        };
        out.push(decoded);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let mut code = 0;
        for _ in 0..4 {
            let digit = match self.peek() {
                None => return Err(self.fail(ErrorKind::EofWhileParsingString)),
                Some(byte) => char::from(byte).to_digit(16),
            };
            let Some(digit) = digit else { return Err(self.fail(ErrorKind::InvalidEscape)) };
            code = code * 16 + digit;
            self.at += 1;
        }
        Ok(code)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, kept as text.
    fn number(&mut self) -> Result<Value, Error> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            None => return Err(self.fail(ErrorKind::EofWhileParsingValue)),
            Some(_) => return Err(self.fail(ErrorKind::InvalidNumber)),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            integer = false;
            self.at += 1;
            self.required_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            integer = false;
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.required_digits()?;
        }
        let number = Number::from_checked_text(self.text(start));
        // Beyond i64/u64 an integer is a float, as in serde_json; beyond f64's range it is refused.
        if !(integer && (number.as_u64().is_some() || number.as_i64().is_some())) && number.overflows_f64() {
            return Err(self.fail(ErrorKind::NumberOutOfRange));
        }
        Ok(Value::Number(number))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), Error> {
        match self.peek() {
            Some(b'0'..=b'9') => {
                self.digits();
                Ok(())
            }
            None => Err(self.fail(ErrorKind::EofWhileParsingValue)),
            Some(_) => Err(self.fail(ErrorKind::InvalidNumber)),
        }
    }
}
