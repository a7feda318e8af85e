//! Istio's string, host, path and request-principal matchers.

use super::PathTemplate;
use crate::identity::Identity;
use crate::json::Value;

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (any non-empty value). Only `parse`
/// makes one, and it refuses every other use of `*` and the empty string, so a matcher whose
/// meaning is in doubt cannot exist (Istio would read `*a*` as a suffix `a*` with a literal star,
/// which nobody means).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringMatch(Pattern);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StringMatch {
    /// The matcher a configured value means; `Err` says why the value means none.
    pub fn parse(value: &str) -> Result<StringMatch, String> {
        check_pattern(value)?;
        Ok(StringMatch(if value == "*" {
            Pattern::Present
        } else if let Some(suffix) = value.strip_prefix('*') {
            Pattern::Suffix(suffix.to_string())
        } else if let Some(prefix) = value.strip_suffix('*') {
            Pattern::Prefix(prefix.to_string())
        } else {
            Pattern::Exact(value.to_string())
        }))
    }

    /// `*`: any value at all. Whether that includes the empty string depends on the attribute.
    pub fn is_presence(&self) -> bool {
        self.0 == Pattern::Present
    }

    pub fn matches(&self, value: &str) -> bool {
        match &self.0 {
            Pattern::Exact(exact) => value == exact,
            Pattern::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Pattern::Suffix(suffix) => value.ends_with(suffix.as_str()),
            Pattern::Present => !value.is_empty(),
        }
    }
}

/// Non-empty, and `*` is the whole value, or only at the start or only at the end.
fn check_pattern(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    if value == "*" {
        return Ok(());
    }
    // By characters, not byte offsets: a multi-byte first or last character must not hide a `*`.
    let both_ends = value.len() > 1 && value.starts_with('*') && value.ends_with('*');
    let core = value.strip_prefix('*').unwrap_or(value);
    let core = core.strip_suffix('*').unwrap_or(core);
    if both_ends || core.contains('*') {
        return Err(format!(
            "{value_q}: `*` is only allowed as a whole value, a prefix (`*.html`) or a suffix (`/api/*`)",
            value_q = crate::json::Quoted(value)
        ));
    }
    Ok(())
}

/// A `hosts` entry, compared case-insensitively (RFC 4343; CVE-2021-39155). An entry without a
/// port also matches the host with any port (`shop.example` matches `shop.example:8443`), the way
/// routing treats it: Istio compares the raw authority, so `hosts: [h]` there misses `h:port` and a
/// DENY on it can be sidestepped by adding a port. An entry with a port matches only that port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMatch(StringMatch);

impl HostMatch {
    pub fn parse(value: &str) -> Result<HostMatch, String> {
        // Checked as written, so that an error quotes the value the user wrote.
        check_pattern(value)?;
        StringMatch::parse(&value.to_ascii_lowercase()).map(HostMatch)
    }

    /// `authority` is lower-case already.
    pub(super) fn matches(&self, authority: &str) -> bool {
        self.0.matches(authority) || host_without_port(authority).is_some_and(|host| self.0.matches(host))
    }
}

/// `shop.example:8443` → `shop.example`, `[::1]:80` → `[::1]`; `None` when there is no port.
fn host_without_port(authority: &str) -> Option<&str> {
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find("]:")?;
        (authority.get(..=close)?, authority.get(close + 2..)?)
    } else {
        authority.rsplit_once(':')?
    };
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then_some(host)
}

/// A `paths` entry: Istio's string match, or a template with `{*}` / `{**}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    String(StringMatch),
    Template(PathTemplate),
}

impl PathMatch {
    /// A template when the value has `{*}` or `{**}`, else a string match.
    pub fn parse(value: &str) -> Result<PathMatch, String> {
        if PathTemplate::is_template(value) {
            PathTemplate::parse(value)
                .map(PathMatch::Template)
                .map_err(|reason| format!("{value_q}: {reason}", value_q = crate::json::Quoted(value)))
        } else {
            StringMatch::parse(value).map(PathMatch::String)
        }
    }

    pub(super) fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::String(string) => string.matches(path),
            PathMatch::Template(template) => template.matches(path),
        }
    }
}

// The parts of a principal pattern, which `PrincipalMatch::parse` has checked as a whole.
impl StringMatch {
    const PRESENT: StringMatch = StringMatch(Pattern::Present);

    fn exact(text: String) -> StringMatch {
        StringMatch(Pattern::Exact(text))
    }

    fn prefix(text: String) -> StringMatch {
        StringMatch(Pattern::Prefix(text))
    }

    fn suffix(text: String) -> StringMatch {
        StringMatch(Pattern::Suffix(text))
    }
}

/// A request principal pattern, split at its last `/` into issuer and subject as Istio does since
/// it matches them as two JWT claims: `https://idp/realms/shop/*` is issuer exactly
/// `https://idp/realms/shop` with any subject, not every issuer that starts with that text.
/// `*` alone is any issuer and subject; without a `/`, a `prefix*` is on the issuer and a
/// `*suffix` on the subject; a value without `*` or `/` is an issuer with an empty subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalMatch {
    issuer: StringMatch,
    subject: StringMatch,
}

impl PrincipalMatch {
    pub fn parse(value: &str) -> Result<PrincipalMatch, String> {
        check_pattern(value)?;
        if value.starts_with('/') {
            return Err(format!(
                "{value_q}: the issuer (before the last /) is empty; write <iss>/<sub>, <iss>/* or */<sub>",
                value_q = crate::json::Quoted(value)
            ));
        }
        let split = value.rfind('/').and_then(|slash| Some((value.get(..slash)?, value.get(slash + 1..)?)));
        let (issuer, subject) = if value == "*" {
            (StringMatch::PRESENT, StringMatch::PRESENT)
        } else if let Some(suffix) = value.strip_prefix('*') {
            match split {
                Some(("*", subject)) => (StringMatch::PRESENT, StringMatch::exact(subject.to_string())),
                Some((issuer, subject)) => (
                    StringMatch::suffix(issuer.trim_start_matches('*').to_string()),
                    StringMatch::exact(subject.to_string()),
                ),
                None => (StringMatch::PRESENT, StringMatch::suffix(suffix.to_string())),
            }
        } else if let Some(prefix) = value.strip_suffix('*') {
            match split {
                Some((issuer, "*")) => (StringMatch::exact(issuer.to_string()), StringMatch::PRESENT),
                Some((issuer, subject)) => (
                    StringMatch::exact(issuer.to_string()),
                    StringMatch::prefix(subject.trim_end_matches('*').to_string()),
                ),
                None => (StringMatch::prefix(prefix.to_string()), StringMatch::PRESENT),
            }
        } else {
            match split {
                Some((issuer, subject)) => {
                    (StringMatch::exact(issuer.to_string()), StringMatch::exact(subject.to_string()))
                }
                None => (StringMatch::exact(value.to_string()), StringMatch::exact(String::new())),
            }
        };
        Ok(PrincipalMatch { issuer, subject })
    }

    /// A token without a string `sub` matches no principal, not even one with an empty subject.
    pub(super) fn matches(&self, identity: &Identity) -> bool {
        let subject = identity.claims.get("sub").and_then(Value::as_str);
        self.issuer.matches(&identity.issuer) && subject.is_some_and(|subject| self.subject.matches(subject))
    }
}
