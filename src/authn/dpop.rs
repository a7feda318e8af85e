//! DPoP (RFC 9449): an access token bound to a key (`cnf.jkt`) is accepted only with a proof, a
//! JWT signed by that key for this very request, sent in the `DPoP` header.
//!
//! Checked on every request, cached token or not: a proof is made per request, so nothing about
//! it can be remembered except its `jti`, which must never be accepted twice (`authn::replay`,
//! across every worker VM). What is checked, in order (RFC 9449 §4.3):
//! - the token's scheme agrees with its binding: a bound token only as `Authorization: DPoP`, an
//!   unbound one never so, and every token of an issuer with `dpop: required` bound;
//! - exactly one `DPoP` header, a compact JWS of at most `limits.maxTokenBytes`;
//! - its header: `typ` `dpop+jwt`, one of the ten asymmetric `alg`s, a public `jwk` (no private
//!   member) whose RFC 7638 thumbprint is the token's `cnf.jkt`, and the signature by that key;
//! - its claims: `htm` the request's method, `htu` its URI (both normalized, no query or fragment),
//!   `iat` within `PROOF_WINDOW_SECONDS` of now either way, `ath` the token's SHA-256, and a `jti`.
//!
//! The thumbprint is compared before the signature is verified: only the key the token is bound
//! to is ever used, as only an issuer's keys are used for a token.

use super::claims::ClaimsError;
use super::jwt::{self, TokenLimits};
use super::verify::Verifier;
use crate::base64url;
use crate::json::{Map, Value};
use crate::keys::jwks::{self, KeySet, VerificationKey};
use sha2::{Digest, Sha256};

/// How far a proof's `iat` may be from now, before or after (the proof's lifetime, and the clock
/// difference tolerated): RFC 9449 §11.1 asks for a short window. A proof's `jti` is remembered
/// for as long as the proof would be accepted.
pub const PROOF_WINDOW_SECONDS: u64 = 60;
/// Longest `jti` accepted: RFC 9449 suggests 96 random bits; UUIDs are 36 characters.
const MAX_JTI_BYTES: usize = 256;

/// `dpop` of a `jwtRules` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpopMode {
    /// Tokens are bearer tokens only: the `DPoP` scheme is not read for this issuer, and a token
    /// bound to a key (`cnf.jkt`) is refused, since it cannot be proven here.
    Disabled,
    /// Bearer tokens as usual; a token bound to a key is accepted only with its proof.
    #[default]
    Optional,
    /// Every token must be bound to a key and come with its proof.
    Required,
}

impl DpopMode {
    pub fn from_name(name: &str) -> Option<DpopMode> {
        match name {
            "disabled" => Some(DpopMode::Disabled),
            "optional" => Some(DpopMode::Optional),
            "required" => Some(DpopMode::Required),
            _ => None,
        }
    }
}

/// Why a token's DPoP binding does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpopError {
    /// A token bound to a key was sent as a bearer token (RFC 9449 §7.1 forbids the downgrade).
    BearerDowngrade,
    /// A token sent with the `DPoP` scheme is not bound to a key (no `cnf.jkt`).
    Unbound,
    /// The issuer has `dpop: required` and the token is a bearer token.
    Required,
    /// The issuer has `dpop: disabled` and the token is bound to a key.
    Disabled,
    /// No `DPoP` header.
    ProofMissing,
    /// More than one `DPoP` header.
    MultipleProofs,
    /// The proof is not a compact JWS of an algorithm we verify, with JSON header and claims, or a
    /// claim is missing or of the wrong type.
    Malformed,
    /// The proof's `typ` is not `dpop+jwt`.
    WrongType,
    /// The proof's `jwk` is missing, not a usable public key, or holds private key material.
    BadKey,
    /// The proof's key is not the one the token is bound to (`cnf.jkt`).
    KeyMismatch,
    /// The proof's signature does not verify with its key.
    Signature,
    /// `htm` is not the request's method.
    MethodMismatch,
    /// `htu` is not the request's URI.
    UriMismatch,
    /// `iat` is further than `PROOF_WINDOW_SECONDS` from now.
    Stale,
    /// `ath` is not the hash of the token it comes with.
    TokenHashMismatch,
    /// The proof's `jti` was seen before within the window, by this or another worker.
    Replayed,
    /// The replay store has no room for the proof's `jti` (every slot of its bucket holds a proof
    /// still in its window): refused rather than accepted unrecorded.
    ReplayStoreFull,
}

