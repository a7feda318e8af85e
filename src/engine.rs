//! The decision for one request: normalize, authenticate, authorize, and say what to do.
//!
//! This is the pure core's entry point: it reads a `Request` snapshot, the key cache and `now`,
//! and returns a `Decision` (or asks to wait for keys). The host layer performs what it says.

use crate::authn::{self, Authenticated, AuthnOutcome, KeyStore};
use crate::config::Config;
use crate::deny::Denial;
use crate::extract::{self, HeaderSource, TokenLocation};
use crate::path;
use crate::policy::{claim_values, MatchInput, PolicyDecision};

/// The request attributes the filter reads, captured once from the host.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The raw `:path`, query included.
    pub path: String,
    pub authority: String,
    pub scheme: String,
    /// Regular headers (no pseudo-headers), names lower-case.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// Builds a request from the host's header list, pseudo-headers included.
    pub fn from_header_pairs(pairs: Vec<(String, String)>) -> Request {
        let mut request = Request::default();
        for (name, value) in pairs {
            match name.as_str() {
                ":method" => request.method = value,
                ":path" => request.path = value,
                ":authority" => request.authority = value,
                ":scheme" => request.scheme = value,
                _ if name.starts_with(':') => {}
                _ => request.headers.push((name.to_ascii_lowercase(), value)),
            }
        }
        request
    }
}

impl HeaderSource for Request {
    fn header_values<'a>(&'a self, name: &'a str) -> Box<dyn Iterator<Item = &'a str> + 'a> {
        Box::new(self.headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str()))
    }

    fn raw_path(&self) -> &str {
        &self.path
    }
}

/// A change to the request before it goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderChange {
    Remove(String),
    Set(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow { changes: Vec<HeaderChange>, principal: Option<String> },
    Deny { denial: Denial, realm: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Decided(Decision),
    /// The named provider's keys are being fetched: park the request and evaluate it again.
    AwaitKeys(usize),
}

/// Decides what happens to `request`, with the keys in `keys`, at `now_seconds` (Unix time).
pub fn evaluate(config: &Config, request: &Request, keys: &dyn KeyStore, now_seconds: u64) -> Outcome {
    let normalized = match path::normalize(&request.path) {
        Ok(normalized) => normalized,
        Err(err) => return deny(request, "", Denial::BadPath(err)),
    };
    let found = extract::find_tokens(&config.token_locations, request);
    let authenticated = match authn::authenticate(config, &found, keys, now_seconds) {
        AuthnOutcome::Anonymous => None,
        AuthnOutcome::Authenticated(authenticated) => Some(authenticated),
        AuthnOutcome::Rejected(err) => return deny(request, &normalized, Denial::InvalidToken(err)),
        AuthnOutcome::AwaitKeys(provider) => return Outcome::AwaitKeys(provider),
    };
    let input = MatchInput {
        path: &normalized,
        method: &request.method,
        headers: &request.headers,
        identity: authenticated.as_ref().map(|a| &a.identity),
    };
    match (config.policies.evaluate(&input), authenticated) {
        (PolicyDecision::Allow, authenticated) => Outcome::Decided(Decision::Allow {
            principal: authenticated.as_ref().map(|a| a.identity.principal()),
            changes: upstream_changes(config, authenticated.as_ref()),
        }),
        (PolicyDecision::Deny { policy }, None) => deny(request, &normalized, Denial::MissingToken { policy }),
        (PolicyDecision::Deny { policy }, Some(_)) => deny(request, &normalized, Denial::Forbidden { policy }),
    }
}

fn deny(request: &Request, normalized_path: &str, denial: Denial) -> Outcome {
    let scheme = if request.scheme.is_empty() { "http" } else { &request.scheme };
    let realm = format!("{scheme}://{}{normalized_path}", request.authority);
    Outcome::Decided(Decision::Deny { denial, realm })
}

/// Header changes for an allowed request: output headers are always cleared first (a client must
/// not be able to send its own `x-user`: Envoy's jwt_authn leaves them in place when no token is
/// present), token headers are removed unless forwarded, then claim outputs are written.
fn upstream_changes(config: &Config, authenticated: Option<&Authenticated>) -> Vec<HeaderChange> {
    let mut changes: Vec<HeaderChange> = config.output_headers.iter().cloned().map(HeaderChange::Remove).collect();
    let Some(authenticated) = authenticated else {
        return changes;
    };
    for &(location, provider) in &authenticated.tokens {
        let forward = config.providers.get(provider).is_some_and(|p| p.forward_original_token);
        if let (false, Some(TokenLocation::Header { name, .. })) = (forward, config.token_locations.get(location)) {
            let change = HeaderChange::Remove(name.clone());
            if !changes.contains(&change) {
                changes.push(change);
            }
        }
    }
    let Some(provider) = config.providers.get(authenticated.provider) else {
        return changes;
    };
    if let Some(header) = &provider.output_payload_to_header {
        changes.push(HeaderChange::Set(header.clone(), authenticated.payload_segment.clone()));
    }
    for output in &provider.output_claim_to_headers {
        let Some(value) = output.claim.lookup(&authenticated.identity.claims) else { continue };
        let value = claim_values(value, false).join(",");
        // Claims are signed, but still text from outside: never write a control character.
        if !value.is_empty() && !value.chars().any(char::is_control) {
            changes.push(HeaderChange::Set(output.header.clone(), value));
        }
    }
    changes
}
