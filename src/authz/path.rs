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

/// What to do with a path that cannot be made unambiguous (`unsafePaths`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnsafePathAction {
    /// 400 Bad Request: the request is malformed (default).
    #[default]
    Reject,
    /// 403 Forbidden, as a DENY policy would answer: for clients that must not learn the reason.
    Deny,
}

/// Returns the path without query and fragment, with percent-encoded unreserved characters
/// decoded (other escapes kept, upper-cased), repeated slashes merged and `.`/`..` resolved.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
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

/// An Istio path template: `/api/{*}/orders` or `/files/{**}`, compiled as Envoy's
/// `uri_template` matcher compiles `/api/*/orders` (Istio translates `{*}` to `*` and `{**}` to `**`).
///
/// `{*}` matches one non-empty path segment; `{**}` matches zero or more characters including
/// `/` (so `/files/{**}` matches `/files/` and `/files/a/b`, not `/files`), and must be the last
/// operator. After the last operator a suffix may follow in the same segment (`/{**}.css`).
/// Operators match what Envoy 1.40's `uri_template` matcher matches behind Istio's path
/// normalization (measured side by side in tests/envoy/test_differential.py): every character RFC
/// 3986 allows in a segment, `=` and `*` included, and the characters Envoy's normalization
/// percent-encodes before matching (`"` `<` `>` `` ` `` `{` `}` `|` `^`), which reach its matcher as
/// `%XX`. A narrower class would let `/admin/a=b` past a DENY on `/admin/{*}`. `[` and `]` match in
/// neither. Matching is against the normalized path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePart {
    Literal(String),
    /// `{*}`: one or more segment characters.
    Segment,
    /// `{**}`: zero or more segment characters or `/`.
    Segments,
}

impl PathTemplate {
    /// True when `value` is meant as a template (it has a `{` or `}`), as Istio decides it.
    pub fn is_template(value: &str) -> bool {
        value.contains(['{', '}'])
    }

    pub fn parse(template: &str) -> Result<PathTemplate, String> {
        let Some(rest) = template.strip_prefix('/') else {
            return Err("a path template must start with /".to_string());
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let mut parts = vec![TemplatePart::Literal("/".to_string())];
        let mut seen_any = false;
        let mut operators = 0;
        for (index, segment) in segments.iter().enumerate() {
            let last = index + 1 == segments.len();
            if index > 0 {
                push_literal(&mut parts, "/");
            }
            let (operator, suffix) = if let Some(suffix) = segment.strip_prefix("{**}") {
                (Some(TemplatePart::Segments), suffix)
            } else if let Some(suffix) = segment.strip_prefix("{*}") {
                (Some(TemplatePart::Segment), suffix)
            } else {
                (None, *segment)
            };
            if let Some(operator) = operator {
                if seen_any {
                    return Err("{**} must be the last operator in a path template".to_string());
                }
                seen_any = operator == TemplatePart::Segments;
                operators += 1;
                parts.push(operator);
                if !suffix.is_empty() && !last {
                    return Err(format!(
                        "{segment_q}: text after an operator is only allowed in the last segment (as in /{{**}}.css)",
                        segment_q = crate::json::Quoted(segment)
                    ));
                }
            } else if suffix.is_empty() && !last {
                return Err("a path template must not contain an empty segment (//)".to_string());
            }
            if let Some(bad) = suffix.chars().find(|c| !c.is_ascii() || !is_template_literal(*c as u8)) {
                let hint = match bad {
                    '*' => ": write {*} for one segment or {**} for any number of segments",
                    '{' | '}' => ": only {*} and {**} are supported",
                    _ => "",
                };
                return Err(format!(
                    "{segment_q}: '{}' is not allowed in a path template{hint}",
                    bad.escape_default(),
                    segment_q = crate::json::Quoted(segment)
                ));
            }
            push_literal(&mut parts, suffix);
        }
        if operators == 0 {
            return Err("a path template needs {*} or {**}".to_string());
        }
        if let Some(TemplatePart::Literal(text)) = parts.last() {
            if text.is_empty() {
                parts.pop();
            }
        }
        Ok(PathTemplate { parts })
    }

    /// Whether the normalized path (no query) matches. Runs in O(parts × path length): the set of
    /// positions reachable after each part is carried forward, so no input can make it backtrack.
    pub fn matches(&self, path: &str) -> bool {
        let bytes = path.as_bytes();
        let mut reachable = vec![false; bytes.len() + 1];
        if let Some(start) = reachable.first_mut() {
            *start = true;
        }
        for part in &self.parts {
            let mut next = vec![false; bytes.len() + 1];
            match part {
                TemplatePart::Literal(text) => {
                    for (position, _) in reachable.iter().enumerate().filter(|(_, r)| **r) {
                        let end = position + text.len();
                        if bytes.get(position..end) == Some(text.as_bytes()) {
                            if let Some(slot) = next.get_mut(end) {
                                *slot = true;
                            }
                        }
                    }
                }
                TemplatePart::Segment | TemplatePart::Segments => {
                    let crosses_slashes = *part == TemplatePart::Segments;
                    // `run`: some reachable start lies at or before position-1 and every byte since
                    // it belongs to the operator's character class.
                    let mut run = false;
                    for position in 0..next.len() {
                        if position > 0 {
                            let byte = bytes.get(position - 1).copied().unwrap_or_default();
                            let in_class = is_operator_char(byte) || (crosses_slashes && byte == b'/');
                            run = in_class && (run || reachable.get(position - 1).copied().unwrap_or(false));
                        }
                        let empty_match = crosses_slashes && reachable.get(position).copied().unwrap_or(false);
                        if let Some(slot) = next.get_mut(position) {
                            *slot = run || empty_match;
                        }
                    }
                }
            }
            reachable = next;
            if !reachable.contains(&true) {
                return false;
            }
        }
        reachable.last().copied().unwrap_or(false)
    }
}

fn push_literal(parts: &mut Vec<TemplatePart>, text: &str) {
    if let Some(TemplatePart::Literal(previous)) = parts.last_mut() {
        previous.push_str(text);
    } else {
        parts.push(TemplatePart::Literal(text.to_string()));
    }
}

/// Envoy's `uri_template` literal characters: unreserved, `%`, sub-delims except `*`, `:`, `@`.
fn is_template_literal(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&byte)
}