impl DpopError {
    /// Every variant, for the tests that hold codes distinct and counters bounded.
    pub const ALL: [DpopError; 17] = [
        DpopError::BearerDowngrade,
        DpopError::Unbound,
        DpopError::Required,
        DpopError::Disabled,
        DpopError::ProofMissing,
        DpopError::MultipleProofs,
        DpopError::Malformed,
        DpopError::WrongType,
        DpopError::BadKey,
        DpopError::KeyMismatch,
        DpopError::Signature,
        DpopError::MethodMismatch,
        DpopError::UriMismatch,
        DpopError::Stale,
        DpopError::TokenHashMismatch,
        DpopError::Replayed,
        DpopError::ReplayStoreFull,
    ];

    pub fn code(self) -> &'static str {
        match self {
            DpopError::BearerDowngrade => "dpop_bearer_downgrade",
            DpopError::Unbound => "dpop_token_unbound",
            DpopError::Required => "dpop_required",
            DpopError::Disabled => "dpop_disabled",
            DpopError::ProofMissing => "dpop_proof_missing",
            DpopError::MultipleProofs => "dpop_proof_multiple",
            DpopError::Malformed => "dpop_proof_malformed",
            DpopError::WrongType => "dpop_proof_typ",
            DpopError::BadKey => "dpop_proof_key_invalid",
            DpopError::KeyMismatch => "dpop_proof_key_mismatch",
            DpopError::Signature => "dpop_proof_signature_invalid",
            DpopError::MethodMismatch => "dpop_proof_htm_mismatch",
            DpopError::UriMismatch => "dpop_proof_htu_mismatch",
            DpopError::Stale => "dpop_proof_iat_stale",
            DpopError::TokenHashMismatch => "dpop_proof_ath_mismatch",
            DpopError::Replayed => "dpop_proof_replayed",
            DpopError::ReplayStoreFull => "dpop_replay_store_full",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            DpopError::BearerDowngrade => "Jwt is bound to a DPoP key and must be sent with the DPoP scheme",
            DpopError::Unbound => "Jwt sent with the DPoP scheme is not bound to a key",
            DpopError::Required => "Jwt must be bound to a DPoP key",
            DpopError::Disabled => "Jwt is bound to a DPoP key, which this issuer does not accept",
            DpopError::ProofMissing => "DPoP proof is missing",
            DpopError::MultipleProofs => "More than one DPoP proof",
            DpopError::Malformed => "DPoP proof is malformed",
            DpopError::WrongType => "DPoP proof typ is not dpop+jwt",
            DpopError::BadKey => "DPoP proof jwk is not a usable public key",
            DpopError::KeyMismatch => "DPoP proof key is not the key the Jwt is bound to",
            DpopError::Signature => "DPoP proof signature is invalid",
            DpopError::MethodMismatch => "DPoP proof htm does not match the request method",
            DpopError::UriMismatch => "DPoP proof htu does not match the request URI",
            DpopError::Stale => "DPoP proof iat is outside the accepted window",
            DpopError::TokenHashMismatch => "DPoP proof ath does not match the access token",
            DpopError::Replayed => "DPoP proof was used before",
            DpopError::ReplayStoreFull => "DPoP proof could not be recorded",
        }
    }

    /// The proof is at fault (`error="invalid_dpop_proof"`), not the token (`invalid_token`).
    pub fn is_proof_error(self) -> bool {
        !matches!(self, DpopError::BearerDowngrade | DpopError::Unbound | DpopError::Required | DpopError::Disabled)
    }
}

/// The request as a proof speaks of it.
#[derive(Debug, Clone, Default)]
pub struct ProofRequest<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    /// The raw `:path`, query included (dropped for the comparison).
    pub path: &'a str,
    /// Every `DPoP` header value.
    pub proofs: Vec<&'a str>,
}

/// A proof that holds but for its `jti`: what the replay store must record, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProofUse {
    /// The first 16 bytes of SHA-256(thumbprint ‖ `jti`): one client's `jti` never collides with
    /// another's, and the store holds no client-chosen text.
    pub replay_key: [u8; 16],
    /// Unix seconds after which the proof is refused as stale anyway.
    pub until_seconds: u64,
    /// The Unix second the proof was found fresh at: the replay store records it as of then, so
    /// that an entry a check at this second could still match is never dropped as expired.
    pub checked_at_seconds: u64,
}

/// The key a token is bound to: `cnf.jkt`, the base64url of an RFC 7638 SHA-256 thumbprint. A
/// `jkt` that is not one makes the token invalid (as a malformed `x5t#S256` does).
pub fn confirmation_key(claims: &Map) -> Result<Option<[u8; 32]>, ClaimsError> {
    super::binding::confirmation(claims, "jkt")
}

