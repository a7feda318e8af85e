//! JWKS parsing: turns a JSON Web Key Set into the verification keys it may use (RSA, EC and
//! Ed25519), each bound to the algorithms it may verify.
//!
//! A key set is attacker-reachable input (a compromised or misconfigured endpoint), so every key is
//! judged on its own: a bad key is skipped with a reason for the log, never fatal for its siblings.

use crate::base64url;
use crate::json::{self, Map, Value};
use crate::keys::alg::{Algorithm, Curve, Family};
use crate::keys::ec::EcKey;
use crate::keys::ed25519::Ed25519Key;
use crate::keys::public_key::PublicKey;
use crate::keys::rsa::RsaVerifyKey;
use std::fmt;

/// Larger key sets are refused before parsing: real ones are a few KB.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Usable keys kept per set; the rest are skipped. Identity providers publish a handful (Keycloak
/// one per algorithm, plus the previous during a rotation); the bound caps what one token without
/// `kid` can cost, since it is tried against every key of its algorithm (3,000 Ed25519 keys fit in
/// 256 KB).
pub const MAX_KEYS: usize = 32;

/// One verification key, prepared for verification once, when the key set is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationKey {
    pub kid: Option<String>,
    /// The JWK's `alg`: when present, the one algorithm this key verifies (RFC 7517 §4.4).
    pub alg: Option<Algorithm>,
    pub key: PublicKey,
}

impl VerificationKey {
    /// Whether this key may verify a token signed with `alg`: the JWK's own `alg` when it has one,
    /// else any algorithm of the key's family (an RSA key never verifies ES256, a P-256 key never
    /// ES384). The same rule as jwt_verify_lib's key selection.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.alg.is_none_or(|own| own == alg) && self.key.family() == alg.family()
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    pub keys: Vec<VerificationKey>,
}

impl KeySet {
    /// Keys a token with this `kid` and `alg` may be verified with: those that accept `alg` and
    /// have that kid, or have none (every key when the token names none). RFC 7515 makes `kid`
    /// optional on both sides, and jwt_verify_lib skips a key only when both name one and they
    /// differ: a token's kid does not exclude the issuer's keys that have no kid.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerificationKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid) && k.accepts(alg))
    }

    /// Whether some key carries this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys as a minimal JWKS document (`kty`, `kid`, `alg`, and the key's numbers) that
    /// `parse` reads back to the same keys: how one worker hands the keys it fetched to the others.
    pub fn to_jwks_json(&self) -> String {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|k| {
                let mut jwk = Map::new();
                let mut put = |name: &str, value: &str| jwk.insert(name.into(), Value::from(value));
                if let Some(kid) = &k.kid {
                    put("kid", kid);
                }
                if let Some(alg) = k.alg {
                    put("alg", alg.name());
                }
                match &k.key {
                    PublicKey::Rsa(key) => {
                        put("kty", "RSA");
                        put("n", &base64url::encode(&key.modulus_be_bytes()));
                        put("e", &base64url::encode(&key.exponent_be_bytes()));
                    }
                    PublicKey::Ec(key) => {
                        let (x, y) = key.coordinates();
                        put("kty", "EC");
                        put("crv", key.curve().name());
                        put("x", &base64url::encode(x));
                        put("y", &base64url::encode(y));
                    }
                    PublicKey::Ed25519(key) => {
                        put("kty", "OKP");
                        put("crv", "Ed25519");
                        put("x", &base64url::encode(key.as_bytes()));
                    }
                }
                Value::Object(jwk)
            })
            .collect();
        let mut document = Map::new();
        document.insert("keys".into(), Value::Array(keys));
        Value::Object(document).to_string()
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
    /// No key is a signature verification key we accept; why each was skipped.
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
                write!(f, "JWKS has no usable signature verification key ({})", skipped.join("; "))
            }
        }
    }
}

/// Parses a JWKS document of at most `MAX_JWKS_BYTES`.
pub fn parse(body: &[u8]) -> Result<ParsedJwks, JwksError> {
    parse_with_limit(body, MAX_JWKS_BYTES)
}