/// What `{*}` matches in one segment (and `{**}` besides `/`): see `PathTemplate`.
fn is_operator_char(byte: u8) -> bool {
    is_template_literal(byte) || b"*\"<>`{}|^".contains(&byte)
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

    /// The path tricks of the known AuthorizationPolicy bypasses, each reduced to the path the
    /// matcher must see (or refused).
    #[test]
    fn known_bypass_tricks_normalize_or_are_refused() {
        let normalized = [
            // CVE-2019-9901: relative segments.
            ("/info/../private", "/private"),
            ("/something/../admin", "/admin"),
            ("/info/%2e%2e/private", "/private"),
            ("/info/.%2E/private", "/private"),
            ("/./admin", "/admin"),
            // CVE-2020-8595: query or fragment after an exact path.
            ("/admin?", "/admin"),
            ("/admin#", "/admin"),
            ("/admin?x=1#y", "/admin"),
            // CVE-2021-39156: fragment.
            ("/user/profile#section1", "/user/profile"),
            // CVE-2021-31920: repeated slashes.
            ("//admin", "/admin"),
            ("/api//admin///x", "/api/admin/x"),
        ];
        for (raw, want) in normalized {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "normalizing {raw:?}");
        }
        // CVE-2021-31920: escaped slashes and backslashes are ambiguous, so refused.
        for raw in ["/%2Fadmin", "/admin%2f", "/api%2Fadmin", "/%5Cadmin", "/%5cadmin", "/\\admin", "/a%2F..%2Fadmin"] {
            assert!(normalize(raw).is_err(), "{raw:?} must be refused");
        }
    }

    #[test]
    fn templates_match_like_envoys_uri_template() {
        let cases = [
            ("/api/{*}/orders", "/api/42/orders", true),
            ("/api/{*}/orders", "/api/a/b/orders", false),
            ("/api/{*}/orders", "/api//orders", false),
            ("/api/{*}/orders", "/api/42/orders/", false),
            ("/api/{*}", "/api/x", true),
            ("/api/{*}", "/api/", false),
            ("/api/{*}", "/api", false),
            ("/api/{*}/", "/api/x/", true),
            ("/files/{**}", "/files/", true),
            ("/files/{**}", "/files/a/b/c", true),
            ("/files/{**}", "/files", false),
            ("/{**}", "/", true),
            ("/{**}", "/anything/at/all", true),
            ("/{**}/path/template", "/a/b/path/template", true),
            ("/{**}/path/template", "/path/template", false),
            ("/{**}.css", "/a/b/site.css", true),
            ("/{**}.css", "/a/b/site.css.map", false),
            ("/img/{*}.png", "/img/logo.png", true),
            ("/img/{*}.png", "/img/a/logo.png", false),
            ("/a/{*}/b/{*}", "/a/1/b/2", true),
            ("/a/{*}/b/{**}", "/a/1/b/2/3", true),
            // Operators match what Envoy's matcher matches behind its normalization: RFC 3986
            // segment characters with `=` and `*`, and what the normalization percent-encodes.
            ("/api/{*}", "/api/x=1", true),
            ("/api/{*}", "/api/a*b", true),
            ("/api/{*}", "/api/a:b@c!d$e&f'g(h)i+j,k;l~m", true),
            ("/api/{*}", "/api/a\"b<c>d`e{f}g|h^i", true),
            ("/files/{**}/x", "/files/a*/b=/x", true),
            ("/api/{*}", "/api/a[b]", false),
            ("/api/{*}", "/api/caf\u{e9}", false),
            ("/api/{*}", "/api/a%20b", true),
        ];
        for (template, path, want) in cases {
            let parsed = PathTemplate::parse(template).expect(template);
            assert_eq!(parsed.matches(path), want, "{template} against {path}");
        }
    }

    #[test]
    fn malformed_templates_say_why() {
        let cases = [
            ("api/{*}", "must start with /"),
            ("/a/{**}/{*}", "{**} must be the last operator"),
            ("/a/{**}/b/{**}", "{**} must be the last operator"),
            ("/a/{*}x/b", "only allowed in the last segment"),
            ("/a/x{*}", "'{' is not allowed"),
            ("/a/{id}", "only {*} and {**} are supported"),
            ("/a/*/{*}", "write {*} for one segment"),
            ("/a//{*}", "empty segment"),
            ("/a/{*}/b[c", "'[' is not allowed"),
            ("/a/}", "only {*} and {**}"),
            ("/a/{*}{*}", "'{' is not allowed"),
        ];
        for (template, reason) in cases {
            let err = PathTemplate::parse(template).expect_err(template);
            assert!(err.contains(reason), "{template}: {err}");
        }
    }

    #[test]
    fn template_matching_is_linear_on_hostile_paths() {
        let template = PathTemplate::parse("/{*}/{*}/{*}/{*}/{*}/{*}/{*}/{*}/{**}x").expect("template");
        let path = format!("/{}", "a/".repeat(20_000));
        assert!(!template.matches(&path));
    }
}