/// What a token's DPoP binding comes to on this request: `None` for a bearer token that may be
/// one, the proof to record for a bound token whose proof holds.
#[allow(clippy::too_many_arguments)]
pub fn check(
    mode: DpopMode,
    dpop_scheme: bool,
    claims: &Map,
    token: &str,
    request: &ProofRequest<'_>,
    verifier: &Verifier,
    limits: &TokenLimits,
    now_seconds: u64,
) -> Result<Option<ProofUse>, DpopError> {
    // Verification refused an unreadable `jkt`; refused here too, should one pass.
    let jkt = confirmation_key(claims).map_err(|_| DpopError::Malformed)?;
    match (mode, jkt, dpop_scheme) {
        (DpopMode::Disabled, _, true) | (DpopMode::Disabled, Some(_), _) => Err(DpopError::Disabled),
        (_, Some(_), false) => Err(DpopError::BearerDowngrade),
        (_, None, true) => Err(DpopError::Unbound),
        (DpopMode::Required, None, false) => Err(DpopError::Required),
        (_, None, false) => Ok(None),
        (_, Some(jkt), true) => verify_proof(&jkt, token, request, verifier, limits, now_seconds).map(Some),
    }
}

#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn verify_proof(
    jkt: &[u8; 32],
    token: &str,
    request: &ProofRequest<'_>,
    verifier: &Verifier,
    limits: &TokenLimits,
    now_seconds: u64,
) -> Result<ProofUse, DpopError> {
    let proof = match request.proofs.as_slice() {
        [] => return Err(DpopError::ProofMissing),
        [proof] => proof.trim(),
        _ => return Err(DpopError::MultipleProofs),
    };
    // The token parser's strictness and bounds: size, segments, base64url, JSON depth, no duplicate
    // members, the algorithm allow-list (asymmetric only), no `crit`.
    let parsed = jwt::parse_with_limits(proof, limits).map_err(|_| DpopError::Malformed)?;
    // A media type (RFC 7515 §4.1.9): case-insensitive, `application/` optional.
    let typ = parsed.header.get("typ").and_then(Value::as_str).unwrap_or_default();
    let typ = match typ.get(..12) {
        Some(head) if head.eq_ignore_ascii_case("application/") => typ.get(12..).unwrap_or_default(),
        _ => typ,
    };
    if !typ.eq_ignore_ascii_case("dpop+jwt") {
        return Err(DpopError::WrongType);
    }
    let Some(Value::Object(jwk)) = parsed.header.get("jwk") else { return Err(DpopError::BadKey) };
    // RFC 9449 §4.3 (7): a private key in the header is a client bug that leaks the key.
    if ["d", "p", "q", "dp", "dq", "qi", "oth", "k"].iter().any(|name| jwk.contains_key(name)) {
        return Err(DpopError::BadKey);
    }
    if jwk_thumbprint(jwk).ok_or(DpopError::BadKey)? != *jkt {
        return Err(DpopError::KeyMismatch);
    }
    let (alg, key) = jwks::parse_key(&Value::Object(jwk.clone())).map_err(|_| DpopError::BadKey)?;
    let keys = KeySet { keys: vec![VerificationKey { kid: None, alg, key }] };
    // A key that cannot verify the proof's `alg` (an RSA key for ES256) is a bad key, not a bad
    // signature.
    if keys.candidates(None, parsed.alg).next().is_none() {
        return Err(DpopError::BadKey);
    }
    verifier
        .verify(&keys, None, parsed.alg, parsed.signing_input.as_bytes(), &parsed.signature)
        .map_err(|_| DpopError::Signature)?;
    let claims = &parsed.claims.custom;
    let text = |name: &str| claims.get(name).and_then(Value::as_str).ok_or(DpopError::Malformed);
    let (jti, htm, htu, ath) = (text("jti")?, text("htm")?, text("htu")?, text("ath")?);
    if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
        return Err(DpopError::Malformed);
    }
    let iat = parsed.claims.issued_at.ok_or(DpopError::Malformed)?.timestamp();
    if htm != request.method {
        return Err(DpopError::MethodMismatch);
    }
    let wanted = normalize_uri(request.scheme, request.authority, request.path);
    if wanted.is_none() || normalize_htu(htu) != wanted {
        return Err(DpopError::UriMismatch);
    }
    let now = i64::try_from(now_seconds).unwrap_or(i64::MAX);
    let window = PROOF_WINDOW_SECONDS as i64;
    if iat < now.saturating_sub(window) || iat > now.saturating_add(window) {
        return Err(DpopError::Stale);
    }
    if ath != access_token_hash(token) {
        return Err(DpopError::TokenHashMismatch);
    }
    let mut hasher = Sha256::new();
    hasher.update(jkt);
    hasher.update(jti.as_bytes());
    let digest = hasher.finalize();
    let mut replay_key = [0u8; 16];
    replay_key.iter_mut().zip(digest.iter()).for_each(|(out, byte)| *out = *byte);
    let until_seconds = u64::try_from(iat.saturating_add(window)).unwrap_or_default();
    Ok(ProofUse { replay_key, until_seconds, checked_at_seconds: now_seconds })
}

