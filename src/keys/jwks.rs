//! JWKS parsing: turns a JSON Web Key Set into the RSA verification keys it may use.
//!
//! A key set is attacker-reachable input (a compromised or misconfigured endpoint), so every key is
//! judged on its own: a bad key is skipped with a reason for the log, never fatal for its siblings.

use crate::keys::rsa::RsaVerifyKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use std::fmt;

/// Larger key sets are refused before parsing: real ones are a few KB.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// One RS256 verification key, prepared for verification once, when the key set is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationKey {
    pub kid: Option<String>,
    pub key: RsaVerifyKey,
}

/// The usable keys of one JWKS document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    pub keys: Vec<VerificationKey>,
}

impl KeySet {
    /// Keys a token with this `kid` may be verified with: the key with that kid, or every key when
    /// the token names none (RFC 7515 makes `kid` optional; Envoy tries every key likewise).
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>) -> impl Iterator<Item = &'a VerificationKey> + 'a {
        self.keys.iter().filter(move |k| kid.is_none() || k.kid.as_deref() == kid)
    }

    /// Whether some key carries this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys as a minimal JWKS document (`kty`, `kid`, `n`, `e`) that `parse` reads back to the
    /// same keys: how one worker hands the keys it fetched to the others.
    pub fn to_jwks_json(&self) -> String {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|k| {
                let mut jwk = serde_json::Map::new();
                jwk.insert("kty".into(), Value::from("RSA"));
                if let Some(kid) = &k.kid {
                    jwk.insert("kid".into(), Value::from(kid.as_str()));
                }
                jwk.insert("n".into(), Value::from(URL_SAFE_NO_PAD.encode(k.key.modulus_be_bytes())));
                jwk.insert("e".into(), Value::from(URL_SAFE_NO_PAD.encode(k.key.exponent_be_bytes())));
                Value::Object(jwk)
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }
}

/// A parsed key set and what was left out of it, for the log.
#[derive(Debug, Clone)]
pub struct ParsedJwks {
    pub key_set: KeySet,
    pub skipped: Vec<String>,
}

/// Why a whole JWKS document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// `(size, limit)` in bytes.
    TooLarge(usize, usize),
    /// The body is not JSON (the parser's message).
    NotJson(String),
    /// The document has no `keys` array.
    NoKeysArray,
    /// No key is an RS256 verification key we accept; why each was skipped.
    NoUsableKey(Vec<String>),
}

impl JwksError {
    /// Stable reason code, for the fetch-failure log line.
    pub fn code(&self) -> &'static str {
        match self {
            JwksError::TooLarge(..) => "jwks_too_large",
            JwksError::NotJson(_) => "jwks_not_json",
            JwksError::NoKeysArray => "jwks_no_keys_array",
            JwksError::NoUsableKey(_) => "jwks_no_usable_key",
        }
    }
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::TooLarge(size, limit) => write!(f, "JWKS of {size} bytes exceeds the {limit}-byte limit"),
            JwksError::NotJson(err) => write!(f, "JWKS is not valid JSON: {err}"),
            JwksError::NoKeysArray => f.write_str("JWKS has no \"keys\" array"),
            JwksError::NoUsableKey(skipped) if skipped.is_empty() => f.write_str("JWKS has no keys"),
            JwksError::NoUsableKey(skipped) => {
                write!(f, "JWKS has no usable RS256 signing key ({})", skipped.join("; "))
            }
        }
    }
}

/// Parses a JWKS document of at most `MAX_JWKS_BYTES`.
pub fn parse(body: &[u8]) -> Result<ParsedJwks, JwksError> {
    parse_with_limit(body, MAX_JWKS_BYTES)
}

/// Parses a JWKS document, keeping the RSA keys usable for RS256 signatures. Documents over
/// `max_bytes` are refused before any parsing.
pub fn parse_with_limit(body: &[u8], max_bytes: usize) -> Result<ParsedJwks, JwksError> {
    if body.len() > max_bytes {
        return Err(JwksError::TooLarge(body.len(), max_bytes));
    }
    let document: Value = serde_json::from_slice(body).map_err(|e| JwksError::NotJson(e.to_string()))?;
    let Some(entries) = document.get("keys").and_then(Value::as_array) else {
        return Err(JwksError::NoKeysArray);
    };
    let mut keys: Vec<VerificationKey> = Vec::new();
    let mut skipped = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let kid = entry.get("kid").and_then(Value::as_str).map(str::to_string);
        let label = match &kid {
            Some(kid) => format!("key {index} (kid {kid:?})"),
            None => format!("key {index}"),
        };
        match parse_key(entry) {
            Ok(key) => {
                if kid.is_some() && keys.iter().any(|k| k.kid == kid) {
                    skipped.push(format!("{label}: duplicate kid, the first key with it is used"));
                } else {
                    keys.push(VerificationKey { kid, key });
                }
            }
            Err(reason) => skipped.push(format!("{label}: {reason}")),
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey(skipped));
    }
    Ok(ParsedJwks { key_set: KeySet { keys }, skipped })
}

