//! JWT parsing: splits and decodes a compact JWS, allow-lists its algorithm, reads its claims.
//!
//! Nothing here is trusted yet: the result is only used to pick an issuer and a key, and every
//! claim is checked again after the signature verifies.

use crate::json::{self, Map, Value};
use crate::keys::alg::Algorithm;
use chrono::{DateTime, TimeZone, Utc};
use jwt_compact::Claims;
use std::fmt;

/// Longer tokens are refused before decoding (default of `limits.maxTokenBytes`). Keycloak tokens
/// with many roles are 1–4 KB; Envoy's default header limit is 60 KB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Deepest nesting of the header or payload JSON accepted (default of `limits.maxClaimDepth`); the
/// top-level object is depth 1. Keycloak's `resource_access.<client>.roles` is depth 4.
const MAX_JSON_DEPTH: usize = 16;

/// Size and shape bounds applied to a token before anything else looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLimits {
    pub max_token_bytes: usize,
    pub max_json_depth: usize,
}

impl Default for TokenLimits {
    fn default() -> Self {
        TokenLimits { max_token_bytes: MAX_TOKEN_BYTES, max_json_depth: MAX_JSON_DEPTH }
    }
}

/// Why a token could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Longer than `TokenLimits::max_token_bytes`: refused before any decoding.
    TooLarge,
    /// Not three dot-separated segments.
    BadFormat,
    /// A segment is not unpadded base64url.
    BadBase64,
    /// The header or payload is not a JSON object (or the header lacks a string `alg`).
    BadJson,
    /// `alg` is not one of the ten asymmetric algorithms we verify (or not one the issuer allows):
    /// `none`, HMAC with a public key as secret and every other confusion end here.
    AlgorithmNotAllowed,
    /// A `crit` header names extensions we do not understand (RFC 7515 §4.1.11).
    CriticalHeader,
    /// The same member name twice in one JSON object of the header or payload.
    DuplicateMember,
    /// Header or payload JSON nested deeper than `TokenLimits::max_json_depth`.
    TooDeep,
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
            JwtError::DuplicateMember => "jwt_duplicate_member",
            JwtError::TooDeep => "jwt_too_deep",
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
            JwtError::DuplicateMember => "Jwt header or payload has a duplicate JSON member",
            JwtError::TooDeep => "Jwt header or payload is nested too deeply",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// A syntactically valid token of an algorithm we verify, not yet verified.
#[derive(Debug)]
pub struct ParsedToken<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// The JOSE header, for readers of more than `alg` and `kid` (a DPoP proof's `typ` and `jwk`).
    pub header: Map,
    pub claims: Claims<Map>,
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

/// Parses a compact JWS with the default limits.
pub fn parse(token: &str) -> Result<ParsedToken<'_>, JwtError> {
    parse_with_limits(token, &TokenLimits::default())
}

