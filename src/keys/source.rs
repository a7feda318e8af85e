//! Where an issuer's keys come from: inline, or fetched from a JWKS URI or OIDC discovery.

use crate::keys::KeySet;

/// JWKS fetch timeout when `timeout` is not given (Istio's default).
pub const DEFAULT_FETCH_TIMEOUT_MS: u64 = 5_000;

/// How long fetched keys are used before a background refresh, when `cacheDuration` is not given.
pub const DEFAULT_CACHE_DURATION_MS: u64 = 5 * 60 * 1000;

/// How long keys outlive their refresh while the provider keeps failing, when `staleIfError` is not given.
pub const DEFAULT_STALE_IF_ERROR_MS: u64 = 60 * 60 * 1000;

/// Shortest time between two refetches for unknown `kid`s, when `unknownKidRefetchInterval` is not given.
pub const DEFAULT_UNKNOWN_KID_REFETCH_INTERVAL_MS: u64 = 30_000;

/// Where OIDC discovery documents live, below the issuer URL (OpenID Connect Discovery 1.0 §4).
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

#[derive(Debug)]
pub enum KeySource {
    /// Keys given in the configuration (`jwks`).
    Inline(KeySet),
    /// Keys fetched with a dispatched HTTP call.
    Remote(RemoteJwks),
}

/// Where and how to fetch a JWKS, and how long to keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// The JWKS URI (`jwksUri`), or the issuer's OIDC discovery document when `discovery` is set.
    pub uri: String,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    /// `uri` is `<issuer>/.well-known/openid-configuration`; its `jwks_uri` names the key set.
    pub discovery: bool,
    /// `jwksCluster` as given: also the cluster of a discovered `jwks_uri` when set.
    pub cluster_override: Option<String>,
    pub timeout_ms: u64,
    pub cache_duration_ms: u64,
    pub stale_if_error_ms: u64,
    pub unknown_kid_refetch_interval_ms: u64,
}

/// Where an HTTP request goes: the Envoy cluster and the request's `:authority` and `:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub host: String,
    pub port: u16,
    pub authority: String,
    pub path: String,
}

impl HttpTarget {
    /// Parses an absolute `http://` or `https://` URI; `None` when it is anything else.
    pub fn parse(uri: &str) -> Option<HttpTarget> {
        parse_http_uri(uri)
    }

    /// The cluster to send to: `jwksCluster` when given, else the Istio outbound cluster of the
    /// URI's host and port (a ServiceEntry for the identity provider's host creates it).
    pub fn cluster(&self, cluster_override: Option<&str>) -> String {
        match cluster_override {
            Some(name) => name.to_string(),
            None => format!("outbound|{}||{}", self.port, self.host),
        }
    }
}

fn parse_http_uri(uri: &str) -> Option<HttpTarget> {
    let (rest, default_port) = if let Some(rest) = uri.strip_prefix("https://") {
        (rest, 443)
    } else if let Some(rest) = uri.strip_prefix("http://") {
        (rest, 80)
    } else {
        return None;
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (rest.get(..slash)?, rest.get(slash..)?),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || path.contains('#') {
        return None;
    }
    let (host, port_text) = if let Some(bracketed) = authority.strip_prefix('[') {
        // IPv6 literal: `[::1]` or `[::1]:8080`; Istio keeps the brackets out of cluster names.
        let (host, after) = bracketed.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port_text {
        Some(text) => text.parse::<u16>().ok()?,
        None => default_port,
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    Some(HttpTarget { host: host.to_string(), port, authority: authority.to_string(), path: path.to_string() })
}