fn parse_key(entry: &Value) -> Result<RsaVerifyKey, String> {
    if !entry.is_object() {
        return Err("not a JSON object".into());
    }
    let field = |name: &str| entry.get(name);
    if let Some(kid) = field("kid") {
        if !kid.is_string() {
            return Err("kid is not a string".into());
        }
    }
    match field("kty").and_then(Value::as_str) {
        Some("RSA") => {}
        Some(other) => return Err(format!("kty {other:?} is not RSA")),
        None => return Err("no kty".into()),
    }
    match field("use") {
        None => {}
        Some(Value::String(usage)) if usage == "sig" => {}
        Some(other) => return Err(format!("use {other} is not \"sig\"")),
    }
    match field("alg") {
        None => {}
        Some(Value::String(alg)) if alg == "RS256" => {}
        Some(other) => return Err(format!("alg {other} is not RS256")),
    }
    let number = |name: &str| -> Result<Vec<u8>, String> {
        let text = field(name).and_then(Value::as_str).ok_or_else(|| format!("no {name}"))?;
        URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|_| format!("{name} is not base64url"))
    };
    let n = number("n")?;
    let e = number("e")?;
    RsaVerifyKey::from_be_bytes(&n, &e).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys;

    #[test]
    fn keeps_rs256_signing_keys_and_explains_the_rest() {
        let good = testkeys::jwk(testkeys::key(0), "good");
        let body = serde_json::json!({"keys": [
            good,
            {"kid": "enc", "kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "n": good["n"], "e": "AQAB"},
            {"kid": "ec", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kid": "small", "kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"},
            {"kid": "good", "kty": "RSA", "n": good["n"], "e": "AQAB"},
            {"kid": "bad64", "kty": "RSA", "n": "!!!", "e": "AQAB"},
            {"kid": 7, "kty": "RSA", "n": good["n"], "e": "AQAB"},
            "not an object"
        ]});
        let parsed = parse(body.to_string().as_bytes()).expect("one good key");
        assert_eq!(parsed.key_set.keys.len(), 1);
        assert_eq!(parsed.key_set.keys[0].kid.as_deref(), Some("good"));
        let skipped = parsed.skipped.join("\n");
        for expected in [
            "\"enc\"",
            "\"EC\" is not RSA",
            "below 2048",
            "duplicate kid",
            "not base64url",
            "kid is not a string",
            "not a JSON object",
        ] {
            assert!(skipped.contains(expected), "{expected} missing from {skipped}");
        }
    }

    #[test]
    fn minimal_jwks_reads_back_to_the_same_keys() {
        let body = serde_json::json!({"keys": [
            testkeys::jwk(testkeys::key(0), "a"),
            {"kty": "RSA", "n": testkeys::jwk(testkeys::key(1), "x")["n"], "e": "AQAB"},
        ]});
        let original = parse(body.to_string().as_bytes()).expect("valid").key_set;
        let copy = parse(original.to_jwks_json().as_bytes()).expect("round trip").key_set;
        assert_eq!(copy.keys.len(), 2);
        for (a, b) in original.keys.iter().zip(&copy.keys) {
            assert_eq!((&a.kid, &a.key), (&b.kid, &b.key));
        }
        assert!(copy.has_kid("a"));
        assert!(!copy.has_kid("x"));
    }

    #[test]
    fn refuses_documents_without_usable_keys() {
        assert!(matches!(parse(b"not json"), Err(JwksError::NotJson(_))));
        assert_eq!(parse(b"{}").unwrap_err(), JwksError::NoKeysArray);
        assert_eq!(parse(br#"{"keys": []}"#).unwrap_err(), JwksError::NoUsableKey(vec![]));
        assert!(matches!(parse(br#"{"keys": [{"kty": "oct"}]}"#), Err(JwksError::NoUsableKey(s)) if s.len() == 1));
        let huge = vec![b' '; MAX_JWKS_BYTES + 1];
        assert_eq!(parse(&huge).unwrap_err(), JwksError::TooLarge(MAX_JWKS_BYTES + 1, MAX_JWKS_BYTES));
        assert_eq!(parse_with_limit(&huge[..2000], 1999).unwrap_err(), JwksError::TooLarge(2000, 1999));
        // 10,000 levels of nesting: serde_json's recursion limit refuses it, no stack overflow.
        let deep = format!("{{\"keys\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(parse(deep.as_bytes()), Err(JwksError::NotJson(_))));
    }
}
