//! Path normalization: turns a raw `:path` into the canonical form that policies match against.
//!
//! Envoy's own normalization can be off (it is off by default outside Istio), and every known
//! AuthorizationPolicy bypass (CVE-2019-9901, CVE-2020-8595, CVE-2021-31920, CVE-2021-39156) came
//! from the matcher and the upstream seeing different paths. So the filter normalizes on its own and
//! refuses what it cannot make unambiguous, instead of guessing.

use std::fmt::{self, Write as _};

/// Why a path was refused. Each is answered with 400 before any policy is consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/` (or is empty).
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    InvalidPercentEncoding,
    /// `%2F` or `%5C`: an upstream may or may not decode it into a separator.
    EncodedSlash,
    /// A literal backslash: some upstreams treat it as a separator.
    Backslash,
    /// NUL or another control character, raw or percent-encoded.
    ControlCharacter,
}

impl PathError {
    /// Stable code for logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "path_not_absolute",
            PathError::InvalidPercentEncoding => "path_invalid_percent_encoding",
            PathError::EncodedSlash => "path_encoded_slash",
            PathError::Backslash => "path_backslash",
            PathError::ControlCharacter => "path_control_character",
        }
    }

    /// Human-readable reason, safe to send to the client.
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "Path must start with /",
            PathError::InvalidPercentEncoding => "Path has invalid percent-encoding",
            PathError::EncodedSlash => "Path has an encoded slash or backslash",
            PathError::Backslash => "Path has a backslash",
            PathError::ControlCharacter => "Path has a control character",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// Returns the path without query and fragment, with percent-encoded unreserved characters
/// decoded (other escapes kept, upper-cased), repeated slashes merged and `.`/`..` resolved.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    let without_query = raw.split(['?', '#']).next().unwrap_or_default();
    if !without_query.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(without_query)?;
    let mut segments: Vec<&str> = Vec::new();
    // Splitting on '/' and dropping empty segments merges repeated slashes.
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    // A trailing slash (or a trailing dot segment, which names a directory) is kept: `/a/` and `/a`
    // are different resources to most upstreams.
    let ends_as_directory = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    if out.is_empty() || (ends_as_directory && !out.ends_with('/')) {
        out.push('/');
    }
    Ok(out)
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::InvalidPercentEncoding);
                };
                let decoded = hi * 16 + lo;
                match decoded {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    _ if decoded.is_ascii_control() => return Err(PathError::ControlCharacter),
                    _ if is_unreserved(decoded) => out.push(char::from(decoded)),
                    _ => {
                        // Writing to a String cannot fail.
                        let _ = write!(out, "%{decoded:02X}");
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            _ if byte.is_ascii_control() => return Err(PathError::ControlCharacter),
            _ => {
                // Non-ASCII bytes arrive as part of valid UTF-8 (`path` is a &str); copy the whole
                // character.
                let rest = path.get(i..).unwrap_or_default();
                let ch = rest.chars().next().unwrap_or_default();
                out.push(ch);
                i += ch.len_utf8().max(1);
            }
        }
    }
    Ok(out)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_rfc3986_with_slash_merging() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/a?x=1", "/a"),
            ("/a#frag", "/a"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../etc", "/etc"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("//a///b", "/a/b"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/api/%2E%2E/admin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%7e", "/a~"),
            ("/caf\u{e9}", "/caf\u{e9}"),
            ("/a%3fb", "/a%3Fb"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "normalizing {raw:?}");
        }
    }

    #[test]
    fn refuses_ambiguous_paths() {
        let cases = [
            ("", PathError::NotAbsolute),
            ("a/b", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%5cb", PathError::EncodedSlash),
            ("/a\\b", PathError::Backslash),
            ("/a%00", PathError::ControlCharacter),
            ("/a\u{0}", PathError::ControlCharacter),
            ("/a%0d%0a", PathError::ControlCharacter),
            ("/a%", PathError::InvalidPercentEncoding),
            ("/a%2", PathError::InvalidPercentEncoding),
            ("/a%zz", PathError::InvalidPercentEncoding),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw), Err(want), "normalizing {raw:?}");
        }
    }
}
