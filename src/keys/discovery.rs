//! OIDC discovery: reads an issuer's `/.well-known/openid-configuration` for its `jwks_uri`.
//!
//! The document comes from the network, so it is judged like a JWKS: size-capped, and refused with
//! a reason for the log when it is not what OpenID Connect Discovery 1.0 says it must be.

use crate::json::{self, Value};
use crate::keys::jwks::MAX_JWKS_BYTES;
use crate::keys::HttpTarget;
use std::fmt;

/// Larger discovery documents are refused before parsing (real ones are a few KB).
const MAX_DISCOVERY_BYTES: usize = MAX_JWKS_BYTES;

/// Why a discovery document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryError {
    /// The document is larger than the JWKS size limit (bytes).
    TooLarge(usize),
    /// The body is not a JSON object (the parser's message).
    NotJson(String),
    /// The document's `issuer` is not the configured issuer (Discovery 1.0 §4.3 requires them to be
    /// identical: anything else could be a document for another tenant or an impostor).
    IssuerMismatch { expected: String, found: Option<String> },
    /// No string `jwks_uri` in the document.
    NoJwksUri,
    /// `jwks_uri` is not an absolute http(s) URI we can fetch.
    BadJwksUri(String),
}

impl DiscoveryError {
    /// Stable reason code, for the fetch-failure log line.
    pub fn code(&self) -> &'static str {
        match self {
            DiscoveryError::TooLarge(_) => "discovery_too_large",
            DiscoveryError::NotJson(_) => "discovery_not_json",
            DiscoveryError::IssuerMismatch { .. } => "discovery_issuer_mismatch",
            DiscoveryError::NoJwksUri => "discovery_no_jwks_uri",
            DiscoveryError::BadJwksUri(_) => "discovery_bad_jwks_uri",
        }
    }
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoveryError::TooLarge(size) => {
                write!(f, "discovery document of {size} bytes exceeds the {MAX_DISCOVERY_BYTES}-byte limit")
            }
            DiscoveryError::NotJson(err) => write!(f, "discovery document is not a JSON object: {err}"),
            DiscoveryError::IssuerMismatch { expected, found: Some(found) } => {
                write!(
                    f,
                    "discovery document names issuer {found_q}, not {expected_q}",
                    found_q = crate::json::Quoted(found),
                    expected_q = crate::json::Quoted(expected)
                )
            }
            DiscoveryError::IssuerMismatch { expected, found: None } => {
                write!(
                    f,
                    "discovery document has no issuer (expected {expected_q})",
                    expected_q = crate::json::Quoted(expected)
                )
            }
            DiscoveryError::NoJwksUri => f.write_str("discovery document has no jwks_uri string"),
            DiscoveryError::BadJwksUri(uri) => {
                write!(
                    f,
                    "discovery document's jwks_uri {uri_q} is not an absolute http:// or https:// URI",
                    uri_q = crate::json::Quoted(uri)
                )
            }
        }
    }
}

/// The `jwks_uri` of `issuer`'s discovery document.
pub fn jwks_uri(body: &[u8], issuer: &str) -> Result<String, DiscoveryError> {
    if body.len() > MAX_DISCOVERY_BYTES {
        return Err(DiscoveryError::TooLarge(body.len()));
    }
    let document = json::parse(body, json::Limits::DOCUMENT).map_err(|e| DiscoveryError::NotJson(e.to_string()))?;
    if !document.is_object() {
        return Err(DiscoveryError::NotJson("not an object".into()));
    }
    let found = document.get("issuer").and_then(Value::as_str);
    if found != Some(issuer) {
        return Err(DiscoveryError::IssuerMismatch { expected: issuer.to_string(), found: found.map(str::to_string) });
    }
    let uri = document.get("jwks_uri").and_then(Value::as_str).ok_or(DiscoveryError::NoJwksUri)?;
    if HttpTarget::parse(uri).is_none() {
        return Err(DiscoveryError::BadJwksUri(uri.to_string()));
    }
    Ok(uri.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const ISSUER: &str = "https://idp.example/realms/shop";

    fn doc(value: Value) -> Vec<u8> {
        value.to_string().into_bytes()
    }

    #[test]
    fn reads_the_jwks_uri_of_the_configured_issuer() {
        let body = doc(json!({"issuer": ISSUER, "jwks_uri": "https://keys.example/certs", "token_endpoint": "x"}));
        assert_eq!(jwks_uri(&body, ISSUER), Ok("https://keys.example/certs".to_string()));
    }

    #[test]
    fn refuses_what_discovery_forbids() {
        let cases = [
            (b"<html>".to_vec(), "discovery_not_json"),
            (doc(json!(["not", "an", "object"])), "discovery_not_json"),
            (
                doc(json!({"issuer": "https://evil.example", "jwks_uri": "https://evil.example/certs"})),
                "discovery_issuer_mismatch",
            ),
            (doc(json!({"jwks_uri": "https://keys.example/certs"})), "discovery_issuer_mismatch"),
            (doc(json!({"issuer": ISSUER})), "discovery_no_jwks_uri"),
            (doc(json!({"issuer": ISSUER, "jwks_uri": 7})), "discovery_no_jwks_uri"),
            (doc(json!({"issuer": ISSUER, "jwks_uri": "file:///etc/passwd"})), "discovery_bad_jwks_uri"),
            (vec![b' '; MAX_DISCOVERY_BYTES + 1], "discovery_too_large"),
        ];
        for (body, code) in cases {
            let err = jwks_uri(&body, ISSUER).expect_err(code);
            assert_eq!(err.code(), code, "{err}");
            assert!(!err.to_string().is_empty());
        }
        let mismatch = jwks_uri(&doc(json!({"issuer": "https://evil.example"})), ISSUER).unwrap_err();
        assert_eq!(
            mismatch.to_string(),
            "discovery document names issuer \"https://evil.example\", not \"https://idp.example/realms/shop\""
        );
    }
}
