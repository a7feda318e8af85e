//! The authenticated caller, and how rules and output headers read its claims.
//!
//! Authentication makes an `Identity`; authorization and the output headers only read it. It
//! lives below both so that neither imports the other.

use crate::json::{Map, Value};

/// The authenticated caller, as policies see it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub claims: Map,
}

impl Identity {
    /// Istio's request principal: `<iss>/<sub>`.
    pub fn principal(&self) -> String {
        format!("{}/{}", self.issuer, self.subject)
    }
}

/// The `aud` claim as a list: RFC 7519 allows a single string or an array of strings.
pub fn token_audiences(claims: &Map) -> impl Iterator<Item = &str> {
    let values: Box<dyn Iterator<Item = &Value>> = match claims.get("aud") {
        Some(Value::Array(list)) => Box::new(list.iter()),
        Some(single) => Box::new(std::iter::once(single)),
        None => Box::new(std::iter::empty()),
    };
    values.filter_map(Value::as_str)
}

/// A path into the claims: `[realm_access][roles]` is `["realm_access", "roles"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    pub segments: Vec<String>,
}

impl ClaimPath {
    /// Parses `[a][b][c]`.
    pub fn bracketed(text: &str) -> Option<ClaimPath> {
        let mut segments = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let inner = rest.strip_prefix('[')?;
            let (segment, after) = inner.split_once(']')?;
            if segment.is_empty() || segment.contains('[') {
                return None;
            }
            segments.push(segment.to_string());
            rest = after;
        }
        (!segments.is_empty()).then_some(ClaimPath { segments })
    }

    /// A claim name that may use dots for nesting (`realm_access.roles`).
    pub fn dotted(text: &str) -> ClaimPath {
        ClaimPath { segments: vec![text.to_string()] }
    }

    /// Finds the claim. A single segment with dots is first looked up as a literal claim name
    /// (claims such as `https://example.com/roles` exist), then as a dotted path into nested
    /// objects, which is how older Istio and Keycloak examples write `realm_access.roles`.
    pub fn lookup<'a>(&self, claims: &'a Map) -> Option<&'a Value> {
        let (first, rest) = self.segments.split_first()?;
        if let Some(value) = claims.get(first) {
            return rest.iter().try_fold(value, |v, segment| v.get(segment.as_str()));
        }
        if !rest.is_empty() || !first.contains('.') {
            return None;
        }
        let mut parts = first.split('.');
        let top = claims.get(parts.next()?)?;
        parts.try_fold(top, |v, segment| v.get(segment))
    }

    /// Name of the innermost claim, which decides whether it is space-delimited.
    pub(crate) fn leaf(&self) -> &str {
        let last = self.segments.last().map(String::as_str).unwrap_or_default();
        if self.segments.len() == 1 {
            last.rsplit('.').next().unwrap_or(last)
        } else {
            last
        }
    }
}

/// The strings a claim value offers for matching: a string (split on spaces for space-delimited
/// claims), each element of a list, and numbers and booleans by their JSON text.
pub fn claim_values(value: &Value, space_delimited: bool) -> Vec<String> {
    match value {
        Value::String(s) if space_delimited => s.split(' ').filter(|p| !p.is_empty()).map(str::to_string).collect(),
        Value::String(s) => vec![s.clone()],
        Value::Number(_) | Value::Bool(_) => vec![value.to_string()],
        Value::Array(items) => items
            .iter()
            .flat_map(|item| match item {
                Value::Array(_) | Value::Object(_) | Value::Null => Vec::new(),
                other => claim_values(other, false),
            })
            .collect(),
        Value::Object(_) | Value::Null => Vec::new(),
    }
}