/// Parses a compact JWS, refusing anything but a well-formed token of an asymmetric algorithm we
/// verify (checked before any key is looked at, so `none`, `HS256` signed with the public key as
/// secret, and other algorithm confusions never reach a verifier) with JSON-object claims,
/// no duplicate JSON members, and no nesting deeper than the limit.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
pub fn parse_with_limits<'a>(token: &'a str, limits: &TokenLimits) -> Result<ParsedToken<'a>, JwtError> {
    if token.len() > limits.max_token_bytes {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header_segment), Some(payload_segment), Some(signature_segment), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::BadFormat);
    };
    // The header is decoded and parsed once, strictly (a duplicate `alg` is refused as such, and a
    // 10,000-level header never reaches a recursive parser), and read here: jwt-compact's
    // `UntrustedToken` would decode and parse it, and decode the payload, a second time.
    let header = parse_json(&decode_segment(header_segment)?, limits.max_json_depth)?;
    let payload = decode_segment(payload_segment)?;
    let signature = decode_segment(signature_segment)?;
    let Value::Object(header) = header else { return Err(JwtError::BadJson) };
    let Some(Value::String(alg)) = header.get("alg") else { return Err(JwtError::AlgorithmNotAllowed) };
    // Registered header parameters we do not act on must still be strings, so a malformed header
    // is not silently accepted. (jwt-compact also required `cty` to be "json" and checked the
    // thumbprints' lengths; none of these is ever acted on, and a nested JWT's payload is refused
    // as not JSON anyway.)
    for name in ["kid", "typ", "cty", "jku", "x5u", "x5t", "x5t#S256"] {
        if header.get(name).is_some_and(|value| !value.is_string()) {
            return Err(JwtError::BadJson);
        }
    }
    let Some(alg) = Algorithm::from_name(alg) else {
        return Err(JwtError::AlgorithmNotAllowed);
    };
    if header.contains_key("crit") {
        return Err(JwtError::CriticalHeader);
    }
    let kid = header.get("kid").and_then(Value::as_str).map(str::to_string);
    // One strict pass builds the claims: jwt-compact's own `Claims` deserialization goes through
    // serde's `flatten`, which buffers every value and parses it a second time.
    let Value::Object(custom) = parse_json(&payload, limits.max_json_depth)? else {
        return Err(JwtError::BadJson);
    };
    let claims = claims_of(custom)?;
    let signing_input = token.rsplit_once('.').map(|(input, _)| input).ok_or(JwtError::BadFormat)?;
    Ok(ParsedToken { alg, kid, header, claims, signing_input, payload_segment, signature })
}

/// A JSON object of claims (a payload, or an introspection answer) with its NumericDate claims
/// `exp`, `nbf` and `iat` taken out and read.
pub fn claims_of(mut custom: Map) -> Result<Claims<Map>, JwtError> {
    let mut claims = Claims::new(Map::new());
    claims.expiration = take_timestamp(&mut custom, "exp")?;
    claims.not_before = take_timestamp(&mut custom, "nbf")?;
    claims.issued_at = take_timestamp(&mut custom, "iat")?;
    claims.custom = custom;
    Ok(claims)
}

/// Removes a NumericDate claim from `claims`, read as jwt-compact reads it (an integer, or a
/// number truncated to whole seconds, within chrono's range); anything else is malformed.
fn take_timestamp(claims: &mut Map, name: &str) -> Result<Option<DateTime<Utc>>, JwtError> {
    let Some(value) = claims.remove(name) else { return Ok(None) };
    let Value::Number(number) = value else { return Err(JwtError::BadJson) };
    number.truncated().and_then(|seconds| Utc.timestamp_opt(seconds, 0).single()).map(Some).ok_or(JwtError::BadJson)
}

fn decode_segment(segment: &str) -> Result<Vec<u8>, JwtError> {
    crate::base64url::decode(segment).ok_or(JwtError::BadBase64)
}

