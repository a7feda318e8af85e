//! JWT parsing: splits and decodes a compact JWS, allow-lists its algorithm, reads its claims.
//!
//! Nothing here is trusted yet: the result is only used to pick an issuer and a key, and every
//! claim is checked again after the signature verifies.

use jwt_compact::{Claims, UntrustedToken};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

/// Longer tokens are refused before decoding. Keycloak tokens with many roles are 1–4 KB; Envoy's
/// default header limit is 60 KB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The only signature algorithm accepted. Checked before any key is looked at, so `none`, `HS256`
/// signed with the public key as secret, and other algorithm confusions never reach a verifier.
pub const ALLOWED_ALGORITHM: &str = "RS256";

/// Why a token could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    TooLarge,
    BadFormat,
    BadBase64,
    BadJson,
    AlgorithmNotAllowed,
    CriticalHeader,
}

impl JwtError {
    pub fn code(self) -> &'static str {
        match self {
            JwtError::TooLarge => "jwt_too_large",
            JwtError::BadFormat => "jwt_bad_format",
            JwtError::BadBase64 => "jwt_bad_base64",
            JwtError::BadJson => "jwt_bad_json",
            JwtError::AlgorithmNotAllowed => "jwt_alg_not_allowed",
            JwtError::CriticalHeader => "jwt_crit_not_supported",
        }
    }

    /// Envoy's jwt_authn wording where it has one, so operators recognise them.
    pub fn message(self) -> &'static str {
        match self {
            JwtError::TooLarge => "Jwt exceeds the maximum size",
            JwtError::BadFormat => "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
            JwtError::BadBase64 => "Jwt is not correctly Base64url encoded",
            JwtError::BadJson => "Jwt header or payload is not valid JSON",
            JwtError::AlgorithmNotAllowed => "Jwt header [alg] is not allowed",
            JwtError::CriticalHeader => "Jwt header [crit] is not supported",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// Header fields jwt-compact does not model that we must look at.
#[derive(Debug, Clone, Default, Deserialize)]
struct ExtraHeader {
    /// RFC 7515 §4.1.11: a recipient must reject a token whose critical extensions it does not
    /// understand. We understand none.
    crit: Option<Value>,
}

/// A syntactically valid RS256 token, not yet verified.
#[derive(Debug)]
pub struct ParsedToken<'a> {
    pub kid: Option<String>,
    pub claims: Claims<Map<String, Value>>,
    /// `header.payload`: the bytes the signature covers.
    pub signing_input: &'a str,
    /// The payload segment as sent (base64url), for `outputPayloadToHeader`.
    pub payload_segment: &'a str,
    pub signature: Vec<u8>,
}

impl ParsedToken<'_> {
    pub fn issuer(&self) -> Option<&str> {
        self.claims.custom.get("iss").and_then(Value::as_str)
    }
}

/// Parses a compact JWS, refusing anything but a well-formed RS256 token with JSON-object claims.
pub fn parse(token: &str) -> Result<ParsedToken<'_>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(_), Some(payload_segment), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::BadFormat);
    };
    let untrusted = UntrustedToken::<ExtraHeader>::try_from(token).map_err(|err| match err {
        jwt_compact::ParseError::InvalidTokenStructure => JwtError::BadFormat,
        jwt_compact::ParseError::InvalidBase64Encoding => JwtError::BadBase64,
        _ if header_lacks_string_alg(token) => JwtError::AlgorithmNotAllowed,
        _ => JwtError::BadJson,
    })?;
    if untrusted.algorithm() != ALLOWED_ALGORITHM {
        return Err(JwtError::AlgorithmNotAllowed);
    }
    if untrusted.header().other_fields.crit.is_some() {
        return Err(JwtError::CriticalHeader);
    }
    let claims = untrusted.deserialize_claims_unchecked::<Map<String, Value>>().map_err(|_| JwtError::BadJson)?;
    let signing_input = token.rsplit_once('.').map(|(input, _)| input).ok_or(JwtError::BadFormat)?;
    Ok(ParsedToken {
        kid: untrusted.header().key_id.clone(),
        claims,
        signing_input,
        payload_segment,
        signature: untrusted.signature_bytes().to_vec(),
    })
}

/// jwt-compact refuses a header without a string `alg` as malformed; for the caller that is an
/// algorithm problem, not a JSON one. Only consulted on the error path.
fn header_lacks_string_alg(token: &str) -> bool {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap_or_default();
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(fields)) => !fields.get("alg").is_some_and(Value::is_string),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::{self, b64};
    use serde_json::json;

    #[test]
    fn parses_a_signed_token() {
        let token = testkeys::sign(
            &json!({"alg": "RS256", "kid": "k1", "typ": "JWT"}),
            &json!({"iss": "i", "exp": 2000000000, "sub": "s"}),
            0,
        );
        let parsed = parse(&token).expect("valid");
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.issuer(), Some("i"));
        assert_eq!(parsed.claims.custom.get("sub"), Some(&json!("s")));
        assert!(parsed.claims.expiration.is_some());
        assert_eq!(parsed.signature.len(), 256);
        assert_eq!(format!("{}.{}", parsed.signing_input, b64(&parsed.signature)), token);
    }

    #[test]
    fn refuses_malformed_tokens_with_stable_reasons() {
        let header = b64(br#"{"alg":"RS256"}"#);
        let payload = b64(br#"{"iss":"i"}"#);
        let cases: Vec<(String, JwtError)> = vec![
            ("abc".into(), JwtError::BadFormat),
            ("a.b".into(), JwtError::BadFormat),
            ("a.b.c.d".into(), JwtError::BadFormat),
            (format!("{header}.{payload}.sig.x"), JwtError::BadFormat),
            (format!("{header}.{payload}.!!"), JwtError::BadBase64),
            (format!("{header}==.{payload}.AA"), JwtError::BadBase64),
            (format!("{}.{payload}.AA", b64(b"not json")), JwtError::BadJson),
            (format!("{}.{payload}.AA", b64(b"[1]")), JwtError::BadJson),
            (format!("{header}.{}.AA", b64(b"[1,2]")), JwtError::BadJson),
            (format!("{header}.{}.AA", b64(br#"{"exp":"tomorrow"}"#)), JwtError::BadJson),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"none"}"#)), JwtError::AlgorithmNotAllowed),
            (format!("{}.{payload}.", b64(br#"{"alg":"none"}"#)), JwtError::AlgorithmNotAllowed),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"HS256"}"#)), JwtError::AlgorithmNotAllowed),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"rs256"}"#)), JwtError::AlgorithmNotAllowed),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"PS256"}"#)), JwtError::AlgorithmNotAllowed),
            (format!("{}.{payload}.AA", b64(br#"{"typ":"JWT"}"#)), JwtError::AlgorithmNotAllowed),
            (format!("{}.{payload}.AA", b64(br#"{"alg":256}"#)), JwtError::AlgorithmNotAllowed),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"RS256","kid":5}"#)), JwtError::BadJson),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"RS256","crit":["exp"]}"#)), JwtError::CriticalHeader),
            ("a".repeat(MAX_TOKEN_BYTES + 1), JwtError::TooLarge),
        ];
        for (token, want) in cases {
            assert_eq!(parse(&token).map(|_| ()), Err(want), "token {token:.80}");
        }
    }
}