/// Parses a JWKS document, keeping the keys usable for signatures we verify. Documents over
/// `max_bytes` are refused before any parsing.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
pub fn parse_with_limit(body: &[u8], max_bytes: usize) -> Result<ParsedJwks, JwksError> {
    if body.len() > max_bytes {
        return Err(JwksError::TooLarge(body.len(), max_bytes));
    }
    let document = json::parse(body, json::Limits::DOCUMENT).map_err(|e| JwksError::NotJson(e.to_string()))?;
    let Some(entries) = document.get("keys").and_then(Value::as_array) else {
        return Err(JwksError::NoKeysArray);
    };
    let mut keys: Vec<VerificationKey> = Vec::new();
    let mut skipped = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let kid = entry.get("kid").and_then(Value::as_str).map(str::to_string);
        let label = match &kid {
            Some(kid) => format!("key {index} (kid {kid_q})", kid_q = crate::json::Quoted(kid)),
            None => format!("key {index}"),
        };
        match parse_key(entry) {
            Ok((alg, key)) => {
                let candidate = VerificationKey { kid, alg, key };
                // RFC 7517 §4.5 lets keys of different types share a kid; two keys that could
                // verify the same algorithm under one kid are ambiguous, and the first one wins.
                let ambiguous = candidate.kid.is_some()
                    && keys.iter().any(|k| {
                        k.kid == candidate.kid && Algorithm::ALL.iter().any(|&a| k.accepts(a) && candidate.accepts(a))
                    });
                if ambiguous {
                    skipped
                        .push(format!("{label}: duplicate kid for the same algorithms, the first key with it is used"));
                } else if keys.len() >= MAX_KEYS {
                    skipped.push(format!("{label}: more than {MAX_KEYS} usable keys in one set"));
                } else {
                    keys.push(candidate);
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

/// One JWK as a verification key: its own `alg` (if any) and the key, or why it cannot be used.
pub fn parse_key(entry: &Value) -> Result<(Option<Algorithm>, PublicKey), String> {
    if !entry.is_object() {
        return Err("not a JSON object".into());
    }
    let field = |name: &str| entry.get(name);
    if let Some(kid) = field("kid") {
        if !kid.is_string() {
            return Err("kid is not a string".into());
        }
    }
    match field("use") {
        None => {}
        Some(Value::String(usage)) if usage == "sig" => {}
        Some(other) => return Err(format!("use {other} is not \"sig\"")),
    }
    let alg = match field("alg") {
        None => None,
        Some(Value::String(name)) => match Algorithm::from_name(name) {
            Some(alg) => Some(alg),
            None => {
                return Err(format!(
                    "alg {name_q} is not a signature algorithm we verify",
                    name_q = crate::json::Quoted(name)
                ))
            }
        },
        Some(other) => return Err(format!("alg {other} is not a string")),
    };
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let text = field(name).and_then(Value::as_str).ok_or_else(|| format!("no {name}"))?;
        base64url::decode(text.trim_end_matches('=')).ok_or_else(|| format!("{name} is not base64url"))
    };
    let crv = || field("crv").and_then(Value::as_str).ok_or_else(|| "no crv".to_string());
    let key = match field("kty").and_then(Value::as_str) {
        Some("RSA") => {
            PublicKey::Rsa(RsaVerifyKey::from_be_bytes(&bytes("n")?, &bytes("e")?).map_err(|e| e.to_string())?)
        }
        Some("EC") => {
            let crv = crv()?;
            let curve = Curve::from_name(crv)
                .ok_or_else(|| format!("crv {crv_q} is not P-256, P-384 or P-521", crv_q = crate::json::Quoted(crv)))?;
            PublicKey::Ec(EcKey::from_coordinates(curve, &bytes("x")?, &bytes("y")?).map_err(|e| e.to_string())?)
        }
        Some("OKP") => match crv()? {
            "Ed25519" => PublicKey::Ed25519(
                Ed25519Key::from_bytes(&bytes("x")?)
                    .ok_or("x is not an Ed25519 public key (32 bytes, a point not of small order)")?,
            ),
            other => return Err(format!("crv {other_q} is not Ed25519", other_q = crate::json::Quoted(other))),
        },
        Some(other) => {
            return Err(format!("kty {other_q} is not RSA, EC or OKP", other_q = crate::json::Quoted(other)))
        }
        None => return Err("no kty".into()),
    };
    // A key whose own `alg` belongs to another family (an RSA key labelled ES256) is inconsistent:
    // skipped, rather than guessed at.
    if let Some(alg) = alg {
        if alg.family() != key.family() {
            return Err(format!("alg {alg} does not fit a key of this type{}", curve_note(key.family())));
        }
    }
    Ok((alg, key))
}

fn curve_note(family: Family) -> String {
    match family {
        Family::Ec(curve) => format!(" ({})", curve.name()),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::{json, Value};

    #[test]
    fn keeps_signing_keys_and_explains_the_rest() {
        use crate::keys::alg::Algorithm;
        let good = testkeys::jwk(testkeys::key(0), "good");
        let p256 = testkeys::signing_key(Algorithm::Es256, 0).jwk("p256", Some("ES256"));
        let ed = testkeys::signing_key(Algorithm::EdDsa, 0).jwk("ed", None);
        let mut off_curve = p256.clone();
        off_curve["kid"] = json!("off-curve");
        off_curve["y"] = json!(URL_SAFE_NO_PAD.encode([0x11u8; 32]));
        let body = json!({"keys": [
            good,
            {"kid": "enc", "kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "n": good["n"], "e": "AQAB"},
            {"kid": "ec", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kid": "small", "kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"},
            {"kid": "good", "kty": "RSA", "n": good["n"], "e": "AQAB"},
            {"kid": "bad64", "kty": "RSA", "n": "!!!", "e": "AQAB"},
            {"kid": 7, "kty": "RSA", "n": good["n"], "e": "AQAB"},
            "not an object",
            p256,
            ed,
            off_curve,
            {"kid": "p192", "kty": "EC", "crv": "P-192", "x": "AA", "y": "AA"},
            {"kid": "x25519", "kty": "OKP", "crv": "X25519", "x": ed["x"]},
            {"kid": "short-ed", "kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
            {"kid": "rsa-as-ec", "kty": "RSA", "alg": "ES256", "n": good["n"], "e": "AQAB"},
            {"kid": "p256-as-es384", "kty": "EC", "alg": "ES384", "crv": "P-256", "x": p256["x"], "y": p256["y"]},
            {"kid": "hmac", "kty": "oct", "alg": "HS256", "k": "c2VjcmV0"},
            {"kid": "none", "kty": "RSA", "alg": "none", "n": good["n"], "e": "AQAB"},
        ]});
        let parsed = parse(body.to_string().as_bytes()).expect("good keys");
        let kept: Vec<_> = parsed.key_set.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kept, [Some("good"), Some("p256"), Some("ed")]);
        assert_eq!(parsed.key_set.keys[1].alg, Some(Algorithm::Es256));
        let skipped = parsed.skipped.join("\n");
        for expected in [
            "(kid \"enc\"): use \"enc\"",
            "(kid \"ec\"): x and y must each be the full coordinate size",
            "below 2048",
            "duplicate kid",
            "not base64url",
            "kid is not a string",
            "not a JSON object",
            "(kid \"off-curve\"): the point is not on the curve",
            "(kid \"p192\"): crv \"P-192\" is not P-256",
            "(kid \"x25519\"): crv \"X25519\" is not Ed25519",
            "(kid \"short-ed\"): x is not an Ed25519 public key",
            "(kid \"rsa-as-ec\"): alg ES256 does not fit",
            "(kid \"p256-as-es384\"): alg ES384 does not fit a key of this type (P-256)",
            "(kid \"hmac\"): alg \"HS256\" is not a signature algorithm we verify",
            "(kid \"none\"): alg \"none\" is not",
        ] {
            assert!(skipped.contains(expected), "{expected} missing from {skipped}");
        }
    }

    #[test]
    fn a_kid_may_be_shared_by_keys_of_different_types_but_not_of_the_same_algorithms() {
        use crate::keys::alg::Algorithm::{self, *};
        let jwk = |alg: Algorithm, own: Option<&str>| testkeys::signing_key(alg, 0).jwk("k", own);
        let body = json!({"keys": [
            jwk(Rs256, Some("RS256")), jwk(Es256, None), jwk(EdDsa, None),
            // Ambiguous with the first key for PS256? No: that one is bound to RS256.
            jwk(Ps256, Some("PS256")),
            // Ambiguous: another RSA key for RS256 under the same kid.
            testkeys::signing_key(Rs256, 1).jwk("k", None),
        ]});
        let parsed = parse(body.to_string().as_bytes()).expect("keys");
        assert_eq!(parsed.key_set.keys.len(), 4, "{:?}", parsed.skipped);
        assert!(parsed.skipped.join(" ").contains("key 4 (kid \"k\"): duplicate kid for the same algorithms"));
        for alg in [Rs256, Ps256, Es256, EdDsa] {
            assert_eq!(parsed.key_set.candidates(Some("k"), alg).count(), 1, "{alg}");
        }
        assert_eq!(parsed.key_set.candidates(Some("k"), Es384).count(), 0);
    }

    #[test]
    fn keys_without_a_kid_serve_tokens_that_name_one() {
        use crate::keys::alg::Algorithm::*;
        let mut anonymous = testkeys::signing_key(Es256, 0).jwk("x", None);
        anonymous.as_object_mut().expect("object").remove("kid");
        let body = json!({"keys": [anonymous, testkeys::signing_key(Es256, 1).jwk("named", None)]});
        let keys = parse(body.to_string().as_bytes()).expect("keys").key_set;
        assert_eq!(keys.candidates(Some("named"), Es256).count(), 2);
        assert_eq!(keys.candidates(Some("other"), Es256).count(), 1, "the key without kid");
        assert_eq!(keys.candidates(None, Es256).count(), 2);
    }

    #[test]
    fn a_set_keeps_at_most_max_keys() {
        let keys: Vec<Value> = (0..MAX_KEYS + 3)
            .map(|i| testkeys::signing_key(crate::keys::alg::Algorithm::EdDsa, i).jwk(&format!("k{i}"), None))
            .collect();
        let parsed = parse(json!({ "keys": keys }).to_string().as_bytes()).expect("keys");
        assert_eq!(parsed.key_set.keys.len(), MAX_KEYS);
        assert_eq!(parsed.skipped.len(), 3);
        assert!(parsed.skipped[0].contains("more than 32 usable keys"));
    }

    #[test]
    fn small_order_ed25519_keys_are_skipped() {
        // The identity point (y = 1) is a valid encoding of a point of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let body = json!({"keys": [
            {"kid": "weak", "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(identity)},
            testkeys::signing_key(crate::keys::alg::Algorithm::EdDsa, 0).jwk("ok", None),
        ]});
        let parsed = parse(body.to_string().as_bytes()).expect("keys");
        assert_eq!(parsed.key_set.keys.len(), 1);
        assert!(parsed.skipped[0].contains("not of small order"), "{:?}", parsed.skipped);
    }

    #[test]
    fn keys_verify_only_the_algorithms_of_their_family_and_alg() {
        use crate::keys::alg::Algorithm::{self, *};
        let jwk = |alg: Algorithm, own: Option<&str>| testkeys::signing_key(alg, 0).jwk("k", own);
        let key =
            |jwk: Value| parse(json!({"keys": [jwk]}).to_string().as_bytes()).expect("key").key_set.keys.remove(0);
        let rsa = key(jwk(Rs256, None));
        assert!([Rs256, Rs384, Rs512, Ps256, Ps384, Ps512].into_iter().all(|alg| rsa.accepts(alg)));
        assert!(![Es256, Es384, Es512, EdDsa].into_iter().any(|alg| rsa.accepts(alg)));
        let bound = key(jwk(Rs256, Some("PS384")));
        assert!(Algorithm::ALL.into_iter().all(|alg| bound.accepts(alg) == (alg == Ps384)));
        let p384 = key(jwk(Es384, None));
        assert!(Algorithm::ALL.into_iter().all(|alg| p384.accepts(alg) == (alg == Es384)));
        let ed = key(jwk(EdDsa, None));
        assert!(Algorithm::ALL.into_iter().all(|alg| ed.accepts(alg) == (alg == EdDsa)));
    }

    #[test]
    fn minimal_jwks_reads_back_to_the_same_keys() {
        use crate::keys::alg::Algorithm::*;
        let body = json!({"keys": [
            testkeys::jwk(testkeys::key(0), "a"),
            {"kty": "RSA", "n": testkeys::jwk(testkeys::key(1), "x")["n"], "e": "AQAB"},
            testkeys::signing_key(Es256, 0).jwk("p256", None),
            testkeys::signing_key(Es384, 0).jwk("p384", Some("ES384")),
            testkeys::signing_key(Es512, 0).jwk("p521", None),
            testkeys::signing_key(EdDsa, 0).jwk("ed", Some("EdDSA")),
        ]});
        let original = parse(body.to_string().as_bytes()).expect("valid").key_set;
        let copy = parse(original.to_jwks_json().as_bytes()).expect("round trip").key_set;
        assert_eq!(copy.keys.len(), 6);
        for (a, b) in original.keys.iter().zip(&copy.keys) {
            assert_eq!((&a.kid, a.alg, &a.key), (&b.kid, b.alg, &b.key));
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