/// A header or payload as a JSON tree: strictly (src/json/: no repeated member names, no nesting
/// deeper than the limit, checked as each container opens).
///
/// RFC 7515 §5.2 and RFC 7519 §4 let a recipient either reject duplicate names or take the last
/// one. We reject: the payload is handed upstream verbatim (`outputPayloadToHeader`), and an
/// upstream parser that takes the *first* `sub` would act on an identity other than the one
/// authorized here.
fn parse_json(json: &[u8], max_depth: usize) -> Result<Value, JwtError> {
    json::parse(json, json::Limits { max_depth }).map_err(|failure| match failure.kind {
        json::ErrorKind::DuplicateMember(_) => JwtError::DuplicateMember,
        json::ErrorKind::RecursionLimitExceeded => JwtError::TooDeep,
        _ => JwtError::BadJson,
    })
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
        assert_eq!(parsed.claims.custom.get("sub"), Some(&Value::from("s")));
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
            (format!("{}.{payload}.AA", b64(br#"{"alg":"HS256"}"#)), JwtError::AlgorithmNotAllowed),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"ES256K"}"#)), JwtError::AlgorithmNotAllowed),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"rs256"}"#)), JwtError::AlgorithmNotAllowed),
            (format!("{}.{payload}.AA", b64(br#"{"typ":"JWT"}"#)), JwtError::AlgorithmNotAllowed),
            (format!("{}.{payload}.AA", b64(br#"{"alg":256}"#)), JwtError::AlgorithmNotAllowed),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"RS256","kid":5}"#)), JwtError::BadJson),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"RS256","typ":["JWT"]}"#)), JwtError::BadJson),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"RS256","jku":{}}"#)), JwtError::BadJson),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"RS256","x5t#S256":1}"#)), JwtError::BadJson),
            (format!("{}.{payload}.A", b64(br#"{"alg":"RS256"}"#)), JwtError::BadBase64),
            (format!("{}.{payload}.AA", b64(br#"{"alg":["RS256"]}"#)), JwtError::AlgorithmNotAllowed),
            (format!("{}.{payload}.AA", b64(br#"["RS256"]"#)), JwtError::BadJson),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"RS256","crit":["exp"]}"#)), JwtError::CriticalHeader),
            ("a".repeat(MAX_TOKEN_BYTES + 1), JwtError::TooLarge),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"none","alg":"RS256"}"#)), JwtError::DuplicateMember),
            (format!("{}.{payload}.AA", b64(br#"{"alg":"RS256","\u0061lg":"RS256"}"#)), JwtError::DuplicateMember),
            (format!("{header}.{}.AA", b64(br#"{"iss":"i","sub":"a","sub":"admin"}"#)), JwtError::DuplicateMember),
            (format!("{header}.{}.AA", b64(br#"{"iss":"i","r":{"x":[{"k":1,"k":2}]}}"#)), JwtError::DuplicateMember),
            (format!("{header}.{}.AA", b64(format!("{}1{}", "[".repeat(4_000), "]".repeat(4_000)))), JwtError::TooDeep),
            (
                format!("{header}.{}.AA", b64(format!("{}1{}", "{\"a\":".repeat(2_000), "}".repeat(2_000)))),
                JwtError::TooDeep,
            ),
            (
                format!(
                    "{}.{payload}.AA",
                    b64(format!("{{\"alg\":\"RS256\",\"x\":{}{}}}", "[".repeat(500), "]".repeat(500)))
                ),
                JwtError::TooDeep,
            ),
            (format!("{header}.{}.AA", b64(format!("{}{}", "{\"a\":".repeat(100_000), "}"))), JwtError::TooLarge),
        ];
        for (token, want) in cases {
            assert_eq!(parse(&token).map(|_| ()), Err(want), "token {token:.80}");
        }
    }

    fn nested_claim(depth: usize) -> serde_json::Value {
        (1..depth).fold(json!(1), |inner, _| json!({ "n": inner }))
    }

    #[test]
    fn nesting_up_to_the_limit_is_accepted() {
        let header = json!({"alg": "RS256"});
        // The payload object is depth 1, so a claim of depth MAX_JSON_DEPTH - 1 is the deepest allowed.
        let at_limit = testkeys::sign(&header, &json!({"iss": "i", "c": nested_claim(MAX_JSON_DEPTH)}), 0);
        assert!(parse(&at_limit).is_ok());
        let over = testkeys::sign(&header, &json!({"iss": "i", "c": nested_claim(MAX_JSON_DEPTH + 1)}), 0);
        assert_eq!(parse(&over).map(|_| ()), Err(JwtError::TooDeep));
        let shallow = TokenLimits { max_json_depth: 2, ..TokenLimits::default() };
        assert_eq!(parse_with_limits(&at_limit, &shallow).map(|_| ()), Err(JwtError::TooDeep));
        // 10,000 levels (Envoy's header limit would stop it first unless raised): one bounded scan.
        let roomy = TokenLimits { max_token_bytes: 1 << 20, ..TokenLimits::default() };
        let deep = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        let deep_payload = format!("{}.{}.AA", b64(br#"{"alg":"RS256"}"#), b64(&deep));
        assert_eq!(parse_with_limits(&deep_payload, &roomy).map(|_| ()), Err(JwtError::TooDeep));
        let deep_header = format!("{}.{}.AA", b64(&deep), b64(br#"{"iss":"i"}"#));
        assert_eq!(parse_with_limits(&deep_header, &roomy).map(|_| ()), Err(JwtError::TooDeep));
        let flat = testkeys::sign(&header, &json!({"iss": "i", "c": {"d": 1}}), 0);
        assert!(parse_with_limits(&flat, &shallow).is_ok());
    }

    #[test]
    fn configured_token_size_limit_applies() {
        let token = testkeys::sign(&json!({"alg": "RS256"}), &json!({"iss": "i"}), 0);
        let exact = TokenLimits { max_token_bytes: token.len(), ..TokenLimits::default() };
        assert!(parse_with_limits(&token, &exact).is_ok());
        let smaller = TokenLimits { max_token_bytes: token.len() - 1, ..TokenLimits::default() };
        assert_eq!(parse_with_limits(&token, &smaller).map(|_| ()), Err(JwtError::TooLarge));
    }

    #[test]
    fn duplicate_members_in_differently_shaped_objects_are_fine() {
        let token = testkeys::sign(&json!({"alg": "RS256"}), &json!({"iss": "i", "a": {"x": 1}, "b": {"x": 1}}), 0);
        assert!(parse(&token).is_ok());
    }

    /// The claims built in one strict pass are exactly what jwt-compact's `Claims` deserialization
    /// makes of the same payload, including NumericDates of every JSON shape.
    #[test]
    fn claims_equal_jwt_compacts_own_reading() {
        let payloads = [
            r#"{"iss":"i","sub":"s","exp":2000000000,"nbf":1,"iat":0,"roles":["a","b"],"n":{"x":[1,2.5,null,true]}}"#,
            r#"{"exp":-5}"#,
            r#"{"exp":1.9e9}"#,
            r#"{"exp":1999999999.999}"#,
            r#"{"exp":9223372036854775807}"#,
            r#"{"exp":9223372036854775808}"#,
            r#"{"exp":18446744073709551615}"#,
            r#"{"exp":1e300}"#,
            r#"{"exp":-1e300}"#,
            r#"{"exp":8210266876799}"#,
            r#"{"exp":8210266876800}"#,
            r#"{"exp":"2000000000"}"#,
            r#"{"exp":null}"#,
            r#"{"exp":true}"#,
            r#"{"exp":[1]}"#,
            r#"{"nbf":{"a":1}}"#,
            r#"{"iat":1.5,"big":123456789012345678901234567890}"#,
            r#"{}"#,
            r#"[]"#,
            r#""claims""#,
            r#"null"#,
        ];
        for payload in payloads {
            let token = format!("{}.{}.AA", b64(br#"{"alg":"RS256"}"#), b64(payload));
            let ours = parse(&token).map(|parsed| parsed.claims);
            let theirs = jwt_compact::UntrustedToken::new(token.as_str())
                .expect("well-formed")
                .deserialize_claims_unchecked::<serde_json::Map<String, serde_json::Value>>()
                .map(|claims| {
                    let mut converted = Claims::new(Map::from(claims.custom));
                    converted.expiration = claims.expiration;
                    converted.not_before = claims.not_before;
                    converted.issued_at = claims.issued_at;
                    converted
                })
                .map_err(|_| JwtError::BadJson);
            // Numbers compared by value: ours keep their text, jwt-compact's went through f64.
            let same = match (&ours, &theirs) {
                (Ok(a), Ok(b)) => {
                    (a.expiration, a.not_before, a.issued_at) == (b.expiration, b.not_before, b.issued_at)
                        && a.custom.len() == b.custom.len()
                        && a.custom.iter().zip(b.custom.iter()).all(|((na, va), (nb, vb))| {
                            na == nb
                                && match (va, vb) {
                                    (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
                                    _ => va == vb,
                                }
                        })
                }
                (a, b) => a.as_ref().err() == b.as_ref().err(),
            };
            assert!(same, "{payload}: {ours:?} / {theirs:?}");
        }
    }
}
