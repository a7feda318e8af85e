//! Istio's string, host, path and request-principal matchers.

use super::PathTemplate;
use crate::identity::Identity;
use serde_json::Value;

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (any non-empty value). Config refuses
/// any other use of `*`, so there is never a question which one is meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StringMatch {
    pub fn parse(value: &str) -> StringMatch {
        if value == "*" {
            StringMatch::Present
        } else if let Some(suffix) = value.strip_prefix('*') {
            StringMatch::Suffix(suffix.to_string())
        } else if let Some(prefix) = value.strip_suffix('*') {
            StringMatch::Prefix(prefix.to_string())
        } else {
            StringMatch::Exact(value.to_string())
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(exact) => value == exact,
            StringMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringMatch::Suffix(suffix) => value.ends_with(suffix.as_str()),
            StringMatch::Present => !value.is_empty(),
        }
    }
}

/// A `hosts` entry, compared case-insensitively (RFC 4343; CVE-2021-39155). An entry without a
/// port also matches the host with any port (`shop.example` matches `shop.example:8443`), the way
/// routing treats it: Istio compares the raw authority, so `hosts: [h]` there misses `h:port` and a
/// DENY on it can be sidestepped by adding a port. An entry with a port matches only that port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMatch(StringMatch);

impl HostMatch {
    pub fn parse(value: &str) -> HostMatch {
        HostMatch(StringMatch::parse(&value.to_ascii_lowercase()))
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
    pub(super) fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::String(string) => string.matches(path),
            PathMatch::Template(template) => template.matches(path),
        }
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
    pub fn parse(value: &str) -> PrincipalMatch {
        let split = value.rfind('/').and_then(|slash| Some((value.get(..slash)?, value.get(slash + 1..)?)));
        let (issuer, subject) = if value == "*" {
            (StringMatch::Present, StringMatch::Present)
        } else if let Some(suffix) = value.strip_prefix('*') {
            match split {
                Some(("*", subject)) => (StringMatch::Present, StringMatch::Exact(subject.to_string())),
                Some((issuer, subject)) => (
                    StringMatch::Suffix(issuer.trim_start_matches('*').to_string()),
                    StringMatch::Exact(subject.to_string()),
                ),
                None => (StringMatch::Present, StringMatch::Suffix(suffix.to_string())),
            }
        } else if let Some(prefix) = value.strip_suffix('*') {
            match split {
                Some((issuer, "*")) => (StringMatch::Exact(issuer.to_string()), StringMatch::Present),
                Some((issuer, subject)) => (
                    StringMatch::Exact(issuer.to_string()),
                    StringMatch::Prefix(subject.trim_end_matches('*').to_string()),
                ),
                None => (StringMatch::Prefix(prefix.to_string()), StringMatch::Present),
            }
        } else {
            match split {
                Some((issuer, subject)) => {
                    (StringMatch::Exact(issuer.to_string()), StringMatch::Exact(subject.to_string()))
                }
                None => (StringMatch::Exact(value.to_string()), StringMatch::Exact(String::new())),
            }
        };
        PrincipalMatch { issuer, subject }
    }

    /// A token without a string `sub` matches no principal, not even one with an empty subject.
    pub(super) fn matches(&self, identity: &Identity) -> bool {
        let subject = identity.claims.get("sub").and_then(Value::as_str);
        self.issuer.matches(&identity.issuer) && subject.is_some_and(|subject| self.subject.matches(subject))
    }
}