/// The RFC 7638 thumbprint of a public JWK: SHA-256 of its required members (`crv`, `kty`, `x`,
/// `y` for EC; `crv`, `kty`, `x` for OKP; `e`, `kty`, `n` for RSA), in name order, as compact
/// JSON. `None` for another `kty` or a required member that is not a string.
pub fn jwk_thumbprint(jwk: &Map) -> Option<[u8; 32]> {
    let members: &[&str] = match jwk.get("kty")?.as_str()? {
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "RSA" => &["e", "kty", "n"],
        _ => return None,
    };
    let mut required = Map::new();
    for name in members {
        let value = jwk.get(name).filter(|value| value.is_string())?;
        required.insert((*name).to_string(), value.clone());
    }
    // `Map` keeps members in name order and `Value` writes compact JSON: RFC 7638 §3's form.
    Some(Sha256::digest(Value::Object(required).to_string().as_bytes()).into())
}

/// `ath`: base64url(SHA-256(the access token)), RFC 9449 §4.2.
pub fn access_token_hash(token: &str) -> String {
    base64url::encode(&Sha256::digest(token.as_bytes()))
}

/// `htu` normalized for comparison (see `normalize_uri`).
pub fn normalize_htu(htu: &str) -> Option<String> {
    let (scheme, rest) = htu.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at_checked(end)?;
    normalize_uri(scheme, authority, path)
}

/// `scheme://authority/path` as RFC 9449 §4.3 compares it with `htu`: without query or fragment,
/// after RFC 3986's syntax- and scheme-based normalization (§6.2.2, §6.2.3): scheme and host in
/// lower case, the scheme's default port (or an empty one) dropped, percent-encoded unreserved
/// characters decoded and other escapes in upper case, dot segments removed, an empty path `/`.
/// `None` for anything but an http(s) URI with a host and no user information.
pub fn normalize_uri(scheme: &str, authority: &str, path: &str) -> Option<String> {
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    let mut host = authority.to_ascii_lowercase();
    if host.contains('@') || host.is_empty() {
        return None;
    }
    if host.ends_with(default_port) {
        host.truncate(host.len() - default_port.len());
    } else if host.ends_with(':') {
        host.pop();
    }
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = remove_dot_segments(&normalize_escapes(path)?);
    let path = if path.is_empty() { "/".to_string() } else { path };
    Some(format!("{scheme}://{host}{path}"))
}

/// Percent-encodings of unreserved characters decoded, the others' hex digits in upper case.
fn normalize_escapes(path: &str) -> Option<String> {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let high = chars.next()?.to_digit(16)?;
        let low = chars.next()?.to_digit(16)?;
        let byte = u8::try_from(high << 4 | low).ok()?;
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    Some(out)
}

/// RFC 3986 §5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut output = String::with_capacity(path.len());
    let pop = |output: &mut String| {
        let at = output.rfind('/').unwrap_or(0);
        output.truncate(at);
    };
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../").or_else(|| input.strip_prefix("./")) {
            input = rest;
        } else if input.starts_with("/./") || input == "/." {
            input = input.get(2..).filter(|rest| !rest.is_empty()).unwrap_or("/");
        } else if input.starts_with("/../") || input == "/.." {
            input = input.get(3..).filter(|rest| !rest.is_empty()).unwrap_or("/");
            pop(&mut output);
        } else if input == "." || input == ".." {
            input = "";
        } else {
            let end = input.get(1..).and_then(|rest| rest.find('/')).map_or(input.len(), |at| at + 1);
            let Some((segment, rest)) = input.split_at_checked(end) else { break };
            output.push_str(segment);
            input = rest;
        }
    }
    output
}

#[cfg(test)]
mod tests;
